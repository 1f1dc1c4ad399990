"""Section 3: the teachers' mean entropy against T (Table H.1) and entropy-matched temperature pairs."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np

from lskd_core.jsonio import num
from lskd_core.report.cache import AnalysisCache
from lskd_core.report.markdown import fmt, md_table, section_status
from lskd_core.report.view import StudyView

__all__ = ["entropy_section", "entropy_markdown"]


def entropy_section(view: StudyView, cache: AnalysisCache) -> dict:
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
        table = {num(a): {num(t): float(v) for t, v in smoothness.entropy_table(lg, temps).items()}
                 for a, lg in logits.items()}
        pairs = []
        base = 0.0 if 0.0 in logits else None
        if base is not None:
            for a in [x for x in logits if x != base]:
                for t in view.temperatures:
                    target = float(smoothness.mean_entropy(logits[a], t))
                    entry: Dict[str, Any] = {"alpha": a, "temperature": t, "entropy": target, "matched_alpha": base}
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


def entropy_markdown(res: dict) -> List[str]:
    ent = res["entropy"]
    head = ["## 3. Teacher smoothness (Table H.1)\n", section_status(ent)]
    return head + (_entropy_tables(ent, res.get("figures", {}).get("entropy")) if ent.get("table") else [])


def _entropy_tables(ent: dict, figure: Optional[str]) -> List[str]:
    alphas = list(ent["table"])
    rows = [[f"T = {num(t)}"] + [fmt(ent["table"][a].get(num(t)), 3) for a in alphas] for t in ent["temperatures"]]
    md = [f"Mean entropy (nats) of the teachers' softmax(z / T) over their train split; maximum "
          f"ln K = {ent['max_entropy']:.3f}.\n", md_table(["", *[f"alpha = {a}" for a in alphas]], rows) + "\n"]
    if ent.get("pairs"):
        prow = []
        for p in ent["pairs"]:
            mt = p.get("matched_temperature")
            prow.append([f"alpha = {num(p['alpha'])}, T = {num(p['temperature'])}", fmt(p["entropy"], 3),
                         f"alpha = {num(p['matched_alpha'])}, T = {mt:.4f}" if mt else f"— ({p.get('note', '')})"])
        md.append("Entropy-matched pairs (App. H): the alpha = 0 teacher's temperature giving the same mean "
                  "entropy as the LS teacher at T. Comparing students at such pairs separates the effect of "
                  "smoothness from that of LS (the paper finds smoothness alone does not explain KD).\n")
        md.append(md_table(["LS teacher", "mean entropy", "matched by"], prow) + "\n")
    if figure:
        md.append(f"![teacher entropy]({figure})\n")
    return md
