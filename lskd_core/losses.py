"""Label-smoothing targets, LS cross-entropy and the temperature KD loss (paper Sec. 2).

The math lives here once; the vision trainer and the fairseq criterion both call it.

* ``ls_targets``: ``y_ls = y (1 - alpha) + alpha / K`` (Sec. 2, Szegedy et al.).
* ``ls_cross_entropy``: ``L_LS = sum_k -y_ls_k log p_k`` (Sec. 2).
* ``kd_loss``: ``T^2 * KL(softmax(t / T) || softmax(s / T))`` (Hinton et al.; Sec. 2, beta = 1).
* ``ls_kd_loss``: ``(1 - beta) * H(y_ls, p) + beta * kd_loss`` (Sec. 2's L_KD with LS hard term).

Temperature variants (beyond the paper; :func:`kd_variant_loss`):

* ``teacher_only_kd_loss``: ``KL(softmax(t / T) || softmax(s))``, the student at T = 1 (TTM, Zheng &
  Yang, ICLR 2024, "Knowledge Distillation Based on Transformed Teacher Matching", Eq. 5/the TTM
  term; no ``T^2`` factor: the student's logits are not divided by T, so its gradient does not
  shrink with T).
* ``standardize_logits``: ``(z - mean(z)) / (std(z) + 1e-7)`` per logit vector (Sun et al., CVPR
  2024, "Logit Standardization in Knowledge Distillation", Eq. 8's ``Z(z)``; std with Bessel's
  correction and the 1e-7 as in their code), applied to teacher and student before the temperature.
  The study's T is their *base temperature* tau (``softmax(Z(z) / tau)``) and the ``T^2`` scaling of
  the standard KD term is kept, as in their KD code.

All math runs in float32 whatever the input dtype, row chunk by row chunk. An input that fits in
one chunk (``2^20`` elements on CPU: e.g. the 256 x 1000 ImageNet vision batch) is one fused
pass whose float32 terms are kept for backward; larger ones keep only the inputs and recompute
each chunk in backward (custom autograd functions), so a translation-sized ``[8192, 32000]``
logits tensor needs about one extra logits-sized buffer (the gradient, in the logits' dtype)
rather than several float32 copies.

The chunked autograd kernels, and the numerics of the KD term (why it stays accurate at T = 1000),
are in :mod:`lskd_core.loss_kernels`.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from lskd_core.checks import check_alpha, check_beta, check_temperature
from lskd_core.loss_kernels import _ChunkedKD, _ChunkedLSCE

__all__ = [
    "ls_targets",
    "ls_cross_entropy",
    "kd_loss",
    "ls_kd_loss_terms",
    "ls_kd_loss",
    "LSKDLossTerms",
    "KD_VARIANTS",
    "check_kd_variant",
    "standardize_logits",
    "teacher_only_kd_loss",
    "kd_variant_loss",
    "DEFAULT_CHUNK_ELEMENTS",
    "DEFAULT_CHUNK_ELEMENTS_ACCELERATOR",
]

# Elements per row chunk. On CPU a chunk's float32 temporaries (4 MiB each) mostly stay in cache,
# which makes the chunked loss faster than the naive one, while keeping the number of parallel
# regions (each a thread-pool barrier) low; on accelerators bigger chunks amortise kernel launches
# (32 MiB per temporary, still small next to translation-sized logits).
DEFAULT_CHUNK_ELEMENTS = 1 << 20
DEFAULT_CHUNK_ELEMENTS_ACCELERATOR = 1 << 23

_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------
def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_tensor(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """View ``[..., K]`` as ``[N, K]`` (N = product of the leading dims)."""
    _check_tensor(x, name)
    if x.dim() < 1:
        raise ValueError(f"{name} must have a class dimension, got a scalar")
    if x.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one class, got shape {tuple(x.shape)}")
    if x.is_complex():
        raise ValueError(f"{name} must be real, got dtype {x.dtype}")
    return x.reshape(-1, x.shape[-1])


def _per_row(x: torch.Tensor, leading_shape: torch.Size, num_rows: int, name: str) -> torch.Tensor:
    """Flatten a per-row tensor (target, mask) given either with the logits' leading shape or 1-D."""
    _check_tensor(x, name)
    if tuple(x.shape) == tuple(leading_shape) or (x.dim() == 1 and x.shape[0] == num_rows):
        return x.reshape(-1)
    raise ValueError(
        f"{name} must have the logits' leading shape {tuple(leading_shape)} (or be 1-D with "
        f"{num_rows} entries), got shape {tuple(x.shape)}"
    )


