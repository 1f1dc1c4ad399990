"""Diffusion index eta (Eq. 1), its pairwise variant (App. K), class statistics and the features file."""

import json
import os
import struct
import zipfile

import numpy as np
import pytest
from conftest import eta_projected_reference, eta_reference

from lskd_core.diffusion import (
    class_accuracy,
    class_stats,
    diffusion_index,
    diffusion_indices,
    relative_distances,
    squared_distances,
)
from lskd_core.features_io import FeatureFile, FeaturesFileError, load_features, save_features
from lskd_core.pairwise import mean_pairwise_distance, projected_pairwise_distances, projected_pairwise_eta

# ----------------------------------------------------------------------------------------------
# a toy whose distances can be written down
# ----------------------------------------------------------------------------------------------
# Four classes in 2-D. Class c's samples sit at (x_c, +1) and (x_c, -1): centroid (x_c, 0) and
# population covariance trace 1 (variance 1 in y, 0 in x).
#   before: x = 0 (target 0), 1, 2, 4  -> squared distances to the target 1, 4, 16;  R = 21
#   after:  x = 0,          0.5, 2, 5  -> squared distances           0.25, 4, 25; R = 29.25
# S1 = {1}, S2 = {2, 3}.
#   eta_S1 = (0.25/29.25) / (1/21) - 1 = 5.25/29.25 - 1 = -32/39            = -82.0513 %
#   eta_S2 = 1/2 [ (4/29.25)/(4/21) - 1 + (25/29.25)/(16/21) - 1 ]
#          = 1/2 [ 28/39 + 175/156 - 2 ] = -25/312                           = -8.0128 %
# Pairwise (App. K): |mu_a - mu_b|^2 + tr + tr = squared distance + 2:
#   before 3, 6, 18 (R = 27); after 2.25, 6, 27 (R = 35.25)
#   eta_S1 = (2.25/35.25)/(3/27) - 1 = -20/47                                = -42.5532 %
#   eta_S2 = 1/2 [ (6/35.25)/(6/27) - 1 + (27/35.25)/(18/27) - 1 ]
#          = 1/2 [ 36/47 + 54/47 - 2 ] = -2/47                                = -4.2553 %
ETA_S1 = -3200 / 39
ETA_S2 = -2500 / 312
ETA_S1_PW = -2000 / 47
ETA_S2_PW = -200 / 47


def _toy(xs, copies=3):
    feats, labels = [], []
    for c, x in enumerate(xs):
        for _ in range(copies):
            feats += [[x, 1.0], [x, -1.0]]
            labels += [c, c]
    return np.asarray(feats), np.asarray(labels)


@pytest.fixture
def toy():
    fb, lb = _toy([0, 1, 2, 4])
    fa, la = _toy([0, 0.5, 2, 5])
    return (fb, lb), (fa, la)


def test_eta_hand_computed(toy):
    (fb, lb), (fa, la) = toy
    out = diffusion_index(class_stats(fb, lb), class_stats(fa, la), 0, [1], [2, 3], pairwise=True)
    assert out["eta_s1"] == pytest.approx(ETA_S1, rel=1e-12)
    assert out["eta_s2"] == pytest.approx(ETA_S2, rel=1e-12)
    assert out["eta_s1_pairwise"] == pytest.approx(ETA_S1_PW, rel=1e-12)
    assert out["eta_s2_pairwise"] == pytest.approx(ETA_S2_PW, rel=1e-12)


def test_eta_is_percent_not_fraction(toy):
    (fb, lb), (fa, la) = toy
    out = diffusion_index(class_stats(fb, lb), class_stats(fa, la), 0, [1], [2, 3])
    # a fraction could not go below -1; -82 % is -0.82 as a fraction
    assert out["eta_s1"] < -1
    assert out["eta_s1"] / 100 == pytest.approx(-32 / 39)


