"""End-to-end runs of the vision trainer on real Fashion-MNIST (Debian dataset-fashion-mnist).

An LS teacher, a KD student, a killed-and-resumed run, a 2-process torchrun (gloo) run, feature
export into ``python -m lskd_core.eta``, and bad inputs through the command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, eta_reference, needs_fashion_mnist, subprocess_env, vision_cli

TRAIN = str(REPO / "vision_plugin" / "train.py")
N_TRAIN, N_VAL = 2000, 500
FMNIST = ["--dataset", "fashion-mnist", "--train-samples", str(N_TRAIN), "--val-samples", str(N_VAL),
          "--workers", "0", "--no-progress", "--print-freq", "1000"]

pytestmark = [pytest.mark.slow, needs_fashion_mnist]


def run(args, check=True, timeout=600, **kw):
    proc = subprocess.run(args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _metrics(out: Path):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """LS teacher (alpha = 0.1), 2 epochs on 2000 images; the script-path form of the CLI."""
    out = tmp_path_factory.mktemp("teacher")
    run([sys.executable, TRAIN, *FMNIST, "--model", "lskd_cnn_t", "--epochs", "2", "--batch-size", "32",
         "--lr", "0.05", "--lr-scheduler", "cosineannealinglr", "--label-smoothing", "0.1", "--seed", "0",
         "--channels-last", "--output-dir", str(out)])
    return out


@pytest.fixture(scope="module")
def student_run(teacher_run, tmp_path_factory):
    """KD student (T = 2, beta = 1) of that teacher; the ``python -m`` form of the CLI."""
    out = tmp_path_factory.mktemp("student")
    run([sys.executable, "-m", "vision_plugin.train", *FMNIST, "--model", "lskd_cnn_s", "--epochs", "2",
         "--batch-size", "32", "--lr", "0.05", "--lr-scheduler", "cosineannealinglr",
         "--teacher", "lskd_cnn_t", "--teacher-ckpt", str(teacher_run / "checkpoint.pth"),
         "--kd-temperature", "2", "--channels-last", "--output-dir", str(out)])
    return out


def test_ls_teacher_outputs_and_accuracy(teacher_run):
    result = json.loads((teacher_run / "result.json").read_text())
    assert result["status"] == "done" and result["epochs"] == 2
    assert result["val_acc1"] > 60.0  # chance is 10 %
    assert result["num_classes"] == 10 and result["class_names"][0] == "T-shirt/top"
    assert len(result["val_per_class_acc"]) == 10 and result["val_count"] == N_VAL
    lines = _metrics(teacher_run)
    assert lines[0]["event"] == "start" and lines[0]["args"]["label_smoothing"] == 0.1
    epochs = lines[1:]
    assert [e["epoch"] for e in epochs] == [0, 1]
    keys = {"epoch", "lr", "train_loss", "train_ce_loss", "train_kd_loss", "val_acc1", "val_acc5", "val_loss",
            "val_per_class_acc", "images_per_s", "seed", "time_s"}
    assert keys <= set(epochs[0])
    assert epochs[0]["train_kd_loss"] is None and epochs[0]["train_loss"] == epochs[0]["train_ce_loss"]
    # per-class accuracy consistent with top-1 (val subset is stratified: 50 images per class)
    assert np.mean(epochs[-1]["val_per_class_acc"]) == pytest.approx(epochs[-1]["val_acc1"])
    for name in ("checkpoint.pth", "model_0.pth", "model_1.pth"):
        ckpt = _weights(teacher_run / name)  # plain weights_only load, no allow-list needed
        assert {"model", "optimizer", "lr_scheduler", "epoch", "args", "num_classes", "class_names"} <= set(ckpt)
        assert isinstance(ckpt["args"], dict)
    assert _weights(teacher_run / "checkpoint.pth")["epoch"] == 1
    assert any(p.name.startswith("events.out.tfevents") for p in (teacher_run / "tensorboard").iterdir())
    assert not list(teacher_run.glob(".*tmp*"))  # atomic writes leave no temporaries


def test_kd_student_trains_and_never_saves_the_teacher(student_run):
    from vision_plugin.models import build_model

    result = json.loads((student_run / "result.json").read_text())
    assert result["val_acc1"] > 55.0
    epochs = _metrics(student_run)[1:]
    assert all(e["train_kd_loss"] is not None and e["train_kd_loss"] > 0 for e in epochs)
    # beta = 1: the optimised loss is the KD term alone
    assert epochs[0]["train_loss"] == pytest.approx(epochs[0]["train_kd_loss"])
    ckpt = _weights(student_run / "checkpoint.pth")
    assert set(ckpt["model"]) == set(build_model("lskd_cnn_s", 10).state_dict())
    assert ckpt["args"]["teacher"] == "lskd_cnn_t" and ckpt["args"]["kd_temperature"] == 2.0


def test_kd_loss_is_zero_when_student_starts_as_the_teacher(teacher_run):
    """Student initialised from the teacher's checkpoint, T = 1, beta = 1: L_KD = 0 and no gradient."""
    from torch.utils.data import DataLoader

    from vision_plugin import train as T

    ckpt = str(teacher_run / "checkpoint.pth")
    args = T.get_args_parser().parse_args(
        [*FMNIST, "--model", "lskd_cnn_t", "--student-init", ckpt, "--teacher", "lskd_cnn_t",
         "--teacher-ckpt", ckpt, "--kd-temperature", "1", "--kd-beta", "1", "--train-samples", "256"])
    T.validate_args(args)
    train_ds, _, classes = T.load_data(args)
    student = T.build_student(args, len(classes))
    teacher = T.build_teacher(args, len(classes), torch.device("cpu"))
    criterion = T.kd_criterion_from_args(args, teacher)
    images, target = next(iter(DataLoader(train_ds, batch_size=64)))
    student.eval()  # the teacher runs in eval mode: compare like with like (BN running stats)
    terms = criterion.terms(student(images), target, images)
    assert abs(float(terms.kd_loss)) < 1e-6 and float(terms.ce_loss) > 0.01
    terms.loss.backward()
    assert max(float(p.grad.abs().max()) for p in student.parameters()) < 1e-6
    # a different temperature still gives zero: identical logits
    criterion.temperature = 4.0
    assert abs(float(criterion.terms(student(images), target, images).kd_loss)) < 1e-5


