"""Temperature variants against the standard grid, cell by cell (beyond the paper).

For each variant arm of the study (``variant_arms``: TTM's teacher-only temperature, Zheng & Yang,
ICLR 2024; logit standardization, Sun et al., CVPR 2024): per (alpha, T) the arm's student score
minus the grid's (paired by student seed when both cells hold the same seeds, else Welch; the
project's :func:`lskd_core.statistics.cell_difference`), and whether the paper's advice "LS teacher
+ low T" still holds under the arm: the cell (largest alpha, lowest T) is among the cells that cannot
be told apart from the arm's best (:func:`lskd_core.statistics.could_be_best`), with the LS-minus-plain
difference at the lowest T beside it. That advice is "not decided" when every cell is in the set (the
data cannot rank the cells), not "holds". Means, differences and intervals are over the same units
as the accuracy grid's: teachers when every alpha has >= 2 (each teacher's students averaged first),
else student seeds. :func:`variants_sentence` is the verdict's one sentence about the arms.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from lskd_core import statistics as st
from lskd_core.jsonio import num
from lskd_core.report.calibration import arm_student, grid_arm
from lskd_core.report.markdown import md_table
from lskd_core.report.seed_stats import _ci
from lskd_core.report.view import StudyView

__all__ = ["variants_section", "variants_markdown", "variants_sentence"]


def _rows(view: StudyView, arm: str) -> List[Dict[str, Any]]:
    key = view.task.score_key
    rows = []
    for a in view.alphas:
        for t in view.temperatures:
            for s in view.seeds:
                rid = arm_student(view, arm, a, t, s)
                res = view.score(rid)
                if res and res.get(key) is not None:
                    tseed = int((view.runs.get(rid, {}).get("info") or {}).get("teacher_seed", 0))
                    rows.append({"alpha": a, "temperature": t, "seed": s, "teacher_seed": tseed,
                                 "value": float(res[key])})
    return rows


def _units(obs: List[st.Obs]) -> str:
    """'3 teachers' or '6 student seeds': what the intervals of these records are taken over."""
    by_teacher = all(n >= 2 for n in st.teachers_per_alpha(obs).values())
    n = len({o.teacher_seed for o in obs}) if by_teacher else len({(o.teacher_seed, o.seed) for o in obs})
    return f"{n} {'teacher' if by_teacher else 'student seed'}{'' if n == 1 else 's'}"


def _interval(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean and 95 % interval of one cell's records over its units (as the accuracy grid's cells)."""
    return st.cell_summaries(st.as_observations(rows))[0]["interval"]


