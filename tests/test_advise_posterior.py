"""The advisor's probability that a cell is the grid's best (posterior.py) against closed forms and
numerical integration, and the tie-break (tiebreak.py) on hand-made cells."""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import numpy as np
import pytest
from scipy import integrate, stats

pytest.importorskip("optuna")

from lskd_core.advise.allocation import Allocation, CellRecord, Level, allocate  # noqa: E402
from lskd_core.advise.posterior import TAU_SPAN, prob_best  # noqa: E402
from lskd_core.advise.tiebreak import settle  # noqa: E402

Cell = Tuple[float, float]
A, B, C = (0.0, 1.0), (0.1, 1.0), (0.1, 64.0)


def _pooled(values):
    ss = sum(float(np.sum((np.asarray(v) - np.mean(v)) ** 2)) for v in values.values())
    df = sum(len(v) - 1 for v in values.values())
    return ss / df, df


@pytest.mark.parametrize("target", ["mean", "grid"])
def test_flat_prior_two_cells_is_the_t_probability(target):
    """Flat prior, two cells: mu_A - mu_B (or the difference of grid means) is ybar_A - ybar_B plus
    s * sqrt(scale) * t_df, so P(A best) = t.cdf(d / (s sqrt(scale)), df)."""
    values = {A: [78.1, 76.0, 79.3, 77.7], B: [77.0, 78.2, 75.9]}
    s2, df = _pooled(values)
    n_total = 10
    if target == "mean":
        scale = 1 / 4 + 1 / 3
    else:
        scale = (1 / 4 - 1 / n_total) + (1 / 3 - 1 / n_total)
    d = np.mean(values[A]) - np.mean(values[B])
    expected = stats.t.cdf(d / math.sqrt(s2 * scale), df)
    out = prob_best(values, n_total, target=target, prior="flat", draws=200000)
    assert out["p_best"][A] == pytest.approx(expected, abs=0.005)
    assert out["p_best"][A] + out["p_best"][B] == pytest.approx(1.0)
    assert out["df"] == df and out["sigma"] == pytest.approx(math.sqrt(s2))


def test_cells_with_every_seed_are_known_exactly():
    vals = {A: [70.0, 71.0, 72.0], B: [71.5, 70.5, 71.2]}  # all 3 of 3 seeds: the grid means are the data
    out = prob_best(vals, 3)
    assert out["p_best"][A] == pytest.approx(1.0 if np.mean(vals[A]) > np.mean(vals[B]) else 0.0)


def test_no_spread_estimate_and_bad_arguments():
    assert prob_best({A: [70.0], B: [71.0]}, 5) is None  # no cell with two seeds
    with pytest.raises(ValueError, match="total_seeds"):
        prob_best({A: [1.0, 2.0], B: [1.0]}, None)
    with pytest.raises(ValueError, match="more seeds"):
        prob_best({A: [1.0, 2.0, 3.0], B: [1.0]}, 2)


