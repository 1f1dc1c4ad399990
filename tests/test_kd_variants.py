"""TTM (teacher-only temperature) and logit standardization against independent float64 formulas."""

from __future__ import annotations

import math

import pytest
import torch

from lskd_core import losses as L


def _kl_rows64(p_logits, q_logits):
    """mean over rows of KL(softmax(p) || softmax(q)), computed by loops in float64."""
    total = 0.0
    for pr, qr in zip(p_logits.tolist(), q_logits.tolist()):
        mp, mq = max(pr), max(qr)
        zp = sum(math.exp(v - mp) for v in pr)
        zq = sum(math.exp(v - mq) for v in qr)
        for a, b in zip(pr, qr):
            p = math.exp(a - mp) / zp
            total += p * ((a - mp - math.log(zp)) - (b - mq - math.log(zq)))
    return total / len(p_logits)


def _zscore64(x):
    out = []
    for r in x.tolist():
        m = sum(r) / len(r)
        sd = math.sqrt(sum((v - m) ** 2 for v in r) / (len(r) - 1))
        out.append([(v - m) / (sd + 1e-7) for v in r])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 64.0])
def test_teacher_only_loss_is_kl_of_tempered_teacher_and_plain_student(T):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 9, generator=g) * 3, torch.randn(6, 9, generator=g) * 5
    got = L.teacher_only_kd_loss(s, t, T)
    assert got.item() == pytest.approx(_kl_rows64(t.double() / T, s.double()), rel=1e-5, abs=1e-6)
    # no T^2 factor, and at T = 1 it is the standard loss
    if T == 1.0:
        assert got.item() == pytest.approx(L.kd_loss(s, t, 1.0).item(), rel=1e-6)


def test_teacher_only_gradient_is_ps_minus_tempered_pt():
    g = torch.Generator().manual_seed(1)
    s = (torch.randn(4, 5, generator=g) * 2).requires_grad_()
    t = torch.randn(4, 5, generator=g)
    L.teacher_only_kd_loss(s, t, 3.0).backward()
    want = (torch.softmax(s.detach().double(), -1) - torch.softmax(t.double() / 3.0, -1)) / 4
    assert torch.allclose(s.grad.double(), want, atol=1e-6)


def test_teacher_only_mask_and_reductions():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    mask = torch.tensor([True, False, True, True, False])
    per = L.teacher_only_kd_loss(s, t, 2.0, reduction="none")
    assert per[1].item() > 0
    masked = L.teacher_only_kd_loss(s, t, 2.0, mask=mask)
    assert masked.item() == pytest.approx(_kl_rows64(t[mask].double() / 2, s[mask].double()), rel=1e-5)
    assert L.teacher_only_kd_loss(s, t, 2.0, reduction="sum").item() == pytest.approx(per.sum().item(), rel=1e-6)


def test_standardize_logits_is_a_z_score_with_bessel_std():
    x = torch.tensor([[1.0, 2.0, 4.0], [10.0, 10.0, 13.0]])
    assert torch.allclose(L.standardize_logits(x).double(), _zscore64(x), atol=1e-6)
    # invariant to shift and positive scale of the logits (the point of Sun et al.)
    assert torch.allclose(L.standardize_logits(3 * x + 7), L.standardize_logits(x), atol=1e-5)
    with pytest.raises(ValueError, match="2 classes"):
        L.standardize_logits(torch.zeros(3, 1))


@pytest.mark.parametrize("variant", L.KD_VARIANTS)
def test_standardized_variants_against_float64(variant):
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(7, 6, generator=g) * 4, torch.randn(7, 6, generator=g) * 9 + 2
    T = 2.0
    zs, zt = _zscore64(s), _zscore64(t)
    if variant == "standard":  # Sun et al.: T^2 KL(softmax(Z(t)/T) || softmax(Z(s)/T)), T the base temperature
        want = T * T * _kl_rows64(zt / T, zs / T)
    else:
        want = _kl_rows64(zt / T, zs)
    got = L.kd_variant_loss(s, t, T, variant, logit_standardization=True)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # the teacher's logit scale no longer matters
    assert L.kd_variant_loss(s, 5 * t, T, variant, True).item() == pytest.approx(got.item(), rel=1e-4)


def test_ls_kd_terms_route_the_variant_and_refuse_unknown_names():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    y = torch.tensor([0, 3, 1])
    terms = L.ls_kd_loss_terms(s, t, y, 4.0, kd_variant="teacher_only_T")
    assert terms.kd_loss.item() == pytest.approx(L.teacher_only_kd_loss(s, t, 4.0).item())
    assert L.ls_kd_loss_terms(s, t, y, 4.0).kd_loss.item() == pytest.approx(L.kd_loss(s, t, 4.0).item())
    with pytest.raises(ValueError, match="kd_variant"):
        L.kd_variant_loss(s, t, 2.0, "ttm")


def test_vision_criterion_and_flags_use_the_variant():
    from types import SimpleNamespace

    from vision_plugin import kd as K
    from vision_plugin.train import get_args_parser

    args = get_args_parser().parse_args(["--kd-variant", "teacher_only_T", "--logit-standardization",
                                         "--kd-temperature", "3"])
    assert args.kd_variant == "teacher_only_T" and args.logit_standardization
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    teacher = SimpleNamespace(num_classes=6, logits=lambda images: t)
    crit = K.kd_criterion_from_args(args, teacher)
    got = crit(s, torch.tensor([0, 1, 2, 3]), images=torch.zeros(4, 1))
    assert got.item() == pytest.approx(_kl_rows64(_zscore64(t) / 3, _zscore64(s)), rel=1e-5)
    topk = K.CachedTeacher(SimpleNamespace(header={"kind": "topk"}), 3.0, torch.device("cpu"), 6)
    with pytest.raises(ValueError, match="top-K"):
        K.KDCriterion(topk, 3.0, logit_standardization=True)
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--kd-variant", "ttm"])
