"""Sampled-K knowledge distillation: an unbiased, sparse estimate of the full-vocabulary KD loss.

Anshumann et al. (ACL 2025, "Sparse Logit Sampling: Accelerating Knowledge Distillation in LLMs")
show that caching the teacher's top-K probabilities biases the student (the tail mass is lost or,
as in lskd's ``--kd-topk``, spread uniformly), and that sampling K tokens from a proposal ``q`` and
weighting them by ``p / q`` gives an estimator whose expectation is the full KD objective. Per row,
with ``x_1 .. x_K`` drawn i.i.d. from ``q`` and ``p = softmax(t / T)``, ``s = softmax(z / T)``::

    L_hat = T^2 * (1 / K) * sum_k  w_k * (log p(x_k) - log s(x_k)),   w_k = p(x_k) / q(x_k)

    E_q[L_hat] = T^2 * sum_j p_j (log p_j - log s_j) = T^2 * KL(p || s)             (the full loss)

and its gradient in ``z`` is ``T * ((sum_k w_k / K) * s - (1 / K) sum_k w_k e_{x_k})``, whose
expectation is ``T * (s - p)``, the full-vocabulary gradient. lskd's default proposal is the
target itself (``q = p``, every weight 1: the lowest-variance choice for the cross-entropy part and
the one Anshumann et al. recommend); other proposals (e.g. the teacher at another temperature) are
accepted through ``proposal_logp``.

Draws are by inverse CDF from a seeded ``torch.Generator`` in float64, so a cache built twice with
one seed holds the same tokens. This module is tensors in, tensors out; the fairseq criterion
(``--kd-topk-mode sample``) and its teacher cache (``build --sample``) call it.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from lskd_core.checks import check_temperature
from lskd_core.losses import _check_reduction, _reduce, _row_mask  # the reductions of kd_loss, shared

__all__ = ["KDSamples", "draw_kd_samples", "sampled_kd_loss"]


class KDSamples(NamedTuple):
    """K draws per row: token ids [N, K] (int64), ``log p_T`` of each drawn token [N, K] and the
    importance weights ``p / q`` [N, K] (float32)."""

    ids: torch.Tensor
    teacher_logp: torch.Tensor
    weights: torch.Tensor


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"the number of sampled tokens k must be a positive integer, got {k!r}")
    return k


@torch.no_grad()
def draw_kd_samples(teacher_logits: torch.Tensor, temperature: float, k: int,
                    generator: Optional[torch.Generator] = None,
                    proposal_logp: Optional[torch.Tensor] = None) -> KDSamples:
    """Draw ``k`` tokens per row (with replacement) for :func:`sampled_kd_loss`.

    ``teacher_logits`` [..., V]; the target is ``p = softmax(t / T)``. The proposal is ``p`` itself
    unless ``proposal_logp`` (log-probabilities [..., V], rows summing to one) is given. Computed in
    float64 on the logits' device; ``generator`` (on that device) makes the draws reproducible.
    """
    temperature = check_temperature(temperature)
    k = _check_k(k)
    if proposal_logp is not None and proposal_logp.shape != teacher_logits.shape:
        raise ValueError(f"proposal_logp must have the teacher logits' shape {tuple(teacher_logits.shape)}, "
                         f"got {tuple(proposal_logp.shape)}")
    rows = teacher_logits.reshape(-1, teacher_logits.shape[-1]).double()
    logp = F.log_softmax(rows / temperature, dim=-1)
    logq = logp if proposal_logp is None else proposal_logp.reshape(rows.shape).double().to(rows.device)
    cdf = torch.cumsum(logq.exp(), dim=-1)
    cdf = cdf / cdf[:, -1:]  # rounding: the last entry is exactly 1, so every uniform finds a token
    uniform = torch.rand((rows.shape[0], k), generator=generator, dtype=torch.float64, device=rows.device)
    ids = torch.searchsorted(cdf, uniform, right=True).clamp_max_(rows.shape[1] - 1)
    drawn_logp = logp.gather(1, ids)
    weights = (drawn_logp - logq.gather(1, ids)).exp()
    lead = tuple(teacher_logits.shape[:-1])
    return KDSamples(ids.reshape(lead + (k,)), drawn_logp.float().reshape(lead + (k,)),
                     weights.float().reshape(lead + (k,)))


def sampled_kd_loss(student_logits: torch.Tensor, samples: KDSamples, temperature: float,
                    mask: Optional[torch.Tensor] = None, reduction: str = "mean") -> torch.Tensor:
    """``T^2 * (1/K) * sum_k w_k (log p(x_k) - log softmax(s/T)(x_k))`` per row (module docstring).

    ``student_logits`` [..., V]; ``samples`` from :func:`draw_kd_samples` (or a sampled teacher
    cache) with the same leading shape. Float32; reduced like :func:`lskd_core.losses.kd_loss`:
    ``mean`` over rows where ``mask`` is True, ``sum``, or ``none`` (masked rows 0).
    """
    temperature = check_temperature(temperature)
    _check_reduction(reduction)
    lead = tuple(student_logits.shape[:-1])
    if tuple(samples.ids.shape[:-1]) != lead or samples.ids.shape != samples.teacher_logp.shape \
            or samples.ids.shape != samples.weights.shape:
        raise ValueError(f"samples must have the student logits' leading shape {lead} and equal shapes, got ids "
                         f"{tuple(samples.ids.shape)}, teacher_logp {tuple(samples.teacher_logp.shape)}, weights "
                         f"{tuple(samples.weights.shape)}")
    vocab = student_logits.shape[-1]
    ids = samples.ids.reshape(-1, samples.ids.shape[-1]).to(student_logits.device).long()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"sampled token ids must lie in [0, {vocab}), got range [{int(ids.min())}, {int(ids.max())}]")
    log_s = F.log_softmax(student_logits.reshape(-1, vocab).float() / temperature, dim=-1).gather(1, ids)
    logp = samples.teacher_logp.reshape(ids.shape).to(log_s.device).float()
    weights = samples.weights.reshape(ids.shape).to(log_s.device).float()
    per_row = (temperature ** 2) * (weights * (logp - log_s)).mean(dim=1)
    keep = _row_mask(mask, student_logits.shape[:-1], per_row.shape[0], per_row.device)
    if keep is not None:
        per_row = per_row.masked_fill(~keep, 0.0)
    return _reduce(per_row, keep, reduction, student_logits.shape[:-1])
