"""``python -m lskd_core.eta``: results against independent formulas (tests/conftest.py), set
selection, and exit status 2 with one line on every bad input (never a traceback, never a
different number for a damaged file)."""

import errno
import json
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import (
    REPO,
    eta_pairwise_sq_reference,
    eta_projected_reference,
    eta_reference,
    needs_wordnet,
    run_main,
    subprocess_env,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lskd_core.eta as eta_cli
from lskd_core.classsets import FASHION_MNIST_CLASSES
from lskd_core.eta import main
from lskd_core.features_io import save_features

K, D, PER = 10, 8, 12


def run_cli(*args):
    """The real console path (python -m), for the few tests that need a separate process."""
    return subprocess.run([sys.executable, "-m", "lskd_core.eta", *map(str, args)],
                          capture_output=True, text=True, env=subprocess_env(threads=None), cwd=str(REPO), timeout=120)


def cli(*args):
    return run_main(main, list(args))


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


def ref(arrays, target, s1, s2):
    fb, fa, labels = arrays
    return eta_reference(fb, labels, fa, labels, target, s1, s2)


def parse_json(result):
    code, out, err = result
    assert code == 0, err
    obj = json.loads(out)  # exactly one JSON object, nothing else on stdout
    assert list(obj) == ["results", "sets_ranked_by"]
    return obj


# ----------------------------------------------------------------------------------------------
# results against independent formulas
# ----------------------------------------------------------------------------------------------

def test_explicit_sets_json_round_trip(files):
    before, after, arrays = files
    obj = parse_json(cli("--before", before, "--after", after, "--target", 3, "--similar",
                         1, 2, "--dissimilar", 5, 6, 7, "--json"))
    res = obj["results"]
    e1, e2 = ref(arrays, 3, [1, 2], [5, 6, 7])
    assert len(res) == 1 and res[0]["target"] == 3
    assert res[0]["eta_s1"] == pytest.approx(e1, rel=1e-9)
    assert res[0]["eta_s2"] == pytest.approx(e2, rel=1e-9)
    assert "eta_s1_pairwise" not in res[0] and obj["sets_ranked_by"] is None
    assert res[0]["similar"] == [1, 2] and res[0]["dissimilar"] == [5, 6, 7]


def test_hand_computed_toy(tmp_path):
    # Class c's samples at (x_c, +-1). before x = 0, 1, 2, 4: squared distances 1, 4, 16 (R = 21);
    # after x = 0, 0.5, 2, 5: 0.25, 4, 25 (R = 29.25). S1 = {1}, S2 = {2, 3}:
    # eta_S1 = 100 (5.25 / 29.25 - 1) = -3200/39; eta_S2 = 100/2 (28/39 + 175/156 - 2) = -2500/312
    def toy(xs):
        return (np.array([[x, y] for x in xs for y in (1.0, -1.0)]),
                np.repeat(np.arange(4), 2))
    for name, xs in (("b.npz", [0, 1, 2, 4]), ("a.npz", [0, 0.5, 2, 5])):
        save_features(tmp_path / name, *toy(xs))
    res = parse_json(cli("--before", tmp_path / "b.npz", "--after", tmp_path / "a.npz",
                         "--target", 0, "--similar", 1, "--dissimilar", 2, 3, "--json"))["results"]
    assert res[0]["eta_s1"] == pytest.approx(-3200 / 39, rel=1e-12)
    assert res[0]["eta_s2"] == pytest.approx(-2500 / 312, rel=1e-12)


def test_pairwise_variants_and_class_names(tmp_path):
    rng = np.random.default_rng(5)
    fb, fa, labels = make_pair(seed=5, dtype=np.float32)
    wb, wa = rng.normal(size=(K, D)), rng.normal(size=(K, D))
    bb, ba = rng.normal(size=K), rng.normal(size=K)
    save_features(tmp_path / "b.npz", fb, labels, class_names=FASHION_MNIST_CLASSES, weight=wb, bias=bb)
    save_features(tmp_path / "a.npz", fa, labels, class_names=FASHION_MNIST_CLASSES, weight=wa, bias=ba)
    res = parse_json(cli("--before", tmp_path / "b.npz", "--after", tmp_path / "a.npz",
                         "--target", "Dress", "--similar", "Trouser", "Pullover",
                         "--dissimilar", 5, "Shirt", "--pairwise", "--json"))["results"][0]
    s1, s2 = [1, 2], [5, 6]
    e1, e2 = eta_reference(fb, labels, fa, labels, 3, s1, s2)
    assert (res["eta_s1"], res["eta_s2"]) == pytest.approx((e1, e2), rel=1e-9)
    q1, q2 = eta_pairwise_sq_reference(fb, labels, fa, labels, 3, s1, s2)
    assert (res["eta_s1_pairwise_sq"], res["eta_s2_pairwise_sq"]) == pytest.approx((q1, q2), rel=1e-9)
    # deprecated aliases carry the same closed-form numbers
    assert (res["eta_s1_pairwise"], res["eta_s2_pairwise"]) == (res["eta_s1_pairwise_sq"],
                                                                res["eta_s2_pairwise_sq"])
    p1, p2 = eta_projected_reference((fb, labels, wb, bb), (fa, labels, wa, ba), 3, s1, s2)
    assert (res["eta_s1_pairwise_proj"], res["eta_s2_pairwise_proj"]) == pytest.approx((p1, p2), rel=1e-9)
    assert abs(p1 - q1) > 1e-3  # the two variants are different measurements


def test_pairwise_without_weight_says_so(files):
    before, after, arrays = files
    code, out, err = cli("--before", before, "--after", after, "--target", 3, "--similar", 1, 2,
                         "--dissimilar", 5, 6, 7, "--pairwise", "--json")
    assert code == 0
    res = json.loads(out)["results"][0]
    assert "eta_s1_pairwise_sq" in res and "eta_s1_pairwise_proj" not in res
    assert err.count("\n") == 1 and "projected pairwise eta skipped" in err and "weight" in err


def test_readable_table(files):
    before, after, arrays = files
    code, out, err = cli("--before", before, "--after", after, "--target", 3, "--similar", 1, 2,
                         "--dissimilar", 5, 6, 7, "--pairwise")
    assert code == 0, err
    fb, fa, labels = arrays
    e1, _ = ref(arrays, 3, [1, 2], [5, 6, 7])
    _, q2 = eta_pairwise_sq_reference(fb, labels, fa, labels, 3, [1, 2], [5, 6, 7])
    assert "3 (Dress)" in out and "Trouser" in out
    assert f"{e1:+.3f}" in out and f"{q2:+.3f}" in out
    assert "mean squared pairwise distance" in out


def test_out_file_is_written_instead_of_stdout(files, tmp_path):
    before, after, arrays = files
    code, out, err = cli("--before", before, "--after", after, "--target", 3, "--similar", 1,
                         "--dissimilar", 5, "--json", "--out", tmp_path / "eta.json")
    assert (code, out, err) == (0, "", "")
    res = json.loads((tmp_path / "eta.json").read_text())["results"][0]
    assert res["eta_s1"] == pytest.approx(ref(arrays, 3, [1], [5])[0], rel=1e-9)


def test_sets_file_many_targets(files, tmp_path):
    before, after, arrays = files
    sets = {"3": {"similar": [1, 2], "dissimilar": [5, 6, 7]},
            "Shirt": {"similar": ["T-shirt/top", 2], "dissimilar": [8, 9]}}
    path = tmp_path / "sets.json"
    path.write_text(json.dumps(sets))
    res = parse_json(cli("--before", before, "--after", after, "--sets", path, "--json"))["results"]
    assert [r["target"] for r in res] == [3, 6]
    for r, (t, s1, s2) in zip(res, [(3, [1, 2], [5, 6, 7]), (6, [0, 2], [8, 9])]):
        assert (r["similar"], r["dissimilar"]) == (s1, s2)
        assert (r["eta_s1"], r["eta_s2"]) == pytest.approx(ref(arrays, t, s1, s2), rel=1e-9)


def test_hierarchy_without_class_names_uses_index_nodes(tmp_path):
    fb, fa, labels = make_pair(seed=2, k=6)
    save_features(tmp_path / "a.npz", fb, labels)
    save_features(tmp_path / "b.npz", fa, labels)
    parents = {"0": "g1", "1": "g1", "2": "g1", "3": "g2", "4": "g2", "5": "g2",
               "g1": "root", "g2": "root"}
    (tmp_path / "p.json").write_text(json.dumps(parents))
    res = parse_json(cli("--before", tmp_path / "a.npz", "--after", tmp_path / "b.npz",
                         "--hierarchy", tmp_path / "p.json", "--num-similar", 2,
                         "--num-dissimilar", 2, "--seed", 4, "--target", 0, 4, "--json"))["results"]
    # by hand: each target's S1 is the rest of its group, S2 two of the other group
    groups = [{0, 1, 2}, {3, 4, 5}]
    for r, t in zip(res, [0, 4]):
        own, other = (groups[0], groups[1]) if t in groups[0] else (groups[1], groups[0])
        assert set(r["similar"]) == own - {t} and set(r["dissimilar"]) < other
        assert (r["eta_s1"], r["eta_s2"]) == pytest.approx(
            eta_reference(fb, labels, fa, labels, t, r["similar"], r["dissimilar"]), rel=1e-9)


@needs_wordnet
def test_builtin_fashion_mnist_hierarchy(files):
    before, after, arrays = files
    res = parse_json(cli("--before", before, "--after", after, "--hierarchy", "fashion-mnist",
                         "--target", "Shirt", "--num-similar", 3, "--num-dissimilar", 4,
                         "--json"))["results"]
    s1, s2 = res[0]["similar"], res[0]["dissimilar"]
    assert sorted(s1) == [0, 2, 4]  # T-shirt/top, Pullover, Coat
    assert len(s2) == 4 and not set(s2) & {0, 2, 4, 6}
    assert res[0]["eta_s2"] == pytest.approx(ref(arrays, 6, s1, s2)[1], rel=1e-9)


@needs_wordnet
def test_wordnet_class_names(tmp_path):
    wnids = ["n02085620", "n02085782", "n02085936", "n02086079", "n04037443", "n02690373",
             "n01440764", "n07747607"]
    fb, fa, labels = make_pair(seed=3, k=len(wnids))
    save_features(tmp_path / "a.npz", fb, labels, class_names=wnids)
    save_features(tmp_path / "b.npz", fa, labels, class_names=wnids)
    res = parse_json(cli("--before", tmp_path / "a.npz", "--after", tmp_path / "b.npz",
                         "--wordnet", "--target", "n02085620", "--num-similar", 3,
                         "--num-dissimilar", 3, "--json"))["results"]
    assert res[0]["target"] == 0 and sorted(res[0]["similar"]) == [1, 2, 3]  # the toy dogs
    assert sorted(res[0]["dissimilar"]) == [4, 5, 6, 7][:3] or len(set(res[0]["dissimilar"])) == 3
    assert not set(res[0]["dissimilar"]) & {0, 1, 2, 3}


def _nearest_farthest(centroids, t, n1, n2):
    d = {k: float(((centroids[k] - centroids[t]) ** 2).sum()) for k in range(len(centroids)) if k != t}
    order = sorted(d, key=d.get)
    return sorted(order[:n1]), sorted(order[-n2:])


def test_feature_sets_without_reference_say_they_rank_by_before(files):
    before, after, arrays = files
    obj = parse_json(cli("--before", before, "--after", after, "--feature-sets", "10,50",
                         "--target", 0, 7, "--json"))
    assert obj["sets_ranked_by"] == f"before: {before}"
    fb, fa, labels = arrays
    centroids = np.array([fb[labels == c].astype(np.float64).mean(0) for c in range(K)])
    for r in obj["results"]:
        s1, s2 = _nearest_farthest(centroids, r["target"], 1, 5)  # 10 % and 50 % of 9 others
        assert (r["similar"], r["dissimilar"]) == (s1, s2)
        assert (r["eta_s1"], r["eta_s2"]) == pytest.approx(ref(arrays, r["target"], s1, s2), rel=1e-9)
    code, out, _ = cli("--before", before, "--after", after, "--feature-sets", "10,50", "--target", 0)
    assert code == 0 and "the same features that are measured" in out and "--reference" in out


def test_feature_sets_ranked_in_a_reference_model(files, tmp_path):
    before, after, arrays = files
    fb, fa, labels = arrays
    # a reference model (other D) whose geometry differs from --before's
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(K, 5)) * 4
    fr = centres[labels] + rng.normal(size=(len(labels), 5)) * 0.1
    save_features(tmp_path / "ref.npz", fr, labels, class_names=FASHION_MNIST_CLASSES)
    obj = parse_json(cli("--before", before, "--after", after, "--feature-sets", "10,50",
                         "--target", 0, 7, "--reference", tmp_path / "ref.npz", "--json"))
    assert obj["sets_ranked_by"] == f"reference: {tmp_path / 'ref.npz'}"
    ref_c = np.array([fr[labels == c].mean(0) for c in range(K)])
    before_c = np.array([fb[labels == c].astype(np.float64).mean(0) for c in range(K)])
    differs = False
    for r in obj["results"]:
        s1, s2 = _nearest_farthest(ref_c, r["target"], 1, 5)
        assert (r["similar"], r["dissimilar"]) == (s1, s2)
        differs |= (s1, s2) != _nearest_farthest(before_c, r["target"], 1, 5)
        assert r["eta_s1"] == pytest.approx(ref(arrays, r["target"], s1, s2)[0], rel=1e-9)
    assert differs  # the reference really changed the sets