def _row_mask(
    mask: Optional[torch.Tensor], leading_shape: torch.Size, num_rows: int, device
) -> Optional[torch.Tensor]:
    """Boolean keep-vector [N] (True = row counts) or None for 'keep everything'."""
    if mask is None:
        return None
    flat = _per_row(mask, leading_shape, num_rows, "mask")
    if flat.is_complex():
        raise ValueError(f"mask must be boolean or 0/1, got dtype {flat.dtype}")
    if flat.dtype != torch.bool:
        flat = flat != 0
    return flat.to(device=device)


def _check_integer_target(target: torch.Tensor, name: str = "target") -> None:
    _check_tensor(target, name)
    if target.dtype.is_floating_point or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class ids, got dtype {target.dtype}")


def _check_target_range(target: torch.Tensor, num_classes: int, name: str = "target") -> None:
    if target.numel() == 0:
        return
    lo, hi = int(target.min()), int(target.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"{name} class ids must lie in [0, {num_classes}), got {bad} (range [{lo}, {hi}])"
        )


def _chunk_rows(num_classes: int, chunk_size: Optional[int], device: torch.device) -> int:
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size!r}")
        return int(chunk_size)
    elements = DEFAULT_CHUNK_ELEMENTS if device.type == "cpu" else DEFAULT_CHUNK_ELEMENTS_ACCELERATOR
    return max(1, elements // max(1, num_classes))


def _reduce(per_row: torch.Tensor, keep: Optional[torch.Tensor], reduction: str, leading_shape) -> torch.Tensor:
    """Reduce per-row values (masked rows already hold 0): mean over kept rows, sum, or none."""
    if reduction == "none":
        return per_row.reshape(leading_shape)
    total = per_row.sum()
    if reduction == "sum":
        return total
    count = int(keep.sum()) if keep is not None else per_row.shape[0]
    # No kept row: the mean of nothing is defined as 0 (a fully padded batch contributes nothing).
    return total / max(count, 1)


# ----------------------------------------------------------------------------------------------
# label smoothing
# ----------------------------------------------------------------------------------------------
def _ls_coefficients(num_classes: int, alpha: float, exclude_true_class: bool) -> Tuple[float, float]:
    """(c_true, c_off) with ``y_ls = c_true * one_hot + c_off`` (so sum_k y_ls_k = 1).

    Default (paper Sec. 2, torch): ``c_true = 1 - alpha``, ``c_off = alpha / K``.
    fairseq (``exclude_true_class``): ``c_off = alpha / (K - 1)``, ``c_true = 1 - alpha - c_off``,
    i.e. the true class ends at exactly ``1 - alpha`` and each wrong class at ``alpha / (K - 1)``.
    """
    if exclude_true_class:
        if num_classes < 2:
            raise ValueError(
                f"exclude_true_class needs at least 2 classes to spread alpha over, got num_classes={num_classes}"
            )
        off = alpha / (num_classes - 1)
        return 1.0 - alpha - off, off
    return 1.0 - alpha, alpha / num_classes


def ls_targets(
    target: torch.Tensor, num_classes: int, alpha: float, exclude_true_class: bool = False
) -> torch.Tensor:
    """Label-smoothed target distribution (paper Sec. 2): ``y (1 - alpha) + alpha / K``.

    Returns float32 ``[*target.shape, num_classes]``. With ``exclude_true_class=True`` the
    smoothing mass alpha is spread over the K - 1 wrong classes instead (the true class gets
    exactly ``1 - alpha``): fairseq's ``label_smoothed_cross_entropy`` convention.
    """
    alpha = check_alpha(alpha, "alpha")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    num_classes = int(num_classes)
    _check_integer_target(target)
    _check_target_range(target, num_classes)
    c_true, c_off = _ls_coefficients(num_classes, alpha, exclude_true_class)
    one_hot = F.one_hot(target.long(), num_classes).to(torch.float32)
    return one_hot * c_true + c_off


def ls_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    exclude_true_class: bool = False,
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """Cross-entropy against ``ls_targets`` (paper Sec. 2, ``L_LS``), in float32, row-chunked.

    Equals ``F.cross_entropy(logits, target, label_smoothing=alpha)`` for the default convention;
    with ``exclude_true_class=True`` it equals fairseq's ``label_smoothed_nll_loss``
    (``(1 - eps - eps/(K-1)) * nll + eps/(K-1) * sum_k -log p_k``).
    ``target`` has the logits' leading shape (or is 1-D). Rows where ``mask`` is False are excluded
    (``mean`` averages over the remaining rows; their targets are not even range-checked, so
    padding ids such as -100 are fine there).
    """
    alpha = check_alpha(label_smoothing)
    _check_reduction(reduction)
    rows = _rows(logits, "logits")
    num_rows, num_classes = rows.shape
    leading = logits.shape[:-1]
    _check_integer_target(target)
    tgt = _per_row(target, leading, num_rows, "target").to(rows.device).long()
    keep = _row_mask(mask, leading, num_rows, rows.device)
    if keep is not None:
        # Masked rows may carry any id (e.g. ignore_index); point them at class 0 for the gather.
        tgt = torch.where(keep, tgt, torch.zeros((), dtype=tgt.dtype, device=tgt.device))
    _check_target_range(tgt, num_classes)
    c_true, c_off = _ls_coefficients(num_classes, alpha, exclude_true_class)
    chunk_rows = _chunk_rows(num_classes, chunk_size, rows.device)
    per_row = _ChunkedLSCE.apply(rows, tgt, keep, c_true, c_off, chunk_rows)
    return _reduce(per_row, keep, reduction, leading)


# ----------------------------------------------------------------------------------------------
# temperature KD
# ----------------------------------------------------------------------------------------------
def _check_logit_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    _check_tensor(student_logits, "student_logits")
    _check_tensor(teacher_logits, "teacher_logits")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """Temperature KD loss ``T^2 * KL(softmax(t/T) || softmax(s/T))`` (paper Sec. 2, Hinton et al.).

    Summed over classes (last dim), reduced over rows (all leading dims): ``mean`` over the rows
    where ``mask`` is True, ``sum``, or ``none`` (per-row values with the leading shape, masked
    rows 0). Computed in float32 whatever the input dtype, in row chunks of ``chunk_size`` rows
    (default: 2^20 elements per chunk on CPU, 2^23 elsewhere) in forward and backward; stable
    for T in [0.1, 1000] and finite logits up to 1e4 in magnitude. The gradient w.r.t. the student logits is
    ``T * (p_s - p_t) / n_rows`` for ``mean``; the extra memory is one gradient buffer.
    """
    temperature = check_temperature(temperature)
    _check_reduction(reduction)
    _check_logit_pair(student_logits, teacher_logits)
    leading = student_logits.shape[:-1]
    student = _rows(student_logits, "student_logits")
    teacher = _rows(teacher_logits, "teacher_logits").to(student.device)
    keep = _row_mask(mask, leading, student.shape[0], student.device)
    chunk_rows = _chunk_rows(student.shape[1], chunk_size, student.device)
    per_row = _ChunkedKD.apply(student, teacher, keep, temperature, chunk_rows)
    return _reduce(per_row, keep, reduction, leading)


# ----------------------------------------------------------------------------------------------
# temperature variants (TTM; logit standardization)
# ----------------------------------------------------------------------------------------------
#: ``standard``: both softmaxes at T (Hinton et al.); ``teacher_only_T``: the student's at T = 1 (TTM).
KD_VARIANTS = ("standard", "teacher_only_T")
_STD_EPS = 1e-7  # Sun et al.'s code: (z - mean) / (1e-7 + std)


def check_kd_variant(variant: str, name: str = "kd_variant") -> str:
    if variant not in KD_VARIANTS:
        raise ValueError(f"{name} must be one of {KD_VARIANTS}, got {variant!r}")
    return variant


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """``Z(z) = (z - mean(z)) / (std(z) + 1e-7)`` over the last dim, in float32 (Sun et al., CVPR 2024,
    Eq. 8; std with Bessel's correction, ``torch.std``'s default, as in their code). Needs K >= 2."""
    rows = _check_tensor(logits, "logits")
    if rows.dim() < 1 or rows.shape[-1] < 2:
        raise ValueError(f"logit standardization needs at least 2 classes, got shape {tuple(rows.shape)}")
    x = rows.float()
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True)
    return (x - mean) / (std + _STD_EPS)


