"""The diffusion index on a sequence task: an extension of the paper (which measures eta on image
classifiers only, Sec. 4 / Table 3).

Definition used here (translation). Features = the decoder's penultimate states (the input of the
output projection) at the target tokens of the exported sentences, teacher-forced. Classes = the
``translation_eta_classes`` most frequent target tokens with at least ``translation_eta_min_count``
occurrences (special symbols excluded); a row's class is the token it predicts. A class centroid is
the mean state over that token's occurrences. S1/S2 of each class come from feature space (App. G.2,
:func:`lskd_core.classsets.feature_space_sets`) applied to the reference TEACHER's output-embedding
rows of the classes: the tokens whose output embeddings are nearest (S1) and farthest (S2), sized
like the vision sets (``num_similar`` / ``num_dissimilar`` of the other classes, or
``feature_sets`` percentages). Eq. 1 (:mod:`lskd_core.diffusion`, percent) then compares the
lowest-T student with each higher-T student of the same alpha and seed; the summary over seeds
(:func:`lskd_core.report.seed_stats.eta_over_seeds`) gives intervals over student seeds (over
teachers when there are several per alpha).

Compute: :func:`token_eta_section` (classes and sets, then every seed's tables). Render:
:func:`token_eta_markdown`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from lskd_core.jsonio import num
from lskd_core.report.cache import AnalysisCache
from lskd_core.report.eta import _seed_tables, _teacher_seed
from lskd_core.report.markdown import md_table, section_status
from lskd_core.report.seed_stats import _ci, eta_over_seeds
from lskd_core.report.view import StudyView

__all__ = ["token_eta_section", "token_eta_markdown", "embedding_sets", "class_records"]

DEFINITION = ("features = the decoder's penultimate states (input of the output projection) at target tokens, teacher-forced; "
              "classes = the most frequent target tokens; S1/S2 = each token's nearest / farthest classes by the "
              "reference teacher's output embeddings (App. G.2's feature-space rule); Eq. 1 between the lowest-T "
              "and each higher-T student of one alpha and seed")


def embedding_sets(weight: np.ndarray, num_similar: int, num_dissimilar: int,
                   feature_sets: Optional[List[float]] = None) -> Dict[str, Any]:
    """S1/S2 per class from output-embedding rows [K, D] (App. G.2 applied to the embeddings)."""
    from lskd_core import classsets

    k = int(weight.shape[0])
    pct = feature_sets or [min(100.0, 100.0 * num_similar / (k - 1)), min(100.0, 100.0 * num_dissimilar / (k - 1))]
    if pct[0] + pct[1] > 100:  # few classes: S1 and S2 share the others
        pct = [min(pct[0], 50.0), 100.0 - min(pct[0], 50.0)]
    sets = {}
    for t in range(k):
        s1, s2 = classsets.feature_space_sets(weight, t, closest_pct=float(pct[0]), farthest_pct=float(pct[1]))
        sets[t] = (s1, s2)
    return {"sets": sets, "pct": [float(pct[0]), float(pct[1])]}


def _split(view: StudyView) -> str:
    return str(view.config.get("translation_export_split") or "test")


def _student_runs(view: StudyView) -> List[str]:
    return [view.student(a, t, s) for a in view.alphas for t in view.temperatures for s in view.seeds]


def _check_same_classes(view: StudyView, split: str, ref_model: str, token_ids: List[int]) -> None:
    """Raise unless every student export holds the reference's token classes (same data and settings)."""
    for model in _student_runs(view):
        f = view.features(model, split)
        if f is not None and list(f.meta.get("token_ids") or []) != token_ids:
            raise ValueError(f"{view.export(model, split)} has other token classes than "
                             f"{view.export(ref_model, split)}: the exports were made with different "
                             "settings; re-run them")


def _token_sets(view: StudyView, weight: Any) -> Dict[str, Any]:
    """:func:`embedding_sets` of the reference teacher's output-embedding rows, sized by the config."""
    return embedding_sets(np.asarray(weight, dtype=np.float64), int(view.config.get("num_similar") or 4),
                          int(view.config.get("num_dissimilar") or 20), view.config.get("feature_sets"))


def class_records(names: List[str], token_ids: List[int], counts: List[int], sets: Dict[int, tuple]) -> List[dict]:
    """One record per token class: its token id and text, its count, its S1 and S2 (None where the
    export's meta has fewer ids or counts than classes)."""
    return [{"class": i, "token_id": int(token_ids[i]) if i < len(token_ids) else None,
             "token": names[i], "count": int(counts[i]) if i < len(counts) else None,
             "s1": sets[i][0], "s2": sets[i][1]} for i in range(len(names))]


def _all_seed_tables(view: StudyView, split: str, sets: dict, k: int) -> Tuple[List[dict], List[str]]:
    """Every (alpha, seed)'s tables with its teacher seed, and the student exports they lacked."""
    seed_tables: List[dict] = []
    missing: List[str] = []
    for a in view.alphas:
        for s in view.seeds:
            got, lacked = _seed_tables(view, a, split, s, view.temperatures[1:], sets, k)
            missing += lacked
            seed_tables += [dict(t, seed=s, teacher_seed=_teacher_seed(view, a, t["t2"], s)) for t in got]
    return seed_tables, missing


