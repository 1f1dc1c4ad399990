"""Tests for lskd_core.smoothness (paper App. E, App. H, Fig. 2) against independent oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import mean_entropy_reference
from scipy.special import softmax as np_softmax

from lskd_core.smoothness import (
    MAX_PLOT_BARS,
    MAX_PROFILE_OTHERS,
    class_mean_probs,
    count_negligible,
    entropy_table,
    match_temperature,
    mean_entropy,
    plot_soft_output_profiles,
    soft_output_profile,
)


def _logits(n, k, scale=3.0, seed=0):
    return np.random.default_rng(seed).normal(scale=scale, size=(n, k))


# ------------------------------------------------------------------------------------------
# entropy
# ------------------------------------------------------------------------------------------
def test_uniform_logits_have_entropy_ln_k():
    for k in (2, 10, 200):
        for temperature in (0.01, 1.0, 64.0):
            assert mean_entropy(np.full((5, k), 3.7), temperature) == pytest.approx(math.log(k), rel=1e-12)
            assert mean_entropy(torch.zeros(3, k), temperature) == pytest.approx(math.log(k), rel=1e-12)


def test_entropy_hand_computed():
    # logits [0, ln 3] at T = 1 -> p = [1/4, 3/4] -> H = 1/4 ln 4 + 3/4 ln(4/3).
    # At T = 2 the same logits give p proportional to [1, sqrt 3].
    logits = np.array([[0.0, math.log(3.0)]])
    assert mean_entropy(logits, 1.0) == pytest.approx(0.25 * math.log(4) + 0.75 * math.log(4 / 3), rel=1e-12)
    q = math.sqrt(3) / (1 + math.sqrt(3))
    assert mean_entropy(logits, 2.0) == pytest.approx(-(q * math.log(q) + (1 - q) * math.log(1 - q)), rel=1e-12)


@pytest.mark.parametrize("temperature", [0.1, 1.0, 1.481375, 5.638, 64.0])
def test_mean_entropy_matches_scipy(temperature):
    logits = _logits(301, 37, scale=5.0, seed=1)
    expected = mean_entropy_reference(logits, temperature)
    assert mean_entropy(logits, temperature) == pytest.approx(expected, rel=1e-10)
    # chunking and input type do not matter
    assert mean_entropy(torch.from_numpy(logits), temperature, chunk_size=7) == pytest.approx(expected, rel=1e-10)


def test_half_precision_inputs():
    logits16 = _logits(64, 100, seed=2).astype(np.float16)
    expected = mean_entropy_reference(logits16.astype(np.float64), 2.0)
    assert mean_entropy(logits16, 2.0) == pytest.approx(expected, rel=1e-10)
    bf16 = torch.from_numpy(_logits(64, 100, seed=2)).to(torch.bfloat16)
    assert mean_entropy(bf16, 2.0) == pytest.approx(mean_entropy_reference(bf16.double().numpy(), 2.0), rel=1e-10)


def test_memmap_input(tmp_path):
    logits = _logits(500, 20, seed=3).astype(np.float32)
    path = tmp_path / "logits.f32"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=logits.shape)
    mm[:] = logits
    mm.flush()
    ro = np.memmap(path, dtype=np.float32, mode="r", shape=logits.shape)
    assert mean_entropy(ro, 1.5, chunk_size=64) == pytest.approx(mean_entropy_reference(logits, 1.5), rel=1e-10)


def test_entropy_table_against_scipy_and_hand_values():
    logits = _logits(120, 15, seed=4)
    temps = [1.0, 1.481375, 2.0, 3.0, 64.0]
    table = entropy_table(logits, temps, chunk_size=50)
    assert list(table) == temps
    for t in temps:  # scipy.stats.entropy of scipy.special.softmax, row by row: shares no code
        assert table[t] == pytest.approx(mean_entropy_reference(logits, t), rel=1e-10)
    # by hand: logits (0, ln 3) at T = 1 give p = (1/4, 3/4); at T = 2, p = (1, sqrt 3) / (1 + sqrt 3)
    two = np.array([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    h1 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    q = 1 / (1 + math.sqrt(3))
    h2 = -(q * math.log(q) + (1 - q) * math.log(1 - q))
    assert entropy_table(two, [1.0, 2.0]) == pytest.approx({1.0: h1, 2.0: h2}, rel=1e-12)


def test_entropy_non_decreasing_in_temperature_with_right_limits():
    logits = _logits(200, 50, scale=4.0, seed=5)
    temps = np.geomspace(1e-2, 1e4, 60)
    values = list(entropy_table(logits, temps).values())
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    # T -> 0: near one-hot targets (a few rows have close top-2 logits at this T)
    assert values[0] < 0.05 and values[0] == pytest.approx(mean_entropy_reference(logits, 1e-2), rel=1e-9)
    assert values[-1] == pytest.approx(math.log(50), abs=1e-6)  # T -> inf: uniform


# ------------------------------------------------------------------------------------------
# match_temperature (Table H.1)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("true_t", [0.3, 1.7, 5.638, 64.0])
def test_match_temperature_recovers_known_temperature(true_t):
    logits = _logits(400, 30, scale=4.0, seed=6)
    target = mean_entropy(logits, true_t)
    found = match_temperature(logits, target)
    assert found == pytest.approx(true_t, rel=1e-5)
    assert mean_entropy(logits, found) == pytest.approx(target, abs=1e-8)


def test_match_temperature_pairs_two_teachers():
    # Table H.1's construction: a smoother ("LS") teacher at T = 1 vs a peaked plain teacher.
    plain = _logits(300, 25, scale=6.0, seed=7)
    smooth = _logits(300, 25, scale=2.0, seed=8)
    target = mean_entropy(smooth, 1.0)
    t_match = match_temperature(plain, target)
    assert t_match > 1.0
    assert mean_entropy(plain, t_match) == pytest.approx(target, abs=1e-8)
    # a bracket that excludes the answer makes it unreachable
    with pytest.raises(ValueError, match="target_entropy"):
        match_temperature(plain, target, t_min=0.01, t_max=0.9 * t_match)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"target_entropy": math.log(25) + 0.01}, "target_entropy"),
        ({"target_entropy": -0.5}, "target_entropy"),
        ({"target_entropy": float("nan")}, "target_entropy"),
        ({"target_entropy": 1.0, "t_min": 0.0}, "t_min"),
        ({"target_entropy": 1.0, "t_min": 5.0, "t_max": 2.0}, "t_min"),
        ({"target_entropy": 1.0, "tol": 0.0}, "tol"),
    ],
)
def test_match_temperature_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        match_temperature(_logits(20, 25, seed=9), **kwargs)


# ------------------------------------------------------------------------------------------
# soft-output profile (Fig. 2) and App. E
# ------------------------------------------------------------------------------------------
def _profile_data(seed=10):
    """20 classes; samples of class 2 put most mass on 2, then 5, then 7 (its 'similar' classes)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 20, size=400)
    logits = rng.normal(size=(400, 20))
    logits[np.arange(400), labels] += 8.0
    rows = labels == 2
    logits[rows, 5] += 6.0
    logits[rows, 7] += 4.5
    return logits, labels


