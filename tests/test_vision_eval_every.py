"""--eval-every: which epochs are evaluated, and that skipping evaluations changes nothing else."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import needs_fashion_mnist, vision_cli

from lskd_core import study as S
from vision_plugin.checkpoint import load_checkpoint

BASE = ["--model", "lskd_cnn_s", "--dataset", "fashion-mnist", "--train-samples", "300", "--val-samples", "200",
        "--batch-size", "32", "--lr", "0.05", "--label-smoothing", "0.1", "--seed", "2", "--threads", "1",
        "--workers", "0", "--deterministic", "--no-progress", "--device", "cpu"]


def _records(out):
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if '"epoch"' in x and '"event"' not in x]


@needs_fashion_mnist
def test_eval_every_skips_epochs_and_changes_nothing_else(tmp_path, capsys):
    outs = {}
    for every in ("1", "2", "0"):
        out = tmp_path / f"every{every}"
        code, err = vision_cli([*BASE, "--epochs", "3", "--eval-every", every, "--output-dir", str(out)], capsys)
        assert code == 0, err
        outs[every] = out
    evaluated = {k: [("val_acc1" in r) for r in _records(o)] for k, o in outs.items()}
    # 1: every epoch; 2: epoch 2 (index 1) and the last; 0: the last only
    assert evaluated == {"1": [True, True, True], "2": [False, True, True], "0": [False, False, True]}
    weights = {k: load_checkpoint(o / "checkpoint.pth")["model"] for k, o in outs.items()}
    for k in ("2", "0"):
        assert all(torch.equal(weights["1"][n], weights[k][n]) for n in weights["1"])
    results = {k: json.loads((o / "result.json").read_text()) for k, o in outs.items()}
    assert results["0"]["val_acc1"] == results["1"]["val_acc1"] == results["2"]["val_acc1"]
    assert results["0"]["val_per_class_acc"] == results["1"]["val_per_class_acc"]
    # the training losses per epoch are the same too (an evaluation draws nothing the next epoch sees)
    assert [r["train_loss"] for r in _records(outs["0"])] == [r["train_loss"] for r in _records(outs["1"])]


@needs_fashion_mnist
def test_stop_after_epoch_is_always_evaluated(tmp_path, capsys):
    out = tmp_path / "rung"
    code, err = vision_cli([*BASE, "--epochs", "3", "--eval-every", "0", "--stop-after-epoch", "2",
                            "--output-dir", str(out)], capsys)
    assert code == 0, err
    assert [("val_acc1" in r) for r in _records(out)] == [False, True]


def test_negative_eval_every_is_one_line(tmp_path, capsys):
    code, err = vision_cli([*BASE, "--epochs", "1", "--eval-every", "-1", "--output-dir", str(tmp_path / "x")],
                           capsys)
    assert code == 2 and "--eval-every must be >= 0" in err and "Traceback" not in err


def test_study_students_evaluate_at_the_end_unless_asked():
    def student_argv(**over):
        cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1, 2], "alphas": [0, 0.1], **over})
        plan = S.build_plan(cfg)
        return {r.kind: r.args for r in plan}

    default, per_epoch = student_argv(), student_argv(eval_each_epoch=True)
    assert "--eval-every" in default["student"] and default["student"][default["student"].index("--eval-every") + 1] == "0"
    assert "--eval-every" not in default["teacher"]  # teachers keep their curves
    assert "--eval-every" not in per_epoch["student"]
    with pytest.raises(ValueError, match="eval_each_epoch"):
        S.load_config(overrides={"eval_each_epoch": "often"})
