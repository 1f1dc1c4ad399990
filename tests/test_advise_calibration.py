"""The advisor's stated probability that its pick is the grid's best is calibrated on simulated
grids with known best cells, drawn from the demo's own per-cell means and seed spreads
(lskd_core/advise/calibrate.py; the numbers: docs/study.md "What it showed", 25 seeds per cell)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("optuna")

from lskd_core.advise.calibrate import DEMO_CELLS, DEMO_EPOCHS, DEMO_SEEDS, calibration, simulate_grid  # noqa: E402
from lskd_core.advise.posterior import prob_best  # noqa: E402

GRIDS = 300
EDGES = (0.0, 0.6, 0.85, 1.0)


def _bins(p, hit):
    p, hit = np.asarray(p, dtype=float), np.asarray(hit, dtype=bool)
    out = []
    for i, (lo, hi) in enumerate(zip(EDGES[:-1], EDGES[1:])):
        m = (p >= lo) & ((p <= hi) if i == len(EDGES) - 2 else (p < hi))
        if m.sum():
            out.append((lo, hi, int(m.sum()), float(p[m].mean()), float(hit[m].mean())))
    return out


@pytest.fixture(scope="module")
def rows():
    return calibration(GRIDS, seed=0)


def test_simulated_grids_permute_the_cells_means_and_spreads():
    """Each grid gives its cells a permutation of the (mean, sd) pairs (well-separated values here, so
    that each cell's draw can be told apart), every cell gets every pair sometimes, and the seeds
    have that mean and sd."""
    cells = {(0.0, 1.0): (10.0, 1.0), (0.0, 2.0): (40.0, 2.0), (0.1, 1.0): (70.0, 3.0)}
    rng = np.random.default_rng(5)
    got = {c: set() for c in cells}
    for _ in range(30):
        grid = simulate_grid(rng, cells, seeds=400)
        pairs = {c: min(cells.values(), key=lambda ms: abs(ms[0] - v.mean())) for c, v in grid.items()}
        assert sorted(pairs.values()) == sorted(cells.values())
        for c, (mean, sd) in pairs.items():
            got[c].add(mean)
            v = grid[c]
            assert abs(v.mean() - mean) < 8 * sd / np.sqrt(400) and abs(v.std() - sd) < 0.15 * sd
    assert all(len(m) == 3 for m in got.values())
    assert set(DEMO_CELLS) == {(0.0, 1.0), (0.1, 1.0), (0.0, 64.0), (0.1, 64.0)}


def test_stated_probability_matches_the_hit_rate(rows):
    """>= 20 simulated grids; in every bin of stated probability holding 20 or more grids, the mean
    stated probability is within 10 points of the share of grids where the pick was the grid's best;
    overall within 5 points. Compute: never more than the budget (25 % of the grid)."""
    assert len(rows) >= 20
    p = [r["p_best"] for r in rows]
    hit = [r["hit"] for r in rows]
    bins = _bins(p, hit)
    print("\nbin, grids, stated, hit rate:", [(f"{lo:.2f}-{hi:.2f}", n, round(s, 3), round(h, 3))
                                              for lo, hi, n, s, h in bins])
    big = [b for b in bins if b[2] >= 20]
    assert len(big) >= 2  # the probabilities are spread, not all in one bin
    for lo, hi, n, stated, rate in big:
        assert abs(stated - rate) <= 0.10, (lo, hi, n, stated, rate)
    assert abs(np.mean(p) - np.mean(hit)) <= 0.05
    grid = len(DEMO_CELLS) * DEMO_SEEDS * DEMO_EPOCHS
    assert all(r["spent"] <= 0.25 * grid for r in rows)
    assert all(r["grid"] == grid for r in rows)


def _criterion(p, hit) -> bool:
    bins = [b for b in _bins(p, hit) if b[2] >= 20]
    return all(abs(stated - rate) <= 0.10 for _, _, _, stated, rate in bins) and abs(np.mean(p) - np.mean(hit)) <= 0.05


def test_the_check_can_fail(rows):
    """The same check rejects an overconfident probability: on the same runs' seeds, the posterior as if
    each seed's spread were half of what it is (the values pulled halfway to their cell's mean)."""
    over, hit = [], []
    for r in rows[:150]:
        shrunk = {c: list(np.mean(v) + 0.5 * (np.asarray(v) - np.mean(v))) for c, v in r["values"].items()}
        over.append(prob_best(shrunk, DEMO_SEEDS, draws=4000)["p_best"][r["pick"]])
        hit.append(r["hit"])
    assert not _criterion(over, hit)
    assert _criterion([r["p_best"] for r in rows], [r["hit"] for r in rows])
