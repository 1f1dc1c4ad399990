"""Data setup of the vision trainer: datasets with subset caps, the seeded augmentation stream,
and the train/validation loaders (see ``vision_plugin.train``)."""

from __future__ import annotations

import argparse
from typing import List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from vision_plugin.aug_stream import AugStream
from vision_plugin.batching import collate
from vision_plugin.datasets import DatasetError, build_dataset
from vision_plugin.distributed import DistInfo, ShardSampler


def subset_seed(args: argparse.Namespace) -> int:
    return args.subset_seed if args.subset_seed is not None else args.seed


def load_data(args: argparse.Namespace, need_train: bool = True) -> Tuple[Optional[Dataset], Dataset, List[str]]:
    """``(train_dataset | None, val_dataset, class_names)`` with the stratified caps applied.

    With ``--aug-seed`` the training set is an ``AugStream`` (views drawn from (aug seed, epoch,
    sample index), items carry their cache row); otherwise the datasets' own augmentation.
    """
    common = dict(crop_size=args.crop_size, val_resize_size=args.val_resize_size, subset_seed=subset_seed(args))
    train_ds = None
    val_ds = build_dataset(args.dataset, args.data_path, "val", augment=False, max_samples=args.val_samples, **common)
    classes = list(val_ds.classes)
    if need_train:
        if args.train_samples is not None and args.train_samples < len(classes):
            raise ValueError(f"--train-samples {args.train_samples} is below the number of classes ({len(classes)}): "
                             f"every class needs at least one training sample; raise it to >= {len(classes)}")
        train_ds = build_dataset(args.dataset, args.data_path, "train", augment=True,
                                 max_samples=args.train_samples, extra_augment=args.extra_augment, **common)
        if list(train_ds.classes) != classes:
            raise DatasetError(
                f"train and val splits have different classes ({len(train_ds.classes)} vs {len(classes)})"
            )
        if getattr(args, "aug_seed", None) is not None:
            train_ds = AugStream(train_ds, args.aug_seed)
    return train_ds, val_ds, classes


def num_workers(args: argparse.Namespace) -> int:
    if args.workers is not None:
        return args.workers
    return 0 if args.dataset == "fashion-mnist" else 8  # in-memory tensors need no workers


def build_loaders(args: argparse.Namespace, train_ds: Optional[Dataset], val_ds: Dataset, info: DistInfo,
                  device: torch.device) -> Tuple[Optional[DataLoader], Optional[DistributedSampler], DataLoader]:
    """Training loader over a seeded DistributedSampler (also single-process: its ``set_epoch``
    makes the shuffle a function of (seed, epoch)); validation over exact unpadded shards.
    Batches are ``batching.Batch`` (unreadable images listed, not raised in a worker)."""
    workers = num_workers(args)
    pin = device.type == "cuda"
    train_loader = train_sampler = None
    if train_ds is not None:
        train_sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank,
                                           shuffle=True, seed=args.seed, drop_last=False)
        train_loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=train_sampler,
                                  num_workers=workers, pin_memory=pin, drop_last=False, collate_fn=collate)
    val_loader = DataLoader(val_ds, batch_size=args.batch_size,
                            sampler=ShardSampler(len(val_ds), info.rank, info.world_size),
                            num_workers=workers, pin_memory=pin, collate_fn=collate)
    return train_loader, train_sampler, val_loader
