"""KD pieces for torchvision-reference-style training scripts (ours and users' own copies).

Three things, enough for a short patch to torchvision's ``references/classification/train.py``
(see the README):

* ``add_kd_args(parser)``: ``--teacher --teacher-ckpt --teacher-weights --kd-temperature --kd-beta``.
* ``build_teacher(args, num_classes, device)``: a frozen ``LiveTeacher`` (or None without ``--teacher``).
* ``KDCriterion(teacher, temperature, beta, label_smoothing)``: ``criterion(output, target, images)``
  -> ``(1 - beta) * CE(y_LS, p) + beta * T^2 * KL(p_t(T) || p(T))`` (paper Sec. 2, ``L_KD``; beta = 1
  by default as in the paper). Without a teacher, or called without images (evaluation), it is the
  label-smoothed cross-entropy ``L_LS`` that trains teachers.

The teacher sits behind one method, ``logits(images)``, so a cache of teacher outputs can replace
live inference without touching the training loop.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lskd_core.checks import check_alpha, check_beta, check_temperature
from lskd_core.losses import KD_VARIANTS, LSKDLossTerms, check_kd_variant, ls_cross_entropy, ls_kd_loss_terms
from vision_plugin.checkpoint import CheckpointError, load_model_weights
from vision_plugin.models import build_model, build_pretrained, find_final_linear


@runtime_checkable
class Teacher(Protocol):
    """Anything that yields teacher logits ``[N, K]`` for a batch of images."""

    num_classes: int

    def logits(self, images: torch.Tensor) -> torch.Tensor: ...


class _FrozenModule(nn.Module):
    """Wraps the teacher network so that ``.train()`` can never switch it out of eval mode
    (BN running statistics and dropout stay fixed, whatever a training loop calls)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        super().train(False)
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "_FrozenModule":
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class LiveTeacher:
    """A frozen network run under ``torch.no_grad`` for every batch.

    Deliberately not an ``nn.Module``: holding it on the student, the criterion or an optimizer
    can never put it into a DDP wrapper, a parameter list or a student checkpoint.
    ``no_grad`` rather than ``inference_mode``: the KD loss saves the teacher logits for its
    backward pass, which inference tensors forbid.
    """

    def __init__(self, net: nn.Module, num_classes: Optional[int] = None):
        self.module = _FrozenModule(net)
        _, linear = find_final_linear(net)
        self.num_classes = int(num_classes if num_classes is not None else linear.out_features)

    def to(self, device: torch.device) -> "LiveTeacher":
        self.module.to(device)
        return self

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        out = self.module(images)
        if not isinstance(out, torch.Tensor):  # e.g. inception/googlenet named tuples
            out = out.logits if hasattr(out, "logits") else out[0]
        return out.detach()


def add_kd_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the KD flags to a torchvision-reference-style parser."""
    group = parser.add_argument_group("knowledge distillation (paper Sec. 2)")
    group.add_argument("--teacher", default=None, metavar="MODEL",
                       help="teacher architecture (lskd or torchvision name); enables KD")
    group.add_argument("--teacher-ckpt", default=None, metavar="PATH",
                       help="teacher checkpoint (ours, torchvision reference, or a raw state dict)")
    group.add_argument("--teacher-weights", default=None, metavar="NAME",
                       help="torchvision weights for the teacher instead of a checkpoint (e.g. IMAGENET1K_V2)")
    group.add_argument("--kd-temperature", default=1.0, type=float, metavar="T",
                       help="KD temperature T > 0 (default 1: the paper's rule of thumb for LS teachers)")
    group.add_argument("--kd-beta", default=1.0, type=float, metavar="B",
                       help="weight of the KD term in [0, 1]; 1 - B weighs the (LS) cross-entropy (default 1)")
    group.add_argument("--kd-variant", default="standard", choices=KD_VARIANTS,
                       help="standard: teacher and student softmax at T (Hinton et al.); teacher_only_T: the "
                            "student's at T = 1, no T^2 factor (TTM, Zheng & Yang, ICLR 2024)")
    group.add_argument("--logit-standardization", action="store_true",
                       help="z-score each teacher and student logit vector before the temperature; T is then "
                            "the base temperature (Sun et al., CVPR 2024)")
    group.add_argument("--kd-temperature-file", default=None, metavar="PATH",
                       help="read T from this JSON file at start-up instead of --kd-temperature: the value "
                            "temperatures[KEY] (e.g. an lskd study's match run's matched.json, App. H)")
    group.add_argument("--kd-temperature-key", default=None, metavar="KEY",
                       help="the key of --kd-temperature-file's temperatures object to read")
    return parser


def resolve_kd_temperature_file(args: argparse.Namespace) -> None:
    """``--kd-temperature-file PATH --kd-temperature-key KEY``: set ``args.kd_temperature`` from the
    file's ``temperatures[KEY]``, so a command fixed at plan time (a queued study run) distils at a
    temperature computed by an earlier run. JSON only (nothing executed); ValueError naming the file."""
    path, key = getattr(args, "kd_temperature_file", None), getattr(args, "kd_temperature_key", None)
    if path is None and key is None:
        return
    if path is None or key is None:
        raise ValueError("--kd-temperature-file and --kd-temperature-key go together")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--kd-temperature-file {path} does not exist (has the run that writes it finished?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--kd-temperature-file {path} is not a readable JSON file ({exc})") from None
    temps = data.get("temperatures") if isinstance(data, dict) else None
    if not isinstance(temps, dict) or key not in temps:
        known = sorted(temps) if isinstance(temps, dict) else []
        raise ValueError(f"--kd-temperature-file {path} has no temperatures[{key!r}] (keys: {known})")
    value = temps[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"--kd-temperature-file {path}: temperatures[{key!r}] must be a number, got {value!r}")
    args.kd_temperature = check_kd_temperature(float(value), name=f"--kd-temperature-file {path} [{key}]")


def check_kd_temperature(value: float, name: str = "--kd-temperature") -> float:
    """A KD temperature: lskd_core.checks' one rule for every part of lskd (finite, sane range)."""
    return check_temperature(value, name=name)


