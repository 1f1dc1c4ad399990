"""Issue 9 (vision): undecodable images, one CLI error path, unsafe-checkpoint messages, the
caller's allow-list, argument checks. Small synthetic data, CPU, seconds."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, subprocess_env, vision_cli

from vision_plugin.checkpoint import CheckpointError, load_checkpoint, save_atomic
from vision_plugin.models import build_model


def _image_folder(root: Path, bad: str = "") -> Path:
    """Two classes, 4 train + 2 val JPEGs each (16x16); ``bad`` = "train" or "val" truncates one."""
    from PIL import Image

    for split, count in (("train", 4), ("val", 2)):
        for k, colour in enumerate(((200, 30, 30), (30, 30, 200))):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.new("RGB", (16, 16), tuple(c + 5 * i for c in colour)).save(folder / f"img{i}.jpg", quality=90)
    if bad:
        victim = root / bad / "class1" / "img1.jpg"
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])  # a truncated JPEG: PIL fails while decoding
    return root


def _train_argv(data: Path, out: Path, *extra: str):
    return ["--dataset", "imagefolder", "--data-path", str(data), "--model", "lskd_cnn_s", "--crop-size", "16",
            "--epochs", "1", "--batch-size", "4", "--no-progress", "--device", "cpu", "--output-dir", str(out),
            *extra]


def _error_lines(err: str):
    return [line for line in err.splitlines() if line.strip()]


# --------------------------------------------------------------------------- undecodable images


@pytest.mark.parametrize("workers", ["0", "1"])
def test_truncated_jpeg_is_named_in_one_line(tmp_path, workers):
    data = _image_folder(tmp_path / "data", bad="train")
    proc = subprocess.run([sys.executable, str(REPO / "vision_plugin" / "train.py"),
                           *_train_argv(data, tmp_path / "out", "--workers", workers)],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = _error_lines(proc.stderr)
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert str(data / "train" / "class1" / "img1.jpg") in lines[0] and "--skip-bad-images" in lines[0]


@pytest.mark.parametrize("split", ["train", "val"])
def test_skip_bad_images_counts_them(tmp_path, capsys, split):
    data = _image_folder(tmp_path / "data", bad=split)
    out = tmp_path / "out"
    code, err = vision_cli(_train_argv(data, out, "--workers", "0", "--skip-bad-images"), capsys)
    assert code == 0, err
    assert err.count("skipping unreadable image") == 1 and "img1.jpg" in err
    epoch = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1]
    if split == "train":
        assert epoch["train_skipped_images"] == 1 and epoch["train_images"] == 7
        assert epoch["val_skipped_images"] == 0 and epoch["val_count"] == 4
    else:
        assert epoch["train_skipped_images"] == 0 and epoch["train_images"] == 8
        assert epoch["val_skipped_images"] == 1 and epoch["val_count"] == 3


# --------------------------------------------------------------------------- one CLI error path


def test_output_dir_that_is_a_file(tmp_path, capsys):
    data = _image_folder(tmp_path / "data")
    blocker = tmp_path / "out"
    blocker.write_text("not a directory")
    code, err = vision_cli(_train_argv(data, blocker, "--workers", "0"), capsys)
    assert code == 2 and len(_error_lines(err)) == 1 and str(blocker) in err


def test_output_dir_behind_a_dangling_symlink(tmp_path, capsys):
    data = _image_folder(tmp_path / "data")
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    code, err = vision_cli(_train_argv(data, link, "--workers", "0"), capsys)
    assert code == 2 and len(_error_lines(err)) == 1 and str(link) in err and "symlink" in err


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_dir(tmp_path, capsys):
    data = _image_folder(tmp_path / "data")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        code, err = vision_cli(_train_argv(data, out, "--workers", "0"), capsys)
    finally:
        out.chmod(0o755)
    assert code == 2 and len(_error_lines(err)) == 1 and str(out) in err


def test_read_only_file_system_message():
    """EROFS (and the other errnos a user causes) -> the file and a remedy; other errors -> None."""
    import errno

    from vision_plugin.cli_errors import user_error_message

    msg = user_error_message(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/checkpoint.pth"))
    assert msg is not None and "/mnt/ro/checkpoint.pth" in msg and "writable" in msg
    assert user_error_message(KeyError("x")) is None
    assert user_error_message(OSError(errno.ECONNRESET, "reset")) is None


def test_full_disk_during_checkpoint_write(tmp_path, capsys, monkeypatch):
    """torch's zip writer reports a full disk as 'unexpected pos'; the CLI names the file."""
    data = _image_folder(tmp_path / "data")
    out = tmp_path / "out"

    def full_disk(obj, fh, *a, **k):
        fh.write(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4416 vs 4304")

    monkeypatch.setattr(torch, "save", full_disk)
    code, err = vision_cli(_train_argv(data, out, "--workers", "0"), capsys)
    assert code == 2 and len(_error_lines(err)) == 1, err
    assert str(out / "model_0.pth") in err and "disk" in err
    assert not list(out.glob(".*tmp"))  # the partial temporary file was removed


def test_genuine_bug_keeps_its_traceback(tmp_path, monkeypatch):
    import vision_plugin.train as T

    data = _image_folder(tmp_path / "data")

    def broken(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr(T, "build_optimizer", broken)
    with pytest.raises(KeyError):
        T.cli(_train_argv(data, tmp_path / "out", "--workers", "0"))


# --------------------------------------------------------------------------- checkpoints


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo this would run code",))


def test_unsafe_checkpoint_names_the_blocked_global_and_a_safe_remedy(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": build_model("lskd_cnn_s", 10).state_dict(), "x": _Evil()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and f"{os.system.__module__}.system" in msg
    assert "weights_only=False" not in msg and "re-save" in msg


def test_loading_keeps_the_callers_allow_list(tmp_path):
    path = tmp_path / "ref.pth"
    save_atomic({"model": build_model("lskd_cnn_s", 10).state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    before = list(torch.serialization.get_safe_globals())
    # start from an empty allow-list: an earlier test in this process may have allowed Namespace
    torch.serialization.clear_safe_globals()
    try:
        # caller had not allowed it: allowed for our load only, not left behind
        assert load_checkpoint(path)["args"].lr == 0.1
        assert argparse.Namespace not in torch.serialization.get_safe_globals()
        # caller allowed it (torchvision reference's --resume fix): still allowed after our load
        torch.serialization.add_safe_globals([argparse.Namespace])
        load_checkpoint(path)
        assert argparse.Namespace in torch.serialization.get_safe_globals()
        assert torch.load(path, weights_only=True)["args"].lr == 0.1
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


# --------------------------------------------------------------------------- arguments


def test_unknown_teacher_name_is_reported_as_teacher(tmp_path, capsys):
    data = _image_folder(tmp_path / "data")
    ckpt = tmp_path / "t.pth"
    save_atomic({"model": build_model("lskd_cnn_t", 2).state_dict()}, ckpt)
    code, err = vision_cli(_train_argv(data, tmp_path / "out", "--workers", "0", "--teacher", "no_such_net",
                                 "--teacher-ckpt", str(ckpt)), capsys)
    assert code == 2 and "--teacher 'no_such_net'" in err and "--model" not in err


def test_train_samples_below_class_count(tmp_path, capsys):
    data = _image_folder(tmp_path / "data")
    code, err = vision_cli(_train_argv(data, tmp_path / "out", "--workers", "0", "--train-samples", "1"), capsys)
    assert code == 2 and len(_error_lines(err)) == 1 and "--train-samples 1" in err and "2" in err


@pytest.mark.parametrize("value", ["1e-300", "1e300", "0.001", "1e6", "nan", "-1"])
def test_absurd_temperatures_refused_up_front(tmp_path, capsys, value):
    data = _image_folder(tmp_path / "data")
    ckpt = tmp_path / "t.pth"
    save_atomic({"model": build_model("lskd_cnn_t", 2).state_dict()}, ckpt)
    code, err = vision_cli(_train_argv(data, tmp_path / "out", "--teacher", "lskd_cnn_t", "--teacher-ckpt", str(ckpt),
                                 "--kd-temperature", value), capsys)
    assert code == 2 and "--kd-temperature" in err and len(_error_lines(err)) == 1
    assert not (tmp_path / "out").exists()


def test_teacher_with_mixup_is_refused():
    from vision_plugin.kd import check_kd_args

    args = argparse.Namespace(kd_temperature=1.0, kd_beta=1.0, label_smoothing=0.0, teacher="resnet18",
                              teacher_ckpt="t.pth", teacher_weights=None, mixup_alpha=0.2, cutmix_alpha=0.0)
    with pytest.raises(ValueError, match="--mixup-alpha"):
        check_kd_args(args)
    args.teacher, args.teacher_ckpt = None, None
    check_kd_args(args)  # no teacher: mixup is the plain script's business


def test_export_output_inside_a_file_is_one_line(tmp_path, capsys):
    from vision_plugin.export_features import main as export_main

    data = _image_folder(tmp_path / "data")
    ckpt = tmp_path / "m.pth"
    save_atomic({"model": build_model("lskd_cnn_s", 2).state_dict(), "num_classes": 2}, ckpt)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = export_main(["--ckpt", str(ckpt), "--model", "lskd_cnn_s", "--dataset", "imagefolder", "--data-path",
                        str(data), "--crop-size", "16", "--split", "val", "--workers", "0",
                        "--out", str(blocker / "feats.npz")])
    err = capsys.readouterr().err
    assert code == 2 and len(_error_lines(err)) == 1 and str(blocker) in err, err
