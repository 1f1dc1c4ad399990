"""Pricing the temperature-variant arms of a demo design (``variant_arms``, ``variant_seeds``; issue 21).

An arm trains one student per (alpha, T, seed) for the grid's first ``variant_seeds`` seeds, each
with a val feature export (calibration), and the report compares it with the grid cell by cell: arm
minus grid, paired by seed. Student seed i distils from teacher i mod N, so the first k seeds cover
min(k, N) teachers; with >= 2 teachers covered the unit is the teacher (its students' pair
differences averaged first), otherwise the student seed, as :mod:`lskd_core.statistics` counts them.

The pair difference's sd comes from a pilot that ran arms (:func:`pair_components`); without one,
the prior is two independent students of one cell, sqrt(2) x the pilot's within-cell sd (seed
pairing can only narrow it when the two students of a seed correlate positively), with no
teacher-level variance (that part is then unknown, and the printed half-width a lower bound for it).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from demo_power_io import Rec

__all__ = ["arm_units", "arm_cpu", "arm_halfwidth", "pair_components", "prior_components", "variant_rows"]

Costs = Mapping[str, Tuple[float, float, float]]


def arm_units(variant_seeds: int, teacher_seeds: int) -> Tuple[int, float]:
    """(units, students per unit) of one cell's arm - grid comparison with the first
    ``variant_seeds`` seeds (seed i -> teacher i mod ``teacher_seeds``)."""
    covered = min(variant_seeds, teacher_seeds)
    if covered < 2:  # one teacher (or one covered): the student seed is the unit
        return variant_seeds, 1.0
    return covered, variant_seeds / covered


def arm_halfwidth(sigma_pair: float, tau_pair: float, variant_seeds: int, teacher_seeds: int) -> float:
    """95 % half-width of one cell's arm - grid difference (points), t over the units."""
    from demo_power import t_halfwidth

    n, m = arm_units(variant_seeds, teacher_seeds)
    sd = sigma_pair if min(variant_seeds, teacher_seeds) < 2 else math.sqrt(tau_pair ** 2 + sigma_pair ** 2 / m)
    return t_halfwidth(sd, n)


def arm_cpu(arms: int, variant_seeds: int, alphas: int, temperatures: int, cost: Costs, train: int, val: int,
            student_epochs: int, export_images: int) -> Dict[str, float]:
    """CPU seconds the arms add: per arm and (alpha, T, seed), a cached student and its val export."""
    def run(kind: str, trained: float, evaluated: float) -> float:
        a, b, c = cost[kind]
        return a + b * trained + c * evaluated

    students = arms * alphas * temperatures * variant_seeds
    return {"student": students * run("student", train * student_epochs, val * student_epochs),
            "export": students * run("export", 0, export_images / 2)}


def pair_components(grid: Sequence[Rec], arms: Mapping[str, Sequence[Rec]]) -> Dict[str, Any]:
    """Variance of the arm - grid pair difference (same alpha, T, teacher and seed), each pair taken
    around its (arm, cell)'s mean (an arm's effect may differ by cell), pooled over the cells of the
    arms given (name -> that arm's records; pass one arm to see its own).

    Where a cell holds >= 2 pairs of one teacher: ``sigma_pair`` is the within-teacher sd and
    ``tau_pair`` the teacher-level sd (method of moments, demo_power.between_within). Otherwise
    (one pair per teacher): ``sigma_pair`` is the total sd of the pairs, which already holds the
    teacher's part, and ``tau_pair`` is 0 (``split`` False). ``None`` where nothing is estimable."""
    from demo_power import between_within

    base = {(r.alpha, r.temperature, r.teacher_seed, r.seed): r.value for r in grid}
    cells: Dict[Tuple[str, float, float], Dict[Tuple[int, int], float]] = {}
    for name, recs in arms.items():
        for r in recs:
            key = (r.alpha, r.temperature, r.teacher_seed, r.seed)
            if key in base:
                cells.setdefault((name, r.alpha, r.temperature), {})[(r.teacher_seed, r.seed)] = r.value - base[key]
    total_ss = total_df = w_ss = w_df = tau_ss = tau_df = 0.0
    for pairs in cells.values():
        vals = list(pairs.values())
        mean = sum(vals) / len(vals)
        total_ss += sum((v - mean) ** 2 for v in vals)
        total_df += len(vals) - 1
        bw = between_within(pairs)
        if bw["within_df"] > 0:
            w_ss += bw["within_sd"] ** 2 * bw["within_df"]
            w_df += bw["within_df"]
            if bw["teacher_sd"] is not None:
                tau_ss += bw["teacher_sd"] ** 2 * (bw["teachers"] - 1)
                tau_df += bw["teachers"] - 1
    split = w_df > 0
    sigma = math.sqrt(w_ss / w_df) if split else (math.sqrt(total_ss / total_df) if total_df else None)
    return {"pairs": sum(len(p) for p in cells.values()), "cells": len(cells), "split": split,
            "sigma_pair": sigma, "df": int(w_df if split else total_df),
            "tau_pair": (math.sqrt(tau_ss / tau_df) if tau_df else 0.0) if split else 0.0,
            "total_sd": math.sqrt(total_ss / total_df) if total_df else None,
            "cell_means": {f"{n} {a:g},{t:g}": sum(p.values()) / len(p) for (n, a, t), p in sorted(cells.items())}}


def prior_components(cell_sd: float) -> Dict[str, Any]:
    """No pilot arm: two independent students of one cell (sqrt(2) x the within-cell sd), tau 0."""
    return {"pairs": 0, "cells": 0, "split": True, "sigma_pair": math.sqrt(2.0) * cell_sd, "df": 0,
            "tau_pair": 0.0, "total_sd": None, "cell_means": {}, "prior": True}


def variant_rows(base: Mapping[str, Any], design: Any, comps: Mapping[str, Mapping[str, Any]],
                 seed_options: Sequence[int], cost: Costs, cores: int,
                 budget_s: Optional[float] = None) -> List[Dict[str, Any]]:
    """Per candidate ``variant_seeds``: the CPU of every arm in ``comps`` (name -> its pair
    components), the design's wall with them and each arm's per-cell half-width of arm - grid.
    ``base``: the design's evaluate_design row (its wall possibly the measured one)."""
    arms = len(comps)
    rows = []
    for k in seed_options:
        if not 1 <= k <= design.seeds:
            continue
        cpu = arm_cpu(arms, k, 2, len(design.temperatures), cost, design.train, design.val,
                      design.student_epochs, design.export_images)
        added = sum(cpu.values())
        wall = base["wall_estimate_s"] + added / cores
        n, m = arm_units(k, design.teacher_seeds)
        unit = "teacher" if min(k, design.teacher_seeds) >= 2 else "student seed"
        rows.append({"variant_seeds": k, "arms": arms, "units": n, "unit": unit, "students_per_unit": m,
                     "arm_students": int(arms * 2 * len(design.temperatures) * k), "added_cpu_s": round(added, 1),
                     "cpu_total_s": round(base["cpu_total_s"] + added, 1), "wall_estimate_s": round(wall, 1),
                     "fits": budget_s is None or wall <= budget_s,
                     "halfwidth": {name: arm_halfwidth(c["sigma_pair"], c["tau_pair"] or 0.0, k, design.teacher_seeds)
                                   for name, c in comps.items()}})
    return rows