def _compute(view: StudyView, split: str, ref_model: str) -> dict:
    """The token classes and their sets from the reference teacher, then Eq. 1 for every student seed."""
    ref = view.features(ref_model, split)
    if ref is None or ref.weight is None:
        return {"status": "missing", "missing_inputs": [view.export(ref_model, split)],
                "reason": "the reference teacher's export (its output-embedding rows) is not done"}
    token_ids = list(ref.meta.get("token_ids") or [])
    names = list(ref.class_names or [str(t) for t in token_ids])
    _check_same_classes(view, split, ref_model, token_ids)
    chosen = _token_sets(view, ref.weight)
    seed_tables, missing = _all_seed_tables(view, split, {"hierarchy": {}, "feature": chosen["sets"]}, len(names))
    return {"status": "ok" if not missing else ("partial" if seed_tables else "missing"),
            "missing_inputs": missing, "split": split, "t1": view.temperatures[0],
            "definition": DEFINITION, "reference_model": ref_model,
            "classes": class_records(names, token_ids, list(ref.meta.get("token_counts") or []), chosen["sets"]),
            "feature_pct": chosen["pct"], "sentences": ref.meta.get("sentences"),
            "seed_tables": seed_tables, "seeds_with_features": sorted({t["seed"] for t in seed_tables}),
            "over_seeds": eta_over_seeds({"seed_tables": seed_tables})}


def token_eta_section(view: StudyView, cache: AnalysisCache) -> dict:
    """Eq. 1 on decoder states per target token, lowest T -> each higher T, every alpha and seed."""
    split = _split(view)
    if len(view.temperatures) < 2:
        return {"status": "missing", "reason": "eta needs at least two temperatures"}
    ref_model = view.teacher(0.0 if 0.0 in view.alphas else view.alphas[0])
    needed = [view.export(m, split) for m in _student_runs(view)]
    cfg_key = {k: view.config.get(k) for k in ("num_similar", "num_dissimilar", "feature_sets")}
    key = {"inputs": view.fingerprint(needed + [view.export(ref_model, split)]), "cfg": cfg_key, "v": 1}
    return cache.get("token_eta", key, lambda: _compute(view, split, ref_model))


# ------------------------------------------------------------------------------------------------
# render
# ------------------------------------------------------------------------------------------------
def _tok(name: str) -> str:
    return "`" + str(name).replace("`", "'").replace("|", "¦") + "`"


def _intro(eta: dict) -> str:
    """What the section measures and on which classes, sets and reference."""
    return (f"This section goes beyond the paper: it measures eta (Eq. 1) on translation, which the paper "
            f"does only on image classifiers. Definition: {eta['definition']}. Here: {len(eta['classes'])} token "
            f"classes from {eta.get('sentences')} sentences of the `{eta['split']}` split; S1 = the closest "
            f"{eta['feature_pct'][0]:.1f} %, S2 = the farthest {eta['feature_pct'][1]:.1f} % of the other "
            f"classes by the output embeddings of `{eta['reference_model']}`. eta_S1 < 0 (and eta_S2 > 0) "
            "means a token's states moved towards the states of its similar tokens relative to the dissimilar "
            "ones (systematic diffusion); the paper expects it for the LS teacher's students at high T.\n")


def _over_seeds_table(eta: dict) -> str:
    """Eq. 1's summary over units per (teacher alpha, T1 -> T2)."""
    rows = []
    main = next((o for o in eta["over_seeds"] if o["variant"] == "eq1"), None)
    for g in (main or {}).get("groups", []):
        s = g["summary"]
        rows.append([num(g["alpha"]), f"{num(g['t1'])} -> {num(g['t2'])}", _ci(s["eta_s1"], 3, True),
                     _ci(s["eta_s2"], 3, True), f"{100 * s['share_diffusion']:.0f} % of {s['runs']}",
                     f"{s['eta_s1']['n']} {s['eta_s1']['unit']}s"])
    return md_table(["teacher alpha", "T1 -> T2", "eta_S1", "eta_S2", "runs showing diffusion", "n"], rows) + "\n"


def _classes_table(classes: List[dict], shown: int) -> str:
    """The ``shown`` most frequent token classes with their S1 and the size of their S2."""
    nm = {c["class"]: c["token"] for c in classes}
    srows = [[_tok(c["token"]), str(c["count"]), ", ".join(_tok(nm[i]) for i in c["s1"]),
              str(len(c["s2"]))] for c in classes[:shown]]
    return md_table(["token", "occurrences", "S1 (nearest output embeddings)", "size of S2"], srows) + "\n"


def token_eta_markdown(res: dict) -> List[str]:
    """Section 3 of a translation report.md from ``res["token_eta"]``."""
    eta = res.get("token_eta") or {}
    md = ["## 3. Diffusion index on decoder states (an extension of the paper)\n", section_status(eta)]
    if not eta.get("over_seeds"):
        if eta.get("reason"):
            md.append(f"{eta['reason']}.\n")
        return md
    shown = len(eta["classes"][:12])
    return md + [_intro(eta),
                 "Each run's eta averaged over the token classes, then mean [95 % interval] over the units "
                 "(percent):\n", _over_seeds_table(eta),
                 f"S1 of the {shown} most frequent token classes (all classes and S2: results.json, "
                 "`token_eta.classes`):\n", _classes_table(eta["classes"], shown)]