def test_reference_must_match_the_classes(files, tmp_path):
    before, after, arrays = files
    fb, _, labels = arrays
    save_features(tmp_path / "r9.npz", fb, labels, weight=np.ones((11, D)))
    code, out, err = cli("--before", before, "--after", after, "--feature-sets", "10,50",
                         "--reference", tmp_path / "r9.npz")
    assert code == 2 and "11 classes" in err and err.count("\n") == 1
    code, _, err = cli("--before", before, "--after", after, "--target", 3, "--similar", 1,
                       "--dissimilar", 5, "--reference", before)
    assert code == 2 and "no use with --similar" in err


def test_console_script_path(files):
    before, after, arrays = files
    proc = run_cli("--before", before, "--after", after, "--target", 3, "--similar", 1,
                   "--dissimilar", 5, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["eta_s1"] == pytest.approx(ref(arrays, 3, [1], [5])[0])
    proc = run_cli("--before", before, "--after", after, "--target", 3, "--similar", 3,
                   "--dissimilar", 5)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("lskd-eta: error:") and "inside its own similar set" in proc.stderr


# ----------------------------------------------------------------------------------------------
# every bad input -> exit 2, one line on stderr naming the problem, no traceback
# ----------------------------------------------------------------------------------------------

SETS = ["--target", 3, "--similar", 1, 2, "--dissimilar", 5, 6]


def _with_b(tmp_path, arrays, **kw):
    fb, fa, labels = arrays
    kw.setdefault("class_names", FASHION_MNIST_CLASSES)
    save_features(tmp_path / "b.npz", kw.pop("features", fa), kw.pop("labels", labels), **kw)
    return tmp_path / "b.npz"


def _raw_labels(tmp_path, arrays, labels):
    """A file with labels save_features would refuse (written with numpy directly)."""
    np.savez(tmp_path / "b.npz", features=arrays[1], labels=labels)
    return tmp_path / "b.npz"


def _flip_feature_byte(tmp_path, arrays):
    b = _with_b(tmp_path, arrays)
    raw = bytearray(b.read_bytes())
    with zipfile.ZipFile(b) as zf:
        info = zf.getinfo("features.npy")
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + 128 + 40] ^= 0x10  # inside the data
    b.write_bytes(bytes(raw))
    return b


