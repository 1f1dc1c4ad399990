"""Section 1: the accuracy grid (Table 2; the BLEU grid, Table 5, for translation).

Student score mean +- std over seeds per alpha x T, the teachers' row, and the cells where LS and
KD are compatible (the LS teacher's student at least as good as the alpha = 0 teacher's student at
the same T). The score and its labels come from the task backend. Below the table: every cell's
95 % interval over seeds (or teachers), the trend of each alpha over every T and the alpha x T
interaction, and the cells that cannot be told apart from the best (:mod:`lskd_core.statistics`,
computed once by the verdict).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from lskd_core.jsonio import num
from lskd_core.report.markdown import fmt, md_table, section_status
from lskd_core.report.seed_stats import best_set_line, cell_interval_table, trend_table
from lskd_core.report.verdict import compare_cells
from lskd_core.report.view import StudyView
from lskd_core.study.tasks import TaskBackend

__all__ = ["accuracy_grid", "grid_markdown", "mean_std"]


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample std (ddof 1; None with one value) of the finite values."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None, None
    mean = float(np.mean(v))
    std = float(np.std(v, ddof=1)) if len(v) > 1 else None
    return mean, std


def _cell(view: StudyView, alpha: float, temperature: float) -> dict:
    task = view.task
    top1: List[float] = []
    top5: List[float] = []
    seeds: List[int] = []
    teacher_seeds: List[int] = []
    for s in view.seeds:
        sid = view.student(alpha, temperature, s)
        res = view.score(sid)
        if res and res.get(task.score_key) is not None:
            top1.append(float(res[task.score_key]))
            if task.second_score_key:
                top5.append(float(res.get(task.second_score_key, float("nan"))))
            seeds.append(s)
            # which teacher this student learnt from (one teacher per alpha unless the plan says otherwise)
            teacher_seeds.append(int((view.runs.get(sid, {}).get("info") or {}).get("teacher_seed", 0)))
    m1, s1 = mean_std(top1)
    m5, s5 = mean_std(top5)
    return {"alpha": alpha, "temperature": temperature, "seeds": seeds, "teacher_seeds": teacher_seeds,
            "n": len(seeds),
            "top1": top1, "top5": top5, "top1_mean": m1, "top1_std": s1,
            "top5_mean": m5, "top5_std": s5, "compatible": None}


def _teachers(view: StudyView) -> List[dict]:
    """The teachers' row: each alpha's teacher run and its task fields (None before it finished)."""
    teachers = []
    for a in view.alphas:
        tid = view.teacher(a)
        res = view.score(tid)
        teachers.append({"alpha": a, "run_id": tid,
                         **{f: (res.get(k) if res else None) for f, k in view.task.teacher_fields.items()}})
    return teachers


def mark_compatible(cells: List[dict], base_alpha: Optional[float]) -> None:
    """Set each LS cell's ``compatible`` (its student mean >= the ``base_alpha`` teacher's student mean
    at the same T, Sec. 5) and ``vs_alpha0`` (the comparison); cells without both means keep None."""
    if base_alpha is None:
        return
    for c in cells:
        if c["alpha"] == base_alpha:
            continue
        base = next(b for b in cells if b["alpha"] == base_alpha and b["temperature"] == c["temperature"])
        if c["top1_mean"] is not None and base["top1_mean"] is not None:
            c["compatible"] = bool(c["top1_mean"] >= base["top1_mean"])
            c["vs_alpha0"] = compare_cells(c["top1"], base["top1"])


def _grid_status(cells: List[dict], teachers: List[dict], main_field: str) -> str:
    filled = sum(1 for c in cells if c["n"] > 0)
    complete = filled == len(cells) and all(t[main_field] is not None for t in teachers)
    return "ok" if complete else ("partial" if filled else "missing")


def accuracy_grid(view: StudyView) -> dict:
    """Table 2 (vision: val top-1/top-5) or Table 5 (translation: test BLEU)."""
    teachers = _teachers(view)
    cells = [_cell(view, a, t) for t in view.temperatures for a in view.alphas]
    base_alpha = 0.0 if 0.0 in view.alphas else None
    mark_compatible(cells, base_alpha)
    return {"status": _grid_status(cells, teachers, view.task.teacher_main_field), "metric": view.task.grid_metric,
            "teachers": teachers, "cells": cells,
            "baseline_alpha": base_alpha, "smallest_effect": view.config.get("smallest_effect")}


def _cell_text(c: dict, task: TaskBackend) -> str:
    txt = fmt(c["top1_mean"]) + (f" ± {fmt(c['top1_std'])}" if c["top1_std"] is not None else "")
    if task.second_score_key:
        txt += " / " + fmt(c["top5_mean"]) + (f" ± {fmt(c['top5_std'])}" if c["top5_std"] is not None else "")
    return f"**{txt}**" if c["compatible"] else txt


def grid_table(grid: dict, task: TaskBackend) -> str:
    alphas = sorted({c["alpha"] for c in grid["cells"]})
    temps = sorted({c["temperature"] for c in grid["cells"]})
    headers = ["", "T \\ alpha"] + [f"alpha = {num(a)}" for a in alphas]
    trow = ["teacher", "—"]
    for a in alphas:
        teacher: dict = next((t for t in grid["teachers"] if t["alpha"] == a), {})
        trow.append(" / ".join(fmt(teacher.get(f)) for f in task.teacher_fields))
    rows = [trow]
    for t in temps:
        row = ["student", f"T = {num(t)}"]
        for a in alphas:
            c = next(c for c in grid["cells"] if c["alpha"] == a and c["temperature"] == t)
            row.append("—" if c["top1_mean"] is None else _cell_text(c, task))
        rows.append(row)
    return md_table(headers, rows)


def grid_markdown(res: dict, task: TaskBackend) -> List[str]:
    g = res["accuracy_grid"]
    md = [task.grid_title,
          task.grid_caption + ", mean ± std over seeds. **Bold**: LS and KD are compatible at that T (the LS "
          "teacher's student is at least as good as the alpha = 0 teacher's student at the same T).\n",
          grid_table(g, task) + "\n", section_status(g)]
    if res.get("figures", {}).get("accuracy"):
        md.append(f"![student accuracy vs T]({res['figures']['accuracy']})\n")
    return md + statistics_markdown(res.get("verdict", {}).get("analysis"), task)


def statistics_markdown(analysis: Optional[dict], task: TaskBackend) -> List[str]:
    """Intervals per cell, trends over every T, the interaction and the could-be-best cells."""
    if not analysis or analysis.get("status") != "ok":
        return []
    unit = task.score_unit or "points"
    md = ["### Intervals, trends over T and the alpha x T interaction\n",
          f"Mean [95 % interval] of the {unit} over the units (student seeds, or teachers when each alpha "
          "has several):\n", cell_interval_table(analysis) + "\n",
          "Trend: regression of the score on ln T over every run and every T (per alpha); the interaction "
          "compares the two alphas' slopes seed by seed where the seeds are paired:\n",
          trend_table(analysis, unit) + "\n", best_set_line(analysis) + "\n"]
    tv = analysis["teacher_variance"]
    if not tv["sampled"]:
        md.append("> Teacher variance is not sampled (teachers per alpha: "
                  + ", ".join(f"{a}: {n}" for a, n in tv["teachers_per_alpha"].items())
                  + "): the intervals cover student seeds only.\n")
    return md
