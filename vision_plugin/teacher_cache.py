"""Vision teacher cache: one teacher pass, exact under augmentation, for every T and student seed.

Build (the trainer's data and teacher flags, plus the cache's own)::

    python -m vision_plugin.teacher_cache build --dataset fashion-mnist --train-samples 2000 \\
        --teacher lskd_cnn_t --teacher-ckpt teacher/checkpoint.pth \\
        --epochs 30 --seed 0 --out cache/ [--dtype float32|bfloat16|float16] \\
        [--topk K --cache-temperatures 1 2 4]

For every (epoch, sample) the builder draws the training view's augmentation parameters from a
generator seeded with (seed, epoch, sample index) only (``vision_plugin.aug_stream``), runs the
teacher (eval mode, float32) on exactly that view, and stores the raw logits and the parameters
(``aux``) in row ``epoch * N + position`` of a ``lskd_core.teacher_cache``. It shows a progress
bar and resumes after a kill (complete shards are kept).

Train from it with ``vision_plugin/train.py --teacher-cache DIR`` instead of ``--teacher``: the
trainer sets ``--aug-seed`` (and, unless given, ``--subset-seed``) from the cache, replays the
recorded views and reads the teacher's logits by row. The cache is refused, naming the field,
when its fingerprint differs from the run's: teacher checkpoint sha256 (checked when
``--teacher-ckpt`` is given too), dataset and exact sample indices, transform, augmentation
seed, dtype/K, lskd version; or when it holds fewer epochs than the student trains.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lskd_core.atomic import atomic_write_json
from lskd_core.jsonio import BadJson, read_json_object
from lskd_core.teacher_cache import CacheMismatch, CacheWriter, TeacherCache, describe, file_sha256, make_fingerprint
from vision_plugin import __version__
from vision_plugin.aug_stream import AugStream, RowView, dataset_identity, indices_sha256
from vision_plugin.batching import bad_image_error, collate
from vision_plugin.cli_groups import (
    TEACHER_DESTS,
    accept_carried_flags,
    add_data_flags,
    add_device_flags,
    add_progress_group,
    carried_value,
    ignored_flags,
)
from vision_plugin.kd import CachedTeacher, build_teacher

PROG = "python -m vision_plugin.teacher_cache"
BUILD_INFO = "vision.json"  # builder flags that the trainer takes its defaults from (not the fingerprint)

# Trainer flags the builder takes from the trainer's parser (same objects); the data, device/threads
# and progress flags are the shared groups of vision_plugin.cli_groups.
_FROM_TRAINER = ("extra_augment", "batch_size", *TEACHER_DESTS)
# Shared group flags the builder accepts but does not use (named in its one-line note).
_UNUSED = ("val_samples",)


# --------------------------------------------------------------------------- fingerprint


def teacher_identity(args: argparse.Namespace) -> str:
    """sha256 of the teacher checkpoint file, or the torchvision weights' name."""
    if getattr(args, "teacher_ckpt", None):
        return file_sha256(args.teacher_ckpt)
    return f"torchvision:{args.teacher}:{args.teacher_weights}"


def data_fingerprint(stream: AugStream, dataset_name: str, aug_seed: int) -> Dict[str, Any]:
    """The fields a training run can recompute from its own flags and data."""
    return {
        "dataset": dataset_identity(stream, dataset_name),
        "indices_sha256": indices_sha256(stream.indices),
        "num_samples": len(stream),
        "transform": stream.transform_spec(),
        "aug_seed": int(aug_seed),
        "lskd_version": __version__,
    }


# --------------------------------------------------------------------------- trainer side


def _read_json(path: Path) -> Dict[str, Any]:
    """lskd_core.jsonio's strict reader; a missing or damaged file is a cache to rebuild."""
    try:
        obj = read_json_object(path)
    except BadJson as exc:
        raise CacheMismatch(f"{path} is not readable ({exc}); rebuild the teacher cache") from None
    if obj is None:
        raise CacheMismatch(f"{path} is not readable (missing); rebuild the teacher cache")
    return obj


def cache_training_defaults(args: argparse.Namespace) -> None:
    """``--aug-seed`` and ``--subset-seed`` default to the cache's (the student's ``--seed`` then
    changes initialisation and order only, never the views or the subset)."""
    root = Path(args.teacher_cache)
    header = _read_json(root / "header.json")
    fingerprint = header.get("fingerprint") or {}
    if args.aug_seed is None and "aug_seed" in fingerprint:
        args.aug_seed = int(fingerprint["aug_seed"])
    info_path = root / BUILD_INFO
    if args.subset_seed is None and info_path.is_file():
        args.subset_seed = _read_json(info_path).get("subset_seed")


