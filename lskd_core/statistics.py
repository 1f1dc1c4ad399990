"""Seed-level statistics of a study: cells, trends over every T, the alpha x T interaction, eta over
seeds, and the set of cells that could be the best. Pure functions over numpy/scipy.

Inputs are seed-level records (:class:`Obs`, or dicts with the same keys): one value per student
run, higher is better (top-1 accuracy or BLEU). Every result is a plain JSON-able dict whose
estimates share one shape (see :func:`estimate_dict`): ``estimate``, ``ci`` (95 %), ``ci80`` (the
"suggestive" level), ``p`` (two-sided, H0: 0), ``n`` and ``unit`` (what was counted), ``df``,
``method`` and ``teacher_variance_sampled``.

The unit of replication. With one teacher per alpha, the unit is the student run (its seed): the
intervals then cover student seeds only, and the teacher's own variance is not sampled (a second
teacher could differ by more than the students do). When every alpha involved has two or more
teachers (``teacher_seed``), the unit is the teacher: its students' values are averaged (or, for a
slope, fitted together) first, and the interval is taken over teachers, so it includes the
teacher's variance. Pairing: cells are compared unit by unit when both cells hold the same units
(same student seed = same initialisation and data order; same teacher seed index), otherwise by
Welch's unequal-variance t (every unit still counts).

Decision rules (the comparisons are strict on purpose, see :func:`evidence_level`): an effect is
``clear`` when its 95 % interval excludes 0 in the expected direction (a t interval excludes 0
exactly when p < ALPHA; p == ALPHA is *not* clear), ``suggestive`` when only the 80 % interval
does, ``opposite`` when the 95 % interval excludes 0 in the other direction, ``not shown``
otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import stats

from lskd_core.estimates import (
    ALPHA,
    BOOTSTRAP_RESAMPLES,
    CLEAR,
    DEFAULT_DELTA,
    NOT_SHOWN,
    OPPOSITE,
    SUGGESTIVE,
    SUGGESTIVE_ALPHA,
    Cell,
    Obs,
    Row,
    _by_teacher,
    _cell_units,
    _field,
    _unit_key,
    _unit_name,
    as_observations,
    bootstrap_mean_estimate,
    estimate_dict,
    evidence_level,
    holm,
    mean_estimate,
    scaled,
    teachers_per_alpha,
    within_delta,
)

# Records, units and the estimate shape live in lskd_core.estimates; re-exported (the public API).
__all__ = ["ALPHA", "BOOTSTRAP_RESAMPLES", "CLEAR", "DEFAULT_DELTA", "NOT_SHOWN", "OPPOSITE", "SUGGESTIVE",
           "SUGGESTIVE_ALPHA", "Cell", "Obs", "Row", "as_observations", "bootstrap_mean_estimate", "estimate_dict",
           "evidence_level", "holm", "mean_estimate", "scaled", "teachers_per_alpha", "within_delta",
           "cells_of", "cell_summaries", "cell_difference", "could_be_best", "compatibility", "trend",
           "interaction", "EtaObs", "as_eta_observations", "shows_diffusion", "eta_summary"]


# ------------------------------------------------------------------------------------------------
# cells and differences
# ------------------------------------------------------------------------------------------------
def cells_of(obs: Sequence[Obs]) -> List[Cell]:
    return sorted({(o.alpha, o.temperature) for o in obs})


def cell_summaries(obs: Sequence[Obs]) -> List[Dict[str, Any]]:
    """Per (alpha, T): every seed's value, mean, std, n and a 95 % interval over the units."""
    out = []
    for cell in cells_of(obs):
        values = [o.value for o in obs if (o.alpha, o.temperature) == cell]
        by_t = _by_teacher(obs, [cell[0]])
        units = _cell_units(obs, cell, by_t)
        est = mean_estimate(list(units.values()), _unit_name(by_t), teacher_variance_sampled=by_t)
        out.append({"alpha": cell[0], "temperature": cell[1], "values": values, "n_runs": len(values),
                    "mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                    "teachers": teachers_per_alpha(obs).get(cell[0], 0), "interval": est})
    return out


def _welch(a: Sequence[float], b: Sequence[float], unit: str, sampled: bool) -> Dict[str, Any]:
    """mean(a) - mean(b) with Welch's standard error and Welch-Satterthwaite df."""
    diff = float(np.mean(a) - np.mean(b))
    n = len(a) + len(b)
    if len(a) < 2 or len(b) < 2:
        return estimate_dict(diff, None, None, n, unit, "Welch t (unpaired)", sampled)
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = float(math.sqrt(va + vb))
    df = float((va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))) if se > 0 else float(n - 2)
    return estimate_dict(diff, se, df, n, unit, "Welch t (unpaired)", sampled)


def cell_difference(obs: Sequence[Obs], a: Cell, b: Cell) -> Dict[str, Any]:
    """mean(a) - mean(b): paired t over units when both cells hold the same units, else Welch."""
    by_t = _by_teacher(obs, {a[0], b[0]})
    ua, ub = _cell_units(obs, a, by_t), _cell_units(obs, b, by_t)
    if not ua or not ub:
        raise ValueError(f"cell {a if not ua else b} has no runs")
    unit = _unit_name(by_t)
    if set(ua) == set(ub):
        d = [ua[k] - ub[k] for k in ua]
        out = mean_estimate(d, unit, "paired t over units", by_t)
    else:
        out = _welch(list(ua.values()), list(ub.values()), unit, by_t)
    out["cells"] = [list(a), list(b)]
    return out


def _one_sided_p(diff: Mapping[str, Any]) -> float:
    """p for H1: difference > 0 from a t estimate; 1 when nothing can be estimated (cannot exclude)."""
    se, df = diff.get("se"), diff.get("df")
    if se is None or df is None:
        return 1.0
    if se == 0.0:
        return 0.0 if diff["estimate"] > 0 else 1.0
    return float(stats.t.sf(diff["estimate"] / se, df))


def could_be_best(obs: Sequence[Obs], alpha: float = ALPHA) -> Dict[str, Any]:
    """The cells that cannot be told apart from the best, chosen without the post-hoc trap.

    Procedure (multiple comparisons with the best, Holm-controlled): for every cell i, test
    H0: mu_j <= mu_i against H1: mu_j > mu_i for each other cell j (one-sided paired t over the
    units, Welch when unpaired), adjust those K - 1 p-values with Holm, and drop i when any adjusted
    p < alpha (strict). The kept cells form the set. For the truly best cell all K - 1 nulls hold, so
    Holm keeps it with probability >= 1 - alpha: the set contains the best cell with 95 % confidence
    whichever cell happens to have the highest sample mean. No reference cell is picked from the
    data first. A cell with a single unit can never be dropped (its spread is unknown).
    """
    cells = cells_of(obs)
    means = {c: float(np.mean([o.value for o in obs if (o.alpha, o.temperature) == c])) for c in cells}
    kept, dropped = [], {}
    for i in cells:
        rivals = [j for j in cells if j != i]
        p = [_one_sided_p(cell_difference(obs, j, i)) for j in rivals]
        adj = holm(p) if p else []
        beaten = [{"by": list(j), "p_holm": q} for j, q in zip(rivals, adj) if q < alpha]
        if beaten:
            dropped[i] = beaten
        else:
            kept.append(i)
    best = max(cells, key=lambda c: means[c]) if cells else None
    return {"alpha": alpha, "best_mean_cell": list(best) if best else None,
            "set": [list(c) for c in sorted(kept, key=lambda c: -means[c])],
            "dropped": [{"cell": list(c), "beaten_by": b} for c, b in dropped.items()],
            "means": [{"cell": list(c), "mean": m} for c, m in means.items()],
            "method": ("multiple comparisons with the best: each cell against every other by one-sided paired t "
                       f"(Welch when unpaired), Holm-adjusted over the {max(len(cells) - 1, 0)} rivals, "
                       f"dropped when an adjusted p < {alpha:g}")}


def compatibility(obs: Sequence[Obs], alpha_ls: float, alpha_plain: float) -> List[Dict[str, Any]]:
    """Per T, the LS teacher's students against the plain teacher's (Sec. 5's definition).

    ``compatible`` is the point comparison mean(LS) >= mean(plain): a tie counts as compatible (the LS
    teacher is no worse); ``level`` says how sure that direction is (expected +, from the interval).
    """
    out = []
    temps = sorted({o.temperature for o in obs if o.alpha in (alpha_ls, alpha_plain)})
    for t in temps:
        have = {(o.alpha, o.temperature) for o in obs}
        if (alpha_ls, t) not in have or (alpha_plain, t) not in have:
            continue
        diff = cell_difference(obs, (alpha_ls, t), (alpha_plain, t))
        m_ls = float(np.mean([o.value for o in obs if (o.alpha, o.temperature) == (alpha_ls, t)]))
        m_pl = float(np.mean([o.value for o in obs if (o.alpha, o.temperature) == (alpha_plain, t)]))
        out.append({"temperature": t, "compatible": bool(m_ls >= m_pl), "difference": diff,
                    "level": evidence_level(diff, +1)})
    return out


# ------------------------------------------------------------------------------------------------
# trends over every T and the alpha x T interaction
# ------------------------------------------------------------------------------------------------
def _slope(x: Sequence[float], y: Sequence[float]) -> Tuple[float, Optional[float], int]:
    """OLS slope of y on x, its standard error (None when n <= 2: no residual df) and n - 2."""
    yv = np.asarray(y, dtype=float)
    res = stats.linregress(np.asarray(x, dtype=float), yv)
    n = len(x)
    se: Optional[float] = float(res.stderr) if n > 2 else None
    if se is not None and not math.isfinite(se):
        # scipy gives nan for a constant y (its correlation is 0/0); the fit is then exact: se = 0
        se = 0.0 if float(np.ptp(yv)) == 0.0 else None
    return float(res.slope), se, n - 2


def _unit_slopes(obs: Sequence[Obs], alpha: float, by_teacher: bool) -> Dict[Tuple[int, ...], float]:
    """Per unit (teacher, or student seed), the OLS slope of its values on ln T (units with >= 2 T)."""
    pts: Dict[Tuple[int, ...], List[Tuple[float, float]]] = {}
    for o in obs:
        if o.alpha == alpha:
            pts.setdefault(_unit_key(o, by_teacher), []).append((math.log(o.temperature), o.value))
    out = {}
    for key, xy in sorted(pts.items()):
        if len({x for x, _ in xy}) >= 2:
            out[key] = _slope([x for x, _ in xy], [y for _, y in xy])[0]
    return out


def _span(obs: Sequence[Obs], alphas: Iterable[float]) -> Tuple[float, float, float]:
    temps = sorted({o.temperature for o in obs if o.alpha in set(alphas)})
    return temps[0], temps[-1], math.log(temps[-1] / temps[0])


def trend(obs: Sequence[Obs], alpha: float) -> Dict[str, Any]:
    """Regression of value on ln T for one alpha, using every T and every run.

    One teacher: OLS over every student run (scipy.stats.linregress), t interval with n - 2 df. With
    the students' seeds paired across T this is conservative (the seed effect stays in the residual).
    Two or more teachers: one OLS slope per teacher (its students together), t interval over the
    teachers' slopes (n_teachers - 1 df), so the teacher's variance is in the interval.
    ``change_over_range`` is the slope times ln(T_max / T_min): the fitted change across the grid.
    """
    sub = [o for o in obs if o.alpha == alpha]
    temps = sorted({o.temperature for o in sub})
    out: Dict[str, Any] = {"alpha": alpha, "temperatures": temps, "slope_per_ln_T": None, "change_over_range": None}
    if len(temps) < 2:
        out["reason"] = "a trend needs at least two temperatures"
        return out
    if _by_teacher(obs, [alpha]):
        slopes = list(_unit_slopes(obs, alpha, True).values())
        est = mean_estimate(slopes, "teacher", "OLS slope on ln T per teacher; t interval over teachers", True)
    else:
        slope, se, df = _slope([math.log(o.temperature) for o in sub], [o.value for o in sub])
        est = estimate_dict(slope, se, df if se is not None else None, len(sub), "student run",
                            "OLS on ln T over every run (linregress); t interval, n - 2 df", False)
    out["slope_per_ln_T"] = est
    out["change_over_range"] = scaled(est, math.log(temps[-1] / temps[0]))
    return out


def _unpaired_slope_difference(obs: Sequence[Obs], alpha_ls: float,
                               alpha_plain: float) -> Optional[Dict[str, Any]]:
    a, b = trend(obs, alpha_ls)["slope_per_ln_T"], trend(obs, alpha_plain)["slope_per_ln_T"]
    if a is None or b is None:
        return None  # an alpha has runs at a single T only (a partial study): no slope to compare
    diff = a["estimate"] - b["estimate"]
    n = a["n"] + b["n"]
    method = "difference of the two trends' slopes (unpaired, Welch-Satterthwaite df)"
    if a["se"] is None or b["se"] is None:
        return estimate_dict(diff, None, None, n, a["unit"], method, a["teacher_variance_sampled"])
    va, vb = a["se"] ** 2, b["se"] ** 2
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / a["df"] + vb ** 2 / b["df"]) if se > 0 else float(a["df"] + b["df"])
    return estimate_dict(diff, se, df, n, a["unit"], method, a["teacher_variance_sampled"])


