"""Training and evaluation loops of the vision trainer (torchvision reference's ``engine``):
one optimisation step, one epoch, exact sharded evaluation, AMP helpers."""

from __future__ import annotations

import argparse
import math
import sys
import time
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lskd_core.losses import LSKDLossTerms
from vision_plugin.batching import BadImageLog
from vision_plugin.datasets import DatasetError
from vision_plugin.distributed import DistInfo, all_reduce_sum
from vision_plugin.kd import KDCriterion


def memory_format(args: argparse.Namespace) -> torch.memory_format:
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


def train_step(model: nn.Module, criterion: KDCriterion, optimizer: torch.optim.Optimizer,
               images: torch.Tensor, target: torch.Tensor, autocast: Callable[[], ContextManager] = nullcontext,
               scaler: Optional[torch.amp.GradScaler] = None, clip_grad_norm: Optional[float] = None,
               rows: Optional[torch.Tensor] = None) -> LSKDLossTerms:
    """One optimisation step on one batch; the teacher (live, or a cache read at ``rows``) runs
    inside ``criterion``."""
    with autocast():
        output = model(images)
        terms = criterion.terms(output, target, images, rows)
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


def _check_finite(loss_now: float, epoch: int, step: int) -> None:
    if not math.isfinite(loss_now):
        raise FloatingPointError(f"training loss is {loss_now} at epoch {epoch}, step {step}; "
                                 f"lower --lr or check the inputs")


def train_one_epoch(model: nn.Module, criterion: KDCriterion, optimizer: torch.optim.Optimizer,
                    loader: DataLoader, device: torch.device, epoch: int, args: argparse.Namespace,
                    info: DistInfo, autocast: Callable[[], ContextManager] = nullcontext,
                    scaler: Optional[torch.amp.GradScaler] = None) -> Dict[str, Any]:
    """One pass over the training shard; loss parts averaged over all ranks' samples.
    Unreadable images stop the run naming the file, or with ``--skip-bad-images`` are counted."""
    model.train()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, ce, kd (sample-weighted), count, skipped
    start = time.perf_counter()
    bar = _progress(loader, info, args, f"epoch {epoch}")
    num_steps = len(loader)
    fmt = memory_format(args)
    bad = BadImageLog(getattr(args, "skip_bad_images", False))
    for step, batch in enumerate(bar):
        bad.check(batch)
        if batch.images is None:  # every image of this batch was unreadable (and skipped)
            if info.distributed:
                raise DatasetError(f"every image of a training batch was unreadable at epoch {epoch} step {step} "
                                   f"(e.g. {batch.bad[0].path}); under DDP all ranks must step: fix the files")
            continue
        images = batch.images.to(device, non_blocking=True, memory_format=fmt)
        target = batch.target.to(device, non_blocking=True)
        terms = train_step(model, criterion, optimizer, images, target, autocast, scaler, args.clip_grad_norm,
                           batch.rows)
        n = target.shape[0]
        sums[:3] += torch.stack([terms.loss.detach(), terms.ce_loss, terms.kd_loss]).to(torch.float64) * n
        sums[3] += n
        if step % args.print_freq == 0 or step == num_steps - 1:
            loss_now = float(terms.loss.detach())  # syncs the device only every print_freq steps
            _check_finite(loss_now, epoch, step)
            if bar is not loader:
                bar.set_postfix(loss=f"{loss_now:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.4g}")
            elif info.is_main:
                print(f"epoch {epoch} [{step + 1}/{num_steps}] loss {loss_now:.4f}", flush=True)
    sums[4] = bad.count
    elapsed = time.perf_counter() - start
    all_reduce_sum(sums, info)
    count = max(float(sums[3]), 1.0)
    has_teacher = criterion.teacher is not None
    return {
        "train_loss": float(sums[0]) / count,
        "train_ce_loss": float(sums[1]) / count,
        "train_kd_loss": float(sums[2]) / count if has_teacher else None,
        "train_images": int(sums[3]),
        "train_skipped_images": int(sums[4]),
        "images_per_s": float(sums[3]) / elapsed if elapsed > 0 else None,
    }


def _logits(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    return output.logits if hasattr(output, "logits") else output[0]


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, num_classes: int, info: DistInfo,
             autocast: Callable[[], ContextManager] = nullcontext,
             memory_format: torch.memory_format = torch.contiguous_format,
             skip_bad_images: bool = False) -> Dict[str, Any]:
    """Top-1/top-5 accuracy, mean CE loss and per-class top-1 (percent) over the whole split.

    Each rank evaluates its unpadded shard; correct counts, per-class counts and loss sums are
    all-reduced, so totals equal the dataset size exactly (no DistributedSampler repeats), less
    the unreadable images skipped with ``--skip-bad-images`` (``val_skipped_images``).
    Classes absent from the split get ``None`` per-class accuracy.
    """
    model.eval()
    k5 = min(5, num_classes)
    per_class_total = torch.zeros(num_classes, dtype=torch.float64, device=device)
    per_class_correct = torch.zeros(num_classes, dtype=torch.float64, device=device)
    extra = torch.zeros(3, dtype=torch.float64, device=device)  # top-5 correct, loss sum, skipped
    bad = BadImageLog(skip_bad_images)
    with torch.inference_mode(), autocast():
        for batch in loader:
            bad.check(batch)
            if batch.images is None:
                continue
            images = batch.images.to(device, non_blocking=True, memory_format=memory_format)
            target = batch.target.to(device, non_blocking=True)
            logits = _logits(model(images)).float()
            top = logits.topk(k5, dim=1).indices
            hit1 = top[:, 0] == target
            extra[0] += (top == target[:, None]).any(dim=1).sum()
            extra[1] += F.cross_entropy(logits, target, reduction="sum").double()
            per_class_total += torch.bincount(target, minlength=num_classes).double()
            per_class_correct += torch.bincount(target[hit1], minlength=num_classes).double()
    extra[2] = bad.count
    packed = all_reduce_sum(torch.cat([per_class_total, per_class_correct, extra]), info).cpu()
    total_k, correct_k = packed[:num_classes], packed[num_classes:2 * num_classes]
    total = float(total_k.sum())
    correct1 = float(correct_k.sum())
    if total == 0:
        raise ValueError("the validation split is empty (or every image in it was unreadable)")
    return {
        "val_acc1": 100.0 * correct1 / total,
        "val_acc5": 100.0 * float(packed[-3]) / total,
        "val_loss": float(packed[-2]) / total,
        "val_per_class_acc": [100.0 * float(c) / float(t) if t > 0 else None
                              for c, t in zip(correct_k.tolist(), total_k.tolist())],
        "val_correct1": int(correct1),
        "val_count": int(total),
        "val_skipped_images": int(packed[-1]),
    }


def sync_buffers(model: nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BN running stats drift apart after the last local
    forward), so all ranks evaluate exactly the weights that rank 0 saves."""
    if info.distributed:
        import torch.distributed as dist

        for buf in model.buffers():
            dist.broadcast(buf, src=0)
