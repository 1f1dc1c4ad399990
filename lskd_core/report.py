"""Report of an alpha x T study: ``report.md``, PNG figures and ``results.json``.

Reads a study directory written by :mod:`lskd_core.study` (``study.json`` + ``runs/<run_id>/``)
and assembles the paper's evidence (Chandrasegaran et al., ICML 2022) for the user's own task:

* the accuracy grid (Table 2): student top-1/top-5, mean +- std over seeds, per alpha x T, the
  teachers' row, and the cells where LS and KD are compatible (the LS teacher's student at least
  as good as the alpha = 0 teacher's student at the same T) in bold;
* the diffusion index eta (Eq. 1; Table 3) and its pairwise variant (App. K, Table K.1) between
  the lowest T and every higher T, train and val, with S1/S2 from the class hierarchy (App. G.1)
  and from feature space (App. G.2), and their agreement (Table G.1);
* the teachers' mean entropy against T (Table H.1) and entropy-matched temperature pairs;
* the projection grid (Fig. 1) and the soft-output profile (Fig. 2);
* class-wise accuracy for the target classes (Table I);
* a verdict in plain words, with how sure it is given the spread over seeds.

For the translation task the grid holds BLEU (Table 5) and the feature analyses do not apply.

Each analysis is cached in ``<report>/cache/<name>.json`` under a key made of its parameters and
the fingerprints of the runs it reads, so re-writing a report only recomputes what changed.
Every section records ``status`` (``ok``, ``missing``: inputs not available, ``error``: an
analysis raised) so that a partial study still yields a report that says what is missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from lskd_core.atomic import atomic_write_bytes

__all__ = ["write_report", "parse_bleu", "compare_cells", "accuracy_grid", "verdict"]

RESULT = "result.json"


# ------------------------------------------------------------------------------------------------
# io helpers
# ------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Optional[dict]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become None (results.json stays strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _num(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def _fmt(x: Optional[float], nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{nd}f}"


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def parse_bleu(path: os.PathLike | str) -> Optional[dict]:
    """BLEU from ``fairseq-generate`` output: the last ``BLEU4 = x`` (or sacrebleu ``BLEU = x``) line."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = re.findall(r"BLEU4?\s*=\s*([0-9]+(?:\.[0-9]+)?)", text)
    if not found:
        return None
    return {"bleu": float(found[-1])}


# ------------------------------------------------------------------------------------------------
# the study as the report sees it
# ------------------------------------------------------------------------------------------------
class StudyView:
    """Manifest + finished runs of a study directory."""

    def __init__(self, study_dir: Path, usable: Optional[set] = None):
        self.dir = Path(study_dir)
        manifest = _read_json(self.dir / "study.json")
        if manifest is None:
            raise ValueError(f"{self.dir} is not a study directory (no readable study.json)")
        self.config: dict = manifest["config"]
        self.runs: Dict[str, dict] = {r["run_id"]: r for r in manifest["runs"]}
        self.results: Dict[str, dict] = {}
        for run_id in self.runs:
            if usable is not None and run_id not in usable:
                continue
            res = _read_json(self.run_dir(run_id) / RESULT)
            if res is not None and res.get("status") == "done":
                self.results[run_id] = res
        # exports dispatched externally have no result.json: their atomically written output is the proof
        for run_id, r in self.runs.items():
            if r["kind"] == "export" and run_id not in self.results and (usable is None or run_id in usable):
                if (self.run_dir(run_id) / "features.npz").is_file():
                    self.results[run_id] = {"status": "done"}
        self.alphas: List[float] = [float(a) for a in self.config["alphas"]]
        self.temperatures: List[float] = [float(t) for t in self.config["temperatures"]]
        seeds = self.config["seeds"]
        self.seeds: List[int] = [int(s) for s in seeds] if isinstance(seeds, list) else list(range(int(seeds)))
        self.analysis_seed: int = (int(self.config["analysis_seed"]) if self.config.get("analysis_seed") is not None
                                   else self.seeds[0])
        self._features: Dict[str, Any] = {}

    def run_dir(self, run_id: str) -> Path:
        return self.dir / "runs" / run_id

    def fingerprint(self, run_ids: Iterable[str]) -> dict:
        out = {}
        for rid in run_ids:
            p = self.run_dir(rid) / RESULT
            if p.is_file():
                out[rid] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                f = self.run_dir(rid) / "features.npz"
                out[rid] = f"{f.stat().st_size}:{f.stat().st_mtime_ns}" if f.is_file() else None
        return out

    # ids as built by lskd_core.study
    @staticmethod
    def teacher(alpha: float) -> str:
        return f"teacher_a{_num(alpha)}"

    @staticmethod
    def student(alpha: float, temperature: float, seed: int) -> str:
        return f"student_a{_num(alpha)}_T{_num(temperature)}_s{seed}"

    @staticmethod
    def export(model_run: str, split: str) -> str:
        return f"export_{model_run}_{split}"

    def features(self, model_run: str, split: str):
        """The FeatureFile of a model's export, or None when that export is not done."""
        rid = self.export(model_run, split)
        if rid not in self.results:
            return None
        if rid not in self._features:
            from lskd_core.features_io import load_features

            self._features[rid] = load_features(self.run_dir(rid) / "features.npz")
        return self._features[rid]

    def class_names(self) -> Optional[List[str]]:
        for rid, res in self.results.items():
            if isinstance(res.get("class_names"), list):
                return [str(c) for c in res["class_names"]]
        for a in self.alphas:
            f = self.features(self.teacher(a), "val")
            if f is not None and f.class_names:
                return list(f.class_names)
        return None

    def num_classes(self) -> Optional[int]:
        for res in self.results.values():
            if isinstance(res.get("num_classes"), int):
                return int(res["num_classes"])
        names = self.class_names()
        return len(names) if names else None


# ------------------------------------------------------------------------------------------------
# statistics for the verdict
# ------------------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return None, None
    mean = float(np.mean(v))
    std = float(np.std(v, ddof=1)) if len(v) > 1 else None
    return mean, std


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


