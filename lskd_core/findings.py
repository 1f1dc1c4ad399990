"""The study's verdict and the paper's findings, as pure functions of :mod:`lskd_core.statistics`.

:func:`analyze` turns seed-level records into every statistic the verdict needs (JSON-able);
:func:`verdict` turns that into one sentence (the recommended (alpha, T), its confidence and why, or
"no clear winner among these cells" with the cells that cannot be told apart) and the paper's
findings as flags (clear / suggestive / not shown / opposite) with their evidence. The wording never
claims more than the intervals show; the paper's rule of thumb is never used as a default answer.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from lskd_core import statistics as st

Cellish = Sequence[float]


def _num(x: float) -> str:
    return f"{x:g}"


def _cell_name(cell: Cellish) -> str:
    return f"alpha = {_num(cell[0])}, T = {_num(cell[1])}"


def analyze(rows: Iterable[Union[st.Obs, Mapping[str, Any]]],
            eta_rows: Optional[Iterable[Union[st.EtaObs, Mapping[str, Any]]]] = None, *,
            delta: float = st.DEFAULT_DELTA, method: str = "t", seed: int = 0,
            baseline_alpha: float = 0.0, eta_scope: str = "mean over target classes") -> Dict[str, Any]:
    """Every statistic of the verdict from seed-level records (and optionally per-run eta rows).

    ``eta_scope``: what the eta rows measure, in the diffusion flag's words.

    ``delta``: the smallest effect of interest for the interaction, in the metric's points over the
    grid's T range. ``method``: "t" or "bootstrap" for the paired interaction interval.
    """
    if not delta > 0:
        raise ValueError(f"delta must be > 0, got {delta!r}")
    obs = st.as_observations(rows)
    if not obs:
        return {"status": "missing"}
    counts = st.teachers_per_alpha(obs)
    alphas = sorted(counts)
    out: Dict[str, Any] = {
        "status": "ok", "delta": delta, "alphas": alphas,
        "temperatures": sorted({o.temperature for o in obs}),
        "teacher_variance": {"teachers_per_alpha": {str(a): n for a, n in counts.items()},
                             "sampled": all(n >= 2 for n in counts.values())},
        "cells": st.cell_summaries(obs),
        "trends": [st.trend(obs, a) for a in alphas],
        "best": st.could_be_best(obs, st.ALPHA),
        "best_suggestive": st.could_be_best(obs, st.SUGGESTIVE_ALPHA),
    }
    ls = [a for a in alphas if a > baseline_alpha]
    if baseline_alpha in counts and ls:
        a_ls = max(ls)
        out["alpha_ls"], out["alpha_plain"] = a_ls, baseline_alpha
        if len(out["temperatures"]) >= 2:
            out["interaction"] = st.interaction(obs, a_ls, baseline_alpha, method=method, seed=seed)
        out["compatibility"] = st.compatibility(obs, a_ls, baseline_alpha)
    if eta_rows is not None:
        out["eta"] = st.eta_summary(st.as_eta_observations(eta_rows))
        out["eta_scope"] = eta_scope
    return out


# ------------------------------------------------------------------------------------------------
# wording
# ------------------------------------------------------------------------------------------------
def _interval_words(est: Mapping[str, Any], unit: str, nd: int = 2) -> str:
    if est.get("ci") is None:
        return (f"{est['estimate']:+.{nd}f} {unit}; no interval with {est['n']} {est['unit']}(s) "
                "(the spread is unknown)")
    lo, hi = est["ci"]
    p = f", p = {est['p']:.3g}" if est.get("p") is not None else ""
    return (f"{est['estimate']:+.{nd}f} {unit}, 95 % interval {lo:+.{nd}f} to {hi:+.{nd}f}{p}; "
            f"n = {est['n']} {est['unit']}s, {est['method']}")


def _level_words(level: str, sampled: bool) -> str:
    words = {st.CLEAR: "clear (the 95 % interval excludes 0)",
             st.SUGGESTIVE: "suggestive only (the 80 % interval excludes 0, the 95 % interval does not)",
             st.NOT_SHOWN: "not shown (the 95 % interval includes 0)",
             st.OPPOSITE: "opposite to the paper (the 95 % interval excludes 0 on the other side)"}[level]
    if level in (st.CLEAR, st.OPPOSITE) and not sampled:
        words += " for the teachers trained here (student seeds only)"
    return words


def _flag(claim: str, est: Optional[Mapping[str, Any]], direction: int, unit: str,
          extra: str = "") -> Dict[str, Any]:
    if est is None:
        return {"claim": claim, "level": st.NOT_SHOWN, "evidence": None,
                "text": f"{claim}: not shown (not enough cells to test it){extra}."}
    level = st.evidence_level(est, direction)
    text = f"{claim}: {_level_words(level, est['teacher_variance_sampled'])} — {_interval_words(est, unit)}{extra}."
    return {"claim": claim, "level": level, "evidence": dict(est), "text": text}


def _trend_flag(analysis: Mapping[str, Any], unit: str) -> Dict[str, Any]:
    a_ls = analysis.get("alpha_ls")
    tr = next((t for t in analysis["trends"] if t["alpha"] == a_ls), None)
    est = tr["change_over_range"] if tr else None
    rng = f" (fitted change on ln T from T = {_num(tr['temperatures'][0])} to {_num(tr['temperatures'][-1])})" \
        if tr and est else ""
    return _flag(f"Higher T hurts the LS teacher's (alpha = {_num(a_ls) if a_ls is not None else '?'}) students"
                 + rng, est, -1, unit)


def _interaction_flag(analysis: Mapping[str, Any], unit: str) -> Dict[str, Any]:
    inter = analysis.get("interaction")
    est = inter["change_over_range"] if inter else None
    extra = ""
    small = st.within_delta(est, analysis["delta"]) if est else None
    if small:
        lo, hi = est["ci"]  # type: ignore[index]
        extra = (f"; the effect is smaller than {analysis['delta']:g} {unit}: its 95 % interval "
                 f"({lo:+.2f} to {hi:+.2f}) lies within ±{analysis['delta']:g}")
    flag = _flag("T hurts the LS teacher's students more than the plain teacher's (alpha x T interaction: "
                 "difference of the fitted changes over the T range)", est, -1, unit, extra)
    flag["smaller_than_delta"] = small
    flag["delta"] = analysis["delta"]
    return flag


def _diffusion_flag(analysis: Mapping[str, Any]) -> Dict[str, Any]:
    a_ls, temps = analysis.get("alpha_ls"), analysis["temperatures"]
    claim = "Systematic diffusion at high T for the LS teacher's students (eta_S1 < 0)"
    groups = analysis.get("eta") or []
    g = next((g for g in groups if g["alpha"] == a_ls and g["t1"] == temps[0] and g["t2"] == temps[-1]), None)
    if g is None:
        return _flag(claim, None, -1, "%")
    summ = g["summary"]
    # not "by construction": Eq. 1 averages relative changes, so eta_S1 and eta_S2 can share a sign
    extra = (f"; {100 * summ['share_diffusion']:.0f} % of {summ['runs']} student runs show it (eta_S1 < 0 and "
             f"eta_S2 > 0); eta_S2 {summ['eta_s2']['estimate']:+.2f} %: the relative distances sum to 1, so S2 "
             "moving away is largely the other side of S1 moving closer, not independent evidence")
    plain = next((h for h in groups if h["alpha"] == analysis.get("alpha_plain") and h["t1"] == g["t1"]
                  and h["t2"] == g["t2"]), None)
    if plain is not None:
        extra += f"; plain teacher's students for comparison: eta_S1 {plain['summary']['eta_s1']['estimate']:+.2f} %"
    scope = analysis.get("eta_scope") or "mean over target classes"
    flag = _flag(claim + f", T = {_num(g['t1'])} -> {_num(g['t2'])}, {scope}",
                 summ["eta_s1"], -1, "%", extra)
    flag["share_diffusion"] = summ["share_diffusion"]
    return flag


def _compat_flags(analysis: Mapping[str, Any], unit: str) -> Dict[str, Dict[str, Any]]:
    comp = analysis.get("compatibility") or []
    if not comp:
        return {}
    lo, hi = comp[0], comp[-1]
    out = {"compatible_at_lowest_T": _flag(
        f"LS teacher's students at least as good as the plain teacher's at T = {_num(lo['temperature'])} "
        f"(point estimate: {'yes' if lo['compatible'] else 'no'})", lo["difference"], +1, unit)}
    if len(comp) > 1:
        out["incompatible_at_highest_T"] = _flag(
            f"LS teacher's students worse than the plain teacher's at T = {_num(hi['temperature'])} "
            f"(point estimate: {'no' if hi['compatible'] else 'yes'})", hi["difference"], -1, unit)
    return out


def smoothness_flag(row: Optional[Mapping[str, Any]], delta: float, unit: str = "points") -> Dict[str, Any]:
    """Does smoothness alone explain the high-T result? One sentence from App. H's matched row.

    ``row``: the report's entropy-matched row for (LS alpha, highest T) with ``vs_matched`` (LS
    students minus the plain teacher's students at the entropy-matched T') and ``vs_grid`` (LS minus
    plain at the same T), both estimates of :func:`statistics.cell_difference`. Smoothness alone
    explains the result when equally smooth plain-teacher targets reach the LS students: the
    LS - matched interval lies within +-delta. It does not when that interval excludes 0. When the
    grid's own LS - plain interval lies within +-delta there is no high-T difference to explain.
    """
    claim = "Smoothness alone explains the high-T result"
    est = (row or {}).get("vs_matched")
    if row is None or est is None:
        return {"claim": claim, "level": "not tested", "evidence": None,
                "text": f"{claim}: not tested (no entropy-matched students at the highest T; set "
                        "matched_temperatures to include it)."}
    t = _num(row["ls_temperature"])
    temps = sorted(row.get("matched_temperatures", {}).values())
    tp = ", ".join(f"{x:.3g}" for x in temps) or "?"
    grid = row.get("vs_grid")
    scope = "" if est["teacher_variance_sampled"] else " (for the teachers trained here: student seeds only)"
    words = (f"the LS teacher's students at T = {t} minus the plain teacher's at the entropy-matched T' = {tp}: "
             f"{_interval_words(est, unit)}")
    if grid is not None:
        words += f"; minus the plain teacher's at T = {t}: {_interval_words(grid, unit)}"
    if temps and all(abs(x / row["ls_temperature"] - 1) < 0.1 for x in temps):
        words += ("; T' is within 10 % of T (both teachers are near maximum entropy), so the matched comparison "
                  "is close to the grid's own")
    ci = est.get("ci")
    if grid is not None and st.within_delta(grid, delta):
        level, verdict_words = "nothing to explain", (
            f"moot: there is no high-T LS effect to explain (LS − plain at T = {t} lies within ±{delta:g} {unit})")
    elif ci is None:
        level, verdict_words = "not decided", "not decided (no interval)"
    elif ci[0] > 0 or ci[1] < 0:
        level, verdict_words = "no", ("no: at equal entropy the LS teacher's students still differ from the plain "
                                      "teacher's (the 95 % interval excludes 0)" + scope)
    elif st.within_delta(est, delta):
        level, verdict_words = "yes", (f"yes, to within ±{delta:g} {unit}: equally smooth plain-teacher targets "
                                       "give students as good as the LS teacher's (the 95 % interval lies within "
                                       f"±{delta:g})" + scope)
    else:
        level, verdict_words = "not decided", (f"not decided (the 95 % interval includes 0 and differences "
                                               f"beyond ±{delta:g} {unit})")
    return {"claim": claim, "level": level, "evidence": dict(est),
            "text": f"{claim} at T = {t}: {verdict_words} — {words}."}


def _teacher_units_note(analysis: Mapping[str, Any]) -> Optional[str]:
    """With several teachers per alpha: say that the intervals are over teachers, and how many."""
    tv = analysis["teacher_variance"]
    if not tv["sampled"]:
        return None
    counts = sorted(set(tv["teachers_per_alpha"].values()))
    n = " to ".join(str(c) for c in counts)
    return (f"Teacher variance is sampled: {n} teachers per alpha, each teacher's students averaged first; the "
            f"intervals above are over teachers (t with teachers − 1 df), so the alpha claims cover "
            "teacher-to-teacher variance, not only student seeds.")


def _cell_words(analysis: Mapping[str, Any], cell: Cellish, unit: str) -> str:
    c = next(c for c in analysis["cells"] if [c["alpha"], c["temperature"]] == list(cell))
    est = c["interval"]
    ci = f", 95 % interval {est['ci'][0]:.2f} to {est['ci'][1]:.2f}" if est.get("ci") else ""
    return f"{_cell_name(cell)} ({c['mean']:.2f} {unit}{ci}, {est['n']} {est['unit']}s)"


def _shared(cells: Sequence[Cellish]) -> str:
    alphas = {c[0] for c in cells}
    temps = {c[1] for c in cells}
    if len(alphas) == 1:
        return f"; all of them use alpha = {_num(next(iter(alphas)))}, so that teacher is favoured at the 5 % level"
    if len(temps) == 1:
        return f"; all of them use T = {_num(next(iter(temps)))}, so that temperature is favoured at the 5 % level"
    return ""


def _headline(analysis: Mapping[str, Any], unit: str) -> Dict[str, Any]:
    best, sug = analysis["best"], analysis["best_suggestive"]
    sampled = analysis["teacher_variance"]["sampled"]
    if len(analysis["cells"]) == 1:
        cell = best["set"][0]
        return {"sentence": f"Only one cell ran, {_cell_words(analysis, cell, unit)}: there is nothing to compare it "
                            "with, so no recommendation.", "confidence": "none", "recommended": None,
                "indistinguishable": best["set"]}
    if len(best["set"]) == 1:
        cell = best["set"][0]
        conf = "clear" if sampled else "clear for these teachers"
        cap = "" if sampled else ("; the intervals cover student seeds only (one teacher per alpha), so the "
                                  "teacher's own variance is not sampled and this holds for the teachers trained here")
        text = (f"Recommendation: {_cell_name(cell)} — {conf}: {_cell_words(analysis, cell, unit)} is above "
                f"every other cell at the 5 % level (one-sided paired t-tests against each rival, Holm-adjusted){cap}.")
        return {"sentence": text, "confidence": conf, "recommended": cell, "indistinguishable": best["set"]}
    listed = "; ".join(_cell_words(analysis, c, unit) for c in best["set"])
    lean = ""
    conf = "none"
    if len(sug["set"]) == 1 and len(best["set"]) > 1:
        conf = "suggestive"
        lean = (f"; the data lean towards {_cell_name(sug['set'][0])} (suggestive only: it alone survives at the "
                f"{int(100 * st.SUGGESTIVE_ALPHA)} % level)")
    text = (f"No clear winner among these cells: {listed} cannot be told apart from the best at the 5 % level "
            f"(multiple comparisons with the best, Holm){_shared(best['set'])}{lean}.")
    return {"sentence": text, "confidence": conf, "recommended": None, "indistinguishable": best["set"],
            "leaning": sug["set"][0] if conf == "suggestive" else None}


def verdict(analysis: Mapping[str, Any], unit: str = "points") -> Dict[str, Any]:
    """The verdict sentence, its confidence and the paper's findings as flags (a pure function)."""
    if analysis.get("status") != "ok":
        return {"status": "missing", "sentence": "No student finished, so there is no verdict yet.",
                "confidence": "none", "flags": {}, "lines": []}
    out: Dict[str, Any] = {"status": "ok"}
    out.update(_headline(analysis, unit))
    flags: Dict[str, Dict[str, Any]] = {}
    if analysis.get("alpha_ls") is not None:
        flags["higher_T_hurts_ls"] = _trend_flag(analysis, unit)
        flags["T_hurts_ls_more"] = _interaction_flag(analysis, unit)
        flags["ls_diffusion_high_T"] = _diffusion_flag(analysis)
        flags.update(_compat_flags(analysis, unit))
    out["flags"] = flags
    tv = analysis["teacher_variance"]
    out["teacher_variance_note"] = None if tv["sampled"] else (
        "Teacher variance is not sampled: with one teacher per alpha the intervals cover student seeds only "
        "(set teacher_seeds >= 2 to include it).")
    out["teacher_units_note"] = _teacher_units_note(analysis)
    lines: List[str] = [out["sentence"]] + [f["text"] for f in flags.values()]
    for note in (out["teacher_variance_note"], out["teacher_units_note"]):
        if note:
            lines.append(note)
    out["lines"] = lines
    return out
