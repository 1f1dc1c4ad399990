"""Training augmentation as a seeded, replayable stream: the basis of the exact teacher cache.

By default the trainer's augmentation draws from torch's global RNG, reseeded per (seed, epoch,
rank): the views then depend on the student's seed, the world size and the sample order. With
``--aug-seed S`` (set automatically by ``--teacher-cache``) every training view is a function of
``(S, epoch, sample index)`` only: its parameters (pad-crop offset + flip for Fashion-MNIST,
random-resized-crop box + flip for image files) come from a generator seeded with exactly those
three numbers. The teacher-cache builder draws the same parameters, runs the teacher on exactly
that view and records them; a cached run replays the recorded parameters. So a student's seed
changes its initialisation and its sample order, never the views, and a cached student and a
live-teacher student with the same ``--aug-seed`` see the same inputs and targets.

Row of a (epoch, position) = ``epoch * N + position``, with positions in the (subset) index list.
"""

from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from vision_plugin.datasets import BadSample, LabelledSubset


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy SeedSequence hashing)."""
    state = np.random.SeedSequence([int(p) % (2**63) for p in parts]).generate_state(2, dtype=np.uint32)
    return int(state[0]) | (int(state[1] & 0x7FFFFFFF) << 32)


def unwrap(dataset: Dataset) -> Tuple[Dataset, np.ndarray]:
    """``(base dataset, base index of each position)`` through any ``LabelledSubset`` layers."""
    positions = np.arange(len(dataset), dtype=np.int64)
    while isinstance(dataset, LabelledSubset):
        positions = np.asarray(dataset.indices, dtype=np.int64)[positions]
        dataset = dataset.dataset
    if not all(hasattr(dataset, name) for name in ("load_raw", "draw_params", "apply_params", "transform_spec")):
        raise ValueError(f"{type(dataset).__name__} has no replayable training augmentation "
                         f"(needed by --aug-seed / --teacher-cache)")
    return dataset, positions


class AugStream(Dataset):
    """Training views from the seeded stream, or replayed from recorded parameters.

    Items: ``(image, target, row, params)`` (or a ``BadSample``). ``set_epoch(e, recorded)``
    selects the epoch; ``recorded`` (``[N, P]``, e.g. a teacher cache's aux rows of that epoch)
    replaces the drawn parameters.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.base, self.indices = unwrap(dataset)
        if getattr(self.base, "extra_augment", False):
            raise ValueError("--extra-augment (random rotation, colour jitter) cannot be replayed yet: "
                             "drop it to use --aug-seed or --teacher-cache")
        if getattr(self.base, "train", True) is False or getattr(self.base, "view", True) is None:
            raise ValueError("AugStream needs the training split with augmentation")
        self.seed = int(seed)
        self.num_params = int(self.base.AUG_PARAMS)
        self.targets = [int(self.base.targets[i]) for i in self.indices]
        self.classes = list(self.base.classes)
        self.epoch = 0
        self.recorded: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.indices.size)

    def set_epoch(self, epoch: int, recorded: Optional[np.ndarray] = None) -> None:
        if recorded is not None and tuple(recorded.shape) != (len(self), self.num_params):
            raise ValueError(f"recorded augmentation parameters have shape {tuple(recorded.shape)}, "
                             f"expected ({len(self)}, {self.num_params})")
        self.epoch = int(epoch)
        self.recorded = None if recorded is None else np.ascontiguousarray(recorded, dtype=np.float32)

    def transform_spec(self) -> Dict[str, Any]:
        return dict(self.base.transform_spec())

    def generator(self, epoch: int, base_index: int) -> torch.Generator:
        return torch.Generator().manual_seed(mix_seed(self.seed, epoch, base_index))

    def item(self, epoch: int, position: int, recorded: Optional[np.ndarray] = None):
        base_index = int(self.indices[position])
        raw = self.base.load_raw(base_index)
        if isinstance(raw, BadSample):
            return raw
        if recorded is None:
            params: List[float] = self.base.draw_params(raw, self.generator(epoch, base_index))
        else:
            params = [float(v) for v in recorded]
        image = self.base.apply_params(raw, params)
        row = epoch * len(self) + position
        return image, self.targets[position], row, torch.tensor(params, dtype=torch.float32)

    def items(self, epochs: Sequence[int], positions: Sequence[int], recorded: Optional[np.ndarray] = None) -> list:
        """``item`` for several (epoch, position) pairs at once (``recorded``: one row per pair),
        with the base dataset's batch operations when it has them; the same items, bit for bit."""
        base_indices = [int(self.indices[p]) for p in positions]
        load_batch = getattr(self.base, "load_raw_batch", None)
        raws = load_batch(base_indices) if load_batch is not None else None
        if raws is None:
            return [self.item(e, p, None if recorded is None else recorded[k])
                    for k, (e, p) in enumerate(zip(epochs, positions))]
        if recorded is None:
            table = torch.tensor([self.base.draw_params(raws[k], self.generator(e, b))
                                  for k, (e, b) in enumerate(zip(epochs, base_indices))], dtype=torch.float32)
        else:
            table = torch.from_numpy(np.array(recorded, dtype=np.float32).reshape(len(positions), -1))
        images = self.base.apply_params_batch(raws, table.tolist())
        n = len(self)
        return [(images[k], self.targets[p], e * n + p, table[k]) for k, (e, p) in enumerate(zip(epochs, positions))]

    def __getitem__(self, position: int):
        recorded = None if self.recorded is None else self.recorded[position]
        return self.item(self.epoch, position, recorded)

    def __getitems__(self, positions: Sequence[int]) -> list:
        recorded = None if self.recorded is None else self.recorded[np.asarray(positions, dtype=np.int64)]
        return self.items([self.epoch] * len(positions), positions, recorded)


class RowView(Dataset):
    """Rows ``start .. stop-1`` of the stream (row -> (epoch, position)): the cache builder's input."""

    def __init__(self, stream: AugStream, rows: range):
        self.stream = stream
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        epoch, position = divmod(self.rows[i], len(self.stream))
        return self.stream.item(epoch, position)

    def __getitems__(self, indices: Sequence[int]) -> list:
        pairs = [divmod(self.rows[i], len(self.stream)) for i in indices]
        return self.stream.items([e for e, _ in pairs], [p for _, p in pairs])


def indices_sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype="<i8").tobytes()).hexdigest()


def dataset_identity(stream: AugStream, name: str) -> Dict[str, Any]:
    """Which data a cache was built on: dataset kind, base size, a hash of all base labels, and
    the exact (subset) sample indices."""
    labels = np.asarray(stream.base.targets, dtype="<i8")
    return {"name": name, "split": "train", "base_size": int(labels.size), "num_classes": len(stream.classes),
            "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest()}
