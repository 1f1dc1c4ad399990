"""Power estimate for the embedded demo (issue 11, item 6), reproducible from pilot study directories.

    python scripts/demo_power.py PILOT_DIR [PILOT_DIR ...] [--cpu-log FILE] [--delta 1.0]
        [--budget-s 900] [--cores 2] [--json OUT]

It reads the pilots' finished students (``runs/*/run_config.json`` + ``result.json``, or another
result file with ``--result-name``, e.g. a re-evaluation's ``eval.json``) and estimates, for the
paired alpha x T interaction (slope on ln T of the LS teacher's students minus the plain teacher's)
and for the LS teacher's own trend:

* sigma_d: the sd over student seeds of the per-seed slope difference (seeds paired by design: same
  initialisation and data order for both teachers' students), rescaled to another temperature set
  by sqrt(Sxx_pilot / Sxx_target) (a per-seed OLS slope has variance sigma^2 / Sxx);
* sigma_tau: the teacher-to-teacher sd of the slope difference, from pilots with two or more
  teachers per alpha (method of moments: var(per-teacher mean) - sigma_d^2 / m, floored at 0);
* sigma_cell: the student-seed sd within a cell (the one-teacher trend's residual).

The interval half-widths follow the intervals :mod:`lskd_core.statistics` reports: one teacher per
alpha -> t over student seeds (n - 1 df; the teacher's variance is *not* sampled); N >= 2 teachers
-> t over teachers (N - 1 df) of each teacher's mean difference, variance sigma_tau^2 +
sigma_d^2 / m with m students per teacher. A design *decides* the interaction when its 95 %
interval excludes 0 or lies within [-delta, delta]; with half-width h <= delta / 2 every outcome
decides. ``p_decide`` is that probability at a true effect of 0 and of delta (simulated from the t
model: estimate ~ N(theta, sd^2/n), s^2 ~ sd^2 chi2_{df}/df).

Compute is modelled as summed process CPU seconds per run kind, fitted by least squares on a
``--cpu-log`` written by a timing wrapper used as the study's ``python`` (one line per process:
``user sys wall <argv...>``, as ``/usr/bin/time -f "%U %S %e"`` writes it), and converted to a wall
estimate as CPU / cores (the study runs ``jobs = cores`` single-threaded runs at a time) plus the
serial report. The variance terms are measured at the pilots' data size and epochs only: the
search does not extrapolate them to other sizes (those are priced, not powered).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

# the pilots' reader sits beside this script; put its folder on the path also when this file is
# loaded by path (the tests) rather than run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_power_io import (  # noqa: E402
    FULL_SPLIT,
    RUN_KINDS,
    Rec,
    parse_cpu_log,
    read_exit_cpu,
    read_students,
    read_teachers,
)

__all__ = ["FULL_SPLIT", "RUN_KINDS", "Rec", "parse_cpu_log", "read_exit_cpu", "read_students", "read_teachers"]
LEVEL = 0.95


# ------------------------------------------------------------------------------------------------
# design geometry and half-widths (pure)
# ------------------------------------------------------------------------------------------------
def sxx(temperatures: Sequence[float]) -> float:
    """Sum of squared deviations of ln T: a per-seed OLS slope on ln T has variance sigma^2 / Sxx."""
    x = np.log(np.asarray(temperatures, dtype=float))
    return float(((x - x.mean()) ** 2).sum())


def log_span(temperatures: Sequence[float]) -> float:
    """ln(T_max / T_min): a slope per ln T times this is the fitted change over the grid (points)."""
    return math.log(max(temperatures) / min(temperatures))


def t_halfwidth(sd: float, n_units: int, level: float = LEVEL) -> float:
    """Half-width of the t interval of a mean of ``n_units`` independent units with sd ``sd``."""
    if n_units < 2:
        return math.inf
    return float(stats.t.ppf(0.5 + level / 2, n_units - 1)) * sd / math.sqrt(n_units)


def unit_sd(sigma_student: float, sigma_teacher: float, seeds: int, teacher_seeds: int) -> Tuple[float, int]:
    """sd of one unit's value and the number of units, as :mod:`lskd_core.statistics` counts them.

    One teacher per alpha: the unit is the student seed (sd = sigma_student; the teacher's variance
    is not sampled). N >= 2 teachers: the unit is the teacher, the mean of its m = seeds / N students:
    sd = sqrt(sigma_teacher^2 + sigma_student^2 / m).
    """
    if teacher_seeds <= 1:
        return sigma_student, seeds
    m = seeds / teacher_seeds
    return math.sqrt(sigma_teacher ** 2 + sigma_student ** 2 / m), teacher_seeds


def interaction_halfwidth(sigma_d: float, sigma_tau: float, seeds: int, teacher_seeds: int,
                          level: float = LEVEL) -> float:
    """95 % half-width of the paired slope difference (per ln T) for a design."""
    sd, n = unit_sd(sigma_d, sigma_tau, seeds, teacher_seeds)
    return t_halfwidth(sd, n, level)


def pooled_trend_halfwidth(sigma_cell: float, seeds: int, temperatures: Sequence[float],
                           level: float = LEVEL) -> float:
    """One teacher: OLS of value on ln T over every run (n = seeds x |T|, n - 2 df), residual sd
    sigma_cell (the seed effect stays in the residual, as in lskd_core.statistics.trend)."""
    n = seeds * len(temperatures)
    if n <= 2:
        return math.inf
    se = sigma_cell / math.sqrt(seeds * sxx(temperatures))
    return float(stats.t.ppf(0.5 + level / 2, n - 2)) * se


def p_decide(theta: float, sd: float, n_units: int, delta: float, level: float = LEVEL,
             draws: int = 20000, seed: int = 0) -> float:
    """P(the t interval excludes 0, or lies within [-delta, delta]) at a true effect ``theta``."""
    if n_units < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    df = n_units - 1
    est = rng.normal(theta, sd / math.sqrt(n_units), draws)
    s = sd * np.sqrt(rng.chisquare(df, draws) / df)
    h = float(stats.t.ppf(0.5 + level / 2, df)) * s / math.sqrt(n_units)
    decided = (np.abs(est) > h) | (np.abs(est) + h <= delta)
    return float(decided.mean())


# ------------------------------------------------------------------------------------------------
# variance components from seed-level records (pure)
# ------------------------------------------------------------------------------------------------
def _matrix(recs: Sequence[Rec], alpha: float, teacher_seed: int) -> Tuple[List[int], List[float], np.ndarray]:
    """Seeds x temperatures values of one (alpha, teacher), complete seeds only."""
    sub = [r for r in recs if r.alpha == alpha and r.teacher_seed == teacher_seed]
    temps = sorted({r.temperature for r in sub})
    table = {(r.seed, r.temperature): r.value for r in sub}
    seeds = sorted(s for s in {r.seed for r in sub} if all((s, t) in table for t in temps))
    return seeds, temps, np.array([[table[(s, t)] for t in temps] for s in seeds], dtype=float)


def groups(recs: Sequence[Rec]) -> List[Tuple[float, int]]:
    return sorted({(r.alpha, r.teacher_seed) for r in recs})


def cell_sd(recs: Sequence[Rec]) -> Tuple[float, int]:
    """Pooled within-cell sd over student seeds of the same teacher, and its df."""
    ss, df = 0.0, 0
    for a, k in groups(recs):
        _, _, y = _matrix(recs, a, k)
        if y.shape[0] >= 2:
            ss += float(((y - y.mean(0)) ** 2).sum())
            df += (y.shape[0] - 1) * y.shape[1]
    return (math.sqrt(ss / df) if df else math.nan), df


def residual_sd(recs: Sequence[Rec]) -> Tuple[float, int]:
    """Pooled two-way (seed + T) residual sd per (alpha, teacher) and its df: the noise a per-seed
    slope sees (the seed's own level cancels in a slope)."""
    ss, df = 0.0, 0
    for a, k in groups(recs):
        _, _, y = _matrix(recs, a, k)
        if y.shape[0] >= 2 and y.shape[1] >= 2:
            r = y - y.mean(0) - y.mean(1, keepdims=True) + y.mean()
            ss += float((r ** 2).sum())
            df += (y.shape[0] - 1) * (y.shape[1] - 1)
    return (math.sqrt(ss / df) if df else math.nan), df


def seed_slopes(recs: Sequence[Rec], alpha: float) -> Dict[Tuple[int, int], float]:
    """(teacher_seed, seed) -> OLS slope of the seed's values on ln T, for one alpha."""
    out: Dict[Tuple[int, int], float] = {}
    for a, k in groups(recs):
        if a != alpha:
            continue
        seeds, temps, y = _matrix(recs, a, k)
        if len(temps) < 2:
            continue
        x = np.log(np.asarray(temps))
        xc = x - x.mean()
        for s, row in zip(seeds, y):
            out[(k, s)] = float((xc * (row - row.mean())).sum() / (xc ** 2).sum())
    return out


def slope_differences(recs: Sequence[Rec], alpha_ls: float, alpha_plain: float) -> Dict[Tuple[int, int], float]:
    """(teacher_seed, seed) -> slope(LS) - slope(plain), for seeds run under both alphas."""
    ls, pl = seed_slopes(recs, alpha_ls), seed_slopes(recs, alpha_plain)
    return {key: ls[key] - pl[key] for key in sorted(set(ls) & set(pl))}


def cell_differences(recs: Sequence[Rec], alpha_ls: float, alpha_plain: float, temperature: float,
                     other: Optional[Sequence[Rec]] = None) -> Dict[Tuple[int, int], float]:
    """(teacher_seed, seed) -> the LS student's value at ``temperature`` minus its plain-teacher
    partner's (same teacher seed index and student seed): the unit-level difference behind the
    verdict's alpha claims at one T. ``other``: take the plain side from these records instead
    (the entropy-matched students, App. H)."""
    ls = {(r.teacher_seed, r.seed): r.value for r in recs if r.alpha == alpha_ls and r.temperature == temperature}
    pl = {(r.teacher_seed, r.seed): r.value for r in (recs if other is None else other)
          if r.alpha == alpha_plain and r.temperature == temperature}
    return {key: ls[key] - pl[key] for key in sorted(set(ls) & set(pl))}


def between_within(values: Mapping[Tuple[int, int], float]) -> Dict[str, Any]:
    """Student-level and teacher-level sd of per-seed values keyed (teacher_seed, seed).

    within: pooled sd of the values around their teacher's mean (df = n - N); teacher: the
    method-of-moments sd of the teachers' true means, sqrt(max(0, var(teacher means) - within^2 /
    m)) with m the mean number of students per teacher (None with one teacher)."""
    by_t: Dict[int, List[float]] = {}
    for (k, _), v in values.items():
        by_t.setdefault(k, []).append(v)
    n = sum(len(v) for v in by_t.values())
    df_w = n - len(by_t)
    ss_w = sum(float(((np.asarray(v) - np.mean(v)) ** 2).sum()) for v in by_t.values())
    within = math.sqrt(ss_w / df_w) if df_w > 0 else math.nan
    out: Dict[str, Any] = {"n": n, "teachers": len(by_t), "within_sd": within, "within_df": df_w,
                           "teacher_sd": None, "teacher_means_sd": None}
    if len(by_t) >= 2:
        means = [float(np.mean(v)) for v in by_t.values()]
        m = n / len(by_t)
        var_means = float(np.var(means, ddof=1))
        out["teacher_means_sd"] = math.sqrt(var_means)
        out["teacher_sd"] = math.sqrt(max(0.0, var_means - within ** 2 / m))
    return out


# ------------------------------------------------------------------------------------------------
# compute model (pure)
# ------------------------------------------------------------------------------------------------
def fit_cost(rows: Sequence[Tuple[float, float, float]]) -> Tuple[float, float, float]:
    """Least-squares CPU = a + b * images_trained + c * images_evaluated from (images_trained,
    images_evaluated, cpu_s) rows; a coefficient the rows cannot identify is dropped (0)."""
    arr = np.asarray(rows, dtype=float)
    cols = [np.ones(len(arr))]
    names = ["a"]
    for j, name in ((0, "b"), (1, "c")):
        if np.ptp(arr[:, j]) > 0:
            cols.append(arr[:, j])
            names.append(name)
    coef, *_ = np.linalg.lstsq(np.column_stack(cols), arr[:, 2], rcond=None)
    got = dict(zip(names, (float(c) for c in coef)))
    return got.get("a", 0.0), got.get("b", 0.0), got.get("c", 0.0)


@dataclass(frozen=True)
class Design:
    seeds: int
    teacher_seeds: int
    temperatures: Tuple[float, ...]
    train: int
    val: int
    teacher_epochs: int
    student_epochs: int
    export_images: int  # train + val images per feature export
    matched: bool = False  # + App. H's entropy-matched students at the highest T (one per grid seed)


def design_cpu(d: Design, cost: Mapping[str, Tuple[float, float, float]], alphas: int = 2,
               analysis: bool = True) -> Dict[str, float]:
    """Summed CPU seconds per run kind of a design (the study's plan: teachers, caches, students,
    feature exports of every teacher and, with analysis, of every student on train and val)."""
    def run(kind: str, trained: float, evaluated: float) -> float:
        a, b, c = cost[kind]
        return a + b * trained + c * evaluated

    teachers = alphas * d.teacher_seeds
    students = alphas * len(d.temperatures) * d.seeds
    exports = 2 * teachers + (2 * students if analysis else 0)
    matched = d.seeds if d.matched else 0  # not exported; one match run per teacher seed
    out = {
        "teacher": teachers * run("teacher", d.train * d.teacher_epochs, d.val * d.teacher_epochs),
        "cache": teachers * run("cache", d.train * d.student_epochs, 0),
        "student": (students + matched) * run("student", d.train * d.student_epochs, d.val * d.student_epochs),
        "export": exports * run("export", 0, d.export_images / 2),
    }
    if d.matched:
        out["match"] = d.teacher_seeds * run("match", 0, 0) if "match" in cost else 0.0
    return out


def wall_estimate(cpu: Mapping[str, float], serial_s: float, cores: int) -> float:
    """Runs in parallel on ``cores`` single-threaded slots, then the serial report."""
    return sum(cpu.values()) / cores + serial_s


# ------------------------------------------------------------------------------------------------
# the estimate
# ------------------------------------------------------------------------------------------------
def variance_summary(pilots: Sequence[Sequence[Rec]], alpha_ls: float, alpha_plain: float,
                     matched: Optional[Sequence[Sequence[Rec]]] = None) -> Dict[str, Any]:
    """Variance terms pooled over pilots (their teachers kept apart), per-seed slopes normalised to
    Sxx = 1 (value * sqrt(Sxx_pilot)) so that pilots with different temperature sets pool; a design's
    per-seed slope sd is then the normalised sd / sqrt(Sxx_design). ``alpha_difference``: the
    within- and between-teacher sd of the LS - plain difference at each pilot's lowest and highest T
    and, from ``matched`` (each pilot's entropy-matched students), of LS at the highest T minus the
    matched plain students (not rescaled: one T each)."""
    diffs: Dict[str, Dict[Tuple[int, int], float]] = {"low": {}, "high": {}, "matched": {}}
    d_norm: Dict[Tuple[int, int], float] = {}
    ls_norm: Dict[Tuple[int, int], float] = {}
    d_raw: Dict[Tuple[int, int], float] = {}
    ls_raw: Dict[Tuple[int, int], float] = {}
    cells: List[Tuple[float, int]] = []
    resid: List[Tuple[float, int]] = []
    per_pilot: List[Dict[str, Any]] = []
    for k, recs in enumerate(pilots):
        temps = sorted({r.temperature for r in recs})
        root = math.sqrt(sxx(temps))
        d, ls = slope_differences(recs, alpha_ls, alpha_plain), seed_slopes(recs, alpha_ls)
        # teacher seeds of different pilots are different teachers: keep them apart
        d_norm.update({(t + 1000 * k, s): v * root for (t, s), v in d.items()})
        ls_norm.update({(t + 1000 * k, s): v * root for (t, s), v in ls.items()})
        d_raw.update({(t + 1000 * k, s): v for (t, s), v in d.items()})
        ls_raw.update({(t + 1000 * k, s): v for (t, s), v in ls.items()})
        if temps:
            other = matched[k] if matched and k < len(matched) and matched[k] else None
            for name, t, o in (("low", temps[0], None), ("high", temps[-1], None), ("matched", temps[-1], other)):
                if name != "matched" or o is not None:
                    diffs[name].update({(ts + 1000 * k, sd): v
                                        for (ts, sd), v in cell_differences(recs, alpha_ls, alpha_plain, t, o).items()})
        cells.append(cell_sd(recs))
        resid.append(residual_sd(recs))
        per_pilot.append({"temperatures": temps, "sxx": sxx(temps), "students": len(recs),
                          "slope_difference": between_within(d), "ls_slope": between_within(ls),
                          "cell_sd": cells[-1][0], "residual_sd": resid[-1][0]})

    def pool(parts: Sequence[Tuple[float, int]]) -> Tuple[float, int]:
        df = sum(n for _, n in parts if n)
        return (math.sqrt(sum(sd ** 2 * n for sd, n in parts if n) / df) if df else math.nan), df

    teacher = [p for p in per_pilot if p["slope_difference"]["teacher_sd"] is not None]
    return {"pilots": per_pilot, "cell_sd": pool(cells)[0], "cell_df": pool(cells)[1],
            "residual_sd": pool(resid)[0], "residual_df": pool(resid)[1],
            "slope_difference": between_within(d_norm), "ls_slope": between_within(ls_norm),
            # teacher-level sd of the slopes themselves (per ln T, not normalised): pilots with >= 2 teachers
            "slope_difference_teacher": between_within(d_raw)["teacher_sd"] if teacher else None,
            "ls_slope_teacher": between_within(ls_raw)["teacher_sd"] if teacher else None,
            "alpha_difference": {name: between_within(d) for name, d in diffs.items() if d}}


def candidate_designs(base: Design, seeds: Iterable[int], teacher_seeds: Iterable[int],
                      temperature_sets: Iterable[Sequence[float]]) -> List[Design]:
    return [Design(s, n, tuple(ts), base.train, base.val, base.teacher_epochs, base.student_epochs,
                   base.export_images, base.matched)
            for s, n, ts in itertools.product(seeds, teacher_seeds, temperature_sets) if s % n == 0 and s >= 2 * n]


def evaluate_design(d: Design, var: Mapping[str, Any], cost: Mapping[str, Tuple[float, float, float]],
                    delta: float, cores: int, serial_s: float) -> Dict[str, Any]:
    scale = 1.0 / math.sqrt(sxx(d.temperatures))  # per-seed slope sd ~ 1 / sqrt(Sxx)
    sd_d = var["slope_difference"]["within_sd"] * scale
    tau = var["slope_difference_teacher"] or 0.0
    sd_ls = var["ls_slope"]["within_sd"] * scale
    tau_ls = var["ls_slope_teacher"] or 0.0
    span = log_span(d.temperatures)
    unit, n = unit_sd(sd_d, tau, d.seeds, d.teacher_seeds)
    hw = interaction_halfwidth(sd_d, tau, d.seeds, d.teacher_seeds) * span
    if d.teacher_seeds <= 1:
        hw_ls = pooled_trend_halfwidth(var["cell_sd"], d.seeds, d.temperatures) * span
    else:
        hw_ls = t_halfwidth(unit_sd(sd_ls, tau_ls, d.seeds, d.teacher_seeds)[0], d.teacher_seeds) * span
    claims = {"interaction": hw}
    for name, comp in (var.get("alpha_difference") or {}).items():
        if name != "matched" or d.matched:
            claims[f"alpha_{name}"] = t_halfwidth(*unit_sd(comp["within_sd"], comp["teacher_sd"] or 0.0,
                                                           d.seeds, d.teacher_seeds))
    cpu = design_cpu(d, cost)
    return {"seeds": d.seeds, "teacher_seeds": d.teacher_seeds, "temperatures": list(d.temperatures),
            "matched": d.matched, "claim_halfwidths": claims, "widest_claim_halfwidth": max(claims.values()),
            "students": 2 * len(d.temperatures) * d.seeds, "unit": "teacher" if d.teacher_seeds > 1 else "student seed",
            "interaction_halfwidth_over_range": hw, "ls_trend_halfwidth_over_range": hw_ls,
            "p_decide_at_0": p_decide(0.0, unit * span, n, delta),
            "p_decide_at_delta": p_decide(delta, unit * span, n, delta),
            "cpu_s": {k: round(v, 1) for k, v in cpu.items()}, "cpu_total_s": round(sum(cpu.values()), 1),
            "wall_estimate_s": round(wall_estimate(cpu, serial_s, cores), 1)}


def choose(rows: Sequence[Mapping[str, Any]], budget_s: float) -> Optional[Mapping[str, Any]]:
    """Within the wall budget, the narrowest interaction interval (ties: the fewer CPU seconds)."""
    fits = [r for r in rows if r["wall_estimate_s"] <= budget_s]
    return min(fits, key=lambda r: (round(r["interaction_halfwidth_over_range"], 3), r["cpu_total_s"]), default=None)


def choose_teachers(rows: Sequence[Mapping[str, Any]], budget_s: float, min_teachers: int) -> Optional[Mapping[str, Any]]:
    """Within the wall budget and with >= ``min_teachers`` teachers per alpha, the design whose widest
    95 % half-width over the verdict's claims (interaction, LS - plain at the lowest and highest T,
    LS - matched) is the narrowest (ties: the fewer CPU seconds)."""
    fits = [r for r in rows if r["wall_estimate_s"] <= budget_s and r["teacher_seeds"] >= min_teachers]
    return min(fits, key=lambda r: (round(r["widest_claim_halfwidth"], 3), r["cpu_total_s"]), default=None)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pilots", nargs="+", type=Path, help="pilot study directories (their runs/ are read)")
    p.add_argument("--eval-name", default=None,
                   help="per-run file preferred over result.json where a run has it (a re-evaluation, e.g. on "
                        "the full test split, with val_acc1)")
    p.add_argument("--cpu-log", type=Path, action="append", default=[], help="timing wrapper log(s) (repeatable)")
    p.add_argument("--exit-cpu", type=Path, action="append", default=[],
                   help="study directory whose warm-started runs' exit records give the CPU per run kind (repeatable)")
    p.add_argument("--cost", action="append", default=[], metavar="KIND=CPU_S",
                   help="CPU seconds per run of a kind (teacher, cache, student, export, match), e.g. measured on a "
                        "quiet machine; wins over the logs for that kind (CPU seconds inflate on a loaded machine)")
    p.add_argument("--matched", action="store_true",
                   help="designs include the entropy-matched students at the highest T (matched_temperatures)")
    p.add_argument("--min-teachers", type=int, default=3, help="teachers per alpha for best_teachers")
    p.add_argument("--alpha-ls", type=float, default=0.1)
    p.add_argument("--alpha-plain", type=float, default=0.0)
    p.add_argument("--delta", type=float, default=1.0, help="smallest effect of interest, points over the T range")
    p.add_argument("--budget-s", type=float, default=900.0, help="wall-time budget of the demo (s)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--serial-s", type=float, default=60.0, help="serial wall s (study start-up + report)")
    p.add_argument("--train", type=int, default=6000)
    p.add_argument("--val", type=int, default=10000)
    p.add_argument("--teacher-epochs", type=int, default=4)
    p.add_argument("--student-epochs", type=int, default=2)
    p.add_argument("--export-images", type=int, default=4000, help="train + val images per feature export")
    p.add_argument("--json", type=Path, help="write the whole estimate here")
    p.add_argument("--variant-arms", nargs="*", default=[], metavar="ARM",
                   help="price these variant arms (variant_arms, e.g. teacher_only_T logit_standardization) on the "
                        "--variant-base design; the pilots' students of these arms, if any, give the pair sd")
    p.add_argument("--variant-seeds", type=int, nargs="*", default=[2, 3, 4, 6], metavar="N",
                   help="candidate variant_seeds for --variant-arms")
    p.add_argument("--variant-base", default="6,3", metavar="SEEDS,TEACHER_SEEDS",
                   help="the design the arms are added to, at T {1, 64} (default: the demo's 6,3)")
    p.add_argument("--variant-base-wall", type=float, default=None, metavar="S",
                   help="measured study wall of --variant-base (s): the arms' wall is added to it instead of to "
                        "the model's estimate (CPU / cores + --serial-s)")
    args = p.parse_args(argv)
    pilots: List[List[Rec]] = []
    matched: List[List[Rec]] = []
    for study in args.pilots:
        if not (study / "runs").is_dir():
            print(f"error: {study} has no runs/ directory; give a study directory (its --out)", file=sys.stderr)
            return 2
        pilots.append(read_students(study, args.eval_name))
        matched.append(read_students(study, args.eval_name, (args.alpha_ls,)))
    if not any(pilots):
        print("error: no finished students in the pilot(s); run the pilot study first", file=sys.stderr)
        return 2
    var = variance_summary([p for p in pilots if p], args.alpha_ls, args.alpha_plain,
                           [m for p, m in zip(pilots, matched) if p])
    if not math.isfinite(var["slope_difference"]["within_sd"]):
        print("error: the pilots need >= 2 paired seeds per teacher at >= 2 temperatures under both alphas",
              file=sys.stderr)
        return 2
    rows: Dict[str, List[Tuple[float, float, float]]] = {}
    for log in args.cpu_log:
        for kind, r in parse_cpu_log(log).items():
            rows.setdefault(kind, []).extend(r)
    for study in args.exit_cpu:
        for kind, r in read_exit_cpu(study).items():
            rows.setdefault(kind, []).extend(r)
    try:
        fixed = {k: (float(v), 0.0, 0.0) for k, v in (item.split("=", 1) for item in args.cost)}
    except ValueError:
        print(f"error: --cost takes KIND=CPU_SECONDS (e.g. teacher=29), got {args.cost}", file=sys.stderr)
        return 2
    missing = [k for k in ("teacher", "cache", "student", "export") if k not in rows and k not in fixed]
    if missing:
        print(f"error: the CPU log(s) have no {', '.join(missing)} runs; pass --cpu-log or --exit-cpu from a pilot "
              "that ran them",
              file=sys.stderr)
        return 2
    cost = {**{k: fit_cost(r) for k, r in rows.items()}, **fixed}
    teachers = read_teachers(args.pilots[0])
    base = Design(1, 1, (1.0,), args.train, args.val, args.teacher_epochs, args.student_epochs, args.export_images,
                  args.matched)
    tsets = [(1.0, 2.0, 3.0, 64.0), (1.0, 3.0, 64.0), (1.0, 64.0)]
    designs = candidate_designs(base, range(2, 41), (1, 2, 3, 4, 5, 6, 8), tsets)
    table = [evaluate_design(d, var, cost, args.delta, args.cores, args.serial_s) for d in designs]
    paper = [r for r in table if r["temperatures"] == [1.0, 2.0, 3.0, 64.0]]
    best, best_paper = choose(table, args.budget_s), choose(paper, args.budget_s)
    best_teachers = choose_teachers(table, args.budget_s, args.min_teachers)
    report = {"variance": var, "cost_per_run": {k: {"a": a, "b": b, "c": c, "runs": 0 if k in fixed else len(rows[k])}
                                                for k, (a, b, c) in cost.items()},
              "teachers": teachers, "delta": args.delta, "best": best, "best_paper_temperatures": best_paper,
              "best_teachers": best_teachers}
    if args.variant_arms:
        got = _variants(args, var, cost, table)
        if isinstance(got, str):
            print(f"error: {got}", file=sys.stderr)
            return 2
        report["variants"] = got
    _print(report)
    if args.json:
        args.json.write_text(json.dumps({**report, "designs": table}, indent=1) + "\n")
    return 0


def _variants(args: argparse.Namespace, var: Mapping[str, Any], cost: Mapping[str, Tuple[float, float, float]],
              table: Sequence[Mapping[str, Any]]) -> Any:
    """The variant arms' prices on the --variant-base design (a message string on bad input)."""
    import demo_power_variants as dv

    try:
        seeds, teachers = (int(v) for v in args.variant_base.split(","))
    except ValueError:
        return f"--variant-base takes SEEDS,TEACHER_SEEDS (e.g. 6,3), got {args.variant_base!r}"
    base = next((r for r in table if (r["seeds"], r["teacher_seeds"], r["temperatures"]) == (seeds, teachers,
                                                                                            [1.0, 64.0])), None)
    if base is None:
        return f"--variant-base {args.variant_base} is not a candidate design (seeds a multiple of teacher seeds, >= 2 each)"
    design = Design(seeds, teachers, (1.0, 64.0), args.train, args.val, args.teacher_epochs, args.student_epochs,
                    args.export_images, args.matched)
    grid = [r for study in args.pilots for r in read_students(study, args.eval_name)]
    comps = {}
    for arm in args.variant_arms:  # each arm's own pair variance (the arms' effects and noise differ)
        recs = [r for study in args.pilots for r in read_students(study, args.eval_name, arm=arm)]
        comps[arm] = dv.pair_components(grid, {arm: recs}) if recs else dv.prior_components(var["cell_sd"])
        if comps[arm]["sigma_pair"] is None:
            return f"the pilots' {arm} students pair with no grid student of the same cell and seed"
    if args.variant_base_wall is not None:
        base = dict(base, wall_estimate_s=args.variant_base_wall)
    rows = dv.variant_rows(base, design, comps, args.variant_seeds, cost, args.cores, args.budget_s)
    return {"arms": list(args.variant_arms), "base": {"seeds": seeds, "teacher_seeds": teachers,
                                                      "wall_estimate_s": base["wall_estimate_s"],
                                                      "cpu_total_s": base["cpu_total_s"]},
            "pair": comps, "rows": rows}


def _print_variants(v: Mapping[str, Any]) -> None:
    print(f"variant arms on {v['base']['seeds']} seeds x {v['base']['teacher_seeds']} teachers "
          f"(base wall ~{v['base']['wall_estimate_s']:.0f} s):")
    for arm, c in v["pair"].items():
        src = ("prior: sqrt(2) x the within-cell sd, teacher sd unknown (0)" if c.get("prior") else
               f"{c['pairs']} pilot pairs in {c['cells']} cells, {c['df']} df"
               + ("" if c["split"] else ", one pair per teacher: total sd"))
        print(f"  {arm}: arm - grid pair sd {c['sigma_pair']:.3f}, teacher sd {c['tau_pair']:.3f} ({src})")
    for r in v["rows"]:
        hw = ", ".join(f"{arm} +-{h:.2f}" for arm, h in r["halfwidth"].items())
        print(f"  variant_seeds {r['variant_seeds']}: {r['arm_students']} arm students, +{r['added_cpu_s']:.0f} CPU s, "
              f"wall ~{r['wall_estimate_s']:.0f} s{'' if r['fits'] else ' (over the budget)'}; per cell {hw} points "
              f"over {r['units']} {r['unit']}s ({r['students_per_unit']:g} pair(s) each)")


def _print(r: Mapping[str, Any]) -> None:
    v = r["variance"]
    sd, ls = v["slope_difference"], v["ls_slope"]
    for p in v["pilots"]:
        print(f"pilot: {p['students']} students, T = {p['temperatures']} (Sxx {p['sxx']:.2f}): cell sd "
              f"{p['cell_sd']:.3f}, slope-difference sd {p['slope_difference']['within_sd']:.3f} per ln T "
              f"({p['slope_difference']['within_df']} df), teacher sd {p['slope_difference']['teacher_sd']}")
    print(f"pooled: cell sd (student seeds, same teacher) {v['cell_sd']:.3f} pts ({v['cell_df']} df); "
          f"two-way residual sd {v['residual_sd']:.3f} ({v['residual_df']} df)")
    print(f"  slope difference x sqrt(Sxx): within-teacher sd {sd['within_sd']:.3f} ({sd['within_df']} df), "
          f"{sd['teachers']} teacher pair(s); teacher sd per ln T {v['slope_difference_teacher']}")
    print(f"  LS slope x sqrt(Sxx): within-teacher sd {ls['within_sd']:.3f}; teacher sd per ln T {v['ls_slope_teacher']}")
    for kind, c in r["cost_per_run"].items():
        print(f"  cost {kind}: {c['a']:.2f} s + {c['b'] * 1e3:.3f} s/1000 img trained + "
              f"{c['c'] * 1e3:.3f} s/1000 img evaluated ({c['runs']} runs)")
    for name, comp in (v.get("alpha_difference") or {}).items():
        print(f"  LS - plain ({name}): within-teacher sd {comp['within_sd']:.3f} ({comp['within_df']} df), "
              f"teacher sd {comp['teacher_sd']} ({comp['teachers']} teacher pairs)")
    for name in ("best", "best_paper_temperatures", "best_teachers"):
        b = r[name]
        if b is None:
            print(f"{name}: no design fits the budget")
            continue
        print(f"{name}: seeds {b['seeds']}, teacher seeds {b['teacher_seeds']}, T {b['temperatures']}: "
              f"interaction +-{b['interaction_halfwidth_over_range']:.2f} pts over the range, LS trend "
              f"+-{b['ls_trend_halfwidth_over_range']:.2f}; P(decide) {b['p_decide_at_0']:.2f} at 0, "
              f"{b['p_decide_at_delta']:.2f} at delta = {r['delta']}; CPU {b['cpu_total_s']:.0f} s, "
              f"wall ~{b['wall_estimate_s']:.0f} s; claims +-"
              + ", ".join(f"{k} {h:.2f}" for k, h in b["claim_halfwidths"].items()))
    if r.get("variants"):
        _print_variants(r["variants"])


if __name__ == "__main__":
    sys.exit(main())
