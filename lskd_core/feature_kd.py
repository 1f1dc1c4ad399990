"""Feature distillation of Heo et al. (ICCV 2019), "A Comprehensive Overhaul of Feature
Distillation", as used with a KD task loss in the paper's Table B.5 (App. B, "Advanced KD methods").

At each distillation position i (the pre-ReLU output of a network stage) the teacher's feature
``T_i`` passes the *margin ReLU* and the student's feature ``S_i`` the *connector* ``C_i``
(1x1 conv + BN); the two are compared by the *partial L2* distance (Heo et al., Sec. 3; equation numbers are not quoted here, the
terms are named as in the paper):

* teacher transform, margin ReLU: ``sigma_m(x) = max(x, m)`` per channel, with the margin ``m = E[x | x < 0]``,
  the expectation of the teacher's pre-ReLU response below zero. Heo et al. take the response of a
  channel as Gaussian with the mean and std of the BatchNorm before the ReLU (its shift beta and
  |scale gamma|), which gives the closed form
  ``m = mu - sigma * phi(mu / sigma) / Phi(-mu / sigma)``;
* distance function, partial L2: ``d_p(T, S) = sum_i 0 if S_i <= T_i <= 0 else (T_i - S_i)^2`` over every
  element, with ``T`` the margin-ReLU'd teacher feature: no loss where the teacher's response is
  negative (the ReLU would discard it) and the student is already below it;
* the distillation loss: ``L_distill = sum_i w_i d_p(sigma_m(T_i), C_i(S_i))``, added to
  the task loss (here the KD loss ``L_KD`` of the paper's Sec. 2).

Defaults taken from the authors' ImageNet code (github.com/clovaai/overhaul-distillation,
``ImageNet/distiller.py`` and ``train_with_distillation.py``): stage weights ``w_i = 2^-(N-1-i)``
(the last stage 1, each earlier one half the next), the sum divided by the batch size, and an
overall factor 1e-4 (their ``/ 10000``; CIFAR scripts use 1e-3; mdistiller's ImageNet OFD configs
use ``FEAT_WEIGHT: 0.0001``, i.e. the same). One deliberate difference: where
``Phi(-mu / sigma) < 0.001`` their code replaces the margin by ``-3 sigma``; here the exact
conditional expectation is computed everywhere (stably, see :func:`bn_margin`).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch
from torch import nn

__all__ = ["bn_margin", "margin_from_batchnorm", "margin_relu", "partial_l2", "stage_weights", "overhaul_loss",
           "Connector", "DEFAULT_FEATURE_KD_WEIGHT"]

#: the overall weight of L_distill next to the task loss: Heo et al.'s ImageNet setting (1 / 10000)
DEFAULT_FEATURE_KD_WEIGHT = 1e-4

# Above this mu / sigma the closed form loses digits to cancellation (mu - sigma * (mu / sigma + ...));
# the asymptotic series of the inverse Mills ratio is then exact to double precision.
_SERIES_FROM = 100.0


def bn_margin(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``E[x | x < 0]`` for ``x ~ N(mean, std^2)``, elementwise, in float64 (Heo et al.'s margin).

    With ``a = mean / std``: ``m = mean - std * phi(a) / Phi(-a) = mean - std * sqrt(2 / pi) /
    erfcx(a / sqrt 2)`` (erfcx(z) = exp(z^2) erfc(z), so nothing under- or overflows for large |a|).
    Limits: ``a -> -inf`` gives ``m -> mean`` (nearly all mass below zero); ``a -> +inf`` gives
    ``m = -std (1/a - 2/a^3 + 10/a^5 - 74/a^7 + ...)`` -> 0^- (the series is used for a > 100);
    ``std = 0`` gives ``min(mean, 0)`` (a point mass: ``mean`` itself when negative, the limit 0
    otherwise). The result is always <= 0 and <= mean.
    """
    mu = torch.as_tensor(mean, dtype=torch.float64)
    sigma = torch.as_tensor(std, dtype=torch.float64).abs()
    mu, sigma = torch.broadcast_tensors(mu, sigma)
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    a = mu / safe
    closed = mu - safe * math.sqrt(2.0 / math.pi) / torch.special.erfcx(a / math.sqrt(2.0))
    big = torch.where(a > _SERIES_FROM, a, torch.full_like(a, _SERIES_FROM))
    series = -safe * (1.0 / big - 2.0 / big**3 + 10.0 / big**5 - 74.0 / big**7)
    out = torch.where(a > _SERIES_FROM, series, closed)
    out = torch.minimum(out, torch.zeros_like(out))  # rounding can not make it positive
    return torch.where(sigma > 0, out, torch.clamp(mu, max=0.0))