def _labels_with(value):
    def make(tmp_path, arrays):
        bad = arrays[2].copy()
        bad[7] = value
        return _raw_labels(tmp_path, arrays, bad)
    return make


def _deep(name, opt):
    def make(tmp_path, arrays):
        (tmp_path / name).write_text("[" * 200000 + "]" * 200000)
        return _with_b(tmp_path, arrays), [opt, tmp_path / name] + (["--target", 3] if opt == "--hierarchy" else [])
    return make


def _nan(value):
    def make(tmp_path, arrays):
        bad = arrays[1].copy()
        bad[9, 2] = value
        return _with_b(tmp_path, arrays, features=bad)
    return make


# case -> (make(tmp_path, arrays) -> after path [, extra args], expected words in the message)
BAD = {
    "missing": (lambda t, a: t / "nope.npz", "not found"),
    "is-a-directory": (lambda t, a: t, "is a directory"),
    "not-a-directory": (lambda t, a: _with_b(t, a) / "x.npz", "not found"),
    "corrupt": (lambda t, a: (t / "b.npz").write_bytes(b"\x00garbage" * 100) and t / "b.npz",
                "not an .npz"),
    "truncated": (lambda t, a: _with_b(t, a).write_bytes(_with_b(t, a).read_bytes()[:300])
                  and t / "b.npz", "features file"),
    "crc": (_flip_feature_byte, "CRC-32"),
    "missing-key": (lambda t, a: np.savez(t / "b.npz", features=a[1]) or t / "b.npz",
                    "lacks required key"),
    "dim": (lambda t, a: _with_b(t, a, features=a[1][:, :5]), "dimensions differ"),
    "class-names": (lambda t, a: _with_b(t, a, class_names=FASHION_MNIST_CLASSES[:9] + ["Boot"]),
                    "class sets differ"),
    "class-count": (lambda t, a: _with_b(t, a, class_names=None, weight=np.ones((11, D))),
                    "class sets differ"),
    "empty-class": (lambda t, a: _with_b(t, a, features=a[1][a[2] != 6], labels=a[2][a[2] != 6]),
                    "class 6 has no samples in the after"),
    "label-range": (_labels_with(10), "label 10"),
    "label-huge": (_labels_with(10 ** 12), "label 1000000000000"),
    "label-negative": (_labels_with(-1), "negative"),
    "nan": (_nan(np.nan), "NaN or inf"),
    "inf": (_nan(np.inf), "NaN or inf"),
    "deep-sets-json": (_deep("s.json", "--sets"), "nested too deeply"),
    "deep-hierarchy-json": (_deep("p.json", "--hierarchy"), "nested too deeply"),
    "bad-sets-json": (lambda t, a: (t / "s.json").write_text("{oops") and
                      (_with_b(t, a), ["--sets", t / "s.json"]), "not valid JSON"),
    "sets-json-is-dir": (lambda t, a: (_with_b(t, a), ["--sets", t]), "not found"),
    "bad-hierarchy": (lambda t, a: (t / "p.json").write_text(json.dumps({"Dress": "clothes"})) and
                      (_with_b(t, a), ["--hierarchy", t / "p.json", "--target", 3]),
                      "not in the hierarchy"),
    "out-under-a-file": (lambda t, a: (_with_b(t, a), SETS + ["--out", _with_b(t, a) / "x.json"]),
                         "needs a directory"),
    "out-is-a-directory": (lambda t, a: (_with_b(t, a), SETS + ["--out", t]), "directory"),
}

