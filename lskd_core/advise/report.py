"""The advice: recommendation, confidence, indistinguishable cells, compute, and the figures.

Confidence comes from :mod:`lskd_core.statistics` on the seeds of the cells trained to the full
schedule (the finalists): the cells that cannot be told apart from the best
(:func:`~lskd_core.statistics.could_be_best`, Holm-controlled, one-sided paired t over seeds), the
pick's mean with its 95 % interval, and the pick against the runner-up
(:func:`~lskd_core.statistics.cell_difference`, :func:`~lskd_core.statistics.evidence_level`).
A finalist with one seed cannot be excluded (its spread is unknown): that is said, not hidden.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from lskd_core import statistics as st
from lskd_core.advise.allocation import Allocation
from lskd_core.advise.posterior import prob_best
from lskd_core.advise.signals import pooled_seed_std, rank_cells
from lskd_core.jsonio import num

__all__ = ["summarize", "markdown", "plot_trajectories", "plot_eta"]

#: a rival with at least this probability of being the grid's best is named in the advice
RIVAL = 0.05

Cell = Tuple[float, float]


def _name(cell: Sequence[float]) -> str:
    return f"(alpha = {num(cell[0])}, T = {num(cell[1])})"


def _confidence(finals: Mapping[Cell, Mapping[int, float]], pick: Cell, runner_up: Optional[Cell]) -> Dict[str, Any]:
    obs = [st.Obs(alpha=c[0], temperature=c[1], seed=s, value=v) for c, per in finals.items() for s, v in per.items()]
    cells = sorted({(o.alpha, o.temperature) for o in obs})
    out: Dict[str, Any] = {"finalists": [list(c) for c in cells], "n_seeds": {f"{num(c[0])},{num(c[1])}": len(finals[c])
                                                                             for c in cells}}
    if pick in finals and finals[pick]:
        out["pick_interval"] = st.mean_estimate(list(finals[pick].values()))
    if len(cells) >= 2:
        best = st.could_be_best(obs)
        out["could_be_best"] = best
        out["indistinguishable"] = best["set"]
    else:
        out["indistinguishable"] = [list(c) for c in cells]
    if runner_up is not None and runner_up in finals and finals[runner_up] and pick in finals and finals[pick]:
        diff = st.cell_difference(obs, pick, runner_up)
        out["vs_runner_up"] = dict(diff, level=st.evidence_level(diff, +1))
    # "clear" needs a rival at the full schedule (a lone finalist was compared with nobody there) and no
    # other finalist that could still be the best (a finalist with one seed can never be excluded)
    alone = len(cells) >= 2 and out["indistinguishable"] == [list(pick)]
    out["level"] = st.CLEAR if alone else st.NOT_SHOWN
    return out


def summarize(alloc: Allocation, signals: Mapping[Cell, Mapping[str, Any]], epochs: int,
              train_samples: Optional[int], cpu: Mapping[str, float],
              tiebreak: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Everything advice.json holds (JSON-able). ``tiebreak``: what :func:`~lskd_core.advise.tiebreak.settle`
    did (its seeds are already in ``alloc``'s curves)."""
    finals = {r.cell: {s: c[epochs - 1] for s, c in r.curves.items() if len(c) >= epochs} for r in alloc.cells}
    finals = {c: v for c, v in finals.items() if v}
    total_seeds = alloc.levels[-1].seeds  # the ladder ends with every seed of the study
    post = prob_best({c: [v[s] for s in sorted(v)] for c, v in finals.items()}, total_seeds) if finals else None
    noise = pooled_seed_std({c: list(v.values()) for c, v in finals.items()})
    recs = [{"alpha": r.cell[0], "temperature": r.cell[1], "level": r.level, "value": r.value,
             "stopped": r.stopped, "seeds": len(finals.get(r.cell, {})),
             "mean": post["means"].get(r.cell) if post else None,
             "p_best": post["p_best"].get(r.cell) if post else None,
             "diffusion_share": signals.get(r.cell, {}).get("diffusion_share"),
             "teacher_entropy": signals.get(r.cell, {}).get("teacher_entropy")} for r in alloc.cells if r.level >= 0]
    ranking = rank_cells(recs, noise)
    moved = _moved(ranking)
    if post is not None:  # the probability decides (a stable sort: equal probabilities keep the signals' order)
        ranking.sort(key=lambda r: -(r["p_best"] if r["p_best"] is not None else -1.0))
        moved = False
    pick = (ranking[0]["alpha"], ranking[0]["temperature"])
    full = [(r["alpha"], r["temperature"]) for r in ranking if (r["alpha"], r["temperature"]) in finals]
    runner_up = next((c for c in full if c != pick), None)
    conf = _confidence(finals, pick, runner_up)
    conf["probability"] = _probability(post, pick, alloc, finals)
    spent = alloc.spent
    return {
        "recommendation": {"alpha": pick[0], "temperature": pick[1], "value": ranking[0]["value"],
                           "level": ranking[0]["level"], "moved_by_signals": moved,
                           "p_best": conf["probability"]["p_best"]},
        "confidence": conf,
        "noise_seed_std": noise,
        "ranking": ranking,
        "tiebreak": dict(tiebreak, posterior=None) if tiebreak else None,
        "compute": {"epoch_runs": spent, "grid_epoch_runs": alloc.grid, "fraction": spent / alloc.grid,
                    "train_samples": train_samples,
                    "sample_epochs": None if train_samples is None else spent * train_samples,
                    "grid_sample_epochs": None if train_samples is None else alloc.grid * train_samples,
                    "budget": alloc.budget, **cpu,
                    "note": "teachers and caches are shared with the grid and not counted; CPU seconds are "
                            "measured (process start-up and feature exports included)"},
        "signals": {f"{num(c[0])},{num(c[1])}": dict(v) for c, v in signals.items()},
        "allocation": alloc.to_dict(),
    }