def open_training_cache(args: argparse.Namespace, stream: Dataset, num_classes: int,
                        device: torch.device) -> CachedTeacher:
    """Open ``--teacher-cache`` for this run, or raise CacheMismatch naming the differing field."""
    if not isinstance(stream, AugStream):
        raise ValueError("--teacher-cache needs the seeded augmentation stream (--aug-seed)")
    root = Path(args.teacher_cache)
    cached = dict(_read_json(root / "header.json").get("fingerprint") or {})
    hint = f"rebuild it with `{PROG} build` and this run's data flags, or drop --teacher-cache"
    epochs = cached.get("epochs")
    if not isinstance(epochs, int) or epochs < args.epochs:
        raise CacheMismatch(f"teacher cache {root} is stale: fingerprint field 'epochs' is {epochs} but this run "
                            f"trains {args.epochs} epochs; {hint} (builder --epochs >= {args.epochs})")
    expected = {**cached, **data_fingerprint(stream, args.dataset, args.aug_seed)}
    if args.teacher_ckpt:  # verify the teacher too
        expected["teacher_sha256"] = file_sha256(args.teacher_ckpt)
    header = _read_json(root / "header.json")
    temps = [args.kd_temperature] if header.get("kind") == "topk" else []
    cache = TeacherCache.open(root, expected, temperatures=temps, min_rows=args.epochs * len(stream),
                              rebuild_hint=hint)
    if cache.num_classes != num_classes:
        raise CacheMismatch(f"teacher cache {root} has num_classes = {cache.num_classes}, the dataset "
                            f"{num_classes}; {hint}")
    return CachedTeacher(cache, args.kd_temperature, device, num_classes)


def stream_epoch_params(teacher: Any, epoch: int, num_samples: int) -> Optional[np.ndarray]:
    """The recorded augmentation parameters of ``epoch`` (cached teacher), else None (draw them)."""
    if not isinstance(teacher, CachedTeacher):
        return None
    return teacher.cache.aux(np.arange(epoch * num_samples, (epoch + 1) * num_samples, dtype=np.int64))


# --------------------------------------------------------------------------- builder


def get_args_parser() -> argparse.ArgumentParser:
    """The builder's parser: the shared data, device/threads and progress groups, the trainer's
    augmentation, batch and teacher flags, the cache's own flags, and every other trainer flag
    accepted (hidden, ignored with a note) so that a trainer command line can be copied here."""
    from vision_plugin.train_args import get_args_parser as trainer_parser

    parser = argparse.ArgumentParser(prog=PROG, description="vision teacher-output cache")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="run the teacher on every (epoch, sample) view and store its logits",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_flags(build, unused=_UNUSED)
    add_device_flags(build)
    add_progress_group(build)
    trainer = trainer_parser(add_help=False)
    for action in trainer._actions:  # the trainer's own flag objects
        if action.dest in _FROM_TRAINER:
            build._add_action(action)
    build.add_argument("--epochs", type=int, required=True, help="epochs to record (>= the students' --epochs)")
    build.add_argument("--seed", type=int, required=True, help="augmentation seed (the students' --aug-seed)")
    build.add_argument("--out", required=True, help="cache directory (a killed build resumes in it)")
    build.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                       help="stored logit dtype (float32: exact; bf16/fp16 halve the disk)")
    build.add_argument("--topk", type=int, default=None,
                       help="store only the top-K logits + exact tail mass at --cache-temperatures")
    build.add_argument("--cache-temperatures", type=float, nargs="+", default=[],
                       help="temperatures a top-K cache serves")
    build.add_argument("--rows-per-shard", type=int, default=8192, help="rows per shard file set")
    accept_carried_flags(build, trainer, skip=_FROM_TRAINER)
    return parser


def ignored_trainer_flags(args: argparse.Namespace) -> List[str]:
    """The accepted-but-unused trainer flags given on the command line (as ``--flag-name``)."""
    return ignored_flags(args)