def test_relative_distance_normalisation(toy):
    (fb, lb), _ = toy
    st = class_stats(fb, lb)
    d = relative_distances(st, 0, [1, 2, 3])
    np.testing.assert_allclose(d, np.array([1, 4, 16]) / 21, rtol=1e-12)
    np.testing.assert_allclose(squared_distances(st, 0, [1, 2, 3], pairwise=True), [3, 6, 18])
    np.testing.assert_allclose(st.trace_cov, [1, 1, 1, 1])
    np.testing.assert_allclose(st.centroids, [[0, 0], [1, 0], [2, 0], [4, 0]])


def _random_pair(seed=0, n=600, d=12, k=7, dtype=np.float64):
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(k, d)) * 3
    lab = rng.integers(0, k, size=n)
    lab[:k] = np.arange(k)  # every class present
    fb = (mu[lab] + rng.normal(size=(n, d))).astype(dtype)
    fa = (mu[lab] * 0.8 + rng.normal(size=(n, d)) * 1.2 + 0.5).astype(dtype)
    return fb, fa, lab


def test_eta_invariant_to_sample_permutation_and_scale():
    fb, fa, lab = _random_pair()
    ref = diffusion_index(class_stats(fb, lab), class_stats(fa, lab), 2, [0, 1], [4, 5, 6],
                          pairwise=True)
    rng = np.random.default_rng(1)
    pb, pa = rng.permutation(len(lab)), rng.permutation(len(lab))
    perm = diffusion_index(class_stats(fb[pb], lab[pb]), class_stats(fa[pa], lab[pa]), 2, [0, 1],
                           [4, 5, 6], pairwise=True)
    scaled = diffusion_index(class_stats(fb * 7.5, lab), class_stats(fa * 7.5, lab), 2, [0, 1],
                             [4, 5, 6], pairwise=True)
    # scaling only the "after" features must not matter either: d() is relative within a model
    scaled_after = diffusion_index(class_stats(fb, lab), class_stats(fa * 0.01, lab), 2, [0, 1],
                                   [4, 5, 6], pairwise=True)
    for key in ref:
        assert perm[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-9)
        assert scaled[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-9)
        assert scaled_after[key] == pytest.approx(ref[key], rel=1e-9, abs=1e-9)
    assert ref["eta_s1"] != pytest.approx(0.0, abs=1e-3)  # the data does move


def test_eta_against_independent_formula():
    fb, fa, lab = _random_pair(seed=3)
    s1, s2 = [1, 3], [0, 5, 6]
    ref_s1, ref_s2 = eta_reference(fb, lab, fa, lab, 2, s1, s2)

    out = diffusion_index(class_stats(fb, lab), class_stats(fa, lab), 2, s1, s2)
    assert out["eta_s1"] == pytest.approx(ref_s1, rel=1e-10)
    assert out["eta_s2"] == pytest.approx(ref_s2, rel=1e-10)


def test_pairwise_closed_form_equals_brute_force():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(23, 6)) * 2 + 1
    b = rng.normal(size=(31, 6)) + 4
    feats = np.concatenate([a, b])
    lab = np.array([0] * 23 + [1] * 31)
    brute = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).mean()
    got = squared_distances(class_stats(feats, lab), 0, [1], pairwise=True)[0]
    assert got == pytest.approx(brute, rel=1e-12)


def test_float16_matches_float64():
    fb, fa, lab = _random_pair(seed=7)
    fb16, fa16 = fb.astype(np.float16), fa.astype(np.float16)
    # the same (rounded) values in float64: accumulation must not lose anything
    exact = diffusion_index(class_stats(fb16.astype(np.float64), lab),
                            class_stats(fa16.astype(np.float64), lab), 0, [1], [2, 3],
                            pairwise=True)
    half = diffusion_index(class_stats(fb16, lab), class_stats(fa16, lab), 0, [1], [2, 3],
                           pairwise=True)
    full = diffusion_index(class_stats(fb, lab), class_stats(fa, lab), 0, [1], [2, 3],
                           pairwise=True)
    for key in exact:
        assert half[key] == pytest.approx(exact[key], rel=1e-12, abs=1e-12)
        assert half[key] == pytest.approx(full[key], rel=2e-2, abs=2e-2)  # float16 rounding only
    st = class_stats(fb16, lab)
    assert st.sums.dtype == np.float64 and st.sq_norm_sums.dtype == np.float64


