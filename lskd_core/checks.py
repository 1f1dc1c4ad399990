"""Argument validation shared by every part of lskd: one wording for every bad-input error."""

from __future__ import annotations

import math


def check_temperature(value: float, name: str = "temperature") -> float:
    """Return ``value`` as float; raise ValueError unless it is finite and > 0."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def check_alpha(value: float, name: str = "label_smoothing") -> float:
    """Label-smoothing mixture parameter alpha must lie in [0, 1)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}") from None
    if not (0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


def check_beta(value: float, name: str = "beta") -> float:
    """KD mixing weight beta must lie in [0, 1] (1 = pure KD, the paper's setting)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value
