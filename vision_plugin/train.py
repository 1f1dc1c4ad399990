"""Train an image classifier, torchvision-reference style: plain/LS teachers and KD students.

Runs as ``python vision_plugin/train.py``, ``python -m vision_plugin.train`` or
``torchrun --nproc-per-node N vision_plugin/train.py``. Without ``--teacher`` it minimises the
label-smoothed cross-entropy ``L_LS`` (paper Sec. 2; ``--label-smoothing 0.1`` makes an LS teacher);
with ``--teacher MODEL --teacher-ckpt PATH`` it minimises
``L_KD = (1 - beta) H(y, p) + beta T^2 H(p_t(T), p(T))`` with beta = 1 by default (Sec. 2, Sec. 5);
``--feature-kd overhaul`` adds Heo et al. (2019)'s feature distillation to it (App. B, Table B.5;
``vision_plugin.feature_kd``).

Outputs in ``--output-dir`` (rank 0): ``checkpoint.pth`` and ``model_{epoch}.pth`` each epoch
(atomic), ``metrics.jsonl`` (first line ``{"event": "start", "args": ...}``, then one object per
epoch), TensorBoard events when tensorboard is installed, and ``result.json`` (atomic) at the end.

Determinism: every epoch reseeds torch/numpy/random from ``(seed, epoch, rank)`` and the sampler
uses ``set_epoch``, so a run resumed from ``checkpoint.pth`` replays the same batches and
augmentations as an uninterrupted run (bitwise on CPU with ``--workers 0 --deterministic``).
With ``--aug-seed S`` (automatic with ``--teacher-cache``) each training view depends only on
(S, epoch, sample index), see ``vision_plugin.aug_stream``.

The pieces live in ``train_data`` (datasets, loaders), ``engine`` (step, epoch, evaluation),
``run_files`` (checkpoints, metrics) and ``teacher_cache`` (the cached teacher); this file keeps
the reference script's shape: ``get_args_parser()`` and ``main(args)``.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Run as a file (python/torchrun vision_plugin/train.py): Python put vision_plugin/ itself on
    # sys.path, where our datasets.py/models.py would shadow same-named top-level packages.
    # Replace it by the repository root so that ``vision_plugin`` and ``lskd_core`` import as packages.
    _here = os.path.dirname(os.path.abspath(__file__))
    _root = os.path.dirname(_here)
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    if _root not in sys.path:
        sys.path.insert(0, _root)

import argparse
import math
import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from lskd_core.checks import check_alpha
from vision_plugin import __version__
from vision_plugin.aug_stream import AugStream, mix_seed
from vision_plugin.checkpoint import CheckpointError, load_model_weights
from vision_plugin.cli_errors import run_cli
from vision_plugin.datasets import DatasetError
from vision_plugin.distributed import DistInfo, cleanup_distributed, init_distributed, wait_for_all_ranks
from vision_plugin.engine import (
    evaluate,
    make_autocast,
    make_scaler,
    memory_format,
    sync_buffers,
    train_one_epoch,
    train_step,
)
from vision_plugin.eta_monitor import epoch_eta, open_eta_monitor
from vision_plugin.feature_kd import (
    check_feature_kd_args,
    feature_kd_epoch_stats,
    feature_kd_state,
    with_feature_kd,
)
from vision_plugin.kd import build_teacher, check_kd_args, kd_criterion_from_args
from vision_plugin.models import build_model
from vision_plugin.run_files import (
    append_jsonl,
    load_resume_checkpoint,
    log_scalars,
    plain_args,
    prepare_output_dir,
    save_checkpoint,
    start_metrics,
    tensorboard,
    write_json_atomic,
)
from vision_plugin.teacher_cache import cache_training_defaults, open_training_cache, stream_epoch_params
from vision_plugin.train_args import get_args_parser
from vision_plugin.train_data import build_loaders, load_data

# Re-exported: tests and users' scripts import these from the trainer module.
__all__ = ["get_args_parser", "main", "cli", "validate_args", "load_data", "build_loaders", "build_student",
           "build_teacher", "build_optimizer", "build_lr_scheduler", "kd_criterion_from_args", "train_one_epoch",
           "train_step", "evaluate"]


# --------------------------------------------------------------------------- arguments (train_args.py)


def _positive_int(value: Optional[int], flag: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{flag} must be a positive integer, got {value!r}")


def _finite(value: float, flag: str, minimum: float = 0.0) -> None:
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{flag} must be a finite number >= {minimum}, got {value!r}")


def _validate_numbers(args: argparse.Namespace) -> None:
    _positive_int(args.batch_size, "--batch-size", allow_none=False)
    if args.epochs < 0 or (args.epochs == 0 and not args.test_only):
        raise ValueError(f"--epochs must be a positive integer, got {args.epochs!r}")
    _positive_int(args.train_samples, "--train-samples")
    _positive_int(args.val_samples, "--val-samples")
    _positive_int(args.print_freq, "--print-freq", allow_none=False)
    _positive_int(getattr(args, "stop_after_epoch", None), "--stop-after-epoch")
    _positive_int(args.lr_step_size, "--lr-step-size", allow_none=False)
    if args.crop_size is not None and args.crop_size < 8:
        raise ValueError(f"--crop-size must be >= 8, got {args.crop_size!r}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads!r}")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers!r}")
    if getattr(args, "eval_every", 1) < 0:
        raise ValueError(f"--eval-every must be >= 0 (0: only after the last epoch), got {args.eval_every!r}")
    _finite(args.lr, "--lr")
    _finite(args.momentum, "--momentum")
    _finite(args.weight_decay, "--wd")
    _finite(args.lr_gamma, "--lr-gamma")
    _finite(args.lr_min, "--lr-min")
    if args.clip_grad_norm is not None:
        _finite(args.clip_grad_norm, "--clip-grad-norm")
    if args.lr_warmup_epochs < 0:
        raise ValueError(f"--lr-warmup-epochs must be >= 0, got {args.lr_warmup_epochs!r}")
    if args.lr_warmup_epochs and not 0 < args.lr_warmup_decay <= 1:
        raise ValueError(f"--lr-warmup-decay must be in (0, 1], got {args.lr_warmup_decay!r}")
    if not args.test_only and args.lr_warmup_epochs >= args.epochs and args.lr_warmup_epochs > 0:
        raise ValueError(f"--lr-warmup-epochs ({args.lr_warmup_epochs}) must be < --epochs ({args.epochs})")
    if args.start_epoch < 0:
        raise ValueError(f"--start-epoch must be >= 0, got {args.start_epoch!r}")
    check_alpha(args.label_smoothing, name="--label-smoothing")


def validate_args(args: argparse.Namespace) -> None:
    """ValueError naming the flag for every bad argument, before any data or checkpoint is touched."""
    _validate_numbers(args)
    check_kd_args(args)
    check_feature_kd_args(args)
    if args.test_only and not (args.resume or args.student_init or args.weights):
        raise ValueError("--test-only needs weights: --resume PATH, --student-init PATH or --weights NAME")
    if args.sync_bn and torch.device(args.device).type != "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("--sync-bn needs --device cuda: torch's SyncBatchNorm only runs on GPU modules")
    if args.dataset != "fashion-mnist" and not args.data_path:
        raise ValueError(f"--data-path is required for --dataset {args.dataset}")
    if args.data_path and not Path(args.data_path).exists():
        raise DatasetError(f"--data-path {args.data_path} does not exist")
    for flag, path in (("--resume", args.resume), ("--student-init", args.student_init),
                       ("--teacher-ckpt", args.teacher_ckpt)):
        if path and not Path(path).is_file():
            raise CheckpointError(f"{flag} {path} does not exist")
    if args.teacher_cache and not (Path(args.teacher_cache) / "header.json").is_file():
        raise ValueError(f"--teacher-cache {args.teacher_cache} holds no teacher cache (no header.json); build one with "
                         f"`python -m vision_plugin.teacher_cache build ... --out {args.teacher_cache}`")


# --------------------------------------------------------------------------- seeding


def _mix_seed(*parts: int) -> int:
    """32-bit seed from (seed, epoch, rank) (numpy SeedSequence hashing)."""
    return mix_seed(*parts) & 0xFFFFFFFF


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed all RNGs at the start of an epoch: augmentation, dropout and DataLoader worker seeds
    then depend only on (seed, epoch, rank), so a resumed run replays the uninterrupted one."""
    seed_everything(_mix_seed(seed, epoch, rank))


