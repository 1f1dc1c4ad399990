"""Fast unit tests of vision_plugin: datasets, subsets, models, checkpoints, KD criterion, teacher."""

from __future__ import annotations

import argparse
import gzip
import math
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vision_plugin.checkpoint import CheckpointError, extract_state_dict, load_checkpoint, save_atomic
from vision_plugin.datasets import (
    FASHION_MNIST_CLASSES,
    DatasetError,
    build_dataset,
    filter_classes,
    load_fashion_mnist,
    read_cub_split,
    read_idx,
    stratified_indices,
)
from vision_plugin.distributed import ShardSampler
from vision_plugin.kd import KDCriterion, LiveTeacher, build_teacher
from vision_plugin.models import build_model, find_final_linear
from vision_plugin.penultimate import PenultimateCapture
from vision_plugin.train import build_lr_scheduler, get_args_parser

# --------------------------------------------------------------------------- IDX / Fashion-MNIST


def _write_idx(path, array: np.ndarray, code: int = 0x08, compress: bool = True) -> None:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(">u1" if code == 0x08 else ">i4").tobytes()
    with (gzip.open if compress else open)(path, "wb") as fh:
        fh.write(data)


def _fake_fmnist(root, n=40, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    for _split, stem in (("train", "train"), ("val", "t10k")):
        _write_idx(root / f"{stem}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{stem}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return images, labels


def test_read_idx_roundtrip_and_truncation(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    _write_idx(tmp_path / "raw", arr, compress=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "raw"), arr)
    raw = (tmp_path / "raw").read_bytes()
    (tmp_path / "cut").write_bytes(raw[:-5])
    with pytest.raises(DatasetError, match="truncated"):
        read_idx(tmp_path / "cut")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DatasetError, match="magic"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_reader_on_fake_files(tmp_path):
    images, labels = _fake_fmnist(tmp_path)
    got_images, got_labels = load_fashion_mnist(tmp_path, "train")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    ds = build_dataset("fashion-mnist", str(tmp_path), "val", augment=False)
    x, y = ds[3]
    assert x.shape == (3, 28, 28) and y == 3
    # grayscale replicated to 3 identical channels, normalised with the dataset statistics
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    expected = (torch.from_numpy(images[3]).float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(x[0], expected, atol=1e-6)
    big = build_dataset("fashion-mnist", str(tmp_path), "train", augment=True, crop_size=64)
    assert big[0][0].shape == (3, 64, 64)
    assert ds.classes == FASHION_MNIST_CLASSES


def test_fashion_mnist_missing_names_path_and_package(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as err:
        load_fashion_mnist(missing, "train")
    assert str(missing) in str(err.value) and "apt-get install dataset-fashion-mnist" in str(err.value)
    tmp_path.joinpath("empty").mkdir()
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path / "empty", "train")


def test_augmentation_replays_under_reseeding(tmp_path):
    _fake_fmnist(tmp_path)
    ds = build_dataset("fashion-mnist", str(tmp_path), "train", augment=True)
    torch.manual_seed(5)
    a = torch.stack([ds[i][0] for i in range(10)])
    torch.manual_seed(5)
    b = torch.stack([ds[i][0] for i in range(10)])
    torch.manual_seed(6)
    c = torch.stack([ds[i][0] for i in range(10)])
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------------- subsets


def test_stratified_indices_keeps_proportions_and_is_seeded():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])  # 200 samples
    idx = stratified_indices(labels, 50, seed=1)
    assert len(idx) == 50 and len(set(idx.tolist())) == 50 and np.all(np.diff(idx) > 0)
    counts = np.bincount(labels[idx], minlength=4)
    # quotas 25, 12.5, 7.5, 5: one leftover sample goes to the tied remainder of the lower class id
    assert counts.tolist() == [25, 13, 7, 5]
    assert np.array_equal(idx, stratified_indices(labels, 50, seed=1))
    assert not np.array_equal(idx, stratified_indices(labels, 50, seed=2))
    assert np.array_equal(stratified_indices(labels, 500, seed=0), np.arange(200))
    # a tiny cap still keeps every class
    tiny = stratified_indices(labels, 4, seed=0)
    assert sorted(labels[tiny].tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="cap"):
        stratified_indices(labels, 0, seed=0)


def test_stratified_quota_sum_exact_on_rare_classes():
    labels = np.array([0] * 97 + [1, 2, 3])
    idx = stratified_indices(labels, 10, seed=0)
    assert len(idx) == 10
    assert set(labels[idx].tolist()) == {0, 1, 2, 3}


# --------------------------------------------------------------------------- CUB / imagefolder


def _png(path, color, size=(20, 16)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _fake_cub(root):
    root = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    rows, labels, split = [], [], []
    image_id = 0
    for c, name in enumerate(classes):
        for j in range(4):
            image_id += 1
            rel = f"{name}/{name.split('.')[1]}_{j}.png"
            _png(root / "images" / rel, (60 * c, 10 * j, 200))
            rows.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {1 if j < 3 else 0}")
    (root / "images.txt").write_text("\n".join(rows) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (root / "classes.txt").write_text("\n".join(f"{i + 1} {n}" for i, n in enumerate(classes)) + "\n")
    return root


def test_cub_reader_on_fake_layout(tmp_path):
    root = _fake_cub(tmp_path)
    train, names = read_cub_split(tmp_path, "train")  # parent of CUB_200_2011 is accepted too
    val, _ = read_cub_split(root, "val")
    assert names == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    assert [lab for _, lab in train] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [lab for _, lab in val] == [0, 1, 2]
    assert all(p.is_file() for p, _ in train + val)
    ds = build_dataset("cub", str(root), "val", augment=False, crop_size=16, val_resize_size=18)
    x, y = ds[2]
    assert x.shape == (3, 16, 16) and y == 2 and ds.classes == names
    sub = build_dataset("cub", str(root), "train", augment=True, crop_size=16, max_samples=3, subset_seed=0)
    assert sorted(sub.targets) == [0, 1, 2]
    (root / "train_test_split.txt").unlink()
    with pytest.raises(DatasetError, match="train_test_split.txt"):
        read_cub_split(root, "train")
    with pytest.raises(DatasetError, match="CUB-200-2011 layout not found"):
        read_cub_split(tmp_path / "nothing", "train")


def test_imagefolder_layout_and_missing_split(tmp_path):
    for split in ("train", "val"):
        for c in ("cat", "dog"):
            for j in range(2):
                _png(tmp_path / split / c / f"{j}.png", (10, 20, 30))
    ds = build_dataset("imagefolder", str(tmp_path), "train", augment=True, crop_size=16)
    assert ds.classes == ["cat", "dog"] and ds[0][0].shape == (3, 16, 16)
    (tmp_path / "only").mkdir()
    with pytest.raises(DatasetError, match="val"):
        build_dataset("imagefolder", str(tmp_path / "only"), "val", augment=False)


def test_filter_classes(tmp_path):
    _fake_fmnist(tmp_path)
    ds = build_dataset("fashion-mnist", str(tmp_path), "val", augment=False)
    sub = filter_classes(ds, [1, 7])
    assert set(sub.targets) == {1, 7} and len(sub) == 8
    with pytest.raises(ValueError, match="outside"):
        filter_classes(ds, [10])


# --------------------------------------------------------------------------- models / features


@pytest.mark.parametrize("name,layer", [
    ("lskd_cnn_t", "fc"), ("lskd_cnn_s", "fc"), ("resnet18", "fc"),
    ("mobilenet_v2", "classifier.1"), ("efficientnet_b0", "classifier.1"), ("convnext_tiny", "classifier.2"),
])
def test_find_final_linear_generic(name, layer):
    model = build_model(name, num_classes=7)
    found, linear = find_final_linear(model)
    assert found == layer and linear.out_features == 7


def test_penultimate_capture_is_fc_input():
    torch.manual_seed(0)
    for name in ("lskd_cnn_s", "resnet18"):
        model = build_model(name, num_classes=5).eval()
        cap = PenultimateCapture(model)
        x = torch.randn(3, 3, 32, 32)
        with torch.no_grad():
            logits = model(x)
        feats = cap.features
        fc = cap.layer
        assert torch.allclose(feats @ fc.weight.T + fc.bias, logits, atol=1e-5)
        if name == "resnet18":
            with torch.no_grad():
                m = model
                h = m.maxpool(m.relu(m.bn1(m.conv1(x))))
                h = m.layer4(m.layer3(m.layer2(m.layer1(h))))
                assert torch.allclose(torch.flatten(m.avgpool(h), 1), feats, atol=1e-5)
        else:
            with torch.no_grad():
                assert torch.allclose(model.forward_features(x), feats, atol=1e-6)


def test_build_model_unknown_name():
    with pytest.raises(ValueError, match="not_a_model"):
        build_model("not_a_model", 10)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("lskd_cnn_s", 10, weights="IMAGENET1K_V1")


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_roundtrip_and_formats(tmp_path):
    model = build_model("lskd_cnn_s", 10)
    path = tmp_path / "c.pth"
    save_atomic({"model": model.state_dict(), "epoch": 3, "args": {"lr": 0.1}, "num_classes": 10}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]  # no temporary left behind
    obj = load_checkpoint(path)
    sd = extract_state_dict(obj, path)
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    # torchvision reference checkpoints keep args as an argparse.Namespace: allow-listed
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=0.5), "epoch": 1}, tmp_path / "tv.pth")
    tv = load_checkpoint(tmp_path / "tv.pth")
    assert tv["args"].lr == 0.5
    # raw DDP-prefixed state dict
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "ddp.pth")
    assert set(extract_state_dict(load_checkpoint(tmp_path / "ddp.pth"))) == set(model.state_dict())


