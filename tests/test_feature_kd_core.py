"""lskd_core.feature_kd (Heo et al. 2019's overhaul distillation) against independent computations:
the margin against numerical integration of the Gaussian, the partial L2 against an elementwise
loop of its definition, the gradients by gradcheck in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from lskd_core import feature_kd as F


def _margin_quad(mu: float, sigma: float) -> float:
    """E[x | x < 0] for N(mu, sigma^2) as a ratio of two integrals over (-inf, 0]. Both integrands
    carry the same factor exp(-mu^2 / (2 sigma^2)) removed (it cancels), so far tails integrate too."""
    def w(x):
        return math.exp(-(x * x - 2.0 * x * mu) / (2.0 * sigma * sigma))

    # the weight is below 1 on x < 0 and negligible beyond x < min(mu, 0) - 40 sigma
    lo = min(mu, 0.0) - 40.0 * sigma
    pts = [p for p in (mu,) if lo < p < 0]
    num = integrate.quad(lambda x: x * w(x), lo, 0.0, points=pts or None, limit=400, epsabs=0, epsrel=1e-12)[0]
    den = integrate.quad(w, lo, 0.0, points=pts or None, limit=400, epsabs=0, epsrel=1e-12)[0]
    return num / den


@pytest.mark.parametrize("mu,sigma", [(0.0, 1.0), (1.0, 1.0), (-1.0, 1.0), (0.3, 2.5), (-4.0, 0.5), (2.5, 0.7),
                                      (5.0, 1.0), (8.0, 1.0), (30.0, 1.0), (150.0, 1.0), (-30.0, 1.0),
                                      (1e-3, 1e-4), (0.2, -1.3)])
def test_margin_matches_numerical_integration(mu, sigma):
    got = float(F.bn_margin(torch.tensor(mu), torch.tensor(sigma)))
    want = _margin_quad(mu, abs(sigma))  # the std is |gamma| (a BN scale may be negative)
    assert got == pytest.approx(want, rel=1e-7, abs=1e-12)
    assert got <= 0.0 and got <= mu + 1e-12


def test_margin_limits_and_extremes_are_finite():
    mu = torch.tensor([-5.0, 0.0, 5.0, 1e6, -1e6, 3.0, -3.0, 0.0], dtype=torch.float64)
    sigma = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1e-300, 1e-300, 1e300], dtype=torch.float64)
    m = F.bn_margin(mu, sigma)
    assert torch.isfinite(m).all()
    assert m[0] == -5.0 and m[1] == 0.0 and m[2] == 0.0  # point masses: min(mu, 0)
    assert float(m[3]) == pytest.approx(-1e-6, rel=1e-9)  # -sigma^2 / mu far right
    assert float(m[4]) == pytest.approx(-1e6, rel=1e-9)  # far left: the mean itself
    assert float(m[5]) <= 0.0 and float(m[5]) > -1e-290
    assert float(m[6]) == pytest.approx(-3.0)
    # mu = 0: E[x | x < 0] = -sigma sqrt(2 / pi), the half-normal mean
    assert float(m[7]) == pytest.approx(-1e300 * math.sqrt(2 / math.pi), rel=1e-12)


def test_margin_is_continuous_across_the_series_switch():
    a = torch.tensor([99.999, 100.0, 100.001], dtype=torch.float64)
    m = F.bn_margin(a, torch.ones_like(a)).numpy()
    assert np.all(np.diff(m) > 0)  # increases towards 0 as mu grows
    assert m[1] == pytest.approx(_margin_quad(100.0, 1.0), rel=1e-9)


def test_margin_from_batchnorm_reads_shift_and_abs_scale():
    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    m = F.margin_from_batchnorm(bn)
    want = [_margin_quad(0.0, 1.0), _margin_quad(1.0, 2.0), _margin_quad(-1.0, 0.5)]
    assert m.dtype == torch.float32 and m.tolist() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="affine"):
        F.margin_from_batchnorm(torch.nn.BatchNorm2d(3, affine=False))


def _partial_l2_loop(s: np.ndarray, t: np.ndarray, m: np.ndarray) -> float:
    """Heo et al.'s definition element by element: T <- max(T, m_c); 0 if S <= T <= 0 else (T - S)^2."""
    total = 0.0
    for idx in np.ndindex(*s.shape):
        target = max(float(t[idx]), float(m[idx[1]]))
        student = float(s[idx])
        if student <= target <= 0:
            continue
        total += (target - student) ** 2
    return total


def test_partial_l2_and_margin_relu_match_the_elementwise_definition():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    t = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    # ties on purpose: S == T <= 0 (no loss), and T exactly at the margin
    s[0, 0, 0, 0] = t[0, 0, 0, 0] = -0.5
    m = F.bn_margin(torch.zeros(4), torch.tensor([1.0, 0.5, 2.0, 0.1]))
    t[1, 2, 0, 0] = m[2]
    got = F.partial_l2(s, F.margin_relu(t, m))
    assert float(got) == pytest.approx(_partial_l2_loop(s.numpy(), t.numpy(), m.numpy()), rel=1e-12)


def test_overhaul_loss_weights_stages_and_divides_by_batch():
    g = torch.Generator().manual_seed(1)
    shapes = [(2, 3, 8, 8), (2, 5, 4, 4), (2, 7, 2, 2)]
    ss = [torch.randn(*sh, generator=g) for sh in shapes]
    ts = [torch.randn(*sh, generator=g) for sh in shapes]
    ms = [F.bn_margin(torch.randn(sh[1], generator=g), torch.rand(sh[1], generator=g) + 0.1) for sh in shapes]
    assert F.stage_weights(4) == [0.125, 0.25, 0.5, 1.0]
    want = sum(w * _partial_l2_loop(s.numpy(), t.numpy(), m.numpy())
               for w, s, t, m in zip([0.25, 0.5, 1.0], ss, ts, ms)) / 2
    assert float(F.overhaul_loss(ss, ts, ms)) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="differ"):
        F.overhaul_loss([ss[0]], [ts[1]], [ms[1]])
    with pytest.raises(ValueError, match="as many"):
        F.overhaul_loss(ss, ts[:2], ms)


def test_gradients_by_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    conn = F.Connector(3, 4).double()
    x = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64)
    m = F.bn_margin(torch.zeros(4), torch.ones(4))

    def loss(inp, *params):
        return F.overhaul_loss([torch.func.functional_call(conn, dict(zip(names, params)), (inp,))], [t], [m])

    names = [n for n, _ in conn.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in conn.named_parameters())
    assert torch.autograd.gradcheck(loss, (x, *params), eps=1e-6, atol=1e-6)
    # partial L2 alone, both arguments (its own backward), away from the mask's kinks
    a_s = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    a_t = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(F.partial_l2, (a_s, a_t), eps=1e-6, atol=1e-6)
    # the teacher side gets no gradient: it is the target
    tt = t.clone().requires_grad_(True)
    F.overhaul_loss([x.sum(1, keepdim=True).expand(2, 4, 3, 3)], [tt], [m]).backward()
    assert tt.grad is None


def test_connector_shape_and_initialisation():
    torch.manual_seed(0)
    c = F.Connector(64, 256)
    conv, bn = c[0], c[1]
    assert conv.bias is None and conv.kernel_size == (1, 1)
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    assert torch.equal(bn.weight, torch.ones(256)) and torch.equal(bn.bias, torch.zeros(256))
    assert c(torch.randn(2, 64, 5, 5)).shape == (2, 256, 5, 5)
