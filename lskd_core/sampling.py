"""Seeded per-class row subsets: which rows of a feature matrix stand for each class when a
computation caps the rows per class (App. K's pairwise distances, Fig. 1's projections)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

__all__ = ["class_rows"]


def class_rows(labels: np.ndarray, classes: Sequence[int], max_per_class: Optional[int], seed: int,
               context: str = "") -> List[np.ndarray]:
    """Row indices of each class in ``classes`` order: all of them, or a seeded subset of
    ``max_per_class`` rows (sorted) when a class has more. ValueError when a class has no rows
    (``context`` is added to the message: where the classes came from)."""
    rng = np.random.default_rng(seed)
    out = []
    for c in classes:
        rows = np.flatnonzero(labels == c)
        if rows.size == 0:
            raise ValueError(f"class {c}{context} has no samples")
        if max_per_class is not None and rows.size > max_per_class:
            rows = np.sort(rng.choice(rows, size=int(max_per_class), replace=False))
        out.append(rows)
    return out
