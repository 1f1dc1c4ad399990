"""Label-smoothing targets, LS cross-entropy and the temperature KD loss (paper Sec. 2).

The math lives here once; the vision trainer and the fairseq criterion both call it.

* ``ls_targets``: ``y_ls = y (1 - alpha) + alpha / K`` (Sec. 2, Szegedy et al.).
* ``kd_loss``: ``T^2 * KL(softmax(t / T) || softmax(s / T))`` (Hinton et al.; Sec. 2, beta = 1).
* ``ls_kd_loss``: ``(1 - beta) * H(y_ls, p) + beta * kd_loss`` (Sec. 2's L_KD with LS hard term).

All math runs in float32 whatever the input dtype, row chunk by row chunk, so that a
translation-sized ``[8192, 32000]`` half-precision logits tensor needs about one extra
logits-sized buffer (the gradient) rather than several float32 copies.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from lskd_core.checks import check_alpha, check_beta, check_temperature

# Rows per chunk: large enough to keep kernels efficient, small enough that the float32
# temporaries of one chunk (a few x rows x classes) stay small next to the logits themselves.
DEFAULT_CHUNK_ELEMENTS = 1 << 22  # ~4M elements -> 16 MB per float32 temporary

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() < 1:
        raise ValueError(f"{name} must have a class dimension, got a scalar")
    return x.reshape(-1, x.shape[-1])


def _row_mask(mask: Optional[torch.Tensor], leading_shape: torch.Size, device) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(leading_shape):
        raise ValueError(
            f"mask must have the logits' leading shape {tuple(leading_shape)}, got {tuple(mask.shape)}"
        )
    return mask.reshape(-1).to(device=device, dtype=torch.bool)


def _chunk_rows(num_rows: int, num_classes: int, chunk_size: Optional[int]) -> int:
    if chunk_size is not None:
        if int(chunk_size) <= 0:
            raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size!r}")
        return int(chunk_size)
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, num_classes))


def ls_targets(
    target: torch.Tensor, num_classes: int, alpha: float, exclude_true_class: bool = False
) -> torch.Tensor:
    """Label-smoothed target distribution (paper Sec. 2): ``y (1 - alpha) + alpha / K``.

    With ``exclude_true_class=True`` the smoothing mass alpha is spread over the K - 1 wrong
    classes instead (true class gets exactly ``1 - alpha``): fairseq's
    ``label_smoothed_cross_entropy`` convention.
    """
    alpha = check_alpha(alpha)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    if target.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"target must hold integer class ids, got dtype {target.dtype}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"target class ids must lie in [0, {num_classes}), got range "
            f"[{int(target.min())}, {int(target.max())}]"
        )
    one_hot = F.one_hot(target.long(), num_classes).to(torch.float32)
    if exclude_true_class:
        off = alpha / (num_classes - 1)
        return one_hot * (1.0 - alpha - off) + off
    return one_hot * (1.0 - alpha) + alpha / num_classes


def ls_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    exclude_true_class: bool = False,
) -> torch.Tensor:
    """Cross-entropy against ``ls_targets`` (paper Sec. 2, ``L_LS``), in float32.

    Equals ``F.cross_entropy(logits, target, label_smoothing=alpha)`` for the default convention;
    with ``exclude_true_class=True`` it equals fairseq's label-smoothed NLL.
    Rows where ``mask`` is False are excluded (``mean`` averages over the remaining rows).
    """
    alpha = check_alpha(label_smoothing)
    _check_reduction(reduction)
    rows = _rows(logits, "logits")
    num_classes = rows.shape[1]
    tgt = target.reshape(-1)
    if tgt.shape[0] != rows.shape[0]:
        raise ValueError(
            f"target must have the logits' leading shape {tuple(logits.shape[:-1])}, got {tuple(target.shape)}"
        )
    if tgt.numel() and (int(tgt.min()) < 0 or int(tgt.max()) >= num_classes):
        raise ValueError(
            f"target class ids must lie in [0, {num_classes}), got range [{int(tgt.min())}, {int(tgt.max())}]"
        )
    keep = _row_mask(mask, logits.shape[:-1], rows.device)
    lprobs = F.log_softmax(rows.float(), dim=-1)
    nll = -lprobs.gather(1, tgt.long().unsqueeze(1)).squeeze(1)
    if alpha > 0:
        smooth = -lprobs.sum(dim=-1)
        if exclude_true_class:
            off = alpha / (num_classes - 1)
            per_row = (1.0 - alpha - off) * nll + off * smooth
        else:
            per_row = (1.0 - alpha) * nll + (alpha / num_classes) * smooth
    else:
        per_row = nll
    return _reduce(per_row, keep, reduction, logits.shape[:-1])


def _reduce(per_row: torch.Tensor, keep: Optional[torch.Tensor], reduction: str, leading_shape) -> torch.Tensor:
    if keep is not None:
        per_row = torch.where(keep, per_row, torch.zeros((), dtype=per_row.dtype, device=per_row.device))
    if reduction == "none":
        return per_row.reshape(leading_shape)
    total = per_row.sum()
    if reduction == "sum":
        return total
    count = int(keep.sum()) if keep is not None else per_row.shape[0]
    return total / max(count, 1)


class _ChunkedKD(torch.autograd.Function):
    """Summed, row-weighted ``T^2 KL(p_t || p_s)`` with chunked recomputation in backward.

    Forward keeps no float32 copies: backward recomputes each chunk's softmaxes. The gradient
    w.r.t. the student logits is ``T * (p_s - p_t) * row_weight``.
    """

    @staticmethod
    def forward(ctx, student, teacher, row_weight, temperature: float, chunk_rows: int):
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        for start in range(0, student.shape[0], chunk_rows):
            stop = start + chunk_rows
            log_ps = F.log_softmax(student[start:stop].float() / temperature, dim=-1)
            log_pt = F.log_softmax(teacher[start:stop].float() / temperature, dim=-1)
            kl_rows = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)
            total += (kl_rows * row_weight[start:stop]).sum()
        ctx.save_for_backward(student, teacher, row_weight)
        ctx.temperature = temperature
        ctx.chunk_rows = chunk_rows
        return total * (temperature * temperature)

    @staticmethod
    def backward(ctx, grad_output):
        student, teacher, row_weight = ctx.saved_tensors
        temperature, chunk_rows = ctx.temperature, ctx.chunk_rows
        need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_s = torch.empty_like(student) if need_s else None
        grad_t = torch.empty_like(teacher) if need_t else None
        scale = grad_output.float() * temperature
        for start in range(0, student.shape[0], chunk_rows):
            stop = start + chunk_rows
            log_ps = F.log_softmax(student[start:stop].float() / temperature, dim=-1)
            log_pt = F.log_softmax(teacher[start:stop].float() / temperature, dim=-1)
            weight = (row_weight[start:stop] * scale).unsqueeze(1)
            p_t = log_pt.exp()
            if need_s:
                grad_s[start:stop] = ((log_ps.exp() - p_t) * weight).to(student.dtype)
            if need_t:
                diff = log_pt - log_ps
                kl_rows = (p_t * diff).sum(dim=-1, keepdim=True)
                grad_t[start:stop] = (p_t * (diff - kl_rows) * weight).to(teacher.dtype)
        return grad_s, grad_t, None, None, None


def _check_logit_pair(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if student_logits.dim() < 1 or student_logits.shape[-1] < 1:
        raise ValueError(f"logits need a class dimension, got shape {tuple(student_logits.shape)}")


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
    where ``mask`` is True, ``sum``, or ``none`` (per-row values, masked rows 0). Computed in
    float32 in row chunks of ``chunk_size`` rows (default: ~4M elements per chunk). The gradient
    w.r.t. the student logits is ``T * (p_s - p_t) / n_rows`` for ``mean``.
    """
    temperature = check_temperature(temperature)
    _check_reduction(reduction)
    _check_logit_pair(student_logits, teacher_logits)
    leading = student_logits.shape[:-1]
    student = _rows(student_logits, "student_logits")
    teacher = _rows(teacher_logits, "teacher_logits").to(student.device)
    keep = _row_mask(mask, leading, student.device)

    if reduction == "none":
        log_ps = F.log_softmax(student.float() / temperature, dim=-1)
        log_pt = F.log_softmax(teacher.float() / temperature, dim=-1)
        per_row = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1) * (temperature * temperature)
        return _reduce(per_row, keep, "none", leading)

    row_weight = keep.float() if keep is not None else torch.ones(student.shape[0], device=student.device)
    if reduction == "mean":
        row_weight = row_weight / max(float(row_weight.sum()), 1.0)
    chunk_rows = _chunk_rows(student.shape[0], student.shape[1], chunk_size)
    return _ChunkedKD.apply(student, teacher, row_weight, temperature, chunk_rows)