@pytest.mark.parametrize("chunk", [1, 7, 64, 599, 10_000])
def test_chunked_equals_one_shot(chunk):
    fb, _, lab = _random_pair(seed=9)
    one = class_stats(fb, lab, chunk_size=len(lab))
    got = class_stats(fb, lab, chunk_size=chunk)
    np.testing.assert_array_equal(got.counts, one.counts)
    np.testing.assert_allclose(got.sums, one.sums, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(got.sq_norm_sums, one.sq_norm_sums, rtol=1e-12)
    # against the textbook per-class mean
    ref = np.stack([fb[lab == c].mean(0) for c in range(7)])
    np.testing.assert_allclose(got.centroids, ref, rtol=1e-10, atol=1e-12)
    ref_tr = np.array([fb[lab == c].var(0).sum() for c in range(7)])
    np.testing.assert_allclose(got.trace_cov, ref_tr, rtol=1e-9)


def test_sorted_labels_and_merge():
    fb, _, lab = _random_pair(seed=11)
    order = np.argsort(lab, kind="stable")
    st = class_stats(fb, lab, chunk_size=50)
    st_sorted = class_stats(fb[order], lab[order], chunk_size=50)
    np.testing.assert_allclose(st_sorted.sums, st.sums, rtol=1e-12, atol=1e-10)
    half = len(lab) // 2
    merged = class_stats(fb[:half], lab[:half], 7).merge(class_stats(fb[half:], lab[half:], 7))
    np.testing.assert_array_equal(merged.counts, st.counts)
    np.testing.assert_allclose(merged.sums, st.sums, rtol=1e-12, atol=1e-10)


def test_memmap_input(tmp_path):
    fb, _, lab = _random_pair(seed=13, dtype=np.float16)
    np.save(tmp_path / "f.npy", fb)
    mm = np.load(tmp_path / "f.npy", mmap_mode="r")
    got = class_stats(mm, lab, chunk_size=33)
    ref = class_stats(np.asarray(fb), lab)
    np.testing.assert_allclose(got.sums, ref.sums, rtol=1e-12)


def test_empty_classes_have_nan_centroid_and_are_rejected():
    f, lab = _toy([0, 1, 2, 4])
    st = class_stats(f, lab, num_classes=6)
    assert np.isnan(st.centroids[5]).all() and st.counts[5] == 0
    full = class_stats(*_toy([0, 1, 2, 4, 5, 6]))
    with pytest.raises(ValueError, match="class 5 has no samples in the after"):
        diffusion_index(full, st, 0, [1], [5])
    with pytest.raises(ValueError, match="class 5 has no samples in the before"):
        diffusion_index(st, full, 0, [5], [2])


def test_many_targets_one_pass():
    fb, fa, lab = _random_pair(seed=17)
    b, a = class_stats(fb, lab), class_stats(fa, lab)
    sets = {0: ([1, 2], [5, 6]), 3: ([4], [0, 1, 2]), 6: ([5], [0])}
    res = diffusion_indices(b, a, sets, pairwise=True)
    assert [r["target"] for r in res] == [0, 3, 6]
    for r in res:
        single = diffusion_index(b, a, r["target"], *sets[r["target"]], pairwise=True)
        for key, val in single.items():
            assert r[key] == val


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------

def test_class_stats_rejects_bad_input():
    f, lab = _toy([0, 1, 2])
    bad = f.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf .*row 3"):
        class_stats(bad, lab)
    bad = f.astype(np.float16)
    bad[5, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf .*row 5"):
        class_stats(bad, lab, chunk_size=2)
    with pytest.raises(ValueError, match="out of range.*label 2.*num_classes = 2"):
        class_stats(f, lab, num_classes=2)
    neg = lab.copy()
    neg[4] = -1
    with pytest.raises(ValueError, match=">= 0.*row 4"):
        class_stats(f, neg)
    with pytest.raises(ValueError, match="integers"):
        class_stats(f, lab.astype(float))
    with pytest.raises(ValueError, match="entries but features has"):
        class_stats(f, lab[:-1])
    with pytest.raises(ValueError, match="2-D"):
        class_stats(f[:, 0], lab)


def test_diffusion_index_rejects_bad_sets(toy):
    (fb, lb), (fa, la) = toy
    b, a = class_stats(fb, lb), class_stats(fa, la)
    cases = [
        (dict(target=0, similar=[0], dissimilar=[2]), "target class 0 is inside its own similar"),
        (dict(target=0, similar=[1], dissimilar=[0, 2]), "inside its own dissimilar"),
        (dict(target=0, similar=[1, 2], dissimilar=[2, 3]), r"overlap.*\[2\]"),
        (dict(target=0, similar=[], dissimilar=[2]), "S1 .*empty"),
        (dict(target=0, similar=[1], dissimilar=[]), "S2 .*empty"),
        (dict(target=0, similar=[1, 1], dissimilar=[2]), "more than once"),
        (dict(target=4, similar=[1], dissimilar=[2]), "target 4 is not a class index"),
        (dict(target=0, similar=[9], dissimilar=[2]), "similar class 9"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(ValueError, match=msg):
            diffusion_index(b, a, **kwargs)


def test_diffusion_index_rejects_mismatched_stats(toy):
    (fb, lb), (fa, la) = toy
    b = class_stats(fb, lb)
    with pytest.raises(ValueError, match="dimensions differ.*D = 2.*D = 3"):
        diffusion_index(b, class_stats(np.c_[fa, fa[:, :1]], la), 0, [1], [2])
    with pytest.raises(ValueError, match="class sets differ.*4 classes.*5"):
        diffusion_index(b, class_stats(fa, la, num_classes=5), 0, [1], [2])


def test_zero_reference_distance_is_an_error():
    f, lab = _toy([0, 0, 2])
    st = class_stats(f, lab)
    with pytest.raises(ValueError, match="same centroid"):
        diffusion_index(st, st, 0, [1], [2])


def test_class_accuracy_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 1, 0, 1, 1, 0])
    np.testing.assert_allclose(class_accuracy(pred, labels, 4)[:3], [200 / 3, 100, 0])
    assert np.isnan(class_accuracy(pred, labels, 4)[3])
    logits = np.eye(4)[pred] * 5.0
    np.testing.assert_allclose(class_accuracy(logits, labels, 4)[:3], [200 / 3, 100, 0])
    with pytest.raises(ValueError, match="out of range"):
        class_accuracy(pred, labels, 2)


# ----------------------------------------------------------------------------------------------
# features file
# ----------------------------------------------------------------------------------------------

def _write(tmp_path, name="f.npz", **over):
    rng = np.random.default_rng(0)
    kw = dict(features=rng.normal(size=(12, 5)).astype(np.float16),
              labels=np.repeat(np.arange(3), 4), class_names=["a", "b", "c"],
              weight=rng.normal(size=(3, 5)).astype(np.float32), bias=np.zeros(3, np.float32),
              meta={"model": "toy", "temperature": 2.0},
              logits=rng.normal(size=(12, 3)).astype(np.float32))
    kw.update(over)
    path = tmp_path / name
    save_features(path, kw.pop("features"), kw.pop("labels"), **kw)
    return path


def test_features_round_trip_and_mmap(tmp_path):
    path = _write(tmp_path)
    ff = load_features(path)
    assert ff.features.dtype == np.float16 and ff.features.shape == (12, 5)
    assert ff.class_names == ["a", "b", "c"] and ff.meta == {"model": "toy", "temperature": 2.0}
    assert ff.declared_num_classes == 3 and ff.logits.shape == (12, 3)
    mm = load_features(path, mmap_mode="r")
    assert isinstance(mm.features, np.memmap)
    np.testing.assert_array_equal(mm.features, ff.features)
    np.testing.assert_array_equal(mm.logits, ff.logits)
    # only the target file is left behind (atomic write via a temporary file)
    assert sorted(os.listdir(tmp_path)) == ["f.npz"]
    # files load without pickle
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) == {"features", "labels", "class_names", "weight", "bias", "meta",
                                "logits"}
        json.loads(str(z["meta"]))


def test_features_minimal_and_compressed(tmp_path):
    path = tmp_path / "m.npz"
    save_features(path, np.ones((4, 2)), np.array([0, 1, 0, 1]), compress=True)
    ff = load_features(path, mmap_mode="r")  # compressed: falls back to reading
    assert ff.class_names is None and ff.weight is None and ff.meta == {}
    assert ff.declared_num_classes is None
    np.testing.assert_array_equal(ff.features, np.ones((4, 2)))


def test_features_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_features(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive" * 10)
    with pytest.raises(FeaturesFileError, match="not an .npz"):
        load_features(junk)
    good = _write(tmp_path)
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FeaturesFileError):
        load_features(trunc)
    nolabels = tmp_path / "nolabels.npz"
    np.savez(nolabels, features=np.ones((3, 2)))
    with pytest.raises(FeaturesFileError, match=r"lacks required key\(s\) \['labels'\]"):
        load_features(nolabels)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, features=np.ones((2, 2)), labels=np.array([0, 1]),
             class_names=np.array(["a", None], dtype=object))
    with pytest.raises(FeaturesFileError, match="cannot read"):
        load_features(pickled)
    short = tmp_path / "short.npz"
    np.savez(short, features=np.ones((3, 2)), labels=np.array([0, 1]))
    with pytest.raises(FeaturesFileError, match="labels has 2 entries but features has 3 rows"):
        load_features(short)
    with pytest.raises(FeaturesFileError, match="weight has dimension 4 but features have "
                                                "dimension 5"):
        _write(tmp_path, name="w.npz", weight=np.ones((3, 4)))
    with pytest.raises(FeaturesFileError, match="weight has 3 rows but there are 2 class_names"):
        _write(tmp_path, name="w2.npz", class_names=["a", "b"])
    with pytest.raises(FeaturesFileError, match="labels must be integers"):
        _write(tmp_path, name="fl.npz", labels=np.zeros(12))
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_zip_crc_damage_is_reported(tmp_path):
    good = _write(tmp_path)
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo("labels.npy")
    # flip a byte inside the stored labels payload: CRC check fails on read
    pos = info.header_offset + 30 + len(info.filename) + 140
    data[pos] ^= 0xFF
    bad = tmp_path / "crc.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(FeaturesFileError):
        load_features(bad)


