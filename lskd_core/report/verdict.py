"""The verdict: which alpha and T to use, how sure, and whether the paper's findings appear.

The statistics are :mod:`lskd_core.statistics` over every seed and every T, and the wording is
:func:`lskd_core.findings.verdict` (a pure function of them). :func:`compare_cells` (Welch's t-test
between two cells' seed samples) stays for the accuracy grid's per-cell comparison.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from lskd_core import findings
from lskd_core.report.seed_stats import eta_rows, grid_rows
from lskd_core.statistics import DEFAULT_DELTA
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


def _compat_trends(analysis: Dict[str, Any], flags: Dict[str, Any]) -> Dict[str, Any]:
    """The results.json keys of earlier versions, now read off the new statistics."""
    trends: Dict[str, Any] = {}
    tr = next((t for t in analysis.get("trends", []) if t["alpha"] == analysis.get("alpha_ls")), None)
    if tr and tr.get("slope_per_ln_T"):
        trends["ls_teacher_degrades_with_T"] = {"holds": bool(tr["slope_per_ln_T"]["estimate"] < 0),
                                                "certainty": flags["higher_T_hurts_ls"]["level"]}
    comp = analysis.get("compatibility") or []
    if comp:
        trends["compatible_at_low_T"] = {"holds": comp[0]["compatible"],
                                         "certainty": flags["compatible_at_lowest_T"]["level"]}
    if len(comp) > 1:
        trends["incompatible_at_high_T"] = {"holds": not comp[-1]["compatible"],
                                            "certainty": flags["incompatible_at_highest_T"]["level"]}
    return trends


def _rule_of_thumb(v: Dict[str, Any], temps: List[float]) -> List[str]:
    """Mentioned only when a recommendation was made and it is an LS teacher at the lowest T."""
    rec = v.get("recommended")
    if rec and rec[0] > 0 and rec[1] == min(temps):
        return ["The recommended cell matches the paper's rule of thumb (an LS-trained teacher, low-temperature "
                "transfer); it is recommended because of the intervals above, not because of the rule."]
    return []


def _matched_row(matched: Optional[dict], analysis: Dict[str, Any]) -> Optional[dict]:
    """The entropy-matched row of (the verdict's LS alpha, the grid's highest T), if it ran."""
    temps = analysis.get("temperatures") or []
    for row in (matched or {}).get("rows", []):
        if temps and row["ls_alpha"] == analysis.get("alpha_ls") and row["ls_temperature"] == temps[-1]:
            return row
    return None


def verdict(grid: dict, eta: Optional[dict] = None, eta_sets: str = "hierarchy", eta_split: str = "train",
            task: str = "vision", matched: Optional[dict] = None) -> dict:
    """Which alpha and T to use, how sure, and whether the paper's findings appear (every seed, every T).

    ``eta``: the report's eta section whose ``seed_tables`` for (``eta_sets``, ``eta_split``) the
    diffusion flag reads: Fig. 3's hierarchy sets on train (vision), or the token-level extension's
    feature sets on its split (translation, ``token_eta``). ``matched``: the report's entropy-matched
    section (App. H); when it has the LS alpha at the highest T, the verdict says whether smoothness
    alone explains the high-T result (:func:`lskd_core.findings.smoothness_flag`)."""
    backend = get_task(task)
    rows = grid_rows(grid)
    if not rows:
        return {"status": "missing", "text": "No student finished, so there is no verdict yet."}
    delta = float(grid.get("smallest_effect") or DEFAULT_DELTA)
    e_rows = eta_rows(eta, eta_sets, eta_split)
    scope = ("decoder states of target tokens, mean over token classes (an extension of the paper)"
             if eta_sets == "feature" and backend.score_key == "bleu" else "mean over target classes")
    analysis = findings.analyze(rows, e_rows or None, delta=delta, eta_scope=scope)
    # vision scores are accuracy points; translation's are BLEU points: the sentences name which
    v = findings.verdict(analysis, unit="BLEU" if backend.score_key == "bleu" else "points")
    cells = [c for c in grid["cells"] if c["top1_mean"] is not None]
    best = max(cells, key=lambda c: c["top1_mean"])
    out: dict = dict(v, analysis=analysis,
                     best={"alpha": best["alpha"], "temperature": best["temperature"],
                           "top1_mean": best["top1_mean"], "top1_std": best["top1_std"]})
    out["trends"] = _compat_trends(analysis, v["flags"])
    lines = [f"**{v['sentence']}**"] + [f"- {f['text']}" for f in v["flags"].values()]
    if (matched or {}).get("status") in ("ok", "partial") and analysis.get("alpha_ls") is not None:
        unit = "BLEU" if backend.score_key == "bleu" else "points"
        out["smoothness"] = findings.smoothness_flag(_matched_row(matched, analysis), delta, unit)
        out["lines"] = list(v["lines"]) + [out["smoothness"]["text"]]
        lines.append(f"- {out['smoothness']['text']}")
    if backend.rule_of_thumb:
        lines += _rule_of_thumb(v, analysis["temperatures"])
    for note in (v.get("teacher_variance_note"), v.get("teacher_units_note")):
        if note:
            lines.append(f"> {note}")
    out["text"] = "\n\n".join(lines)
    return out