def _resume_cmd(out, epochs):
    return [sys.executable, TRAIN, "--dataset", "fashion-mnist", "--train-samples", "640", "--val-samples", "100",
            "--workers", "0", "--no-progress", "--model", "lskd_cnn_s", "--epochs", str(epochs),
            "--batch-size", "32", "--lr", "0.05", "--lr-scheduler", "cosineannealinglr", "--label-smoothing", "0.1",
            "--seed", "3", "--deterministic", "--output-dir", str(out)]


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    epochs = 3
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run(_resume_cmd(straight, epochs))
    proc = subprocess.Popen(_resume_cmd(killed, epochs), cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint.pth").exists():
        assert proc.poll() is None, "run ended before writing its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "result.json").exists(), "the run finished before it could be killed"
    killed_at = _weights(killed / "checkpoint.pth")["epoch"]
    assert killed_at < epochs - 1
    run(_resume_cmd(killed, epochs) + ["--resume", str(killed / "checkpoint.pth")])
    a, b = _weights(straight / "checkpoint.pth"), _weights(killed / "checkpoint.pth")
    assert a["epoch"] == b["epoch"] == epochs - 1
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"])
    # metrics: one line per epoch after the resume (no duplicate of the lost epoch), same numbers
    ma = [m for m in _metrics(straight) if "epoch" in m and "event" not in m]
    mb = [m for m in _metrics(killed) if "epoch" in m and "event" not in m]
    assert [m["epoch"] for m in mb] == list(range(epochs))
    for x, y in zip(ma, mb):
        assert x["val_acc1"] == y["val_acc1"] and x["train_loss"] == y["train_loss"]
    ra, rb = json.loads((straight / "result.json").read_text()), json.loads((killed / "result.json").read_text())
    assert ra["val_per_class_acc"] == rb["val_per_class_acc"]


def test_torchrun_two_processes_agree_with_single_process_eval(teacher_run, tmp_path):
    out = tmp_path / "ddp"
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", TRAIN, *FMNIST,
         "--model", "lskd_cnn_s", "--epochs", "1", "--batch-size", "32", "--lr", "0.05",
         "--teacher", "lskd_cnn_t", "--teacher-ckpt", str(teacher_run / "checkpoint.pth"),
         "--kd-temperature", "2", "--output-dir", str(out)])
    result = json.loads((out / "result.json").read_text())
    epoch = _metrics(out)[-1]
    assert epoch["val_count"] == N_VAL  # unpadded shards: no DistributedSampler repeats counted
    assert epoch["train_images"] >= N_TRAIN  # DistributedSampler pads training shards only
    assert result["val_acc1"] > 30.0
    single = tmp_path / "single"
    run([sys.executable, TRAIN, *FMNIST, "--model", "lskd_cnn_s", "--test-only", "--resume",
         str(out / "checkpoint.pth"), "--output-dir", str(single)])
    ev = json.loads((single / "eval.json").read_text())
    assert ev["val_count"] == N_VAL
    assert ev["val_correct1"] == epoch["val_correct1"]
    assert ev["val_acc1"] == pytest.approx(result["val_acc1"])
    assert ev["val_per_class_acc"] == pytest.approx(result["val_per_class_acc"])
    assert ev["val_loss"] == pytest.approx(epoch["val_loss"], rel=1e-5)


