"""Train an image classifier, torchvision-reference style: plain/LS teachers and KD students.

Runs as ``python vision_plugin/train.py``, ``python -m vision_plugin.train`` or
``torchrun --nproc-per-node N vision_plugin/train.py``. Without ``--teacher`` it minimises the
label-smoothed cross-entropy ``L_LS`` (paper Sec. 2; ``--label-smoothing 0.1`` makes an LS teacher);
with ``--teacher MODEL --teacher-ckpt PATH`` it minimises
``L_KD = (1 - beta) H(y, p) + beta T^2 H(p_t(T), p(T))`` with beta = 1 by default (Sec. 2, Sec. 5).

Outputs in ``--output-dir`` (rank 0): ``checkpoint.pth`` and ``model_{epoch}.pth`` each epoch
(atomic), ``metrics.jsonl`` (first line ``{"event": "start", "args": ...}``, then one object per
epoch), TensorBoard events when tensorboard is installed, and ``result.json`` (atomic) at the end.

Determinism: every epoch reseeds torch/numpy/random from ``(seed, epoch, rank)`` and the sampler
uses ``set_epoch``, so a run resumed from ``checkpoint.pth`` replays the same batches and
augmentations as an uninterrupted run (bitwise on CPU with ``--workers 0 --deterministic``).
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
import json
import math
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from lskd_core.atomic import atomic_write_json, atomic_write_text
from lskd_core.checks import check_alpha
from lskd_core.losses import LSKDLossTerms
from vision_plugin import __version__
from vision_plugin.checkpoint import (
    CheckpointError,
    check_fits,
    checkpoint_num_classes,
    extract_state_dict,
    load_checkpoint,
    load_model_weights,
    save_atomic,
)
from vision_plugin.datasets import DATASETS, DatasetError, build_dataset
from vision_plugin.distributed import (
    DistInfo,
    ShardSampler,
    all_reduce_sum,
    cleanup_distributed,
    init_distributed,
)
from vision_plugin.kd import KDCriterion, add_kd_args, build_teacher, check_kd_args, kd_criterion_from_args
from vision_plugin.models import build_model

LR_SCHEDULERS = ("steplr", "cosineannealinglr")
OPTIMIZERS = ("sgd", "adamw")


# --------------------------------------------------------------------------- arguments


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """torchvision classification-reference flags plus datasets, subset caps and KD flags."""
    parser = argparse.ArgumentParser(
        description="lskd image-classification trainer (LS teachers, KD students)", add_help=add_help
    )
    parser.add_argument("--data-path", default=None, help="dataset root (fashion-mnist: default Debian location)")
    parser.add_argument("--dataset", default="imagefolder", choices=DATASETS, help="dataset layout")
    parser.add_argument("--model", default="resnet18",
                        help="lskd model (lskd_cnn_t, lskd_cnn_m, lskd_cnn_s) or any torchvision classifier")
    parser.add_argument("--weights", default=None, help="torchvision weights to start from (e.g. IMAGENET1K_V1)")
    parser.add_argument("--student-init", default=None, metavar="PATH",
                        help="initialise the model from this checkpoint's weights (ignored when resuming)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:N (under torchrun cuda -> cuda:LOCAL_RANK)")
    parser.add_argument("-b", "--batch-size", default=32, type=int, help="images per process and step")
    parser.add_argument("--epochs", default=90, type=int, help="number of epochs")
    parser.add_argument("-j", "--workers", default=None, type=int,
                        help="data-loading workers (default: 0 for fashion-mnist, 8 otherwise)")
    parser.add_argument("--opt", default="sgd", choices=OPTIMIZERS, help="optimizer")
    parser.add_argument("--lr", default=0.1, type=float, help="initial learning rate")
    parser.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    parser.add_argument("--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay",
                        help="weight decay")
    parser.add_argument("--label-smoothing", default=0.0, type=float,
                        help="label smoothing alpha in [0, 1) (teachers: 0 or 0.1; Sec. 2)")
    parser.add_argument("--lr-scheduler", default="steplr", choices=LR_SCHEDULERS, help="per-epoch LR schedule")
    parser.add_argument("--lr-warmup-epochs", default=0, type=int, help="linear warm-up epochs")
    parser.add_argument("--lr-warmup-decay", default=0.01, type=float, help="warm-up start factor")
    parser.add_argument("--lr-step-size", default=30, type=int, help="steplr: decay every N epochs")
    parser.add_argument("--lr-gamma", default=0.1, type=float, help="steplr: decay factor")
    parser.add_argument("--lr-min", default=0.0, type=float, help="cosineannealinglr: final LR")
    parser.add_argument("--clip-grad-norm", default=None, type=float, help="max gradient norm (off by default)")
    parser.add_argument("--print-freq", default=10, type=int, help="progress/log update every N steps")
    parser.add_argument("--output-dir", default=".", help="where checkpoints and metrics go")
    parser.add_argument("--resume", default="", help="checkpoint to resume from (e.g. OUTPUT/checkpoint.pth)")
    parser.add_argument("--start-epoch", default=0, type=int, help="first epoch (overridden by --resume)")
    parser.add_argument("--test-only", action="store_true", help="only evaluate (weights from --resume/--student-init)")
    parser.add_argument("--sync-bn", action="store_true", help="convert BatchNorm to SyncBatchNorm under DDP")
    parser.add_argument("--amp", action="store_true", help="mixed precision: bf16 on CPU, fp16 + GradScaler on CUDA")
    parser.add_argument("--seed", default=0, type=int, help="seed for init, sampling and augmentation")
    parser.add_argument("--channels-last", action="store_true",
                        help="NHWC memory format for student and teacher (1.2-1.8x faster small CNNs on CPU)")
    parser.add_argument("--threads", default=None, type=int,
                        help="torch intra-op CPU threads per process (default: torch's, i.e. OMP_NUM_THREADS or all "
                             "cores); use 1 when several runs share a small machine")
    parser.add_argument("--deterministic", action="store_true",
                        help="torch.use_deterministic_algorithms(True), no cudnn benchmarking")
    parser.add_argument("--crop-size", default=None, type=int,
                        help="input size (default: 28 for fashion-mnist, 224 otherwise)")
    parser.add_argument("--val-resize-size", default=None, type=int,
                        help="validation resize before the centre crop (default crop*256/224)")
    parser.add_argument("--extra-augment", action="store_true",
                        help="imagefolder/cub training: + random rotation and colour jitter (paper's CUB recipe)")
    parser.add_argument("--train-samples", default=None, type=int, help="stratified seeded cap on training samples")
    parser.add_argument("--val-samples", default=None, type=int, help="stratified seeded cap on validation samples")
    parser.add_argument("--subset-seed", default=None, type=int, help="seed of the subset caps (default: --seed)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar (log lines every --print-freq steps)")
    add_kd_args(parser)
    return parser


def _positive_int(value: Optional[int], flag: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{flag} must be a positive integer, got {value!r}")


def _finite(value: float, flag: str, minimum: float = 0.0) -> None:
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{flag} must be a finite number >= {minimum}, got {value!r}")


def validate_args(args: argparse.Namespace) -> None:
    """ValueError naming the flag for every bad argument, before any data or checkpoint is touched."""
    _positive_int(args.batch_size, "--batch-size", allow_none=False)
    if args.epochs < 0 or (args.epochs == 0 and not args.test_only):
        raise ValueError(f"--epochs must be a positive integer, got {args.epochs!r}")
    _positive_int(args.train_samples, "--train-samples")
    _positive_int(args.val_samples, "--val-samples")
    _positive_int(args.print_freq, "--print-freq", allow_none=False)
    _positive_int(args.lr_step_size, "--lr-step-size", allow_none=False)
    if args.crop_size is not None and args.crop_size < 8:
        raise ValueError(f"--crop-size must be >= 8, got {args.crop_size!r}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads!r}")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers!r}")
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
    check_kd_args(args)
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


# --------------------------------------------------------------------------- seeding


def _mix_seed(*parts: int) -> int:
    """Collision-free 32-bit seed from (seed, epoch, rank) (numpy SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) % (2**63) for p in parts]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Reseed all RNGs at the start of an epoch: augmentation, dropout and DataLoader worker seeds
    then depend only on (seed, epoch, rank), so a resumed run replays the uninterrupted one."""
    seed_everything(_mix_seed(seed, epoch, rank))


# --------------------------------------------------------------------------- data


def _subset_seed(args: argparse.Namespace) -> int:
    return args.subset_seed if args.subset_seed is not None else args.seed


def load_data(args: argparse.Namespace, need_train: bool = True) -> Tuple[Optional[Dataset], Dataset, List[str]]:
    """``(train_dataset | None, val_dataset, class_names)`` with the stratified caps applied."""
    common = dict(crop_size=args.crop_size, val_resize_size=args.val_resize_size, subset_seed=_subset_seed(args))
    train_ds = None
    if need_train:
        train_ds = build_dataset(args.dataset, args.data_path, "train", augment=True,
                                 max_samples=args.train_samples, extra_augment=args.extra_augment, **common)
    val_ds = build_dataset(args.dataset, args.data_path, "val", augment=False, max_samples=args.val_samples, **common)
    classes = list(val_ds.classes)
    if train_ds is not None and list(train_ds.classes) != classes:
        raise DatasetError(
            f"train and val splits have different classes ({len(train_ds.classes)} vs {len(classes)})"
        )
    return train_ds, val_ds, classes


def _num_workers(args: argparse.Namespace) -> int:
    if args.workers is not None:
        return args.workers
    return 0 if args.dataset == "fashion-mnist" else 8  # in-memory tensors need no workers


def build_loaders(args: argparse.Namespace, train_ds: Optional[Dataset], val_ds: Dataset, info: DistInfo,
                  device: torch.device) -> Tuple[Optional[DataLoader], Optional[DistributedSampler], DataLoader]:
    """Training loader over a seeded DistributedSampler (also single-process: its ``set_epoch``
    makes the shuffle a function of (seed, epoch)); validation over exact unpadded shards."""
    workers = _num_workers(args)
    pin = device.type == "cuda"
    train_loader = train_sampler = None
    if train_ds is not None:
        train_sampler = DistributedSampler(train_ds, num_replicas=info.world_size, rank=info.rank,
                                           shuffle=True, seed=args.seed, drop_last=False)
        train_loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=train_sampler,
                                  num_workers=workers, pin_memory=pin, drop_last=False)
    val_loader = DataLoader(val_ds, batch_size=args.batch_size, sampler=ShardSampler(len(val_ds), info.rank,
                                                                                     info.world_size),
                            num_workers=workers, pin_memory=pin)
    return train_loader, train_sampler, val_loader


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
    return torch.channels_last if getattr(args, "channels_last", False) else torch.contiguous_format


def make_autocast(device: torch.device, enabled: bool) -> Callable[[], ContextManager]:
    """bf16 autocast on CPU, fp16 on CUDA (with a GradScaler), or a no-op."""
    if not enabled:
        return nullcontext
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(device: torch.device, amp: bool) -> Optional[torch.amp.GradScaler]:
    # bf16 has float32's exponent range: only fp16 (CUDA) needs loss scaling.
    return torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None


# --------------------------------------------------------------------------- train / evaluate


def train_step(model: nn.Module, criterion: KDCriterion, optimizer: torch.optim.Optimizer,
               images: torch.Tensor, target: torch.Tensor, autocast: Callable[[], ContextManager] = nullcontext,
               scaler: Optional[torch.amp.GradScaler] = None, clip_grad_norm: Optional[float] = None) -> LSKDLossTerms:
    """One optimisation step on one batch; the teacher (if any) runs inside ``criterion``."""
    with autocast():
        output = model(images)
        terms = criterion.terms(output, target, images)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(terms.loss).backward()
        if clip_grad_norm:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        terms.loss.backward()
        if clip_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
    return terms


def _progress(iterable, info: DistInfo, args: argparse.Namespace, desc: str):
    if not info.is_main or args.no_progress:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


def train_one_epoch(model: nn.Module, criterion: KDCriterion, optimizer: torch.optim.Optimizer,
                    loader: DataLoader, device: torch.device, epoch: int, args: argparse.Namespace,
                    info: DistInfo, autocast: Callable[[], ContextManager] = nullcontext,
                    scaler: Optional[torch.amp.GradScaler] = None) -> Dict[str, Any]:
    """One pass over the training shard; loss parts averaged over all ranks' samples."""
    model.train()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, ce, kd (sample-weighted), count
    start = time.perf_counter()
    bar = _progress(loader, info, args, f"epoch {epoch}")
    num_steps = len(loader)
    memory_format = _memory_format(args)
    for step, (images, target) in enumerate(bar):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        target = target.to(device, non_blocking=True)
        terms = train_step(model, criterion, optimizer, images, target, autocast, scaler, args.clip_grad_norm)
        n = target.shape[0]
        sums[:3] += torch.stack([terms.loss.detach(), terms.ce_loss, terms.kd_loss]).to(torch.float64) * n
        sums[3] += n
        if step % args.print_freq == 0 or step == num_steps - 1:
            loss_now = float(terms.loss.detach())  # syncs the device only every print_freq steps
            if not math.isfinite(loss_now):
                raise FloatingPointError(f"training loss is {loss_now} at epoch {epoch}, step {step}; "
                                         f"lower --lr or check the inputs")
            if bar is not loader:
                bar.set_postfix(loss=f"{loss_now:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.4g}")
            elif info.is_main:
                print(f"epoch {epoch} [{step + 1}/{num_steps}] loss {loss_now:.4f}", flush=True)
    elapsed = time.perf_counter() - start
    all_reduce_sum(sums, info)
    count = max(float(sums[3]), 1.0)
    has_teacher = criterion.teacher is not None
    return {
        "train_loss": float(sums[0]) / count,
        "train_ce_loss": float(sums[1]) / count,
        "train_kd_loss": float(sums[2]) / count if has_teacher else None,
        "train_images": int(sums[3]),
        "images_per_s": float(sums[3]) / elapsed if elapsed > 0 else None,
    }