@pytest.mark.parametrize("member", ["features.npy", "logits.npy"])
@pytest.mark.parametrize("mmap", [None, "r"])
def test_damaged_mapped_member_is_refused(tmp_path, member, mmap):
    # issue 9, bug 1: a memory map skips zipfile's CRC check, so a flipped byte in the stored
    # features changed eta silently
    good = tmp_path / "g.npz"
    save_features(good, np.arange(40, dtype=np.float32).reshape(10, 4), np.arange(10) % 3,
                  logits=np.ones((10, 3), dtype=np.float32))
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as zf:
        info = zf.getinfo(member)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + 128 + 5] ^= 0x01  # past the npy header
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(FeaturesFileError, match="CRC-32|Bad CRC"):
        load_features(bad, mmap_mode=mmap)
    assert load_features(good, mmap_mode=mmap).features[3, 1] == 13  # the clean file still loads


def test_npy_header_claiming_more_than_the_member_holds_is_refused(tmp_path):
    # a consistent zip (valid CRC) whose labels header says 10**12 entries: never allocated
    path = tmp_path / "hostile.npz"
    import io
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.arange(4))
    raw = buf.getvalue().replace(b"(4,)", b"(1000000000000,)".ljust(4 + 12))
    raw = raw[:np.lib.format.MAGIC_LEN + 2] + raw[np.lib.format.MAGIC_LEN + 2:]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("labels.npy", buf.getvalue().replace(b"'shape': (4,), ", b"'shape': (10000000000,),"))
        f = io.BytesIO()
        np.lib.format.write_array(f, np.ones((4, 2)))
        zf.writestr("features.npy", f.getvalue())
    with pytest.raises(FeaturesFileError, match="damaged|cannot read"):
        load_features(path)