def margin_from_batchnorm(bn: nn.Module) -> torch.Tensor:
    """Per-channel margins of the pre-ReLU response after ``bn`` (an affine BatchNorm): the BN
    output of a normalised input is ``gamma * x_hat + beta``, taken as ``N(beta, gamma^2)`` as by
    Heo et al. Returns float32 ``[C]``."""
    weight = getattr(bn, "weight", None)
    bias = getattr(bn, "bias", None)
    if weight is None or bias is None:
        raise ValueError(f"{type(bn).__name__} has no affine weight/bias: the margin needs the BN's scale and shift")
    return bn_margin(bias.detach().cpu(), weight.detach().cpu()).to(torch.float32)


def margin_relu(teacher_feature: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """``max(T, m)`` with one margin per channel (dim 1) (Heo et al.'s margin ReLU)."""
    shape = [1, -1] + [1] * (teacher_feature.dim() - 2)
    return torch.maximum(teacher_feature, margin.to(teacher_feature).view(shape))


class _PartialL2(torch.autograd.Function):
    """sum of d^2 with d = S - T masked to 0 where S <= T <= 0; the gradient is +-2 d. One saved
    tensor and one multiply backward: half the time of the same formula left to autograd (measured
    on the small CNNs' features, bench/bench_feature_kd.py)."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        d = student - target
        d.masked_fill_((d <= 0) & (target <= 0), 0.0)  # d <= 0 is S <= T
        ctx.save_for_backward(d)
        return d.square().sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (d,) = ctx.saved_tensors
        g = d * (2.0 * grad)
        return g, (-g if ctx.needs_input_grad[1] else None)


def partial_l2(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``sum (target - student)^2`` over the elements except where ``student <= target <= 0``
    (Heo et al.'s partial L2; ``target`` is the margin-ReLU'd teacher feature). A scalar (summed over
    the batch too). The mask is piecewise constant, so the gradient is ``2 (S - T)`` on the kept elements."""
    student, target = torch.broadcast_tensors(student, target)
    return _PartialL2.apply(student, target)


def stage_weights(n: int) -> List[float]:
    """Heo et al.'s ImageNet weights of the ``n`` positions, shallow to deep: ``2^-(n-1-i)``."""
    return [2.0 ** -(n - 1 - i) for i in range(n)]


def overhaul_loss(students: Sequence[torch.Tensor], teachers: Sequence[torch.Tensor],
                  margins: Sequence[torch.Tensor], weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """``sum_i w_i d_p(sigma_m(T_i), S_i) / B`` (Heo et al.'s distillation loss, divided by the batch size B as
    their code does). ``students``: connector outputs ``C_i(S_i)``; ``teachers``: the teacher's
    pre-ReLU features (no gradient flows into them); computed in float32 or wider."""
    if not (len(students) == len(teachers) == len(margins)) or not students:
        raise ValueError(f"need as many student features, teacher features and margins, got "
                         f"{len(students)}, {len(teachers)}, {len(margins)}")
    weights = list(weights) if weights is not None else stage_weights(len(students))
    total = students[0].new_zeros((), dtype=torch.promote_types(students[0].dtype, torch.float32))
    for s, t, m, w in zip(students, teachers, margins, weights):
        if s.shape != t.shape:
            raise ValueError(f"student feature {tuple(s.shape)} and teacher feature {tuple(t.shape)} differ")
        s = s.to(total.dtype)
        target = margin_relu(t.detach().to(total.dtype), m)
        total = total + float(w) * partial_l2(s, target)
    return total / students[0].shape[0]


class Connector(nn.Sequential):
    """The student transform: 1x1 conv (no bias) to the teacher's channels + BatchNorm (Heo et
    al., Sec. 3.3), initialised as theirs: conv weights ``N(0, 2 / out_channels)``, BN scale 1, shift 0."""

    def __init__(self, student_channels: int, teacher_channels: int):
        conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
        bn = nn.BatchNorm2d(teacher_channels)
        super().__init__(conv, bn)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / teacher_channels))
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)
