"""Calibration and selective prediction of a classifier's val predictions (numpy, float64).

Beyond the paper: Xia et al. (ICLR 2025) ask whether label smoothing hurts calibration and selective
classification even when accuracy is unchanged. Every function takes logits ``[N, K]`` (or the
probabilities they give) and integer labels ``[N]``; confidence is the max probability and a
prediction is correct when its argmax is the label (ties in the argmax: the lowest class id, numpy's
rule).

* ``ece``: expected calibration error ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` (Guo et al., ICML
  2017, Eq. 3) over 15 bins. ``binning="equal_mass"`` (the report's headline; Nixon et al., CVPR-W
  2019, "adaptive" ECE): samples sorted by confidence (stable: equal confidences keep their input
  order) and cut into 15 groups whose sizes differ by at most one (``np.array_split``), so every bin
  holds data and the estimate is less biased where confidences crowd near 1. ``"equal_width"``: bins
  ``(b/15, (b+1)/15]`` of confidence (the usual variant; the first bin also holds 0).
* ``nll``: mean ``-log p_y`` (from log-softmax, stable for large logits).
* ``brier``: mean ``sum_k (p_k - 1[k = y])^2`` (Brier 1950, multi-class form; in [0, 2]).
* ``aurc``: area under the risk-coverage curve (Geifman et al., ICLR 2019): predictions accepted
  in order of decreasing confidence; at coverage i/N the risk is the error rate of the i accepted;
  AURC = mean over i = 1..N of that risk. Ties in confidence: the curve is averaged over every order
  of the tied samples (inside a tied group of g samples with e errors, the expected errors among the
  first k accepted are ``k e / g``), so the value does not depend on the input order.
* ``logit_std``: mean over rows of the logit vector's standard deviation (Bessel-corrected), the
  scale Sun et al. (CVPR 2024) argue a shared temperature forces the student to match.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

__all__ = ["N_BINS", "BINNINGS", "logits_from_export", "softmax", "confidence_and_correct", "ece",
           "reliability_bins", "nll", "brier", "aurc", "logit_std", "calibration_metrics"]

N_BINS = 15
BINNINGS = ("equal_mass", "equal_width")


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or z.shape[0] < 1 or z.shape[1] < 2:
        raise ValueError(f"logits must be [N >= 1, K >= 2], got shape {z.shape}")
    if y.shape != (z.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be {z.shape[0]} integer class ids, got shape {y.shape} dtype {y.dtype}")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must lie in [0, {z.shape[1]}), got range [{y.min()}, {y.max()}]")
    return z, y.astype(np.int64)


def logits_from_export(features: np.ndarray, weight: Optional[np.ndarray], bias: Optional[np.ndarray]) -> np.ndarray:
    """A model's logits from its penultimate features and final layer: ``features @ weight.T + bias``
    (the export's ``weight [K, D]`` and ``bias [K]``, docs/formats.md), float64."""
    if weight is None:
        raise ValueError("the features file has no final-layer weight: re-export it with lskd's exporter")
    out = np.asarray(features, dtype=np.float64) @ np.asarray(weight, dtype=np.float64).T
    return out if bias is None else out + np.asarray(bias, dtype=np.float64)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64)))


def confidence_and_correct(logits: np.ndarray, labels: np.ndarray) -> tuple:
    """``(max probability [N], argmax == label [N])``."""
    z, y = _check(logits, labels)
    p = softmax(z)
    return p.max(axis=1), p.argmax(axis=1) == y


def _bin_index(conf: np.ndarray, n_bins: int, binning: str) -> np.ndarray:
    if binning == "equal_width":
        # (b/M, (b+1)/M] -> b; a confidence of exactly 0 goes to bin 0
        return np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    if binning == "equal_mass":
        order = np.argsort(conf, kind="stable")
        idx = np.empty(conf.shape[0], dtype=np.int64)
        for b, chunk in enumerate(np.array_split(order, n_bins)):
            idx[chunk] = b
        return idx
    raise ValueError(f"binning must be one of {BINNINGS}, got {binning!r}")


def reliability_bins(logits: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS,
                     binning: str = "equal_mass") -> Dict[str, list]:
    """Per non-empty bin: mean confidence, accuracy and count (the reliability diagram's points)."""
    conf, correct = confidence_and_correct(logits, labels)
    idx = _bin_index(conf, n_bins, binning)
    out: Dict[str, list] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        m = idx == b
        if m.any():
            out["confidence"].append(float(conf[m].mean()))
            out["accuracy"].append(float(correct[m].mean()))
            out["count"].append(int(m.sum()))
    return out


def ece(logits: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS, binning: str = "equal_mass") -> float:
    """Expected calibration error (fraction, not percent) with ``n_bins`` bins of ``binning``."""
    bins = reliability_bins(logits, labels, n_bins, binning)
    n = sum(bins["count"])
    return float(sum(c / n * abs(a - f) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"])))


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    z, y = _check(logits, labels)
    return float(-_log_softmax(z)[np.arange(y.shape[0]), y].mean())


def brier(logits: np.ndarray, labels: np.ndarray) -> float:
    z, y = _check(logits, labels)
    p = softmax(z)
    p[np.arange(y.shape[0]), y] -= 1.0
    return float((p ** 2).sum(axis=1).mean())


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk-coverage curve, ties in confidence averaged over their orders (module doc)."""
    conf = np.asarray(confidence, dtype=np.float64)
    err = ~np.asarray(correct, dtype=bool)
    n = conf.shape[0]
    if n == 0 or err.shape != conf.shape:
        raise ValueError(f"confidence and correct must be two non-empty arrays of one length, got {conf.shape}, "
                         f"{err.shape}")
    order = np.argsort(-conf, kind="stable")
    conf, err = conf[order], err[order].astype(np.float64)
    # tied groups: start of each run of equal confidence
    starts = np.flatnonzero(np.r_[True, conf[1:] != conf[:-1]])
    ends = np.r_[starts[1:], n]
    expected_errors = np.empty(n, dtype=np.float64)  # E[errors among the first i + 1 accepted]
    before = 0.0
    for s, e in zip(starts, ends):
        g, group_err = e - s, err[s:e].sum()
        expected_errors[s:e] = before + np.arange(1, g + 1) * group_err / g
        before += group_err
    return float(np.mean(expected_errors / np.arange(1, n + 1)))


def logit_std(logits: np.ndarray) -> float:
    """Mean over rows of each logit vector's standard deviation (ddof 1, as ``torch.std``)."""
    z = np.asarray(logits, dtype=np.float64)
    return float(z.std(axis=1, ddof=1).mean())


def calibration_metrics(logits: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> Dict[str, Any]:
    """Every metric of one model: ECE (both binnings), NLL, Brier, AURC, accuracy and logit std."""
    conf, correct = confidence_and_correct(logits, labels)
    return {"ece": ece(logits, labels, n_bins, "equal_mass"),
            "ece_equal_width": ece(logits, labels, n_bins, "equal_width"),
            "nll": nll(logits, labels), "brier": brier(logits, labels), "aurc": aurc(conf, correct),
            "accuracy": float(correct.mean()), "logit_std": logit_std(logits), "n": int(conf.shape[0])}