@pytest.mark.parametrize("labels, needle", [
    ([0, 1, -3], "label -3 \\(row 2\\) is negative"),
    ([0, 1, 10 ** 12], "label 1000000000000 \\(row 2\\) would make"),
    ([0, 1, 65536], "label 65536"),
])
def test_implausible_labels_are_refused_naming_file_label_and_remedy(tmp_path, labels, needle):
    path = tmp_path / "l.npz"
    np.savez(path, features=np.ones((3, 2)), labels=np.array(labels))
    with pytest.raises(FeaturesFileError, match=needle) as exc:
        load_features(path)
    assert str(path) in str(exc.value) and "fix the labels" in str(exc.value)
    with pytest.raises(FeaturesFileError, match=needle):  # never written either
        save_features(tmp_path / "s.npz", np.ones((3, 2)), np.array(labels))


def test_label_bounds_with_and_without_declared_classes(tmp_path):
    # K > N is fine (a small val subset of 1000 classes) ...
    save_features(tmp_path / "ok.npz", np.ones((3, 2)), np.array([0, 500, 999]))
    assert load_features(tmp_path / "ok.npz").labels.max() == 999
    # ... and with class_names a label must be < K
    with pytest.raises(FeaturesFileError, match="out of range for the file's 3 classes"):
        save_features(tmp_path / "k.npz", np.ones((3, 2)), np.array([0, 1, 3]),
                      class_names=["a", "b", "c"])
    # class_stats alone guards the same allocation
    with pytest.raises(ValueError, match="pass num_classes"):
        class_stats(np.ones((3, 2)), np.array([0, 1, 10 ** 9]))


