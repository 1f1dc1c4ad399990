"""App. K as the paper states it: eta from the average pairwise distance of PROJECTED features.

App. K: "we propose to replace centroid-centroid distance with *average pairwise distance* between
the projected penultimate layer representations". The distance between classes a and b is

    D(a, b) = mean_{x in a, y in b} || P x - P y ||        (Euclidean, NOT squared)

and Eq. 1 is applied unchanged with D in place of ||c_a - c_b||^2 (R = sum of D over S1 + S2).

Which projection. The paper's only projection is App. F's (Mueller et al. 2019): an orthonormal
basis of the final-layer templates of the classes being compared (QR), templates with the bias
appended and features with a 1 appended (Fig. 1, footnote 1), then PCA to 2-D for the picture.
App. K does not say which classes' templates span the basis for a target with |S1| + |S2| = 24
classes, nor whether the PCA step is kept. Our reading, the most faithful we see: the basis spans
the templates of the target and every class of S1 and S2 (App. F's construction with all the
classes that enter one eta, so all distances of one target live in the same space and R sums
comparable numbers); no PCA (it is a display step: it would discard dimensions and depend on which
samples it was fitted on). Each file is projected with its OWN model's weight and bias, as Fig. 1
projects each student with its own final layer; files without ``weight`` cannot be projected.

This costs O(n_a n_b |S|) per class pair (the paper: "more computationally expensive"), on the rows
of the 1 + |S| classes only; ``max_per_class`` caps the rows per class with a seeded draw. The
closed-form mean SQUARED distance of the raw features stays in :mod:`lskd_core.diffusion`.
"""

from __future__ import annotations

from typing import Dict, Optional, Protocol, Sequence

import numpy as np

from lskd_core.diffusion import check_class_sets, eta_from_distances
from lskd_core.sampling import class_rows

__all__ = ["template_basis", "mean_pairwise_distance", "projected_pairwise_distances",
           "projected_pairwise_eta"]

class FeatureLike(Protocol):
    """What :func:`projected_pairwise_eta` reads (a FeatureFile has it)."""

    features: np.ndarray
    labels: np.ndarray
    weight: Optional[np.ndarray]
    bias: Optional[np.ndarray]


# Rows of `a` per cdist call: bounds the temporary distance block to ~32 MiB.
_BLOCK_ELEMENTS = 1 << 22


def template_basis(weight: np.ndarray, bias: Optional[np.ndarray], classes: Sequence[int]) -> np.ndarray:
    """Orthonormal basis [D(+1), m] of the templates ``[w_c, b_c]`` of ``classes`` (App. F).

    Column j is the Gram-Schmidt direction of ``classes[j]`` (positive diagonal of R). ValueError
    when the templates are linearly dependent (the basis would not have m columns).
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"weight must be [K, D], got shape {w.shape}")
    idx = list(classes)
    templates = w[idx]
    if bias is not None:
        b = np.asarray(bias, dtype=np.float64).reshape(-1)
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"bias has {b.shape[0]} entries but weight has {w.shape[0]} rows")
        templates = np.concatenate([templates, b[idx, None]], axis=1)
    if not np.isfinite(templates).all():
        raise ValueError("weight/bias of the listed classes contain NaN or inf")
    if templates.shape[0] > templates.shape[1]:
        raise ValueError(f"{templates.shape[0]} class templates cannot be independent in "
                         f"{templates.shape[1]} dimensions: use fewer classes in S1 + S2")
    q, r = np.linalg.qr(templates.T)
    diag = np.abs(np.diag(r))
    if diag.min() <= templates.shape[1] * np.finfo(np.float64).eps * diag.max():
        raise ValueError(f"the final-layer templates of classes {idx} are linearly dependent: "
                         f"they do not span a {len(idx)}-D subspace to project on")
    return q * np.sign(np.diag(r))[None, :]


def _project(x: np.ndarray, basis: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    d = x.shape[1]
    out = x @ basis[:d]
    if basis.shape[0] == d + 1:  # [x, 1] @ Q without building the augmented copy
        out += basis[d]
    return out


def mean_pairwise_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Exact mean Euclidean distance over all pairs (a_i, b_j), computed in blocks of rows."""
    from scipy.spatial.distance import cdist  # lazy: keeps CLI start-up fast

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise ValueError(f"need two non-empty [n, m] arrays of equal width, got {a.shape} and "
                         f"{b.shape}")
    rows = max(1, _BLOCK_ELEMENTS // len(b))
    total = 0.0
    for start in range(0, len(a), rows):
        total += float(cdist(a[start:start + rows], b).sum())
    return total / (len(a) * len(b))


def projected_pairwise_distances(features: np.ndarray, labels: np.ndarray, weight: np.ndarray,
                                 bias: Optional[np.ndarray], target: int, classes: Sequence[int],
                                 max_per_class: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """[len(classes)] average pairwise distance between ``target`` and each class, projected
    onto the templates of ``[target, *classes]`` (module docstring)."""
    if max_per_class is not None and int(max_per_class) < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    labels = np.asarray(labels)
    everyone = [int(target), *(int(c) for c in classes)]
    basis = template_basis(weight, bias, everyone)
    rows = class_rows(labels, everyone, max_per_class, seed)
    # memory-mapped features: only these rows are read
    projected = [_project(np.asarray(features[r]), basis) for r in rows]
    for c, p in zip(everyone, projected):
        if not np.isfinite(p).all():
            raise ValueError(f"features of class {c} contain NaN or inf")
    return np.array([mean_pairwise_distance(projected[0], p) for p in projected[1:]])


def projected_pairwise_eta(before: FeatureLike, after: FeatureLike, target: int,
                           similar: Sequence[int], dissimilar: Sequence[int],
                           max_per_class: Optional[int] = None, seed: int = 0) -> Dict[str, float]:
    """App. K's eta (PERCENT): ``{"eta_s1_pairwise_proj", "eta_s2_pairwise_proj"}``.

    ``before``/``after`` have ``features``, ``labels``, ``weight`` and ``bias`` (a
    :class:`lskd_core.features_io.FeatureFile`); each is projected with its own weights.
    """
    for which, ff in (("before", before), ("after", after)):
        if ff.weight is None:
            raise ValueError(f"the projected pairwise eta (App. K) needs the final layer's weight "
                             f"in the {which} features file; export it with weight and bias")
    num_classes = int(np.asarray(before.weight).shape[0])
    target, s1, s2 = check_class_sets(num_classes, target, similar, dissimilar)
    classes = s1 + s2
    dist = []
    for ff in (before, after):
        assert ff.weight is not None  # checked above; tells mypy
        dist.append(projected_pairwise_distances(ff.features, ff.labels, ff.weight, ff.bias, target,
                                                 classes, max_per_class, seed))
    e1, e2 = eta_from_distances(dist[0], dist[1], len(s1), target, classes)
    return {"eta_s1_pairwise_proj": e1, "eta_s2_pairwise_proj": e2}