# ------------------------------------------------------------------------------------------------
# sections
# ------------------------------------------------------------------------------------------------
def accuracy_grid(view: StudyView, metric: str = "acc") -> dict:
    """Table 2 (vision: val top-1/top-5) or Table 5 (translation: test BLEU)."""
    cells = []
    teachers = []
    translation = view.config.get("task") == "translation"
    for a in view.alphas:
        tid = view.teacher(a)
        if translation:
            res = view.results.get(f"bleu_{tid}")
            teachers.append({"alpha": a, "run_id": tid, "bleu": res.get("bleu") if res else None})
        else:
            res = view.results.get(tid)
            teachers.append({"alpha": a, "run_id": tid, "top1": res.get("val_acc1") if res else None,
                             "top5": res.get("val_acc5") if res else None})
    for t in view.temperatures:
        for a in view.alphas:
            top1, top5, seeds = [], [], []
            for s in view.seeds:
                sid = view.student(a, t, s)
                if translation:
                    res = view.results.get(f"bleu_{sid}")
                    if res and res.get("bleu") is not None:
                        top1.append(float(res["bleu"]))
                        seeds.append(s)
                else:
                    res = view.results.get(sid)
                    if res and res.get("val_acc1") is not None:
                        top1.append(float(res["val_acc1"]))
                        top5.append(float(res.get("val_acc5", float("nan"))))
                        seeds.append(s)
            m1, s1 = _mean_std(top1)
            m5, s5 = _mean_std(top5)
            cells.append({"alpha": a, "temperature": t, "seeds": seeds, "n": len(seeds),
                          "top1": top1, "top5": top5, "top1_mean": m1, "top1_std": s1,
                          "top5_mean": m5, "top5_std": s5, "compatible": None})
    # compatibility: LS teacher's student >= alpha=0 teacher's student at the same T (Sec. 5)
    base_alpha = 0.0 if 0.0 in view.alphas else None
    for c in cells:
        if base_alpha is None or c["alpha"] == base_alpha:
            continue
        base = next(b for b in cells if b["alpha"] == base_alpha and b["temperature"] == c["temperature"])
        if c["top1_mean"] is not None and base["top1_mean"] is not None:
            c["compatible"] = bool(c["top1_mean"] >= base["top1_mean"])
            c["vs_alpha0"] = compare_cells(c["top1"], base["top1"])
    filled = sum(1 for c in cells if c["n"] > 0)
    status = "ok" if filled == len(cells) and all(
        (t["bleu"] if translation else t["top1"]) is not None for t in teachers) else (
        "partial" if filled else "missing")
    return {"status": status, "metric": "bleu" if translation else "val top-1 / top-5 (%)",
            "teachers": teachers, "cells": cells, "baseline_alpha": base_alpha}


def _class_sets(view: StudyView, centroids_ref: Optional[np.ndarray], num_classes: int,
                targets: Sequence[int]) -> dict:
    """S1/S2 per target from the hierarchy (App. G.1) and from feature space (App. G.2)."""
    from lskd_core import classsets

    cfg = view.config
    k_sim, k_dis = int(cfg["num_similar"]), int(cfg["num_dissimilar"])
    hierarchy = cfg.get("hierarchy") or "fashion-mnist"
    names = view.class_names() or [str(i) for i in range(num_classes)]
    if hierarchy == "fashion-mnist":
        parents = classsets.fashion_mnist_parents()
        nodes = list(classsets.FASHION_MNIST_CLASSES)
        source = "WordNet-derived Fashion-MNIST hierarchy (lskd_core.classsets.fashion_mnist_parents)"
    elif hierarchy == "wordnet":
        parents = classsets.wordnet_parents(names)
        nodes = names
        source = "WordNet hypernyms of the class wnids"
    else:
        parents = classsets.load_parent_map(hierarchy)
        nodes = names
        source = f"parent map {hierarchy}"
    if len(nodes) != num_classes:
        raise ValueError(f"hierarchy {hierarchy!r} has {len(nodes)} classes but the models have {num_classes}")
    tree = classsets.ClassHierarchy(parents, nodes)
    hier = {}
    for t in targets:
        s1, s2 = tree.sets(t, k_sim, k_dis, seed=0)
        hier[int(t)] = (list(map(int, s1)), list(map(int, s2)))
    feat = {}
    agreement = []
    pct = cfg.get("feature_sets")
    if pct is None:
        # sized like the hierarchy sets, so that their agreement (Table G.1) is a fair comparison
        pct = [100.0 * k_sim / (num_classes - 1), 100.0 * k_dis / (num_classes - 1)]
    if centroids_ref is not None:
        for t in targets:
            s1, s2 = classsets.feature_space_sets(centroids_ref, t, closest_pct=float(pct[0]),
                                                  farthest_pct=float(pct[1]))
            feat[int(t)] = (list(map(int, s1)), list(map(int, s2)))
            agreement.append({"target": int(t),
                              "s1": float(classsets.set_agreement(hier[t][0], s1)),
                              "s2": float(classsets.set_agreement(hier[t][1], s2))})
    return {"hierarchy": hier, "feature": feat, "agreement": agreement, "hierarchy_source": source,
            "feature_pct": [float(pct[0]), float(pct[1])]}