def test_hierarchical_two_cells_matches_numerical_integration():
    """Hierarchical prior, target mean, 2 cells: integrate P(mu_A > mu_B | sigma, tau) over the joint
    posterior of (sigma^2, tau) by quadrature. Given (sigma, tau), with m integrated out the prior on
    the cell means has precision (I - 11'/2) / tau^2, so the posterior of mu is normal with precision
    L = diag(n / sigma^2) + (I - 11'/2) / tau^2 and mean L^-1 diag(n / sigma^2) ybar."""
    values = {A: [78.0, 77.1, 79.4], B: [76.9], C: []}
    values = {k: v for k, v in values.items() if v}
    s2, df = _pooled(values)
    means = np.array([np.mean(values[A]), np.mean(values[B])])
    n = np.array([3.0, 1.0])
    tau_max = TAU_SPAN * (math.sqrt(s2) + float(np.ptp(means)))
    J = np.eye(2) - np.ones((2, 2)) / 2

    def lik_means(sig2, tau):  # p(ybar | sigma, tau), m integrated out (flat)
        u = sig2 / n + tau ** 2
        a = 1 / u
        m_hat = (a * means).sum() / a.sum()
        return math.sqrt(1 / a.sum()) * np.prod(u ** -0.5) * math.exp(-0.5 * (a * (means - m_hat) ** 2).sum())

    def p_sigma(sig2):  # scaled inverse chi^2 (df, s2): the posterior of sigma^2 from the within-cell SS
        return stats.invgamma.pdf(sig2, df / 2, scale=df * s2 / 2)

    def p_a_best(sig2, tau):
        prec = np.diag(n / sig2) + (J / tau ** 2 if tau > 0 else np.zeros((2, 2)))
        if tau == 0:
            return 0.5
        cov = np.linalg.inv(prec)
        mu = cov @ (n / sig2 * means)
        d, var = mu[0] - mu[1], cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
        return stats.norm.cdf(d / math.sqrt(var))

    hi = stats.invgamma.ppf(0.9999, df / 2, scale=df * s2 / 2)
    num = integrate.dblquad(lambda t, s: p_a_best(s, t) * lik_means(s, t) * p_sigma(s), 1e-6, hi, 1e-6, tau_max,
                            epsabs=1e-10)[0]
    den = integrate.dblquad(lambda t, s: lik_means(s, t) * p_sigma(s), 1e-6, hi, 1e-6, tau_max, epsabs=1e-10)[0]
    out = prob_best(values, None, target="mean", draws=400000)
    assert out["p_best"][A] == pytest.approx(num / den, abs=0.006)
    # and the shrinkage makes it less sure than the flat prior here
    assert out["p_best"][A] < prob_best(values, None, target="mean", prior="flat", draws=200000)["p_best"][A]


# ------------------------------------------------------------------------------------------------
# the tie-break
# ------------------------------------------------------------------------------------------------
class Counting:
    def __init__(self, finals: Dict[Cell, List[float]]) -> None:
        self.finals = finals
        self.trained: Dict[Tuple[Cell, int], int] = {}

    def __call__(self, cell, seed, epochs):
        self.trained[(cell, seed)] = max(self.trained.get((cell, seed), 0), epochs)
        return [self.finals[cell][seed]] * epochs


def _alloc(curves: Dict[Cell, Dict[int, List[float]]], seeds: int, budget: float, spent: int) -> Allocation:
    cells = [CellRecord(cell=c, arrival=i, level=0, value=cv[0][-1], values=[cv[0][-1]], stopped="budget",
                        curves={s: list(v) for s, v in cv.items()}) for i, (c, cv) in enumerate(curves.items())]
    return Allocation(cells=cells, levels=[Level(1, 1), Level(seeds, 1)], spent=spent,
                      grid=len(curves) * seeds, budget=budget, eta=3, seed=0)


def test_seed_goes_to_the_rival_with_few_seeds_then_budget_stops():
    """Leader A with 5 seeds, rival B with 1 seed and a probability of about a third: the gain of a seed
    on B is P(B) * (1 - 1/2), on A (1 - P(A)) * (1/5 - 1/6), so B gets it."""
    rng = np.random.default_rng(3)
    finals = {A: list(78 + rng.normal(0, 1, 20)), B: list(77.8 + rng.normal(0, 1, 20)), C: list(70 + rng.normal(0, 1, 20))}
    curves = {A: {s: [finals[A][s]] for s in range(5)}, B: {0: [finals[B][0]]}, C: {0: [finals[C][0]]}}
    alloc = _alloc(curves, 20, budget=0.2, spent=7)  # cap 12 epoch-runs: 5 more
    before = prob_best({A: finals[A][:5], B: finals[B][:1], C: finals[C][:1]}, 20)["p_best"]
    assert 0.1 < before[B] < 0.9
    fake = Counting(finals)
    events: List[dict] = []
    out = settle(alloc, fake, 1, list(range(20)), log=events.append)
    assert (events[0]["alpha"], events[0]["temperature"]) == B and events[0]["seed"] == 1
    assert alloc.spent <= 12 and alloc.spent == 7 + len(fake.trained) == 7 + out["epoch_runs"]
    assert all(c != C for c, _ in fake.trained)  # the hopeless cell gets nothing
    assert out["stopped"] in ("budget", "decided")
    if out["stopped"] == "budget":
        assert alloc.spent == 12