def check_kd_args(args: argparse.Namespace) -> None:
    """ValueError naming the flag for bad KD arguments (called before any data is loaded)."""
    resolve_kd_temperature_file(args)
    check_kd_temperature(args.kd_temperature)
    check_beta(args.kd_beta, name="--kd-beta")
    check_alpha(getattr(args, "label_smoothing", 0.0), name="--label-smoothing")
    check_kd_variant(getattr(args, "kd_variant", "standard"), name="--kd-variant")
    cache = getattr(args, "teacher_cache", None)
    if cache and (args.teacher or args.teacher_weights):
        raise ValueError("give either --teacher-cache DIR or --teacher MODEL, not both "
                         "(--teacher-ckpt PATH may accompany --teacher-cache to verify the cache's teacher)")
    if args.teacher is None and args.teacher_weights:
        raise ValueError("--teacher-weights given without --teacher MODEL")
    if args.teacher is None and args.teacher_ckpt and not cache:
        raise ValueError("--teacher-ckpt given without --teacher MODEL")
    if args.teacher is not None:
        if not args.teacher_ckpt and not args.teacher_weights:
            raise ValueError(
                f"--teacher {args.teacher!r} needs --teacher-ckpt PATH or --teacher-weights NAME "
                f"(a randomly initialised teacher teaches nothing)"
            )
        if args.teacher_ckpt and args.teacher_weights:
            raise ValueError("give either --teacher-ckpt or --teacher-weights, not both")
    if args.teacher is not None or cache:
        # torchvision's reference script: KD needs class-id targets (soft mixup/cutmix targets would
        # need a teacher for the mixed images and a KD term for mixed labels, which lskd does not define).
        for flag in ("mixup_alpha", "cutmix_alpha"):
            if float(getattr(args, flag, 0.0) or 0.0) > 0:
                raise ValueError(f"--{flag.replace('_', '-')} cannot be combined with KD (--teacher): "
                                 f"KD needs class-id targets; set it to 0 for KD runs")


def build_teacher(args: argparse.Namespace, num_classes: int, device: torch.device) -> Optional[LiveTeacher]:
    """Frozen teacher from ``--teacher`` + ``--teacher-ckpt``/``--teacher-weights``; None without ``--teacher``.

    Raises CheckpointError when the checkpoint is unreadable/unsafe, predicts a different number
    of classes than ``num_classes``, or does not match the ``--teacher`` architecture.
    """
    check_kd_args(args)
    if args.teacher is None:
        return None
    if args.teacher_weights:
        # Keep the pretrained head as it is: a replaced (random) head would teach nothing.
        net = build_pretrained(args.teacher, args.teacher_weights, flag="--teacher")
        _, linear = find_final_linear(net)
        if linear.out_features != num_classes:
            raise CheckpointError(
                f"teacher weights {args.teacher_weights!r} predict {linear.out_features} classes but the "
                f"dataset has {num_classes} classes; the teacher must have the same class count"
            )
    else:
        net = build_model(args.teacher, num_classes=num_classes, flag="--teacher")
        load_model_weights(net, args.teacher, args.teacher_ckpt, num_classes, what="teacher")
    return LiveTeacher(net, num_classes).to(device)


