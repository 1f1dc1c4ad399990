"""Tests for lskd_core.projection (App. F, Algorithms 1/2; Fig. 1 footnote 1 on the bias)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lskd_core.projection import (
    Pca2,
    ProjectionView,
    centroid_distance_2d,
    cluster_spread_2d,
    plot_projection_grid,
    project,
    projection_basis,
    projection_grid_figure,
    select_three_classes,
)


def _projector(mat: np.ndarray) -> np.ndarray:
    """Orthogonal projector onto the column span of ``mat``, via the normal equations (no QR)."""
    return mat @ np.linalg.solve(mat.T @ mat, mat.T)


def _toy_model(k=6, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(k, d)), rng.normal(size=k) * 3.0


def _toy_features(weight, n_per_class=40, seed=1, scale=2.0, noise=0.5):
    rng = np.random.default_rng(seed)
    k, d = weight.shape
    x = np.concatenate([scale * weight[c] + noise * rng.normal(size=(n_per_class, d)) for c in range(k)])
    y = np.repeat(np.arange(k), n_per_class)
    return x, y


# ------------------------------------------------------------------ basis
def test_basis_orthonormal_and_spans_augmented_templates():
    w, b = _toy_model()
    ids = (4, 1, 3)
    q = projection_basis(w, b, ids)
    assert q.shape == (w.shape[1] + 1, 3)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-12)
    templates = np.concatenate([w[list(ids)], b[list(ids)][:, None]], axis=1)  # [3, D+1]
    for t in templates:
        # projecting a template onto the basis and back reconstructs it
        np.testing.assert_allclose(q @ (q.T @ t), t, atol=1e-10)
    # and the span is exactly theirs: same projector as the normal-equation one
    np.testing.assert_allclose(q @ q.T, _projector(templates.T), atol=1e-10)


def test_basis_sign_convention_first_column_is_first_template():
    w, b = _toy_model()
    ids = (2, 0, 5)
    q = projection_basis(w, b, ids)
    t = np.concatenate([w[list(ids)], b[list(ids)][:, None]], axis=1).T
    np.testing.assert_allclose(q[:, 0], t[:, 0] / np.linalg.norm(t[:, 0]), atol=1e-12)
    r = q.T @ t  # upper-triangular with a positive diagonal under our convention
    assert np.all(np.diag(r) > 0)
    np.testing.assert_allclose(np.tril(r, -1), 0.0, atol=1e-10)


def test_basis_without_bias():
    w, _ = _toy_model()
    ids = (0, 2, 5)
    q = projection_basis(w, None, ids)
    assert q.shape == (w.shape[1], 3)
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(q @ q.T, _projector(w[list(ids)].T), atol=1e-10)


def test_bias_indexed_by_class_ids_not_0_1_2():
    # Weights of classes 3,4,5 live in the first two feature coordinates plus a small third one;
    # the biases of classes 0,1,2 differ wildly from 3,4,5, so the released script's
    # bias[[0, 1, 2]] would pair w_3..w_5 with the wrong offsets and give another subspace.
    w = np.zeros((6, 4))
    w[:3] = np.eye(3, 4) * 5.0
    w[3] = [1.0, 0.0, 0.1, 0.0]
    w[4] = [0.0, 1.0, 0.0, 0.2]
    w[5] = [1.0, 1.0, 0.3, 0.0]
    b = np.array([10.0, -7.0, 4.0, 0.5, -0.25, 2.0])
    ids = (3, 4, 5)
    q = projection_basis(w, b, ids)
    right = np.concatenate([w[list(ids)], b[[3, 4, 5]][:, None]], axis=1).T
    wrong = np.concatenate([w[list(ids)], b[[0, 1, 2]][:, None]], axis=1).T
    np.testing.assert_allclose(q @ q.T, _projector(right), atol=1e-10)
    # the two candidate spans really differ, and ours is not the buggy one
    assert np.linalg.norm(_projector(right) - _projector(wrong)) > 0.1
    assert np.linalg.norm(q @ q.T - _projector(wrong)) > 0.1
    # the wrong templates are not reconstructed by our basis
    resid = wrong - q @ (q.T @ wrong)
    assert np.linalg.norm(resid) > 0.1


def test_basis_float32_weights_and_numpy_int_ids():
    w, b = _toy_model()
    q32 = projection_basis(w.astype(np.float32), b.astype(np.float32), np.array([1, 2, 3]))
    q64 = projection_basis(w.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64),
                           (1, 2, 3))
    assert q32.dtype == np.float64
    np.testing.assert_allclose(q32, q64, atol=1e-12)


@pytest.mark.parametrize(
    "ids, match",
    [
        ((1, 1, 2), "distinct"),
        ((0, 1, 6), r"class_ids \[6\] out of range"),
        ((-1, 1, 2), r"class_ids \[-1\] out of range"),
        ((0, 1), "exactly 3"),
        ((0, 1, 2, 3), "exactly 3"),
        ((0, 1.5, 2), "integers"),
        ((0, True, 2), "integers"),
        ("012", "class_ids"),
    ],
)
def test_basis_bad_class_ids(ids, match):
    w, b = _toy_model()
    with pytest.raises(ValueError, match=match):
        projection_basis(w, b, ids)


def test_basis_rank_deficient():
    w, b = _toy_model()
    w = w.copy()
    b = b.copy()
    w[2] = 2.0 * w[0] - w[1]
    b[2] = 2.0 * b[0] - b[1]
    with pytest.raises(ValueError, match="rank-deficient"):
        projection_basis(w, b, (0, 1, 2))
    # the weights alone are dependent, but the bias makes the augmented templates independent
    b[2] += 1.0
    q = projection_basis(w, b, (0, 1, 2))
    np.testing.assert_allclose(q.T @ q, np.eye(3), atol=1e-12)
    with pytest.raises(ValueError, match="rank-deficient"):
        projection_basis(w, None, (0, 1, 2))


def test_basis_rank_deficient_in_float32():
    # dependence that holds only up to float32 rounding is still dependence for float32 weights
    w, _ = _toy_model()
    w32 = w.astype(np.float32)
    w32[2] = w32[0] + w32[1]
    with pytest.raises(ValueError, match="rank-deficient"):
        projection_basis(w32, None, (0, 1, 2))


@pytest.mark.parametrize(
    "weight, bias, match",
    [
        (np.zeros(8), None, "weight must be a 2-D"),
        (np.ones((6, 8)), np.ones(5), "bias must be 1-D with one entry per class"),
        (np.ones((6, 8)), np.ones((6, 1)), "bias must be 1-D"),
        (np.full((6, 8), np.nan), None, "weight contains NaN"),
        (np.random.default_rng(0).normal(size=(6, 8)), np.array([0, 0, np.inf, 0, 0, 0.0]), "bias contains NaN"),
        (np.random.default_rng(0).normal(size=(6, 2)), None, "at least 3 dimensions"),
    ],
)
def test_basis_bad_weight_and_bias(weight, bias, match):
    with pytest.raises(ValueError, match=match):
        projection_basis(weight, bias, (0, 1, 2))


# ------------------------------------------------------------------ project
def test_project_matches_manual_augmented_product():
    w, b = _toy_model()
    q = projection_basis(w, b, (0, 3, 5))
    x = np.random.default_rng(3).normal(size=(17, w.shape[1])).astype(np.float32)
    manual = np.hstack([x.astype(np.float64), np.ones((17, 1))]) @ q
    np.testing.assert_allclose(project(x, q), manual, atol=1e-12)
    np.testing.assert_allclose(project(x, q, with_bias=True), manual, atol=1e-12)
    # hand-sized case: basis rows written out
    q_small = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # D=2 plus bias row
    np.testing.assert_allclose(project(np.array([[2.0, 3.0]]), q_small), [[2.0, 3.0, 1.0]])


def test_project_without_bias_and_chunking(monkeypatch):
    import lskd_core.projection as proj

    w, _ = _toy_model()
    q = projection_basis(w, None, (0, 1, 2))
    x = np.random.default_rng(4).normal(size=(23, w.shape[1])).astype(np.float16)
    expected = x.astype(np.float64) @ q
    monkeypatch.setattr(proj, "_CHUNK_ROWS", 5)  # exercise several chunks and a partial tail
    np.testing.assert_allclose(project(x, q), expected, atol=1e-12)
    np.testing.assert_allclose(project(x, q, with_bias=False), expected, atol=1e-12)


def test_project_bad_inputs():
    w, b = _toy_model()
    q = projection_basis(w, b, (0, 1, 2))
    d = w.shape[1]
    with pytest.raises(ValueError, match=rf"basis has {d + 1} rows but features have dimension {d + 3}"):
        project(np.zeros((2, d + 3)), q)
    with pytest.raises(ValueError, match="with_bias=False"):
        project(np.zeros((2, d)), q, with_bias=False)
    with pytest.raises(ValueError, match="features must be a 2-D"):
        project(np.zeros(d), q)
    bad = np.zeros((4, d))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="features contains NaN or inf .first at row 2"):
        project(bad, q)


# ------------------------------------------------------------------ PCA
def _anisotropic_points(n=200, d=3, seed=5):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) * np.array([5.0, 2.0, 0.3][:d]) @ a + rng.normal(size=d) * 10


def test_pca2_matches_covariance_eigendecomposition_up_to_sign():
    x = _anisotropic_points()
    pca = Pca2().fit(x)
    evals, evecs = np.linalg.eigh(np.cov(x, rowvar=False))  # independent route: covariance eig
    order = np.argsort(evals)[::-1][:2]
    ref = evecs[:, order].T
    for i in range(2):
        s = np.sign(ref[i] @ pca.components_[i])
        np.testing.assert_allclose(pca.components_[i], s * ref[i], atol=1e-10)
    np.testing.assert_allclose(pca.explained_variance_, evals[order], rtol=1e-10)
    np.testing.assert_allclose(pca.explained_variance_ratio_, evals[order] / evals.sum(), rtol=1e-10)
    np.testing.assert_allclose(pca.mean_, x.mean(axis=0), atol=1e-12)
    z = pca.transform(x)
    zref = (x - x.mean(axis=0)) @ ref.T
    np.testing.assert_allclose(np.abs(z), np.abs(zref), atol=1e-8)
    np.testing.assert_allclose(z, pca.fit_transform(x), atol=1e-12)
    # new points are centred with the *fitted* mean, not their own
    x2 = x[:10] * 0.5 + 3.0
    np.testing.assert_allclose(pca.transform(x2), (x2 - x.mean(axis=0)) @ pca.components_.T, atol=1e-10)


def test_pca2_sign_convention_is_stable():
    x = _anisotropic_points()
    comps = Pca2().fit(x).components_
    # convention: largest-magnitude loading of each component is positive
    pivot = np.argmax(np.abs(comps), axis=1)
    assert np.all(comps[np.arange(2), pivot] > 0)
    # same subspace => same signs, whatever the sample order or the data's orientation
    perm = np.random.default_rng(0).permutation(len(x))
    np.testing.assert_allclose(Pca2().fit(x[perm]).components_, comps, atol=1e-10)
    np.testing.assert_allclose(Pca2().fit(-x).components_, comps, atol=1e-10)
    np.testing.assert_allclose(Pca2().fit(x + 100.0).components_, comps, atol=1e-8)


def test_pca2_bad_inputs():
    with pytest.raises(ValueError, match="not fitted"):
        Pca2().transform(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        Pca2().fit(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="at least 2 columns"):
        Pca2().fit(np.zeros((5, 1)))
    with pytest.raises(ValueError, match="points contains NaN"):
        Pca2().fit(np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]))
    pca = Pca2().fit(_anisotropic_points())
    with pytest.raises(ValueError, match="fitted on 3"):
        pca.transform(np.zeros((2, 4)))


# ------------------------------------------------------------------ selection
def test_select_three_classes_grouped_capped_seeded():
    x = np.arange(60, dtype=np.float64).reshape(30, 2)
    y = np.array([0, 1, 2, 3, 4] * 6)  # 6 samples per class
    fx, fy, idx = select_three_classes(x, y, (4, 0, 2), per_class=4, seed=7)
    assert fy.tolist() == [4] * 4 + [0] * 4 + [2] * 4  # grouped in class_ids order
    np.testing.assert_array_equal(fx, x[idx])
    np.testing.assert_array_equal(y[idx], fy)
    for c in (4, 0, 2):
        rows = idx[fy == c]
        assert len(set(rows.tolist())) == 4 and np.all(np.diff(rows) > 0)  # distinct, original order
    again = select_three_classes(x, y, (4, 0, 2), per_class=4, seed=7)[2]
    np.testing.assert_array_equal(idx, again)
    others = {tuple(select_three_classes(x, y, (4, 0, 2), per_class=4, seed=s)[2]) for s in range(8)}
    assert len(others) > 1  # the seed matters
    # a cap above the class size keeps every sample; no cap keeps all
    assert len(select_three_classes(x, y, (1, 2, 3), per_class=100)[2]) == 18
    assert len(select_three_classes(x, y, (1, 2, 3))[2]) == 18


def test_select_three_classes_bad_inputs():
    x = np.zeros((6, 2))
    y = np.array([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="class 5 .* has no samples"):
        select_three_classes(x, y, (0, 1, 5))
    with pytest.raises(ValueError, match="labels has 5 entries but features has 6 rows"):
        select_three_classes(x, y[:5], (0, 1, 2))
    with pytest.raises(ValueError, match="per_class must be a positive integer"):
        select_three_classes(x, y, (0, 1, 2), per_class=0)
    with pytest.raises(ValueError, match="labels must be integer"):
        select_three_classes(x, y + 0.5, (0, 1, 2))


# ------------------------------------------------------------------ view
def test_view_transform_uses_train_fitted_pca():
    w, b = _toy_model(k=6, d=8)
    ids = (1, 2, 4)
    xtr, ytr = _toy_features(w, seed=1)
    # val differs in scale and offset, so a PCA refitted on it would have another mean/axes
    xva, yva = _toy_features(w, seed=2, scale=3.0, noise=1.5)
    xva = xva + 0.7
    view = ProjectionView.fit(xtr, ytr, w, b, ids)
    mean_before = view.pca.mean_.copy()
    comps_before = view.pca.components_.copy()

    sel_tr = np.isin(ytr, ids)
    q = projection_basis(w, b, ids)
    proj_tr = np.hstack([xtr[sel_tr], np.ones((sel_tr.sum(), 1))]) @ q
    # independent of Pca2: train mean, and train covariance's top-2 eigenvectors (up to sign)
    train_mean = proj_tr.mean(axis=0)
    evals, evecs = np.linalg.eigh(np.cov(proj_tr, rowvar=False))
    ref = evecs[:, np.argsort(evals)[::-1][:2]].T
    np.testing.assert_allclose(view.pca.mean_, train_mean, atol=1e-10)
    np.testing.assert_allclose(np.abs(np.sum(view.pca.components_ * ref, axis=1)), 1.0, atol=1e-10)

    sel_va = np.isin(yva, ids)
    proj_va = np.hstack([xva[sel_va], np.ones((sel_va.sum(), 1))]) @ q
    expected = (proj_va - train_mean) @ view.pca.components_.T @ view.frame
    got = view.transform(xva[sel_va])
    np.testing.assert_allclose(got, expected, atol=1e-8)
    refit = Pca2().fit(proj_va).transform(proj_va)
    assert not np.allclose(np.abs(got), np.abs(refit), atol=1e-3)  # a refit would look different
    # transforming val did not touch the fitted state
    np.testing.assert_array_equal(view.pca.mean_, mean_before)
    np.testing.assert_array_equal(view.pca.components_, comps_before)
    # transform_classes selects the view's classes and matches transform
    pts, lab = view.transform_classes(xva, yva)
    assert sorted(set(lab.tolist())) == sorted(ids)
    np.testing.assert_allclose(pts, view.transform(xva[np.concatenate([np.flatnonzero(yva == c) for c in ids])]),
                               atol=1e-12)


def test_view_orientation_and_instance_fit():
    w, b = _toy_model(k=6, d=8, seed=3)
    x, y = _toy_features(w, seed=4)
    ids = (5, 0, 3)
    view = ProjectionView.fit(x, y, w, b, ids, per_class=25, seed=1)
    assert view.with_bias and view.basis.shape == (9, 3)
    assert len(view.train_index) == 75
    pts, lab = view.transform_classes(x[view.train_index], y[view.train_index])
    c = {k: pts[lab == k].mean(axis=0) for k in ids}
    assert c[0][0] > c[5][0]  # second class right of the first
    assert c[3][1] > 0.5 * (c[5][1] + c[0][1])  # third class above the pair
    # instance-style fit gives the same view
    other = ProjectionView()
    assert other.fit(x, y, w, b, ids, per_class=25, seed=1) is other
    np.testing.assert_allclose(other.transform(x), view.transform(x), atol=1e-12)
    unoriented = ProjectionView.fit(x, y, w, b, ids, per_class=25, seed=1, orient=False)
    np.testing.assert_allclose(np.abs(unoriented.transform(x)), np.abs(view.transform(x)), atol=1e-12)
    raw = unoriented.transform(x)
    # "align": pair along +x, odd class straight above their midpoint's line; distances kept
    aligned = ProjectionView.fit(x, y, w, b, ids, per_class=25, seed=1, orient="align")
    pts, lab = aligned.transform_classes(x[view.train_index], y[view.train_index])
    c = {k: pts[lab == k].mean(axis=0) for k in ids}
    assert c[0][1] == pytest.approx(c[5][1], abs=1e-9) and c[0][0] > c[5][0]
    assert c[3][1] > c[5][1]
    got = aligned.transform(x)
    np.testing.assert_allclose(np.linalg.norm(got[1:] - got[:-1], axis=1),
                               np.linalg.norm(raw[1:] - raw[:-1], axis=1), atol=1e-9)
    with pytest.raises(ValueError, match="orient must be"):
        ProjectionView.fit(x, y, w, b, ids, orient="rotate")


def test_view_bad_inputs():
    w, b = _toy_model(k=6, d=8)
    x, y = _toy_features(w)
    with pytest.raises(ValueError, match="weight has feature dimension 8 but features have 5 columns"):
        ProjectionView.fit(x[:, :5], y, w, b, (0, 1, 2))
    with pytest.raises(ValueError, match="not fitted"):
        ProjectionView().transform(x)
    view = ProjectionView.fit(x, y, w, b, (0, 1, 2))
    with pytest.raises(ValueError, match="basis has 9 rows but features have dimension 7"):
        view.transform(x[:, :7])


# ------------------------------------------------------------------ cluster statistics
def test_centroid_distance_and_spread_hand_computed():
    pts = np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 4.0], [4.0, 4.0], [1.0, -3.0], [1.0, -1.0]])
    lab = np.array([7, 7, 9, 9, 8, 8])
    # centroids: 7 -> (1, 0), 9 -> (4, 4), 8 -> (1, -2)
    d = centroid_distance_2d(pts, lab)
    assert set(d) == {(7, 8), (7, 9), (8, 9)}
    assert d[(7, 9)] == pytest.approx(5.0)
    assert d[(7, 8)] == pytest.approx(2.0)
    assert d[(8, 9)] == pytest.approx(np.hypot(3.0, 6.0))
    d_ordered = centroid_distance_2d(pts, lab, class_ids=(9, 7, 8))
    assert list(d_ordered) == [(9, 7), (9, 8), (7, 8)]
    s = cluster_spread_2d(pts, lab)
    assert s == pytest.approx({7: 1.0, 9: 0.0, 8: 1.0})
    with pytest.raises(ValueError, match="class 3 has no points"):
        centroid_distance_2d(pts, lab, class_ids=(7, 3))


# ------------------------------------------------------------------ plotting
def _grid(seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(3):  # teacher + students at two T
        row = []
        for c in range(2):  # alpha = 0, 0.1
            lab = np.repeat([3, 5, 7], 20)
            pts = rng.normal(size=(60, 2)) + np.repeat(np.array([[0, 0], [4, 0], [2, 4]]), 20, axis=0)
            row.append({"points2d": pts, "labels": lab, "title": f"r{r}c{c}"})
        rows.append(row)
    return rows


def test_plot_projection_grid_writes_png(tmp_path):
    from matplotlib.image import imread

    names = [f"class{i}" for i in range(10)]
    out = tmp_path / "fig1.png"
    got = plot_projection_grid(_grid(), names, out, row_labels=["teacher", "T=1", "T=3"],
                               col_labels=["alpha=0", "alpha=0.1"])
    assert os.fspath(got) == os.fspath(out)
    data = out.read_bytes()
    assert len(data) > 5000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(out)
    # 2 columns x 3 rows of 3-inch panels at 100 dpi (+ legend strip): wide-ish, taller than wide
    assert img.shape[1] >= 500 and img.shape[0] > img.shape[1]
    assert img[..., :3].std() > 0.05  # not a blank image
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig1.png"]  # no temp file left behind


def test_projection_grid_figure_axes_colours_legend():
    names = {3: "miniature_poodle", 5: "standard_poodle", 7: "submarine"}
    panels = _grid()
    panels[2] = panels[2][:1]  # ragged last row: the missing cell is drawn blank
    fig = projection_grid_figure(panels, names, row_labels=["teacher", "T=1", "T=3"],
                                 col_labels=["alpha=0", "alpha=0.1"])
    axes = fig.get_axes()
    assert len(axes) == 6
    drawn = [ax for ax in axes if ax.collections]
    assert len(drawn) == 5
    colours = [tuple(np.round(ax.collections[i].get_facecolor()[0][:3], 4)) for ax in drawn for i in range(3)]
    per_class = [set(colours[i::3]) for i in range(3)]
    assert all(len(s) == 1 for s in per_class)  # one colour per class in every panel
    assert len(set.union(*per_class)) == 3  # and distinct classes get distinct colours
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["miniature_poodle", "standard_poodle", "submarine"]
    assert axes[0].get_ylabel() == "teacher" and axes[4].get_ylabel() == "T=3"
    assert axes[1].get_title() == "alpha=0.1\nr0c1"


def test_plot_bad_inputs(tmp_path):
    grid = _grid()
    names = [f"class{i}" for i in range(10)]
    with pytest.raises(ValueError, match="label 5 out of range for class_names"):
        plot_projection_grid(grid, names[:5], tmp_path / "a.png")
    with pytest.raises(ValueError, match="row_labels has 2 entries for 3 rows"):
        plot_projection_grid(grid, names, tmp_path / "a.png", row_labels=["a", "b"])
    with pytest.raises(ValueError, match="col_labels has 1 entries for 2 columns"):
        plot_projection_grid(grid, names, tmp_path / "a.png", col_labels=["a"])
    bad = _grid()
    bad[0][1]["points2d"] = bad[0][1]["points2d"][:, :1]
    with pytest.raises(ValueError, match=r"panels\[0\]\[1\]\['points2d'\] must have shape \[N, 2\]"):
        plot_projection_grid(bad, names, tmp_path / "a.png")
    bad = _grid()
    bad[1][0]["labels"] = bad[1][0]["labels"][:-1]
    with pytest.raises(ValueError, match=r"panels\[1\]\[0\]\['labels'\] has 59 entries"):
        plot_projection_grid(bad, names, tmp_path / "a.png")
    with pytest.raises(ValueError, match="missing key 'labels'"):
        plot_projection_grid([[{"points2d": np.zeros((2, 2))}]], names, tmp_path / "a.png")
    with pytest.raises(ValueError, match="panels must be a non-empty list"):
        plot_projection_grid([], names, tmp_path / "a.png")
    with pytest.raises(ValueError, match="all cells are None"):
        plot_projection_grid([[None]], names, tmp_path / "a.png")
    with pytest.raises(ValueError, match="out_png must end in .png"):
        plot_projection_grid(grid, names, tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="directory .* does not exist"):
        plot_projection_grid(grid, names, tmp_path / "nope" / "a.png")
    assert list(tmp_path.iterdir()) == []  # nothing written on failure
