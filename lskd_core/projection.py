"""Penultimate-layer projection of Müller et al. (2019), as used for Fig. 1 of the paper.

Supplementary F, Algorithms 1 and 2 of Chandrasegaran et al. (ICML 2022):

1. pick three classes (two semantically similar, one dissimilar);
2. build an orthonormal basis of the 3-D subspace spanned by their final-layer *templates*
   ``w_k`` with a QR decomposition;
3. project the penultimate features onto that basis;
4. reduce the 3-D projection to 2-D with PCA and scatter-plot it.

Two deliberate departures from the authors' released script (Algorithm 2):

* Fig. 1's footnote 1 says the templates include the bias (``w_k`` has ``b_k`` appended) and the
  features are concatenated with 1. Algorithm 2 did the QR on the weights only; we append the
  bias, so the basis lives in ``R^(D+1)`` and :func:`project` appends the constant 1 column.
* The released script indexed the bias with ``[0, 1, 2]`` instead of the three class ids. Here
  the bias entries are always taken at ``class_ids`` (``bias[list(class_ids)]``).

PCA is fitted once per model, on the three classes of its *training* split, and reused unchanged
for the validation split (:class:`ProjectionView`), so train and val panels share one frame.

numpy + matplotlib only (no scikit-learn): :class:`Pca2` is a small SVD-based PCA with a
deterministic sign convention so figures do not flip between runs.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from lskd_core.checks import check_labels
from lskd_core.sampling import class_rows

if TYPE_CHECKING:
    from lskd_core.projection_figure import plot_projection_grid, projection_grid_figure

__all__ = [
    "projection_basis",
    "project",
    "Pca2",
    "ProjectionView",
    "select_three_classes",
    "centroid_distance_2d",
    "cluster_spread_2d",
    "projection_grid_figure",
    "plot_projection_grid",
]

# The figures live in lskd_core.projection_figure (matplotlib); they are re-exported lazily (PEP 562)
# so that importing the projection does not import matplotlib.
_FIGURE_NAMES = ("projection_grid_figure", "plot_projection_grid")


def __getattr__(name: str) -> Any:
    if name in _FIGURE_NAMES:
        from lskd_core import projection_figure

        return getattr(projection_figure, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Rows converted to float64 at a time in project(): features may be float16 memmaps.
_CHUNK_ROWS = 65536


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _as_matrix(value: Any, name: str) -> np.ndarray:
    """Return ``value`` as a 2-D numeric ndarray (dtype kept, no copy for ndarrays/memmaps)."""
    arr = value if isinstance(value, np.ndarray) else np.asarray(value)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {tuple(arr.shape)}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    # Chunked so a large float16 memmap is never converted whole.
    for start in range(0, max(arr.shape[0], 1), _CHUNK_ROWS):
        block = np.asarray(arr[start:start + _CHUNK_ROWS])
        if block.size and not np.isfinite(block).all():
            bad = start + int(np.argwhere(~np.isfinite(block))[0][0])
            raise ValueError(f"{name} contains NaN or inf (first at row {bad})")


def _check_class_ids(class_ids: Any, num_classes: Optional[int] = None, name: str = "class_ids") -> tuple:
    """Three distinct integer class ids (in ``[0, num_classes)`` when that is known)."""
    if isinstance(class_ids, (str, bytes)) or not hasattr(class_ids, "__len__"):
        raise ValueError(f"{name} must be a sequence of 3 distinct class ids, got {class_ids!r}")
    ids = list(np.asarray(class_ids).reshape(-1)) if isinstance(class_ids, np.ndarray) else list(class_ids)
    if len(ids) != 3:
        raise ValueError(f"{name} must hold exactly 3 class ids (App. F's three-class analysis), got {class_ids!r}")
    out = []
    for c in ids:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Integral):
            # floats such as 1.0 are refused too: an id is an index, not a measurement
            raise ValueError(f"{name} must be integers, got {c!r} in {class_ids!r}")
        out.append(int(c))
    if len(set(out)) != 3:
        raise ValueError(f"{name} must be 3 distinct class ids, got duplicates in {out}")
    if num_classes is not None:
        bad = [c for c in out if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"{name} {bad} out of range [0, {num_classes}) for a final layer with {num_classes} classes")
    return tuple(out)


# --------------------------------------------------------------------------------------------
# basis and projection (Algorithm 1, steps 1 and 3)
# --------------------------------------------------------------------------------------------
def projection_basis(weight: Any, bias: Any, class_ids: Sequence[int], rtol: Optional[float] = None) -> np.ndarray:
    """Orthonormal basis of the three classes' final-layer templates (App. F, Algorithm 1).

    Template ``t_k = [w_k, b_k]`` (footnote 1 of Fig. 1: the bias is appended, and features get a
    1 appended to match) for ``k`` in ``class_ids`` -- the bias is indexed with the class ids, not
    ``[0, 1, 2]`` as in the released script. Returns ``Q`` of shape ``[D+1, 3]`` (``[D, 3]`` when
    ``bias`` is None) from ``numpy.linalg.qr`` of ``[t_a, t_b, t_c]``.

    Sign convention: the diagonal of ``R`` is made positive, so column ``j`` is the Gram-Schmidt
    direction of template ``class_ids[j]`` (column 0 is ``t_a / |t_a|``); this makes the basis
    unique for a given model and class order.

    ``rtol``: templates whose smallest/largest singular value ratio is below it are rejected as
    rank-deficient (default ``max(D+1, 3) * eps`` of the weight's float dtype, float32 -> ~1e-7).
    """
    w = _as_matrix(weight, "weight")
    num_classes, dim = w.shape
    ids = _check_class_ids(class_ids, num_classes)
    _check_finite(w, "weight")
    templates = np.asarray(w[list(ids)], dtype=np.float64)  # [3, D]
    if bias is not None:
        b = np.asarray(bias)
        if b.ndim != 1 or b.shape[0] != num_classes:
            raise ValueError(
                f"bias must be 1-D with one entry per class ({num_classes}, matching weight {tuple(w.shape)}), "
                f"got shape {tuple(b.shape)}")
        if not np.isfinite(b).all():
            raise ValueError("bias contains NaN or inf")
        # The fix over the released script: bias at the class ids, not bias[[0, 1, 2]].
        templates = np.concatenate([templates, b[list(ids)].astype(np.float64)[:, None]], axis=1)
    rows = templates.shape[1]
    if rows < 3:
        raise ValueError(f"weight has feature dimension {dim}: the three templates need at least 3 dimensions "
                         f"(with the bias: D + 1 >= 3)")
    mat = templates.T  # [rows, 3], one template per column
    if rtol is None:
        wdt = w.dtype if np.issubdtype(w.dtype, np.floating) else np.dtype(np.float64)
        rtol = max(rows, 3) * float(np.finfo(wdt).eps)
    sv = np.linalg.svd(mat, compute_uv=False)
    if sv[0] == 0.0 or sv[-1] <= rtol * sv[0]:
        cond = "inf" if sv[-1] == 0.0 else f"{sv[0] / sv[-1]:.3g}"
        raise ValueError(
            f"templates of class_ids {list(ids)} are rank-deficient (singular values {sv.tolist()}, condition {cond}; "
            f"rtol {rtol:.3g}): the three classes' final-layer rows do not span a 3-D subspace")
    q, r = np.linalg.qr(mat)  # reduced: q [rows, 3], r [3, 3]
    signs = np.sign(np.diag(r))
    signs[signs == 0] = 1.0  # cannot happen after the rank check; kept for safety
    return q * signs[None, :]


def project(features: Any, basis: Any, with_bias: Optional[bool] = None) -> np.ndarray:
    """Coordinates of ``features`` [N, D] in ``basis`` (Algorithm 1, "proj(X) = X w'").

    When ``basis`` has ``D + 1`` rows (templates with the bias appended) each feature vector is
    extended with a constant 1 (footnote 1 of Fig. 1); with ``D`` rows it is used as is.
    ``with_bias`` defaults to that automatic choice; passing True/False asserts it and raises if
    the shapes say otherwise. Returns float64 ``[N, basis.shape[1]]``; computed in row chunks so
    float16 memmaps are never converted whole.
    """
    x = _as_matrix(features, "features")
    q = np.asarray(_as_matrix(basis, "basis"), dtype=np.float64)
    n, dim = x.shape
    rows = q.shape[0]
    if rows == dim + 1:
        has_bias = True
    elif rows == dim:
        has_bias = False
    else:
        raise ValueError(f"basis has {rows} rows but features have dimension {dim}: "
                         f"expected {dim} (no bias) or {dim + 1} (bias appended)")
    if with_bias is not None and bool(with_bias) != has_bias:
        raise ValueError(f"with_bias={with_bias!r} but basis has {rows} rows for feature dimension {dim} "
                         f"({'bias row present' if has_bias else 'no bias row'})")
    if not np.isfinite(q).all():
        raise ValueError("basis contains NaN or inf")
    w, offset = (q[:dim], q[dim]) if has_bias else (q, None)
    out = np.empty((n, q.shape[1]), dtype=np.float64)
    for start in range(0, n, _CHUNK_ROWS):
        block = np.asarray(x[start:start + _CHUNK_ROWS], dtype=np.float64)
        if not np.isfinite(block).all():
            bad = start + int(np.argwhere(~np.isfinite(block))[0][0])
            raise ValueError(f"features contains NaN or inf (first at row {bad})")
        # [x, 1] @ Q == x @ Q[:D] + Q[D]: same numbers without building the augmented copy.
        res = block @ w
        if offset is not None:
            res += offset
        out[start:start + block.shape[0]] = res
    return out


# --------------------------------------------------------------------------------------------
# PCA to 2-D (Algorithm 1, step 4)
# --------------------------------------------------------------------------------------------
class Pca2:
    """Two-component PCA (centred, like scikit-learn's ``PCA(n_components=2)`` in Algorithm 2).

    Components come from the SVD of the centred data; their sign is fixed so that the loading of
    largest magnitude in each component is positive (first such entry on ties). That convention
    depends on the subspace only, not on sample order or on numerical noise in the SVD, so the
    same data always gives the same picture.

    Attributes after :meth:`fit`: ``mean_`` [d], ``components_`` [2, d] (orthonormal rows),
    ``explained_variance_`` [2] (sample variance, ``ddof=1``), ``explained_variance_ratio_`` [2].
    """

    n_components = 2

    def __init__(self) -> None:
        self.mean_: Optional[np.ndarray] = None
        self.components_: Optional[np.ndarray] = None
        self.explained_variance_: Optional[np.ndarray] = None
        self.explained_variance_ratio_: Optional[np.ndarray] = None

    @property
    def fitted(self) -> bool:
        return self.components_ is not None

    def fit(self, points: Any) -> "Pca2":
        x = np.asarray(_as_matrix(points, "points"), dtype=np.float64)
        n, d = x.shape
        if d < 2:
            raise ValueError(f"points must have at least 2 columns for a 2-D PCA, got {d}")
        if n < 2:
            raise ValueError(f"points must have at least 2 rows to fit a PCA, got {n}")
        if not np.isfinite(x).all():
            raise ValueError("points contains NaN or inf")
        mean = x.mean(axis=0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        comps = vt[:2].copy()
        pivot = np.argmax(np.abs(comps), axis=1)  # argmax returns the first index on ties
        signs = np.sign(comps[np.arange(2), pivot])
        signs[signs == 0] = 1.0
        comps *= signs[:, None]
        var = s ** 2 / (n - 1)
        total = var.sum()
        self.mean_ = mean
        self.components_ = comps
        self.explained_variance_ = var[:2].copy()
        self.explained_variance_ratio_ = var[:2] / total if total > 0 else np.zeros(2)
        return self

    def transform(self, points: Any) -> np.ndarray:
        if self.components_ is None or self.mean_ is None:
            raise ValueError("Pca2 is not fitted: call fit(points) first")
        x = np.asarray(_as_matrix(points, "points"), dtype=np.float64)
        if x.shape[1] != self.components_.shape[1]:
            raise ValueError(f"points have {x.shape[1]} columns but the PCA was fitted on "
                             f"{self.components_.shape[1]}")
        if not np.isfinite(x).all():
            raise ValueError("points contains NaN or inf")
        return (x - self.mean_) @ self.components_.T

    def fit_transform(self, points: Any) -> np.ndarray:
        return self.fit(points).transform(points)


# --------------------------------------------------------------------------------------------
# sample selection
# --------------------------------------------------------------------------------------------
def select_three_classes(features: Any, labels: Any, class_ids: Sequence[int], per_class: Optional[int] = None,
                         seed: int = 0) -> tuple:
    """Rows of the three classes, grouped in ``class_ids`` order (as Algorithm 2's slicing assumes).

    ``per_class``: keep at most this many samples per class, drawn without replacement with
    ``numpy.random.default_rng(seed)`` (the paper plots 150 per class); classes with fewer samples
    keep all of them. Within a class the original row order is kept.

    Returns ``(features_sel [M, D], labels_sel [M], index [M])`` where ``index`` are the selected
    row numbers of the input (so a memmap is only read at those rows).
    """
    x = _as_matrix(features, "features")
    lab = check_labels(labels, x.shape[0])
    ids = _check_class_ids(class_ids)
    if per_class is not None:
        if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral) or per_class < 1:
            raise ValueError(f"per_class must be a positive integer or None, got {per_class!r}")
    parts = class_rows(lab, ids, per_class, seed, context=f" of class_ids {list(ids)} (in labels)")
    index = np.concatenate(parts)
    return np.asarray(x[index]), lab[index], index


# --------------------------------------------------------------------------------------------
# per-model view: basis + train-fitted PCA
# --------------------------------------------------------------------------------------------
def _orientation_frame(ca: np.ndarray, cb: np.ndarray, cc: np.ndarray, mode: str) -> np.ndarray:
    """2x2 matrix (columns = new x and y axes in PCA coordinates) for ProjectionView's ``orient``."""
    mid = 0.5 * (ca + cb)
    if mode == "flip":
        sx = -1.0 if cb[0] - ca[0] < 0 else 1.0
        sy = -1.0 if cc[1] - mid[1] < 0 else 1.0
        return np.diag([sx, sy])
    # "align": x along a -> b; y perpendicular, towards c (a reflection is fine for a scatter plot)
    ab = cb - ca
    norm = float(np.hypot(*ab))
    if norm == 0.0:
        return np.eye(2)  # coincident centroids: no direction to align with
    u = ab / norm
    v = np.array([-u[1], u[0]])
    if (cc - mid) @ v < 0:
        v = -v
    return np.stack([u, v], axis=1)


class _FitDescriptor:
    """Lets ``ProjectionView.fit(...)`` (class) and ``ProjectionView().fit(...)`` (instance) both work."""

    def __init__(self, func):
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj, owner):
        target = owner() if obj is None else obj
        return self.func.__get__(target, owner)


class ProjectionView:
    """One model's Fig. 1 frame: template basis + PCA fitted on its train split, reused for val.

    >>> view = ProjectionView.fit(train_x, train_y, weight, bias, class_ids=(a, b, c), per_class=150)
    >>> val_xy = view.transform(val_x)          # same basis, same (train-fitted) PCA, no refit

    ``orient`` fixes how the plane is drawn, from the *training* centroids of classes
    ``(a, b, c) = class_ids`` (so train and val panels of one model share it):

    * ``"flip"`` (default, also ``True``): the axes stay the principal components (as in
      Algorithm 2); only their signs are set so that ``b`` lies right of ``a`` and ``c`` above
      the midpoint of ``a`` and ``b``, whenever the principal axes allow telling them apart.
    * ``"align"``: the PCA plane is rotated (and mirrored if needed) so that ``a -> b`` points
      along +x and ``c`` lies above: the similar pair is horizontal and the odd class on top in
      every panel. Distances within the plane are unchanged; the axes are no longer the PCs.
    * ``False`` / ``None``: raw :class:`Pca2` output.

    The 2x2 matrix applied after PCA is ``frame`` (``transform = pca.transform(proj) @ frame``).
    """

    def __init__(self) -> None:
        self.class_ids: Optional[tuple] = None
        self.basis: Optional[np.ndarray] = None
        self.pca: Optional[Pca2] = None
        self.frame: np.ndarray = np.eye(2)
        self.train_index: Optional[np.ndarray] = None
        self._dim: Optional[int] = None

    @property
    def fitted(self) -> bool:
        return self.pca is not None and self.pca.fitted

    @property
    def with_bias(self) -> bool:
        if self.basis is None:
            raise ValueError("ProjectionView is not fitted: call fit(...) first")
        return self._dim is not None and self.basis.shape[0] == self._dim + 1

    @_FitDescriptor
    def fit(self, features: Any, labels: Any, weight: Any, bias: Any, class_ids: Sequence[int],
            per_class: Optional[int] = None, seed: int = 0,
            orient: Union[bool, str, None] = "flip") -> "ProjectionView":
        """Fit on a model's *training* features (any classes; the three ``class_ids`` are selected).

        ``per_class`` / ``seed`` subsample each class as in :func:`select_three_classes`.
        Returns the fitted view (``self``).
        """
        mode = {True: "flip", False: None, None: None}.get(orient, orient) if not isinstance(orient, str) else orient
        if mode not in ("flip", "align", None):
            raise ValueError(f"orient must be 'flip', 'align', True, False or None, got {orient!r}")
        x = _as_matrix(features, "features")
        w = _as_matrix(weight, "weight")
        if w.shape[1] != x.shape[1]:
            raise ValueError(f"weight has feature dimension {w.shape[1]} but features have {x.shape[1]} columns")
        basis = projection_basis(w, bias, class_ids)
        sel_x, sel_y, index = select_three_classes(x, labels, class_ids, per_class=per_class, seed=seed)
        proj = project(sel_x, basis)
        pca = Pca2().fit(proj)
        self.class_ids = _check_class_ids(class_ids)
        self.basis = basis
        self.pca = pca
        self._dim = x.shape[1]
        self.train_index = index
        self.frame = np.eye(2)
        if mode is not None:
            pts = pca.transform(proj)
            ca, cb, cc = (pts[sel_y == c].mean(axis=0) for c in self.class_ids)
            self.frame = _orientation_frame(ca, cb, cc, mode)
        return self

    def project3(self, features: Any) -> np.ndarray:
        """3-D template coordinates (before PCA)."""
        if not self.fitted:
            raise ValueError("ProjectionView is not fitted: call fit(...) first")
        return project(features, self.basis)

    def transform(self, features: Any) -> np.ndarray:
        """2-D coordinates of ``features`` [N, D] using the train-fitted basis and PCA (no refit)."""
        proj = self.project3(features)  # raises first when the view is not fitted
        if self.pca is None:  # pragma: no cover - project3 raised already
            raise ValueError("ProjectionView is not fitted: call fit(...) first")
        return self.pca.transform(proj) @ self.frame

    def transform_classes(self, features: Any, labels: Any, per_class: Optional[int] = None,
                          seed: int = 0) -> tuple:
        """Select the view's three classes from ``features``/``labels`` and transform them.

        Returns ``(points2d [M, 2], labels [M])`` ready for a :func:`plot_projection_grid` panel.
        """
        if not self.fitted or self.class_ids is None:
            raise ValueError("ProjectionView is not fitted: call fit(...) first")
        sel_x, sel_y, _ = select_three_classes(features, labels, self.class_ids, per_class=per_class, seed=seed)
        return self.transform(sel_x), sel_y


# --------------------------------------------------------------------------------------------
# cluster statistics in the projected plane (to quantify Fig. 1's observations)
# --------------------------------------------------------------------------------------------
def _class_groups(points: Any, labels: Any, class_ids: Optional[Sequence[int]]) -> tuple:
    pts = np.asarray(_as_matrix(points, "points"), dtype=np.float64)
    lab = check_labels(labels, pts.shape[0])
    if not np.isfinite(pts).all():
        raise ValueError("points contains NaN or inf")
    if class_ids is None:
        ids = [int(c) for c in np.unique(lab)]
    else:
        ids = [int(c) for c in class_ids]
        if len(set(ids)) != len(ids):
            raise ValueError(f"class_ids must be distinct, got {ids}")
    groups = {}
    for c in ids:
        sel = pts[lab == c]
        if sel.shape[0] == 0:
            raise ValueError(f"class {c} has no points")
        groups[c] = sel
    return ids, groups


def centroid_distance_2d(points: Any, labels: Any, class_ids: Optional[Sequence[int]] = None) -> dict:
    """Euclidean distance between class centroids in the projected plane, per class pair.

    ``points`` [N, d] (normally the 2-D output of :meth:`ProjectionView.transform`; any width
    works). Returns ``{(a, b): distance}`` for every pair ``a`` before ``b`` in ``class_ids``
    (default: sorted labels present). Fig. 1 reads "central distance" off these plots; note PCA
    drops the third axis, so a 2-D distance is a lower bound of the 3-D one -- for numbers that
    enter conclusions use Eq. 1 on the full features (``lskd_core.diffusion``).
    """
    ids, groups = _class_groups(points, labels, class_ids)
    cents = {c: g.mean(axis=0) for c, g in groups.items()}
    out = {}
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            out[(a, b)] = float(np.linalg.norm(cents[a] - cents[b]))
    return out


def cluster_spread_2d(points: Any, labels: Any, class_ids: Optional[Sequence[int]] = None) -> dict:
    """Per-class RMS distance of points to their centroid (cluster "tightness", Fig. 1 obs. 1).

    Returns ``{class: sqrt(mean ||p - mu_class||^2)}``.
    """
    _, groups = _class_groups(points, labels, class_ids)
    return {c: float(np.sqrt(np.mean(np.sum((g - g.mean(axis=0)) ** 2, axis=1)))) for c, g in groups.items()}