def _as_logits(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    return output.logits if hasattr(output, "logits") else output[0]


class CachedTeacher:
    """Teacher outputs read from a ``lskd_core.teacher_cache`` by row (``epoch * N + position``).

    ``logits_at(rows)`` returns logits whose softmax at the criterion's temperature is exactly the
    cached teacher's p_t(T) (raw logits for full caches; top-K caches fill the tail exactly at
    their served temperatures).
    """

    def __init__(self, cache, temperature: float, device: torch.device, num_classes: int):
        self.cache = cache
        self.temperature = float(temperature)
        self.device = device
        self.num_classes = int(num_classes)

    def logits_at(self, rows: torch.Tensor) -> torch.Tensor:
        logits = self.cache.teacher_logits_at(rows.detach().cpu().numpy().astype(np.int64), self.temperature)
        return torch.as_tensor(logits, dtype=torch.float32).to(self.device, non_blocking=True)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a cached teacher serves rows (pass rows=...), not images")


class KDCriterion:
    """``criterion(output, target, images=None) -> loss`` (paper Sec. 2).

    * with a teacher and images (or cache ``rows``): ``(1 - beta) * CE(y_LS, p) + beta * T^2 KL(p_t(T) || p(T))``;
    * without a teacher, or without images (torchvision's ``evaluate`` calls ``criterion(output,
      target)``): the label-smoothed cross-entropy, equal to ``F.cross_entropy(...,
      label_smoothing=alpha)``; soft (mixup/cutmix) targets then go to ``F.cross_entropy`` itself,
      i.e. exactly what ``nn.CrossEntropyLoss(label_smoothing=alpha)`` computes.

    ``terms(...)`` returns ``LSKDLossTerms(loss, ce_loss, kd_loss)`` for logging.
    KD itself needs class-id targets (mixup/cutmix soft targets are refused with a teacher).
    """

    def __init__(self, teacher: Optional[Teacher] = None, temperature: float = 1.0, beta: float = 1.0,
                 label_smoothing: float = 0.0, kd_variant: str = "standard", logit_standardization: bool = False):
        self.teacher = teacher
        self.temperature = check_kd_temperature(temperature)
        self.beta = check_beta(beta, name="--kd-beta")
        self.label_smoothing = check_alpha(label_smoothing, name="--label-smoothing")
        self.kd_variant = check_kd_variant(kd_variant, name="--kd-variant")
        self.logit_standardization = bool(logit_standardization)
        if self.logit_standardization and isinstance(teacher, CachedTeacher) and _is_topk(teacher.cache):
            # a top-K cache serves p_t(T) exactly, not the logits: their z-score is not recoverable
            raise ValueError("--logit-standardization needs the teacher's full logits; this --teacher-cache is "
                             "top-K: build a full cache (no --topk) or run the teacher live")

    def _teacher_logits(self, images: Optional[torch.Tensor], rows: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if self.teacher is None:
            return None
        if rows is not None and hasattr(self.teacher, "logits_at"):
            return self.teacher.logits_at(rows)
        if images is not None and not isinstance(self.teacher, CachedTeacher):
            return self.teacher.logits(images)
        return None

    def terms(self, output, target: torch.Tensor, images: Optional[torch.Tensor] = None,
              rows: Optional[torch.Tensor] = None) -> LSKDLossTerms:
        logits = _as_logits(output)
        teacher_logits = self._teacher_logits(images, rows)
        if teacher_logits is None:
            if target.is_floating_point():  # soft targets without KD: nn.CrossEntropyLoss's own formula
                ce = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
            else:
                ce = ls_cross_entropy(logits, target, label_smoothing=self.label_smoothing)
            return LSKDLossTerms(ce, ce.detach(), torch.zeros((), device=ce.device))
        if target.is_floating_point():
            raise ValueError("KD needs integer class targets; mixup/cutmix soft targets are not supported with a teacher")
        if teacher_logits.shape != logits.shape:
            raise ValueError(
                f"teacher logits {tuple(teacher_logits.shape)} and student logits {tuple(logits.shape)} differ; "
                f"teacher and student must have the same class count"
            )
        return ls_kd_loss_terms(logits, teacher_logits, target, self.temperature, beta=self.beta,
                                label_smoothing=self.label_smoothing, kd_variant=self.kd_variant,
                                logit_standardization=self.logit_standardization)

    def __call__(self, output, target: torch.Tensor, images: Optional[torch.Tensor] = None,
                 rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.terms(output, target, images, rows).loss


def _is_topk(cache) -> bool:
    header = getattr(cache, "header", None)
    kind = header.get("kind") if isinstance(header, dict) else getattr(cache, "kind", None)
    return kind == "topk" or bool(getattr(cache, "topk", None))


def kd_criterion_from_args(args: argparse.Namespace, teacher: Optional[Teacher]) -> KDCriterion:
    return KDCriterion(teacher, args.kd_temperature, args.kd_beta, getattr(args, "label_smoothing", 0.0),
                       kd_variant=getattr(args, "kd_variant", "standard"),
                       logit_standardization=bool(getattr(args, "logit_standardization", False)))
