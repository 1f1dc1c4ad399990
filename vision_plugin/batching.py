"""Batches for the vision loaders: unreadable images are reported by name or skipped and counted.

Datasets return a ``BadSample(path, reason)`` instead of raising inside a DataLoader worker (the
worker's re-raised exception would bury the file name under a long traceback). ``collate`` drops
them from the batch and lists them; the main process then either stops with one line naming the
file (default) or, with ``--skip-bad-images``, counts them in the metrics.

Items are ``(image, target)`` or, from ``aug_stream.AugStream``, ``(image, target, row, params)``.
"""

from __future__ import annotations

import sys
from typing import Any, List, NamedTuple, Optional, Sequence

import torch
from torch.utils.data import default_collate

from vision_plugin.datasets import BadSample, DatasetError


class Batch(NamedTuple):
    images: Optional[torch.Tensor]  # None when every image of the batch was bad
    target: Optional[torch.Tensor]
    rows: Optional[torch.Tensor]  # cache rows (epoch * N + position), with AugStream only
    params: Optional[torch.Tensor]  # the augmentation parameters of each view, with AugStream only
    bad: List[BadSample]

    def __len__(self) -> int:  # number of good images
        return 0 if self.target is None else int(self.target.shape[0])


def collate(items: Sequence[Any]) -> Batch:
    bad = [item for item in items if isinstance(item, BadSample)]
    good = [item for item in items if not isinstance(item, BadSample)]
    if not good:
        return Batch(None, None, None, None, bad)
    fields = default_collate(good)
    rows = fields[2] if len(fields) > 2 else None
    params = fields[3] if len(fields) > 3 else None
    return Batch(fields[0], fields[1], rows, params, bad)


def bad_image_error(sample: BadSample) -> DatasetError:
    return DatasetError(
        f"cannot decode image {sample.path} ({sample.reason}); replace or delete the file, or pass "
        f"--skip-bad-images to skip unreadable images (they are counted in the metrics)"
    )


class BadImageLog:
    """Stops at the first bad image, or (``skip``) warns once per file and counts them."""

    def __init__(self, skip: bool, verbose: bool = True):
        self.skip = skip
        self.verbose = verbose
        self.seen: set = set()
        self.count = 0

    def check(self, batch: Batch) -> None:
        for sample in batch.bad:
            if not self.skip:
                raise bad_image_error(sample)
            self.count += 1
            if self.verbose and sample.path not in self.seen:
                print(f"warning: skipping unreadable image {sample.path} ({sample.reason})",
                      file=sys.stderr, flush=True)
            self.seen.add(sample.path)
