"""Section 4: penultimate-layer projections (Fig. 1): rows teacher + students at each T, columns
alpha; val points on the plane of three class templates, PCA fitted on train."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from lskd_core.jsonio import num
from lskd_core.report.cache import AnalysisCache
from lskd_core.report.markdown import fmt, md_table, section_status
from lskd_core.report.view import StudyView

__all__ = ["projection_section", "projection_markdown"]


def projection_section(view: StudyView, cache: AnalysisCache, out_dir: Path) -> dict:
    """Fig. 1: rows teacher + students at each T, columns alpha; val points, PCA fitted on train."""

    ids = [int(c) for c in view.config.get("projection_classes") or []]
    if len(ids) != 3:
        return {"status": "missing", "reason": "set projection_classes to three class ids"}
    seed = view.analysis_seed
    rows_spec = [("teacher", None)] + [(f"student T={num(t)}", t) for t in view.temperatures]
    models = {}
    for label, t in rows_spec:
        for a in view.alphas:
            models[(label, a)] = view.teacher(a) if t is None else view.student(a, t, seed)
    needed = [view.export(m, sp) for m in models.values() for sp in ("train", "val")]
    png = out_dir / "fig1_projection.png"
    key = {"ids": ids, "inputs": view.fingerprint(needed), "per_class": view.config.get("projection_per_class"),
           "v": 2}

    def compute() -> dict:
        from lskd_core import projection

        names = view.class_names()
        panels = []
        distances = []
        missing = []
        per_class = view.config.get("projection_per_class")
        for label, _t in rows_spec:
            row: List[Optional[dict]] = []
            for a in view.alphas:
                run = models[(label, a)]
                tr, va = view.features(run, "train"), view.features(run, "val")
                if tr is None or va is None or tr.weight is None:
                    missing.append(run)
                    row.append(None)
                    continue
                pv = projection.ProjectionView.fit(tr.features, tr.labels, tr.weight, tr.bias, ids,
                                                   per_class=per_class)
                pts, labs = pv.transform_classes(va.features, va.labels, per_class=per_class)
                d = projection.centroid_distance_2d(pts, labs, ids)
                spread = projection.cluster_spread_2d(pts, labs, ids)
                # the similar pair's centroid distance relative to the clusters' spread: Fig. 1's
                # "separation between semantically similar classes" as one number per panel
                sep = d[(ids[0], ids[1])] / max(1e-12, 0.5 * (spread[ids[0]] + spread[ids[1]]))
                distances.append({"row": label, "alpha": a, "run": run, "similar_pair_distance": d[(ids[0], ids[1])],
                                  "similar_pair_separation": sep,
                                  "spread": {str(k): v for k, v in spread.items()}})
                row.append({"points2d": pts, "labels": labs, "note": f"sep {sep:.2f}"})
            panels.append(row)
        if all(p is None for row in panels for p in row):
            return {"status": "missing", "reason": "no model has train and val exports", "missing_inputs": missing}
        projection.plot_projection_grid(panels, names, png, row_labels=[r for r, _ in rows_spec],
                                        col_labels=[f"alpha = {num(a)}" for a in view.alphas])
        return {"status": "ok" if not missing else "partial", "png": png.name, "classes": ids,
                "class_names": [names[i] if names else str(i) for i in ids], "split": "val (PCA fitted on train)",
                "panels": distances, "missing_inputs": missing}

    return cache.get("projection", key, compute, files=[png])


def projection_markdown(res: dict) -> List[str]:
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