# --------------------------------------------------------------------------- model / optimisation


def build_student(args: argparse.Namespace, num_classes: int) -> nn.Module:
    """``--model`` (with ``--weights``), optionally initialised from ``--student-init``."""
    model = build_model(args.model, num_classes=num_classes, weights=args.weights)
    if args.student_init and not args.resume:
        load_model_weights(model, args.model, args.student_init, num_classes, what="--student-init")
    return model


def build_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if args.opt == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def build_lr_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer):
    """Per-epoch schedule: optional linear warm-up, then steplr or cosine annealing (torchvision reference)."""
    warmup = args.lr_warmup_epochs
    if args.lr_scheduler == "steplr":
        main = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step_size, gamma=args.lr_gamma)
    else:
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, args.epochs - warmup),
                                                          eta_min=args.lr_min)
    if warmup <= 0:
        return main
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=args.lr_warmup_decay, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers=[warm, main], milestones=[warmup])


def _memory_format(args: argparse.Namespace) -> torch.memory_format:
    return memory_format(args)


def _configure_determinism(args: argparse.Namespace, device: torch.device) -> None:
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _log(info: DistInfo, msg: str) -> None:
    if info.is_main:
        print(msg, flush=True)


def _fmt(value: Optional[float], spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _restore(resumed: Dict[str, Any], optimizer, lr_scheduler, scaler) -> tuple:
    """Optimizer/scheduler/scaler state from a resumed checkpoint; ``(start_epoch, history, wall)``."""
    if "optimizer" in resumed:
        optimizer.load_state_dict(resumed["optimizer"])
    if "lr_scheduler" in resumed:
        lr_scheduler.load_state_dict(resumed["lr_scheduler"])
    if scaler is not None and "scaler" in resumed:
        scaler.load_state_dict(resumed["scaler"])
    start_epoch = int(resumed.get("epoch", -1)) + 1
    history = [h for h in resumed.get("history", []) if int(h.get("epoch", -1)) < start_epoch]
    return start_epoch, history, float(resumed.get("wall_time_s", 0.0))


def _test_only(args, model, val_loader, device, num_classes, class_names, info, autocast, fmt, output_dir):
    stats = evaluate(model, val_loader, device, num_classes, info, autocast, fmt, args.skip_bad_images)
    out = {**stats, "checkpoint": args.resume or args.student_init or args.weights,
           "num_classes": num_classes, "class_names": class_names}
    _log(info, f"test: acc1 {stats['val_acc1']:.3f} acc5 {stats['val_acc5']:.3f} "
               f"loss {stats['val_loss']:.4f} ({stats['val_correct1']}/{stats['val_count']})")
    if info.is_main:
        write_json_atomic(out, output_dir / "eval.json")
    return out


def _setup_teacher(args: argparse.Namespace, train_ds, num_classes: int, device: torch.device,
                   fmt: torch.memory_format):
    """The KD teacher: a cache (``--teacher-cache``), a live network (``--teacher``) or None."""
    if args.teacher_cache:
        return open_training_cache(args, train_ds, num_classes, device)
    teacher = build_teacher(args, num_classes, device)
    if teacher is not None:
        teacher.module.to(memory_format=fmt)
    return teacher


def _wrap_ddp(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    if not info.distributed:
        return model
    ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
    return nn.parallel.DistributedDataParallel(model, **ddp_kwargs)


def _describe_kd(args: argparse.Namespace) -> str:
    if getattr(args, "feature_kd", None):
        return (f", teacher {args.teacher} T={args.kd_temperature} beta={args.kd_beta} + feature KD "
                f"{args.feature_kd} (weight {args.feature_kd_weight:g})")
    if args.teacher_cache:
        return f", teacher cache {args.teacher_cache} T={args.kd_temperature} beta={args.kd_beta}"
    if args.teacher:
        return f", teacher {args.teacher} T={args.kd_temperature} beta={args.kd_beta}"
    return ""


def _end_epoch(args: argparse.Namespace) -> int:
    """Where this invocation stops: --epochs, or --stop-after-epoch K (a rung of an adaptive search,
    lskd advise) with the schedule of --epochs; --resume continues the same trajectory."""
    stop = getattr(args, "stop_after_epoch", None)
    return args.epochs if stop is None else min(args.epochs, stop)


def _evaluates(args: argparse.Namespace, epoch: int) -> bool:
    """--eval-every: after every N-th epoch, and always after the last epoch of this invocation
    (the result and a --stop-after-epoch rung need it). Skipping one changes nothing else: every
    epoch reseeds the RNGs."""
    every = getattr(args, "eval_every", 1)
    return epoch + 1 == _end_epoch(args) or (every > 0 and (epoch + 1) % every == 0)


def _stopped_early(args: argparse.Namespace, history: List[Dict[str, Any]], info: DistInfo, output_dir: Path) -> bool:
    if not history or history[-1]["epoch"] + 1 >= args.epochs:
        return False
    _log(info, f"stopped after epoch {history[-1]['epoch'] + 1} of {args.epochs} (--stop-after-epoch); "
               f"--resume {output_dir / 'checkpoint.pth'} continues")
    return True


def _close_writer(writer: Optional[Any]) -> None:
    if writer is not None:
        writer.close()


def main(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """Train (or with ``--test-only`` evaluate); returns result.json's content (eval dict for
    ``--test-only``). Must be called once per process; torchrun ranks all run it."""
    wall_start = time.perf_counter()
    validate_args(args)
    if args.teacher_cache:
        cache_training_defaults(args)  # --aug-seed (and the subset seed) from the cache
    if args.threads:
        torch.set_num_threads(args.threads)
    info, device = init_distributed(args.device)
    _configure_determinism(args, device)
    seed_everything(args.seed)
    output_dir = Path(args.output_dir)
    if info.is_main:
        prepare_output_dir(output_dir)

    train_ds, val_ds, class_names = load_data(args, need_train=not args.test_only)
    num_classes = len(class_names)
    train_loader, train_sampler, val_loader = build_loaders(args, train_ds, val_ds, info, device)
    autocast = make_autocast(device, args.amp)

    model = build_student(args, num_classes)
    resumed: Dict[str, Any] = {}
    if args.resume:
        resumed = load_resume_checkpoint(args.resume, model, args.model, num_classes)
    fmt = memory_format(args)
    model.to(device, memory_format=fmt)

    if args.test_only:
        return _test_only(args, model, val_loader, device, num_classes, class_names, info, autocast, fmt, output_dir)

    eta_monitor = open_eta_monitor(args, val_ds, class_names, model, device)  # refuses a bad reference now
    teacher = _setup_teacher(args, train_ds, num_classes, device, fmt)
    criterion = kd_criterion_from_args(args, teacher)

    if args.sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model_without_ddp = model
    # --feature-kd: the student + connectors are trained (and DDP-wrapped) together; None without it
    fkd, model, criterion = with_feature_kd(args, model, teacher, criterion, resumed, device, fmt)
    optimizer = build_optimizer(args, model)
    lr_scheduler = build_lr_scheduler(args, optimizer)
    scaler = make_scaler(device, args.amp)
    model = _wrap_ddp(model, info, device)

    start_epoch, history, prior_wall = args.start_epoch, [], 0.0
    if resumed:
        start_epoch, history, prior_wall = _restore(resumed, optimizer, lr_scheduler, scaler)

    args_dict = plain_args(args)
    metrics_path = output_dir / "metrics.jsonl"
    writer = None
    if info.is_main:
        start_metrics(metrics_path, args_dict, bool(resumed), history, start_epoch)
        writer = tensorboard(output_dir)
        _log(info, f"training {args.model} on {args.dataset}: {len(train_ds)} train / {len(val_ds)} val images, "
                   f"{num_classes} classes, world size {info.world_size}, device {device}" + _describe_kd(args))

    for epoch in range(start_epoch, _end_epoch(args)):
        epoch_start = time.perf_counter()
        seed_epoch(args.seed, epoch, info.rank)
        train_sampler.set_epoch(epoch)
        if isinstance(train_ds, AugStream):
            train_ds.set_epoch(epoch, stream_epoch_params(teacher, epoch, len(train_ds)))
        lr = optimizer.param_groups[0]["lr"]
        train_stats = train_one_epoch(model, criterion, optimizer, train_loader, device, epoch, args, info,
                                      autocast, scaler)
        lr_scheduler.step()
        train_stats.update(feature_kd_epoch_stats(fkd, info))
        sync_buffers(model_without_ddp, info)
        val_stats = (evaluate(model_without_ddp, val_loader, device, num_classes, info, autocast, fmt,
                              args.skip_bad_images) if _evaluates(args, epoch) else {})
        record = {"epoch": epoch, "lr": lr, **train_stats, **val_stats, "seed": args.seed,
                  "time_s": time.perf_counter() - epoch_start}
        record.update(epoch_eta(eta_monitor, model_without_ddp, info.is_main))  # {"eta": ...} or {}
        history.append(record)
        if info.is_main:
            state = {
                "model": model_without_ddp.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict(),
                "epoch": epoch,
                "args": args_dict,
                "num_classes": num_classes,
                "class_names": class_names,
                "lskd_version": __version__,
                "history": history,
                "wall_time_s": prior_wall + (time.perf_counter() - wall_start),
                **({"scaler": scaler.state_dict()} if scaler is not None else {}),
                **feature_kd_state(fkd),
            }
            save_checkpoint(state, output_dir, epoch)
            append_jsonl(record, metrics_path)
            log_scalars(writer, record, epoch)
            val = (f"val acc1 {val_stats['val_acc1']:.2f} acc5 {val_stats['val_acc5']:.2f}" if val_stats
                   else "(not evaluated: --eval-every)")
            _log(info, f"epoch {epoch}: loss {train_stats['train_loss']:.4f} (ce {train_stats['train_ce_loss']:.4f}, "
                       f"kd {_fmt(train_stats['train_kd_loss'])}) {val} | "
                       f"{_fmt(train_stats['images_per_s'], '.0f')} img/s | {record['time_s']:.1f} s")

    _close_writer(writer)
    if _stopped_early(args, history, info, output_dir):
        wait_for_all_ranks(info)
        return None  # no result.json: the run is not finished
    if not history:  # resumed from a finished run: nothing left to train
        sync_buffers(model_without_ddp, info)
        history = [{"epoch": start_epoch - 1, **evaluate(model_without_ddp, val_loader, device, num_classes,
                                                         info, autocast, fmt, args.skip_bad_images)}]
    last = history[-1]
    result = {
        "status": "done",
        "epochs": args.epochs,
        "val_acc1": last["val_acc1"],
        "val_acc5": last["val_acc5"],
        "val_loss": last.get("val_loss"),
        "val_per_class_acc": last["val_per_class_acc"],
        "val_count": last.get("val_count"),
        "args": args_dict,
        "num_classes": num_classes,
        "class_names": class_names,
        "wall_time_s": prior_wall + (time.perf_counter() - wall_start),
        "lskd_version": __version__,
    }
    if info.is_main:
        write_json_atomic(result, output_dir / "result.json")
        _log(info, f"done: val acc1 {result['val_acc1']:.2f} acc5 {result['val_acc5']:.2f} "
                   f"in {result['wall_time_s']:.1f} s -> {output_dir}")
    wait_for_all_ranks(info)
    return result


def cli(argv: Optional[List[str]] = None) -> int:
    """Parse flags, run ``main``. Bad input and user-caused OS/IO errors (full disk, read-only or
    unwritable output, a file in the way, dangling symlinks, corrupt or unsafe checkpoints,
    undecodable images) -> one ``error:`` line naming the file and the remedy, exit status 2 (also
    when the fault happens during the run); genuine bugs keep their traceback."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    return run_cli(parser.prog, lambda: main(args), cleanup=cleanup_distributed)


if __name__ == "__main__":
    sys.exit(cli())