def _build_args_check(args: argparse.Namespace) -> None:
    if args.teacher is None:
        raise ValueError("build needs --teacher MODEL with --teacher-ckpt PATH (or --teacher-weights NAME)")
    for flag, value in (("--epochs", args.epochs), ("--rows-per-shard", args.rows_per_shard),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise ValueError(f"{flag} must be a positive integer, got {value}")
    if args.topk is None and args.cache_temperatures:
        raise ValueError("--cache-temperatures only applies with --topk K (a full cache serves every T)")
    if args.teacher_ckpt and not Path(args.teacher_ckpt).is_file():
        raise ValueError(f"--teacher-ckpt {args.teacher_ckpt} does not exist")


def _shard_outputs(teacher, stream: AugStream, rows: range, args: argparse.Namespace, device: torch.device,
                   bar) -> tuple:
    """Teacher logits [rows, C] and view parameters [rows, P] of one shard, in row order."""
    loader = DataLoader(RowView(stream, rows), batch_size=args.batch_size, shuffle=False, collate_fn=collate,
                        num_workers=args.workers if args.workers is not None else 0)
    logits: List[torch.Tensor] = []
    params: List[torch.Tensor] = []
    for batch in loader:
        if batch.bad:  # every row needs its teacher output: no skipping here
            raise bad_image_error(batch.bad[0])
        logits.append(teacher.logits(batch.images.to(device)).float().cpu())
        params.append(batch.params)
        bar.update(len(batch))
    return torch.cat(logits), torch.cat(params).numpy()


def build(args: argparse.Namespace) -> Dict[str, Any]:
    """Build (or resume) the cache at ``args.out``; returns ``describe(out)``."""
    from tqdm import tqdm

    from vision_plugin.distributed import resolve_device
    from vision_plugin.train_data import load_data

    _build_args_check(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, 0)
    args.subset_seed = args.subset_seed if args.subset_seed is not None else args.seed
    args.val_samples, args.aug_seed = 1, args.seed  # val split: only its class list is used
    args.kd_temperature, args.kd_beta, args.label_smoothing = 1.0, 1.0, 0.0
    stream, _, classes = load_data(args)
    assert isinstance(stream, AugStream)
    teacher = build_teacher(args, len(classes), device)
    fingerprint = make_fingerprint(
        teacher=args.teacher, teacher_sha256=teacher_identity(args), epochs=args.epochs, dtype=args.dtype,
        topk=args.topk, temperatures=sorted(args.cache_temperatures),
        **data_fingerprint(stream, args.dataset, args.seed))
    writer = CacheWriter(args.out, num_classes=len(classes), num_rows=args.epochs * len(stream),
                         rows_per_shard=min(args.rows_per_shard, args.epochs * len(stream)),
                         kind="topk" if args.topk else "full", dtype=args.dtype, topk=args.topk,
                         temperatures=args.cache_temperatures, aux_dim=stream.num_params, fingerprint=fingerprint)
    atomic_write_json(Path(args.out) / BUILD_INFO, {
        "subset_seed": args.subset_seed, "aug_seed": args.seed, "dataset": args.dataset,
        "train_samples": args.train_samples, "crop_size": args.crop_size, "teacher": args.teacher,
        "teacher_ckpt": args.teacher_ckpt, "epochs": args.epochs})
    pending = writer.pending_shards()
    total = sum(len(writer.shard_rows(i)) for i in pending)
    with tqdm(total=total, desc="teacher cache", unit="img", disable=args.no_progress, file=sys.stderr) as bar:
        for index in pending:
            logits, params = _shard_outputs(teacher, stream, writer.shard_rows(index), args, device, bar)
            writer.write_shard(index, logits, aux=params)
    return writer.finalize()


def main(argv: Optional[List[str]] = None) -> int:
    from vision_plugin.cli_errors import run_and_summarize

    parser = get_args_parser()
    args = parser.parse_args(argv)
    carried_aug_seed = carried_value(args, "aug_seed")
    if carried_aug_seed is not None and carried_aug_seed != args.seed:
        parser.error(f"--aug-seed {carried_aug_seed} differs from --seed {args.seed}: the cache's --seed is the "
                     f"students' --aug-seed; give one value")
    for dest in ("amp", "skip_bad_images"):
        if carried_value(args, dest, False):
            parser.error(f"--{dest.replace('_', '-')} is not supported by the cache builder (the cached views and "
                         f"logits would differ from the students'); drop it here")
    ignored = [flag for flag in ignored_trainer_flags(args) if flag != "--aug-seed"]
    if ignored:
        print(f"note: {', '.join(ignored)}: trainer flag(s) that do not change the teacher's cached outputs; "
              f"ignored", file=sys.stderr)

    return run_and_summarize(PROG, lambda: build(args),
                             "teacher cache {root}: {rows} rows ({kind}, {dtype}), {bytes_on_disk} bytes, "
                             "{bytes_per_row:.1f} bytes per sample-epoch")


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build", "cache_training_defaults", "describe", "main", "open_training_cache", "stream_epoch_params"]