def interaction(obs: Sequence[Obs], alpha_ls: float, alpha_plain: float, method: str = "t",
                seed: int = 0, n_resamples: int = BOOTSTRAP_RESAMPLES) -> Dict[str, Any]:
    """slope(LS) - slope(plain) of value on ln T: does T hurt the LS teacher's students more?

    ``None`` estimates (with a ``reason``) when an alpha has runs at a single T only.
    Paired by design when both alphas hold the same units (same student seed, or same teacher seed
    index): per unit, the difference of its two slopes, then a t interval (``method="t"``) or a BCa
    bootstrap over the units (``method="bootstrap"``). Otherwise the two trends' slopes are
    compared unpaired. Negative = T hurts the LS teacher's students more.
    """
    if method not in ("t", "bootstrap"):
        raise ValueError(f"method must be 't' or 'bootstrap', got {method!r}")
    by_t = _by_teacher(obs, [alpha_ls, alpha_plain])
    s_ls, s_pl = _unit_slopes(obs, alpha_ls, by_t), _unit_slopes(obs, alpha_plain, by_t)
    unit = _unit_name(by_t)
    paired = bool(s_ls) and set(s_ls) == set(s_pl) and len(s_ls) >= 2
    est: Optional[Dict[str, Any]]
    if paired:
        d = [s_ls[k] - s_pl[k] for k in s_ls]
        est = (bootstrap_mean_estimate(d, unit, by_t, seed=seed, n_resamples=n_resamples) if method == "bootstrap" else
               mean_estimate(d, unit, "paired: per-unit slope difference on ln T, t interval over units", by_t))
    else:
        est = _unpaired_slope_difference(obs, alpha_ls, alpha_plain)
    t_min, t_max, span = _span(obs, [alpha_ls, alpha_plain])
    out = {"alpha_ls": alpha_ls, "alpha_plain": alpha_plain, "paired": paired, "range": [t_min, t_max],
           "slope_difference_per_ln_T": est, "change_over_range": None if est is None else scaled(est, span)}
    if est is None:
        out["reason"] = "each alpha needs runs at two or more temperatures"
    return out