def _eta_numpy(before, after, target, s1, s2):
    """Eq. 1 in percent (tests/conftest.py's independent reference) on two exported .npz files."""
    zb, za = np.load(before), np.load(after)
    return eta_reference(zb["features"], zb["labels"], za["features"], za["labels"], target, s1, s2)


def test_export_features_into_eta(teacher_run, student_run, tmp_path):
    # eta compares the same architecture at two settings; here the KD student after epoch 0 and
    # after epoch 1 (the study compares students at T1 and T2 in exactly the same way)
    feats = {}
    for name in ("model_0.pth", "checkpoint.pth"):
        feats[name] = tmp_path / f"{name}.npz"
        run([sys.executable, "-m", "vision_plugin.export_features", "--ckpt", str(student_run / name),
             "--split", "val", "--save-logits", "--batch-size", "128", "--out", str(feats[name])])
    z = np.load(feats["checkpoint.pth"])
    assert z["features"].shape == (N_VAL, 32) and z["logits"].shape == (N_VAL, 10)
    assert np.bincount(z["labels"]).tolist() == [N_VAL // 10] * 10  # the training run's stratified val subset
    assert [str(c) for c in z["class_names"]][:2] == ["T-shirt/top", "Trouser"]
    meta = json.loads(str(z["meta"]))
    assert meta["split"] == "val" and meta["temperature"] == 2.0 and meta["feature_layer"] == "fc"
    ckpt = _weights(student_run / "checkpoint.pth")
    np.testing.assert_allclose(z["weight"], ckpt["model"]["fc.weight"].numpy())
    # features are the fc input: x W^T + b reproduces the logits
    np.testing.assert_allclose(z["features"] @ z["weight"].T + z["bias"], z["logits"], rtol=1e-4, atol=1e-4)
    # the exported logits are those of the trained model: argmax accuracy == the run's val top-1
    result = json.loads((student_run / "result.json").read_text())
    assert 100 * np.mean(z["logits"].argmax(1) == z["labels"]) == pytest.approx(result["val_acc1"])
    # a class subset of the teacher's training split
    sub = tmp_path / "sub.npz"
    run([sys.executable, "-m", "vision_plugin.export_features", "--ckpt", str(teacher_run / "checkpoint.pth"),
         "--split", "train", "--classes", "0", "2", "6", "--out", str(sub)])
    zs = np.load(sub)
    assert set(zs["labels"].tolist()) == {0, 2, 6} and zs["features"].shape == (3 * N_TRAIN // 10, 128)
    # into the eta CLI, checked against Eq. 1 written out here
    target, s1, s2 = 0, [2, 6], [5, 7, 9]
    before, after = feats["model_0.pth"], feats["checkpoint.pth"]
    proc = run([sys.executable, "-m", "lskd_core.eta", "--before", str(before), "--after", str(after),
                "--target", str(target), "--similar", *map(str, s1), "--dissimilar", *map(str, s2), "--json"])
    res = json.loads(proc.stdout)["results"][0]
    want1, want2 = _eta_numpy(before, after, target, s1, s2)
    assert res["eta_s1"] == pytest.approx(want1, rel=1e-6, abs=1e-9)
    assert res["eta_s2"] == pytest.approx(want2, rel=1e-6, abs=1e-9)


def test_export_features_errors(teacher_run, tmp_path):
    proc = run([sys.executable, "-m", "vision_plugin.export_features", "--ckpt", str(teacher_run / "checkpoint.pth"),
                "--model", "lskd_cnn_s", "--out", str(tmp_path / "x.npz")], check=False)
    assert proc.returncode == 2 and "does not match architecture 'lskd_cnn_s'" in proc.stderr
    assert not (tmp_path / "x.npz").exists()


# --------------------------------------------------------------------------- bad inputs


def test_cli_missing_data_path(tmp_path, capsys):
    missing = tmp_path / "no-such-dir"
    proc = run([sys.executable, TRAIN, "--dataset", "fashion-mnist", "--data-path", str(missing),
                "--model", "lskd_cnn_s", "--epochs", "1", "--output-dir", str(tmp_path / "o")], check=False)
    assert proc.returncode == 2 and str(missing) in proc.stderr and "Traceback" not in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = vision_cli(["--dataset", "fashion-mnist", "--data-path", str(empty), "--model", "lskd_cnn_s",
                      "--epochs", "1", "--output-dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "apt-get install dataset-fashion-mnist" in err and str(empty) in err


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_cli_corrupt_teacher_checkpoint(teacher_run, tmp_path, capsys, damage):
    bad = tmp_path / "bad.pth"
    good = (teacher_run / "checkpoint.pth").read_bytes()
    bad.write_bytes(os.urandom(4096) if damage == "garbage" else good[: len(good) // 2])
    argv = [*FMNIST, "--model", "lskd_cnn_s", "--epochs", "1", "--teacher", "lskd_cnn_t", "--teacher-ckpt", str(bad),
            "--output-dir", str(tmp_path / "o")]
    if damage == "garbage":  # through a real process: exit status 2, one-line message
        proc = run([sys.executable, TRAIN, *argv], check=False)
        code, err = proc.returncode, proc.stderr
    else:
        code, err = vision_cli(argv, capsys)
    assert code == 2
    assert "not a readable PyTorch checkpoint" in err and str(bad) in err


def test_cli_teacher_with_wrong_class_count(tmp_path, capsys):
    from vision_plugin.checkpoint import save_atomic
    from vision_plugin.models import build_model

    path = tmp_path / "t7.pth"
    save_atomic({"model": build_model("lskd_cnn_t", 7).state_dict(), "num_classes": 7}, path)
    code, err = vision_cli([*FMNIST, "--model", "lskd_cnn_s", "--epochs", "1", "--teacher", "lskd_cnn_t",
                      "--teacher-ckpt", str(path), "--output-dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "7 classes" in err and "10 classes" in err


def test_cli_teacher_with_wrong_architecture(teacher_run, tmp_path, capsys):
    code, err = vision_cli([*FMNIST, "--model", "lskd_cnn_s", "--epochs", "1", "--teacher", "resnet18",
                      "--teacher-ckpt", str(teacher_run / "checkpoint.pth"), "--output-dir", str(tmp_path / "o")],
                     capsys)
    assert code == 2 and "does not match architecture 'resnet18'" in err


@pytest.mark.parametrize("flags,needle", [
    (["--kd-temperature", "0"], "--kd-temperature"),
    (["--kd-temperature", "-2"], "--kd-temperature"),
    (["--kd-temperature", "inf"], "--kd-temperature"),
    (["--kd-beta", "1.5"], "--kd-beta"),
    (["--kd-beta", "-0.1"], "--kd-beta"),
    (["--label-smoothing", "1.0"], "--label-smoothing"),
])
def test_cli_bad_hyperparameters(teacher_run, tmp_path, capsys, flags, needle):
    code, err = vision_cli([*FMNIST, "--model", "lskd_cnn_s", "--epochs", "1", "--teacher", "lskd_cnn_t",
                      "--teacher-ckpt", str(teacher_run / "checkpoint.pth"), *flags,
                      "--output-dir", str(tmp_path / "o")], capsys)
    assert code == 2 and needle in err and flags[1] in err
    assert not (tmp_path / "o").exists()  # rejected before anything is written