ARG_CASES = {  # bad arguments with valid files
    "target-in-s1": (["--target", 3, "--similar", 3, 2, "--dissimilar", 5], "inside its own similar"),
    "target-in-s2": (["--target", 3, "--similar", 2, "--dissimilar", 3], "inside its own dissimilar"),
    "overlap": (["--target", 3, "--similar", 1, 2, "--dissimilar", 2, 5], "overlap"),
    "empty-s1": (["--target", 3, "--dissimilar", 5], "S1 is empty"),
    "class-out-of-range": (["--target", 3, "--similar", 12, "--dissimilar", 5], "out of range"),
    "unknown-name": (["--target", "Hat", "--similar", 1, "--dissimilar", 5], "'Hat'"),
    "no-sets": (["--target", 3], "give the class sets"),
    "two-modes": (SETS + ["--feature-sets", "1,90"], "choose one way"),
    "bad-feature-sets": (["--feature-sets", "1;90"], "two percentages"),
    "feature-sets-over-100": (["--feature-sets", "20,90"], "<= 100"),
    "bad-pairwise-samples": (SETS + ["--pairwise", "--pairwise-samples", 0], "pairwise-samples"),
    "unknown-option": (SETS + ["--frobnicate"], "unrecognized"),
}


def _one_error_line(code, out, err, needle):
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("lskd-eta: error:")
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_file_exits_2_with_one_line(tmp_path, case):
    fb, fa, labels = make_pair(seed=1)
    save_features(tmp_path / "a.npz", fb, labels, class_names=FASHION_MNIST_CLASSES)
    make, needle = BAD[case]
    made = make(tmp_path, (fb, fa, labels))
    after, extra = made if isinstance(made, tuple) else (made, SETS)
    _one_error_line(*cli("--before", tmp_path / "a.npz", "--after", after, *extra), needle)
    if case in ("missing", "crc", "label-huge"):  # names the file
        assert str(after) in cli("--before", tmp_path / "a.npz", "--after", after, *extra)[2]


