"""Section 6: class-wise accuracy of the target classes (Table I).

Compute (:func:`classwise_section`, :func:`classwise_row`): numbers per (alpha, T) cell, cached.
Render (:func:`classwise_markdown`): the train and val tables from those numbers.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from lskd_core.jsonio import num
from lskd_core.report.cache import AnalysisCache
from lskd_core.report.markdown import fmt, md_table, section_status
from lskd_core.report.view import StudyView

__all__ = ["classwise_section", "classwise_markdown", "classwise_row", "target_classes"]


# ------------------------------------------------------------------------------------------------
# compute
# ------------------------------------------------------------------------------------------------
def target_classes(config: dict, num_classes: int) -> List[int]:
    """The configured target classes (all classes when unset), then the projection classes not among them."""
    targets = [int(t) for t in (config.get("target_classes") or range(num_classes))]
    for c in config.get("projection_classes") or []:
        if int(c) not in targets:
            targets.append(int(c))
    return targets


def _val_per_class(view: StudyView, alpha: float, temperature: float) -> List[List[float]]:
    """Each finished seed's per-class val accuracy (result.json's ``val_per_class_acc``)."""
    out = []
    for s in view.seeds:
        res = view.results.get(view.student(alpha, temperature, s))
        if res and isinstance(res.get("val_per_class_acc"), list):
            out.append([float(x) for x in res["val_per_class_acc"]])
    return out


def _train_per_class(view: StudyView, run_id: str, num_classes: int) -> Optional[np.ndarray]:
    """Per-class accuracy of the exported train features through the model's final layer, or None."""
    from lskd_core.diffusion import class_accuracy

    f = view.features(run_id, "train")
    if f is None or f.weight is None:
        return None
    logits = np.asarray(f.features, dtype=np.float64) @ np.asarray(f.weight, dtype=np.float64).T
    if f.bias is not None:
        logits = logits + np.asarray(f.bias, dtype=np.float64)
    return class_accuracy(logits, f.labels, num_classes)


def _per_target(values: Optional[np.ndarray], targets: Sequence[int]) -> Dict[str, Optional[float]]:
    return {str(c): (float(values[c]) if values is not None else None) for c in targets}


def classwise_row(alpha: float, temperature: float, val_seeds: Sequence[Sequence[float]],
                  train: Optional[np.ndarray], targets: Sequence[int]) -> Dict[str, Any]:
    """One cell of Table I: the val accuracy per target averaged over seeds, the train accuracy of
    the analysis seed, and each side's average over the targets (train ignores NaN classes: a
    target without train samples); None where a side has no data."""
    val_mean = np.mean(np.asarray(val_seeds), axis=0) if len(val_seeds) else None
    return {"alpha": alpha, "temperature": temperature, "n_val_seeds": len(val_seeds),
            "val": _per_target(val_mean, targets), "train": _per_target(train, targets),
            "val_avg": float(np.mean([val_mean[c] for c in targets])) if val_mean is not None else None,
            "train_avg": float(np.nanmean([train[c] for c in targets])) if train is not None else None}


def _status(rows: Sequence[dict]) -> str:
    filled = sum(1 for r in rows if r["n_val_seeds"])
    return "ok" if filled == len(rows) else ("partial" if filled else "missing")


def _compute(view: StudyView, targets: List[int], num_classes: int, val: Dict[str, List[List[float]]]) -> dict:
    """``val``: each (alpha, T)'s per-seed val accuracies, as the cache key holds them."""
    rows = [classwise_row(a, t, val[f"{a}/{t}"],
                          _train_per_class(view, view.student(a, t, view.analysis_seed), num_classes), targets)
            for a in view.alphas for t in view.temperatures]
    return {"status": _status(rows), "targets": targets, "train_seed": view.analysis_seed, "rows": rows}


def classwise_section(view: StudyView, cache: AnalysisCache) -> dict:
    """Table I: per-class accuracy of the target classes, val (all seeds, from result.json) and
    train (analysis seed, from the exported train features and the final layer)."""
    num_classes = view.num_classes()
    if num_classes is None:
        return {"status": "missing", "reason": "no finished run reports its classes"}
    targets = target_classes(view.config, num_classes)
    needed = [view.export(view.student(a, t, view.analysis_seed), "train")
              for a in view.alphas for t in view.temperatures]
    # the val columns average every finished seed's result.json: its per-class accuracies are inputs too
    val = {f"{a}/{t}": _val_per_class(view, a, t) for a in view.alphas for t in view.temperatures}
    key = {"targets": targets, "inputs": view.fingerprint(needed), "val": val, "v": 2}
    return cache.get("classwise", key, lambda: _compute(view, targets, num_classes, val))


# ------------------------------------------------------------------------------------------------
# render
# ------------------------------------------------------------------------------------------------
def _split_table(cw: dict, split: str, names: List[str]) -> str:
    """The ``split`` ("train" or "val") table: one row per cell, a column per target, the average."""
    headers = ["alpha", "T"] + [names[c] if c < len(names) else str(c) for c in cw["targets"]] + ["average"]
    rows = [[num(r["alpha"]), num(r["temperature"])] + [fmt(r[split][str(c)]) for c in cw["targets"]]
            + [fmt(r[f"{split}_avg"])] for r in cw["rows"]]
    return f"**{split}**\n\n" + md_table(headers, rows) + "\n"


def classwise_markdown(res: dict, names: List[str]) -> List[str]:
    """Section 6 of report.md from ``res["classwise"]``."""
    cw = res["classwise"]
    md = ["## 6. Class-wise accuracy of the target classes (Table I)\n", section_status(cw)]
    if not cw.get("rows"):
        return md
    md.append(f"Val: mean over seeds (from each run's result.json). Train: seed {cw['train_seed']}, from the "
              "exported train features through the model's final layer. Percent.\n")
    return md + [_split_table(cw, split, names) for split in ("train", "val")]
