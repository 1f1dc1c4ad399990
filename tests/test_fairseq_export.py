"""``python -m fairseq_plugin.export_features`` (issue 18 item 3): decoder features of target tokens
and teacher entropy per T, on a tiny real fairseq model trained here for a few updates.

Oracles: the input of the decoder's output projection captured by a forward hook during fairseq's
own full forward, one sentence at a time (no batching, no ``extract_features`` call); token counts
by ``collections.Counter`` over the target files; entropy by numpy in float64 from the same
forward's logits.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

pytest.importorskip("fairseq")

from fairseq import checkpoint_utils  # noqa: E402

import fairseq_plugin  # noqa: E402,F401  (allow-lists fairseq's checkpoint types)
from fairseq_plugin import export_features as X  # noqa: E402
from lskd_core.features_io import load_features  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARCH = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
        "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
        "--share-all-embeddings"]
COMMON = ["--cpu", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "400", "--seed", "3",
          "--num-workers", "0", "--data-buffer-size", "0", "--log-format", "json", "--no-epoch-checkpoints",
          "--disable-validation", "--max-update", "12", "--no-save-optimizer-state"]


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LSKD_FAIRSEQ_AUTOLOAD", "LSKD_TRACEBACK")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(module: str, args: List, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-W", "ignore", "-m", module] + [str(a) for a in args], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A synthetic corpus (train/valid/test) with a skewed word distribution: some tokens are frequent."""
    root = tmp_path_factory.mktemp("export_corpus")
    raw = root / "raw"
    raw.mkdir()
    rng = random.Random(1)
    words = [f"w{i}" for i in range(20)]
    weights = [1.0 / (i + 1) for i in range(len(words))]  # Zipf-like
    for split, count in (("train", 160), ("valid", 10), ("test", 40)):
        src, tgt = [], []
        for _ in range(count):
            sentence = rng.choices(words, weights, k=rng.randint(2, 8))
            src.append(" ".join(sentence))
            tgt.append(" ".join("x" + w[1:] for w in reversed(sentence)))
        (raw / f"{split}.en").write_text("\n".join(src) + "\n")
        (raw / f"{split}.de").write_text("\n".join(tgt) + "\n")
    _run("fairseq_cli.preprocess", ["--source-lang", "en", "--target-lang", "de", "--trainpref", raw / "train",
                                    "--validpref", raw / "valid", "--testpref", raw / "test",
                                    "--destdir", root / "bin", "--joined-dictionary", "--workers", "1"])
    return root / "bin"


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("model")
    _run("fairseq_cli.train", [data] + ARCH + COMMON + ["--criterion", "label_smoothed_cross_entropy",
                                                        "--label-smoothing", "0.1", "--save-dir", save])
    return save / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def reference(data, checkpoint):
    """fairseq's own model and test set; per sentence the output projection's input and the logits."""
    models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(data)})
    model = models[0].eval()
    task.load_dataset("test")
    dataset = task.dataset("test")
    captured: List[torch.Tensor] = []
    hook = model.decoder.output_projection.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    per_sentence = []
    with torch.no_grad():
        for i in range(len(dataset)):
            sample = dataset.collater([dataset[i]])
            captured.clear()
            logits = model(**sample["net_input"])[0][0]
            per_sentence.append({"target": sample["target"][0].numpy(), "features": captured[0][0].numpy(),
                                 "logits": logits.double().numpy()})
    hook.remove()
    return {"model": model, "task": task, "sentences": per_sentence}


def _expected_classes(reference, max_classes: int, min_count: int) -> List[int]:
    counts = collections.Counter(int(t) for s in reference["sentences"] for t in s["target"])
    nspecial = reference["task"].target_dictionary.nspecial
    ranked = sorted(((c, t) for t, c in counts.items() if t >= nspecial and c >= min_count),
                    key=lambda ct: (-ct[0], ct[1]))
    return [t for _, t in ranked[:max_classes]]


