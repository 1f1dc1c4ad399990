"""The verdict: which alpha and T to use, how sure, and whether the paper's trends appear.

Today's statistics: Welch's t-test between seed samples (:func:`compare_cells`).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from lskd_core.jsonio import num
from lskd_core.study.tasks import get_task

__all__ = ["compare_cells", "verdict"]


def compare_cells(a: Sequence[float], b: Sequence[float]) -> dict:
    """How sure is "mean(a) > mean(b)"? Difference, its standard error and Welch's t-test.

    Levels: ``clear`` (Welch p < 0.05, or no spread at all and a non-zero difference),
    ``suggestive`` (p < 0.2), ``inconclusive`` otherwise, and ``no-spread-estimate`` when a side
    has a single seed (the seed-to-seed spread is then unknown, so nothing can be claimed).
    """
    a = [float(x) for x in a]
    b = [float(x) for x in b]
    if not a or not b:
        return {"diff": None, "se": None, "p": None, "level": "missing", "n": [len(a), len(b)]}
    diff = float(np.mean(a) - np.mean(b))
    out: dict = {"diff": diff, "n": [len(a), len(b)], "se": None, "p": None}
    if len(a) < 2 or len(b) < 2:
        out["level"] = "no-spread-estimate"
        return out
    se = math.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
    out["se"] = se
    if se == 0.0:
        out["level"] = "clear" if diff != 0 else "inconclusive"
        out["p"] = 0.0 if diff != 0 else 1.0
        return out
    from scipy import stats

    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    out["p"] = p
    out["z"] = diff / se
    out["level"] = "clear" if p < 0.05 else ("suggestive" if p < 0.2 else "inconclusive")
    return out


def _certainty_words(cmp: dict) -> str:
    lvl = cmp["level"]
    n = cmp.get("n", [0, 0])
    if lvl == "missing":
        return "cannot be compared (missing runs)"
    if lvl == "no-spread-estimate":
        return (f"inconclusive: with {min(n)} seed(s) the seed-to-seed spread is unknown, so a difference of "
                f"{abs(cmp['diff']):.2f} points cannot be told apart from noise (run more seeds)")
    base = f"difference {cmp['diff']:+.2f} points, standard error {cmp['se']:.2f}, Welch p = {cmp['p']:.3g}, " \
           f"{n[0]} vs {n[1]} seeds"
    if lvl == "clear":
        return f"clear ({base})"
    if lvl == "suggestive":
        return f"suggestive but not conclusive ({base})"
    return f"inconclusive: the difference is within the seed spread ({base})"


def _choices(best: dict, cells: List[dict], out: dict) -> List[str]:
    """Smooth or not (best cell vs the other alphas' best) and the choice of T for that teacher."""
    detail = []
    others = [c for c in cells if c["alpha"] != best["alpha"]]
    if others:
        rival = max(others, key=lambda c: c["top1_mean"])
        cmp = compare_cells(best["top1"], rival["top1"])
        out["alpha_choice"] = dict(cmp, against={"alpha": rival["alpha"], "temperature": rival["temperature"]})
        detail.append(f"Smoothing the teacher or not (best alpha = {num(best['alpha'])} cell vs the best alpha = "
                      f"{num(rival['alpha'])} cell, at T = {num(rival['temperature'])}): " + _certainty_words(cmp) + ".")
    same = [c for c in cells if c["alpha"] == best["alpha"] and c is not best]
    if same:
        runner = max(same, key=lambda c: c["top1_mean"])
        cmp = compare_cells(best["top1"], runner["top1"])
        out["temperature_choice"] = dict(cmp, against={"alpha": runner["alpha"], "temperature": runner["temperature"]})
        detail.append(f"Choice of T for that teacher (T = {num(best['temperature'])} vs the next best, T = "
                      f"{num(runner['temperature'])}): " + _certainty_words(cmp) + ".")
    return detail


def _headline(best: dict, score: str, a_lvl: str, t_lvl: str) -> str:
    a, t = num(best["alpha"]), num(best["temperature"])
    alpha_phrase = {"clear": f"use the teacher trained with alpha = {a}",
                    "suggestive": f"probably use the teacher trained with alpha = {a} (suggestive evidence)"}.get(
        a_lvl, f"whether to smooth the teacher is not settled (best here: alpha = {a})")
    t_phrase = {"clear": f"distil at T = {t}",
                "suggestive": f"probably at T = {t} (suggestive evidence)"}.get(
        t_lvl, f"the temperature is not settled (best here: T = {t})")
    if a_lvl in ("clear", "suggestive") or t_lvl in ("clear", "suggestive"):
        return f"**Recommendation: {alpha_phrase}; {t_phrase}.** The best cell reaches {score}."
    return (f"**Inconclusive.** The best cell is alpha = {a}, T = {t} ({score}), but its lead is within the "
            "seed-to-seed spread (or the spread is unknown): treat it as a lead to confirm with more seeds "
            "or more data, not as a result.")


def _find(grid: dict, a: float, t: float) -> Optional[dict]:
    return next((c for c in grid["cells"] if c["alpha"] == a and c["temperature"] == t), None)


def _trend_degrades(grid: dict, a_ls: float, temps: List[float], trends: dict) -> List[str]:
    lo, hi = temps[0], temps[-1]
    c_lo, c_hi = _find(grid, a_ls, lo), _find(grid, a_ls, hi)
    if not (c_lo and c_hi and c_lo["top1_mean"] is not None and c_hi["top1_mean"] is not None):
        return []
    cells = [_find(grid, a_ls, t) for t in temps]
    series = [c["top1_mean"] for c in cells if c is not None and c["top1_mean"] is not None]
    drop = compare_cells(c_lo["top1"], c_hi["top1"])
    tr = trends["ls_teacher_degrades_with_T"] = {
        "holds": bool(c_lo["top1_mean"] > c_hi["top1_mean"]),
        "monotone": bool(all(x >= y for x, y in zip(series, series[1:]))),
        "series": series, "certainty": drop["level"]}
    return [f"Paper trend 1 (with an LS teacher, higher T hurts): alpha = {num(a_ls)} students go from "
            f"{c_lo['top1_mean']:.2f} at T = {num(lo)} to {c_hi['top1_mean']:.2f} at T = {num(hi)} "
            f"({'monotone' if tr['monotone'] else 'not monotone'} over T); "
            + ("reproduced" if tr["holds"] else "not reproduced") + f" — {_certainty_words(drop)}."]


def _trend_compatibility(grid: dict, a_ls: float, temps: List[float], trends: dict) -> List[str]:
    lines = []
    lo, hi = temps[0], temps[-1]
    c_lo, c_hi = _find(grid, a_ls, lo), _find(grid, a_ls, hi)
    b_lo, b_hi = _find(grid, 0.0, lo), _find(grid, 0.0, hi)
    if c_lo and b_lo and c_lo.get("compatible") is not None:
        cmp = c_lo.get("vs_alpha0") or compare_cells(c_lo["top1"], b_lo["top1"])
        trends["compatible_at_low_T"] = {"holds": bool(c_lo["compatible"]), "certainty": cmp["level"]}
        lines.append(f"Paper trend 2 (LS and KD compatible at low T): at T = {num(lo)} the LS teacher's "
                     f"students are {'at least as good as' if c_lo['compatible'] else 'worse than'} the "
                     f"alpha = 0 teacher's ({c_lo['top1_mean']:.2f} vs {b_lo['top1_mean']:.2f}); "
                     + ("reproduced" if c_lo["compatible"] else "not reproduced")
                     + f" — {_certainty_words(cmp)}.")
    if c_hi and b_hi and c_hi.get("compatible") is not None:
        cmp = c_hi.get("vs_alpha0") or compare_cells(c_hi["top1"], b_hi["top1"])
        trends["incompatible_at_high_T"] = {"holds": not c_hi["compatible"], "certainty": cmp["level"]}
        lines.append(f"Paper trend 3 (incompatible at high T): at T = {num(hi)} the LS teacher's students are "
                     f"{'worse than' if not c_hi['compatible'] else 'at least as good as'} the alpha = 0 "
                     f"teacher's ({c_hi['top1_mean']:.2f} vs {b_hi['top1_mean']:.2f}); "
                     + ("reproduced" if not c_hi["compatible"] else "not reproduced")
                     + f" — {_certainty_words(cmp)}.")
    return lines


def _trend_diffusion(eta: Optional[dict], trends: dict) -> List[str]:
    if not (eta and eta.get("tables")):
        return []
    ls_alpha = max(a for a in {t["alpha"] for t in eta["tables"]})
    rows = [t for t in eta["tables"] if t["alpha"] == ls_alpha and t["sets"] == "hierarchy" and t["split"] == "train"]
    if not rows or ls_alpha <= 0:
        return []
    sysd = []
    for t in rows:
        k = sum(1 for r in t["rows"] if r["eta_s1"] < 0 and r["eta_s2"] > 0)
        sysd.append({"t2": t["t2"], "systematic": k, "targets": len(t["rows"])})
    trends["systematic_diffusion"] = sysd
    txt = ", ".join(f"T = {num(s['t2'])}: {s['systematic']}/{s['targets']}" for s in sysd)
    return [f"Paper trend 4 (systematic diffusion: eta_S1 < 0 and eta_S2 > 0 from T = "
            f"{num(eta['t1'])}, LS teacher's students, train split): target classes showing it — {txt}."]


def _trends_summary(trends: Dict[str, Any]) -> List[str]:
    held = [v["holds"] for v in trends.values() if isinstance(v, dict) and "holds" in v]
    if not held:
        return []
    if all(held):
        summary = "The accuracy trends of the paper are all reproduced here"
    elif any(held):
        summary = "The paper's accuracy trends are only partly reproduced here"
    else:
        summary = "The paper's accuracy trends are not reproduced here"
    certain = [v["certainty"] for v in trends.values() if isinstance(v, dict) and "certainty" in v]
    if any(c in ("no-spread-estimate", "inconclusive") for c in certain):
        summary += ", and part of the evidence is within the seed spread (see above)"
    return [summary + "."]


def _paper_trends(grid: dict, eta: Optional[dict], trends: dict) -> List[str]:
    lines: List[str] = []
    alphas = sorted({c["alpha"] for c in grid["cells"]})
    temps = sorted({c["temperature"] for c in grid["cells"]})
    ls = [a for a in alphas if a > 0]
    if ls and 0.0 in alphas and len(temps) >= 2:
        lines += _trend_degrades(grid, max(ls), temps, trends)
        lines += _trend_compatibility(grid, max(ls), temps, trends)
    lines += _trend_diffusion(eta, trends)
    return lines + _trends_summary(trends)


def verdict(grid: dict, eta: Optional[dict] = None, task: str = "vision") -> dict:
    """Which alpha and T to use, how sure, and whether the paper's trends appear."""
    backend = get_task(task)
    cells = [c for c in grid["cells"] if c["top1_mean"] is not None]
    if not cells:
        return {"status": "missing", "text": "No student finished, so there is no verdict yet."}
    best = max(cells, key=lambda c: c["top1_mean"])
    out: dict = {"status": "ok", "best": {"alpha": best["alpha"], "temperature": best["temperature"],
                                          "top1_mean": best["top1_mean"], "top1_std": best["top1_std"]}}
    score = (f"{best['top1_mean']:.2f}" + (f" ± {best['top1_std']:.2f}" if best["top1_std"] is not None else "")
             + f" {backend.score_unit} over {best['n']} seed(s)")
    detail = _choices(best, cells, out)
    a_lvl = out.get("alpha_choice", {}).get("level", "clear")
    t_lvl = out.get("temperature_choice", {}).get("level", "clear")
    out["confidence"] = {"alpha": a_lvl, "temperature": t_lvl}
    lines = [_headline(best, score, a_lvl, t_lvl)] + detail
    trends: dict = {}
    lines += _paper_trends(grid, eta, trends)
    temps = sorted({c["temperature"] for c in grid["cells"]})
    if backend.rule_of_thumb and best["alpha"] > 0 and best["temperature"] == min(temps):
        if a_lvl == "clear" and t_lvl == "clear":
            lines.append("This matches the paper's rule of thumb: an LS-trained teacher with a low-temperature transfer.")
        else:
            lines.append("The best cell coincides with the paper's rule of thumb (an LS-trained teacher with a "
                         "low-temperature transfer), but this study alone does not establish it (see the confidence above).")
    out["trends"] = trends
    out["text"] = "\n\n".join(lines)
    return out
