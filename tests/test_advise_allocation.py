"""The advisor's allocation on synthetic cells (a fake trainer, no torch): successive halving keeps
the best cell as often as its rule predicts under that noise, and the compute account is exact."""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np
import pytest

pytest.importorskip("optuna")

from lskd_core.advise.allocation import Level, allocate, auto_min_epochs, ladder  # noqa: E402

Cell = Tuple[float, float]


class FakeTrainer:
    """val accuracy of (cell, seed) after epoch e = mean[cell] + N(0, sigma^2), independent per epoch;
    counts the epochs it trains beyond what that (cell, seed) already had (the real compute)."""

    def __init__(self, means: Dict[Cell, float], sigma: float, rng: np.random.Generator) -> None:
        self.means, self.sigma, self.rng = means, sigma, rng
        self.curves: Dict[Tuple[Cell, int], List[float]] = {}
        self.epochs_trained = 0
        self.calls = 0

    def __call__(self, cell: Cell, seed: int, epochs: int) -> List[float]:
        self.calls += 1
        curve = self.curves.setdefault((cell, seed), [])
        while len(curve) < epochs:
            curve.append(self.means[cell] + self.sigma * float(self.rng.standard_normal()))
            self.epochs_trained += 1
        return list(curve)


def test_ladder_epochs_then_seeds():
    assert ladder(4, 3, eta=2) == [Level(1, 1), Level(1, 2), Level(1, 4), Level(2, 4), Level(3, 4)]
    assert ladder(2, 1, eta=3) == [Level(1, 1), Level(1, 2)]
    assert ladder(9, 2, eta=3, min_epochs=1) == [Level(1, 1), Level(1, 3), Level(1, 9), Level(2, 9)]
    assert ladder(2, 3, eta=3) == [Level(1, 1), Level(1, 2), Level(3, 2)]
    assert ladder(2, 25, eta=3, min_epochs=2) == [Level(1, 2), Level(3, 2), Level(9, 2), Level(25, 2)]
    with pytest.raises(ValueError, match="eta"):
        ladder(4, 1, eta=1)


def test_auto_min_epochs_three_quarters_within_budget():
    # (epochs, seeds, cells, budget): 3/4 of the schedule rounded up, capped by what screening fits
    assert auto_min_epochs(8, 3, 8, 0.25) == 6  # 8 cells x 6 = 48 = 0.25 x 192
    assert auto_min_epochs(4, 3, 8, 0.25) == 3
    assert auto_min_epochs(2, 3, 8, 0.25) == 1  # 8 x 2 = 16 > 12: one epoch is what fits
    assert auto_min_epochs(2, 25, 4, 0.25) == 2
    assert auto_min_epochs(10, 1, 2, 1.0) == 8


def _two_cells():
    return {(0.0, 1.0): 0.9, (0.1, 1.0): 0.5}


def test_compute_account_exact_by_hand():
    """Two cells, no noise, eta = 2, 2 epochs x 2 seeds (grid: 8 epoch-runs). Optuna's successive
    halving always promotes the first arrival at a rung, and a later one only if it is at least
    as good. Better cell first: the worse is pruned at level 0 -> 2 + 1 + 2 = 5 epoch-runs. Worse
    first: both climb every level -> 8."""
    seen = set()
    for seed in range(20):
        fake = FakeTrainer(_two_cells(), 0.0, np.random.default_rng(0))
        events: List[dict] = []
        out = allocate(list(_two_cells()), fake, epochs=2, seeds=[0, 1], eta=2, budget=1.0, seed=seed,
                       log=events.append)
        first = tuple(events[0]["arrival_order"][0])
        expected = 5 if first == (0.0, 1.0) else 8
        assert out.spent == expected == fake.epochs_trained
        assert out.grid == 8
        assert sum(e["epoch_runs"] for e in events if e["event"] == "train") == expected
        best = {tuple(r.cell): r for r in out.cells}[(0.0, 1.0)]
        assert best.stopped == "complete" and best.level == 2 and best.value == pytest.approx(0.9)
        assert out.ranking()[0].cell == (0.0, 1.0)
        seen.add(expected)
        if seen == {5, 8}:
            break
    assert seen == {5, 8}, "both arrival orders should occur within 20 seeds"


