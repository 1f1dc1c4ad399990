"""Argument validation shared by every part of lskd: one wording for every bad-input error."""

from __future__ import annotations

import math


def _as_float(value, name: str, requirement: str) -> float:
    """``float(value)``, or ValueError "NAME must be REQUIREMENT, got VALUE" (bools are refused)."""
    if not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise ValueError(f"{name} must be {requirement}, got {value!r}")


def check_temperature(value: float, name: str = "temperature") -> float:
    """Return ``value`` as float; raise ValueError unless it is finite and > 0."""
    value = _as_float(value, name, "a positive finite number")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


def check_alpha(value: float, name: str = "label_smoothing") -> float:
    """Label-smoothing mixture parameter alpha must lie in [0, 1)."""
    value = _as_float(value, name, "a number in [0, 1)")
    if not (0.0 <= value < 1.0):
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


def check_beta(value: float, name: str = "beta") -> float:
    """KD mixing weight beta must lie in [0, 1] (1 = pure KD, the paper's setting)."""
    value = _as_float(value, name, "a number in [0, 1]")
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return value
