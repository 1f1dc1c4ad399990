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
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from lskd_core.atomic import atomic_savefig

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


def _check_labels(labels: Any, n_rows: int, name: str = "labels") -> np.ndarray:
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
    lab = _check_labels(labels, x.shape[0])
    ids = _check_class_ids(class_ids)
    if per_class is not None:
        if isinstance(per_class, bool) or not isinstance(per_class, numbers.Integral) or per_class < 1:
            raise ValueError(f"per_class must be a positive integer or None, got {per_class!r}")
    rng = np.random.default_rng(seed)
    parts = []
    for c in ids:
        rows = np.flatnonzero(lab == c)
        if rows.size == 0:
            raise ValueError(f"class {c} of class_ids {list(ids)} has no samples in labels")
        if per_class is not None and rows.size > per_class:
            rows = np.sort(rng.choice(rows, size=int(per_class), replace=False))
        parts.append(rows)
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
    lab = _check_labels(labels, pts.shape[0])
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


# --------------------------------------------------------------------------------------------
# Fig. 1-style grid
# --------------------------------------------------------------------------------------------
# Colour-blind-safe (Okabe-Ito) first, so the similar pair is told apart without red/green.
_PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


def _class_name(class_names: Any, label: int) -> str:
    if class_names is None:
        return str(label)
    if isinstance(class_names, Mapping):
        if label not in class_names:
            raise ValueError(f"class_names has no entry for label {label} (keys {sorted(class_names)})")
        return str(class_names[label])
    if not 0 <= label < len(class_names):
        raise ValueError(f"label {label} out of range for class_names ({len(class_names)} names, indexed by label); "
                         f"pass a dict {{label: name}} to name only some classes")
    return str(class_names[label])


def _check_panels(panels: Any) -> list:
    if isinstance(panels, Mapping) or not isinstance(panels, Sequence) or len(panels) == 0:
        raise ValueError("panels must be a non-empty list of rows (lists of panel dicts or None)")
    rows = []
    for r, row in enumerate(panels):
        if isinstance(row, Mapping) or not isinstance(row, Sequence):
            raise ValueError(f"panels[{r}] must be a list of panel dicts (or None), got {type(row).__name__}")
        checked: list = []
        for c, panel in enumerate(row):
            if panel is None:
                checked.append(None)
                continue
            if not isinstance(panel, Mapping):
                raise ValueError(f"panels[{r}][{c}] must be a dict with points2d and labels, got {type(panel).__name__}")
            for key in ("points2d", "labels"):
                if key not in panel:
                    raise ValueError(f"panels[{r}][{c}] is missing key {key!r}")
            pts = np.asarray(panel["points2d"], dtype=np.float64)
            if pts.ndim != 2 or pts.shape[1] != 2:
                raise ValueError(f"panels[{r}][{c}]['points2d'] must have shape [N, 2], got {tuple(pts.shape)}")
            if not np.isfinite(pts).all():
                raise ValueError(f"panels[{r}][{c}]['points2d'] contains NaN or inf")
            lab = _check_labels(panel["labels"], pts.shape[0], name=f"panels[{r}][{c}]['labels']")
            checked.append({"points2d": pts, "labels": lab, "title": panel.get("title"), "note": panel.get("note")})
        rows.append(checked)
    if not any(p is not None for row in rows for p in row):
        raise ValueError("panels holds no panel dicts (all cells are None)")
    return rows


def _class_order(rows: list) -> list:
    """Labels in order of first appearance across the panels (one colour each)."""
    order: list = []
    for row in rows:
        for p in row:
            if p is not None:
                for c in p["labels"].tolist():
                    if c not in order:
                        order.append(c)
    return order


