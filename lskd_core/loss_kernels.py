"""The chunked autograd kernels behind :mod:`lskd_core.losses` (LS cross-entropy and temperature KD).

Each kernel is a ``torch.autograd.Function`` that works on ``[N, C]`` logits row chunk by row chunk
in float32; argument checks, masks' shapes and reductions stay in :mod:`lskd_core.losses`, which is
the public API.

Numerics of the KD term. Written naively, ``KL = sum p_t (log p_t - log p_s)`` loses almost all
its digits at high temperature: both log-probabilities are ~ ``-ln K`` while their difference is
``O(1/T)``, and the rounding of the two log-sum-exps alone is as large as the KL itself (at T = 1000
the naive float32 result is off by ~0.1 %, at T = 64 by ~5e-5). We use the identity

    d = (s - t) / T,   m = E_{p_t}[d],   u = d - m,
    KL(p_t || p_s) = log E_{p_t}[exp(u)] - E_{p_t}[u],

which never subtracts two large numbers (``u`` is formed from the *difference* of the logits), and
the matching gradients ``p_s - p_t = p_t * expm1(u - KL)`` (student) and ``-p_t * u`` (teacher).
Rows whose KL is not small (>= 0.02) use ``log1p(E[exp(u) - 1])``, whose ~1e-7 absolute error is
then negligible. Small-KL rows (high T, or a student close to its teacher; KL <= max u tells
many of them up front) use ``KL = log1p(E[expm1(u) - u])`` (the residue ``E[u]`` of float32
rounding enters only at second order): every term ``expm1(u) - u`` is >= 0, so the sum over
classes cannot cancel, and each term is computed without cancellation by a short float32 Taylor
polynomial (|u| <= 1, always the case at high T) or float64 ``expm1`` beyond. Rows where ``u``
is so large that ``exp`` would overflow (huge logit gaps at small T, where the KL is large and
cancellation is no issue) fall back to ``logsumexp(log p_t + u)``. Measured against float64:
relative error <= ~2e-6 for T in [0.1, 1000] and logits up to 1e4 (the naive float32 formula:
1.5e-3 at T = 1000); ``bench/bench_kd_loss.py`` prints both, and the time ratio to the naive
formula.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

# expm1(u) overflows float32 just above u = 88.7; rows whose u exceeds this use the logsumexp form.
_EXPM1_SAFE = 80.0

# Rows whose KL is at least this use ``exp(u) - 1`` (absolute error ~1e-7, so relative error
# <= ~1e-5 on the KL and ~1e-6 on the gradient); smaller-KL rows use the accurate expm1.
_FAST_KL_MIN = 0.02

# (largest |u|, degree): the Taylor polynomial of (expm1(u) - u) / u^2 up to u^degree is then
# within 2 |u|^(degree + 1) / (degree + 3)! < 6e-8 (relative) of the true value.
_POLY_DEGREES = ((0.03, 3), (0.1, 4), (0.3, 6), (1.0, 8))
_LOG2_E = 1.0 / math.log(2.0)


def _no_autocast(x: torch.Tensor):
    """Disable autocast inside the loss kernels: their float32 math is deliberate, and ops such as
    ``vecdot`` would otherwise be cast down under AMP."""
    return torch.autocast(device_type=x.device.type, enabled=False)


class _ChunkedLSCE(torch.autograd.Function):
    """Per-row ``-sum_k y_ls_k log softmax(z)_k`` with chunked recomputation in backward.

    Gradient w.r.t. the logits: ``(softmax(z) - y_ls) * grad_row`` (masked rows: 0).
    """

    @staticmethod
    def forward(ctx, logits, target, keep, c_true: float, c_off: float, chunk_rows: int):
        per_row = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
        with _no_autocast(logits):
            for start in range(0, logits.shape[0], chunk_rows):
                rows = slice(start, start + chunk_rows)
                lprobs = F.log_softmax(logits[rows].float(), dim=-1)
                row = lprobs.gather(1, target[rows].unsqueeze(1)).squeeze(1).mul_(-c_true)
                if c_off != 0.0:
                    # -sum(lprobs): every term is >= 0, no cancellation even for logits ~1e4.
                    row = row - c_off * lprobs.sum(dim=-1)
                if keep is not None:
                    row = torch.where(keep[rows], row, 0.0)
                per_row[rows] = row
        ctx.save_for_backward(logits, target, keep)
        ctx.coef = (c_true, c_off)
        ctx.chunk_rows = chunk_rows
        return per_row

    @staticmethod
    def backward(ctx, grad_rows):
        logits, target, keep = ctx.saved_tensors
        c_true, c_off = ctx.coef
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        grad = torch.empty_like(logits)
        with _no_autocast(logits):
            for start in range(0, logits.shape[0], ctx.chunk_rows):
                rows = slice(start, start + ctx.chunk_rows)
                g = F.softmax(logits[rows].float(), dim=-1)
                if c_off != 0.0:
                    g.sub_(c_off)
                g.scatter_add_(
                    1, target[rows].unsqueeze(1),
                    torch.full((g.shape[0], 1), -c_true, dtype=g.dtype, device=g.device),
                )
                g.mul_(grad_rows[rows].float().unsqueeze(1))
                if keep is not None:
                    # where, not a zero weight: 0 * nan from garbage padding rows is nan.
                    g = torch.where(keep[rows].unsqueeze(1), g, 0.0)
                grad[rows] = g
        return grad, None, None, None, None, None


def _expm1_minus_id(u: torch.Tensor, largest: float) -> torch.Tensor:
    """``expm1(u) - u`` (>= 0), float32, accurate to rounding even for tiny |u|.

    ``largest`` bounds |u|. Up to 1 (every element of a high-T row) a Taylor polynomial in
    float32, ``u^2 * sum_k u^k / (k + 2)!``, with as few terms as ``largest`` allows; beyond,
    float64 ``expm1`` (exact subtraction). The terms are all >= 0, so the weighted sum over
    classes that follows needs no extra precision.
    """
    for bound, degree in _POLY_DEGREES:
        if largest <= bound:
            h = torch.mul(u, 1.0 / math.factorial(degree + 2)).add_(1.0 / math.factorial(degree + 1))
            for k in range(degree - 2, -1, -1):
                h.mul_(u).add_(1.0 / math.factorial(k + 2))
            return h.mul_(u).mul_(u)
    u64 = u.double()
    return torch.expm1(u64).sub_(u64).float()


def _exp_minus_one(u: torch.Tensor, u_max: torch.Tensor) -> torch.Tensor:
    """``exp(u) - 1`` in float32 for the large-KL rows (absolute error ~1e-7 is fine there).

    On CPU ``exp2(u log2 e)`` is several times faster than ``exp``; the rounding of ``u log2 e``
    adds a relative error of ~1e-7 |u|, so it is used only while ``u_max`` (the row maxima of
    u) keeps that below ~1e-6. Accelerators' ``exp`` is fast already (and this saves a sync).
    """
    if u.device.type == "cpu" and float(u_max.max()) <= 8.0:
        return torch.mul(u, _LOG2_E).exp2_().sub_(1.0)
    return torch.exp(u).sub_(1.0)


class _KDTerms(NamedTuple):
    """Per-chunk quantities of the KD loss, enough for its value and both gradients."""

    p_t: torch.Tensor  # [n, C] teacher probabilities at T (float32)
    u: torch.Tensor  # [n, C] d - E_pt[d], d = (s - t) / T (float32)
    e: torch.Tensor  # [n, C] expm1(u) (float32; accurate on small-KL rows, garbage on unsafe rows)
    kl: torch.Tensor  # [n] KL(p_t || p_s) (float32, >= 0)
    safe: torch.Tensor  # [n] bool: the row took the expm1 form (max u <= _EXPM1_SAFE)


def _kd_small_kl(u: torch.Tensor, p_t: torch.Tensor, largest: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(expm1(u), KL)`` for rows whose KL is small (high T, or student ~ teacher).

    ``KL = log E[exp(u)] - E[u] = log1p(q + r) - r`` with ``q = E[expm1(u) - u] >= 0``, a sum of
    non-negative terms (no cancellation), and ``r = E[u]``, the ~1e-7 |d| that float32 rounding
    of the mean left behind. ``KL = log1p(q)`` then errs by ``~q r``: 1e-7 relative at most.
    """
    f = _expm1_minus_id(u, largest)
    kl = torch.log1p(torch.linalg.vecdot(f, p_t))
    return f.add_(u), kl