def test_class_mean_probs_matches_numpy():
    logits, labels = _profile_data()
    for t in (1.0, 2.0):
        expected = np_softmax(logits[labels == 2] / t, axis=1).mean(axis=0)
        np.testing.assert_allclose(class_mean_probs(logits, labels, 2, t, chunk_size=33), expected, rtol=1e-12)


def test_soft_output_profile_groups():
    logits, labels = _profile_data()
    prof = soft_output_profile(torch.from_numpy(logits), torch.from_numpy(labels), 2, 1.0)
    assert prof["classes"][:3] == [2, 5, 7]
    assert prof["groups"] == ["true", "similar", "similar"] + ["other"] * 8
    others = prof["classes"][3:]
    assert len(set(others)) == 8 and not set(others) & {2, 5, 7} and others == sorted(others)
    expected = np_softmax(logits[labels == 2], axis=1).mean(axis=0)
    np.testing.assert_allclose(prof["probs"], expected[prof["classes"]], rtol=1e-12)
    assert prof["temperature"] == 1.0 and prof["num_samples"] == int((labels == 2).sum())
    # Fig. 2's two panels: same classes at another T when similar and seed are fixed
    prof2 = soft_output_profile(logits, labels, 2, 2.0, similar=[5, 7])
    assert prof2["classes"] == prof["classes"]
    # raising T brings the similar classes closer to the true class (the paper's point)
    assert prof2["probs"][1] / prof2["probs"][0] > prof["probs"][1] / prof["probs"][0]
    # explicit similar set and counts
    prof3 = soft_output_profile(logits, labels, 2, 1.0, similar=[9], num_others=3, seed=4)
    assert prof3["classes"][:2] == [2, 9] and prof3["groups"] == ["true", "similar", "other", "other", "other"]


def test_soft_output_profile_bad_input():
    logits, labels = _profile_data()
    with pytest.raises(ValueError, match="similar"):
        soft_output_profile(logits, labels, 2, 1.0, similar=[2, 5])
    with pytest.raises(ValueError, match="labels"):
        soft_output_profile(logits, labels[:-1], 2, 1.0)
    with pytest.raises(ValueError, match="target_class"):
        soft_output_profile(logits, labels, 20, 1.0)
    with pytest.raises(ValueError, match="target_class"):
        soft_output_profile(logits, np.where(labels == 3, 4, labels), 3, 1.0)  # no samples
    with pytest.raises(ValueError, match="temperature"):
        soft_output_profile(logits, labels, 2, 0.0)
    bad = logits.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        mean_entropy(bad, 1.0)


