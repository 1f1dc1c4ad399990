"""Temperature variants against the standard grid, cell by cell (beyond the paper).

For each variant arm of the study (``variant_arms``: TTM's teacher-only temperature, Zheng & Yang,
ICLR 2024; logit standardization, Sun et al., CVPR 2024): per (alpha, T) the arm's student score
minus the grid's (paired by student seed when both cells hold the same seeds, else Welch; the
project's :func:`lskd_core.statistics.cell_difference`), and whether the paper's advice "LS teacher
+ low T" still holds under the arm: the cell (largest alpha, lowest T) is among the cells that cannot
be told apart from the arm's best (:func:`lskd_core.statistics.could_be_best`), with the LS-minus-plain
difference at the lowest T beside it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from lskd_core import statistics as st
from lskd_core.jsonio import num
from lskd_core.report.calibration import arm_student, grid_arm
from lskd_core.report.markdown import md_table
from lskd_core.report.seed_stats import _ci
from lskd_core.report.view import StudyView

__all__ = ["variants_section", "variants_markdown"]


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
    out: Dict[str, Any] = {"cell": [alpha_ls, t_min], "holds": [alpha_ls, t_min] in best["set"],
                           "best_set": best["set"], "method": best["method"]}
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
            cells.append({"alpha": a, "temperature": t, "arm": st.mean_estimate([r["value"] for r in mine]),
                          "grid": st.mean_estimate([r["value"] for r in base]), "difference": d,
                          "level": st.evidence_level(d, +1)})
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
    if adv is None:
        return "not testable (needs alpha 0, an LS alpha and the lowest T finished)"
    cell = f"(alpha = {num(adv['cell'][0])}, T = {num(adv['cell'][1])})"
    txt = (f"{'holds' if adv['holds'] else 'does not hold'}: {cell} is "
           f"{'among' if adv['holds'] else 'not among'} the cells that cannot be told apart from the best")
    if adv.get("ls_minus_plain"):
        txt += f"; LS − plain at the lowest T: {_ci(adv['ls_minus_plain'], 2, True)} {unit} ({adv['ls_minus_plain_level']})"
    return txt


def variants_markdown(res: dict, unit: str) -> List[str]:
    sec = res.get("variants") or {}
    if sec.get("status") in (None, "not-applicable"):
        return []
    md = ["## Temperature variants against the grid (beyond the paper)\n",
          f"The grid trains `{sec.get('grid_arm')}`. Variants: `teacher_only_T` = the student's softmax at T = 1 "
          "(TTM, Zheng & Yang, ICLR 2024); `logit_standardization` = teacher and student logits z-scored before "
          "the base temperature T (Sun et al., CVPR 2024). Arm − grid per cell, mean [95 % interval] over units, "
          "paired by seed where both cells hold the same seeds. Logit std per cell: the calibration section.\n"]
    if sec.get("status") == "missing":
        return md + [f"> Not available: {sec.get('reason')}.\n"]
    md.append(f"- grid (`{sec['grid_arm']}`): \"LS teacher + low T\" {_advice_text(sec.get('grid_advice'), unit)}.")
    for arm in sec["arms"]:
        md.append(f"- `{arm['arm']}`: \"LS teacher + low T\" {_advice_text(arm.get('advice'), unit)}.")
    md.append("")
    for arm in sec["arms"]:
        rows = [[num(c["alpha"]), num(c["temperature"]), _ci(c["arm"]), _ci(c["grid"]),
                 _ci(c["difference"], 2, True), c["level"]] for c in arm["cells"]]
        md += [f"`{arm['arm']}` ({unit}):\n",
               md_table(["teacher alpha", "T", "arm", "grid", "arm − grid [95 %]", "arm better?"], rows) + "\n"]
    if sec.get("status") == "partial":
        md.append("> Partial: some students of the grid or an arm have not finished.\n")
    return md
