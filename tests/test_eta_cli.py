"""``python -m lskd_core.eta``: round trips against the API and exit status 2 on every bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lskd_core.classsets import (DEFAULT_WORDNET_DIR, FASHION_MNIST_CLASSES, ClassHierarchy,
                                 fashion_mnist_parents, feature_space_sets, hierarchy_sets,
                                 load_wordnet, wordnet_parents)
from lskd_core.diffusion import class_stats, diffusion_index
from lskd_core.eta import main
from lskd_core.features_io import save_features

REPO = Path(__file__).resolve().parents[1]
WORDNET_DIR = os.environ.get("LSKD_WORDNET_DIR") or DEFAULT_WORDNET_DIR
HAVE_WORDNET = os.path.isfile(os.path.join(WORDNET_DIR, "data.noun"))
needs_wordnet = pytest.mark.skipif(not HAVE_WORDNET, reason=f"WordNet data.noun not found in "
                                   f"{WORDNET_DIR} (install wordnet-base or set LSKD_WORDNET_DIR)")

K, D, PER = 10, 8, 12


def run_cli(*args):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "lskd_core.eta", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=120)


def make_pair(seed=0, k=K, d=D, dtype=np.float16):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(k), PER)
    mu = rng.normal(size=(k, d)) * 3
    fb = (mu[labels] + rng.normal(size=(len(labels), d))).astype(dtype)
    fa = (mu[labels] * 0.9 + rng.normal(size=(len(labels), d)) * 1.3).astype(dtype)
    return fb, fa, labels


@pytest.fixture
def files(tmp_path):
    fb, fa, labels = make_pair()
    save_features(tmp_path / "t1.npz", fb, labels, class_names=FASHION_MNIST_CLASSES,
                  meta={"temperature": 1})
    save_features(tmp_path / "t3.npz", fa, labels, class_names=FASHION_MNIST_CLASSES,
                  meta={"temperature": 3})
    return tmp_path / "t1.npz", tmp_path / "t3.npz", (fb, fa, labels)


def api(arrays, target, s1, s2, pairwise=False):
    fb, fa, labels = arrays
    return diffusion_index(class_stats(fb, labels, K), class_stats(fa, labels, K), target, s1, s2,
                           pairwise=pairwise)


def parse_json(proc):
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)  # exactly one JSON object, nothing else on stdout
    assert list(obj) == ["results"]
    return obj["results"]


# ----------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------

def test_explicit_sets_json_round_trip(files):
    before, after, arrays = files
    res = parse_json(run_cli("--before", before, "--after", after, "--target", 3, "--similar",
                             1, 2, "--dissimilar", 5, 6, 7, "--json"))
    ref = api(arrays, 3, [1, 2], [5, 6, 7])
    assert len(res) == 1 and res[0]["target"] == 3
    assert res[0]["eta_s1"] == pytest.approx(ref["eta_s1"], rel=1e-12)
    assert res[0]["eta_s2"] == pytest.approx(ref["eta_s2"], rel=1e-12)
    assert "eta_s1_pairwise" not in res[0]
    assert res[0]["similar"] == [1, 2] and res[0]["dissimilar"] == [5, 6, 7]


def test_pairwise_and_class_names(files):
    before, after, arrays = files
    res = parse_json(run_cli("--before", before, "--after", after, "--target", "Dress",
                             "--similar", "Trouser", "Pullover", "--dissimilar", 5, "Shirt",
                             "--pairwise", "--json"))
    ref = api(arrays, 3, [1, 2], [5, 6], pairwise=True)
    for key in ("eta_s1", "eta_s2", "eta_s1_pairwise", "eta_s2_pairwise"):
        assert res[0][key] == pytest.approx(ref[key], rel=1e-12)


def test_readable_table(files):
    before, after, arrays = files
    proc = run_cli("--before", before, "--after", after, "--target", 3, "--similar", 1, 2,
                   "--dissimilar", 5, 6, 7, "--pairwise")
    assert proc.returncode == 0, proc.stderr
    ref = api(arrays, 3, [1, 2], [5, 6, 7], pairwise=True)
    assert "3 (Dress)" in proc.stdout and "Trouser" in proc.stdout
    assert f"{ref['eta_s1']:+.3f}" in proc.stdout
    assert f"{ref['eta_s2_pairwise']:+.3f}" in proc.stdout


def test_sets_file_many_targets(files, tmp_path):
    before, after, arrays = files
    sets = {"3": {"similar": [1, 2], "dissimilar": [5, 6, 7]},
            "Shirt": {"similar": ["T-shirt/top", 2], "dissimilar": [8, 9]}}
    path = tmp_path / "sets.json"
    path.write_text(json.dumps(sets))
    res = parse_json(run_cli("--before", before, "--after", after, "--sets", path, "--json"))
    assert [r["target"] for r in res] == [3, 6]
    for r, (t, s1, s2) in zip(res, [(3, [1, 2], [5, 6, 7]), (6, [0, 2], [8, 9])]):
        ref = api(arrays, t, s1, s2)
        assert r["eta_s1"] == pytest.approx(ref["eta_s1"], rel=1e-12)
        assert r["eta_s2"] == pytest.approx(ref["eta_s2"], rel=1e-12)


def test_hierarchy_without_class_names_uses_index_nodes(tmp_path):
    fb, fa, labels = make_pair(seed=2, k=6)
    save_features(tmp_path / "a.npz", fb, labels)
    save_features(tmp_path / "b.npz", fa, labels)
    parents = {"0": "g1", "1": "g1", "2": "g1", "3": "g2", "4": "g2", "5": "g2",
               "g1": "root", "g2": "root"}
    (tmp_path / "p.json").write_text(json.dumps(parents))
    res = parse_json(run_cli("--before", tmp_path / "a.npz", "--after", tmp_path / "b.npz",
                             "--hierarchy", tmp_path / "p.json", "--num-similar", 2,
                             "--num-dissimilar", 2, "--seed", 4, "--target", 0, 4, "--json"))
    nodes = [str(i) for i in range(6)]
    pmap = {k: [v] for k, v in parents.items()}
    pmap["root"] = []
    for r in res:
        s1, s2 = hierarchy_sets(pmap, nodes, r["target"], 2, 2, seed=4)
        assert (r["similar"], r["dissimilar"]) == (s1, s2)
        ref = diffusion_index(class_stats(fb, labels), class_stats(fa, labels), r["target"], s1,
                              s2)
        assert r["eta_s1"] == pytest.approx(ref["eta_s1"], rel=1e-12)
    assert sorted(res[0]["similar"]) == [1, 2] and set(res[0]["dissimilar"]) <= {3, 4, 5}


@needs_wordnet
def test_builtin_fashion_mnist_hierarchy(files):
    before, after, arrays = files
    res = parse_json(run_cli("--before", before, "--after", after, "--hierarchy", "fashion-mnist",
                             "--target", "Shirt", "--num-similar", 3, "--num-dissimilar", 4,
                             "--json"))
    s1, s2 = ClassHierarchy(fashion_mnist_parents(load_wordnet(WORDNET_DIR)),
                            FASHION_MNIST_CLASSES).sets(6, 3, 4)
    assert (res[0]["similar"], res[0]["dissimilar"]) == (s1, s2)
    assert sorted(s1) == [0, 2, 4]  # T-shirt/top, Pullover, Coat
    ref = api(arrays, 6, s1, s2)
    assert res[0]["eta_s2"] == pytest.approx(ref["eta_s2"], rel=1e-12)


@needs_wordnet
def test_wordnet_class_names(tmp_path):
    wnids = ["n02085620", "n02085782", "n02085936", "n02086079", "n04037443", "n02690373",
             "n01440764", "n07747607"]
    fb, fa, labels = make_pair(seed=3, k=len(wnids))
    save_features(tmp_path / "a.npz", fb, labels, class_names=wnids)
    save_features(tmp_path / "b.npz", fa, labels, class_names=wnids)
    res = parse_json(run_cli("--before", tmp_path / "a.npz", "--after", tmp_path / "b.npz",
                             "--wordnet", "--target", "n02085620", "--num-similar", 3,
                             "--num-dissimilar", 3, "--json"))
    wn = load_wordnet(WORDNET_DIR)
    s1, s2 = hierarchy_sets(wordnet_parents(wnids, wn), wnids, 0, 3, 3, seed=0)
    assert res[0]["target"] == 0 and sorted(res[0]["similar"]) == [1, 2, 3]
    assert (res[0]["similar"], res[0]["dissimilar"]) == (s1, s2)


def test_feature_sets_use_before_centroids(files):
    before, after, arrays = files
    res = parse_json(run_cli("--before", before, "--after", after, "--feature-sets", "10,50",
                             "--target", 0, 7, "--json"))
    fb, fa, labels = arrays
    centroids = class_stats(fb, labels, K).centroids
    for r in res:
        s1, s2 = feature_space_sets(centroids, r["target"], 10, 50)
        assert (r["similar"], r["dissimilar"]) == (s1, s2)
        ref = api(arrays, r["target"], s1, s2)
        assert r["eta_s1"] == pytest.approx(ref["eta_s1"], rel=1e-12)


def test_main_in_process(files, capsys):
    before, after, arrays = files
    assert main(["--before", str(before), "--after", str(after), "--target", "3", "--similar",
                 "1", "--dissimilar", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["results"][0]["eta_s1"] == pytest.approx(api(arrays, 3, [1], [5])["eta_s1"])
    assert main(["--before", str(before), "--after", str(after), "--target", "3", "--similar",
                 "3", "--dissimilar", "5"]) == 2
    assert "inside its own similar set" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# every bad input -> exit 2, one line on stderr naming the problem, no traceback
# ----------------------------------------------------------------------------------------------

def _bad_files(tmp_path, case):
    fb, fa, labels = make_pair(seed=1)
    names = FASHION_MNIST_CLASSES
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    save_features(a, fb, labels, class_names=names)
    sets = ["--target", 3, "--similar", 1, 2, "--dissimilar", 5, 6]
    if case == "missing":
        return [a, tmp_path / "nope.npz"], sets, "not found"
    if case == "corrupt":
        b.write_bytes(b"\x00garbage" * 100)
        return [a, b], sets, "not an .npz"
    if case == "truncated":
        save_features(b, fa, labels, class_names=names)
        b.write_bytes(b.read_bytes()[:300])
        return [a, b], sets, "features file"
    if case == "missing-key":
        np.savez(b, features=fa)
        return [a, b], sets, "lacks required key"
    if case == "dim":
        save_features(b, fa[:, :5], labels, class_names=names)
        return [a, b], sets, "dimensions differ"
    if case == "class-names":
        save_features(b, fa, labels, class_names=names[:9] + ["Boot"])
        return [a, b], sets, "class sets differ"
    if case == "class-count":
        save_features(b, fa, labels, weight=np.ones((11, D)))
        return [a, b], sets, "class sets differ"
    save_features(b, fa, labels, class_names=names)
    if case == "empty-class":
        keep = labels != 6
        save_features(b, fa[keep], labels[keep], class_names=names)
        return [a, b], sets, "class 6 has no samples in the after"
    if case == "target-in-s1":
        return [a, b], ["--target", 3, "--similar", 3, 2, "--dissimilar", 5], "inside its own similar"
    if case == "target-in-s2":
        return [a, b], ["--target", 3, "--similar", 2, "--dissimilar", 3], "inside its own dissimilar"
    if case == "overlap":
        return [a, b], ["--target", 3, "--similar", 1, 2, "--dissimilar", 2, 5], "overlap"
    if case == "empty-s1":
        return [a, b], ["--target", 3, "--dissimilar", 5], "S1 is empty"
    if case == "label-range":
        bad = labels.copy()
        bad[7] = 10
        save_features(b, fa, bad, class_names=names)
        return [a, b], sets, "labels out of range"
    if case == "label-negative":
        bad = labels.copy()
        bad[7] = -1
        save_features(b, fa, bad, class_names=names)
        return [a, b], sets, "labels must be >= 0"
    if case in ("nan", "inf"):
        bad = fa.copy()
        bad[9, 2] = np.nan if case == "nan" else np.inf
        save_features(b, bad, labels, class_names=names)
        return [a, b], sets, "NaN or inf"
    if case == "class-out-of-range":
        return [a, b], ["--target", 3, "--similar", 12, "--dissimilar", 5], "out of range"
    if case == "unknown-name":
        return [a, b], ["--target", "Hat", "--similar", 1, "--dissimilar", 5], "'Hat'"
    if case == "no-sets":
        return [a, b], ["--target", 3], "give the class sets"
    if case == "two-modes":
        return [a, b], sets + ["--feature-sets", "1,90"], "choose one way"
    if case == "bad-feature-sets":
        return [a, b], ["--feature-sets", "1;90"], "two percentages"
    if case == "bad-sets-json":
        (tmp_path / "s.json").write_text("{oops")
        return [a, b], ["--sets", tmp_path / "s.json"], "not valid JSON"
    if case == "bad-hierarchy":
        (tmp_path / "p.json").write_text(json.dumps({"Dress": "clothes"}))
        return [a, b], ["--hierarchy", tmp_path / "p.json", "--target", 3], "not in the hierarchy"
    raise AssertionError(case)


BAD_CASES = ["missing", "corrupt", "truncated", "missing-key", "dim", "class-names", "class-count",
             "empty-class", "target-in-s1", "target-in-s2", "overlap", "empty-s1", "label-range",
             "label-negative", "nan", "inf", "class-out-of-range", "unknown-name", "no-sets",
             "two-modes", "bad-feature-sets", "bad-sets-json", "bad-hierarchy"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_one_line(tmp_path, case):
    (before, after), extra, needle = _bad_files(tmp_path, case)
    proc = run_cli("--before", before, "--after", after, *extra)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert lines[0].startswith("lskd-eta: error:")
    assert needle in lines[0], lines[0]