def _kd_terms(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> _KDTerms:
    """Value of ``KL(softmax(t/T) || softmax(s/T))`` per row and the tensors its gradients need.

    Rows whose KL is large use ``log1p(E[exp(u) - 1])``; small-KL rows (known up front when
    max u < _FAST_KL_MIN, since KL <= max u) use the accurate ``expm1``, so at high T the fast
    pass is skipped entirely. See the module docstring.
    """
    t = teacher.float()
    # Shift before scaling: (t - max t) is exact-ish, whereas t / T for |t| ~ 1e4 and T = 0.1
    # would round each scaled logit by ~1e-3 before the softmax sees it.
    scaled_t = torch.sub(t, t.amax(dim=-1, keepdim=True)).div_(temperature)
    p_t = F.softmax(scaled_t, dim=-1)
    u = torch.sub(student.float(), t).div_(temperature)
    u.sub_(torch.linalg.vecdot(p_t, u).unsqueeze(1))
    u_max = u.amax(dim=-1)
    safe = u_max <= _EXPM1_SAFE
    all_safe = bool(safe.all())
    if not all_safe:
        # Clamp only guards the discarded branch of unsafe rows against inf * 0 = nan.
        u_c = u.clamp(max=_EXPM1_SAFE)
        u_max = u_max.clamp(max=_EXPM1_SAFE)
    else:
        u_c = u
    accurate = u_max < _FAST_KL_MIN  # KL <= max u
    all_accurate = bool(accurate.all())
    if not all_accurate:
        e = _exp_minus_one(u_c, u_max)
        kl = torch.log1p(torch.linalg.vecdot(e, p_t))
        accurate |= kl < _FAST_KL_MIN
        all_accurate = bool(accurate.all())
    if all_accurate:
        largest = max(float(u_max.max()), -float(u.amin()))
        e, kl = _kd_small_kl(u_c, p_t, largest)
    elif bool(accurate.any()):
        rows = accurate.nonzero().squeeze(1)
        u_rows = u_c[rows]
        largest = max(float(u_max[rows].max()), -float(u_rows.amin()))
        e[rows], kl[rows] = _kd_small_kl(u_rows, p_t[rows], largest)
    if not all_safe:
        # Huge logit gaps (small T): the KL is large, cancellation is no issue.
        lse = torch.logsumexp(F.log_softmax(scaled_t, dim=-1) + u, dim=-1)
        kl = torch.where(safe, kl, lse)
    # KL >= 0 (Jensen); rounding can leave -1e-12 for identical rows.
    return _KDTerms(p_t, u, e, kl.clamp_min(0.0), safe)


def _kd_grads(terms: _KDTerms, student: torch.Tensor, temperature: float, weight: torch.Tensor,
              keep: Optional[torch.Tensor], need_s: bool, need_t: bool):
    """Float32 ``(grad_student, grad_teacher)`` of one chunk (None where not needed).

    ``weight`` is ``T * dL/d(per-row loss)``. Student: ``p_s - p_t = p_t * expm1(u - KL)
    = p_t * (expm1(u) - expm1(KL)) * exp(-KL)``, accurate when p_s ~ p_t (high T) and reusing
    the forward's ``expm1(u)``. Teacher: ``-p_t * u``. Rows with ``keep`` False get exactly 0
    (``where``, not the zero weight alone: 0 * nan from garbage padding rows would be nan).
    """
    w = weight.unsqueeze(1)
    row_keep = None if keep is None else keep.unsqueeze(1)
    g_s = g_t = None
    if need_t:
        g_t = torch.mul(terms.p_t, terms.u).mul_(w).neg_()
        if row_keep is not None:
            g_t = torch.where(row_keep, g_t, 0.0)
    if need_s:
        kl = terms.kl
        g_s = torch.sub(terms.e, torch.expm1(kl).unsqueeze(1)).mul_(terms.p_t)
        g_s.mul_((torch.exp(-kl) * weight).unsqueeze(1))
        if not bool(terms.safe.all()):
            # Far-apart rows: p_s and p_t differ a lot, so the direct difference is accurate.
            s = student.float()
            p_s = F.softmax(torch.sub(s, s.amax(dim=-1, keepdim=True)).div_(temperature), dim=-1)
            g_s = torch.where(terms.safe.unsqueeze(1), g_s, (p_s - terms.p_t).mul_(w))
        if row_keep is not None:
            g_s = torch.where(row_keep, g_s, 0.0)
    return g_s, g_t


class _ChunkedKD(torch.autograd.Function):
    """Per-row ``T^2 KL(p_t || p_s)`` (masked rows 0), row chunk by row chunk.

    Inputs that fit in one chunk keep that chunk's float32 terms for backward (one fused pass,
    no recomputation: small shapes such as 256 x 1000 are then faster than the naive formula);
    larger inputs keep nothing but the inputs and recompute each chunk's terms in backward.
    Gradients: student ``T * (p_s - p_t) * g_row``, teacher ``-T * p_t * u * g_row``.
    """

    @staticmethod
    def forward(ctx, student, teacher, keep, temperature: float, chunk_rows: int):
        num_rows = student.shape[0]
        kl = torch.zeros(num_rows, dtype=torch.float32, device=student.device)
        single = num_rows <= chunk_rows
        saved: Optional[_KDTerms] = None
        with _no_autocast(student):
            for start in range(0, num_rows, chunk_rows):
                stop = start + chunk_rows
                terms = _kd_terms(student[start:stop], teacher[start:stop], temperature)
                kl[start:stop] = terms.kl
                if single:
                    saved = terms
        per_row = kl * (temperature * temperature)
        if keep is not None:
            # where, not multiply: garbage (even inf/nan) in padding rows must not leak.
            per_row = torch.where(keep, per_row, torch.zeros((), device=per_row.device))
        if saved is not None and any(ctx.needs_input_grad[:2]):
            ctx.save_for_backward(student, teacher, keep, *saved)
            ctx.has_terms = True
        else:
            ctx.save_for_backward(student, teacher, keep)
            ctx.has_terms = False
        ctx.temperature = temperature
        ctx.chunk_rows = chunk_rows
        return per_row

    @staticmethod
    def backward(ctx, grad_rows):
        student, teacher, keep, *saved = ctx.saved_tensors
        temperature, chunk_rows = ctx.temperature, ctx.chunk_rows
        need_s, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_s or need_t):
            return None, None, None, None, None
        weight = grad_rows.float() * temperature
        if keep is not None:
            weight = torch.where(keep, weight, torch.zeros((), device=weight.device))
        with _no_autocast(student):
            if ctx.has_terms:
                g_s, g_t = _kd_grads(_KDTerms(*saved), student, temperature, weight, keep, need_s, need_t)
                return (None if g_s is None else g_s.to(student.dtype),
                        None if g_t is None else g_t.to(teacher.dtype), None, None, None)
            grad_s = torch.empty_like(student) if need_s else None
            grad_t = torch.empty_like(teacher) if need_t else None
            for start in range(0, student.shape[0], chunk_rows):
                rows = slice(start, start + chunk_rows)
                terms = _kd_terms(student[rows], teacher[rows], temperature)
                g_s, g_t = _kd_grads(terms, student[rows], temperature, weight[rows],
                                     None if keep is None else keep[rows], need_s, need_t)
                if grad_s is not None:
                    grad_s[rows] = g_s
                if grad_t is not None:
                    grad_t[rows] = g_t
        return grad_s, grad_t, None, None, None
