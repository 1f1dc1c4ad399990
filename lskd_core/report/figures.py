"""The report's own figures: student score against T, and the teachers' entropy against T.
(Fig. 1 and Fig. 2 are drawn by their sections.)"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lskd_core.jsonio import num
from lskd_core.study.tasks import TaskBackend

__all__ = ["plot_accuracy", "plot_entropy"]


def plot_accuracy(grid: dict, png: Path, task: TaskBackend) -> Optional[str]:
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
        line = ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"students, teacher alpha = {num(a)}")
        t = next((t for t in grid["teachers"] if t["alpha"] == a), None)
        tv = (t or {}).get(task.teacher_main_field)
        if tv is not None:
            ax.axhline(tv, linestyle="--", linewidth=1, color=line[0].get_color(), label=f"teacher alpha = {num(a)}")
    ax.set_xticks(range(len(temps)), [num(t) for t in temps])
    ax.set_xlabel("KD temperature T")
    ax.set_ylabel(task.axis_label)
    ax.set_title("Student accuracy vs T (mean ± std over seeds)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.savefig(png)
    return png.name


def plot_entropy(entropy: dict, png: Path) -> Optional[str]:
    from matplotlib.figure import Figure

    if entropy.get("status") not in ("ok", "partial"):
        return None
    fig = Figure(figsize=(5.0, 3.5), dpi=110, layout="constrained")
    ax = fig.subplots()
    for a, row in entropy["table"].items():
        ts = sorted(float(t) for t in row)
        ax.plot(ts, [row[num(t)] for t in ts], marker="o", label=f"teacher alpha = {a}")
    ax.axhline(entropy["max_entropy"], color="grey", linestyle=":", label="ln K (uniform)")
    ax.set_xscale("log")
    ts_all = sorted({float(t) for row in entropy["table"].values() for t in row})
    ax.set_xticks(ts_all, [num(t) for t in ts_all])
    ax.minorticks_off()
    ax.set_xlabel("temperature T")
    ax.set_ylabel("mean entropy (nats)")
    ax.set_title("Teacher target smoothness (Table H.1)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(png)
    return png.name