def _logits(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    return output.logits if hasattr(output, "logits") else output[0]


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, num_classes: int, info: DistInfo,
             autocast: Callable[[], ContextManager] = nullcontext,
             memory_format: torch.memory_format = torch.contiguous_format) -> Dict[str, Any]:
    """Top-1/top-5 accuracy, mean CE loss and per-class top-1 (percent) over the whole split.

    Each rank evaluates its unpadded shard; correct counts, per-class counts and loss sums are
    all-reduced, so totals equal the dataset size exactly (no DistributedSampler repeats).
    Classes absent from the split get ``None`` per-class accuracy.
    """
    model.eval()
    k5 = min(5, num_classes)
    per_class_total = torch.zeros(num_classes, dtype=torch.float64, device=device)
    per_class_correct = torch.zeros(num_classes, dtype=torch.float64, device=device)
    extra = torch.zeros(2, dtype=torch.float64, device=device)  # top-5 correct, loss sum
    with torch.inference_mode(), autocast():
        for images, target in loader:
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            target = target.to(device, non_blocking=True)
            logits = _logits(model(images)).float()
            top = logits.topk(k5, dim=1).indices
            hit1 = top[:, 0] == target
            extra[0] += (top == target[:, None]).any(dim=1).sum()
            extra[1] += F.cross_entropy(logits, target, reduction="sum").double()
            per_class_total += torch.bincount(target, minlength=num_classes).double()
            per_class_correct += torch.bincount(target[hit1], minlength=num_classes).double()
    packed = all_reduce_sum(torch.cat([per_class_total, per_class_correct, extra]), info).cpu()
    total_k, correct_k = packed[:num_classes], packed[num_classes:2 * num_classes]
    total = float(total_k.sum())
    correct1 = float(correct_k.sum())
    if total == 0:
        raise ValueError("the validation split is empty")
    return {
        "val_acc1": 100.0 * correct1 / total,
        "val_acc5": 100.0 * float(packed[-2]) / total,
        "val_loss": float(packed[-1]) / total,
        "val_per_class_acc": [100.0 * float(c) / float(t) if t > 0 else None
                              for c, t in zip(correct_k.tolist(), total_k.tolist())],
        "val_correct1": int(correct1),
        "val_count": int(total),
    }


