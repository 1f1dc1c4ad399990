"""Is the advisor's stated probability calibrated? ``python -m lskd_core.advise.calibrate``.

Simulated grids with known best cells, drawn from the demo's own per-cell means and seed spreads:
each grid permutes the demo's four (mean, sd) pairs over its cells (so the best cell moves), draws
each cell's true mean from ``N(mean, sd^2 / 25)`` (the demo's means are themselves estimates from
25 seeds) and then every seed's final accuracy from ``N(true mean, sd^2)``. A fake trainer returns
those values (a fixed, lower value after the first epoch, which the default first level never
reads); the advisor (successive halving + tie-break, the CLI's defaults) runs on it, and its pick
counts as a hit when it is the cell with the highest mean over all the grid's seeds: the cell the
full study would rank first. ``rho > 0`` adds a seed effect shared by the cells (the same seed is
the same initialisation and data order in every cell), which the advisor's model leaves out.

The demo's numbers: docs/study.md, "What it showed" (the 25-seed demo preset, one run, val top-1 on
the 10k test split, mean +- sd over 25 student seeds): (alpha 0, T 1) 77.58 +- 1.67, (0.1, 1)
78.31 +- 1.58, (0, 64) 75.51 +- 1.04, (0.1, 64) 77.49 +- 1.30. No demo report was under runs/.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from lskd_core.advise.allocation import allocate
from lskd_core.advise.tiebreak import TARGET, final_values, settle

__all__ = ["DEMO_CELLS", "DEMO_SEEDS", "DEMO_EPOCHS", "simulate_grid", "advise_on", "calibration", "bin_table"]

Cell = Tuple[float, float]
#: (mean, sd) of the final val top-1 per cell, docs/study.md "What it showed" (25 seeds)
DEMO_CELLS: Dict[Cell, Tuple[float, float]] = {(0.0, 1.0): (77.58, 1.67), (0.1, 1.0): (78.31, 1.58),
                                               (0.0, 64.0): (75.51, 1.04), (0.1, 64.0): (77.49, 1.30)}
DEMO_SEEDS = 25
DEMO_EPOCHS = 2
EDGES = (0.0, 0.6, 0.85, 1.0)


def simulate_grid(rng: np.random.Generator, cells: Mapping[Cell, Tuple[float, float]] = DEMO_CELLS,
                  seeds: int = DEMO_SEEDS, rho: float = 0.0) -> Dict[Cell, np.ndarray]:
    """Every seed's final accuracy in every cell of one simulated grid (see the module docstring)."""
    keys = list(cells)
    perm = rng.permutation(len(keys))
    shared = rng.standard_normal(seeds)
    out = {}
    for cell, j in zip(keys, perm):
        mean, sd = cells[keys[j]]
        mu = mean + sd / np.sqrt(seeds) * rng.standard_normal()
        noise = np.sqrt(rho) * shared + np.sqrt(1.0 - rho) * rng.standard_normal(seeds)
        out[cell] = mu + sd * noise
    return out


def advise_on(grid: Mapping[Cell, np.ndarray], epochs: int = DEMO_EPOCHS, budget: float = 0.25, eta: int = 3,
              order_seed: int = 0, target: float = TARGET, draws: int = 4000) -> Dict[str, Any]:
    """Run the advisor's allocation and tie-break on one simulated grid; its pick and probability."""
    seeds = list(range(len(next(iter(grid.values())))))

    def trainer(cell: Cell, seed: int, n_epochs: int) -> List[float]:
        final = float(grid[cell][seed])
        return ([final - 3.0] * (epochs - 1) + [final])[:n_epochs]

    alloc = allocate(list(grid), trainer, epochs, seeds, eta=eta, min_epochs=None, budget=budget, seed=order_seed)
    halving = alloc.spent
    tb = settle(alloc, trainer, epochs, seeds, target=target, draws=draws)
    post = tb["posterior"]
    if post is None:
        raise RuntimeError("no probability: no finalist with two seeds")
    pick = post["leader"]
    return {"pick": pick, "p_best": post["p_best"][pick], "spent": alloc.spent, "halving": halving,
            "grid": alloc.grid, "stopped": tb["stopped"], "added": len(tb["added"]),
            "values": final_values(alloc, epochs, seeds)}


def calibration(n_grids: int, rho: float = 0.0, seed: int = 0, **kw: Any) -> List[Dict[str, Any]]:
    """One row per simulated grid: the stated probability, whether the pick was the grid's best."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_grids):
        grid = simulate_grid(rng, rho=rho)
        best = max(grid, key=lambda c: float(np.mean(grid[c])))
        out = advise_on(grid, order_seed=g, **kw)
        rows.append(dict(out, hit=out["pick"] == best, best=best))
    return rows


def bin_table(rows: Sequence[Mapping[str, Any]], edges: Sequence[float] = EDGES) -> List[Dict[str, Any]]:
    """Per bin of stated probability: how many grids, the mean stated probability, the hit rate."""
    p = np.array([r["p_best"] for r in rows])
    hit = np.array([bool(r["hit"]) for r in rows])
    out = []
    for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = i == len(edges) - 2
        m = (p >= lo) & ((p <= hi) if last else (p < hi))
        if m.any():
            out.append({"bin": [lo, hi], "n": int(m.sum()), "stated": float(p[m].mean()),
                        "hit_rate": float(hit[m].mean())})
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lskd_core.advise.calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("--grids", type=int, default=300)
    ap.add_argument("--rho", type=float, default=0.0, help="seed effect shared by the cells (correlation)")
    ap.add_argument("--seed", type=int, default=0)
    ns = ap.parse_args(argv)
    if ns.grids < 1 or not 0 <= ns.rho < 1:
        print("error: --grids must be >= 1 and --rho in [0, 1)", file=sys.stderr)
        return 2
    rows = calibration(ns.grids, rho=ns.rho, seed=ns.seed)
    print(json.dumps({"grids": ns.grids, "rho": ns.rho, "stated_mean": float(np.mean([r["p_best"] for r in rows])),
                      "hit_rate": float(np.mean([r["hit"] for r in rows])),
                      "compute_fraction_mean": float(np.mean([r["spent"] / r["grid"] for r in rows])),
                      "compute_fraction_max": float(max(r["spent"] / r["grid"] for r in rows)),
                      "stopped": {k: sum(r["stopped"] == k for r in rows) for k in sorted({r["stopped"] for r in rows})},
                      "bins": bin_table(rows)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
