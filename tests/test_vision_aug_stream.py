"""The replayable augmentation stream against torchvision's own transforms, and a teacher cache on
an image folder (synthetic JPEGs: runs without any dataset package)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vision_plugin.aug_stream import AugStream
from vision_plugin.checkpoint import save_atomic
from vision_plugin.datasets import build_dataset
from vision_plugin.models import build_model


def _folder(root: Path, sizes=((40, 30), (23, 50), (64, 64), (31, 17))) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for k in range(2):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, (w, h) in enumerate(sizes):
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("seed", range(6))
def test_image_view_equals_torchvision_random_resized_crop_and_flip(tmp_path, seed):
    """Same random stream -> same (i, j, h, w, flip) and the same tensor as the trainer's
    torchvision Compose(RandomResizedCrop, RandomHorizontalFlip, ...) of plain runs."""
    from torchvision import transforms as T

    data = _folder(tmp_path)
    ds = build_dataset("imagefolder", str(data), "train", augment=True, crop_size=24)
    for index in range(len(ds)):
        raw = ds.load_raw(index)
        torch.manual_seed(seed * 100 + index)
        box = T.RandomResizedCrop.get_params(raw, [0.08, 1.0], [3 / 4, 4 / 3])
        torch.manual_seed(seed * 100 + index)
        expected = ds.transform(raw)  # global RNG: what a plain run computes
        params = ds.draw_params(raw, torch.Generator().manual_seed(seed * 100 + index))
        assert tuple(int(v) for v in params[:4]) == tuple(box)
        assert torch.equal(ds.apply_params(raw, params), expected)


def test_fashion_like_view_equals_the_plain_getitem(tmp_path):
    """Pad-crop + flip: the stream's draw with a generator reproduces __getitem__ under the same seed."""
    from vision_plugin.datasets import GrayscaleTensorDataset

    images = np.random.default_rng(1).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    ds = GrayscaleTensorDataset(images, np.arange(5), [str(i) for i in range(5)], train=True)
    for index in range(5):
        torch.manual_seed(index)
        expected, _ = ds[index]
        raw = ds.load_raw(index)
        params = ds.draw_params(raw, torch.Generator().manual_seed(index))
        assert torch.equal(ds.apply_params(raw, params), expected)


def test_stream_is_independent_of_global_rng_and_order(tmp_path):
    data = _folder(tmp_path)
    stream = AugStream(build_dataset("imagefolder", str(data), "train", augment=True, crop_size=16), seed=3)
    stream.set_epoch(1)
    torch.manual_seed(0)
    forward = [stream[i] for i in range(len(stream))]
    torch.manual_seed(99)
    backward = [stream[i] for i in reversed(range(len(stream)))][::-1]
    for a, b in zip(forward, backward):
        assert torch.equal(a[0], b[0]) and a[1:3] == b[1:3] and torch.equal(a[3], b[3])
    assert [item[2] for item in forward] == [len(stream) + i for i in range(len(stream))]  # row = epoch * N + pos
    stream.set_epoch(2)
    assert not torch.equal(stream[0][0], forward[0][0])


def test_extra_augment_cannot_be_replayed(tmp_path):
    data = _folder(tmp_path)
    ds = build_dataset("imagefolder", str(data), "train", augment=True, crop_size=16, extra_augment=True)
    with pytest.raises(ValueError, match="--extra-augment"):
        AugStream(ds, seed=0)


def test_image_folder_cache_round_trip(tmp_path, capsys):
    """Build a cache on an image folder, train from it, and compare with a live-teacher student."""
    from vision_plugin import teacher_cache, train

    data = _folder(tmp_path / "data")
    torch.manual_seed(0)
    ckpt = tmp_path / "t.pth"
    save_atomic({"model": build_model("lskd_cnn_t", 2).state_dict(), "num_classes": 2}, ckpt)
    common = ["--dataset", "imagefolder", "--data-path", str(data), "--crop-size", "16", "--workers", "0",
              "--batch-size", "4", "--no-progress", "--threads", "1"]
    assert teacher_cache.main(["build", *common, "--teacher", "lskd_cnn_t", "--teacher-ckpt", str(ckpt),
                               "--epochs", "1", "--seed", "4", "--out", str(tmp_path / "cache"),
                               "--topk", "2", "--cache-temperatures", "2"]) == 0
    header = json.loads((tmp_path / "cache" / "header.json").read_text())
    assert header["aux_dim"] == 5 and header["kind"] == "topk"
    assert header["fingerprint"]["transform"]["kind"] == "random_resized_crop_flip"
    student = [*common, "--model", "lskd_cnn_s", "--epochs", "1", "--kd-temperature", "2", "--seed", "1"]
    cached = train.main(train.get_args_parser().parse_args(
        [*student, "--teacher-cache", str(tmp_path / "cache"), "--output-dir", str(tmp_path / "a")]))
    live = train.main(train.get_args_parser().parse_args(
        [*student, "--teacher", "lskd_cnn_t", "--teacher-ckpt", str(ckpt), "--aug-seed", "4", "--subset-seed", "4",
         "--output-dir", str(tmp_path / "b")]))
    assert cached["val_loss"] == pytest.approx(live["val_loss"], abs=1e-6)
    # a top-K cache serves only its temperatures
    code = train.cli([*student, "--kd-temperature", "3", "--teacher-cache", str(tmp_path / "cache"),
                      "--output-dir", str(tmp_path / "c")])
    assert code == 2 and "temperatures" in capsys.readouterr().err