class _Evil:
    def __reduce__(self):
        return (print, ("this would run code",))


@pytest.mark.parametrize("kind", ["garbage", "truncated", "unsafe", "missing"])
def test_bad_checkpoint_files_give_clear_errors(tmp_path, kind):
    path = tmp_path / "bad.pth"
    model = build_model("lskd_cnn_s", 10)
    if kind == "garbage":
        path.write_bytes(b"\x00\x17not a checkpoint at all" * 10)
    elif kind == "truncated":
        torch.save({"model": model.state_dict()}, path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "unsafe":
        torch.save({"model": model.state_dict(), "extra": _Evil()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg
    if kind == "missing":
        assert "does not exist" in msg
    else:
        assert ("cannot be loaded safely" if kind == "unsafe" else "not a readable PyTorch checkpoint") in msg


# --------------------------------------------------------------------------- KD criterion / teacher


def test_kd_criterion_matches_independent_formula():
    torch.manual_seed(0)
    s = torch.randn(6, 5, dtype=torch.float64)
    t = torch.randn(6, 5, dtype=torch.float64) * 3
    y = torch.tensor([0, 1, 2, 3, 4, 0])

    class FixedTeacher:
        num_classes = 5

        def logits(self, images):
            return t.float()

    images = torch.zeros(6, 3, 4, 4)
    for temp, beta, alpha in [(1.0, 1.0, 0.0), (4.0, 1.0, 0.0), (2.0, 0.3, 0.1), (64.0, 0.0, 0.1)]:
        got = KDCriterion(FixedTeacher(), temp, beta, alpha)(s.float(), y, images)
        # independent float64 formula (paper Sec. 2)
        y_ls = F.one_hot(y, 5).double() * (1 - alpha) + alpha / 5
        ce = -(y_ls * F.log_softmax(s, 1)).sum(1).mean()
        pt = F.softmax(t / temp, 1)
        kl = (pt * (torch.log(pt) - F.log_softmax(s / temp, 1))).sum(1).mean()
        want = (1 - beta) * ce + beta * temp * temp * kl
        assert math.isclose(float(got), float(want), rel_tol=1e-5, abs_tol=1e-6), (temp, beta, alpha)
    # without a teacher (or without images) it is torch's label-smoothed cross-entropy
    for crit in (KDCriterion(None, label_smoothing=0.1), KDCriterion(FixedTeacher(), 2.0, 1.0, 0.1)):
        got = crit(s.float(), y)
        assert torch.allclose(got, F.cross_entropy(s.float(), y, label_smoothing=0.1), atol=1e-6)


def test_kd_criterion_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="--kd-temperature"):
        KDCriterion(None, temperature=0.0)
    with pytest.raises(ValueError, match="--kd-temperature"):
        KDCriterion(None, temperature=float("nan"))
    with pytest.raises(ValueError, match="--kd-beta"):
        KDCriterion(None, beta=1.5)
    with pytest.raises(ValueError, match="--label-smoothing"):
        KDCriterion(None, label_smoothing=1.0)


def test_live_teacher_is_frozen():
    net = build_model("lskd_cnn_s", 10)
    teacher = LiveTeacher(net)
    assert not isinstance(teacher, torch.nn.Module)
    teacher.module.train()
    assert not teacher.module.training and not net.training
    assert all(not p.requires_grad for p in net.parameters())
    x = torch.randn(4, 3, 28, 28, requires_grad=True)
    out = teacher.logits(x)
    assert out.grad_fn is None and out.shape == (4, 10)
    # eval mode: output independent of batch composition (BN running stats, no dropout)
    assert torch.allclose(teacher.logits(x[:2]), out[:2], atol=1e-5)


def _kd_args(**kw):
    args = get_args_parser().parse_args(["--dataset", "fashion-mnist"])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_build_teacher_checks_classes_and_architecture(tmp_path):
    t5 = build_model("lskd_cnn_t", 5)
    save_atomic({"model": t5.state_dict(), "num_classes": 5}, tmp_path / "t5.pth")
    torch.save(t5.state_dict(), tmp_path / "raw5.pth")  # raw state dict: class count from fc rows
    for name in ("t5.pth", "raw5.pth"):
        with pytest.raises(CheckpointError) as err:
            build_teacher(_kd_args(teacher="lskd_cnn_t", teacher_ckpt=str(tmp_path / name)), 10, torch.device("cpu"))
        assert "5 classes" in str(err.value) and "10 classes" in str(err.value)
    t10 = build_model("lskd_cnn_t", 10)
    save_atomic({"model": t10.state_dict(), "num_classes": 10}, tmp_path / "t10.pth")
    with pytest.raises(CheckpointError, match="does not match architecture 'lskd_cnn_s'"):
        build_teacher(_kd_args(teacher="lskd_cnn_s", teacher_ckpt=str(tmp_path / "t10.pth")), 10, torch.device("cpu"))
    teacher = build_teacher(_kd_args(teacher="lskd_cnn_t", teacher_ckpt=str(tmp_path / "t10.pth")), 10,
                            torch.device("cpu"))
    x = torch.randn(2, 3, 28, 28)
    assert torch.allclose(teacher.logits(x), t10.eval()(x), atol=1e-6)
    with pytest.raises(ValueError, match="needs --teacher-ckpt"):
        build_teacher(_kd_args(teacher="lskd_cnn_t"), 10, torch.device("cpu"))
    assert build_teacher(_kd_args(), 10, torch.device("cpu")) is None


# --------------------------------------------------------------------------- schedules / sharding


def test_lr_schedules_follow_torchvision_reference():
    def lrs(argv, epochs):
        args = get_args_parser().parse_args(["--lr", "1.0", "--epochs", str(epochs)] + argv)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
        sched = build_lr_scheduler(args, opt)
        out = []
        for _ in range(epochs):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs(["--lr-step-size", "2", "--lr-gamma", "0.5"], 5) == pytest.approx([1, 1, 0.5, 0.5, 0.25])
    cos = lrs(["--lr-scheduler", "cosineannealinglr"], 4)
    assert cos == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)])
    warm = lrs(["--lr-scheduler", "cosineannealinglr", "--lr-warmup-epochs", "2", "--lr-warmup-decay", "0.1"], 5)
    assert warm[:2] == pytest.approx([0.1, 0.55]) and warm[2] == pytest.approx(1.0)
    assert warm[3] == pytest.approx(0.5 * (1 + math.cos(math.pi / 3)))


def test_shard_sampler_partitions_exactly():
    for n, world in [(10, 3), (7, 2), (1, 4), (500, 2)]:
        shards = [list(ShardSampler(n, r, world)) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))
        assert [len(ShardSampler(n, r, world)) for r in range(world)] == [len(s) for s in shards]
