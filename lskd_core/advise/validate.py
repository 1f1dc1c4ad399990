"""Compare the advice with the full grid of the same study: ``python -m lskd_core.advise.validate``.

Reads ``<study>/advise/advice.json`` and the grid's finished students (``<study>/runs/``, the
study's own runs: same teachers, caches, data and seeds) and prints one JSON object: the advisor's
pick, the grid's best cell, the regret (grid mean of the best minus the grid mean of the pick, in
points and in units of the grid's pooled seed std), Spearman's rank correlation
(:func:`scipy.stats.spearmanr`) between the advisor's final ranking and the grid's means, and the
compute ratio (epoch-runs; also measured seconds: the advisor's segment and export CPU seconds, and
the grid students' own wall time, which leaves out process start-up).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from lskd_core.jsonio import BadJson, read_json_object
from lskd_core.study.config import load_config
from lskd_core.study.plan import build_plan, run_dir

__all__ = ["compare", "main"]

Cell = Tuple[float, float]


def grid_values(cfg: Any, study: Path) -> Tuple[Dict[Cell, List[float]], float]:
    """Per cell the grid's final val top-1 of every finished seed, and the students' wall seconds."""
    out: Dict[Cell, List[float]] = {}
    wall = 0.0
    for run in build_plan(cfg):
        if run.kind != "student" or "temperature" not in run.info:
            continue
        try:
            res = read_json_object(run_dir(study, run.run_id) / "result.json")
        except BadJson:
            res = None
        if not res or res.get("status") != "done":
            continue
        cell = (float(run.info["alpha"]), float(run.info["temperature"]))
        out.setdefault(cell, []).append(float(res["val_acc1"]))
        wall += float(res.get("wall_time_s") or 0.0)
    return out, wall


def pooled_std(values: Mapping[Cell, Sequence[float]]) -> Optional[float]:
    ss = sum(float(np.sum((np.asarray(v) - np.mean(v)) ** 2)) for v in values.values() if len(v) > 1)
    df = sum(len(v) - 1 for v in values.values() if len(v) > 1)
    return math.sqrt(ss / df) if df else None


def compare(advice: Dict[str, Any], grid: Dict[Cell, List[float]], grid_wall_s: float) -> Dict[str, Any]:
    means = {c: float(np.mean(v)) for c, v in grid.items()}
    best = max(means, key=lambda c: means[c])
    rec = advice["recommendation"]
    pick = (float(rec["alpha"]), float(rec["temperature"]))
    std = pooled_std(grid)
    regret = means[best] - means[pick]
    order = [(float(r["alpha"]), float(r["temperature"])) for r in advice["ranking"]]
    cells = [c for c in order if c in means]
    rho = stats.spearmanr([-i for i in range(len(cells))], [means[c] for c in cells]).statistic if len(cells) > 2 else None
    comp = advice["compute"]
    adv_cpu = float(comp.get("cpu_s_train", 0.0)) + float(comp.get("cpu_s_exports", 0.0))
    adv_wall = float(comp.get("wall_s_train", 0.0)) + float(comp.get("wall_s_exports", 0.0))
    return {"pick": list(pick), "pick_grid_mean": means[pick], "grid_best": list(best), "grid_best_mean": means[best],
            "regret_points": regret, "grid_seed_std": std, "regret_in_std": None if not std else regret / std,
            "spearman": None if rho is None else float(rho), "cells_ranked": len(cells),
            "compute_ratio_epoch_runs": comp["fraction"], "advisor_cpu_s": adv_cpu, "advisor_wall_s": adv_wall,
            "grid_students_wall_s": grid_wall_s, "wall_ratio": adv_wall / grid_wall_s if grid_wall_s else None,
            "confidence": advice["confidence"]["level"],
            "grid_means": {f"{c[0]:g},{c[1]:g}": round(m, 3) for c, m in sorted(means.items())}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lskd_core.advise.validate", description=__doc__.splitlines()[0])
    p.add_argument("--preset")
    p.add_argument("--config")
    p.add_argument("--out", required=True, help="study directory holding the grid and advise/")
    ns = p.parse_args(argv)
    try:
        cfg = load_config(ns.preset, ns.config, {"out": ns.out})
        study = Path(ns.out)
        advice = read_json_object(study / "advise" / "advice.json")
        if advice is None:
            raise ValueError(f"no advice in {study / 'advise'}; run python -m lskd_core.advise first")
        grid, wall = grid_values(cfg, study)
        if len(grid) < 2:
            raise ValueError(f"the grid in {study / 'runs'} has {len(grid)} finished cell(s); run the study first")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(compare(advice, grid, wall), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