def _advice(view: StudyView, rows: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Does (largest alpha, lowest T) stay among the could-be-best cells of this grid?"""
    if 0.0 not in view.alphas or len(view.alphas) < 2 or not rows:
        return None
    obs = st.as_observations(rows)
    alpha_ls, t_min = max(view.alphas), min(view.temperatures)
    have = {(o.alpha, o.temperature) for o in obs}
    if (alpha_ls, t_min) not in have:
        return None
    best = st.could_be_best(obs)
    held = [alpha_ls, t_min] in best["set"]
    undecided = len(best["set"]) == len(have)  # nothing was dropped: the data cannot rank the cells
    out: Dict[str, Any] = {"cell": [alpha_ls, t_min], "holds": held, "cells": len(have),
                           "decided": not undecided, "best_set": best["set"], "method": best["method"],
                           "units": _units(obs)}
    if (0.0, t_min) in have:
        d = st.cell_difference(obs, (alpha_ls, t_min), (0.0, t_min))
        out["ls_minus_plain"] = d
        out["ls_minus_plain_level"] = st.evidence_level(d, +1)
    return out


def _arm_vs_grid(view: StudyView, arm_rows: List[dict], grid_rows: List[dict]) -> List[Dict[str, Any]]:
    """Per cell: arm minus grid. The two grids enter as two 'alphas' (1: arm, 0: grid) of one cell at a time,
    so cell_difference pairs them by student seed (or teacher) exactly as it pairs the grid's own cells."""
    cells = []
    for a in view.alphas:
        for t in view.temperatures:
            mine = [dict(r, alpha=1.0) for r in arm_rows if (r["alpha"], r["temperature"]) == (a, t)]
            seeds = {r["seed"] for r in mine}  # the arm's seeds (variant_seeds): pair with the same grid seeds
            base = [dict(r, alpha=0.0) for r in grid_rows
                    if (r["alpha"], r["temperature"]) == (a, t) and r["seed"] in seeds]
            if not mine or not base:
                continue
            obs = st.as_observations(mine + base)
            d = st.cell_difference(obs, (1.0, t), (0.0, t))
            cells.append({"alpha": a, "temperature": t, "arm": _interval(mine), "grid": _interval(base),
                          "difference": d, "level": st.evidence_level(d, +1), "units": _units(obs)})
    return cells


def variants_section(view: StudyView) -> dict:
    arms = [str(a) for a in view.config.get("variant_arms") or []]
    if not arms:
        return {"status": "not-applicable", "reason": "the study trains no variant arm (variant_arms = [])"}
    main = grid_arm(view.config)
    grid_rows = _rows(view, main)
    out: Dict[str, Any] = {"grid_arm": main, "grid_advice": _advice(view, grid_rows), "arms": []}
    for arm in arms:
        rows = _rows(view, arm)
        out["arms"].append({"arm": arm, "runs": len(rows), "cells": _arm_vs_grid(view, rows, grid_rows),
                            "advice": _advice(view, rows)})
    planned = len(view.alphas) * len(view.temperatures) * len(view.seeds)
    per_arm = sum(1 for r in view.runs.values() if r["kind"] == "student" and (r.get("info") or {}).get("arm"))
    per_arm //= len(arms)
    complete = all(a["runs"] == per_arm for a in out["arms"]) and len(grid_rows) == planned
    out["status"] = "ok" if complete else ("partial" if any(a["runs"] for a in out["arms"]) else "missing")
    if out["status"] == "missing":
        out["reason"] = "no variant-arm student has finished"
    return out


def _advice_text(adv: Optional[dict], unit: str) -> str:
    """"holds" / "does not hold" / "not decided", with the could-be-best set's size and the units."""
    if adv is None:
        return "not testable (needs alpha 0, an LS alpha and the lowest T finished)"
    cell = f"(alpha = {num(adv['cell'][0])}, T = {num(adv['cell'][1])})"
    k, n = len(adv["best_set"]), adv.get("cells", len(adv["best_set"]))
    over = f" (95 %, over {adv['units']})" if adv.get("units") else ""
    if not adv["holds"]:
        txt = f"does not hold: {cell} is beaten, not among the {k} of {n} cells that cannot be told apart from the best"
    elif adv.get("decided", True):
        txt = f"holds: {cell} is among the {k} of {n} cells that cannot be told apart from the best"
    else:
        txt = (f"not decided: all {n} cells, {cell} with them, cannot be told apart from the best, so the data "
               "neither confirm nor refute it")
    txt += over
    if adv.get("ls_minus_plain"):
        txt += f"; LS − plain at the lowest T: {_ci(adv['ls_minus_plain'], 2, True)} {unit} ({adv['ls_minus_plain_level']})"
    return txt


#: the per-cell "arm better?" column: statistics.evidence_level of arm - grid (expected +)
_LEVEL_TEXT = {st.CLEAR: "yes (clear)", st.SUGGESTIVE: "suggestive (80 %)", st.OPPOSITE: "no: worse (clear)",
               st.NOT_SHOWN: "not shown"}


def _direction_cells(cells: List[dict]) -> Dict[str, List[str]]:
    """Cells where arm − grid differs from 0 after Holm's adjustment over the arm's cells (two-sided
    p of each cell's t; a cell without an interval counts as p = 1), split by the sign of the
    estimate: 'higher', 'lower', else 'unclear'. Per-cell 95 % intervals would claim a difference
    in about 1 of 20 null cells; an arm has one claim per cell, so the sentence controls them together."""
    out: Dict[str, List[str]] = {"higher": [], "lower": [], "unclear": []}
    p = [c["difference"].get("p") if c["difference"].get("ci") else None for c in cells]
    adjusted = st.holm([1.0 if v is None else float(v) for v in p]) if cells else []
    for c, q in zip(cells, adjusted):
        name = f"({num(c['alpha'])}, {num(c['temperature'])})"
        est = c["difference"]["estimate"]
        out["higher" if q < st.ALPHA and est > 0 else "lower" if q < st.ALPHA and est < 0 else "unclear"].append(name)
    return out


def _arm_clause(arm: dict) -> str:
    """"`arm` − grid: > 0 at ...; < 0 at ...; not distinguishable from 0 at ... (over 3 teachers;
    "LS teacher + low T" holds)"."""
    dirs = _direction_cells(arm["cells"])
    parts = [f"{words} {', '.join(dirs[key])}" for key, words in
             (("higher", "> 0 at"), ("lower", "< 0 at"), ("unclear", "not distinguishable from 0 at"))
             if dirs[key]]
    adv = arm.get("advice")
    advice = ("is not testable" if adv is None else "does not hold" if not adv["holds"] else
              "holds" if adv.get("decided", True) else "is not decided")
    units = next((c.get("units") for c in arm["cells"] if c.get("units")), None)
    over = f"over {units}; " if units else ""
    return f"`{arm['arm']}` − grid: {'; '.join(parts) or 'no cell compared'} ({over}\"LS teacher + low T\" {advice})"


def variants_sentence(sec: Optional[dict]) -> Optional[str]:
    """The verdict's sentence about the variant arms, one clause per arm: the (alpha, T) cells where
    the arm scores above or below the grid (paired by seed, over the grid's units; Holm over the
    arm's cells, see :func:`_direction_cells`), and whether the paper's advice survives it (holds /
    does not hold / is not decided). None without arms."""
    if not sec or sec.get("status") not in ("ok", "partial") or not sec.get("arms"):
        return None
    arms = [a for a in sec["arms"] if a.get("cells")]
    if not arms:
        return None
    txt = ("Temperature variants (beyond the paper; arm − grid per (alpha, T) cell, paired by seed, "
           "Holm-adjusted over each arm's cells at the 5 % level): "
           + ". ".join(_arm_clause(a) for a in arms) + ".")
    if sec.get("status") == "partial":
        txt += " Partial: some students have not finished."
    return txt


def variants_markdown(res: dict, unit: str) -> List[str]:
    sec = res.get("variants") or {}
    if sec.get("status") in (None, "not-applicable"):
        return []
    md = ["## Temperature variants against the grid (beyond the paper)\n",
          f"The grid trains `{sec.get('grid_arm')}`. Variants: `teacher_only_T` = the student's softmax at T = 1 "
          "(TTM, Zheng & Yang, ICLR 2024); `logit_standardization` = teacher and student logits z-scored before "
          "the base temperature T (Sun et al., CVPR 2024). Arm − grid per cell, mean [95 % interval] over units, "
          "paired by seed where both cells hold the same seeds; the per-cell intervals are not adjusted for the "
          "number of cells (the verdict's sentence is, by Holm). Logit std per cell: the calibration section.\n"]
    if sec.get("status") == "missing":
        return md + [f"> Not available: {sec.get('reason')}.\n"]
    md.append(f"- grid (`{sec['grid_arm']}`): \"LS teacher + low T\" {_advice_text(sec.get('grid_advice'), unit)}.")
    for arm in sec["arms"]:
        md.append(f"- `{arm['arm']}`: \"LS teacher + low T\" {_advice_text(arm.get('advice'), unit)}.")
    md.append("")
    for arm in sec["arms"]:
        rows = [[num(c["alpha"]), num(c["temperature"]), _ci(c["arm"]), _ci(c["grid"]),
                 _ci(c["difference"], 2, True), _LEVEL_TEXT.get(c["level"], c["level"]), c.get("units", "—")]
                for c in arm["cells"]]
        md += [f"`{arm['arm']}` ({unit}; mean [95 % interval]):\n",
               md_table(["teacher alpha", "T", "arm", "grid", "arm − grid [95 %]", "arm better?", "over"], rows)
               + "\n"]
    if sec.get("status") == "partial":
        md.append("> Partial: some students of the grid or an arm have not finished.\n")
    return md
