"""Feature KD for the vision trainer: ``--feature-kd overhaul`` (Heo et al. 2019, the paper's Table B.5).

The loss itself is :mod:`lskd_core.feature_kd`; this module finds the distillation positions in the
models, taps their features, owns the connectors and puts them into the optimizer and the checkpoint:

* positions: the pre-ReLU output at the end of each stage, as Heo et al. For torchvision's ResNet
  family (resnet*, resnext*, wide_resnet*) the input of the last block's final ReLU in
  ``layer1..layer4`` (margins from that block's last BN, ``bn2``/``bn3``, as their code); for the
  project's small CNNs (``lskd_cnn_*``) the input of the ReLU before each max-pool (margins from the
  BN right before it). Channel counts come from those BNs, feature shapes from one dummy forward.
* the teacher runs live for every batch: its pre-ReLU maps are needed, and a teacher cache stores
  logits only (``--teacher-cache`` is refused with ``--feature-kd``).
* training loss: ``L_KD + weight * sum_i 2^-(N-1-i) d_p(max(T_i, m_i), C_i(S_i)) / B``, with
  ``--feature-kd-weight`` 1e-4 by default (Heo et al.'s ImageNet scale; :mod:`lskd_core.feature_kd`).
* the connectors (1x1 conv + BN per position) are trained with the student by the same optimizer;
  their weights are in the checkpoint under ``feature_kd`` (the teacher is not); under DDP the
  student and the connectors are wrapped together, so their gradients are averaged over ranks.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from lskd_core.feature_kd import DEFAULT_FEATURE_KD_WEIGHT, Connector, margin_from_batchnorm, overhaul_loss
from lskd_core.losses import LSKDLossTerms
from vision_plugin.checkpoint import CheckpointError
from vision_plugin.distributed import DistInfo, all_reduce_sum
from vision_plugin.kd import CachedTeacher, KDCriterion, LiveTeacher
from vision_plugin.models import SmallConvNet

__all__ = ["FEATURE_KD_METHODS", "add_feature_kd_args", "check_feature_kd_args", "feature_positions",
           "setup_feature_kd", "with_feature_kd", "feature_kd_state", "feature_kd_epoch_stats", "FeatureKD",
           "FeatureTap"]

FEATURE_KD_METHODS = ("overhaul",)


def add_feature_kd_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--feature-kd overhaul`` and ``--feature-kd-weight W`` (one argument group)."""
    group = parser.add_argument_group("feature distillation (Heo et al. 2019; the paper's Table B.5)")
    group.add_argument("--feature-kd", default=None, choices=FEATURE_KD_METHODS,
                       help="add Heo et al.'s overhaul feature distillation (margin ReLU, partial L2, pre-ReLU "
                            "stage outputs, 1x1 conv + BN connectors) to the KD loss; needs a live "
                            "--teacher (the teacher cache holds logits only)")
    group.add_argument("--feature-kd-weight", default=DEFAULT_FEATURE_KD_WEIGHT, type=float, metavar="W",
                       help="weight of the feature loss (summed over positions and elements, per image) next to "
                            f"the KD loss (default {DEFAULT_FEATURE_KD_WEIGHT:g}: Heo et al.'s ImageNet setting; "
                            "their CIFAR scripts use 1e-3)")
    return parser


def check_feature_kd_args(args: argparse.Namespace) -> None:
    """ValueError naming the flag for bad feature-KD arguments (before any data is loaded)."""
    weight = getattr(args, "feature_kd_weight", DEFAULT_FEATURE_KD_WEIGHT)
    if not getattr(args, "feature_kd", None):
        return
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
        raise ValueError(f"--feature-kd-weight must be a finite number > 0, got {weight!r}")
    if getattr(args, "teacher_cache", None):
        raise ValueError("--feature-kd needs the teacher's feature maps, which a teacher cache does not store (logits "
                         "only): give --teacher MODEL --teacher-ckpt PATH instead of --teacher-cache")
    if getattr(args, "teacher", None) is None:
        raise ValueError("--feature-kd overhaul distils a teacher's features: give --teacher MODEL --teacher-ckpt PATH "
                         "(and --kd-temperature T for the KD task loss)")


