"""lskd_core.calibration against independent computations: brute-force loops, hand-computed tiny
cases and known identities (AURC of a perfect ranking, equal-mass bins of equal size)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lskd_core import calibration as C


def _logits_for(probs):
    return np.log(np.asarray(probs, dtype=np.float64))


def _ece_loop(conf, correct, edges_of):
    """ECE by explicit loops over samples, given each sample's bin."""
    total, n = 0.0, len(conf)
    for b in sorted(set(edges_of)):
        members = [i for i in range(n) if edges_of[i] == b]
        acc = sum(correct[i] for i in members) / len(members)
        cf = sum(conf[i] for i in members) / len(members)
        total += len(members) / n * abs(acc - cf)
    return total


def test_ece_equal_width_hand_computed():
    # confidences 0.9 (correct), 0.8 (wrong), 0.6 (correct), 0.55 (correct), two bins (0, .5], (.5, 1]
    probs = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.55, 0.45]]
    labels = np.array([0, 0, 0, 0])
    # one non-empty bin (0.5, 1]: acc 3/4, conf (0.9 + 0.8 + 0.6 + 0.55) / 4 = 0.7125
    assert C.ece(_logits_for(probs), labels, n_bins=2, binning="equal_width") == pytest.approx(abs(0.75 - 0.7125))
    # four bins of width 0.25: (0.5, 0.75] holds 0.6, 0.55 (acc 1, conf 0.575); (0.75, 1] holds 0.9, 0.8
    want = 0.5 * abs(1 - 0.575) + 0.5 * abs(0.5 - 0.85)
    assert C.ece(_logits_for(probs), labels, n_bins=4, binning="equal_width") == pytest.approx(want)


def test_ece_matches_brute_force_loops_for_both_binnings():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(203, 7)) * 3
    y = rng.integers(0, 7, size=203)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    conf = [float(max(r)) for r in p]
    correct = [int(np.argmax(r) == t) for r, t in zip(p, y)]
    width = [min(14, max(0, math.ceil(c * 15) - 1)) for c in conf]
    ranked = sorted(range(203), key=lambda i: (conf[i], i))
    mass = [0] * 203
    sizes = [203 // 15 + (1 if b < 203 % 15 else 0) for b in range(15)]
    pos = 0
    for b, s in enumerate(sizes):
        for i in ranked[pos:pos + s]:
            mass[i] = b
        pos += s
    assert C.ece(z, y, binning="equal_width") == pytest.approx(_ece_loop(conf, correct, width), abs=1e-12)
    assert C.ece(z, y, binning="equal_mass") == pytest.approx(_ece_loop(conf, correct, mass), abs=1e-12)
    counts = C.reliability_bins(z, y, binning="equal_mass")["count"]
    assert max(counts) - min(counts) <= 1 and sum(counts) == 203 and len(counts) == 15


def test_nll_and_brier_by_loops():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(31, 5)) * 10
    y = rng.integers(0, 5, size=31)
    nll = brier = 0.0
    for row, t in zip(z, y):
        ex = [math.exp(v - max(row)) for v in row]
        p = [e / sum(ex) for e in ex]
        nll += -math.log(p[t]) / len(y)
        brier += sum((p[k] - (1.0 if k == t else 0.0)) ** 2 for k in range(5)) / len(y)
    assert C.nll(z, y) == pytest.approx(nll, rel=1e-10)
    assert C.brier(z, y) == pytest.approx(brier, rel=1e-10)
    # stable far beyond exp's range: a confident correct prediction costs ~0
    assert C.nll(np.array([[1e4, -1e4]]), np.array([0])) == pytest.approx(0.0, abs=1e-12)


def test_aurc_perfect_ranking_identity_and_worst_case():
    # c correct ranked above n - c errors: risk at coverage i is max(0, i - c) / i
    n, c = 10, 7
    conf = np.linspace(1.0, 0.1, n)
    correct = np.array([True] * c + [False] * (n - c))
    want = sum(max(0, i - c) / i for i in range(1, n + 1)) / n
    assert C.aurc(conf, correct) == pytest.approx(want)
    worst = sum(min(i, n - c) / i for i in range(1, n + 1)) / n  # errors ranked first
    assert C.aurc(conf, correct[::-1]) == pytest.approx(worst)
    assert C.aurc(conf, np.ones(n, bool)) == 0.0


def test_aurc_ties_average_every_order_of_the_tied_samples():
    conf = np.array([0.9, 0.7, 0.7, 0.7, 0.5, 0.5])
    correct = np.array([True, False, True, True, False, True])
    groups = [[0], [1, 2, 3], [4, 5]]
    values = []
    for orders in itertools.product(*(itertools.permutations(g) for g in groups)):
        seq = [correct[i] for o in orders for i in o]
        errs = np.cumsum([not s for s in seq])
        values.append(np.mean(errs / np.arange(1, len(seq) + 1)))
    assert C.aurc(conf, correct) == pytest.approx(float(np.mean(values)))
    perm = np.array([5, 3, 0, 2, 4, 1])  # input order does not matter
    assert C.aurc(conf[perm], correct[perm]) == pytest.approx(C.aurc(conf, correct))


def test_logits_from_export_and_logit_std():
    rng = np.random.default_rng(2)
    feats, w, b = rng.normal(size=(4, 3)), rng.normal(size=(5, 3)), rng.normal(size=5)
    z = C.logits_from_export(feats, w, b)
    assert z[2, 4] == pytest.approx(sum(feats[2, d] * w[4, d] for d in range(3)) + b[4])
    assert C.logit_std(z) == pytest.approx(np.mean([np.std(r, ddof=1) for r in z]))
    with pytest.raises(ValueError, match="weight"):
        C.logits_from_export(feats, None, None)


def test_metrics_refuse_bad_labels():
    with pytest.raises(ValueError, match="labels"):
        C.calibration_metrics(np.zeros((3, 2)), np.array([0, 1, 2]))