@pytest.mark.parametrize("case", sorted(ARG_CASES))
def test_bad_arguments_exit_2_with_one_line(files, case):
    before, after, _ = files
    extra, needle = ARG_CASES[case]
    _one_error_line(*cli("--before", before, "--after", after, *extra), needle)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_exits_2(files):
    before, after, _ = files
    os.chmod(after, 0)
    try:
        _one_error_line(*cli("--before", before, "--after", after, *SETS), "Permission denied")
    finally:
        os.chmod(after, 0o644)


def test_os_error_line_names_file_and_remedy():
    for code, remedy in ((errno.EROFS, "writable"), (errno.ENOSPC, "disk space"),
                         (errno.EACCES, "permissions")):
        line = eta_cli._os_error_line(OSError(code, os.strerror(code), "/x/out.json"))
        assert line.startswith("/x/out.json: ") and remedy in line


def test_unexpected_errors_still_show_a_traceback(files, monkeypatch):
    before, after, _ = files

    def buggy(*a, **k):
        raise ValueError("a genuine bug, not bad input")
    monkeypatch.setattr(eta_cli, "format_table", buggy)
    with pytest.raises(ValueError, match="genuine bug"):
        main(["--before", str(before), "--after", str(after), *map(str, SETS)])
    monkeypatch.setattr(eta_cli, "diffusion_indices", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["--before", str(before), "--after", str(after), *map(str, SETS)])


