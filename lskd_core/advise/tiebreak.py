"""After successive halving: when the finalists tie, spend what is left of the budget on the seeds
that decide the most, then state the probability that the pick is the grid's best.

The finalists are the cells with at least one seed trained to the full schedule. Their posterior
probability of being the grid's best (:func:`~lskd_core.advise.posterior.prob_best`) decides:

* the leader (highest probability) at or above ``target`` (default 0.95): decided, stop;
* otherwise one more seed (the next of the study's seed list, trained to the full schedule) goes to
  the finalist where it narrows the decision most. With one pooled seed spread, the variance of the
  leader-vs-rival difference is ``sigma^2 (1/n_L + 1/n_r)`` (the same for the grid mean, whose
  finite-population terms cancel in the gain), so a seed on rival ``r`` shrinks it by
  ``1/n_r - 1/(n_r + 1)`` and a seed on the leader shrinks every rival's by ``1/n_L - 1/(n_L + 1)``.
  Each rival counts with its probability of being the best: gain(L) = (1/n_L - 1/(n_L+1)) * sum_r P(r),
  gain(r) = P(r) * (1/n_r - 1/(n_r+1)); the largest gain that fits is trained.
* The caps, stated in the advice: the budget (never more than ``budget`` x the grid's epoch-runs in
  all, successive halving included) and ``max_seeds`` seeds per cell (default: all the study's seeds).
  Without any finalist with two seeds there is no spread estimate: the first extra seed goes to the
  finalist with the best mean.

Every seed added is one ``{"event": "tiebreak", ...}`` line in the allocation log.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from lskd_core.advise.allocation import Allocation, CellRecord, Trainer
from lskd_core.advise.posterior import DRAWS, prob_best

__all__ = ["settle", "final_values", "TARGET"]

Cell = Tuple[float, float]
TARGET = 0.95


def final_values(alloc: Allocation, epochs: int, seeds: Sequence[int]) -> Dict[Cell, List[float]]:
    """Per finalist the final accuracy of each seed trained to the full schedule (seed-list order)."""
    out: Dict[Cell, List[float]] = {}
    for rec in alloc.cells:
        vals = [float(rec.curves[s][epochs - 1]) for s in seeds if len(rec.curves.get(s, [])) >= epochs]
        if vals:
            out[rec.cell] = vals
    return out


def _full_seeds(rec: CellRecord, epochs: int, seeds: Sequence[int]) -> List[int]:
    return [s for s in seeds if len(rec.curves.get(s, [])) >= epochs]


def _gains(post: Dict[str, Any], n: Dict[Cell, int]) -> Dict[Cell, float]:
    p = post["p_best"]
    leader = post["leader"]
    rivals = sum(v for c, v in p.items() if c != leader)
    out = {}
    for c in p:
        step = 1.0 / n[c] - 1.0 / (n[c] + 1)
        out[c] = step * (rivals if c == leader else p[c])
    return out


def settle(alloc: Allocation, trainer: Trainer, epochs: int, seeds: Sequence[int], target: float = TARGET,
           max_seeds: Optional[int] = None, log: Optional[Callable[[dict], None]] = None,
           prior: str = "hierarchical", draws: int = DRAWS) -> Dict[str, Any]:
    """Add seeds to the tied finalists of ``alloc`` (in place: curves and ``spent``) as the module
    docstring says; returns what was done and the final probabilities (JSON-able)."""
    if not 0 < target <= 1:
        raise ValueError(f"the target probability must be in (0, 1], got {target}")
    cap_seeds = len(seeds) if max_seeds is None else min(int(max_seeds), len(seeds))
    if cap_seeds < 1:
        raise ValueError(f"--tie-seeds must be >= 1, got {max_seeds}")
    log = log or (lambda event: None)
    cap = alloc.budget * alloc.grid
    by_cell = {r.cell: r for r in alloc.cells}
    added: List[Dict[str, Any]] = []
    reason = "no finalist"
    while True:
        values = final_values(alloc, epochs, seeds)
        if not values:
            break
        n = {c: len(v) for c, v in values.items()}
        post = prob_best(values, len(seeds), prior=prior, draws=draws)
        if post is not None and post["p_best"][post["leader"]] >= target:
            reason = "decided"
            break
        if post is None:  # no spread estimate yet: a second seed for the best mean
            order = sorted(values, key=lambda c: -sum(values[c]) / n[c])
            gains = {c: float(len(order) - i) for i, c in enumerate(order)}
        else:
            gains = _gains(post, n)
        room = {c: g for c, g in gains.items() if n[c] < cap_seeds and g > 0}
        if not room:
            reason = "seed cap" if post is None or any(n[c] >= cap_seeds for c in gains) else "no rival"
            break
        choice, cost, seed = None, 0, -1
        for c in sorted(room, key=lambda c: (-room[c], by_cell[c].arrival)):
            rec = by_cell[c]
            nxt = next(s for s in seeds if s not in _full_seeds(rec, epochs, seeds))
            need = epochs - len(rec.curves.get(nxt, []))
            if alloc.spent + need <= cap:
                choice, cost, seed = c, need, nxt
                break
        if choice is None:
            reason = "budget"
            break
        rec = by_cell[choice]
        curve = [float(v) for v in trainer(rec.cell, seed, epochs)]
        if len(curve) < epochs:
            raise RuntimeError(f"trainer returned {len(curve)} values for {epochs} epochs of {rec.cell} seed {seed}")
        rec.curves[seed] = curve[:epochs]
        alloc.spent += cost
        event = {"event": "tiebreak", "alpha": choice[0], "temperature": choice[1], "seed": seed,
                 "epoch_runs": cost, "spent": alloc.spent, "gain": room[choice],
                 "p_leader_before": None if post is None else post["p_best"][post["leader"]]}
        log(event)
        added.append(event)
    values = final_values(alloc, epochs, seeds)
    post = prob_best(values, len(seeds), prior=prior, draws=draws) if values else None
    return {"target": target, "max_seeds": cap_seeds, "cap_epoch_runs": cap, "added": added,
            "epoch_runs": sum(e["epoch_runs"] for e in added), "stopped": reason, "posterior": post}