def sync_buffers(model: nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BN running stats drift apart after the last local
    forward), so all ranks evaluate exactly the weights that rank 0 saves."""
    if info.distributed:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, src=0)


# --------------------------------------------------------------------------- files


def write_json_atomic(obj: Any, path: os.PathLike) -> None:
    atomic_write_json(path, obj)


def append_jsonl(obj: Dict[str, Any], path: os.PathLike) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj) + "\n")
        fh.flush()


def plain_args(args: argparse.Namespace) -> Dict[str, Any]:
    """Args as a dict of plain types (checkpoints must load with ``weights_only=True``)."""
    return {k: (v if v is None or isinstance(v, (bool, int, float, str)) else
                list(v) if isinstance(v, (list, tuple)) else str(v)) for k, v in vars(args).items()}


def save_checkpoint(state: Dict[str, Any], output_dir: os.PathLike, epoch: int) -> None:
    """``model_{epoch}.pth`` then ``checkpoint.pth``, each written atomically (tmp + os.replace).
    A kill between the two leaves ``checkpoint.pth`` one epoch behind: the resume repeats it."""
    output_dir = Path(output_dir)
    save_atomic(state, output_dir / f"model_{epoch}.pth")
    save_atomic(state, output_dir / "checkpoint.pth")


def load_resume_checkpoint(path: os.PathLike, model: nn.Module, model_name: str, num_classes: int
                           ) -> Dict[str, Any]:
    """Load ``path`` (safe) into ``model`` after class-count and architecture checks; return the
    checkpoint dict (optimizer, lr_scheduler, epoch, history, ...)."""
    ckpt = load_checkpoint(path)
    state = extract_state_dict(ckpt, path)
    found = checkpoint_num_classes(ckpt, state, model)
    if found is not None and found != num_classes:
        raise CheckpointError(f"--resume {path} predicts {found} classes but the dataset has {num_classes}")
    check_fits(model, state, model_name, path, what="--resume")
    model.load_state_dict(state)
    return ckpt if isinstance(ckpt, dict) else {"model": state}


def _rewrite_metrics_for_resume(path: Path, args_dict: Dict[str, Any], history: List[Dict[str, Any]],
                                start_epoch: int) -> None:
    """metrics.jsonl after a resume = original start line + the checkpoint's epoch history + a
    resume event; epochs logged after the checkpoint (the lost, repeated epoch) are dropped."""
    start_line = None
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        try:
            obj = json.loads(first)
            if obj.get("event") == "start":
                start_line = obj
        except (json.JSONDecodeError, AttributeError):
            pass
    lines = [start_line or {"event": "start", "args": args_dict}] + list(history)
    lines.append({"event": "resume", "epoch": start_epoch, "args": args_dict})
    atomic_write_text(path, "".join(json.dumps(line) + "\n" for line in lines))


def _tensorboard(output_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: events are optional
        return None
    return SummaryWriter(log_dir=str(output_dir / "tensorboard"))


# --------------------------------------------------------------------------- main


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


def main(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """Train (or with ``--test-only`` evaluate); returns result.json's content (eval dict for
    ``--test-only``). Must be called once per process; torchrun ranks all run it."""
    wall_start = time.perf_counter()
    validate_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    info, device = init_distributed(args.device)
    _configure_determinism(args, device)
    seed_everything(args.seed)
    output_dir = Path(args.output_dir)
    if info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)

    train_ds, val_ds, class_names = load_data(args, need_train=not args.test_only)
    num_classes = len(class_names)
    train_loader, train_sampler, val_loader = build_loaders(args, train_ds, val_ds, info, device)
    autocast = make_autocast(device, args.amp)

    model = build_student(args, num_classes)
    resumed: Dict[str, Any] = {}
    if args.resume:
        resumed = load_resume_checkpoint(args.resume, model, args.model, num_classes)
    memory_format = _memory_format(args)
    model.to(device, memory_format=memory_format)

    if args.test_only:
        stats = evaluate(model, val_loader, device, num_classes, info, autocast, memory_format)
        out = {**stats, "checkpoint": args.resume or args.student_init or args.weights,
               "num_classes": num_classes, "class_names": class_names}
        _log(info, f"test: acc1 {stats['val_acc1']:.3f} acc5 {stats['val_acc5']:.3f} "
                   f"loss {stats['val_loss']:.4f} ({stats['val_correct1']}/{stats['val_count']})")
        if info.is_main:
            write_json_atomic(out, output_dir / "eval.json")
        return out

    teacher = build_teacher(args, num_classes, device)
    if teacher is not None:
        teacher.module.to(memory_format=memory_format)
    criterion = kd_criterion_from_args(args, teacher)

    if args.sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model_without_ddp = model
    optimizer = build_optimizer(args, model_without_ddp)
    lr_scheduler = build_lr_scheduler(args, optimizer)
    scaler = make_scaler(device, args.amp)
    if info.distributed:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        model = nn.parallel.DistributedDataParallel(model, **ddp_kwargs)

    start_epoch = args.start_epoch
    history: List[Dict[str, Any]] = []
    prior_wall = 0.0
    if resumed:
        if "optimizer" in resumed:
            optimizer.load_state_dict(resumed["optimizer"])
        if "lr_scheduler" in resumed:
            lr_scheduler.load_state_dict(resumed["lr_scheduler"])
        if scaler is not None and "scaler" in resumed:
            scaler.load_state_dict(resumed["scaler"])
        start_epoch = int(resumed.get("epoch", -1)) + 1
        history = [h for h in resumed.get("history", []) if int(h.get("epoch", -1)) < start_epoch]
        prior_wall = float(resumed.get("wall_time_s", 0.0))

    args_dict = plain_args(args)
    metrics_path = output_dir / "metrics.jsonl"
    writer = None
    if info.is_main:
        stale = output_dir / "result.json"
        if stale.exists():  # a finished marker from an earlier run must not outlive this one
            stale.unlink()
        if resumed:
            _rewrite_metrics_for_resume(metrics_path, args_dict, history, start_epoch)
        else:
            with open(metrics_path, "w", encoding="utf-8") as fh:
                fh.write(json.dumps({"event": "start", "args": args_dict}) + "\n")
        writer = _tensorboard(output_dir)
        _log(info, f"training {args.model} on {args.dataset}: {len(train_ds)} train / {len(val_ds)} val images, "
                   f"{num_classes} classes, world size {info.world_size}, device {device}"
                   + (f", teacher {args.teacher} T={args.kd_temperature} beta={args.kd_beta}" if teacher else ""))

    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.perf_counter()
        seed_epoch(args.seed, epoch, info.rank)
        train_sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        train_stats = train_one_epoch(model, criterion, optimizer, train_loader, device, epoch, args, info,
                                      autocast, scaler)
        lr_scheduler.step()
        sync_buffers(model_without_ddp, info)
        val_stats = evaluate(model_without_ddp, val_loader, device, num_classes, info, autocast, memory_format)
        record = {"epoch": epoch, "lr": lr, **train_stats, **val_stats, "seed": args.seed,
                  "time_s": time.perf_counter() - epoch_start}
        history.append(record)
        if info.is_main:
            wall = prior_wall + (time.perf_counter() - wall_start)
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
                "wall_time_s": wall,
            }
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            save_checkpoint(state, output_dir, epoch)
            append_jsonl(record, metrics_path)
            if writer is not None:
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key != "epoch":
                        writer.add_scalar(key, value, epoch)
                writer.flush()
            _log(info, f"epoch {epoch}: loss {train_stats['train_loss']:.4f} (ce {train_stats['train_ce_loss']:.4f}, "
                       f"kd {_fmt(train_stats['train_kd_loss'])}) val acc1 {val_stats['val_acc1']:.2f} "
                       f"acc5 {val_stats['val_acc5']:.2f} | {_fmt(train_stats['images_per_s'], '.0f')} img/s | "
                       f"{record['time_s']:.1f} s")

    if writer is not None:
        writer.close()
    if not history:  # resumed from a finished run: nothing left to train
        sync_buffers(model_without_ddp, info)
        history = [{"epoch": start_epoch - 1, **evaluate(model_without_ddp, val_loader, device, num_classes,
                                                         info, autocast, memory_format)}]
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
    return result


def cli(argv: Optional[List[str]] = None) -> int:
    """Parse flags, run ``main``; bad inputs -> one-line ``error:`` message and exit status 2."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        main(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as exc:
        if os.environ.get("LSKD_DEBUG"):
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        cleanup_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