def teacher_only_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """TTM's distillation term ``KL(softmax(t/T) || softmax(s))`` (Zheng & Yang, ICLR 2024): only the
    teacher is tempered (their ``softmax(t)^(1/T)`` renormalised, which is ``softmax(t/T)``); summed
    over classes, reduced over rows like :func:`kd_loss`; no ``T^2`` factor (their loss has none).
    Float32; the gradient w.r.t. the student logits is ``(p_s - p_t(T)) / n_rows`` for ``mean``."""
    temperature = check_temperature(temperature)
    _check_reduction(reduction)
    _check_logit_pair(student_logits, teacher_logits)
    leading = student_logits.shape[:-1]
    student = _rows(student_logits, "student_logits").float()
    teacher = _rows(teacher_logits, "teacher_logits").to(student.device).float()
    keep = _row_mask(mask, leading, student.shape[0], student.device)
    log_pt = F.log_softmax(teacher / temperature, dim=-1)
    per_row = F.kl_div(F.log_softmax(student, dim=-1), log_pt, reduction="none", log_target=True).sum(-1)
    if keep is not None:
        per_row = torch.where(keep, per_row, torch.zeros((), dtype=per_row.dtype, device=per_row.device))
    return _reduce(per_row, keep, reduction, leading)


def kd_variant_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    kd_variant: str = "standard",
    logit_standardization: bool = False,
    mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """The KD term of one temperature variant: ``standard`` (:func:`kd_loss`, ``T^2 KL`` at T for both)
    or ``teacher_only_T`` (:func:`teacher_only_kd_loss`, TTM); with ``logit_standardization`` both
    logit vectors are z-scored first (:func:`standardize_logits`, Sun et al.; T is the base temperature)."""
    check_kd_variant(kd_variant)
    if logit_standardization:
        _check_logit_pair(student_logits, teacher_logits)
        student_logits = standardize_logits(student_logits)
        teacher_logits = standardize_logits(teacher_logits.to(student_logits.device))
    if kd_variant == "teacher_only_T":
        return teacher_only_kd_loss(student_logits, teacher_logits, temperature, mask=mask, reduction=reduction)
    return kd_loss(student_logits, teacher_logits, temperature, mask=mask, reduction=reduction, chunk_size=chunk_size)