# ----------------------------------------------------------------------------------------------
# App. K, the paper's variant: average distance between projected features (lskd_core.pairwise)
# ----------------------------------------------------------------------------------------------

def test_projected_pairwise_hand_computed():
    # D = 2, no bias, templates of classes 0 and 1 span the x axis only (w0 = (1, 0), w1 = (2, 0)):
    # projection keeps x. Class 0 at x = 0, class 1 at x = 3 and 5 (y is dropped): mean |dx| = 4.
    feats = np.array([[0.0, 7.0], [3.0, -2.0], [5.0, 9.0]])
    labels = np.array([0, 1, 1])
    w = np.array([[1.0, 0.0], [2.0, 0.0]])
    with pytest.raises(ValueError, match="linearly dependent"):
        projected_pairwise_distances(feats, labels, w, None, 0, [1])
    w = np.array([[1.0, 0.0], [1.0, 1e-30]])  # still one direction numerically
    with pytest.raises(ValueError, match="linearly dependent"):
        projected_pairwise_distances(feats, labels, w, None, 0, [1])
    # templates (1, 0, 0) and (0, 0, 1) with bias: span x and the constant; [x, y, 1] -> (x, 1)
    w = np.array([[1.0, 0.0], [0.0, 0.0]])
    b = np.array([0.0, 1.0])
    got = projected_pairwise_distances(feats, labels, w, b, 0, [1])
    assert got == pytest.approx([4.0])
    assert mean_pairwise_distance(np.array([[0.0], [1.0]]), np.array([[3.0], [5.0]])) == pytest.approx(3.5)