# --------------------------------------------------------------------------- positions


@dataclass
class Position:
    """One distillation position: the ReLU whose input is the pre-ReLU feature, the BN before it."""

    name: str
    relu: nn.Module
    bn: nn.Module

    @property
    def channels(self) -> int:
        return int(self.bn.num_features)


def _small_cnn_positions(model: SmallConvNet) -> List[Position]:
    layers = list(model.features)
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.MaxPool2d) and i >= 2 and isinstance(layers[i - 1], nn.ReLU):
            out.append(Position(f"features.{i - 1}", layers[i - 1], layers[i - 2]))
    return out


def _resnet_positions(model: nn.Module) -> List[Position]:
    from torchvision.models.resnet import BasicBlock, Bottleneck

    out = []
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        last = getattr(model, stage)[-1]
        bn = last.bn3 if isinstance(last, Bottleneck) else last.bn2 if isinstance(last, BasicBlock) else None
        if bn is None:
            return []
        out.append(Position(f"{stage}.{len(getattr(model, stage)) - 1}.relu", last.relu, bn))
    return out


def _is_torchvision_resnet(model: nn.Module) -> bool:
    try:
        from torchvision.models import ResNet
    except ImportError:
        return False
    return isinstance(model, ResNet)


def feature_positions(model: nn.Module, name: str, flag: str = "--model") -> List[Position]:
    """The model's distillation positions, shallow to deep; ValueError (one line) when unknown."""
    positions: List[Position] = []
    if isinstance(model, SmallConvNet):
        positions = _small_cnn_positions(model)
    elif _is_torchvision_resnet(model):
        positions = _resnet_positions(model)
    if not positions:
        raise ValueError(f"--feature-kd overhaul has no known feature positions for {flag} {name!r}: it supports "
                         f"torchvision's ResNet family (resnet18/34/50/101/152, resnext*, wide_resnet*) and lskd's "
                         f"small CNNs (lskd_cnn_t, lskd_cnn_m, lskd_cnn_s)")
    return positions


