"""The vision data layer's error types (shared by the dataset modules without import cycles)."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["DatasetError", "BadSample"]


class DatasetError(ValueError):
    """A dataset is missing or malformed; the message names the path and the fix."""


class BadSample(NamedTuple):
    """An image that could not be read or decoded; the trainer stops (naming it) or skips it."""

    path: str
    reason: str