def _eta_section(view: StudyView, cache: "_Cache") -> dict:
    """Eq. 1 between the lowest T and each higher T, train and val, per alpha (Tables 3, K.1, G.1)."""

    num_classes = view.num_classes()
    if num_classes is None:
        return {"status": "missing", "reason": "no finished run reports its classes"}
    targets = [int(t) for t in (view.config.get("target_classes") or range(num_classes))]
    t1 = view.temperatures[0]
    higher = view.temperatures[1:]
    if not higher:
        return {"status": "missing", "reason": "eta needs at least two temperatures"}
    seed = view.analysis_seed
    needed = [view.export(view.student(a, t, seed), sp) for a in view.alphas for t in view.temperatures
              for sp in ("train", "val")]
    ref_alpha = 0.0 if 0.0 in view.alphas else view.alphas[0]
    ref_export = view.export(view.teacher(ref_alpha), "val")
    key = {"targets": targets, "cfg": {k: view.config.get(k) for k in ("num_similar", "num_dissimilar",
                                                                        "hierarchy", "feature_sets")},
           "inputs": view.fingerprint(needed + [ref_export]), "v": 2}

    def compute() -> dict:
        from lskd_core.diffusion import class_stats, diffusion_indices

        ref = view.features(view.teacher(ref_alpha), "val")
        centroids = class_stats(ref.features, ref.labels, num_classes).centroids if ref is not None else None
        sets = _class_sets(view, centroids, num_classes, targets)
        tables = []
        missing = []
        for a in view.alphas:
            for split in ("train", "val"):
                base = view.features(view.student(a, t1, seed), split)
                if base is None:
                    missing.append(view.export(view.student(a, t1, seed), split))
                    continue
                before = class_stats(base.features, base.labels, num_classes)
                for t2 in higher:
                    f2 = view.features(view.student(a, t2, seed), split)
                    if f2 is None:
                        missing.append(view.export(view.student(a, t2, seed), split))
                        continue
                    after = class_stats(f2.features, f2.labels, num_classes)
                    for method in ("hierarchy", "feature"):
                        if not sets[method]:
                            continue
                        rows = diffusion_indices(before, after, sets[method], pairwise=True)
                        tables.append({"alpha": a, "split": split, "t1": t1, "t2": t2, "sets": method,
                                       "rows": rows,
                                       "mean_eta_s1": float(np.mean([r["eta_s1"] for r in rows])),
                                       "mean_eta_s2": float(np.mean([r["eta_s2"] for r in rows]))})
        return {"status": "ok" if not missing else ("partial" if tables else "missing"),
                "missing_inputs": missing, "targets": targets, "t1": t1, "seed": seed,
                "reference_model": view.teacher(ref_alpha) + " (val split)",
                "sets": {"hierarchy": {str(k): v for k, v in sets["hierarchy"].items()},
                         "feature": {str(k): v for k, v in sets["feature"].items()},
                         "agreement": sets["agreement"], "hierarchy_source": sets["hierarchy_source"],
                         "feature_pct": sets["feature_pct"]},
                "tables": tables}

    return cache.get("eta", key, compute)


def _entropy_section(view: StudyView, cache: "_Cache") -> dict:
    """Table H.1: teachers' mean entropy of their train-split targets at each T; matched T pairs."""

    needed = [view.export(view.teacher(a), "train") for a in view.alphas]
    extra = [float(t) for t in view.config.get("entropy_temperatures") or []]
    key = {"inputs": view.fingerprint(needed), "extra": extra, "t": view.temperatures, "v": 2}

    def compute() -> dict:
        from lskd_core import smoothness

        logits = {}
        for a in view.alphas:
            f = view.features(view.teacher(a), "train")
            if f is None or f.logits is None:
                continue
            logits[a] = np.asarray(f.logits, dtype=np.float32)
        if not logits:
            return {"status": "missing", "reason": "no teacher train export with logits"}
        temps = sorted(set(view.temperatures) | set(extra))
        k = next(iter(logits.values())).shape[1]
        table = {_num(a): {_num(t): float(v) for t, v in smoothness.entropy_table(lg, temps).items()}
                 for a, lg in logits.items()}
        pairs = []
        base = 0.0 if 0.0 in logits else None
        if base is not None:
            for a in [x for x in logits if x != base]:
                for t in view.temperatures:
                    target = float(smoothness.mean_entropy(logits[a], t))
                    entry = {"alpha": a, "temperature": t, "entropy": target, "matched_alpha": base}
                    try:
                        tm = float(smoothness.match_temperature(logits[base], target))
                        entry.update(matched_temperature=tm,
                                     matched_entropy=float(smoothness.mean_entropy(logits[base], tm)))
                    except ValueError as exc:
                        entry.update(matched_temperature=None, note=str(exc))
                    pairs.append(entry)
        return {"status": "ok" if len(logits) == len(view.alphas) else "partial", "temperatures": temps,
                "max_entropy": math.log(k), "table": table, "pairs": pairs}

    return cache.get("entropy", key, compute)


def _projection_section(view: StudyView, cache: "_Cache", out_dir: Path) -> dict:
    """Fig. 1: rows teacher + students at each T, columns alpha; val points, PCA fitted on train."""

    ids = [int(c) for c in view.config.get("projection_classes") or []]
    if len(ids) != 3:
        return {"status": "missing", "reason": "set projection_classes to three class ids"}
    seed = view.analysis_seed
    rows_spec = [("teacher", None)] + [(f"student T={_num(t)}", t) for t in view.temperatures]
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
        for label, t in rows_spec:
            row = []
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
                                        col_labels=[f"alpha = {_num(a)}" for a in view.alphas])
        return {"status": "ok" if not missing else "partial", "png": png.name, "classes": ids,
                "class_names": [names[i] if names else str(i) for i in ids], "split": "val (PCA fitted on train)",
                "panels": distances, "missing_inputs": missing}

    return cache.get("projection", key, compute, files=[png])


def _profile_section(view: StudyView, cache: "_Cache", out_dir: Path, sets: Optional[dict]) -> dict:
    """Fig. 2: mean soft output of each teacher on the profile class's train samples at each T.

    One PNG per teacher (``fig2_soft_output_a<alpha>.png``): the LS teacher's is the paper's Fig. 2,
    the alpha = 0 teacher's is the contrast. The similar classes are the hierarchy's S1 of the class
    (same classes at every T, as Fig. 2's two panels), else the classes the teacher ranks next at
    the first T.
    """
    num_classes = view.num_classes()
    ids = view.config.get("projection_classes") or []
    cls = view.config.get("profile_class")
    if cls is None:
        cls = ids[0] if ids else 0
    cls = int(cls)
    temps = [float(t) for t in view.config.get("profile_temperatures") or [1.0, 2.0]]
    needed = [view.export(view.teacher(a), "train") for a in view.alphas]
    pngs = {a: out_dir / f"fig2_soft_output_a{_num(a)}.png" for a in view.alphas}
    similar = None
    if sets and str(cls) in sets.get("hierarchy", {}):
        similar = list(sets["hierarchy"][str(cls)][0])
    key = {"cls": cls, "temps": temps, "similar": similar, "inputs": view.fingerprint(needed), "v": 3}

    def compute() -> dict:
        from lskd_core import smoothness

        names = view.class_names() or [str(i) for i in range(num_classes or 0)]
        profiles = []
        figures = {}
        for a in reversed(view.alphas):  # the LS teacher first, as in Fig. 2
            f = view.features(view.teacher(a), "train")
            if f is None or f.logits is None:
                continue
            logits = np.asarray(f.logits, dtype=np.float32)
            k = logits.shape[1]
            n_sim = len(similar) if similar else 2
            sim = similar  # fixed after the first T so that every panel shows the same classes
            panel = []
            for t in temps:
                prof = dict(smoothness.soft_output_profile(logits, f.labels, cls, t, similar=sim, num_similar=n_sim,
                                                           num_others=max(1, k - 1 - n_sim)))
                sim = [c for c, g in zip(prof["classes"], prof["groups"]) if g == "similar"]
                mean_probs = smoothness.class_mean_probs(logits, f.labels, cls, t)
                prof.update(alpha=a, title=f"teacher alpha = {_num(a)}, T = {_num(t)}",
                            negligible_classes=int(smoothness.count_negligible(mean_probs, cls)))
                panel.append(prof)
            smoothness.plot_soft_output_profiles(panel, names, pngs[a])
            figures[_num(a)] = pngs[a].name
            profiles += panel
        if not profiles:
            return {"status": "missing", "reason": "no teacher train export with logits"}
        main = figures[max(figures, key=float)]
        return {"status": "ok" if len(figures) == len(view.alphas) else "partial", "png": main, "figures": figures,
                "class": cls, "class_name": names[cls] if cls < len(names) else str(cls), "similar": similar,
                "profiles": _jsonable(profiles)}

    return cache.get("soft_output", key, compute, files=list(pngs.values()))