class FeatureTap:
    """Keeps the input of each position's ReLU while ``active`` (the last call wins: a torchvision
    block's ReLU module also runs inside the block, its final call is the stage output).

    The tapped ReLUs are made out-of-place, so the kept tensor is the pre-ReLU value (an in-place
    ReLU would overwrite it) and, for the student, stays in the autograd graph; the network computes
    the same values as before."""

    def __init__(self, positions: List[Position]):
        self.features: List[Optional[torch.Tensor]] = [None] * len(positions)
        self.active = False
        self._handles = []
        for i, pos in enumerate(positions):
            if hasattr(pos.relu, "inplace"):
                pos.relu.inplace = False
            self._handles.append(pos.relu.register_forward_pre_hook(self._hook(i)))

    def _hook(self, index: int):
        def keep(module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> None:
            if self.active:
                self.features[index] = inputs[0]
        return keep

    def take(self) -> List[torch.Tensor]:
        """The features of the last forward, then forgotten (no batch is held past its step)."""
        feats = self.features
        self.features = [None] * len(feats)
        if any(f is None for f in feats):
            raise RuntimeError("a feature-KD position did not run in the forward pass")
        return [f for f in feats if f is not None]


# --------------------------------------------------------------------------- the trained module


class StudentWithConnectors(nn.Module):
    """The student and its connectors as one module (what the optimizer and DDP see). ``forward``
    returns the student's output; the connected pre-ReLU features of that forward are in
    ``connected`` for the criterion. ``student`` alone is what is evaluated and saved as ``model``."""

    def __init__(self, student: nn.Module, connectors: nn.ModuleList, tap: FeatureTap):
        super().__init__()
        self.student = student
        self.connectors = connectors
        self._tap = tap
        self.connected: List[torch.Tensor] = []

    def forward(self, images: torch.Tensor):
        self._tap.active = True
        try:
            out = self.student(images)
        finally:
            self._tap.active = False
        self.connected = [c(f) for c, f in zip(self.connectors, self._tap.take())]
        return out


class FeatureKDCriterion:
    """The KD criterion plus the overhaul feature loss (``terms`` as :class:`KDCriterion`'s); sums
    the feature loss of the epoch for logging (:meth:`FeatureKD.epoch_stats`)."""

    def __init__(self, base: KDCriterion, trained: StudentWithConnectors, teacher_tap: FeatureTap,
                 margins: List[torch.Tensor], weight: float):
        self.base = base
        self.teacher = base.teacher
        self.trained = trained
        self.teacher_tap = teacher_tap
        self.margins = margins
        self.weight = float(weight)
        self.sums: Optional[torch.Tensor] = None  # feature loss * images, images

    def terms(self, output, target: torch.Tensor, images: Optional[torch.Tensor] = None,
              rows: Optional[torch.Tensor] = None) -> LSKDLossTerms:
        if images is None:  # evaluation-style call: no teacher pass
            return self.base.terms(output, target, images, rows)
        self.teacher_tap.active = True
        try:
            terms = self.base.terms(output, target, images, rows)
        finally:
            self.teacher_tap.active = False
        feature_loss = overhaul_loss(self.trained.connected, self.teacher_tap.take(), self.margins)
        self.trained.connected = []
        n = float(target.shape[0])
        step = torch.stack([feature_loss.detach().double() * n, torch.tensor(n, dtype=torch.float64,
                                                                               device=feature_loss.device)])
        self.sums = step if self.sums is None else self.sums + step
        return LSKDLossTerms(terms.loss + self.weight * feature_loss, terms.ce_loss, terms.kd_loss)

    def __call__(self, output, target, images=None, rows=None) -> torch.Tensor:
        return self.terms(output, target, images, rows).loss


@dataclass
class FeatureKD:
    """What the trainer holds for a feature-KD run."""

    module: StudentWithConnectors
    criterion: FeatureKDCriterion
    method: str

    def checkpoint_state(self) -> Dict[str, Any]:
        """The checkpoint's ``feature_kd`` entry: the method, its weight and the connectors' state."""
        return {"feature_kd": {"method": self.method, "weight": self.criterion.weight,
                               "connectors": self.module.connectors.state_dict()}}

    def epoch_stats(self, info: DistInfo) -> Dict[str, Any]:
        """``train_feature_kd_loss`` (unweighted, per image, over every rank) of the epoch; resets."""
        sums = self.criterion.sums
        self.criterion.sums = None
        if sums is None:
            sums = torch.zeros(2, dtype=torch.float64)
        all_reduce_sum(sums, info)
        return {"train_feature_kd_loss": float(sums[0]) / max(float(sums[1]), 1.0)}


def _feature_shapes(net: nn.Module, tap: FeatureTap, crop: int, device: torch.device) -> List[Tuple[int, ...]]:
    """Per-position feature shapes ``(C, H, W)`` from one eval-mode dummy forward (no state changes)."""
    was_training = net.training
    net.eval()
    tap.active = True
    try:
        with torch.no_grad():
            net(torch.zeros(1, 3, crop, crop, device=device))
    finally:
        tap.active = False
        net.train(was_training)
    return [tuple(f.shape[1:]) for f in tap.take()]


def _crop(args: argparse.Namespace) -> int:
    """The training input size: ours (``--crop-size``) or torchvision reference's (``--train-crop-size``)."""
    for flag in ("crop_size", "train_crop_size"):
        if getattr(args, flag, None):
            return int(getattr(args, flag))
    return 28 if getattr(args, "dataset", None) == "fashion-mnist" else 224


def _check_resume(args: argparse.Namespace, resumed: Dict[str, Any]) -> None:
    if not resumed:
        return
    has = isinstance(resumed.get("feature_kd"), dict)
    if has and not args.feature_kd:
        raise CheckpointError(f"--resume {args.resume} is a feature-KD run ({resumed['feature_kd'].get('method')}); "
                              f"resume it with --feature-kd {resumed['feature_kd'].get('method')}")
    if args.feature_kd and not has:
        raise CheckpointError(f"--resume {args.resume} was trained without --feature-kd (no connectors in it); "
                              f"resume it without --feature-kd, or start a new run")


def setup_feature_kd(args: argparse.Namespace, student: nn.Module, teacher: Any, criterion: KDCriterion,
                     resumed: Dict[str, Any], device: torch.device,
                     fmt: torch.memory_format = torch.contiguous_format) -> Optional[FeatureKD]:
    """The student + connectors module and the feature-KD criterion (None without ``--feature-kd``).

    Raises ValueError (one line) for a model without known positions, a teacher and student whose
    positions or feature shapes differ, or a checkpoint that does not fit."""
    _check_resume(args, resumed)
    if not getattr(args, "feature_kd", None):
        return None
    if isinstance(teacher, CachedTeacher) or not isinstance(teacher, LiveTeacher):
        check_feature_kd_args(args)  # names the remedy
        raise ValueError("--feature-kd needs a live --teacher")
    t_net = teacher.module.net
    t_pos = feature_positions(t_net, args.teacher, flag="--teacher")
    s_pos = feature_positions(student, args.model)
    if len(t_pos) != len(s_pos):
        raise ValueError(f"--feature-kd: teacher {args.teacher!r} has {len(t_pos)} feature positions but student "
                         f"{args.model!r} has {len(s_pos)}; pair models with the same number of stages")
    t_tap, s_tap = FeatureTap(t_pos), FeatureTap(s_pos)
    crop = _crop(args)
    t_shapes = _feature_shapes(teacher.module, t_tap, crop, device)
    s_shapes = _feature_shapes(student, s_tap, crop, device)
    for i, (ts, ss) in enumerate(zip(t_shapes, s_shapes)):
        if ts[1:] != ss[1:]:
            raise ValueError(f"--feature-kd: at position {i + 1} ({t_pos[i].name} / {s_pos[i].name}) the teacher's "
                             f"feature map is {ts[1]}x{ts[2]} but the student's is {ss[1]}x{ss[2]} (at {crop} px); "
                             f"pair models whose stages have the same strides")
    connectors = nn.ModuleList([Connector(s.channels, t.channels) for s, t in zip(s_pos, t_pos)])
    if resumed:  # our trainer's checkpoint (torchvision's reference resumes the whole wrapper itself)
        state = resumed["feature_kd"].get("connectors")
        try:
            connectors.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            reason = str(exc).strip().splitlines()[0][:160]
            raise CheckpointError(f"--resume {args.resume}: its feature-KD connectors do not fit {args.teacher} -> "
                                  f"{args.model} ({reason})") from None
    if getattr(args, "sync_bn", False) and torch.distributed.is_available() and torch.distributed.is_initialized():
        connectors = nn.SyncBatchNorm.convert_sync_batchnorm(connectors)
    connectors.to(device, memory_format=fmt)
    margins = [margin_from_batchnorm(p.bn).to(device) for p in t_pos]
    module = StudentWithConnectors(student, connectors, s_tap)
    crit = FeatureKDCriterion(criterion, module, t_tap, margins, args.feature_kd_weight)
    return FeatureKD(module, crit, args.feature_kd)


def with_feature_kd(args: argparse.Namespace, student: nn.Module, teacher: Any, criterion: KDCriterion,
                    resumed: Dict[str, Any], device: torch.device,
                    fmt: torch.memory_format = torch.contiguous_format) -> Tuple[Optional[FeatureKD], nn.Module, Any]:
    """``(feature KD or None, the module to optimise and DDP-wrap, the criterion)``: with
    ``--feature-kd`` the student + connectors and the feature-KD criterion, else the inputs as they are."""
    fkd = setup_feature_kd(args, student, teacher, criterion, resumed, device, fmt)
    if fkd is None:
        return None, student, criterion
    return fkd, fkd.module, fkd.criterion


def feature_kd_state(fkd: Optional[FeatureKD]) -> Dict[str, Any]:
    """The checkpoint entries of feature KD (``{}`` without it)."""
    return fkd.checkpoint_state() if fkd is not None else {}


def feature_kd_epoch_stats(fkd: Optional[FeatureKD], info: DistInfo) -> Dict[str, Any]:
    """The epoch record's feature-KD entries (``{}`` without it)."""
    return fkd.epoch_stats(info) if fkd is not None else {}
