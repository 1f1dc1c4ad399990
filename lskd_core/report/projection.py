"""Section 4: penultimate-layer projections (Fig. 1): rows teacher + students at each T, columns
alpha; val points on the plane of three class templates, PCA fitted on train.

Compute: :func:`projection_section` (per panel: :func:`similar_pair_separation`), drawing the figure
from the panels' points. Render: :func:`projection_markdown`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from lskd_core.jsonio import num
from lskd_core.report.cache import AnalysisCache
from lskd_core.report.markdown import fmt, md_table, section_status
from lskd_core.report.view import StudyView

__all__ = ["projection_section", "projection_markdown", "similar_pair_separation"]


def similar_pair_separation(distance: float, spread: Dict[int, float], ids: Sequence[int]) -> float:
    """The similar pair's centroid distance relative to the clusters' spread: Fig. 1's "separation
    between semantically similar classes" as one number per panel (distance / mean spread of the
    pair, the spread floored at 1e-12)."""
    return distance / max(1e-12, 0.5 * (spread[ids[0]] + spread[ids[1]]))


def _rows_spec(view: StudyView) -> List[Tuple[str, Optional[float]]]:
    """The grid's rows: the teachers, then the students at each T (label, T or None)."""
    return [("teacher", None)] + [(f"student T={num(t)}", t) for t in view.temperatures]


def _models(view: StudyView, rows_spec: Sequence[Tuple[str, Optional[float]]]) -> Dict[Tuple[str, float], str]:
    """The run of each panel (row label, alpha): the teacher, or the analysis seed's student."""
    return {(label, a): view.teacher(a) if t is None else view.student(a, t, view.analysis_seed)
            for label, t in rows_spec for a in view.alphas}


def _panel(view: StudyView, run: str, ids: List[int], per_class: Any) -> Optional[Tuple[Any, Any, dict]]:
    """Val points of ``run`` on the three-template plane (PCA fitted on train) and their numbers;
    None without the train and val exports (or the final layer)."""
    from lskd_core import projection

    tr, va = view.features(run, "train"), view.features(run, "val")
    if tr is None or va is None or tr.weight is None:
        return None
    pv = projection.ProjectionView.fit(tr.features, tr.labels, tr.weight, tr.bias, ids, per_class=per_class)
    pts, labs = pv.transform_classes(va.features, va.labels, per_class=per_class)
    d = projection.centroid_distance_2d(pts, labs, ids)
    spread = projection.cluster_spread_2d(pts, labs, ids)
    numbers = {"similar_pair_distance": d[(ids[0], ids[1])],
               "similar_pair_separation": similar_pair_separation(d[(ids[0], ids[1])], spread, ids),
               "spread": {str(k): v for k, v in spread.items()}}
    return pts, labs, numbers


def _project_all(view: StudyView, models: Dict[Tuple[str, float], str], rows_spec: Sequence[Tuple[str, Any]],
                 ids: List[int]) -> Tuple[List[List[Optional[dict]]], List[dict], List[str]]:
    """Every panel: the figure's points (None where inputs are missing), the per-panel numbers, the
    runs lacking exports."""
    per_class = view.config.get("projection_per_class")
    panels: List[List[Optional[dict]]] = []
    numbers: List[dict] = []
    missing: List[str] = []
    for label, _t in rows_spec:
        row: List[Optional[dict]] = []
        for a in view.alphas:
            run = models[(label, a)]
            got = _panel(view, run, ids, per_class)
            if got is None:
                missing.append(run)
                row.append(None)
                continue
            pts, labs, nums = got
            numbers.append({"row": label, "alpha": a, "run": run, **nums})
            row.append({"points2d": pts, "labels": labs, "note": f"sep {nums['similar_pair_separation']:.2f}"})
        panels.append(row)
    return panels, numbers, missing


def _compute(view: StudyView, ids: List[int], rows_spec: Sequence[Tuple[str, Any]],
             models: Dict[Tuple[str, float], str], png: Path) -> dict:
    """The panels' numbers (and the figure drawn from their points)."""
    names = view.class_names()
    panels, numbers, missing = _project_all(view, models, rows_spec, ids)
    if all(p is None for row in panels for p in row):
        return {"status": "missing", "reason": "no model has train and val exports", "missing_inputs": missing}
    _plot(view, panels, names, rows_spec, png)
    return {"status": "ok" if not missing else "partial", "png": png.name, "classes": ids,
            "class_names": [names[i] if names else str(i) for i in ids], "split": "val (PCA fitted on train)",
            "panels": numbers, "missing_inputs": missing}


def projection_section(view: StudyView, cache: AnalysisCache, out_dir: Path) -> dict:
    """Fig. 1: rows teacher + students at each T, columns alpha; val points, PCA fitted on train."""
    ids = [int(c) for c in view.config.get("projection_classes") or []]
    if len(ids) != 3:
        return {"status": "missing", "reason": "set projection_classes to three class ids"}
    rows_spec = _rows_spec(view)
    models = _models(view, rows_spec)
    needed = [view.export(m, sp) for m in models.values() for sp in ("train", "val")]
    png = out_dir / "fig1_projection.png"
    key = {"ids": ids, "inputs": view.fingerprint(needed), "per_class": view.config.get("projection_per_class"),
           "v": 2}
    return cache.get("projection", key, lambda: _compute(view, ids, rows_spec, models, png), files=[png])


# ------------------------------------------------------------------------------------------------
# render
# ------------------------------------------------------------------------------------------------
def _plot(view: StudyView, panels: List[List[Optional[dict]]], names: Optional[List[str]],
          rows_spec: Sequence[Tuple[str, Any]], png: Path) -> None:
    """Fig. 1's grid: a row per model kind, a column per alpha."""
    from lskd_core import projection

    projection.plot_projection_grid(panels, names, png, row_labels=[r for r, _ in rows_spec],
                                    col_labels=[f"alpha = {num(a)}" for a in view.alphas])


def projection_markdown(res: dict) -> List[str]:
    """Section 4 of report.md from ``res["projection"]``."""
    proj = res["projection"]
    head = ["## 4. Penultimate-layer projections (Fig. 1)\n", section_status(proj)]
    return head + (_projection_body(proj) if proj.get("png") else [])


def _projection_body(proj: dict) -> List[str]:
    cn = proj["class_names"]
    md = [f"Classes {cn[0]} and {cn[1]} (semantically similar) and {cn[2]} (dissimilar); "
          "val samples projected on the plane of the three class templates (App. F), PCA fitted on each "
          "model's train split. `sep` = centroid distance of the similar pair / mean cluster spread.\n"]
    md.append(f"![projection grid]({proj['png']})\n")
    rows = [[p["row"], num(p["alpha"]), fmt(p["similar_pair_distance"], 3), fmt(p["similar_pair_separation"], 3)]
            for p in proj["panels"]]
    md.append(md_table(["model", "alpha", "similar-pair centroid distance (2-D)", "separation"], rows) + "\n")
    return md
