"""eta during training (``vision_plugin.train --eta-reference``, ``vision_plugin.eta_monitor``).

Oracles: the paper's Eq. 1 in plain numpy (conftest.eta_reference), the penultimate features
computed by hand for a tiny network, and, end to end, ``python -m lskd_core.eta`` run on each
epoch's checkpoint exported by ``python -m vision_plugin.export_features`` (separate processes).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from conftest import REPO, eta_reference, needs_fashion_mnist, subprocess_env, vision_cli
from torch import nn

from lskd_core.features_io import load_features, save_features
from vision_plugin.batching import collate
from vision_plugin.eta_monitor import (
    EtaMonitor,
    RunSamples,
    epoch_eta,
    eta_scalars,
    eta_set_argv,
    reference_mismatch,
)

FMNIST = ["--dataset", "fashion-mnist", "--train-samples", "300", "--val-samples", "100", "--subset-seed", "0",
          "--workers", "0", "--no-progress", "--model", "lskd_cnn_s", "--batch-size", "50"]


# ------------------------------------------------------------------------------------ pure parts

def _run(labels=(0, 1, 2, 0, 1, 2), cap=6) -> RunSamples:
    return RunSamples("fashion-mnist", "val", cap, 0, ["a", "b", "c"], np.asarray(labels))


def _meta(**kw) -> dict:
    return {"dataset": "fashion-mnist", "split": "val", "sample_cap": 6, "subset_seed": 0, "classes": None, **kw}


@pytest.mark.parametrize("meta,names,labels,needle", [
    (_meta(dataset="cub"), None, [0, 1, 2, 0, 1, 2], "dataset is 'cub'"),
    (_meta(classes=[0, 1]), None, [0, 1, 0, 1], "only classes [0, 1]"),
    (_meta(sample_cap=9), None, [0, 1, 2, 0, 1, 2], "val sample cap is 9, this run's is 6 (--val-samples)"),
    (_meta(subset_seed=3), None, [0, 1, 2, 0, 1, 2], "subset seed is 3, this run's is 0 (--subset-seed)"),
    (_meta(), ["a", "b", "c", "d"], [0, 1, 2, 0, 1, 2], "4 class names differ"),
    (_meta(), None, [0, 1, 2, 0, 1], "holds 5 samples, this run's val split 6"),
    (_meta(), None, [0, 1, 2, 0, 2, 1], "from sample 4 on (2 vs 1)"),
])
def test_reference_mismatch_names_the_field(meta, names, labels, needle):
    assert needle in reference_mismatch(meta, names, np.asarray(labels), _run())


def test_reference_mismatch_accepts_the_same_samples_and_ignores_the_seed_without_a_cap():
    assert reference_mismatch(_meta(), ["a", "b", "c"], np.asarray([0, 1, 2, 0, 1, 2]), _run()) is None
    uncapped = _run(cap=None)
    assert reference_mismatch(_meta(sample_cap=None, subset_seed=7), None, uncapped.labels, uncapped) is None


def _ns(**kw) -> argparse.Namespace:
    base = dict(dataset="fashion-mnist", eta_sets=None, eta_targets=None, eta_hierarchy=None,
                eta_num_similar=None, eta_num_dissimilar=None)
    return argparse.Namespace(**{**base, **kw})


def test_default_sets_are_the_eta_clis_own_options():
    assert eta_set_argv(_ns(), "R.npz") == ["--before", "R.npz", "--after", "R.npz", "--hierarchy", "fashion-mnist",
                                            "--num-similar", "2", "--num-dissimilar", "4"]
    assert eta_set_argv(_ns(dataset="cub"), "R.npz")[4:] == ["--feature-sets", "1,90"]
    assert eta_set_argv(_ns(dataset="cub", eta_hierarchy="p.json", eta_targets=["3"]), "R.npz")[4:] == [
        "--target", "3", "--hierarchy", "p.json"]
    assert eta_set_argv(_ns(eta_sets="S.json", eta_targets=[1]), "R.npz")[4:] == ["--sets", "S.json"]
    assert eta_scalars({"eta_s1": -1.5, "eta_s2": 2, "share": None}) == {"eta/S1": -1.5, "eta/S2": 2.0}


# ------------------------------------------------------------------------- the features pass

class _Items(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def test_monitor_measures_eq1_on_the_final_linears_input():
    """Features = ReLU(first layer) by hand; eta = the independent Eq. 1 per target and its means."""
    torch.manual_seed(0)
    k, n = 4, 80
    y = torch.arange(n) % k
    x = torch.randn(n, 5) + y[:, None].float()
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, k))
    ref_feats = np.random.default_rng(1).normal(size=(n, 6)) + y.numpy()[:, None]
    ff = load_features_from(ref_feats, y.numpy())
    sets = {0: ([1], [2, 3]), 3: ([2], [0, 1])}
    loader = torch.utils.data.DataLoader(_Items(x, y), batch_size=7, collate_fn=collate)
    monitor = EtaMonitor({"path": "R", "sha256": "0"}, ff, k, sets, loader, torch.device("cpu"))
    model.train()
    rec = epoch_eta(monitor, model, is_main=True)["eta"]
    assert model.training  # the mode is restored for the next epoch
    with torch.no_grad():
        feats = torch.relu(model[0](x)).numpy()
    per = [eta_reference(ref_feats, y.numpy(), feats, y.numpy(), t, s1, s2) for t, (s1, s2) in sorted(sets.items())]
    got = [(r["eta_s1"], r["eta_s2"]) for r in rec["targets"]]
    np.testing.assert_allclose(got, per, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose([rec["eta_s1"], rec["eta_s2"]], np.mean(per, axis=0), rtol=1e-5)
    assert rec["share"] == np.mean([a < 0 < b for a, b in per])
    assert rec["reference"] == {"path": "R", "sha256": "0"}
    assert epoch_eta(monitor, model, is_main=False) == {} and epoch_eta(None, model, True) == {}


def load_features_from(features: np.ndarray, labels: np.ndarray):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.npz"
        save_features(path, features, labels)
        return load_features(path)


# ------------------------------------------------------------------- the trainer, Fashion-MNIST

def _train(argv: List[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vision_plugin.train", *argv], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def _export(ckpt: Path, out: Path, *extra: str) -> None:
    subprocess.run([sys.executable, "-m", "vision_plugin.export_features", "--ckpt", str(ckpt), "--split", "val",
                    "--batch-size", "50", "--out", str(out), *extra], cwd=REPO, env=subprocess_env(),
                   check=True, capture_output=True, text=True, timeout=300)


def _eta_cli(before: Path, after: Path, *sets: str) -> list:
    proc = subprocess.run([sys.executable, "-m", "lskd_core.eta", "--before", str(before), "--after", str(after),
                           *sets, "--json"], cwd=REPO, env=subprocess_env(), check=True, capture_output=True,
                          text=True, timeout=300)
    return json.loads(proc.stdout)["results"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A T = 1-like reference student (1 epoch) and its validation export."""
    d = tmp_path_factory.mktemp("eta_ref")
    proc = _train([*FMNIST, "--epochs", "1", "--seed", "0", "--output-dir", str(d / "run")])
    assert proc.returncode == 0, proc.stderr
    _export(d / "run" / "checkpoint.pth", d / "ref_val.npz")
    return d / "ref_val.npz"