# ----------------------------------------------------------------------------------------------
# property: a damaged features file never yields other numbers or a traceback
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clean_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("damage")
    fb, fa, labels = make_pair(seed=9)
    save_features(d / "a.npz", fb, labels, class_names=FASHION_MNIST_CLASSES, meta={"T": 1})
    save_features(d / "b.npz", fa, labels, class_names=FASHION_MNIST_CLASSES, meta={"T": 3})
    argv = ["--target", 3, "--similar", 1, 2, "--dissimilar", 5, 6, 7, "--json"]
    code, out, err = cli("--before", d / "a.npz", "--after", d / "b.npz", *argv)
    assert code == 0, err
    return d, (d / "b.npz").read_bytes(), argv, json.loads(out)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_file_same_numbers_or_one_line_error(clean_pair, data):
    d, clean, argv, expected = clean_pair
    raw = bytearray(clean)
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "overwrite"]))
    pos = data.draw(st.integers(0, len(raw) - 1))
    if kind == "flip":
        raw[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del raw[pos:]
    elif kind == "insert":
        raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    else:
        chunk = data.draw(st.binary(min_size=1, max_size=16))
        raw[pos:pos + len(chunk)] = chunk
    damaged = d / "damaged.npz"
    damaged.write_bytes(bytes(raw))
    code, out, err = cli("--before", d / "a.npz", "--after", damaged, *argv)
    assert "Traceback" not in err
    if code == 0:
        assert json.loads(out) == expected  # the very same numbers, or ...
    else:  # ... one clear line
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err


def test_closed_stdout_pipe_is_quiet(files, monkeypatch):
    # `lskd-eta ... | head`: the reader left, which is no error of the user's input
    before, after, _ = files

    def closed(text, out):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(eta_cli, "_emit", closed)
    assert cli("--before", before, "--after", after, *SETS) == (1, "", "")


@pytest.mark.parametrize("where, exc, words", [
    ("load_features", PermissionError(errno.EACCES, "Permission denied", "/data/t3.npz"),
     ["/data/t3.npz: Permission denied", "check the permissions"]),
    ("atomic_open", OSError(errno.EROFS, "Read-only file system", "/ro/eta.json"),
     ["/ro/eta.json: Read-only file system", "writable"]),
    ("atomic_open", OSError(errno.ENOSPC, "No space left on device", "/full/eta.json"),
     ["/full/eta.json: No space left on device", "free some disk space"]),
])
def test_os_errors_a_user_can_cause_are_one_line(files, monkeypatch, where, exc, words):
    # the same path as a real unreadable input or read-only / full output disk (root ignores
    # permissions, so the errors are injected where the CLI meets the file system)
    before, after, _ = files

    def fail(*a, **k):
        raise exc
    monkeypatch.setattr(eta_cli, where, fail)
    code, out, err = cli("--before", before, "--after", after, *SETS, "--out", before.parent / "o.json")
    _one_error_line(code, out, err, words[0])
    assert words[1] in err