def test_projected_pairwise_eta_against_brute_force():
    rng = np.random.default_rng(3)
    k, d = 7, 12
    labels = rng.integers(0, k, size=90)
    labels[:k] = np.arange(k)
    fb, fa = rng.normal(size=(90, d)), rng.normal(size=(90, d)) * 1.5
    wb, wa, bb, ba = rng.normal(size=(k, d)), rng.normal(size=(k, d)), rng.normal(size=k), None
    before = FeatureFile(fb.astype(np.float32), labels, weight=wb, bias=bb)
    after = FeatureFile(fa.astype(np.float32), labels, weight=wa, bias=ba)
    out = projected_pairwise_eta(before, after, 2, [0, 5], [1, 3, 6])
    e1, e2 = eta_projected_reference((before.features, labels, wb, bb),
                                     (after.features, labels, wa, None), 2, [0, 5], [1, 3, 6])
    assert out["eta_s1_pairwise_proj"] == pytest.approx(e1, rel=1e-9)
    assert out["eta_s2_pairwise_proj"] == pytest.approx(e2, rel=1e-9)
    # a subsample is a seeded subset: reproducible, and all rows when the cap is large
    a = projected_pairwise_eta(before, after, 2, [0, 5], [1, 3, 6], max_per_class=3, seed=1)
    assert a == projected_pairwise_eta(before, after, 2, [0, 5], [1, 3, 6], max_per_class=3, seed=1)
    assert projected_pairwise_eta(before, after, 2, [0, 5], [1, 3, 6], max_per_class=1000) == out
    with pytest.raises(ValueError, match="needs the final layer's weight"):
        projected_pairwise_eta(FeatureFile(fb, labels), after, 2, [0], [1])
    with pytest.raises(ValueError, match="inside its own"):
        projected_pairwise_eta(before, after, 2, [2], [1])


def test_closed_form_keys_are_named_for_what_they_are(toy):
    (fb, lb), (fa, la) = toy
    out = diffusion_index(class_stats(fb, lb), class_stats(fa, la), 0, [1], [2, 3], pairwise=True)
    assert out["eta_s1_pairwise_sq"] == pytest.approx(ETA_S1_PW, rel=1e-12)
    assert out["eta_s2_pairwise_sq"] == pytest.approx(ETA_S2_PW, rel=1e-12)
    assert out["eta_s1_pairwise"] == out["eta_s1_pairwise_sq"]  # deprecated alias


def test_damaged_zip_directory_cannot_drop_or_rename_an_optional_member(tmp_path):
    # found by fuzzing: a damaged central directory listed 4 of 6 members; bias silently vanished
    # and the projected eta changed with exit 0
    good = _write(tmp_path)
    raw = good.read_bytes()
    central = raw.rindex(b"bias.npy")  # the directory's copy (the local header's comes first)
    renamed = tmp_path / "renamed.npz"
    renamed.write_bytes(raw[:central] + b"bixs.npy" + raw[central + 8:])
    with pytest.raises(FeaturesFileError, match="points at member"):
        load_features(renamed, mmap_mode="r")
    eocd = raw.rindex(b"PK\x05\x06")
    count = struct.unpack("<H", raw[eocd + 10:eocd + 12])[0]
    fewer = tmp_path / "fewer.npz"  # the directory says one more member than it lists
    fewer.write_bytes(raw[:eocd + 10] + struct.pack("<H", count + 1) + raw[eocd + 12:])
    with pytest.raises(FeaturesFileError, match=f"lists {count} of {count + 1} members"):
        load_features(fewer)
