"""Section 2: the diffusion index (Eq. 1; Table 3, pairwise variant Table K.1) and the S1/S2 sets
from the class hierarchy (App. G.1) and from feature space (App. G.2) with their agreement (Table G.1).

eta is computed for every student seed whose features were exported (``seed_tables``) and
summarised over seeds with intervals and the share of seeds showing diffusion (``over_seeds``);
the Table 3-style ``tables`` are the analysis seed's, as before.

Compute: :func:`eta_section` (sets, then every seed's tables). Render: :func:`eta_markdown`.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from lskd_core.hierarchy import select_hierarchy
from lskd_core.jsonio import num
from lskd_core.report.cache import AnalysisCache
from lskd_core.report.markdown import fmt, md_table, section_status
from lskd_core.report.seed_stats import eta_over_seeds, eta_over_seeds_md
from lskd_core.report.view import StudyView

__all__ = ["eta_section", "eta_markdown"]


def _class_sets(view: StudyView, centroids_ref: Optional[np.ndarray], num_classes: int,
                targets: Sequence[int]) -> dict:
    """S1/S2 per target from the hierarchy (App. G.1) and from feature space (App. G.2)."""
    from lskd_core import classsets

    cfg = view.config
    k_sim, k_dis = int(cfg["num_similar"]), int(cfg["num_dissimilar"])
    choice = select_hierarchy(cfg.get("hierarchy") or "fashion-mnist", view.class_names(), num_classes)
    tree = classsets.ClassHierarchy(choice.parents, choice.nodes)
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
    return {"hierarchy": hier, "feature": feat, "agreement": agreement, "hierarchy_source": choice.source,
            "feature_pct": [float(pct[0]), float(pct[1])]}


def _seed_tables(view: StudyView, alpha: float, split: str, seed: int, higher: Sequence[float],
                 sets: dict, num_classes: int) -> tuple:
    """eta tables of one student seed (lowest T -> each higher T) and the exports it lacked."""
    from lskd_core.diffusion import class_stats, diffusion_indices

    t1 = view.temperatures[0]
    tables: List[dict] = []
    base = view.features(view.student(alpha, t1, seed), split)
    if base is None:
        return tables, [view.export(view.student(alpha, t1, seed), split)]
    missing = []
    before = class_stats(base.features, base.labels, num_classes)
    for t2 in higher:
        f2 = view.features(view.student(alpha, t2, seed), split)
        if f2 is None:
            missing.append(view.export(view.student(alpha, t2, seed), split))
            continue
        after = class_stats(f2.features, f2.labels, num_classes)
        for method in ("hierarchy", "feature"):
            if not sets[method]:
                continue
            rows = diffusion_indices(before, after, sets[method], pairwise=True)
            tables.append({"alpha": alpha, "split": split, "t1": t1, "t2": t2, "sets": method, "rows": rows,
                           "mean_eta_s1": float(np.mean([r["eta_s1"] for r in rows])),
                           "mean_eta_s2": float(np.mean([r["eta_s2"] for r in rows]))})
    return tables, missing


def _teacher_seed(view: StudyView, alpha: float, temperature: float, seed: int) -> int:
    return int((view.runs.get(view.student(alpha, temperature, seed), {}).get("info") or {}).get("teacher_seed", 0))


def _reference_alpha(view: StudyView) -> float:
    """The teacher whose val centroids define the feature-space sets: alpha = 0's, else the first."""
    return 0.0 if 0.0 in view.alphas else view.alphas[0]


def _all_seed_tables(view: StudyView, higher: Sequence[float], sets: dict,
                     num_classes: int) -> Tuple[List[dict], List[dict], List[str]]:
    """Every (alpha, split, seed)'s tables: the analysis seed's (Table 3), every seed's with its
    teacher seed (the summary over seeds), and the analysis seed's missing exports."""
    tables: List[dict] = []
    seed_tables: List[dict] = []
    missing: List[str] = []
    for a in view.alphas:
        for split in ("train", "val"):
            for s in view.seeds:
                got, lacked = _seed_tables(view, a, split, s, higher, sets, num_classes)
                if s == view.analysis_seed:  # the analysis seed's exports are planned: report them missing
                    tables += got
                    missing += lacked
                seed_tables += [dict(t, seed=s, teacher_seed=_teacher_seed(view, a, t["t2"], s)) for t in got]
    return tables, seed_tables, missing


def _sets_record(sets: dict) -> dict:
    """The S1/S2 sets as results.json holds them (targets as string keys)."""
    return {"hierarchy": {str(k): v for k, v in sets["hierarchy"].items()},
            "feature": {str(k): v for k, v in sets["feature"].items()},
            "agreement": sets["agreement"], "hierarchy_source": sets["hierarchy_source"],
            "feature_pct": sets["feature_pct"]}