def test_features_are_the_output_projections_input_of_the_chosen_classes(data, checkpoint, reference, tmp_path):
    out = tmp_path / "feats.npz"
    # small batches: several batches, sorted by length, padded; the rows must not depend on that
    summary = X.export(str(data), str(checkpoint), str(out), split="test", max_sentences=None, max_classes=6,
                       min_count=3, max_tokens=60, device="cpu")
    ff = load_features(out)
    classes = _expected_classes(reference, 6, 3)
    assert len(classes) == 6 and ff.meta["token_ids"] == classes  # the most frequent, by count then id
    tdict = reference["task"].target_dictionary
    assert ff.class_names == [tdict[c] for c in classes]
    feats, labels = [], []
    for s in reference["sentences"]:
        for pos, tok in enumerate(s["target"]):
            if int(tok) in classes:
                feats.append(s["features"][pos])
                labels.append(classes.index(int(tok)))
    assert summary["rows"] == len(labels) == ff.num_samples
    np.testing.assert_array_equal(ff.labels, labels)
    # the labels name the target ids: token_ids[label] is the target token of that row
    assert [ff.meta["token_ids"][k] for k in ff.labels] == [classes[k] for k in labels]
    np.testing.assert_allclose(ff.features, np.stack(feats), rtol=1e-5, atol=1e-5)
    weight = reference["model"].decoder.output_projection.weight.detach().numpy()
    np.testing.assert_array_equal(ff.weight, weight[classes])
    assert ff.bias is None  # fairseq's transformer projects without a bias
    assert ff.meta["split"] == "test" and ff.meta["sentences"] == len(reference["sentences"])


def test_entropy_equals_a_float64_brute_force(data, checkpoint, reference, tmp_path):
    temps = [0.5, 1.0, 4.0]
    out = tmp_path / "entropy.json"
    X.export(str(data), str(checkpoint), None, split="test", max_sentences=25, subset_seed=3,
             entropy_temperatures=temps, entropy_out=str(out), max_tokens=50, device="cpu")
    got = json.loads(out.read_text())
    ids = X.sentence_subset(len(reference["sentences"]), 25, 3)
    assert len(ids) == 25 and len(set(ids.tolist())) == 25
    assert got["tokens_per_sentence"] == [len(reference["sentences"][i]["target"]) for i in ids]
    for t in temps:
        sums = []
        for i in ids:
            z = reference["sentences"][i]["logits"] / t
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            sums.append(float(-(p * np.log(p)).sum()))
        np.testing.assert_allclose(got["entropy_sum_per_sentence"][repr(t)], sums, rtol=1e-5)
        assert got["mean_entropy"][repr(t)] == pytest.approx(sum(sums) / got["tokens"], rel=1e-5)
    assert got["max_entropy"] == pytest.approx(np.log(len(reference["task"].target_dictionary)))
    # a sharper softmax has less entropy
    means = [got["mean_entropy"][repr(t)] for t in temps]
    assert means == sorted(means)


def test_choose_classes_ranks_by_count_then_id_and_skips_specials():
    counts = np.array([99, 99, 99, 99, 5, 7, 7, 2, 9])
    assert X.choose_classes(counts, 3, 1, nspecial=4) == [8, 5, 6]
    assert X.choose_classes(counts, 10, 5, nspecial=4) == [8, 5, 6, 4]


def test_bad_inputs_are_one_line(data, checkpoint, tmp_path, capsys):
    def err_of(argv):
        code = X.main(argv)
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in lines[0], lines
        return lines[0]

    base = [str(data), "--out", str(tmp_path / "f.npz"), "--device", "cpu"]
    assert "checkpoint not found" in err_of(base + ["--path", str(tmp_path / "none.pt")])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint" * 10)
    assert "corrupt" in err_of(base + ["--path", str(corrupt)])
    line = err_of(base + ["--path", str(checkpoint), "--split", "dev"])
    assert "split 'dev' not found" in line and "test" in line and "train" in line
    other = tmp_path / "other_bin"
    shutil.copytree(data, other)
    for lang in ("en", "de"):
        with open(other / f"dict.{lang}.txt", "a", encoding="utf-8") as handle:
            handle.write("zzz 1\n")
    line = err_of([str(other), "--out", str(tmp_path / "f.npz"), "--path", str(checkpoint), "--device", "cpu"])
    assert "dictionary" in line and "differs" in line
    assert "--min-count" in err_of(base + ["--path", str(checkpoint), "--min-count", "10000"])
    assert "--entropy-temperatures" in err_of(base + ["--path", str(checkpoint), "--entropy-out",
                                                      str(tmp_path / "e.json")])
    assert not (tmp_path / "f.npz").exists()


# ------------------------------------------------------------------------------------------------
# the study's export runs and the report's token-level sections, on a miniature translation study
# ------------------------------------------------------------------------------------------------
def _perturbed(src: Path, dst: Path, seed: int, scale: float) -> None:
    """A copy of a checkpoint with seeded noise on its weights: models that differ, without training."""
    state = torch.load(src, map_location="cpu", weights_only=True)
    gen = torch.Generator().manual_seed(seed)
    state["model"] = {k: v + scale * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dst)