def _draw_panel(ax: Any, panel: dict, order: list, colours: dict, names: dict, point_size: float) -> None:
    for cls in order:
        sel = panel["labels"] == cls
        if sel.any():
            pts = panel["points2d"][sel]
            ax.scatter(pts[:, 0], pts[:, 1], s=point_size, color=colours[cls], alpha=0.6,
                       linewidths=0, label=names[cls])
    ax.set_aspect("equal", adjustable="datalim")  # keep distances comparable within a panel
    if panel["note"]:
        ax.text(0.02, 0.02, str(panel["note"]), transform=ax.transAxes, fontsize=7, va="bottom",
                ha="left", bbox=dict(boxstyle="round", facecolor="white", alpha=0.7, linewidth=0))


def projection_grid_figure(panels: Sequence[Sequence[Optional[Mapping]]], class_names: Any,
                           row_labels: Optional[Sequence[str]] = None, col_labels: Optional[Sequence[str]] = None,
                           panel_size: float = 3.0, point_size: float = 6.0):
    """Build (do not save) the Fig. 1-style grid as a ``matplotlib.figure.Figure``.

    ``panels[r][c]``: dict with ``points2d`` [N, 2], ``labels`` [N] and optional ``title`` and
    ``note`` (small text in the panel corner, e.g. centroid distances), or None for an empty cell.
    Rows may be ragged; the grid is ``len(panels)`` x longest row. Each class gets one colour in
    every panel (by first appearance order across panels) and one shared legend.
    ``class_names``: list indexed by label, dict ``{label: name}``, or None (labels as text).
    """
    from matplotlib.figure import Figure  # Figure + Agg canvas: no pyplot global state, no display

    rows = _check_panels(panels)
    n_rows = len(rows)
    n_cols = max(len(r) for r in rows)
    if n_cols == 0:
        raise ValueError("panels has only empty rows")
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"row_labels has {len(row_labels)} entries for {n_rows} rows of panels")
    if col_labels is not None and len(col_labels) != n_cols:
        raise ValueError(f"col_labels has {len(col_labels)} entries for {n_cols} columns of panels")
    order = _class_order(rows)
    # Resolve names up front so a missing name fails before any drawing.
    names = {c: _class_name(class_names, c) for c in order}
    colours = {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(order)}

    fig = Figure(figsize=(panel_size * n_cols + (0.6 if row_labels else 0.0), panel_size * n_rows + 0.7),
                 dpi=100, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            panel = rows[r][c] if c < len(rows[r]) else None
            title = panel["title"] if panel is not None else None
            if r == 0 and col_labels is not None:
                title = f"{col_labels[c]}\n{title}" if title else str(col_labels[c])
            if title:
                ax.set_title(str(title), fontsize=9)
            if row_labels is not None and c == 0:
                ax.set_ylabel(str(row_labels[r]), fontsize=9)
            if panel is None:
                # Blank cell: keep the Axes (so row/column labels still show) but draw nothing.
                ax.set_facecolor("none")
                for spine in ax.spines.values():
                    spine.set_visible(False)
                continue
            _draw_panel(ax, panel, order, colours, names, point_size)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", markersize=6, color=colours[c], label=names[c])
               for c in order]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(order), 4), fontsize=9, frameon=False)
    return fig


def plot_projection_grid(panels: Sequence[Sequence[Optional[Mapping]]], class_names: Any,
                         out_png: Union[str, os.PathLike], row_labels: Optional[Sequence[str]] = None,
                         col_labels: Optional[Sequence[str]] = None, **kwargs: Any) -> Path:
    """Draw a Fig. 1-style grid (rows: teacher and students at several T; columns: alpha) to PNG.

    See :func:`projection_grid_figure` for ``panels``/``class_names``. The PNG is written to a
    temporary file in the same directory and moved into place with ``os.replace``, so a reader
    never sees a half-written image. Returns the output path.
    """
    out = Path(out_png)
    if out.suffix.lower() != ".png":
        raise ValueError(f"out_png must end in .png, got {str(out_png)!r}")
    if not out.parent.is_dir():
        raise ValueError(f"out_png's directory {str(out.parent)!r} does not exist")
    fig = projection_grid_figure(panels, class_names, row_labels=row_labels, col_labels=col_labels, **kwargs)
    return atomic_savefig(fig, out)
