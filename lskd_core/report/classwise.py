"""Section 6: class-wise accuracy of the target classes (Table I)."""

from __future__ import annotations

from typing import List

import numpy as np

from lskd_core.jsonio import num
from lskd_core.report.cache import AnalysisCache
from lskd_core.report.markdown import fmt, md_table, section_status
from lskd_core.report.view import StudyView

__all__ = ["classwise_section", "classwise_markdown"]


def classwise_section(view: StudyView, cache: AnalysisCache) -> dict:
    """Table I: per-class accuracy of the target classes, val (all seeds, from result.json) and
    train (analysis seed, from the exported train features and the final layer)."""

    num_classes = view.num_classes()
    if num_classes is None:
        return {"status": "missing", "reason": "no finished run reports its classes"}
    targets = [int(t) for t in (view.config.get("target_classes") or range(num_classes))]
    for c in view.config.get("projection_classes") or []:
        if int(c) not in targets:
            targets.append(int(c))
    seed = view.analysis_seed
    needed = [view.export(view.student(a, t, seed), "train") for a in view.alphas for t in view.temperatures]
    key = {"targets": targets, "inputs": view.fingerprint(needed), "v": 1}

    def compute() -> dict:
        from lskd_core.diffusion import class_accuracy

        rows = []
        for a in view.alphas:
            for t in view.temperatures:
                val = []
                for s in view.seeds:
                    res = view.results.get(view.student(a, t, s))
                    if res and isinstance(res.get("val_per_class_acc"), list):
                        val.append([float(x) for x in res["val_per_class_acc"]])
                val_mean = np.mean(np.asarray(val), axis=0) if val else None
                train = None
                f = view.features(view.student(a, t, seed), "train")
                if f is not None and f.weight is not None:
                    logits = np.asarray(f.features, dtype=np.float64) @ np.asarray(f.weight, dtype=np.float64).T
                    if f.bias is not None:
                        logits = logits + np.asarray(f.bias, dtype=np.float64)
                    train = class_accuracy(logits, f.labels, num_classes)
                rows.append({"alpha": a, "temperature": t, "n_val_seeds": len(val),
                             "val": {str(c): (float(val_mean[c]) if val_mean is not None else None) for c in targets},
                             "train": {str(c): (float(train[c]) if train is not None else None) for c in targets},
                             "val_avg": float(np.mean([val_mean[c] for c in targets])) if val_mean is not None else None,
                             "train_avg": float(np.nanmean([train[c] for c in targets])) if train is not None else None})
        filled = sum(1 for r in rows if r["n_val_seeds"])
        return {"status": "ok" if filled == len(rows) else ("partial" if filled else "missing"),
                "targets": targets, "train_seed": seed, "rows": rows}

    return cache.get("classwise", key, compute)


def classwise_markdown(res: dict, names: List[str]) -> List[str]:
    cw = res["classwise"]
    md = ["## 6. Class-wise accuracy of the target classes (Table I)\n", section_status(cw)]
    if not cw.get("rows"):
        return md

    def nm(c: int) -> str:
        return names[c] if c < len(names) else str(c)

    md.append(f"Val: mean over seeds (from each run's result.json). Train: seed {cw['train_seed']}, from the "
              "exported train features through the model's final layer. Percent.\n")
    for split in ("train", "val"):
        headers = ["alpha", "T"] + [nm(c) for c in cw["targets"]] + ["average"]
        rows = [[num(r["alpha"]), num(r["temperature"])] + [fmt(r[split][str(c)]) for c in cw["targets"]]
                + [fmt(r[f"{split}_avg"])] for r in cw["rows"]]
        md.append(f"**{split}**\n\n" + md_table(headers, rows) + "\n")
    return md
