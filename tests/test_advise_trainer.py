"""``vision_plugin.train --stop-after-epoch K``: a student stopped after K epochs of the full
schedule and resumed ends exactly where the uninterrupted run ends (what the advisor relies on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
FMNIST = Path(os.environ.get("LSKD_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
                                 reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")]


def _cmd(out: Path, *extra: str):
    return [sys.executable, "-m", "vision_plugin.train", "--dataset", "fashion-mnist", "--train-samples", "300",
            "--val-samples", "100", "--workers", "0", "--no-progress", "--model", "lskd_cnn_s", "--epochs", "3",
            "--batch-size", "50", "--lr", "0.05", "--lr-scheduler", "cosineannealinglr", "--seed", "1",
            "--deterministic", "--threads", "1", "--output-dir", str(out), *extra]


def _run(argv):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def _epochs(out: Path):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"val_acc1"' in x]


def test_stop_after_epoch_then_resume_matches_the_full_run(tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _run(_cmd(straight))
    _run(_cmd(stopped, "--stop-after-epoch", "1"))
    assert [m["epoch"] for m in _epochs(stopped)] == [0]
    assert not (stopped / "result.json").exists()  # not finished: the study would not count it as done
    _run(_cmd(stopped, "--stop-after-epoch", "2", "--resume", str(stopped / "checkpoint.pth")))
    assert [m["epoch"] for m in _epochs(stopped)] == [0, 1]
    _run(_cmd(stopped, "--resume", str(stopped / "checkpoint.pth")))
    a = torch.load(straight / "checkpoint.pth", map_location="cpu", weights_only=False)
    b = torch.load(stopped / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert [m["val_acc1"] for m in _epochs(straight)] == [m["val_acc1"] for m in _epochs(stopped)]
    assert json.loads((stopped / "result.json").read_text())["status"] == "done"


def test_stop_after_epoch_must_be_positive(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(_cmd(tmp_path / "x", "--stop-after-epoch", "0"), cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2
    assert "--stop-after-epoch" in out.stderr and "Traceback" not in out.stderr