def _epoch_records(out: Path) -> list:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if "epoch" in x and "event" not in x]


@pytest.mark.slow
@needs_fashion_mnist
def test_logged_eta_equals_the_eta_cli_on_each_epochs_export(reference, tmp_path):
    out = tmp_path / "student"
    proc = _train([*FMNIST, "--epochs", "2", "--seed", "1", "--eta-reference", str(reference),
                   "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr
    records = _epoch_records(out)
    assert [r["epoch"] for r in records] == [0, 1]
    import hashlib

    sha = hashlib.sha256(reference.read_bytes()).hexdigest()
    for rec in records:
        eta = rec["eta"]
        assert eta["reference"] == {"path": str(reference), "sha256": sha}
        _export(out / f"model_{rec['epoch']}.pth", tmp_path / f"e{rec['epoch']}.npz")
        cli = _eta_cli(reference, tmp_path / f"e{rec['epoch']}.npz", "--hierarchy", "fashion-mnist",
                       "--num-similar", "2", "--num-dissimilar", "4")
        assert [r["target"] for r in eta["targets"]] == [r["target"] for r in cli]
        for mine, theirs in zip(eta["targets"], cli):
            assert mine["eta_s1"] == pytest.approx(theirs["eta_s1"], abs=1e-6)
            assert mine["eta_s2"] == pytest.approx(theirs["eta_s2"], abs=1e-6)
        assert eta["eta_s1"] == pytest.approx(np.mean([r["eta_s1"] for r in cli]), abs=1e-6)
        assert eta["eta_s2"] == pytest.approx(np.mean([r["eta_s2"] for r in cli]), abs=1e-6)
        assert eta["share"] == np.mean([r["eta_s1"] < 0 < r["eta_s2"] for r in cli])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    s1 = [(e.step, e.value) for e in acc.Scalars("eta/S1")]
    assert [s for s, _ in s1] == [0, 1]
    np.testing.assert_allclose([v for _, v in s1], [r["eta"]["eta_s1"] for r in records], rtol=1e-6)
    assert len(acc.Scalars("eta/S2")) == 2


@pytest.mark.slow
@needs_fashion_mnist
def test_sets_file_and_targets_match_the_eta_cli(reference, tmp_path):
    sets = {"0": {"similar": [6, 2], "dissimilar": [7, 9]}, "5": {"similar": [7], "dissimilar": [0, 1, 3]},
            "8": {"similar": [0], "dissimilar": [5]}}
    path = tmp_path / "sets.json"
    path.write_text(json.dumps(sets))
    out = tmp_path / "student"
    proc = _train([*FMNIST, "--epochs", "1", "--seed", "2", "--eta-reference", str(reference), "--eta-sets",
                   str(path), "--eta-targets", "0", "Sandal", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr
    eta = _epoch_records(out)[0]["eta"]
    _export(out / "model_0.pth", tmp_path / "e0.npz")
    only = {k: sets[k] for k in ("0", "5")}
    (tmp_path / "only.json").write_text(json.dumps(only))
    cli = _eta_cli(reference, tmp_path / "e0.npz", "--sets", str(tmp_path / "only.json"))
    assert [r["target"] for r in eta["targets"]] == [0, 5] == [r["target"] for r in cli]
    for mine, theirs in zip(eta["targets"], cli):
        assert (mine["eta_s1"], mine["eta_s2"]) == pytest.approx((theirs["eta_s1"], theirs["eta_s2"]), abs=1e-6)


def _own_val_labels() -> np.ndarray:
    from vision_plugin.datasets import build_dataset

    ds = build_dataset("fashion-mnist", None, "val", augment=False, max_samples=100, subset_seed=0)
    return np.asarray(ds.targets)


def _fake_reference(path: Path, labels: np.ndarray, names=None, dim=32, **meta) -> Path:
    from lskd_core.fashion_mnist import FASHION_MNIST_CLASSES

    base = {"dataset": "fashion-mnist", "split": "val", "sample_cap": 100, "subset_seed": 0, "classes": None}
    feats = np.random.default_rng(0).normal(size=(len(labels), dim)).astype(np.float32)
    save_features(path, feats, labels, class_names=list(FASHION_MNIST_CLASSES) if names is None else names,
                  meta={**base, **meta})
    return path


@needs_fashion_mnist
@pytest.mark.parametrize("case,needle", [
    ("split", "records no split (meta 'split' is 'test')"),
    ("cap", "val sample cap is 50, this run's is 100 (--val-samples)"),
    ("seed", "subset seed is 4, this run's is 0 (--subset-seed)"),
    ("classes", "7 class names differ from this run's 10"),
    ("order", "labels differ from this run's val split from sample"),
    ("dim", "dimension 16, this model's penultimate layer 32"),
    ("damaged", "cannot read features file"),
    ("missing", "does not exist"),
    ("no-sets", "no target class could be given sets"),
])
def test_bad_reference_is_refused_in_one_line_before_training(tmp_path, capsys, case, needle):
    labels = _own_val_labels()
    ref = tmp_path / "ref.npz"
    extra: List[str] = []
    if case == "split":
        _fake_reference(ref, labels, split="test")
    elif case == "cap":
        _fake_reference(ref, labels[:50], sample_cap=50)
    elif case == "seed":
        _fake_reference(ref, labels, subset_seed=4)
    elif case == "classes":
        _fake_reference(ref, np.minimum(labels, 6), names=[f"c{i}" for i in range(7)])
    elif case == "order":
        _fake_reference(ref, labels[::-1].copy())
    elif case == "dim":
        _fake_reference(ref, labels, dim=16)
    elif case == "damaged":
        _fake_reference(ref, labels)
        data = bytearray(ref.read_bytes())
        data[len(data) // 3] ^= 0xFF
        ref.write_bytes(bytes(data))
    elif case == "no-sets":
        _fake_reference(ref, labels)
        extra = ["--eta-num-dissimilar", "20"]
    out = tmp_path / "o"
    code, err = vision_cli([*FMNIST, "--epochs", "1", "--eta-reference", str(ref), *extra,
                            "--output-dir", str(out)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    assert not (out / "checkpoint.pth").exists()
    assert not (out / "metrics.jsonl").exists() or _epoch_records(out) == []


@needs_fashion_mnist
def test_eta_flags_without_a_reference_are_refused(tmp_path, capsys):
    code, err = vision_cli([*FMNIST, "--epochs", "1", "--eta-targets", "3", "--output-dir", str(tmp_path / "o")],
                           capsys)
    assert code == 2 and "--eta-targets needs --eta-reference FEATS.npz" in err


@pytest.mark.slow
@needs_fashion_mnist
def test_two_process_torchrun_logs_eta_once_equal_to_the_cli(reference, tmp_path):
    """Under DDP only rank 0 measures (the other rank skips the pass); its numbers are the CLI's."""
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(REPO / "vision_plugin" / "train.py"), *FMNIST, "--epochs", "1", "--seed", "3",
                           "--device", "cpu", "--eta-reference", str(reference), "--output-dir", str(out)],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = _epoch_records(out)
    assert len(records) == 1 and "eta" in records[0]
    _export(out / "model_0.pth", tmp_path / "e0.npz")
    cli = _eta_cli(reference, tmp_path / "e0.npz", "--hierarchy", "fashion-mnist", "--num-similar", "2",
                   "--num-dissimilar", "4")
    for mine, theirs in zip(records[0]["eta"]["targets"], cli):
        assert (mine["eta_s1"], mine["eta_s2"]) == pytest.approx((theirs["eta_s1"], theirs["eta_s2"]), abs=1e-6)
