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
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from lskd_core.jsonio import num
from lskd_core.report.cache import AnalysisCache
from lskd_core.report.eta import _seed_tables, _teacher_seed
from lskd_core.report.markdown import md_table, section_status
from lskd_core.report.seed_stats import _ci, eta_over_seeds
from lskd_core.report.view import StudyView

__all__ = ["token_eta_section", "token_eta_markdown", "embedding_sets"]

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


def token_eta_section(view: StudyView, cache: AnalysisCache) -> dict:
    """Eq. 1 on decoder states per target token, lowest T -> each higher T, every alpha and seed."""
    split = _split(view)
    if len(view.temperatures) < 2:
        return {"status": "missing", "reason": "eta needs at least two temperatures"}
    ref_alpha = 0.0 if 0.0 in view.alphas else view.alphas[0]
    ref_model = view.teacher(ref_alpha)
    needed = [view.export(view.student(a, t, s), split) for a in view.alphas for t in view.temperatures
              for s in view.seeds]
    cfg_key = {k: view.config.get(k) for k in ("num_similar", "num_dissimilar", "feature_sets")}
    key = {"inputs": view.fingerprint(needed + [view.export(ref_model, split)]), "cfg": cfg_key, "v": 1}

    def compute() -> dict:
        ref = view.features(ref_model, split)
        if ref is None or ref.weight is None:
            return {"status": "missing", "missing_inputs": [view.export(ref_model, split)],
                    "reason": "the reference teacher's export (its output-embedding rows) is not done"}
        token_ids = list(ref.meta.get("token_ids") or [])
        names = list(ref.class_names or [str(t) for t in token_ids])
        k = len(names)
        for model in [view.student(a, t, s) for a in view.alphas for t in view.temperatures for s in view.seeds]:
            f = view.features(model, split)  # every export must hold the same classes (same data and settings)
            if f is not None and list(f.meta.get("token_ids") or []) != token_ids:
                raise ValueError(f"{view.export(model, split)} has other token classes than "
                                 f"{view.export(ref_model, split)}: the exports were made with different "
                                 "settings; re-run them")
        chosen = embedding_sets(np.asarray(ref.weight, dtype=np.float64), int(view.config.get("num_similar") or 4),
                                int(view.config.get("num_dissimilar") or 20), view.config.get("feature_sets"))
        sets = {"hierarchy": {}, "feature": chosen["sets"]}
        seed_tables: List[dict] = []
        missing: List[str] = []
        for a in view.alphas:
            for s in view.seeds:
                got, lacked = _seed_tables(view, a, split, s, view.temperatures[1:], sets, k)
                missing += lacked
                seed_tables += [dict(t, seed=s, teacher_seed=_teacher_seed(view, a, t["t2"], s)) for t in got]
        counts = list(ref.meta.get("token_counts") or [])
        return {"status": "ok" if not missing else ("partial" if seed_tables else "missing"),
                "missing_inputs": missing, "split": split, "t1": view.temperatures[0],
                "definition": DEFINITION, "reference_model": ref_model,
                "classes": [{"class": i, "token_id": int(token_ids[i]) if i < len(token_ids) else None,
                             "token": names[i], "count": int(counts[i]) if i < len(counts) else None,
                             "s1": chosen["sets"][i][0], "s2": chosen["sets"][i][1]} for i in range(k)],
                "feature_pct": chosen["pct"], "sentences": ref.meta.get("sentences"),
                "seed_tables": seed_tables, "seeds_with_features": sorted({t["seed"] for t in seed_tables}),
                "over_seeds": eta_over_seeds({"seed_tables": seed_tables})}

    return cache.get("token_eta", key, compute)


def _tok(name: str) -> str:
    return "`" + str(name).replace("`", "'").replace("|", "¦") + "`"


def token_eta_markdown(res: dict) -> List[str]:
    eta = res.get("token_eta") or {}
    md = ["## 3. Diffusion index on decoder states (an extension of the paper)\n", section_status(eta)]
    if not eta.get("over_seeds"):
        if eta.get("reason"):
            md.append(f"{eta['reason']}.\n")
        return md
    classes = eta["classes"]
    md.append(f"This section goes beyond the paper: it measures eta (Eq. 1) on translation, which the paper "
              f"does only on image classifiers. Definition: {eta['definition']}. Here: {len(classes)} token classes "
              f"from {eta.get('sentences')} sentences of the `{eta['split']}` split; S1 = the closest "
              f"{eta['feature_pct'][0]:.1f} %, S2 = the farthest {eta['feature_pct'][1]:.1f} % of the other "
              f"classes by the output embeddings of `{eta['reference_model']}`. eta_S1 < 0 (and eta_S2 > 0) "
              "means a token's states moved towards the states of its similar tokens relative to the dissimilar "
              "ones (systematic diffusion); the paper expects it for the LS teacher's students at high T.\n")
    rows = []
    main = next((o for o in eta["over_seeds"] if o["variant"] == "eq1"), None)
    for g in (main or {}).get("groups", []):
        s = g["summary"]
        rows.append([num(g["alpha"]), f"{num(g['t1'])} -> {num(g['t2'])}", _ci(s["eta_s1"], 3, True),
                     _ci(s["eta_s2"], 3, True), f"{100 * s['share_diffusion']:.0f} % of {s['runs']}",
                     f"{s['eta_s1']['n']} {s['eta_s1']['unit']}s"])
    md.append("Each run's eta averaged over the token classes, then mean [95 % interval] over the units "
              "(percent):\n")
    md.append(md_table(["teacher alpha", "T1 -> T2", "eta_S1", "eta_S2", "runs showing diffusion", "n"], rows) + "\n")
    shown = classes[:12]
    nm = {c["class"]: c["token"] for c in classes}
    srows = [[_tok(c["token"]), str(c["count"]), ", ".join(_tok(nm[i]) for i in c["s1"]),
              str(len(c["s2"]))] for c in shown]
    md.append(f"S1 of the {len(shown)} most frequent token classes (all classes and S2: results.json, "
              "`token_eta.classes`):\n")
    md.append(md_table(["token", "occurrences", "S1 (nearest output embeddings)", "size of S2"], srows) + "\n")
    return md
