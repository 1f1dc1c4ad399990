"""Table B.5: feature distillation + KD with an LS teacher (App. B, "Advanced KD methods").

A study with ``feature_kd = "overhaul"`` trains every student with Heo et al. (2019)'s overhaul
feature distillation added to the KD loss (the KD loss is its task loss, as in the paper). The
grid and the eta section then describe those students; this section puts their accuracy and eta
side by side per alpha x T, each with its 95 % interval over seeds (the numbers the verdict's
statistics computed, :mod:`lskd_core.statistics`), and :func:`scope_verdict` makes the verdict say
that its answer is for feature KD + KD. The paper's finding to compare with: with the LS teacher
the students degrade as T grows, with feature KD too.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

from lskd_core.jsonio import num
from lskd_core.report.markdown import fmt, md_table
from lskd_core.report.view import StudyView

__all__ = ["feature_kd_section", "feature_kd_markdown", "scope_verdict", "METHOD_NAMES"]

METHOD_NAMES = {"overhaul": "Heo et al. (2019)'s overhaul feature distillation (margin ReLU, partial L2, "
                            "pre-ReLU stage outputs, 1x1 conv + BN connectors)"}


def _interval(est: Optional[Mapping[str, Any]], nd: int = 2, signed: bool = False) -> str:
    if not est or est.get("estimate") is None:
        return "—"
    f = f"{{:{'+' if signed else ''}.{nd}f}}"
    if est.get("ci") is None:
        return f.format(est["estimate"]) + " (no interval)"
    lo, hi = est["ci"]
    return f"{f.format(est['estimate'])} [{f.format(lo)}, {f.format(hi)}]"


def _eta_groups(eta: Optional[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
    """eta over seeds for the report's main choice: hierarchy sets, train split, Eq. 1."""
    for o in (eta or {}).get("over_seeds", []) or []:
        if o.get("sets") == "hierarchy" and o.get("split") == "train" and o.get("variant") == "eq1":
            return list(o.get("groups", []))
    return []


def feature_kd_section(view: StudyView, res: Mapping[str, Any]) -> Dict[str, Any]:
    """Accuracy (mean [95 %], top-5 mean) and eta (lowest T -> T, mean [95 %]) per alpha x T."""
    cfg = view.config
    method = cfg.get("feature_kd")
    if not method:
        return {"status": "not-applicable", "reason": "the students were trained with KD only (feature_kd unset)"}
    analysis = (res.get("verdict") or {}).get("analysis") or {}
    grid = res.get("accuracy_grid") or {}
    intervals = {(c["alpha"], c["temperature"]): c for c in analysis.get("cells", [])}
    groups = {(g["alpha"], g["t2"]): g for g in _eta_groups(res.get("eta"))}
    t1 = min(view.temperatures) if view.temperatures else None
    cells = []
    for c in grid.get("cells", []):
        key = (c["alpha"], c["temperature"])
        stats = intervals.get(key)
        g = groups.get(key)
        cells.append({"alpha": c["alpha"], "temperature": c["temperature"], "n": c["n"],
                      "top1_mean": c["top1_mean"], "top5_mean": c.get("top5_mean"),
                      "top1_interval": stats["interval"] if stats else None,
                      "eta_from": t1,  # every cell's eta is against the lowest T: there, "(reference T)"
                      "eta_s1": g["summary"]["eta_s1"] if g else None,
                      "eta_s2": g["summary"]["eta_s2"] if g else None,
                      "share_diffusion": g["summary"].get("share_diffusion") if g else None})
    trends = {tr["alpha"]: tr.get("slope_per_ln_T") for tr in analysis.get("trends", [])}
    status = "ok" if cells and all(c["top1_interval"] for c in cells) else ("partial" if cells else "missing")
    return {"status": status, "method": method, "weight": cfg.get("feature_kd_weight"), "cells": cells,
            "teachers": grid.get("teachers", []), "trends": trends, "eta_from": t1,
            "eta_status": (res.get("eta") or {}).get("status", "missing")}


