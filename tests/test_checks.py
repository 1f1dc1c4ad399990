"""lskd_core.checks: one wording and sane bounds for T, alpha and beta (issue 9: T = 1e-300 passed)."""

import math

import numpy as np
import pytest

from lskd_core.checks import T_MAX, T_MIN, check_alpha, check_beta, check_temperature


@pytest.mark.parametrize("t", [0.01, 0.1, 1, 1.481375, 64, "3", np.float32(2.0), 1000, 1e4, 1e5])
def test_sane_temperatures_pass(t):
    assert check_temperature(t) == pytest.approx(float(t))


@pytest.mark.parametrize("t", [0, -1, math.nan, math.inf, -math.inf, 1e-300, 1e300, 0.0099, 100001.0,
                               "hot", None, True, [1.0]])
def test_insane_temperatures_are_refused_with_the_range(t):
    with pytest.raises(ValueError) as exc:
        check_temperature(t, "--kd-temperature")
    msg = str(exc.value)
    assert msg.startswith(f"--kd-temperature must be a positive finite number, got {t!r}"), msg
    if isinstance(t, float):
        assert "(accepted: 0.01 <= T <= 100000)" in msg


def test_bounds_cover_the_loss_range_and_the_entropy_matching_bracket():
    # kd_loss is documented accurate on [0.1, 1000]; match_temperature searches [0.01, 1e4]; the
    # logit-matching limit is tested at 1e5
    assert T_MIN <= 0.01 and T_MAX >= 1e5
    assert (T_MIN, T_MAX) == (0.01, 1e5)


def test_alpha_and_beta():
    assert check_alpha(0) == 0.0 and check_alpha("0.1") == 0.1
    assert check_beta(1) == 1.0
    for bad in (1.0, -0.1, math.nan, True):
        with pytest.raises(ValueError, match=r"label_smoothing must be .*\[0, 1\)"):
            check_alpha(bad)
    for bad in (1.5, -0.1, math.nan, "x"):
        with pytest.raises(ValueError, match=r"beta must be .*\[0, 1\]"):
            check_beta(bad)
