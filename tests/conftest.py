"""Shared helpers: independent reference formulas for eta (Eq. 1) and App. K, and an in-process CLI.

The references are written from the paper's text with plain numpy loops, sharing no code with
lskd_core, so a wrong R, a flipped sign or a swapped set in the library fails the tests.
"""

import contextlib
import io
from typing import List, Optional, Sequence, Tuple

import numpy as np


def _centroid(x: np.ndarray, labels: np.ndarray, c: int) -> np.ndarray:
    rows = [x[i].astype(np.float64) for i in range(len(labels)) if labels[i] == c]
    return sum(rows) / len(rows)


def eta_from_cluster_distances(dist_before: Sequence[float], dist_after: Sequence[float],
                               n_similar: int) -> Tuple[float, float]:
    """Eq. 1 in percent: d = dist / R with R summed over S1 and S2; eta = mean (d2 - d1) / d1."""
    r1, r2 = sum(dist_before), sum(dist_after)
    change = [(a / r2 - b / r1) / (b / r1) for b, a in zip(dist_before, dist_after)]
    s1, s2 = change[:n_similar], change[n_similar:]
    return 100.0 * sum(s1) / len(s1), 100.0 * sum(s2) / len(s2)


def eta_reference(fb: np.ndarray, lb: np.ndarray, fa: np.ndarray, la: np.ndarray, target: int,
                  s1: Sequence[int], s2: Sequence[int]) -> Tuple[float, float]:
    """Eq. 1 with squared centroid distances."""
    def dists(x, lab):
        ct = _centroid(x, lab, target)
        return [float(((ct - _centroid(x, lab, k)) ** 2).sum()) for k in list(s1) + list(s2)]
    return eta_from_cluster_distances(dists(fb, lb), dists(fa, la), len(s1))


def eta_pairwise_sq_reference(fb, lb, fa, la, target, s1, s2) -> Tuple[float, float]:
    """App. K's closed-form variant, by brute force: mean squared distance over all sample pairs."""
    def dists(x, lab):
        x = x.astype(np.float64)
        t = x[lab == target]
        return [float(np.mean([((a - b) ** 2).sum() for a in t for b in x[lab == k]]))
                for k in list(s1) + list(s2)]
    return eta_from_cluster_distances(dists(fb, lb), dists(fa, la), len(s1))


def projected_mean_distance(x: np.ndarray, lab: np.ndarray, weight: np.ndarray,
                            bias: Optional[np.ndarray], target: int, k: int,
                            span: Sequence[int]) -> float:
    """Mean ||P([x, 1] - [y, 1])|| over pairs, P the orthogonal projector onto the templates
    [w_c, b_c] of ``span`` (built with a pseudo-inverse, not a QR)."""
    x = x.astype(np.float64)
    t = np.asarray(weight, dtype=np.float64)[list(span)]
    if bias is not None:
        t = np.concatenate([t, np.asarray(bias, dtype=np.float64)[list(span), None]], axis=1)
        x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    a = t.T
    proj = a @ np.linalg.pinv(a)
    return float(np.mean([np.sqrt(((proj @ (u - v)) ** 2).sum())
                          for u in x[lab == target] for v in x[lab == k]]))


def eta_projected_reference(before, after, target, s1, s2) -> Tuple[float, float]:
    """App. K as stated: average (non-squared) distance of projected features, brute force.
    ``before``/``after``: (features, labels, weight, bias)."""
    span = [target, *s1, *s2]

    def dists(f):
        x, lab, w, b = f
        return [projected_mean_distance(x, lab, w, b, target, k, span) for k in list(s1) + list(s2)]
    return eta_from_cluster_distances(dists(before), dists(after), len(s1))


def run_main(main, argv: List[str]) -> Tuple[int, str, str]:
    """Run a CLI ``main(argv)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's --help
            code = exc.code if isinstance(exc.code, int) else 1
    return int(code), out.getvalue(), err.getvalue()
