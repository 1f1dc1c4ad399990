"""Class centroids, relative distance and the diffusion index eta (paper Sec. 4, Eq. 1; App. K).

Eq. 1. For a target class pi with centroid c_pi(T), a set S1 of semantically similar and a set S2
of dissimilar classes,

    d(c_pi(T), c_k(T)) = ||c_pi(T) - c_k(T)||^2 / R(T),
    R(T) = sum_{p in S1} ||c_pi(T) - c_p(T)||^2 + sum_{q in S2} ||c_pi(T) - c_q(T)||^2,

    eta(T1, T2; pi, S) = 1/|S| sum_{k in S} [d(c_pi(T2), c_k(T2)) - d(c_pi(T1), c_k(T1))]
                                             / d(c_pi(T1), c_k(T1)).

R is always taken over S1 and S2 together, for eta(S1) and eta(S2) alike. We report eta in
PERCENT (Eq. 1's fraction x 100), as the paper's tables do: Table 3's -4.618 is a 4.618 % decrease
(a fraction could not go below -1).

App. K, two variants. (1) ``pairwise=True`` here: the MEAN SQUARED pairwise distance over all
cross-class sample pairs of the raw features, in closed form,

    mean_{x in a, y in b} ||x - y||^2 = ||mu_a - mu_b||^2 + tr(Cov_a) + tr(Cov_b)

(population covariances), so it needs only per-class counts, sums and sums of squared norms:
never an N x M distance matrix. Its keys are ``eta_s1_pairwise_sq`` / ``eta_s2_pairwise_sq``
(``eta_s1_pairwise`` / ``eta_s2_pairwise`` are kept as deprecated aliases of the same numbers).
(2) The paper's own variant (average NON-squared Euclidean distance between the PROJECTED
representations) needs the samples themselves: :mod:`lskd_core.pairwise`.

Everything here starts from :class:`ClassStats`, accumulated in ONE pass over the features for all
classes at once (float64 accumulators, row chunks of a few tens of MiB), so any number of targets
costs one pass, and float16 / memory-mapped 1.3M x 2048 ImageNet features fit in a few hundred MiB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from lskd_core.features_io import MAX_INFERRED_CLASSES

__all__ = [
    "ClassStats",
    "class_stats",
    "relative_distances",
    "squared_distances",
    "diffusion_index",
    "diffusion_indices",
    "eta_over_targets",
    "eta_from_distances",
    "class_accuracy",
    "check_class_sets",
    "DEFAULT_CHUNK_BYTES",
]

# Size of one float64 chunk of rows. Large enough that per-chunk Python overhead is negligible,
# small enough that the upcast copy and its sorted copy stay far below the features themselves.
DEFAULT_CHUNK_BYTES = 32 << 20


@dataclass
class ClassStats:
    """Per-class sufficient statistics of penultimate-layer features.

    counts [K] int64, sums [K, D] float64 (sum of x), sq_norm_sums [K] float64 (sum of ||x||^2).
    """

    counts: np.ndarray
    sums: np.ndarray
    sq_norm_sums: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])

    @property
    def dim(self) -> int:
        return int(self.sums.shape[1])

    @property
    def centroids(self) -> np.ndarray:
        """[K, D] class means; rows of classes without samples are NaN."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.sums / self.counts[:, None]

    @property
    def trace_cov(self) -> np.ndarray:
        """[K] trace of each class's population covariance: E||x||^2 - ||E x||^2 (NaN if empty)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_sq = self.sq_norm_sums / self.counts
            mu = self.sums / self.counts[:, None]
            tr = mean_sq - np.einsum("kd,kd->k", mu, mu)
        # rounding can push a (near-)zero spread a hair below zero
        return np.where(np.isnan(tr), tr, np.maximum(tr, 0.0))

    def merge(self, other: "ClassStats") -> "ClassStats":
        """Statistics of the union of two disjoint sample sets (e.g. shards of a split)."""
        if self.counts.shape != other.counts.shape or self.sums.shape != other.sums.shape:
            raise ValueError(
                f"cannot merge ClassStats of shapes {self.sums.shape} and {other.sums.shape}")
        return ClassStats(self.counts + other.counts, self.sums + other.sums,
                          self.sq_norm_sums + other.sq_norm_sums)


# ----------------------------------------------------------------------------------------------
# accumulation
# ----------------------------------------------------------------------------------------------

def _as_label_array(labels: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.shape[0] != n:
        raise ValueError(f"labels has {labels.shape[0]} entries but features has {n} rows")
    if labels.dtype == bool or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    return labels


def class_stats(features: np.ndarray, labels: np.ndarray, num_classes: Optional[int] = None,
                chunk_size: Optional[int] = None) -> ClassStats:
    """Accumulate per-class counts, sums and sums of squared norms in float64, chunk by chunk.

    ``features`` [N, D] may be float16/32/64 (or integer), an ``np.memmap`` or an array from
    ``np.load(mmap_mode='r')``: only ``chunk_size`` rows are upcast at a time (default: as many rows
    as fit in 32 MiB of float64). ``num_classes`` defaults to ``max(labels) + 1``.

    Raises ValueError for labels that are negative or >= num_classes and for NaN/inf features
    (naming the first offending row).
    """
    if not hasattr(features, "shape") or len(features.shape) != 2:
        raise ValueError(f"features must be a 2-D array [N, D], got shape "
                         f"{getattr(features, 'shape', None)}")
    if not (np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)):
        raise ValueError(f"features must be numeric, got dtype {features.dtype}")
    n, d = (int(s) for s in features.shape)
    labels = _as_label_array(labels, n)
    if n and labels.min() < 0:
        bad = int(np.flatnonzero(labels < 0)[0])
        raise ValueError(f"labels must be >= 0: row {bad} has label {int(labels[bad])}")
    if num_classes is None:
        if n == 0:
            raise ValueError("num_classes is required when there are no samples")
        num_classes = int(labels.max()) + 1
        if num_classes > max(n, MAX_INFERRED_CLASSES):
            # one stray label must not become a [max_label, D] float64 allocation
            raise ValueError(f"the largest label {num_classes - 1} would make {num_classes} classes "
                             f"for {n} samples: pass num_classes (or fix the labels)")
    num_classes = int(num_classes)
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if n and labels.max() >= num_classes:
        bad = int(np.flatnonzero(labels >= num_classes)[0])
        raise ValueError(f"labels out of range: row {bad} has label {int(labels[bad])} but "
                         f"num_classes = {num_classes} (valid labels are 0..{num_classes - 1})")
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_CHUNK_BYTES // (8 * max(d, 1)))
    chunk_size = int(chunk_size)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    from scipy import sparse  # lazy: keeps `python -m lskd_core.eta --help` fast

    counts = np.bincount(labels, minlength=num_classes).astype(np.int64)
    sums = np.zeros((num_classes, d), dtype=np.float64)
    sq = np.zeros(num_classes, dtype=np.float64)
    rows = min(chunk_size, n)
    # Reused buffers. numpy's direct float16 -> float64 cast is scalar code; going through float32
    # (SIMD) into preallocated buffers is several times faster and exact (both casts are exact).
    buf64 = np.empty((rows, d), dtype=np.float64) if features.dtype != np.float64 else None
    buf32 = np.empty((rows, d), dtype=np.float32) if features.dtype == np.float16 else None
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        m = stop - start
        lab = np.asarray(labels[start:stop], dtype=np.intp)
        if buf64 is None:
            x = np.asarray(features[start:stop])
        else:
            x = buf64[:m]
            if buf32 is not None:
                np.copyto(buf32[:m], features[start:stop])
                np.copyto(x, buf32[:m])
            else:
                np.copyto(x, features[start:stop], casting="unsafe")
        row_sq = np.einsum("ij,ij->i", x, x)
        # inf and NaN both survive a sum of squares, and float16/32 values cannot overflow float64
        # when squared: one check on N numbers instead of N x D
        if not np.isfinite(row_sq).all():
            bad = start + int(np.flatnonzero(~np.isfinite(row_sq))[0])
            raise ValueError(f"features contain NaN or inf (first at row {bad}, label "
                             f"{int(labels[bad])})")
        sq += np.bincount(lab, weights=row_sq, minlength=num_classes)
        # Per-class row sums as a sparse (classes-in-chunk x rows) 0/1 matrix times the chunk:
        # O(rows x D) in compiled code, no dense one-hot, no gather of the rows, and the result
        # only has rows for the classes present in this chunk.
        present, inverse = np.unique(lab, return_inverse=True)
        indptr = np.zeros(len(present) + 1, dtype=np.intp)
        np.cumsum(np.bincount(inverse, minlength=len(present)), out=indptr[1:])
        onehot = sparse.csr_matrix((np.ones(m), np.argsort(inverse, kind="stable"), indptr),
                                   shape=(len(present), m))
        sums[present] += onehot @ x
    return ClassStats(counts=counts, sums=sums, sq_norm_sums=sq)


# ----------------------------------------------------------------------------------------------
# Eq. 1
# ----------------------------------------------------------------------------------------------

def _check_index(value: int, num_classes: int, name: str) -> int:
    try:
        idx = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a class index, got {value!r}") from None
    if idx != value or not 0 <= idx < num_classes:
        raise ValueError(f"{name} {value!r} is not a class index in 0..{num_classes - 1}")
    return idx


def check_class_sets(num_classes: int, target: int, similar: Sequence[int],
                     dissimilar: Sequence[int]) -> Tuple[int, List[int], List[int]]:
    """Validate a (target, S1, S2) triple; return it as ints. ValueError names the problem."""
    target = _check_index(target, num_classes, "target")
    s1 = [_check_index(c, num_classes, "similar class") for c in similar]
    s2 = [_check_index(c, num_classes, "dissimilar class") for c in dissimilar]
    if not s1:
        raise ValueError(f"similar set S1 of target {target} is empty")
    if not s2:
        raise ValueError(f"dissimilar set S2 of target {target} is empty")
    for name, s in (("similar set S1", s1), ("dissimilar set S2", s2)):
        if len(set(s)) != len(s):
            dup = sorted({c for c in s if s.count(c) > 1})
            raise ValueError(f"{name} of target {target} lists class(es) {dup} more than once")
        if target in s:
            raise ValueError(f"target class {target} is inside its own {name} {s}")
    both = sorted(set(s1) & set(s2))
    if both:
        raise ValueError(f"S1 and S2 overlap for target {target}: class(es) {both} are in both")
    return target, s1, s2


def _check_has_samples(stats: ClassStats, classes: Iterable[int], which: str) -> None:
    for c in classes:
        if stats.counts[c] == 0:
            raise ValueError(f"class {c} has no samples in the {which} features")


def squared_distances(stats: ClassStats, target: int, classes: Sequence[int],
                      pairwise: bool = False) -> np.ndarray:
    """Squared centroid distances ||c_target - c_k||^2 for k in ``classes`` (float64).

    ``pairwise=True``: mean SQUARED distance over all cross-class sample pairs of the raw features
    (App. K's closed-form variant), ``||mu_t - mu_k||^2 + tr(Cov_t) + tr(Cov_k)``.
    """
    target = _check_index(target, stats.num_classes, "target")
    idx = np.asarray([_check_index(c, stats.num_classes, "class") for c in classes], dtype=np.intp)
    _check_has_samples(stats, [target, *idx.tolist()], "given")
    mu_t = stats.sums[target] / stats.counts[target]
    mu = stats.sums[idx] / stats.counts[idx, None]
    diff = mu - mu_t
    dist = np.einsum("kd,kd->k", diff, diff)
    if pairwise:
        tr = stats.trace_cov
        dist = dist + tr[target] + tr[idx]
    return dist


def relative_distances(stats: ClassStats, target: int, classes: Sequence[int],
                       pairwise: bool = False) -> np.ndarray:
    """Eq. 1's d(c_target, c_k) = ||c_target - c_k||^2 / R for every k in ``classes``.

    R is the sum of the squared distances to all of ``classes``; pass S1 + S2 to get Eq. 1's
    normalisation.
    """
    if len(classes) == 0:
        raise ValueError("classes must not be empty (R would be an empty sum)")
    dist = squared_distances(stats, target, classes, pairwise=pairwise)
    total = dist.sum()
    if not total > 0:
        raise ValueError(f"all listed classes share the centroid of target {target}: R = 0")
    return dist / total


def eta_from_distances(before: np.ndarray, after: np.ndarray, n_similar: int, target: int,
                       classes: Sequence[int]) -> Tuple[float, float]:
    """Eq. 1 from distances to ``classes`` = S1 + S2 (first ``n_similar`` are S1), in PERCENT.

    ``before``/``after`` hold any cluster distance (squared centroid distance in Eq. 1, a pairwise
    distance in App. K); each is normalised by its own sum R before the relative change.
    """
    d = []
    for which, dist in (("before", before), ("after", after)):
        dist = np.asarray(dist, dtype=np.float64)
        total = dist.sum()
        if not total > 0:
            raise ValueError(f"all listed classes share the centroid of target {target} in the "
                             f"{which} features: R = 0")
        d.append(dist / total)
    d1, d2 = d
    if (d1 == 0).any():
        bad = classes[int(np.flatnonzero(d1 == 0)[0])]
        raise ValueError(f"class {bad} has the same centroid as target {target} in the before "
                         f"features: its relative change is undefined")
    change = (d2 - d1) / d1
    return float(100.0 * change[:n_similar].mean()), float(100.0 * change[n_similar:].mean())


def _eta_pair(before: ClassStats, after: ClassStats, target: int, s1: List[int], s2: List[int],
              pairwise: bool) -> Tuple[float, float]:
    classes = s1 + s2
    return eta_from_distances(squared_distances(before, target, classes, pairwise=pairwise),
                              squared_distances(after, target, classes, pairwise=pairwise),
                              len(s1), target, classes)


def diffusion_index(before: ClassStats, after: ClassStats, target: int, similar: Sequence[int],
                    dissimilar: Sequence[int], pairwise: bool = False) -> Dict[str, float]:
    """eta(T1, T2; target, S1) and eta(T1, T2; target, S2) of Eq. 1, in PERCENT.

    ``before``/``after`` are the statistics of the features at T1 and T2. Returns
    ``{"eta_s1", "eta_s2"}``; with ``pairwise=True`` also ``eta_s1_pairwise_sq`` /
    ``eta_s2_pairwise_sq``, App. K with the mean SQUARED pairwise distance of the raw features
    (closed form), and the deprecated aliases ``eta_s1_pairwise`` / ``eta_s2_pairwise``. Raises ValueError on mismatched statistics, invalid sets (empty, overlapping,
    containing the target, out of range) or classes without samples in either file.
    """
    if before.dim != after.dim:
        raise ValueError(f"feature dimensions differ: before has D = {before.dim}, after has "
                         f"D = {after.dim}")
    if before.num_classes != after.num_classes:
        raise ValueError(f"class sets differ: before has {before.num_classes} classes, after has "
                         f"{after.num_classes}")
    target, s1, s2 = check_class_sets(before.num_classes, target, similar, dissimilar)
    _check_has_samples(before, [target, *s1, *s2], "before")
    _check_has_samples(after, [target, *s1, *s2], "after")
    eta_s1, eta_s2 = _eta_pair(before, after, target, s1, s2, pairwise=False)
    out = {"eta_s1": eta_s1, "eta_s2": eta_s2}
    if pairwise:
        p1, p2 = _eta_pair(before, after, target, s1, s2, pairwise=True)
        out.update(eta_s1_pairwise_sq=p1, eta_s2_pairwise_sq=p2,
                   eta_s1_pairwise=p1, eta_s2_pairwise=p2)
    return out


def diffusion_indices(before: ClassStats, after: ClassStats,
                      sets: Mapping[int, Tuple[Sequence[int], Sequence[int]]],
                      pairwise: bool = False) -> List[Dict[str, float]]:
    """Eq. 1 for many targets from one pass's statistics.

    ``sets`` maps target -> (S1, S2). Returns one dict per target, in the mapping's order:
    ``{"target", "eta_s1", "eta_s2"[, pairwise keys as in diffusion_index]}`` (percent).
    """
    results = []
    for target, pair in sets.items():
        try:
            similar, dissimilar = pair
        except (TypeError, ValueError):
            raise ValueError(f"sets[{target!r}] must be a pair (similar, dissimilar), got "
                             f"{pair!r}") from None
        entry: Dict[str, float] = {"target": int(target)}
        entry.update(diffusion_index(before, after, target, similar, dissimilar, pairwise=pairwise))
        results.append(entry)
    return results


def eta_over_targets(before: Tuple[np.ndarray, np.ndarray], after: Tuple[np.ndarray, np.ndarray], num_classes: int,
                     sets: Mapping[int, Tuple[Sequence[int], Sequence[int]]]) -> Dict[str, Any]:
    """Eq. 1 from the ``before`` (lower T) to the ``after`` (higher T) student's ``(features,
    labels)`` for every target of ``sets``, summarised as the advisor and the trainer's eta monitor
    read it: ``targets`` (per target), ``eta_s1`` / ``eta_s2`` (their mean over targets, percent) and
    ``share`` (the fraction of targets showing diffusion, eta_S1 < 0 and eta_S2 > 0; Sec. 4)."""
    per = [{"target": e["target"], "eta_s1": e["eta_s1"], "eta_s2": e["eta_s2"]}
           for e in diffusion_indices(class_stats(before[0], before[1], num_classes),
                                      class_stats(after[0], after[1], num_classes), dict(sorted(sets.items())))]
    if not per:
        return {"eta_s1": None, "eta_s2": None, "share": None, "targets": []}
    return {"eta_s1": float(np.mean([p["eta_s1"] for p in per])), "eta_s2": float(np.mean([p["eta_s2"] for p in per])),
            "share": float(np.mean([p["eta_s1"] < 0 and p["eta_s2"] > 0 for p in per])), "targets": per}


# ----------------------------------------------------------------------------------------------
# App. I
# ----------------------------------------------------------------------------------------------

def class_accuracy(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class top-1 accuracy in PERCENT (App. I, Tables I.1-I.3); NaN for classes without samples.

    ``pred`` is either predicted class indices [N] or scores/logits [N, K] (argmax is taken).
    """
    pred = np.asarray(pred)
    labels = np.asarray(labels)
    num_classes = int(num_classes)
    if pred.ndim == 2:
        if pred.shape[1] != num_classes:
            raise ValueError(f"pred has {pred.shape[1]} columns but num_classes = {num_classes}")
        pred = pred.argmax(axis=1)
    if pred.ndim != 1 or labels.ndim != 1 or pred.shape != labels.shape:
        raise ValueError(f"pred {pred.shape} and labels {labels.shape} must be [N] (or pred [N, K])")
    labels = _as_label_array(labels, labels.shape[0])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels out of range 0..{num_classes - 1}: found "
                         f"{int(labels.min())}..{int(labels.max())}")
    total = np.bincount(labels, minlength=num_classes)
    right = np.bincount(labels[pred == labels], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 100.0 * right / np.maximum(total, 1), np.nan)