def _classwise_section(view: StudyView, cache: "_Cache") -> dict:
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


def _bleu_note() -> dict:
    return {"status": "not-applicable", "reason": "feature analyses apply to the vision task"}


# ------------------------------------------------------------------------------------------------
# verdict
# ------------------------------------------------------------------------------------------------
def verdict(grid: dict, eta: Optional[dict] = None, translation: bool = False) -> dict:
    """Which alpha and T to use, how sure, and whether the paper's trends appear."""
    cells = [c for c in grid["cells"] if c["top1_mean"] is not None]
    unit = "BLEU" if translation else "top-1 points"
    if not cells:
        return {"status": "missing", "text": "No student finished, so there is no verdict yet."}
    best = max(cells, key=lambda c: c["top1_mean"])
    lines = []
    out: dict = {"status": "ok", "best": {"alpha": best["alpha"], "temperature": best["temperature"],
                                          "top1_mean": best["top1_mean"], "top1_std": best["top1_std"]}}
    score = (f"{best['top1_mean']:.2f}" + (f" ± {best['top1_std']:.2f}" if best["top1_std"] is not None else "")
             + f" {'BLEU' if translation else 'top-1 (%)'} over {best['n']} seed(s)")
    detail = []
    # smooth or not: best cell of the other alpha(s)
    others = [c for c in cells if c["alpha"] != best["alpha"]]
    if others:
        rival = max(others, key=lambda c: c["top1_mean"])
        cmp = compare_cells(best["top1"], rival["top1"])
        out["alpha_choice"] = dict(cmp, against={"alpha": rival["alpha"], "temperature": rival["temperature"]})
        detail.append(f"Smoothing the teacher or not (best alpha = {_num(best['alpha'])} cell vs the best alpha = "
                      f"{_num(rival['alpha'])} cell, at T = {_num(rival['temperature'])}): " + _certainty_words(cmp) + ".")
    same = [c for c in cells if c["alpha"] == best["alpha"] and c is not best]
    if same:
        runner = max(same, key=lambda c: c["top1_mean"])
        cmp = compare_cells(best["top1"], runner["top1"])
        out["temperature_choice"] = dict(cmp, against={"alpha": runner["alpha"], "temperature": runner["temperature"]})
        detail.append(f"Choice of T for that teacher (T = {_num(best['temperature'])} vs the next best, T = "
                      f"{_num(runner['temperature'])}): " + _certainty_words(cmp) + ".")
    a_lvl = out.get("alpha_choice", {}).get("level", "clear")
    t_lvl = out.get("temperature_choice", {}).get("level", "clear")
    a, t = _num(best["alpha"]), _num(best["temperature"])
    alpha_phrase = {"clear": f"use the teacher trained with alpha = {a}",
                    "suggestive": f"probably use the teacher trained with alpha = {a} (suggestive evidence)"}.get(
        a_lvl, f"whether to smooth the teacher is not settled (best here: alpha = {a})")
    t_phrase = {"clear": f"distil at T = {t}",
                "suggestive": f"probably at T = {t} (suggestive evidence)"}.get(
        t_lvl, f"the temperature is not settled (best here: T = {t})")
    if a_lvl in ("clear", "suggestive") or t_lvl in ("clear", "suggestive"):
        head = f"**Recommendation: {alpha_phrase}; {t_phrase}.** The best cell reaches {score}."
    else:
        head = (f"**Inconclusive.** The best cell is alpha = {a}, T = {t} ({score}), but its lead is within the "
                "seed-to-seed spread (or the spread is unknown): treat it as a lead to confirm with more seeds "
                "or more data, not as a result.")
    out["confidence"] = {"alpha": a_lvl, "temperature": t_lvl}
    lines.append(head)
    lines.extend(detail)
    # the paper's trends
    trends = {}
    alphas = sorted({c["alpha"] for c in grid["cells"]})
    temps = sorted({c["temperature"] for c in grid["cells"]})
    ls = [a for a in alphas if a > 0]
    if ls and 0.0 in alphas and len(temps) >= 2:
        a_ls = max(ls)
        lo, hi = temps[0], temps[-1]

        def cell(a, t):
            return next((c for c in grid["cells"] if c["alpha"] == a and c["temperature"] == t), None)

        c_lo, c_hi = cell(a_ls, lo), cell(a_ls, hi)
        if c_lo and c_hi and c_lo["top1_mean"] is not None and c_hi["top1_mean"] is not None:
            series = [cell(a_ls, t)["top1_mean"] for t in temps if cell(a_ls, t)["top1_mean"] is not None]
            drop = compare_cells(c_lo["top1"], c_hi["top1"])
            trends["ls_teacher_degrades_with_T"] = {
                "holds": bool(c_lo["top1_mean"] > c_hi["top1_mean"]),
                "monotone": bool(all(x >= y for x, y in zip(series, series[1:]))),
                "series": series, "certainty": drop["level"]}
            lines.append(
                f"Paper trend 1 (with an LS teacher, higher T hurts): alpha = {_num(a_ls)} students go from "
                f"{c_lo['top1_mean']:.2f} at T = {_num(lo)} to {c_hi['top1_mean']:.2f} at T = {_num(hi)} "
                f"({'monotone' if trends['ls_teacher_degrades_with_T']['monotone'] else 'not monotone'} over T); "
                + ("reproduced" if trends["ls_teacher_degrades_with_T"]["holds"] else "not reproduced")
                + f" — {_certainty_words(drop)}.")
        b_lo, b_hi = cell(0.0, lo), cell(0.0, hi)
        if c_lo and b_lo and c_lo.get("compatible") is not None:
            cmp = c_lo.get("vs_alpha0") or compare_cells(c_lo["top1"], b_lo["top1"])
            trends["compatible_at_low_T"] = {"holds": bool(c_lo["compatible"]), "certainty": cmp["level"]}
            lines.append(f"Paper trend 2 (LS and KD compatible at low T): at T = {_num(lo)} the LS teacher's "
                         f"students are {'at least as good as' if c_lo['compatible'] else 'worse than'} the "
                         f"alpha = 0 teacher's ({c_lo['top1_mean']:.2f} vs {b_lo['top1_mean']:.2f}); "
                         + ("reproduced" if c_lo["compatible"] else "not reproduced")
                         + f" — {_certainty_words(cmp)}.")
        if c_hi and b_hi and c_hi.get("compatible") is not None:
            cmp = c_hi.get("vs_alpha0") or compare_cells(c_hi["top1"], b_hi["top1"])
            trends["incompatible_at_high_T"] = {"holds": not c_hi["compatible"], "certainty": cmp["level"]}
            lines.append(f"Paper trend 3 (incompatible at high T): at T = {_num(hi)} the LS teacher's students are "
                         f"{'worse than' if not c_hi['compatible'] else 'at least as good as'} the alpha = 0 "
                         f"teacher's ({c_hi['top1_mean']:.2f} vs {b_hi['top1_mean']:.2f}); "
                         + ("reproduced" if not c_hi["compatible"] else "not reproduced")
                         + f" — {_certainty_words(cmp)}.")
    if eta and eta.get("tables"):
        ls_alpha = max(a for a in {t["alpha"] for t in eta["tables"]})
        rows = [t for t in eta["tables"] if t["alpha"] == ls_alpha and t["sets"] == "hierarchy" and t["split"] == "train"]
        if rows and ls_alpha > 0:
            sysd = []
            for t in rows:
                n = len(t["rows"])
                k = sum(1 for r in t["rows"] if r["eta_s1"] < 0 and r["eta_s2"] > 0)
                sysd.append({"t2": t["t2"], "systematic": k, "targets": n})
            trends["systematic_diffusion"] = sysd
            txt = ", ".join(f"T = {_num(s['t2'])}: {s['systematic']}/{s['targets']}" for s in sysd)
            lines.append(f"Paper trend 4 (systematic diffusion: eta_S1 < 0 and eta_S2 > 0 from T = "
                         f"{_num(eta['t1'])}, LS teacher's students, train split): target classes showing it — {txt}.")
    held = [v["holds"] for k, v in trends.items() if isinstance(v, dict) and "holds" in v]
    if held:
        if all(held):
            summary = "The accuracy trends of the paper are all reproduced here"
        elif any(held):
            summary = "The paper's accuracy trends are only partly reproduced here"
        else:
            summary = "The paper's accuracy trends are not reproduced here"
        certain = [v["certainty"] for k, v in trends.items() if isinstance(v, dict) and "certainty" in v]
        if any(c in ("no-spread-estimate", "inconclusive") for c in certain):
            summary += ", and part of the evidence is within the seed spread (see above)"
        lines.append(summary + ".")
    if not translation and best["alpha"] > 0 and best["temperature"] == min(temps):
        if a_lvl == "clear" and t_lvl == "clear":
            lines.append("This matches the paper's rule of thumb: an LS-trained teacher with a low-temperature transfer.")
        else:
            lines.append("The best cell coincides with the paper's rule of thumb (an LS-trained teacher with a "
                         "low-temperature transfer), but this study alone does not establish it (see the confidence above).")
    out["trends"] = trends
    out["text"] = "\n\n".join(lines)
    return out