# ------------------------------------------------------------------------------------------------
# eta over seeds
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EtaObs:
    """eta (percent) of one student run's features between T1 and T2, for one target class."""

    alpha: float
    t1: float
    t2: float
    seed: int
    target: int
    eta_s1: float
    eta_s2: float
    teacher_seed: int = 0


def as_eta_observations(rows: Iterable[Union[EtaObs, Mapping[str, Any]]], s1_key: str = "eta_s1",
                        s2_key: str = "eta_s2") -> List[EtaObs]:
    """EtaObs from dicts; ``s1_key``/``s2_key`` pick the variant (e.g. ``eta_s1_pairwise``)."""
    out = []
    for r in rows:
        if not isinstance(r, EtaObs):
            r = EtaObs(alpha=float(_field(r, "alpha")), t1=float(_field(r, "t1")), t2=float(_field(r, "t2")),
                       seed=int(_field(r, "seed")), target=int(_field(r, "target")),
                       eta_s1=float(_field(r, s1_key)), eta_s2=float(_field(r, s2_key)),
                       teacher_seed=int(_field(r, "teacher_seed", default=0)))
        if not (math.isfinite(r.eta_s1) and math.isfinite(r.eta_s2)):
            raise ValueError(f"eta record {r} is not finite")
        out.append(r)
    return out


