"""Section 5: the teachers' soft outputs (Fig. 2): mean softmax(z / T) over one class's train samples.

Compute: :func:`profile_section` (per teacher: :func:`teacher_profiles`), drawing one figure per
teacher. Render: :func:`profile_markdown`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from lskd_core.jsonio import jsonable, num
from lskd_core.report.cache import AnalysisCache
from lskd_core.report.markdown import md_table, section_status
from lskd_core.report.view import StudyView

__all__ = ["profile_section", "profile_markdown", "profile_class", "teacher_profiles"]


def profile_class(config: dict) -> int:
    """The class whose soft outputs Fig. 2 shows: ``profile_class``, else the first projection class, else 0."""
    cls = config.get("profile_class")
    if cls is None:
        ids = config.get("projection_classes") or []
        cls = ids[0] if ids else 0
    return int(cls)


def _hierarchy_similar(sets: Optional[dict], cls: int) -> Optional[List[int]]:
    """The hierarchy's S1 of ``cls`` from eta's sets, or None (the teacher's ranking decides then)."""
    if sets and str(cls) in sets.get("hierarchy", {}):
        return list(sets["hierarchy"][str(cls)][0])
    return None


def teacher_profiles(logits: np.ndarray, labels: np.ndarray, cls: int, temps: Sequence[float],
                     similar: Optional[List[int]], alpha: float) -> List[Dict[str, Any]]:
    """One teacher's mean soft output on ``cls``'s samples at each T, the same classes on every panel
    (``similar``, else the classes the teacher ranks next at the first T), and how many classes are
    negligible (App. E)."""
    from lskd_core import smoothness

    k = logits.shape[1]
    n_sim = len(similar) if similar else 2
    sim = similar  # fixed after the first T so that every panel shows the same classes
    panel = []
    for t in temps:
        prof = dict(smoothness.soft_output_profile(logits, labels, cls, t, similar=sim, num_similar=n_sim,
                                                   num_others=max(1, k - 1 - n_sim)))
        sim = [c for c, g in zip(prof["classes"], prof["groups"]) if g == "similar"]
        mean_probs = smoothness.class_mean_probs(logits, labels, cls, t)
        prof.update(alpha=alpha, title=f"teacher alpha = {num(alpha)}, T = {num(t)}",
                    negligible_classes=int(smoothness.count_negligible(mean_probs, cls)))
        panel.append(prof)
    return panel


def _compute(view: StudyView, cls: int, temps: List[float], similar: Optional[List[int]],
             pngs: Dict[float, Path]) -> dict:
    """Every teacher's profiles (the LS teacher first, as in Fig. 2), one figure per teacher."""
    names = view.class_names() or [str(i) for i in range(view.num_classes() or 0)]
    profiles: List[Dict[str, Any]] = []
    figures = {}
    for a in reversed(view.alphas):
        f = view.features(view.teacher(a), "train")
        if f is None or f.logits is None:
            continue
        panel = teacher_profiles(np.asarray(f.logits, dtype=np.float32), f.labels, cls, temps, similar, a)
        _plot(panel, names, pngs[a])
        figures[num(a)] = pngs[a].name
        profiles += panel
    if not profiles:
        return {"status": "missing", "reason": "no teacher train export with logits"}
    main = figures[max(figures, key=float)]
    return {"status": "ok" if len(figures) == len(view.alphas) else "partial", "png": main, "figures": figures,
            "class": cls, "class_name": names[cls] if cls < len(names) else str(cls), "similar": similar,
            "profiles": jsonable(profiles)}


def profile_section(view: StudyView, cache: AnalysisCache, out_dir: Path, sets: Optional[dict]) -> dict:
    """Fig. 2: mean soft output of each teacher on the profile class's train samples at each T.

    One PNG per teacher (``fig2_soft_output_a<alpha>.png``): the LS teacher's is the paper's Fig. 2,
    the alpha = 0 teacher's is the contrast. The similar classes are the hierarchy's S1 of the class
    (same classes at every T, as Fig. 2's two panels), else the classes the teacher ranks next at
    the first T.
    """
    cls = profile_class(view.config)
    temps = [float(t) for t in view.config.get("profile_temperatures") or [1.0, 2.0]]
    needed = [view.export(view.teacher(a), "train") for a in view.alphas]
    pngs = {a: out_dir / f"fig2_soft_output_a{num(a)}.png" for a in view.alphas}
    similar = _hierarchy_similar(sets, cls)
    key = {"cls": cls, "temps": temps, "similar": similar, "inputs": view.fingerprint(needed), "v": 3}
    return cache.get("soft_output", key, lambda: _compute(view, cls, temps, similar, pngs),
                     files=list(pngs.values()))


# ------------------------------------------------------------------------------------------------
# render
# ------------------------------------------------------------------------------------------------
def _plot(panel: List[Dict[str, Any]], names: List[str], png: Path) -> None:
    """One teacher's figure: a panel per T."""
    from lskd_core import smoothness

    smoothness.plot_soft_output_profiles(panel, names, png)


def _figure_lines(prof: dict) -> List[str]:
    """The teachers' figures, the LS teacher (highest alpha) first."""
    return [f"Teacher alpha = {a_txt}:\n\n![soft output profile, alpha = {a_txt}]({png})\n"
            for a_txt, png in sorted(prof.get("figures", {}).items(), key=lambda kv: -float(kv[0]))]


def _table(prof: dict, names: List[str]) -> str:
    """A row per (teacher, T): the true and similar classes' mean probabilities, the negligible count."""
    def nm(c: int) -> str:
        return names[c] if c < len(names) else str(c)

    rows = []
    for p in prof["profiles"]:
        cls_probs = ", ".join(f"{nm(c)} {pr:.3f}" for c, pr, gr in zip(p["classes"], p["probs"], p["groups"])
                              if gr != "other")
        rows.append([p["title"], cls_probs, p.get("negligible_classes")])
    return md_table(["teacher", "true + similar classes (mean prob.)",
                     "classes >= 100x less likely than the runner-up (App. E)"], rows) + "\n"


def profile_markdown(res: dict, names: List[str]) -> List[str]:
    """Section 5 of report.md from ``res["soft_output"]``."""
    prof = res["soft_output"]
    md = ["## 5. Soft outputs of the teachers (Fig. 2)\n", section_status(prof)]
    if not prof.get("png"):
        return md
    md.append(f"Mean softmax(z / T) of each teacher over the train samples of **{prof['class_name']}**: the "
              "true class, its semantically similar classes, then the others. Raising T brings the similar "
              "classes' probabilities closer to the true class's, which pulls the student's features of "
              f"{prof['class_name']} towards them (Sec. 4).\n")
    return md + _figure_lines(prof) + [_table(prof, names)]