def _eta_by_hand(before, after, weight: np.ndarray, n_similar: int, n_dissimilar: int) -> List[tuple]:
    """Eq. 1 (percent) per class, S1/S2 = nearest/farthest classes by the embedding rows."""
    k = weight.shape[0]

    def centroids(ff):
        return np.stack([ff.features[ff.labels == c].astype(np.float64).mean(axis=0) for c in range(k)])

    c1, c2 = centroids(before), centroids(after)
    out = []
    for t in range(k):
        others = [c for c in range(k) if c != t]
        dist = [float(((weight[c] - weight[t]) ** 2).sum()) for c in others]
        order = [c for _, c in sorted(zip(dist, others))]
        s1, s2 = sorted(order[:n_similar]), sorted(order[-n_dissimilar:])
        rel = []
        for c in (c1, c2):
            d = np.array([((c[t] - c[j]) ** 2).sum() for j in s1 + s2])
            rel.append(d / d.sum())
        change = (rel[1] - rel[0]) / rel[0]
        out.append((100 * change[:len(s1)].mean(), 100 * change[len(s1):].mean()))
    return out


@pytest.mark.slow  # ~40 s of exports and report on a loaded 2-core machine, after the shared fixtures
def test_study_plans_exports_and_the_report_computes_both_token_sections(data, checkpoint, tmp_path):
    from lskd_core import study as S
    from lskd_core.report.writer import write_report
    from lskd_core.study.state import write_manifest

    cfg = S.load_config(preset="translation", overrides={
        "data_dir": str(data), "alphas": [0, 0.1], "temperatures": [1, 4], "seeds": 2, "cache": False,
        "entropy_temperatures": [8], "translation_export_sentences": 30, "translation_eta_classes": 6,
        "translation_eta_min_count": 3, "num_similar": 1, "num_dissimilar": 2, "max_tokens": 200})
    plan = S.build_plan(cfg)
    exports = [r for r in plan if r.kind == "export"]
    models = [r for r in plan if r.kind in ("teacher", "student")]
    assert sorted(r.run_id for r in exports) == sorted(f"export_{m.run_id}_test" for m in models)
    assert all(r.deps == [r.info["model_run"]] for r in exports)  # the given data: no prepare run
    study = tmp_path / "study"
    study.mkdir()
    write_manifest(study, cfg, plan)
    for i, m in enumerate(models):
        _perturbed(checkpoint, study / "runs" / m.run_id / "checkpoint_best.pt", seed=i, scale=0.05)
    for r in exports:  # the planned command, run in this process
        argv = S.run_command(r, study, cfg)
        assert argv[1:3] == ["-m", "fairseq_plugin.export_features"]
        assert X.main(argv[3:]) == 0
    res = json.loads((write_report(study) / "results.json").read_text())
    report = (study / "report" / "report.md").read_text()
    assert res["eta"]["status"] == res["entropy"]["status"] == "not-applicable"  # the vision sections

    ent = res["token_entropy"]
    assert ent["status"] == "ok" and ent["temperatures"] == [1.0, 4.0, 8.0] and ent["sentences"] == 30
    for tr in ent["teachers"]:
        raw = json.loads((study / "runs" / f"export_{tr['model_run']}_test" / "entropy.json").read_text())
        for t in ("1", "4", "8"):
            row = tr["rows"][t]
            assert row["mean"] == pytest.approx(sum(raw["entropy_sum_per_sentence"][f"{t}.0"]) / raw["tokens"])
            assert row["ci"][0] < row["mean"] < row["ci"][1]
    assert "## 2. Teacher entropy per T" in report and "cluster bootstrap over sentences" in report

    eta = res["token_eta"]
    assert eta["status"] == "ok" and eta["reference_model"] == "teacher_a0" and len(eta["classes"]) == 6
    groups = {g["alpha"]: g for o in eta["over_seeds"] if o["variant"] == "eq1" for g in o["groups"]}
    assert set(groups) == {0.0, 0.1} and all(g["summary"]["runs"] == 2 for g in groups.values())
    teacher = load_features(study / "runs/export_teacher_a0_test/features.npz")
    for seed in (0, 1):
        before = load_features(study / f"runs/export_student_a0.1_T1_s{seed}_test/features.npz")
        after = load_features(study / f"runs/export_student_a0.1_T4_s{seed}_test/features.npz")
        want = _eta_by_hand(before, after, teacher.weight.astype(np.float64), 1, 2)
        tab = next(t for t in eta["seed_tables"] if t["alpha"] == 0.1 and t["seed"] == seed and t["t2"] == 4)
        got = [(r["eta_s1"], r["eta_s2"]) for r in tab["rows"]]
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert "an extension of the paper" in report and "## 3. Diffusion index on decoder states" in report
    assert (study / "report" / "teacher_token_entropy.png").is_file()
