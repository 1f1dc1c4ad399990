"""--feature-kd overhaul in the vision trainer: positions and taps, a ResNet-50 -> ResNet-18 student
on random images with a bitwise resume, AMP (bf16 on CPU), DDP (2 gloo processes), bad combinations."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, subprocess_env, vision_cli
from torch import nn

from lskd_core.feature_kd import margin_from_batchnorm
from vision_plugin.feature_kd import FeatureTap, feature_positions, setup_feature_kd
from vision_plugin.kd import KDCriterion, LiveTeacher
from vision_plugin.models import SmallConvNet, build_model


def _random_folder(root: Path, size: int = 40, train: int = 4, val: int = 2) -> Path:
    """Two classes of random-noise PNGs (``train`` + ``val`` per class)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for k in range(2):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{i}.png")
    return root


def _teacher_ckpt(path: Path, name: str, num_classes: int = 2) -> Path:
    torch.manual_seed(123)
    net = build_model(name, num_classes=num_classes)
    with torch.no_grad():  # non-trivial BN shifts/scales, so the margins differ per channel
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-1.0, 0.5)
    torch.save({"model": net.state_dict(), "num_classes": num_classes}, path)
    return path


def _common(data: Path, crop: int = 32):
    return ["--dataset", "imagefolder", "--data-path", str(data), "--crop-size", str(crop), "--workers", "0",
            "--no-progress", "--device", "cpu", "--batch-size", "4", "--lr", "0.01", "--deterministic"]


# --------------------------------------------------------------------------- positions and taps


@pytest.mark.parametrize("name,channels", [("resnet18", [64, 128, 256, 512]), ("resnet50", [256, 512, 1024, 2048]),
                                           ("lskd_cnn_t", [32, 64]), ("lskd_cnn_s", [8, 16])])
def test_positions_and_channel_counts(name, channels):
    net = build_model(name, num_classes=3)
    assert [p.channels for p in feature_positions(net, name)] == channels


def test_tap_holds_the_pre_relu_stage_output_and_changes_nothing():
    torch.manual_seed(0)
    net = build_model("resnet18", num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
    outs = {}
    hooks = [getattr(net, f"layer{i}").register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o.clone()))
             for i in range(1, 5)]
    tap = FeatureTap(feature_positions(net, "resnet18"))
    tap.active = True
    with torch.no_grad():
        after = net(x)
    feats = tap.take()
    for h in hooks:
        h.remove()
    assert torch.equal(before, after)
    for i, f in enumerate(feats, start=1):
        assert torch.equal(torch.relu(f), outs[i])  # the stage output is ReLU(tapped feature)
        assert (f < 0).any()  # ... and the tapped feature is taken before that ReLU
    tap.active = False
    net(x)
    with pytest.raises(RuntimeError):
        tap.take()  # inactive: nothing kept


def test_unknown_model_and_mismatched_shapes_are_one_line_value_errors():
    with pytest.raises(ValueError, match="no known feature positions for --model 'mobilenet_v2'"):
        feature_positions(build_model("mobilenet_v2", num_classes=2), "mobilenet_v2")
    # a teacher whose second stage is pooled twice: 7x7 where the student has 14x14 at 28 px
    teacher = LiveTeacher(SmallConvNet((8, "M", "M", 16, "M"), num_classes=10), 10)
    student = build_model("lskd_cnn_s", num_classes=10)
    args = argparse.Namespace(feature_kd="overhaul", feature_kd_weight=1e-4, teacher="odd_cnn", model="lskd_cnn_s",
                              resume="", crop_size=28, dataset="fashion-mnist", teacher_cache=None)
    with pytest.raises(ValueError, match=r"position 2 .* teacher's feature map is 7x7 but the student's is 14x14"):
        setup_feature_kd(args, student, teacher, KDCriterion(teacher, 2.0), {}, torch.device("cpu"))


def test_margins_come_from_the_teacher_bn_before_each_position():
    torch.manual_seed(0)
    net = build_model("resnet50", num_classes=2)
    pos = feature_positions(net, "resnet50")
    assert [p.bn for p in pos] == [getattr(net, f"layer{i}")[-1].bn3 for i in range(1, 5)]
    small = build_model("lskd_cnn_t", num_classes=2)
    sp = feature_positions(small, "lskd_cnn_t")
    assert [p.bn for p in sp] == [small.features[4], small.features[11]]
    assert margin_from_batchnorm(sp[0].bn).shape == (32,)


