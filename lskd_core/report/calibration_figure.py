"""Reliability diagrams (equal-mass bins), one figure per teacher alpha: the teacher and its students
at every T (the grid's variant, the analysis seed), against the diagonal of perfect calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Dict

from lskd_core.jsonio import num

__all__ = ["plot_reliability"]


def plot_reliability(sec: dict, seed: int, out_dir: Path) -> Dict[str, str]:
    """Write ``reliability_a{alpha}.png`` per teacher alpha; return {alpha: file name}."""
    from matplotlib.figure import Figure

    out: Dict[str, str] = {}
    for teacher in sec["teachers"]:
        alpha = teacher["alpha"]
        fig = Figure(figsize=(4.6, 4.2), dpi=110, layout="constrained")
        ax = fig.subplots()
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
        rel = teacher["runs"][0]["reliability"]
        ax.plot(rel["confidence"], rel["accuracy"], marker="s", color="black", label=f"teacher alpha = {num(alpha)}")
        for cell in sec["students"]:
            if cell["arm"] != sec["grid_arm"] or cell["alpha"] != alpha:
                continue
            run = next((r for r in cell["runs"] if r["seed"] == seed), cell["runs"][0])
            r = run["reliability"]
            ax.plot(r["confidence"], r["accuracy"], marker="o", markersize=3,
                    label=f"student T = {num(cell['temperature'])} (seed {run['seed']})")
        ax.set_xlabel("confidence (max probability, bin mean)")
        ax.set_ylabel("accuracy (bin)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"Reliability, teacher alpha = {num(alpha)} (15 equal-mass bins)", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        name = f"reliability_a{num(alpha)}.png"
        fig.savefig(out_dir / name)
        out[num(alpha)] = name
    return out