def _table(sec: Mapping[str, Any], value, teacher_row: bool = False) -> str:
    cells = sec["cells"]
    alphas = sorted({c["alpha"] for c in cells})
    temps = sorted({c["temperature"] for c in cells})
    rows = []
    if teacher_row:
        by_alpha = {t["alpha"]: t for t in sec.get("teachers", [])}
        rows.append(["teacher"] + [" / ".join(fmt(by_alpha.get(a, {}).get(k)) for k in ("top1", "top5"))
                                   for a in alphas])
    for t in temps:
        row = [f"T = {num(t)}"]
        for a in alphas:
            c = next(c for c in cells if c["alpha"] == a and c["temperature"] == t)
            row.append(value(c))
        rows.append(row)
    return md_table(["T \\ alpha"] + [f"alpha = {num(a)}" for a in alphas], rows)


def _accuracy(c: Mapping[str, Any]) -> str:
    if c["top1_mean"] is None:
        return "—"
    top1 = _interval(c["top1_interval"]) if c["top1_interval"] else fmt(c["top1_mean"])
    top5 = f" / {fmt(c['top5_mean'])}" if c.get("top5_mean") is not None else ""
    return f"{top1}{top5} (n = {c['n']})"


def _eta(c: Mapping[str, Any]) -> str:
    if c["eta_s1"] is None:
        return "—" if c["temperature"] != c.get("eta_from") else "(reference T)"
    share = c.get("share_diffusion")
    runs = f"; diffusion in {100 * share:.0f} % of runs" if share is not None else ""
    return f"{_interval(c['eta_s1'], 3, True)} / {_interval(c['eta_s2'], 3, True)}{runs}"


def feature_kd_markdown(res: Mapping[str, Any]) -> List[str]:
    sec = res.get("feature_kd") or {}
    if sec.get("status") in (None, "not-applicable"):
        return []
    method = METHOD_NAMES.get(sec["method"], sec["method"])
    weight = "the trainer's default weight" if sec.get("weight") is None else f"weight {sec['weight']:g}"
    md = ["## Feature distillation + KD (Table B.5)\n",
          f"Every student of this study was trained with {method}, {weight}, added to the KD loss at the "
          "cell's T (its task loss, as in the paper's Table B.5). The grid above and the eta section are "
          "therefore about feature KD + KD students. Paper: with an LS teacher, these students too degrade "
          "as T grows (systematic diffusion).\n"]
    if not sec.get("cells"):
        md.append("> Not available: no student finished yet.\n")
        return md
    md += ["Val top-1 mean [95 % interval over seeds] / top-5 mean (teachers: top-1 / top-5):\n",
           _table(sec, _accuracy, teacher_row=True) + "\n"]
    t1 = sec.get("eta_from")
    if any(c["eta_s1"] is not None for c in sec["cells"]):
        md += [f"eta_S1 / eta_S2 (%) from T = {num(float(t1 or 0))} to the row's T, mean [95 % interval over seeds] "
               "(hierarchy sets, train split, Eq. 1); diffusion = eta_S1 < 0 and eta_S2 > 0:\n",
               _table(sec, _eta) + "\n"]
    else:
        md.append(f"> eta not available ({sec.get('eta_status')}): it needs the students' feature exports "
                  "(analysis = true) and at least two temperatures.\n")
    slopes = [f"alpha = {num(a)}: {_interval(s, signed=True)}" for a, s in sorted(sec.get("trends", {}).items()) if s]
    if slopes:
        md.append("Top-1 slope per ln T [95 %]: " + "; ".join(slopes) + ".\n")
    if sec.get("status") == "partial":
        md.append("> Partial: some cells have no interval yet (unfinished students or one seed).\n")
    return md


def scope_verdict(verdict: Dict[str, Any], config: Mapping[str, Any]) -> Dict[str, Any]:
    """The verdict of a feature-KD study says, first, that its answer is for feature KD + KD."""
    method = config.get("feature_kd")
    if not method:
        return verdict
    note = (f"**Scope: feature distillation + KD.** The students were trained with "
            f"{METHOD_NAMES.get(method, method)} added to the KD loss (the paper's Table B.5 setting), so this "
            f"answer is for feature KD + KD, not for KD alone.")
    out = dict(verdict, scope="feature_kd+kd", feature_kd=method)
    out["text"] = note + "\n\n" + str(verdict.get("text", ""))
    return out