def test_clear_leader_gets_no_more_seeds_and_seed_cap_holds():
    finals = {A: [90.0, 90.4, 89.8, 90.1], B: [60.0, 60.3, 59.9, 60.2]}
    alloc = _alloc({A: {0: [90.0], 1: [90.4]}, B: {0: [60.0], 1: [60.3]}}, 4, budget=1.0, spent=4)
    out = settle(alloc, Counting(finals), 1, [0, 1, 2, 3])
    assert out["added"] == [] and out["stopped"] == "decided" and out["posterior"]["p_best"][A] > 0.99
    tied = {A: [70.0, 71.0, 69.0, 70.5, 69.5, 70.2], B: [70.1, 69.0, 71.0, 70.0, 70.4, 69.8]}
    alloc = _alloc({A: {0: [70.0], 1: [71.0]}, B: {0: [70.1]}}, 6, budget=1.0, spent=3)
    out = settle(alloc, Counting(tied), 1, list(range(6)), max_seeds=4)
    n = out["posterior"]["n_seeds"]
    assert max(n.values()) <= 4 and out["stopped"] in ("seed cap", "decided")
    if out["stopped"] == "seed cap":
        assert n == {A: 4, B: 4}


def test_settle_after_halving_never_exceeds_the_budget():
    rng = np.random.default_rng(0)
    means = {(a, t): 75 + 2 * rng.random() for a in (0.0, 0.1) for t in (1.0, 4.0, 64.0)}
    finals = {c: list(m + rng.normal(0, 1.5, 9)) for c, m in means.items()}
    for budget in (0.2, 0.35, 0.6):
        fake = Counting(finals)
        alloc = allocate(list(means), fake, 1, list(range(9)), eta=3, budget=budget, seed=1)
        settle(alloc, fake, 1, list(range(9)))
        assert alloc.spent == sum(fake.trained.values()) <= budget * alloc.grid


def test_advice_states_the_probability_and_names_the_rivals():
    from lskd_core.advise.report import markdown, summarize

    tied = _alloc({A: {0: [70.0], 1: [71.0], 2: [69.5]}, B: {0: [70.2], 1: [70.6], 2: [69.9]},
                   C: {0: [60.0], 1: [60.5], 2: [59.8]}}, 10, budget=1.0, spent=9)
    s = summarize(tied, {}, epochs=1, train_samples=None, cpu={})
    p = s["recommendation"]["p_best"]
    expected = prob_best({c: [r.curves[k][0] for k in sorted(r.curves)] for c, r in
                          ((r.cell, r) for r in tied.cells)}, 10)
    assert p == pytest.approx(max(expected["p_best"].values()))
    assert (s["recommendation"]["alpha"], s["recommendation"]["temperature"]) == expected["leader"]
    text = markdown(s)
    assert f"**{p:.2f}**" in text and "Not decided at this budget" in text
    rival = B if expected["leader"] == A else A
    assert f"(alpha, T = {rival[0]:g},{rival[1]:g})" in text
    assert "(alpha, T = 0.1,64)" not in text  # C is hopeless: not named
    clear = _alloc({A: {0: [90.0], 1: [90.4]}, B: {0: [60.0], 1: [60.3]}}, 4, budget=1.0, spent=4)
    text = markdown(summarize(clear, {}, epochs=1, train_samples=None, cpu={}))
    assert "**1.00**" in text and "Not decided" not in text
