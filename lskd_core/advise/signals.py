"""The paper's early signals, and how they enter the advisor's ranking.

Signals (none of them is used by the pruning, which sees accuracy only):

* **teacher entropy at T**: mean entropy (nats) of ``softmax(teacher logits / T)`` on the
  validation images (:func:`lskd_core.smoothness.mean_entropy`, paper App. H): how smooth the
  targets a cell distils from are.
* **early eta**: the diffusion index (Eq. 1, :func:`lskd_core.diffusion.diffusion_index`) between
  the student at T = 1 (the lowest T when 1 is not in the grid) and the student at T, same alpha,
  same seed, after the same number of epochs, on the validation images. S1 / S2 of a target class
  are its ``num_similar`` nearest / ``num_dissimilar`` farthest classes by centroid distance in
  that alpha's *teacher* features (a reference model that is neither of the two students compared,
  as App. G.2 does). ``share`` is the fraction of target classes showing systematic diffusion
  (eta_S1 < 0 and eta_S2 > 0).

How they enter (:func:`rank_cells`): cells are ranked by successive halving's order (the level
reached, then the accuracy at that level). Within one level, cells whose accuracies lie within
``noise`` of the best remaining cell form a tie group (``noise``: the pooled seed standard
deviation of the cells trained with two or more seeds; without such cells there is no estimate
of the noise and no tie groups). Inside a tie group the cells are ordered by the signals: the
lower share of diffusing classes first (the paper: diffusion is what degrades an LS teacher's
students at higher T), then the lower teacher entropy (the less smoothed target), then accuracy.
Two cells whose accuracies differ by ``noise`` or more are never reordered by a signal.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from lskd_core.diffusion import eta_over_targets

__all__ = ["teacher_entropies", "reference_sets", "early_eta", "pooled_seed_std", "pooled_sum_of_squares", "rank_cells"]


def teacher_entropies(logits: np.ndarray, temperatures: Sequence[float]) -> Dict[float, float]:
    """Mean entropy (nats) of the teacher's targets at each T."""
    from lskd_core.smoothness import entropy_table

    table = entropy_table(logits, list(temperatures))
    return {float(t): float(table[t]) for t in temperatures}


def reference_sets(features: np.ndarray, labels: np.ndarray, num_classes: int, targets: Sequence[int],
                   n_similar: int, n_dissimilar: int) -> Dict[int, Tuple[List[int], List[int]]]:
    """S1 (nearest) and S2 (farthest) classes of each target by centroid distance in the reference
    features; ties broken by class id (a stable sort), classes without samples left out."""
    from lskd_core.diffusion import class_stats

    cent = class_stats(features, labels, num_classes).centroids
    out = {}
    for t in targets:
        d = np.linalg.norm(cent - cent[t], axis=1)
        others = [int(c) for c in np.argsort(d, kind="stable") if c != t and np.isfinite(d[c])]
        k1 = min(n_similar, max(1, len(others) // 2))
        k2 = min(n_dissimilar, len(others) - k1)
        if k2 < 1:
            continue
        out[int(t)] = (others[:k1], others[len(others) - k2:])
    return out


#: eta from the T_ref to the T student per target, their mean and the share showing diffusion (one
#: home: lskd_core.diffusion, which the trainer's eta monitor also reads)
early_eta = eta_over_targets


def pooled_sum_of_squares(finals: Mapping[Any, Sequence[float]]) -> Tuple[float, int]:
    """Within-cell sum of squares and its degrees of freedom, over cells with >= 2 seeds."""
    ss, df = 0.0, 0
    for values in finals.values():
        v = np.asarray(values, dtype=float)
        if v.size >= 2:
            ss += float(np.sum((v - v.mean()) ** 2))
            df += v.size - 1
    return ss, df


def pooled_seed_std(finals: Mapping[Any, Sequence[float]]) -> Optional[float]:
    """sqrt of the pooled within-cell variance of the final accuracies over cells with >= 2 seeds."""
    ss, df = pooled_sum_of_squares(finals)
    return math.sqrt(ss / df) if df > 0 else None


def _signal_key(rec: Mapping[str, Any]) -> Tuple[float, float, float]:
    share = rec.get("diffusion_share")
    ent = rec.get("teacher_entropy")
    # a missing signal neither helps nor hurts: it sorts after every known value of that signal
    return (share if share is not None else math.inf, ent if ent is not None else math.inf, -rec["value"])


def rank_cells(records: Sequence[Mapping[str, Any]], noise: Optional[float]) -> List[Dict[str, Any]]:
    """Order cells (dicts with ``level``, ``value`` and optional ``diffusion_share``,
    ``teacher_entropy``) as the module docstring says; each output dict gets ``tie_group``."""
    out: List[Dict[str, Any]] = []
    group = 0
    for level in sorted({r["level"] for r in records}, reverse=True):
        rest = sorted((dict(r) for r in records if r["level"] == level), key=lambda r: -r["value"])
        while rest:
            leader = rest[0]["value"]
            if noise is not None and noise > 0:
                members = [r for r in rest if leader - r["value"] < noise]
            else:
                members = [rest[0]]
            rest = rest[len(members):]
            for r in sorted(members, key=_signal_key):
                r["tie_group"] = group
                out.append(r)
            group += 1
    return out
