"""The building blocks of :mod:`lskd_core.statistics`: seed-level records, units of replication and
the one shape every estimate has (``estimate``, ``ci``, ``ci80``, ``p``, ``n``, ``unit``, ``df``,
``method``, ``teacher_variance_sampled``), with the decision levels. :mod:`lskd_core.statistics`
re-exports every public name; its docstring explains the units and the decision rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from scipy import stats

ALPHA = 0.05  # "clear": two-sided p < ALPHA, i.e. the 95 % interval excludes 0
SUGGESTIVE_ALPHA = 0.20  # "suggestive": the 80 % interval excludes 0 (but the 95 % one does not)
DEFAULT_DELTA = 1.0  # smallest effect of interest (points of the metric over the grid's T range)
BOOTSTRAP_RESAMPLES = 9999
CLEAR, SUGGESTIVE, NOT_SHOWN, OPPOSITE = "clear", "suggestive", "not shown", "opposite"

Cell = Tuple[float, float]  # (alpha, T)
Row = Union["Obs", Mapping[str, Any]]


# ------------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Obs:
    """One student run: its cell (alpha, T), student seed, teacher seed and value (higher is better)."""

    alpha: float
    temperature: float
    seed: int
    value: float
    teacher_seed: int = 0


def _field(row: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    if default is not None:
        return default
    raise ValueError(f"record {dict(row)!r} has no {names[0]!r}")


def as_observations(rows: Iterable[Row]) -> List[Obs]:
    """Validated :class:`Obs` from Obs or dicts (keys alpha, temperature or T, seed, value, teacher_seed)."""
    out: List[Obs] = []
    seen = set()
    for row in rows:
        if not isinstance(row, Obs):
            row = Obs(alpha=float(_field(row, "alpha")), temperature=float(_field(row, "temperature", "T")),
                      seed=int(_field(row, "seed")), value=float(_field(row, "value")),
                      teacher_seed=int(_field(row, "teacher_seed", default=0)))
        if not (math.isfinite(row.value) and math.isfinite(row.alpha)):
            raise ValueError(f"record {row} has a non-finite value or alpha")
        if not (row.temperature > 0 and math.isfinite(row.temperature)):
            raise ValueError(f"record {row} has temperature {row.temperature}; it must be a finite number > 0")
        key = (row.alpha, row.temperature, row.seed, row.teacher_seed)
        if key in seen:
            raise ValueError(f"two records for alpha={row.alpha}, T={row.temperature}, seed={row.seed}, "
                             f"teacher_seed={row.teacher_seed}: give each run once")
        seen.add(key)
        out.append(row)
    return out


def teachers_per_alpha(obs: Sequence[Obs]) -> Dict[float, int]:
    """Number of distinct teacher seeds per alpha."""
    found: Dict[float, set] = {}
    for o in obs:
        found.setdefault(o.alpha, set()).add(o.teacher_seed)
    return {a: len(s) for a, s in sorted(found.items())}


def _by_teacher(obs: Sequence[Obs], alphas: Iterable[float]) -> bool:
    """The teacher is the unit only when every alpha involved has >= 2 teachers."""
    counts = teachers_per_alpha(obs)
    return all(counts.get(a, 0) >= 2 for a in alphas)


def _unit_name(by_teacher: bool) -> str:
    return "teacher" if by_teacher else "student seed"


def _unit_key(o: Obs, by_teacher: bool) -> Tuple[int, ...]:
    # student units keep the teacher index too: seed s of teacher 0 and of teacher 1 are different runs
    return (o.teacher_seed,) if by_teacher else (o.teacher_seed, o.seed)


def _cell_units(obs: Sequence[Obs], cell: Cell, by_teacher: bool) -> Dict[Tuple[int, ...], float]:
    """Unit -> value in one cell (a teacher's students averaged first)."""
    groups: Dict[Tuple[int, ...], List[float]] = {}
    for o in obs:
        if (o.alpha, o.temperature) == cell:
            groups.setdefault(_unit_key(o, by_teacher), []).append(o.value)
    return {k: float(np.mean(v)) for k, v in sorted(groups.items())}


# ------------------------------------------------------------------------------------------------
# estimates and intervals
# ------------------------------------------------------------------------------------------------
def estimate_dict(estimate: float, se: Optional[float], df: Optional[float], n: int, unit: str, method: str,
                  teacher_variance_sampled: bool) -> Dict[str, Any]:
    """A t-based estimate: 95 % and 80 % intervals and the two-sided p for H0: estimate = 0.

    ``se`` None (fewer than two units): no interval, no p. ``se`` 0 (all units agree exactly): the
    interval is the point itself and p is 0 for a non-zero estimate, 1 for zero (the t limit, with no
    division by zero).
    """
    out: Dict[str, Any] = {"estimate": float(estimate), "se": se, "df": df, "n": int(n), "unit": unit,
                           "method": method, "teacher_variance_sampled": bool(teacher_variance_sampled),
                           "ci": None, "ci80": None, "p": None}
    if se is None or df is None or df <= 0:
        return out
    if se == 0.0:
        out["ci"] = out["ci80"] = [float(estimate), float(estimate)]
        out["p"] = 0.0 if estimate != 0 else 1.0
        return out
    for key, level in (("ci", ALPHA), ("ci80", SUGGESTIVE_ALPHA)):
        half = float(stats.t.ppf(1 - level / 2, df)) * se
        out[key] = [float(estimate - half), float(estimate + half)]
    out["p"] = float(2 * stats.t.sf(abs(estimate) / se, df))
    return out


def mean_estimate(values: Sequence[float], unit: str = "student seed", method: str = "t interval over units",
                  teacher_variance_sampled: bool = False) -> Dict[str, Any]:
    """Mean of independent units with the textbook t interval (sd / sqrt(n), n - 1 df)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise ValueError("mean_estimate needs at least one value")
    se = float(np.std(v, ddof=1) / math.sqrt(v.size)) if v.size > 1 else None
    out = estimate_dict(float(v.mean()), se, v.size - 1 if v.size > 1 else None, v.size, unit, method,
                        teacher_variance_sampled)
    out["std"] = float(np.std(v, ddof=1)) if v.size > 1 else None
    return out


def bootstrap_mean_estimate(values: Sequence[float], unit: str, teacher_variance_sampled: bool,
                            seed: int = 0, n_resamples: int = BOOTSTRAP_RESAMPLES) -> Dict[str, Any]:
    """Mean of units with BCa bootstrap intervals (scipy.stats.bootstrap, resampling the unit)."""
    v = np.asarray(values, dtype=float)
    base = mean_estimate(v.tolist(), unit, "BCa bootstrap over units", teacher_variance_sampled)
    if v.size < 3 or float(np.ptp(v)) == 0.0:
        return base  # too few units to resample, or no spread: the t limit above is the honest answer
    for key, level in (("ci", ALPHA), ("ci80", SUGGESTIVE_ALPHA)):
        res = stats.bootstrap((v,), np.mean, confidence_level=1 - level, n_resamples=n_resamples,
                              method="BCa", rng=np.random.default_rng(seed))
        base[key] = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    return base


def evidence_level(est: Optional[Mapping[str, Any]], direction: int) -> str:
    """clear / suggestive / not shown / opposite for an effect expected with sign ``direction`` (+1 or -1).

    Strict comparisons: an interval that touches 0 does not exclude it (for a t interval that is
    exactly p == ALPHA, which is not clear).
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}")
    if est is None or est.get("ci") is None:
        return NOT_SHOWN
    lo, hi = (direction * x for x in est["ci"])
    lo, hi = min(lo, hi), max(lo, hi)
    if lo > 0:
        return CLEAR
    if hi < 0:
        return OPPOSITE
    lo80 = min(direction * x for x in est["ci80"])
    return SUGGESTIVE if lo80 > 0 else NOT_SHOWN


def within_delta(est: Optional[Mapping[str, Any]], delta: float) -> Optional[bool]:
    """Equivalence: the 95 % interval lies within [-delta, +delta], bounds included (an interval that
    ends exactly at delta still shows the effect is no larger than delta). None without an interval."""
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta!r}")
    if est is None or est.get("ci") is None:
        return None
    lo, hi = est["ci"]
    return bool(-delta <= lo and hi <= delta)


def scaled(est: Mapping[str, Any], factor: float) -> Dict[str, Any]:
    """The same estimate in other units (factor > 0): estimate, se and intervals multiplied."""
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor!r}")
    out = dict(est)
    out["estimate"] = est["estimate"] * factor
    out["se"] = None if est.get("se") is None else est["se"] * factor
    for key in ("ci", "ci80"):
        out[key] = None if est.get(key) is None else [x * factor for x in est[key]]
    return out


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm's step-down adjusted p-values (same order as given): p_(k) * (m - k + 1), running max, <= 1."""
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adj[idx] = running
    return [float(x) for x in adj]