class LSKDLossTerms(NamedTuple):
    """The combined loss and its two unweighted parts, for logging."""

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
) -> LSKDLossTerms:
    """``(1 - beta) * CE(ls_targets(target, alpha), p_s) + beta * kd_loss`` and its parts (Sec. 2).

    With ``beta == 1`` (the paper's setting) the CE part is computed without gradient, for
    logging only; with ``beta == 0`` the KD part is.
    """
    beta = check_beta(beta)
    if reduction == "none":
        raise ValueError("ls_kd_loss supports reduction 'mean' or 'sum', got 'none'")
    with torch.set_grad_enabled(torch.is_grad_enabled() and beta < 1.0):
        ce = ls_cross_entropy(
            student_logits, target, label_smoothing, mask=mask, reduction=reduction,
            exclude_true_class=exclude_true_class,
        )
    with torch.set_grad_enabled(torch.is_grad_enabled() and beta > 0.0):
        kd = kd_loss(student_logits, teacher_logits, temperature, mask=mask, reduction=reduction,
                     chunk_size=chunk_size)
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
) -> torch.Tensor:
    """``(1 - beta) * CE(ls_targets(target, alpha), softmax(s)) + beta * kd_loss(s, t, T)`` (Sec. 2)."""
    return ls_kd_loss_terms(
        student_logits, teacher_logits, target, temperature, beta=beta,
        label_smoothing=label_smoothing, mask=mask, reduction=reduction,
    ).loss