def shows_diffusion(eta_s1: float, eta_s2: float) -> bool:
    """Systematic diffusion for one run: S1 relatively closer AND S2 relatively farther (strict).

    Both are required. The relative distances over S1 and S2 sum to 1 at both temperatures, so their
    changes sum to 0; but Eq. 1 averages each class's change relative to its own distance at T1, and
    the two means can share a sign: squared distances (1 | 8, 1) -> (1.5 | 6.5, 2) give eta_S1 = +50 %
    and eta_S2 = +40.6 % (tests/test_report_sections_mutants.py).
    """
    return eta_s1 < 0 and eta_s2 > 0


def _eta_block(runs: Dict[Tuple[int, int], Tuple[float, float]], by_teacher: bool) -> Dict[str, Any]:
    """Mean and interval over units of eta_s1 and eta_s2, and the share of runs showing diffusion."""
    units: Dict[Tuple[int, ...], List[Tuple[float, float]]] = {}
    for (teacher, seed), v in sorted(runs.items()):
        units.setdefault((teacher,) if by_teacher else (teacher, seed), []).append(v)
    unit = _unit_name(by_teacher)
    s1 = [float(np.mean([v[0] for v in vs])) for vs in units.values()]
    s2 = [float(np.mean([v[1] for v in vs])) for vs in units.values()]
    return {"eta_s1": mean_estimate(s1, unit, teacher_variance_sampled=by_teacher),
            "eta_s2": mean_estimate(s2, unit, teacher_variance_sampled=by_teacher),
            "runs": len(runs), "share_diffusion": float(np.mean([shows_diffusion(*v) for v in runs.values()]))}


