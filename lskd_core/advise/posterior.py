"""The probability that a cell is the grid's best, from the seeds the advisor trained.

Model (one per study, the cells trained to the full schedule): a seed's final accuracy in cell c
is ``N(mu_c, sigma^2)``, independent over cells and seeds, one ``sigma`` for every cell (pooled:
the cells' seed spreads are estimated together, since most cells have few seeds). Priors: flat on
each ``mu_c``, ``p(sigma^2) ~ 1 / sigma^2``. The posterior is then the textbook one:
``sigma^2 ~ df s^2 / chi^2_df`` with ``s^2`` the pooled within-cell variance on ``df = sum(n_c - 1)``
degrees of freedom, and ``mu_c | sigma^2 ~ N(ybar_c, sigma^2 / n_c)``.

What is "the grid's best". The full study trains every cell with all ``N`` seeds of its seed list
and recommends the cell of the highest mean over them, and the advisor's seeds are the grid's own
(same seed = the same run: same initialisation, data order, deterministic on the CPU). So the
target is the *grid mean* ``G_c = (n_c ybar_c + sum of the N - n_c seeds not trained yet) / N``,
whose posterior given ``sigma`` is ``N(ybar_c, sigma^2 (1 / n_c - 1 / N))`` (the finite-population
correction: a cell with all N seeds is known exactly). ``target="mean"`` asks about ``mu_c``
instead (an infinite seed list). P(c is best) is the share of Monte Carlo draws
(``scipy.stats``, a fixed seed: the same data give the same probability) in which ``c`` is the
largest.

Assumptions worth stating: equal seed spread in every cell, and no seed effect shared by the cells.
On the real demo grid the same seed is correlated across cells (a shared initialisation and data
order); ignoring that makes the differences look noisier than they are, so the probability is
conservative there (docs/advise.md measures both cases).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from lskd_core.advise.signals import pooled_sum_of_squares

__all__ = ["prob_best", "DRAWS"]

Cell = Tuple[float, float]
DRAWS = 20000
#: the prior on the spread of the cell means is uniform on [0, TAU_SPAN x (seed sd + range of the means)]
TAU_SPAN = 5.0


def _draw_grid_means(means: np.ndarray, n: np.ndarray, ss: float, df: int, total: Optional[int], prior: str,
                     draws: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Posterior draws of the target (grid means, or cell means when ``total`` is None) and their
    importance weights (all 1 for the flat prior)."""
    s2 = ss / df
    sigma2 = df * s2 / stats.chi2.rvs(df, size=draws, random_state=rng)
    v = sigma2[:, None] / n[None, :]  # sampling variance of each cell's mean
    if prior == "flat" or len(means) < 2:
        mu = means[None, :] + stats.norm.rvs(size=v.shape, random_state=rng) * np.sqrt(v)
        logw = np.zeros(draws)
    else:
        # mu_c ~ N(m, tau^2), m flat, tau uniform on [0, tau_max]: tau drawn from its prior and weighted
        # by the likelihood of the cell means given (sigma, tau) with m integrated out (BDA 5.4)
        tau_max = TAU_SPAN * (math.sqrt(s2) + float(np.ptp(means)))
        tau2 = (stats.uniform.rvs(size=draws, random_state=rng) * tau_max)[:, None] ** 2
        u = v + tau2
        a = 1.0 / u
        m_hat = (a * means[None, :]).sum(axis=1) / a.sum(axis=1)
        v_m = 1.0 / a.sum(axis=1)
        logw = 0.5 * np.log(v_m) - 0.5 * np.log(u).sum(axis=1) - 0.5 * (a * (means[None, :] - m_hat[:, None]) ** 2).sum(axis=1)
        m = m_hat + np.sqrt(v_m) * stats.norm.rvs(size=draws, random_state=rng)
        shrink = v / u  # B_c: how far the cell's mean is pulled towards m
        mu = (1 - shrink) * means[None, :] + shrink * m[:, None]
        mu = mu + np.sqrt(v * (1 - shrink)) * stats.norm.rvs(size=v.shape, random_state=rng)
    if total is None:
        return mu, np.exp(logw - logw.max())
    f = n / total  # the share of the grid's seeds already seen
    rest = stats.norm.rvs(size=v.shape, random_state=rng) * np.sqrt(sigma2[:, None] * (total - n)[None, :]) / total
    return f[None, :] * means[None, :] + (1 - f)[None, :] * mu + rest, np.exp(logw - logw.max())


def prob_best(values: Mapping[Cell, Sequence[float]], total_seeds: Optional[int] = None, target: str = "grid",
              prior: str = "hierarchical", draws: int = DRAWS, seed: int = 0) -> Optional[Dict[str, Any]]:
    """Per cell of ``values`` (its seeds' final accuracies) the posterior probability that it is the
    best: of the grid means over ``total_seeds`` seeds (``target="grid"``) or of the cell means
    (``target="mean"``). None when no cell has two seeds (no estimate of the seed spread).

    Returns ``{"p_best": {cell: p}, "sigma": pooled sd, "df": ..., "draws": ..., "target": ...,
    "total_seeds": ..., "leader": the cell of the highest probability}``."""
    if target not in ("grid", "mean"):
        raise ValueError(f"target must be 'grid' or 'mean', got {target!r}")
    if prior not in ("hierarchical", "flat"):
        raise ValueError(f"prior must be 'hierarchical' or 'flat', got {prior!r}")
    cells = [c for c, v in values.items() if len(v) > 0]
    if not cells:
        return None
    n = np.array([len(values[c]) for c in cells], dtype=float)
    if target == "grid":
        if total_seeds is None:
            raise ValueError("target 'grid' needs total_seeds (the study's seed count)")
        if np.any(n > total_seeds):
            raise ValueError(f"a cell has more seeds ({int(n.max())}) than the grid ({total_seeds})")
    ss, df = pooled_sum_of_squares(values)
    if df == 0:
        return None
    means = np.array([float(np.mean(values[c])) for c in cells])
    if len(cells) == 1:
        p = np.array([1.0])
        ess = float(draws)
    else:
        rng = np.random.default_rng(seed)
        sample, w = _draw_grid_means(means, n, ss, df, total_seeds if target == "grid" else None, prior, draws, rng)
        best = np.argmax(sample, axis=1)
        p = np.bincount(best, weights=w, minlength=len(cells)) / w.sum()
        ess = float(w.sum() ** 2 / (w ** 2).sum())
    p_best = {c: float(pi) for c, pi in zip(cells, p)}
    leader = max(cells, key=lambda c: (p_best[c], float(np.mean(values[c]))))
    return {"p_best": p_best, "sigma": math.sqrt(ss / df), "df": df, "draws": draws, "effective_draws": ess,
            "target": target, "prior": prior, "total_seeds": total_seeds, "leader": leader,
            "n_seeds": {c: len(values[c]) for c in cells}, "means": {c: float(m) for c, m in zip(cells, means)}}