def test_budget_cap_is_never_exceeded_and_logged():
    for seed in range(20):
        fake = FakeTrainer(_two_cells(), 0.0, np.random.default_rng(0))
        events: List[dict] = []
        out = allocate(list(_two_cells()), fake, epochs=2, seeds=[0, 1], eta=2, budget=0.5, seed=seed,
                       log=events.append)
        assert out.spent <= 4 and out.spent == fake.epochs_trained
        if tuple(events[0]["arrival_order"][0]) == (0.1, 1.0):
            # both reach level 1 (4 epoch-runs); a second seed would cost 2 more each: stopped
            stops = [e for e in events if e["event"] == "stop"]
            assert {e["reason"] for e in stops} == {"budget"} and len(stops) == 2
            assert out.spent == 4
            assert all(r.stopped == "budget" and r.level == 1 for r in out.cells)
            return
    pytest.fail("the worse-first order never occurred")


def test_budget_too_small_to_screen_is_one_clear_error():
    fake = FakeTrainer(_two_cells(), 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="budget too small"):
        allocate(list(_two_cells()), fake, epochs=4, seeds=[0, 1, 2], eta=2, min_epochs=4, budget=0.1)


def _asha_keep_probability(means: np.ndarray, sigma: float, n_levels: int, eta: int, draws: int,
                           rng: np.random.Generator) -> float:
    """Monte-Carlo of asynchronous successive halving's published rule, written independently of
    the code under test: trials arrive at each rung in a random order (the same at every rung); the
    j-th arrival (1-based) is promoted when its value is at least the max(1, j // eta)-th largest of
    the first j values there. Each level's value is the mean plus fresh N(0, sigma^2) noise (a new
    epoch). Returns P(the best-mean cell reaches the last level)."""
    n = means.size
    best = int(np.argmax(means))
    kept = 0
    for _ in range(draws):
        order = rng.permutation(n)
        alive = list(order)
        for _level in range(n_levels - 1):
            values = {i: means[i] + sigma * rng.standard_normal() for i in alive}
            seen: List[float] = []
            promoted = []
            for i in alive:
                seen.append(values[i])
                rank = max(1, len(seen) // eta)
                if values[i] >= sorted(seen, reverse=True)[rank - 1]:
                    promoted.append(i)
            alive = promoted
        kept += best in alive
    return kept / draws


@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_keeps_best_cell_at_the_rate_successive_halving_predicts(sigma):
    means_list = [0.0, 0.3, 0.6, 0.9, 1.2, 2.0]  # the last is the best cell
    cells = [(0.0, float(t)) for t in (1, 2, 3, 4, 5, 6)]
    means = dict(zip(cells, means_list))
    epochs, eta, runs = 4, 2, 300
    n_levels = len(ladder(epochs, 1, eta))
    rng = np.random.default_rng(123)
    theory = _asha_keep_probability(np.array(means_list), sigma, n_levels, eta, 20000, np.random.default_rng(7))
    kept = 0
    for seed in range(runs):
        fake = FakeTrainer(means, sigma, rng)
        out = allocate(cells, fake, epochs=epochs, seeds=[0], eta=eta, budget=1.0, seed=seed)
        assert out.spent == fake.epochs_trained  # exact account in every run
        rec = {r.cell: r for r in out.cells}[cells[-1]]
        kept += rec.stopped == "complete"
    rate = kept / runs
    if sigma == 0.0:
        assert theory == 1.0 and rate == 1.0
        return
    # the rule must matter at this noise (a sensitive test), and the allocation must follow it
    assert 0.4 < theory < 0.95
    band = 3.5 * math.sqrt(theory * (1 - theory) / runs) + 0.01
    assert abs(rate - theory) <= band, (rate, theory, band)
    # and it beats chance (a random cell of 6 completing about as often as the promotions allow)
    assert rate > 0.3