def eta_summary(rows: Sequence[EtaObs]) -> List[Dict[str, Any]]:
    """Per (alpha, T1, T2): per target and summarised over targets, eta over every student run.

    ``targets``: per class, mean and 95 % interval over units of eta_S1 / eta_S2 and the share of
    student runs showing diffusion. ``summary``: each run's eta averaged over the targets first, then
    the same over runs. With >= 2 teachers for that alpha the unit is the teacher.
    """
    teachers: Dict[float, set] = {}
    for r in rows:
        teachers.setdefault(r.alpha, set()).add(r.teacher_seed)
    out = []
    for key in sorted({(r.alpha, r.t1, r.t2) for r in rows}):
        sub = [r for r in rows if (r.alpha, r.t1, r.t2) == key]
        by_t = len(teachers[key[0]]) >= 2
        per_target = []
        for target in sorted({r.target for r in sub}):
            runs = {(r.teacher_seed, r.seed): (r.eta_s1, r.eta_s2) for r in sub if r.target == target}
            per_target.append(dict(_eta_block(runs, by_t), target=target))
        by_run: Dict[Tuple[int, int], List[Tuple[float, float]]] = {}
        for r in sub:
            by_run.setdefault((r.teacher_seed, r.seed), []).append((r.eta_s1, r.eta_s2))
        means = {k: (float(np.mean([v[0] for v in vs])), float(np.mean([v[1] for v in vs])))
                 for k, vs in by_run.items()}
        out.append({"alpha": key[0], "t1": key[1], "t2": key[2], "targets": per_target,
                    "summary": _eta_block(means, by_t)})
    return out