def test_count_negligible_hand_made():
    probs = np.array([0.6, 0.2, 0.1, 0.002, 0.001, 0.0005, 0.05, 0.0465])
    # runner-up: class 1 (0.2). 0.2 >= 100 p  <=>  p <= 0.002: classes 3, 4, 5.
    assert count_negligible(probs, 0) == 3
    # factor 2: p <= 0.1: classes 2, 3, 4, 5, 6, 7 (the true class and runner-up never count).
    assert count_negligible(probs, 0, factor=2.0) == 6
    # true class 1: the runner-up becomes class 0 (0.6); 0.6 >= 100 p <=> p <= 0.006: 3, 4, 5.
    assert count_negligible(torch.tensor(probs), 1) == 3
    # App. E's shape: p2 is >= 100x larger than 976 of the 999 wrong-class probabilities.
    paper = np.full(1000, 1e-6)
    paper[0], paper[1] = 0.5, 0.2
    paper[2:24] = 0.01  # 22 classes within 100x of the runner-up
    assert count_negligible(paper, 0) == 976


def test_count_negligible_bad_input():
    with pytest.raises(ValueError, match="true_class"):
        count_negligible([0.5, 0.5], 2)
    with pytest.raises(ValueError, match="factor"):
        count_negligible([0.5, 0.3, 0.2], 0, factor=0)
    with pytest.raises(ValueError, match="mean_probs"):
        count_negligible([[0.5, 0.5]], 0)
    with pytest.raises(ValueError, match="mean_probs"):
        count_negligible([0.5, -0.1, 0.6], 0)


def _png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_fig2_profile_at_k_1000_is_a_few_random_dissimilar_classes(tmp_path):
    rng = np.random.default_rng(0)
    k = 1000
    labels = rng.integers(0, k, size=3000)
    labels[:20] = 7
    logits = rng.normal(size=(3000, k)).astype(np.float32)
    logits[np.arange(3000), labels] += 9
    logits[labels == 7, 11] += 6
    # the way the study's report asked for it: every remaining class as "other"
    prof = soft_output_profile(logits, labels, 7, 1.0, num_similar=2, num_others=k - 3)
    assert prof["groups"].count("other") == MAX_PROFILE_OTHERS == 12
    assert prof["classes"][:2] == [7, 11]
    # "randomly chosen semantically dissimilar classes": drawn from the given pool only
    s2 = list(range(500, 540))
    prof2 = soft_output_profile(logits, labels, 7, 2.0, similar=prof["classes"][1:3], dissimilar=s2)
    others = [c for c, g in zip(prof2["classes"], prof2["groups"]) if g == "other"]
    assert len(others) == 8 and set(others) <= set(s2)
    out = plot_soft_output_profiles([prof, prof2], None, tmp_path / "fig2.png")
    width, height = _png_size(out)
    # 2 panels of at most MAX_PLOT_BARS bars: 0.55 in per bar at 120 dpi (was 132,000 px wide)
    assert width <= 2 * 0.55 * MAX_PLOT_BARS * 120 + 1 and height < 1000


def test_plot_bounds_a_profile_with_every_class(tmp_path):
    k = 1000
    probs = np.full(k, 1e-4)
    probs[3], probs[4] = 0.8, 0.1
    prof = {"classes": [3, 4] + [c for c in range(k) if c not in (3, 4)], "temperature": 1.0,
            "groups": ["true", "similar"] + ["other"] * (k - 2)}
    prof["probs"] = [float(probs[c]) for c in prof["classes"]]
    out = plot_soft_output_profiles([prof], [f"c{i}" for i in range(k)], tmp_path / "all.png")
    assert _png_size(out)[0] <= 0.55 * MAX_PLOT_BARS * 120 + 1


def test_plot_soft_output_profiles_writes_png(tmp_path):
    logits, labels = _profile_data()
    profiles = [soft_output_profile(logits, labels, 2, t, similar=[5, 7]) for t in (1.0, 2.0)]
    out = plot_soft_output_profiles(profiles, [f"class_{i}" for i in range(20)], tmp_path / "sub" / "fig2.png")
    with open(out, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="class_names"):
        plot_soft_output_profiles(profiles, ["a", "b"], tmp_path / "x.png")


def test_bad_logits_shape():
    with pytest.raises(ValueError, match="logits"):
        mean_entropy(np.zeros(5), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        mean_entropy(np.zeros((2, 5)), -1.0)


def test_non_finite_logits_name_the_row():
    logits, labels = _profile_data()
    for bad_value in (np.nan, np.inf, -np.inf):
        bad = logits.copy()
        bad[123, 4] = bad_value
        with pytest.raises(ValueError, match="row 123"):
            mean_entropy(bad, 2.0, chunk_size=50)
        with pytest.raises(ValueError, match="row 123"):
            class_mean_probs(bad, labels, int(labels[123]), 1.0, chunk_size=50)
    assert mean_entropy(logits, 1.0) > 0  # the clean data passes
