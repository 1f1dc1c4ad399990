"""Section 5: the teachers' soft outputs (Fig. 2): mean softmax(z / T) over one class's train samples."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from lskd_core.jsonio import jsonable, num
from lskd_core.report.cache import AnalysisCache
from lskd_core.report.markdown import md_table, section_status
from lskd_core.report.view import StudyView

__all__ = ["profile_section", "profile_markdown"]


def profile_section(view: StudyView, cache: AnalysisCache, out_dir: Path, sets: Optional[dict]) -> dict:
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
    pngs = {a: out_dir / f"fig2_soft_output_a{num(a)}.png" for a in view.alphas}
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
                prof.update(alpha=a, title=f"teacher alpha = {num(a)}, T = {num(t)}",
                            negligible_classes=int(smoothness.count_negligible(mean_probs, cls)))
                panel.append(prof)
            smoothness.plot_soft_output_profiles(panel, names, pngs[a])
            figures[num(a)] = pngs[a].name
            profiles += panel
        if not profiles:
            return {"status": "missing", "reason": "no teacher train export with logits"}
        main = figures[max(figures, key=float)]
        return {"status": "ok" if len(figures) == len(view.alphas) else "partial", "png": main, "figures": figures,
                "class": cls, "class_name": names[cls] if cls < len(names) else str(cls), "similar": similar,
                "profiles": jsonable(profiles)}

    return cache.get("soft_output", key, compute, files=list(pngs.values()))


def profile_markdown(res: dict, names: List[str]) -> List[str]:
    prof = res["soft_output"]
    md = ["## 5. Soft outputs of the teachers (Fig. 2)\n", section_status(prof)]
    if not prof.get("png"):
        return md

    def nm(c: int) -> str:
        return names[c] if c < len(names) else str(c)

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
    md.append(md_table(["teacher", "true + similar classes (mean prob.)",
                        "classes >= 100x less likely than the runner-up (App. E)"], rows) + "\n")
    return md