def _probability(post: Optional[Mapping[str, Any]], pick: Cell, alloc: Allocation,
                 finals: Mapping[Cell, Any]) -> Dict[str, Any]:
    """P(the pick is the grid's best), and what it covers."""
    not_covered = [list(r.cell) for r in alloc.cells if r.cell not in finals]
    if post is None:
        return {"p_best": None, "why": "no cell has two seeds trained to the full schedule: no estimate of the "
                                       "seed spread", "not_covered": not_covered}
    return {"p_best": post["p_best"].get(pick), "pick": f"{num(pick[0])},{num(pick[1])}", "target": f"the grid mean over all {post['total_seeds']} seeds",
            "per_cell": {f"{num(c[0])},{num(c[1])}": p for c, p in post["p_best"].items()},
            "sigma": post["sigma"], "df": post["df"], "draws": post["draws"], "prior": post["prior"],
            "effective_draws": post["effective_draws"], "not_covered": not_covered,
            "method": "posterior of the cells' grid means (normal seeds, pooled seed sd, normal prior on the cell "
                      "means with a uniform spread), Monte Carlo share of draws where the cell is the largest"}


def _moved(ranking: Sequence[Mapping[str, Any]]) -> bool:
    """Did a signal put the first cell ahead of a more accurate cell of its tie group?"""
    first = ranking[0]
    return any(r["tie_group"] == first["tie_group"] and r["level"] == first["level"] and r["value"] > first["value"]
               for r in ranking[1:])


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def _probability_line(prob: Mapping[str, Any]) -> str:
    if prob.get("p_best") is None:
        return f"Probability that this is the grid's best cell: not computed ({prob.get('why', 'no finalist')})."
    line = (f"Probability that this is the grid's best cell ({prob['target']}, as the full study ranks cells): "
            f"**{prob['p_best']:.2f}** (posterior from the seeds trained here, pooled seed sd {prob['sigma']:.2f} "
            f"on {prob['df']} df; calibrated on simulated grids, docs/advise.md).")
    rivals = sorted(((p, c) for c, p in prob["per_cell"].items() if c != prob["pick"] and p >= RIVAL), reverse=True)
    if rivals:
        line += (" Not decided at this budget: " + ", ".join(f"(alpha, T = {c}) {p:.2f}" for p, c in rivals)
                 + " could also be the grid's best; the seeds that would decide it need a larger --budget.")
    if prob.get("not_covered"):
        line += (f" Not covered: {len(prob['not_covered'])} cell(s) never trained to the full schedule "
                 "(stopped on early epochs).")
    return line