# --------------------------------------------------------------------------- ResNet-50 -> ResNet-18


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_state(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_resnet50_to_resnet18_trains_and_resumes_bitwise(tmp_path, capsys):
    data = _random_folder(tmp_path / "data")
    ckpt = _teacher_ckpt(tmp_path / "r50.pth", "resnet50")
    argv = _common(data) + ["--model", "resnet18", "--teacher", "resnet50", "--teacher-ckpt", str(ckpt),
                            "--kd-temperature", "3", "--feature-kd", "overhaul", "--feature-kd-weight", "1e-3",
                            "--epochs", "2", "--lr-step-size", "1"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert vision_cli(argv + ["--output-dir", str(straight)], capsys)[0] == 0
    assert vision_cli(argv + ["--output-dir", str(split), "--stop-after-epoch", "1"], capsys)[0] == 0
    assert vision_cli(argv + ["--output-dir", str(split), "--resume", str(split / "checkpoint.pth")], capsys)[0] == 0
    a, b = _load(straight / "checkpoint.pth"), _load(split / "checkpoint.pth")
    assert a["feature_kd"]["method"] == "overhaul" and a["feature_kd"]["weight"] == 1e-3
    conn = a["feature_kd"]["connectors"]
    # one 1x1 conv per stage from ResNet-18's to ResNet-50's channels
    assert [tuple(conn[f"{i}.0.weight"].shape) for i in range(4)] == [(256, 64, 1, 1), (512, 128, 1, 1),
                                                                    (1024, 256, 1, 1), (2048, 512, 1, 1)]
    student_params = sum(1 for _ in build_model("resnet18", num_classes=2).parameters())
    assert len(a["optimizer"]["param_groups"][0]["params"]) == student_params + 12  # + 4 x (conv, BN w, BN b)
    for key in ("model", "optimizer", "lr_scheduler"):
        _assert_same_state(a[key], b[key], key)
    _assert_same_state(a["feature_kd"], b["feature_kd"], "feature_kd")
    assert not any(k.startswith(("connectors", "student.")) for k in a["model"])  # the plain student's weights
    metrics = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()][1:]
    assert all(m["train_feature_kd_loss"] > 0 for m in metrics)
    assert "teacher" not in json.dumps(list(a))


def test_feature_loss_enters_the_training_loss(tmp_path, capsys):
    """Same run with and without --feature-kd: the logged total differs by weight x feature loss."""
    data = _random_folder(tmp_path / "data", size=28)
    ckpt = _teacher_ckpt(tmp_path / "t.pth", "lskd_cnn_t")
    base = _common(data, 28) + ["--model", "lskd_cnn_s", "--teacher", "lskd_cnn_t", "--teacher-ckpt", str(ckpt),
                                "--kd-temperature", "2", "--epochs", "1", "--batch-size", "8"]
    assert vision_cli(base + ["--output-dir", str(tmp_path / "kd")], capsys)[0] == 0
    assert vision_cli(base + ["--feature-kd", "overhaul", "--feature-kd-weight", "0.01",
                              "--output-dir", str(tmp_path / "fkd")], capsys)[0] == 0
    kd = json.loads((tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()[1])
    fk = json.loads((tmp_path / "fkd" / "metrics.jsonl").read_text().splitlines()[1])
    # one step (8 images, batch 8): both start from the same weights, so the KD parts agree exactly
    assert fk["train_kd_loss"] == pytest.approx(kd["train_kd_loss"], rel=1e-6)
    assert fk["train_loss"] == pytest.approx(kd["train_loss"] + 0.01 * fk["train_feature_kd_loss"], rel=1e-6)


def test_amp_bf16_on_cpu(tmp_path, capsys):
    data = _random_folder(tmp_path / "data", size=28)
    ckpt = _teacher_ckpt(tmp_path / "t.pth", "lskd_cnn_t")
    argv = _common(data, 28) + ["--model", "lskd_cnn_s", "--teacher", "lskd_cnn_t", "--teacher-ckpt", str(ckpt),
                                "--feature-kd", "overhaul", "--amp", "--epochs", "1",
                                "--output-dir", str(tmp_path / "out")]
    code, err = vision_cli(argv, capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[1])
    assert np.isfinite(m["train_loss"]) and m["train_feature_kd_loss"] > 0


def test_ddp_two_gloo_processes(tmp_path):
    data = _random_folder(tmp_path / "data", size=28)
    ckpt = _teacher_ckpt(tmp_path / "t.pth", "lskd_cnn_t")
    out = tmp_path / "ddp"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            str(REPO / "vision_plugin" / "train.py"), *_common(data, 28), "--model", "lskd_cnn_s",
            "--teacher", "lskd_cnn_t", "--teacher-ckpt", str(ckpt), "--feature-kd", "overhaul", "--epochs", "1",
            "--batch-size", "2", "--output-dir", str(out)]
    proc = subprocess.run(argv, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    assert m["train_images"] == 8 and m["train_feature_kd_loss"] > 0  # summed over both ranks' shards
    assert "feature_kd" in _load(out / "checkpoint.pth")


# --------------------------------------------------------------------------- bad combinations


def _one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_combinations_are_one_line_each(tmp_path, capsys):
    data = _random_folder(tmp_path / "data", size=28)
    t_small = _teacher_ckpt(tmp_path / "t.pth", "lskd_cnn_t")
    t_r18 = _teacher_ckpt(tmp_path / "r18.pth", "resnet18")
    base = _common(data, 28) + ["--epochs", "1", "--output-dir", str(tmp_path / "out")]
    cases = [
        (["--model", "lskd_cnn_s", "--feature-kd", "overhaul"], "--teacher MODEL --teacher-ckpt"),
        (["--model", "lskd_cnn_s", "--feature-kd", "overhaul", "--teacher-cache", str(tmp_path)],
         "teacher cache does not store"),
        (["--model", "mobilenet_v2", "--teacher", "lskd_cnn_t", "--teacher-ckpt", str(t_small),
          "--feature-kd", "overhaul"], "no known feature positions for --model 'mobilenet_v2'"),
        (["--model", "lskd_cnn_s", "--teacher", "resnet18", "--teacher-ckpt", str(t_r18), "--feature-kd", "overhaul"],
         "has 4 feature positions but student 'lskd_cnn_s' has 2"),
        (["--model", "lskd_cnn_s", "--teacher", "lskd_cnn_t", "--teacher-ckpt", str(t_small),
          "--feature-kd", "overhaul", "--feature-kd-weight", "nan"], "--feature-kd-weight must be"),
    ]
    for extra, needle in cases:
        code, err = vision_cli(base + extra, capsys)
        assert code == 2, (extra, err)
        assert needle in _one_line(err), (needle, err)


def test_resume_across_feature_kd_and_plain_kd_is_refused(tmp_path, capsys):
    data = _random_folder(tmp_path / "data", size=28)
    ckpt = _teacher_ckpt(tmp_path / "t.pth", "lskd_cnn_t")
    base = _common(data, 28) + ["--model", "lskd_cnn_s", "--teacher", "lskd_cnn_t", "--teacher-ckpt", str(ckpt),
                                "--epochs", "2"]
    fk, kd = tmp_path / "fk", tmp_path / "kd"
    assert vision_cli(base + ["--feature-kd", "overhaul", "--stop-after-epoch", "1", "--output-dir", str(fk)],
                      capsys)[0] == 0
    assert vision_cli(base + ["--stop-after-epoch", "1", "--output-dir", str(kd)], capsys)[0] == 0
    code, err = vision_cli(base + ["--resume", str(fk / "checkpoint.pth"), "--output-dir", str(fk)], capsys)
    assert code == 2 and "resume it with --feature-kd overhaul" in _one_line(err)
    code, err = vision_cli(base + ["--feature-kd", "overhaul", "--resume", str(kd / "checkpoint.pth"),
                                   "--output-dir", str(kd)], capsys)
    assert code == 2 and "trained without --feature-kd" in _one_line(err)
