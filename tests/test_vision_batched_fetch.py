"""Batched fetching (``__getitems__``) of the in-memory grayscale datasets and the augmentation
stream: the DataLoader's batch path must give exactly the items of the per-sample path (same
pixels bit for bit, same targets, same RNG draws in the same order), so that a run's batches do
not depend on which path fetched them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vision_plugin.aug_stream import AugStream, RowView
from vision_plugin.batching import collate
from vision_plugin.datasets import GrayscaleTensorDataset, LabelledSubset

N = 40


def _dataset(train: bool, crop_size=None) -> GrayscaleTensorDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(N, 28, 28), dtype=np.uint8)
    return GrayscaleTensorDataset(images, np.arange(N) % 10, [str(i) for i in range(10)], train=train,
                                  crop_size=crop_size)


def _same(items_a, items_b) -> None:
    assert len(items_a) == len(items_b)
    for a, b in zip(items_a, items_b):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            if isinstance(x, torch.Tensor):
                assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
            else:
                assert x == y


IDX = [5, 0, 39, 17, 17, 3]


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("crop_size", [None, 32])  # 32: resized, which falls back to per-image
def test_grayscale_batch_items_equal_single_items(train, crop_size):
    ds = _dataset(train, crop_size)
    torch.manual_seed(7)
    single = [ds[i] for i in IDX]
    torch.manual_seed(7)
    batch = ds.__getitems__(IDX)
    _same(single, batch)
    # and the global RNG ends in the same state (the next epoch's draws do not shift)
    torch.manual_seed(7)
    [ds[i] for i in IDX]
    after_single = torch.rand(3)
    torch.manual_seed(7)
    ds.__getitems__(IDX)
    assert torch.equal(after_single, torch.rand(3))


def test_training_views_differ_from_the_plain_image():
    # the equality above must not hold trivially: augmentation really moves pixels
    ds, plain = _dataset(True), _dataset(False)
    torch.manual_seed(1)
    views = torch.stack([img for img, _ in ds.__getitems__(list(range(N)))])
    raw = torch.stack([img for img, _ in plain.__getitems__(list(range(N)))])
    assert not torch.equal(views, raw)
    assert views.shape == raw.shape == (N, 3, 28, 28)


def test_subset_delegates_to_the_batch_path():
    ds = LabelledSubset(_dataset(False), [3, 9, 11, 30])
    _same([ds[i] for i in range(4)], ds.__getitems__([0, 1, 2, 3]))


@pytest.mark.parametrize("recorded", [False, True])
def test_stream_batch_items_equal_single_items(recorded):
    stream = AugStream(LabelledSubset(_dataset(True), list(range(0, N, 2))), seed=11)
    rows = None
    if recorded:
        rows = np.stack([np.asarray(stream.item(2, p)[3]) for p in range(len(stream))]).astype(np.float32)
        rows[:, 2] = 1 - rows[:, 2]  # replay something the stream would not draw by itself
    stream.set_epoch(2, rows)
    pos = [4, 0, 19, 7]
    _same([stream[p] for p in pos], stream.__getitems__(pos))


def test_row_view_batch_spans_epochs():
    stream = AugStream(_dataset(True), seed=3)
    view = RowView(stream, range(N - 3, N + 5))  # the last rows of epoch 0 and the first of epoch 1
    idx = list(range(len(view)))
    _same([view[i] for i in idx], view.__getitems__(idx))


class _PerSample(Dataset):
    """The same dataset without ``__getitems__``: the DataLoader then fetches item by item."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.ds[i]


def test_dataloader_batches_match_per_sample_collation():
    ds = _dataset(True)

    def batches(dataset):
        torch.manual_seed(5)  # the loader draws its base seed from it, then the views do
        loader = DataLoader(dataset, batch_size=8, shuffle=True, collate_fn=collate, num_workers=0)
        return [(b.images, b.target) for b in loader]

    fast, slow = batches(ds), batches(_PerSample(ds))
    assert len(fast) == len(slow) == N // 8
    for (xa, ya), (xb, yb) in zip(fast, slow):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
