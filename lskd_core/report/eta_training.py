"""Section "Diffusion during training": eta (Eq. 1) against the epoch, from the students' own logs.

With ``eta_during_training`` every T > T_min student logs, after each epoch, eta between its
features and the final T_min student's of the same (alpha, seed) on the val samples
(``vision_plugin.train --eta-reference``; the record is the ``eta`` object of each epoch line of
its ``metrics.jsonl``, docs/formats.md). This section averages eta_S1, eta_S2 and the share of
diffusing target classes over seeds per (alpha, T, epoch) and draws them against the epoch. A
study whose students logged no eta gets no section.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from lskd_core.jsonio import num
from lskd_core.report.markdown import fmt, md_table
from lskd_core.report.view import StudyView

__all__ = ["eta_training_section", "eta_training_markdown", "epoch_etas", "plot_eta_training"]

PNG = "eta_during_training.png"


def epoch_etas(metrics: Path) -> Dict[int, Dict[str, Any]]:
    """``{epoch: eta record}`` from one run's metrics.jsonl (later lines win; unreadable lines and
    records without means are left out)."""
    out: Dict[int, Dict[str, Any]] = {}
    try:
        lines = metrics.read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        eta = rec.get("eta") if isinstance(rec, dict) else None
        if isinstance(eta, dict) and isinstance(rec.get("epoch"), int) and eta.get("eta_s1") is not None \
                and eta.get("eta_s2") is not None:
            out[int(rec["epoch"])] = eta
    return out


def _mean(values: List[Optional[float]]) -> Optional[float]:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _curves(by_cell: Dict[Tuple[float, float], Dict[int, List[Dict[str, Any]]]]) -> List[Dict[str, Any]]:
    curves = []
    for (alpha, t), epochs in sorted(by_cell.items()):
        points = [{"epoch": e, "seeds": len(recs), "eta_s1": _mean([r["eta_s1"] for r in recs]),
                   "eta_s2": _mean([r["eta_s2"] for r in recs]), "share": _mean([r.get("share") for r in recs])}
                  for e, recs in sorted(epochs.items())]
        curves.append({"alpha": alpha, "temperature": t, "points": points})
    return curves


def eta_training_section(view: StudyView, out: Path) -> Dict[str, Any]:
    """Mean over seeds of the logged eta per (alpha, T, epoch), and the figure (``png``)."""
    by_cell: Dict[Tuple[float, float], Dict[int, List[Dict[str, Any]]]] = {}
    runs = []
    for run_id, run in sorted(view.runs.items()):
        info = run.get("info") or {}
        if run.get("kind") != "student" or run_id not in view.results or "temperature" not in info:
            continue
        etas = epoch_etas(view.run_dir(run_id) / "metrics.jsonl")
        if not etas:
            continue
        runs.append(run_id)
        cell = (float(info["alpha"]), float(info["temperature"]))
        for epoch, rec in etas.items():
            by_cell.setdefault(cell, {}).setdefault(epoch, []).append(rec)
    if not by_cell:
        return {"status": "not-applicable", "reason": "no student logged eta during training "
                "(eta_during_training = false)"}
    sec: Dict[str, Any] = {"status": "ok", "curves": _curves(by_cell), "runs": runs,
                           "reference_T": min(view.temperatures)}
    try:
        sec["png"] = plot_eta_training(sec["curves"], out / PNG)
    except Exception as exc:  # a figure failing must not lose the report
        sec["figure_error"] = str(exc)
    return sec


def plot_eta_training(curves: List[Dict[str, Any]], png: Path) -> Optional[str]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 3.4), dpi=110, layout="constrained")
    axes = fig.subplots(1, 2, sharex=True)
    for ax, key, title in ((axes[0], "eta_s1", "eta_S1 (similar classes)"),
                           (axes[1], "eta_s2", "eta_S2 (dissimilar classes)")):
        for c in curves:
            pts = [p for p in c["points"] if p[key] is not None]
            ax.plot([p["epoch"] + 1 for p in pts], [p[key] for p in pts], marker="o", markersize=3,
                    label=f"alpha = {num(c['alpha'])}, T = {num(c['temperature'])}")
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("epochs trained")
        ax.set_ylabel("eta (%), mean over seeds")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.savefig(png)
    return png.name


def eta_training_markdown(res: dict) -> List[str]:
    sec = res.get("eta_training") or {}
    if sec.get("status") != "ok":
        return []
    md = ["## Diffusion during training\n",
          f"eta (Eq. 1, percent) of each T > {num(sec['reference_T'])} student against the final "
          f"T = {num(sec['reference_T'])} student of the same alpha and seed, on the val samples, logged by the "
          "trainer after every epoch (`eta_during_training`; mean over the target classes, then over seeds). "
          "eta_S1 < 0 and eta_S2 > 0: the student's classes diffuse towards the similar ones; 'share': "
          "the target classes that do.\n"]
    if sec.get("png"):
        md.append(f"![eta during training]({sec['png']})\n")
    rows = []
    for c in sec["curves"]:
        first, last = c["points"][0], c["points"][-1]
        rows.append([num(c["alpha"]), num(c["temperature"]), str(last["seeds"]),
                     f"{fmt(first['eta_s1'], 3)} / {fmt(first['eta_s2'], 3)}",
                     f"{last['epoch'] + 1}", fmt(last["eta_s1"], 3), fmt(last["eta_s2"], 3), fmt(last["share"], 2)])
    md.append(md_table(["alpha", "T", "seeds", "after epoch 1: eta_S1 / eta_S2", "epochs", "eta_S1",
                        "eta_S2", "share"], rows))
    md.append("")
    return md