# ------------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------------
class _Cache:
    """Per-analysis JSON cache keyed by parameters + input fingerprints."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, key: Any, compute: Callable[[], dict], files: Sequence[Path] = ()) -> dict:
        digest = hashlib.sha256(json.dumps(_jsonable(key), sort_keys=True).encode()).hexdigest()
        path = self.root / f"{name}.json"
        old = _read_json(path)
        if old and old.get("key") == digest and all(Path(f).is_file() for f in files) \
                and old.get("result", {}).get("status") in ("ok", "not-applicable"):
            res = old["result"]
            res["cached"] = True
            return res
        try:
            res = _jsonable(compute())
        except Exception as exc:  # an analysis failing must not lose the rest of the report
            res = {"status": "error", "error": f"{exc.__class__.__name__}: {exc}",
                   "traceback": traceback.format_exc(limit=6)}
        atomic_write_bytes(path, json.dumps({"key": digest, "result": res}, indent=1, allow_nan=False).encode())
        res = dict(res)
        res["cached"] = False
        return res


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------
def _plot_accuracy(grid: dict, png: Path, translation: bool) -> Optional[str]:
    from matplotlib.figure import Figure

    cells = [c for c in grid["cells"] if c["top1_mean"] is not None]
    if not cells:
        return None
    fig = Figure(figsize=(5.5, 3.8), dpi=110, layout="constrained")
    ax = fig.subplots()
    alphas = sorted({c["alpha"] for c in cells})
    temps = sorted({c["temperature"] for c in grid["cells"]})
    pos = {t: i for i, t in enumerate(temps)}  # evenly spaced: T = 64 would squash a linear axis
    for i, a in enumerate(alphas):
        cs = sorted((c for c in cells if c["alpha"] == a), key=lambda c: c["temperature"])
        x = [pos[c["temperature"]] + (i - (len(alphas) - 1) / 2) * 0.06 for c in cs]
        y = [c["top1_mean"] for c in cs]
        err = [c["top1_std"] or 0.0 for c in cs]
        line = ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"students, teacher alpha = {_num(a)}")
        t = next((t for t in grid["teachers"] if t["alpha"] == a), None)
        tv = (t or {}).get("bleu" if translation else "top1")
        if tv is not None:
            ax.axhline(tv, linestyle="--", linewidth=1, color=line[0].get_color(), label=f"teacher alpha = {_num(a)}")
    ax.set_xticks(range(len(temps)), [_num(t) for t in temps])
    ax.set_xlabel("KD temperature T")
    ax.set_ylabel("test BLEU" if translation else "val top-1 (%)")
    ax.set_title("Student accuracy vs T (mean ± std over seeds)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.savefig(png)
    return png.name


def _plot_entropy(entropy: dict, png: Path) -> Optional[str]:
    from matplotlib.figure import Figure

    if entropy.get("status") not in ("ok", "partial"):
        return None
    fig = Figure(figsize=(5.0, 3.5), dpi=110, layout="constrained")
    ax = fig.subplots()
    for a, row in entropy["table"].items():
        ts = sorted(float(t) for t in row)
        ax.plot(ts, [row[_num(t)] for t in ts], marker="o", label=f"teacher alpha = {a}")
    ax.axhline(entropy["max_entropy"], color="grey", linestyle=":", label="ln K (uniform)")
    ax.set_xscale("log")
    ts_all = sorted({float(t) for row in entropy["table"].values() for t in row})
    ax.set_xticks(ts_all, [_num(t) for t in ts_all])
    ax.minorticks_off()
    ax.set_xlabel("temperature T")
    ax.set_ylabel("mean entropy (nats)")
    ax.set_title("Teacher target smoothness (Table H.1)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(png)
    return png.name


# ------------------------------------------------------------------------------------------------
# markdown
# ------------------------------------------------------------------------------------------------
def _grid_md(grid: dict, translation: bool) -> str:
    alphas = sorted({c["alpha"] for c in grid["cells"]})
    temps = sorted({c["temperature"] for c in grid["cells"]})
    headers = ["", "T \\ alpha"] + [f"alpha = {_num(a)}" for a in alphas]
    rows = []
    trow = ["teacher", "—"]
    for a in alphas:
        t = next((t for t in grid["teachers"] if t["alpha"] == a), {})
        trow.append(_fmt(t.get("bleu")) if translation else f"{_fmt(t.get('top1'))} / {_fmt(t.get('top5'))}")
    rows.append(trow)
    for t in temps:
        row = ["student", f"T = {_num(t)}"]
        for a in alphas:
            c = next(c for c in grid["cells"] if c["alpha"] == a and c["temperature"] == t)
            if c["top1_mean"] is None:
                row.append("—")
                continue
            txt = _fmt(c["top1_mean"]) + (f" ± {_fmt(c['top1_std'])}" if c["top1_std"] is not None else "")
            if not translation:
                txt += " / " + _fmt(c["top5_mean"]) + (f" ± {_fmt(c['top5_std'])}" if c["top5_std"] is not None else "")
            if c["compatible"]:
                txt = f"**{txt}**"
            row.append(txt)
        rows.append(row)
    return _md_table(headers, rows)


def _eta_summary_md(eta: dict) -> str:
    """One row per (sets, teacher alpha, T2): mean eta over the targets and how many show systematic diffusion."""
    rows = []
    for method in ("hierarchy", "feature"):
        tabs = [t for t in eta["tables"] if t["sets"] == method]
        for a in sorted({t["alpha"] for t in tabs}, reverse=True):
            for t2 in sorted({t["t2"] for t in tabs}):
                row = [method, _num(a), f"{_num(eta['t1'])} -> {_num(t2)}"]
                for split in ("train", "val"):
                    tab = next((t for t in tabs if t["alpha"] == a and t["t2"] == t2 and t["split"] == split), None)
                    if tab is None:
                        row += ["—", "—", "—"]
                        continue
                    k = sum(1 for r in tab["rows"] if r["eta_s1"] < 0 and r["eta_s2"] > 0)
                    row += [f"{tab['mean_eta_s1']:.3f}", f"{tab['mean_eta_s2']:.3f}", f"{k}/{len(tab['rows'])}"]
                rows.append(row)
    return _md_table(["S1/S2 from", "teacher alpha", "T1 -> T2", "train: mean eta_S1", "train: mean eta_S2",
                      "train: systematic", "val: mean eta_S1", "val: mean eta_S2", "val: systematic"], rows)


def _eta_md(eta: dict, names: List[str], method: str = "hierarchy") -> str:
    """Table 3-style per-target tables (pairwise variant of Table K.1 in brackets)."""
    parts = []
    nm = (lambda c: names[c] if c < len(names) else str(c))
    tabs = [t for t in eta["tables"] if t["sets"] == method]
    for a in sorted({t["alpha"] for t in tabs}, reverse=True):
        for t2 in sorted({t["t2"] for t in tabs}):
            tr = next((t for t in tabs if t["alpha"] == a and t["t2"] == t2 and t["split"] == "train"), None)
            va = next((t for t in tabs if t["alpha"] == a and t["t2"] == t2 and t["split"] == "val"), None)
            if tr is None and va is None:
                continue
            parts.append(f"Teacher alpha = {_num(a)}, eta(T1 = {_num(eta['t1'])}, T2 = {_num(t2)}), percent "
                         "(pairwise variant in brackets):\n")
            rows = []
            for target in eta["targets"]:
                r_tr = next((r for r in (tr or {}).get("rows", []) if r["target"] == target), None)
                r_va = next((r for r in (va or {}).get("rows", []) if r["target"] == target), None)

                def f(r, k):
                    if r is None:
                        return "—"
                    return f"{r[k]:.3f} ({r[k + '_pairwise']:.3f})"

                rows.append([nm(target), f(r_tr, "eta_s1"), f(r_tr, "eta_s2"), f(r_va, "eta_s1"), f(r_va, "eta_s2")])
            mean_row = ["**mean**"]
            for tab in (tr, va):
                for k in ("eta_s1", "eta_s2"):
                    mean_row.append(f"**{tab['mean_' + k]:.3f}**" if tab else "—")
            rows.append(mean_row)
            parts.append(_md_table(["target", "train: S1", "train: S2", "val: S1", "val: S2"], rows) + "\n")
    return "\n".join(parts)


def _sets_md(eta: dict, names: List[str]) -> str:
    nm = (lambda c: names[c] if c < len(names) else str(c))
    s = eta["sets"]
    rows = []
    agree = {a["target"]: a for a in s.get("agreement", [])}
    for t in eta["targets"]:
        h = s["hierarchy"].get(str(t))
        fs = s["feature"].get(str(t))
        a = agree.get(t)
        rows.append([nm(t), ", ".join(nm(c) for c in h[0]) if h else "—", ", ".join(nm(c) for c in h[1]) if h else "—",
                     ", ".join(nm(c) for c in fs[0]) if fs else "—", ", ".join(nm(c) for c in fs[1]) if fs else "—",
                     _fmt(a["s1"], 3) if a else "—", _fmt(a["s2"], 3) if a else "—"])
    if agree:
        rows.append(["**average**", "", "", "", "",
                     f"**{np.mean([a['s1'] for a in agree.values()]):.3f}**",
                     f"**{np.mean([a['s2'] for a in agree.values()]):.3f}**"])
    return _md_table(["target", "hierarchy S1", "hierarchy S2", "feature S1", "feature S2",
                      "agreement S1", "agreement S2"], rows)


def _section_status(sec: dict) -> str:
    st = sec.get("status")
    if st in ("ok", None):
        return ""
    if st == "error":
        return f"\n> **This analysis failed**: {sec.get('error')}\n"
    if st == "partial":
        return f"\n> Partial: inputs missing ({', '.join(sec.get('missing_inputs', [])[:6])}).\n"
    return f"\n> Not available: {sec.get('reason', st)}.\n"


def _render(view: StudyView, res: dict) -> str:
    cfg = view.config
    translation = cfg.get("task") == "translation"
    names = view.class_names() or []
    nm = (lambda c: names[c] if c < len(names) else str(c))
    md = [f"# LS x KD study: {cfg.get('name')}\n"]
    if translation:
        setup = (f"Task: translation {cfg.get('pair')} (fairseq), arch `{cfg.get('teacher_arch') or cfg.get('arch')}` "
                 f"teacher -> `{cfg.get('student_arch') or cfg.get('arch')}` student")
    else:
        setup = (f"Task: {cfg.get('dataset')}, teacher `{cfg.get('teacher_model')}` "
                 f"({cfg.get('teacher_epochs')} epochs) -> student `{cfg.get('student_model')}` "
                 f"({cfg.get('student_epochs')} epochs), train/val samples: "
                 f"{cfg.get('train_samples') or 'all'} / {cfg.get('val_samples') or 'all'}")
    md.append(setup + f". alpha in {{{', '.join(_num(a) for a in view.alphas)}}}, T in "
              f"{{{', '.join(_num(t) for t in view.temperatures)}}}, {len(view.seeds)} student seed(s) "
              f"({', '.join(map(str, view.seeds))}), KD beta = {cfg.get('kd_beta')}.")
    if res.get("study_wall_time_s") is not None:
        md.append(f"Study wall time (this invocation): {res['study_wall_time_s'] / 60:.1f} min.")
    md.append(f"Report written {res['written']}.\n")

    md.append("## Verdict\n")
    md.append(res["verdict"].get("text", "—") + "\n")

    md.append("## 1. Accuracy grid (Table 2)\n" if not translation else "## 1. BLEU grid (Table 5)\n")
    g = res["accuracy_grid"]
    md.append(("Val top-1 / top-5 accuracy (%)" if not translation else "Test BLEU")
              + ", mean ± std over seeds. **Bold**: LS and KD are compatible at that T (the LS teacher's "
              "student is at least as good as the alpha = 0 teacher's student at the same T).\n")
    md.append(_grid_md(g, translation) + "\n")
    md.append(_section_status(g))
    if res.get("figures", {}).get("accuracy"):
        md.append(f"![student accuracy vs T]({res['figures']['accuracy']})\n")

    if translation:
        md.append("## 2.-6. Feature analyses\n\nThe diffusion index, entropy, projections, soft outputs and "
                  "class-wise accuracy are computed for the vision task only.\n")
    else:
        eta = res["eta"]
        md.append("## 2. Diffusion index (Table 3, pairwise: Table K.1)\n")
        md.append(_section_status(eta))
        if eta.get("tables"):
            md.append(f"Students of seed {eta['seed']}; features of the train and val splits. eta_S1 < 0 and "
                      "eta_S2 > 0 mean the target class moved towards its semantically similar classes "
                      "relative to the dissimilar ones (systematic diffusion). The paper expects it for the LS "
                      "teacher's students (shown first) and less of it for the alpha = 0 teacher's.\n")
            md.append("Summary (mean over the target classes; 'systematic' = targets with eta_S1 < 0 and "
                      "eta_S2 > 0):\n")
            md.append(_eta_summary_md(eta) + "\n")
            md.append("Per target class, S1/S2 from the class hierarchy (Table 3; feature-space sets: "
                      "results.json):\n")
            md.append(_eta_md(eta, names))
            md.append("### S1/S2 selection and agreement (Table G.1)\n")
            md.append(f"Hierarchy: {eta['sets']['hierarchy_source']}. Feature space: closest "
                      f"{eta['sets']['feature_pct'][0]:.1f} % / farthest {eta['sets']['feature_pct'][1]:.1f} % of "
                      f"the other classes by centroid distance in {eta['reference_model']} (App. G.2). Agreement = "
                      "|hierarchy ∩ feature| / |hierarchy|.\n")
            md.append(_sets_md(eta, names) + "\n")

        ent = res["entropy"]
        md.append("## 3. Teacher smoothness (Table H.1)\n")
        md.append(_section_status(ent))
        if ent.get("table"):
            temps = ent["temperatures"]
            alphas = list(ent["table"])
            rows = [[f"T = {_num(t)}"] + [_fmt(ent["table"][a].get(_num(t)), 3) for a in alphas] for t in temps]
            md.append(f"Mean entropy (nats) of the teachers' softmax(z / T) over their train split; maximum "
                      f"ln K = {ent['max_entropy']:.3f}.\n")
            md.append(_md_table(["", *[f"alpha = {a}" for a in alphas]], rows) + "\n")
            if ent.get("pairs"):
                prow = []
                for p in ent["pairs"]:
                    mt = p.get("matched_temperature")
                    prow.append([f"alpha = {_num(p['alpha'])}, T = {_num(p['temperature'])}", _fmt(p["entropy"], 3),
                                 f"alpha = {_num(p['matched_alpha'])}, T = {mt:.4f}" if mt else f"— ({p.get('note', '')})"])
                md.append("Entropy-matched pairs (App. H): the alpha = 0 teacher's temperature giving the same mean "
                          "entropy as the LS teacher at T. Comparing students at such pairs separates the effect of "
                          "smoothness from that of LS (the paper finds smoothness alone does not explain KD).\n")
                md.append(_md_table(["LS teacher", "mean entropy", "matched by"], prow) + "\n")
            if res.get("figures", {}).get("entropy"):
                md.append(f"![teacher entropy]({res['figures']['entropy']})\n")

        proj = res["projection"]
        md.append("## 4. Penultimate-layer projections (Fig. 1)\n")
        md.append(_section_status(proj))
        if proj.get("png"):
            cn = proj["class_names"]
            md.append(f"Classes {cn[0]} and {cn[1]} (semantically similar) and {cn[2]} (dissimilar); "
                      "val samples projected on the plane of the three class templates (App. F), PCA fitted on each "
                      "model's train split. `sep` = centroid distance of the similar pair / mean cluster spread.\n")
            md.append(f"![projection grid]({proj['png']})\n")
            rows = [[p["row"], _num(p["alpha"]), _fmt(p["similar_pair_distance"], 3), _fmt(p["similar_pair_separation"], 3)]
                    for p in proj["panels"]]
            md.append(_md_table(["model", "alpha", "similar-pair centroid distance (2-D)", "separation"], rows) + "\n")

        prof = res["soft_output"]
        md.append("## 5. Soft outputs of the teachers (Fig. 2)\n")
        md.append(_section_status(prof))
        if prof.get("png"):
            md.append(f"Mean softmax(z / T) of each teacher over the train samples of **{prof['class_name']}**: the "
                      "true class, its semantically similar classes, then the others. Raising T brings the similar "
                      "classes' probabilities closer to the true class's, which pulls the student's features of "
                      f"{prof['class_name']} towards them (Sec. 4).\n")
            for a_txt, png in sorted(prof.get("figures", {}).items(), key=lambda kv: -float(kv[0])):
                md.append(f"Teacher alpha = {a_txt}:\n\n![soft output profile, alpha = {a_txt}]({png})\n")
            rows = []
            for p in prof["profiles"]:
                cls_probs = ", ".join(f"{nm(c)} {pr:.3f}" for c, pr, gr in zip(p["classes"], p["probs"], p["groups"])
                                      if gr != "other")
                rows.append([p["title"], cls_probs, p.get("negligible_classes")])
            md.append(_md_table(["teacher", "true + similar classes (mean prob.)",
                                 "classes >= 100x less likely than the runner-up (App. E)"], rows) + "\n")

        cw = res["classwise"]
        md.append("## 6. Class-wise accuracy of the target classes (Table I)\n")
        md.append(_section_status(cw))
        if cw.get("rows"):
            md.append(f"Val: mean over seeds (from each run's result.json). Train: seed {cw['train_seed']}, from the "
                      "exported train features through the model's final layer. Percent.\n")
            for split in ("train", "val"):
                headers = ["alpha", "T"] + [nm(c) for c in cw["targets"]] + ["average"]
                rows = [[_num(r["alpha"]), _num(r["temperature"])] + [_fmt(r[split][str(c)]) for c in cw["targets"]]
                        + [_fmt(r[f"{split}_avg"])] for r in cw["rows"]]
                md.append(f"**{split}**\n\n" + _md_table(headers, rows) + "\n")

    md.append("## Runs\n")
    runs = res["runs"]
    md.append(f"{runs['done']} of {runs['planned']} runs finished. Run directories: `{view.dir / 'runs'}`.\n")
    if runs["not_done"]:
        md.append("Not finished: " + ", ".join(f"`{r}`" for r in runs["not_done"][:30])
                  + (" ..." if len(runs["not_done"]) > 30 else "") + "\n")
    if res.get("problems"):
        md.append("Problems found and handled in this invocation:\n")
        for p in res["problems"]:
            md.append(f"- `{p.get('run_id')}`: {p.get('event')} — {p.get('reason')}; {p.get('action')}")
        md.append("")
    return "\n".join(md) + "\n"


# ------------------------------------------------------------------------------------------------
# entry point
# ------------------------------------------------------------------------------------------------
def write_report(study_dir: os.PathLike | str, out_dir: Optional[os.PathLike | str] = None,
                 problems: Optional[Sequence[dict]] = None, study_wall_time_s: Optional[float] = None,
                 usable: Optional[set] = None) -> Path:
    """Write ``report.md``, ``results.json`` and figures for a study directory; return the report dir.

    ``usable``: run ids the caller vouches for (the study runner passes those it found done for the
    current config); None reads every run whose result.json says done.
    """
    view = StudyView(Path(study_dir), usable=usable)
    out = Path(out_dir) if out_dir is not None else view.dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    cache = _Cache(out / "cache")
    translation = view.config.get("task") == "translation"
    res: dict = {"written": time.strftime("%Y-%m-%d %H:%M:%S"), "study_dir": str(view.dir),
                 "config": view.config, "study_wall_time_s": study_wall_time_s,
                 "problems": list(problems or [])}
    grid = accuracy_grid(view)
    res["accuracy_grid"] = grid
    figures = {}
    if translation:
        for k in ("eta", "entropy", "projection", "soft_output", "classwise"):
            res[k] = _bleu_note()
    else:
        res["eta"] = _eta_section(view, cache)
        res["entropy"] = _entropy_section(view, cache)
        res["projection"] = _projection_section(view, cache, out)
        res["soft_output"] = _profile_section(view, cache, out, res["eta"].get("sets"))
        res["classwise"] = _classwise_section(view, cache)
        try:
            figures["entropy"] = _plot_entropy(res["entropy"], out / "teacher_entropy.png")
        except Exception as exc:
            res["entropy"]["figure_error"] = str(exc)
    try:
        figures["accuracy"] = _plot_accuracy(grid, out / "accuracy_vs_T.png", translation)
    except Exception as exc:
        grid["figure_error"] = str(exc)
    for k in ("projection", "soft_output"):
        if res.get(k, {}).get("png"):
            figures[k] = res[k]["png"]
    res["figures"] = {k: v for k, v in figures.items() if v}
    res["verdict"] = verdict(grid, res.get("eta"), translation)
    not_done = [r for r in view.runs if r not in view.results]
    res["runs"] = {"planned": len(view.runs), "done": len(view.runs) - len(not_done), "not_done": not_done}
    res = _jsonable(res)
    atomic_write_bytes(out / "results.json", json.dumps(res, indent=1, allow_nan=False).encode())
    atomic_write_bytes(out / "report.md", _render(view, res).encode())
    return out