def _compute(view: StudyView, targets: List[int], higher: Sequence[float], num_classes: int) -> dict:
    """The sets from the reference teacher, then Eq. 1 for every student seed."""
    from lskd_core.diffusion import class_stats

    ref_alpha = _reference_alpha(view)
    ref = view.features(view.teacher(ref_alpha), "val")
    centroids = class_stats(ref.features, ref.labels, num_classes).centroids if ref is not None else None
    sets = _class_sets(view, centroids, num_classes, targets)
    tables, seed_tables, missing = _all_seed_tables(view, higher, sets, num_classes)
    if ref is None:  # no feature-space sets (Table G.1's feature half, the feature tables) until it is done
        missing = [view.export(view.teacher(ref_alpha), "val")] + missing
    return {"status": "ok" if not missing else ("partial" if tables else "missing"),
            "missing_inputs": missing, "targets": targets, "t1": view.temperatures[0], "seed": view.analysis_seed,
            "reference_model": view.teacher(ref_alpha) + " (val split)", "sets": _sets_record(sets),
            "tables": tables, "seed_tables": seed_tables,
            "seeds_with_features": sorted({t["seed"] for t in seed_tables}),
            "over_seeds": eta_over_seeds({"seed_tables": seed_tables})}


def eta_section(view: StudyView, cache: AnalysisCache) -> dict:
    """Eq. 1 between the lowest T and each higher T, train and val, per alpha (Tables 3, K.1, G.1)."""
    num_classes = view.num_classes()
    if num_classes is None:
        return {"status": "missing", "reason": "no finished run reports its classes"}
    targets = [int(t) for t in (view.config.get("target_classes") or range(num_classes))]
    higher = view.temperatures[1:]
    if not higher:
        return {"status": "missing", "reason": "eta needs at least two temperatures"}
    needed = [view.export(view.student(a, t, s), sp) for a in view.alphas for t in view.temperatures
              for s in view.seeds for sp in ("train", "val")]
    ref_export = view.export(view.teacher(_reference_alpha(view)), "val")
    key = {"targets": targets, "cfg": {k: view.config.get(k) for k in ("num_similar", "num_dissimilar",
                                                                        "hierarchy", "feature_sets")},
           "inputs": view.fingerprint(needed + [ref_export]), "v": 3}
    return cache.get("eta", key, lambda: _compute(view, targets, higher, num_classes))


# ------------------------------------------------------------------------------------------------
# render
# ------------------------------------------------------------------------------------------------
def _namer(names: List[str]) -> Callable[[int], str]:
    return lambda c: names[c] if c < len(names) else str(c)


def _find(tabs: Sequence[dict], alpha: float, t2: float, split: str) -> Optional[dict]:
    """The table of (teacher alpha, T2, split) among ``tabs``, or None."""
    return next((t for t in tabs if t["alpha"] == alpha and t["t2"] == t2 and t["split"] == split), None)


def _cells(tabs: Sequence[dict]) -> List[Tuple[float, float]]:
    """(teacher alpha, T2) of ``tabs``: the LS teacher (highest alpha) first, then T2 ascending."""
    return [(a, t2) for a in sorted({t["alpha"] for t in tabs}, reverse=True)
            for t2 in sorted({t["t2"] for t in tabs})]


def _summary_cells(tab: Optional[dict]) -> List[str]:
    """Mean eta_S1, eta_S2 and the systematic-diffusion count of one table (— without it)."""
    if tab is None:
        return ["—", "—", "—"]
    k = sum(1 for r in tab["rows"] if r["eta_s1"] < 0 and r["eta_s2"] > 0)
    return [f"{tab['mean_eta_s1']:.3f}", f"{tab['mean_eta_s2']:.3f}", f"{k}/{len(tab['rows'])}"]


def _eta_summary_md(eta: dict) -> str:
    """One row per (sets, teacher alpha, T2): mean eta over the targets and how many show systematic diffusion."""
    rows = []
    for method in ("hierarchy", "feature"):
        tabs = [t for t in eta["tables"] if t["sets"] == method]
        for a, t2 in _cells(tabs):
            rows.append([method, num(a), f"{num(eta['t1'])} -> {num(t2)}"]
                        + _summary_cells(_find(tabs, a, t2, "train")) + _summary_cells(_find(tabs, a, t2, "val")))
    return md_table(["S1/S2 from", "teacher alpha", "T1 -> T2", "train: mean eta_S1", "train: mean eta_S2",
                      "train: systematic", "val: mean eta_S1", "val: mean eta_S2", "val: systematic"], rows)


def _eta_value(row: Optional[dict], k: str) -> str:
    """eta with its pairwise variant in brackets, or — without the row."""
    if row is None:
        return "—"
    return f"{row[k]:.3f} ({row[k + '_pairwise']:.3f})"


def _target_row(target: int, tr: Optional[dict], va: Optional[dict], nm: Callable[[int], str]) -> List[str]:
    """One target's train and val eta_S1, eta_S2."""
    r_tr = next((r for r in (tr or {}).get("rows", []) if r["target"] == target), None)
    r_va = next((r for r in (va or {}).get("rows", []) if r["target"] == target), None)
    return [nm(target), _eta_value(r_tr, "eta_s1"), _eta_value(r_tr, "eta_s2"),
            _eta_value(r_va, "eta_s1"), _eta_value(r_va, "eta_s2")]


