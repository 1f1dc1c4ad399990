"""Argument validation shared by every part of lskd: one wording for every bad-input error."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Sane temperatures. kd_loss is measured accurate for T in [0.1, 1000] (lskd_core.losses). We accept
# more on each side, for reasons: the entropy-matching search of App. H brackets T' in [0.01, 1e4]
# (smoothness.match_temperature's defaults) and a matched T' must be usable as a KD temperature;
# kd_loss's large-T limit (logit matching, Hinton et al. 2015) is exercised at T = 1e5. Beyond
# that nothing is meaningful: at T = 1e-300 or 1e300, z / T overflows or rounds every target to
# one-hot / uniform, and such values are typos or unit mistakes.
T_MIN, T_MAX = 1e-2, 1e5


def _as_float(value: Any, name: str, requirement: str) -> float:
    """``float(value)``, or ValueError "NAME must be REQUIREMENT, got VALUE" (bools are refused)."""
    if not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise ValueError(f"{name} must be {requirement}, got {value!r}")


def check_temperature(value: Any, name: str = "temperature") -> float:
    """Return ``value`` as float; ValueError unless it is finite and in [T_MIN, T_MAX] = [0.01, 1e5]."""
    out = _as_float(value, name, "a positive finite number")
    if not math.isfinite(out) or not T_MIN <= out <= T_MAX:
        # the old wording first (callers and users match on it), then the accepted range
        raise ValueError(f"{name} must be a positive finite number, got {value!r} "
                         f"(accepted: {T_MIN:g} <= T <= {T_MAX:g})")
    return out


def check_alpha(value: Any, name: str = "label_smoothing") -> float:
    """Label-smoothing mixture parameter alpha must lie in [0, 1)."""
    out = _as_float(value, name, "a number in [0, 1)")
    if not (0.0 <= out < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return out


def check_beta(value: Any, name: str = "beta") -> float:
    """KD mixing weight beta must lie in [0, 1] (1 = pure KD, the paper's setting)."""
    out = _as_float(value, name, "a number in [0, 1]")
    if not (0.0 <= out <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return out


def check_labels(labels: Any, n_rows: int, name: str = "labels") -> np.ndarray:
    """``labels`` as a 1-D int64 array of ``n_rows`` class ids (integer-valued floats accepted);
    ValueError naming ``name`` otherwise."""
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(lab.shape)}")
    if lab.shape[0] != n_rows:
        raise ValueError(f"{name} has {lab.shape[0]} entries but features has {n_rows} rows")
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        if np.issubdtype(lab.dtype, np.floating) and np.all(np.isfinite(lab)) and np.all(lab == np.round(lab)):
            lab = lab.astype(np.int64)
        else:
            raise ValueError(f"{name} must be integer class ids, got dtype {lab.dtype}")
    return lab.astype(np.int64, copy=False)