# ----------------------------------------------------------------------------------------------
# combined loss
# ----------------------------------------------------------------------------------------------
class LSKDLossTerms(NamedTuple):
    """The combined loss and its two unweighted parts (detached), for logging."""

    loss: torch.Tensor
    ce_loss: torch.Tensor
    kd_loss: torch.Tensor


def ls_kd_loss_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    beta: float = 1.0,
    label_smoothing: float = 0.0,
    mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    exclude_true_class: bool = False,
    chunk_size: Optional[int] = None,
    kd_variant: str = "standard",
    logit_standardization: bool = False,
) -> LSKDLossTerms:
    """``(1 - beta) * CE(ls_targets(target, alpha), p_s) + beta * kd_loss`` and its parts (Sec. 2).

    With ``beta == 1`` (the paper's setting) the CE part is computed without gradient, for
    logging only; with ``beta == 0`` the KD part is. ``reduction='none'`` gives per-row values.
    ``kd_variant`` / ``logit_standardization`` replace the KD term by :func:`kd_variant_loss`'s.
    """
    beta = check_beta(beta)
    _check_reduction(reduction)
    grad_on = torch.is_grad_enabled()
    with torch.set_grad_enabled(grad_on and beta < 1.0):
        ce = ls_cross_entropy(
            student_logits, target, label_smoothing, mask=mask, reduction=reduction,
            exclude_true_class=exclude_true_class, chunk_size=chunk_size,
        )
    with torch.set_grad_enabled(grad_on and beta > 0.0):
        if kd_variant == "standard" and not logit_standardization:
            kd = kd_loss(student_logits, teacher_logits, temperature, mask=mask, reduction=reduction,
                         chunk_size=chunk_size)
        else:
            kd = kd_variant_loss(student_logits, teacher_logits, temperature, kd_variant, logit_standardization,
                                 mask=mask, reduction=reduction, chunk_size=chunk_size)
    if beta == 1.0:
        loss = kd
    elif beta == 0.0:
        loss = ce
    else:
        loss = (1.0 - beta) * ce + beta * kd
    return LSKDLossTerms(loss, ce.detach(), kd.detach())


def ls_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    beta: float = 1.0,
    label_smoothing: float = 0.0,
    mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    exclude_true_class: bool = False,
    chunk_size: Optional[int] = None,
) -> torch.Tensor:
    """``(1 - beta) * CE(ls_targets(target, alpha), softmax(s)) + beta * kd_loss(s, t, T)`` (Sec. 2)."""
    return ls_kd_loss_terms(
        student_logits, teacher_logits, target, temperature, beta=beta,
        label_smoothing=label_smoothing, mask=mask, reduction=reduction,
        exclude_true_class=exclude_true_class, chunk_size=chunk_size,
    ).loss