def _tiebreak_line(tb: Mapping[str, Any]) -> str:
    why = {"decided": f"the leader reached the target probability {tb['target']:g}",
           "budget": "the budget was spent", "seed cap": f"the contenders reached the cap of {tb['max_seeds']} seeds",
           "no rival": "no rival left with a chance", "no finalist": "no finalist"}.get(tb["stopped"], tb["stopped"])
    if not tb["added"]:
        return f"Tie-break: no seeds added ({why})."
    per: Dict[str, int] = {}
    for e in tb["added"]:
        key = _name((e["alpha"], e["temperature"]))
        per[key] = per.get(key, 0) + 1
    return (f"Tie-break: {len(tb['added'])} more seed(s) ({tb['epoch_runs']} epoch-runs) on "
            + ", ".join(f"{k} +{v}" for k, v in per.items())
            + f"; caps: the budget ({tb['cap_epoch_runs']:g} epoch-runs in all) and {tb['max_seeds']} seeds per cell; "
            f"stopped because {why}.")


def markdown(summary: Mapping[str, Any]) -> str:
    rec, conf, comp = summary["recommendation"], summary["confidence"], summary["compute"]
    pick = (rec["alpha"], rec["temperature"])
    lines = [f"# Advice: distil at {_name(pick)}", ""]
    interval = conf.get("pick_interval")
    if interval and interval.get("ci"):
        lo, hi = interval["ci"]
        lines.append(f"Val top-1 {interval['estimate']:.2f} % (95 % interval {lo:.2f} to {hi:.2f}, "
                     f"{interval['n']} seeds).")
    else:
        lines.append(f"Val top-1 {rec['value']:.2f} % at its last level (one seed: no interval).")
    lines.append(_probability_line(conf["probability"]))
    tb = summary.get("tiebreak")
    if tb:
        lines.append(_tiebreak_line(tb))
    others = [c for c in conf["indistinguishable"] if tuple(c) != pick]
    n_fin = len(conf["finalists"])
    if n_fin < 2:
        lines.append("Confidence: not shown; the pick is the only cell trained to the full schedule, so no other "
                     "cell was compared with it at equal fidelity (raise --budget for a rival with seeds).")
    elif conf["level"] == st.CLEAR:
        lines.append(f"Confidence: clear among the {n_fin} finalist(s) (the cells trained to the full schedule): "
                     "no other finalist could be the best (Holm-controlled, 95 %).")
    else:
        lines.append(f"Confidence: {conf['level']}; finalists that cannot be told apart from the best: "
                     + (", ".join(_name(c) for c in others) or "none besides the pick") + ".")
    lines.append("The cells stopped earlier were compared on fewer epochs or seeds only: early values can rank "
                 "cells differently from their final accuracy, and no interval covers that.")
    vs = conf.get("vs_runner_up")
    if vs:
        ci = vs.get("ci")
        lines.append(f"Against the runner-up {_name(vs['cells'][1])}: {vs['estimate']:+.2f} points"
                     + (f" (95 % interval {ci[0]:+.2f} to {ci[1]:+.2f}, {vs['method']})" if ci else
                        " (no interval: a cell with one seed)") + ".")
    if rec["moved_by_signals"]:
        lines.append("The signals (diffusion share, teacher entropy) chose the pick within a tie group "
                     f"(accuracies within the seed std {summary['noise_seed_std']:.2f}).")
    lines += ["", f"Compute: {comp['epoch_runs']} of {comp['grid_epoch_runs']} epoch-runs of the full grid "
              f"({comp['fraction']:.3f}); measured CPU {comp.get('cpu_s_train', 0):.0f} s training, "
              f"{comp.get('cpu_s_exports', 0):.0f} s feature exports.", "",
              "| rank | alpha | T | level | value | stopped | final seeds | mean | P(grid best) | diffusion share "
              "| teacher entropy | tie group |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(summary["ranking"], 1):
        p = r.get("p_best")
        lines.append(f"| {i} | {num(r['alpha'])} | {num(r['temperature'])} | {r['level']} | {_pct(r['value'])} | "
                     f"{r['stopped']} | {r.get('seeds', '-')} | {_pct(r.get('mean'))} | "
                     f"{'-' if p is None else f'{p:.3f}'} | {_pct(r['diffusion_share'])} | "
                     f"{_pct(r['teacher_entropy'])} | {r['tie_group']} |")
    lines += ["", "Figures: `trajectories.png` (each cell's val top-1 over its epoch-runs, x = stopped), "
              "`eta_over_epochs.png` (early eta against the lowest T). Log: `allocation.jsonl`.", ""]
    return "\n".join(lines)


def plot_trajectories(alloc: Allocation, epochs: int, path: Path) -> None:
    """Each cell's val top-1 against the epoch-runs it received (seeds one after another), with a
    marker where it stopped and the levels' boundaries."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for rec in alloc.cells:
        color = None
        xs: List[float] = []
        ys: List[float] = []
        for i, (_, curve) in enumerate(sorted(rec.curves.items())):  # one line per seed, one colour per cell
            xs = [i * epochs + e + 1 for e in range(len(curve))]
            ys = list(curve)
            line, = ax.plot(xs, ys, marker=".", color=color,
                            label=None if color else f"a={num(rec.cell[0])}, T={num(rec.cell[1])}")
            color = line.get_color()
        if not xs:
            continue
        mark = {"pruned": "x", "budget": "s", "complete": "*"}.get(rec.stopped, "o")
        ax.plot([xs[-1]], [ys[-1]], marker=mark, markersize=11, color=color, linestyle="none")
    for lv in alloc.levels:
        ax.axvline((lv.seeds - 1) * epochs + lv.epochs, color="0.85", linewidth=0.8, zorder=0)
    ax.set_xlabel("epoch-runs of the cell (seed after seed)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("cells' trajectories; x pruned, square stopped by the budget, star complete")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_eta(signals: Mapping[Cell, Mapping[str, Any]], path: Path) -> None:
    """Mean eta_S1 / eta_S2 over the target classes against the epoch, per cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    any_line = False
    for cell, sig in sorted(signals.items()):
        pts = [(e["epoch"], e["eta_s1"], e["eta_s2"]) for e in sig.get("eta", []) if e.get("eta_s1") is not None]
        if not pts:
            continue
        any_line = True
        label = f"a={num(cell[0])}, T={num(cell[1])} vs T={num(sig['eta_reference_T'])}"
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=label)
    for ax, name in zip(axes, ("eta_S1 (%)", "eta_S2 (%)")):
        ax.axhline(0, color="0.6", linewidth=0.8)
        ax.set_xlabel("epoch (first seed)")
        ax.set_ylabel(name)
    axes[0].set_title("diffusion: S1 closer (< 0) ...")
    axes[1].set_title("... and S2 farther (> 0)")
    if any_line:
        axes[0].legend(fontsize=7)
    else:
        axes[0].text(0.5, 0.5, "no eta: no cell shares epochs with the lowest-T cell", ha="center",
                     transform=axes[0].transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