def _mean_row(tr: Optional[dict], va: Optional[dict]) -> List[str]:
    """The bold means over the targets, train then val."""
    return ["**mean**"] + [f"**{tab['mean_' + k]:.3f}**" if tab else "—"
                           for tab in (tr, va) for k in ("eta_s1", "eta_s2")]


def _eta_md(eta: dict, names: List[str], method: str = "hierarchy") -> str:
    """Table 3-style per-target tables (pairwise variant of Table K.1 in brackets)."""
    parts = []
    nm = _namer(names)
    tabs = [t for t in eta["tables"] if t["sets"] == method]
    for a, t2 in _cells(tabs):
        tr, va = _find(tabs, a, t2, "train"), _find(tabs, a, t2, "val")
        if tr is None and va is None:
            continue
        parts.append(f"Teacher alpha = {num(a)}, eta(T1 = {num(eta['t1'])}, T2 = {num(t2)}), percent "
                     "(pairwise variant in brackets):\n")
        rows = [_target_row(target, tr, va, nm) for target in eta["targets"]] + [_mean_row(tr, va)]
        parts.append(md_table(["target", "train: S1", "train: S2", "val: S1", "val: S2"], rows) + "\n")
    return "\n".join(parts)


def _set_names(pair: Optional[Sequence[Sequence[int]]], i: int, nm: Callable[[int], str]) -> str:
    """S1 (i = 0) or S2 (i = 1) as class names, or — without the sets."""
    return ", ".join(nm(c) for c in pair[i]) if pair else "—"


def _sets_md(eta: dict, names: List[str]) -> str:
    """Table G.1: each target's hierarchy and feature-space sets and their agreement, then the average."""
    nm = _namer(names)
    s = eta["sets"]
    rows = []
    agree = {a["target"]: a for a in s.get("agreement", [])}
    for t in eta["targets"]:
        h, fs, a = s["hierarchy"].get(str(t)), s["feature"].get(str(t)), agree.get(t)
        rows.append([nm(t), _set_names(h, 0, nm), _set_names(h, 1, nm), _set_names(fs, 0, nm), _set_names(fs, 1, nm),
                     fmt(a["s1"], 3) if a else "—", fmt(a["s2"], 3) if a else "—"])
    if agree:
        rows.append(["**average**", "", "", "", "",
                     f"**{np.mean([a['s1'] for a in agree.values()]):.3f}**",
                     f"**{np.mean([a['s2'] for a in agree.values()]):.3f}**"])
    return md_table(["target", "hierarchy S1", "hierarchy S2", "feature S1", "feature S2",
                      "agreement S1", "agreement S2"], rows)


def _over_seeds_md(eta: dict, names: List[str]) -> List[str]:
    """The summary over student seeds, for the highest LS alpha and the highest T2."""
    ls = [a for a in {t["alpha"] for t in eta["tables"]} if a > 0]
    return ([f"Student seeds with exported features: {', '.join(map(str, eta['seeds_with_features']))}.\n"]
            + eta_over_seeds_md(eta["over_seeds"], names, max(ls) if ls else None,
                                max(t["t2"] for t in eta["seed_tables"])))


def _sets_section_md(eta: dict, names: List[str]) -> List[str]:
    """Table G.1's subsection: how the sets were chosen, then the table."""
    return ["### S1/S2 selection and agreement (Table G.1)\n",
            f"Hierarchy: {eta['sets']['hierarchy_source']}. Feature space: closest "
            f"{eta['sets']['feature_pct'][0]:.1f} % / farthest {eta['sets']['feature_pct'][1]:.1f} % of "
            f"the other classes by centroid distance in {eta['reference_model']} (App. G.2). Agreement = "
            "|hierarchy ∩ feature| / |hierarchy|.\n",
            _sets_md(eta, names) + "\n"]


def eta_markdown(res: dict, names: List[str]) -> List[str]:
    """Section 2 of report.md from ``res["eta"]``."""
    eta = res["eta"]
    md = ["## 2. Diffusion index (Table 3, pairwise: Table K.1)\n", section_status(eta)]
    if not eta.get("tables"):
        return md
    md.append(f"Students of seed {eta['seed']}; features of the train and val splits. eta_S1 < 0 and "
              "eta_S2 > 0 mean the target class moved towards its semantically similar classes "
              "relative to the dissimilar ones (systematic diffusion). The paper expects it for the LS "
              "teacher's students (shown first) and less of it for the alpha = 0 teacher's.\n")
    md.append("Summary (mean over the target classes; 'systematic' = targets with eta_S1 < 0 and "
              "eta_S2 > 0):\n")
    md.append(_eta_summary_md(eta) + "\n")
    if eta.get("over_seeds"):
        md += _over_seeds_md(eta, names)
    md.append("Per target class, S1/S2 from the class hierarchy (Table 3; feature-space sets: "
              "results.json):\n")
    md.append(_eta_md(eta, names))
    return md + _sets_section_md(eta, names)
