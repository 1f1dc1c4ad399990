"""The verdict and the paper's findings (lskd_core.findings) on synthetic grids built to be clear,
inconclusive, opposite to the paper, and with p-values just either side of the thresholds."""

import math

import numpy as np
import pytest
from conftest import centered, values_with_p
from scipy import stats as sps

from lskd_core import findings
from lskd_core import statistics as st

TEMPS = [1.0, 2.0, 4.0, 64.0]
X = np.log(TEMPS)


def _grid(value, alphas=(0.0, 0.1), temps=TEMPS, seeds=range(5), teachers=(0,)):
    return [{"alpha": a, "T": t, "seed": s, "teacher_seed": k, "value": float(value(a, t, s, k))}
            for a in alphas for t in temps for k in teachers for s in seeds]


def _paper_like(rng, ls_slope=-1.5, plain_slope=-0.3, noise=0.2, ls_lead=1.0):
    seed_eff = rng.normal(0, 0.5, 100)
    return lambda a, t, s, k: (80 + seed_eff[s] + (ls_lead if a else 0.0)
                               + (ls_slope if a else plain_slope) * math.log(t) + rng.normal(0, noise))


def _eta(alpha_s1, seeds=5, targets=3, rng=None):
    rng = rng or np.random.default_rng(0)
    return [{"alpha": a, "t1": 1.0, "t2": 64.0, "seed": s, "target": k,
             "eta_s1": m + rng.normal(0, 0.3), "eta_s2": -m / 2 + rng.normal(0, 0.3)}
            for a, m in alpha_s1.items() for s in range(seeds) for k in range(targets)]


def _levels(v):
    return {k: f["level"] for k, f in v["flags"].items()}


def test_clear_grid_in_the_paper_direction():
    rng = np.random.default_rng(1)
    an = findings.analyze(_grid(_paper_like(rng)), _eta({0.0: -0.2, 0.1: -3.0}, rng=rng))
    v = findings.verdict(an)
    assert v["recommended"] == [0.1, 1.0]
    assert v["sentence"].startswith("Recommendation: alpha = 0.1, T = 1")
    # one teacher per alpha: the confidence is capped and the sentence says why
    assert v["confidence"] == "clear for these teachers"
    assert "teacher's own variance is not sampled" in v["sentence"]
    assert "not sampled" in v["teacher_variance_note"]
    lv = _levels(v)
    assert lv["higher_T_hurts_ls"] == st.CLEAR and lv["T_hurts_ls_more"] == st.CLEAR
    assert lv["ls_diffusion_high_T"] == st.CLEAR and lv["incompatible_at_highest_T"] == st.CLEAR
    assert "student seeds only" in v["flags"]["higher_T_hurts_ls"]["text"]
    assert "not independent evidence" in v["flags"]["ls_diffusion_high_T"]["text"]
    assert "show it (eta_S1 < 0 and eta_S2 > 0)" in v["flags"]["ls_diffusion_high_T"]["text"]
    assert "rule of thumb" not in " ".join(v["lines"])


def test_clear_with_sampled_teachers_is_plain_clear():
    rng = np.random.default_rng(2)
    an = findings.analyze(_grid(_paper_like(rng, noise=0.1), seeds=range(2), teachers=range(5)))
    assert an["teacher_variance"]["sampled"]
    v = findings.verdict(an)
    assert v["confidence"] == "clear" and v["teacher_variance_note"] is None
    assert "not sampled" not in v["sentence"]
    assert v["flags"]["higher_T_hurts_ls"]["evidence"]["unit"] == "teacher"


def test_inconclusive_grid_lists_the_indistinguishable_cells():
    rng = np.random.default_rng(3)
    an = findings.analyze(_grid(lambda a, t, s, k: 80 + rng.normal(0, 1.0), temps=[1.0, 4.0]),
                          _eta({0.1: 0.0}, rng=rng))
    v = findings.verdict(an)
    assert v["recommended"] is None and v["confidence"] in ("none", "suggestive")
    assert v["sentence"].startswith("No clear winner among these cells:")
    assert len(v["indistinguishable"]) >= 3
    for cell in v["indistinguishable"]:
        assert f"alpha = {cell[0]:g}, T = {cell[1]:g}" in v["sentence"]
    assert "Recommendation" not in v["sentence"]
    assert all(lv != st.CLEAR for lv in _levels(v).values())


def test_opposite_grid_is_reported_as_opposite():
    rng = np.random.default_rng(4)
    # T helps the LS teacher's students, and helps them more than the plain teacher's; S1 moves away
    an = findings.analyze(_grid(_paper_like(rng, ls_slope=1.5, plain_slope=0.3, ls_lead=0.0)),
                          _eta({0.1: 3.0}, rng=rng))
    v = findings.verdict(an)
    lv = _levels(v)
    assert lv["higher_T_hurts_ls"] == st.OPPOSITE
    assert lv["T_hurts_ls_more"] == st.OPPOSITE
    assert lv["ls_diffusion_high_T"] == st.OPPOSITE
    assert v["recommended"] == [0.1, 64.0]
    assert "opposite to the paper" in v["flags"]["higher_T_hurts_ls"]["text"]


def _trend_grid(p):
    """LS students whose OLS slope on ln T has a two-sided p of exactly ``p`` (plain: flat, noisy)."""
    n_seeds = 4
    resid = np.array([1.0, -1.0, 1.0, -1.0])  # sums to 0 within each T: orthogonal to ln T and to the mean
    n = n_seeds * len(TEMPS)
    x = np.repeat(X, n_seeds)
    sxx = float(((x - x.mean()) ** 2).sum())
    ssr = n * 1.0
    se = math.sqrt(ssr / (n - 2) / sxx)
    b = -sps.t.isf(p / 2, n - 2) * se
    rows = []
    for i, t in enumerate(TEMPS):
        for s in range(n_seeds):
            rows.append({"alpha": 0.1, "T": t, "seed": s, "value": 80 + b * X[i] + resid[s]})
            rows.append({"alpha": 0.0, "T": t, "seed": s, "value": 80 + resid[(s + i) % 4] * 3})
    # independent check of the construction: polyfit + the textbook slope t-test
    xs = np.array([math.log(r["T"]) for r in rows if r["alpha"] == 0.1])
    ys = np.array([r["value"] for r in rows if r["alpha"] == 0.1])
    bb, aa = np.polyfit(xs, ys, 1)
    r = ys - aa - bb * xs
    se_chk = math.sqrt(float(r @ r) / (n - 2) / float(((xs - xs.mean()) ** 2).sum()))
    assert 2 * sps.t.sf(abs(bb) / se_chk, n - 2) == pytest.approx(p, rel=1e-6)
    return rows


@pytest.mark.parametrize("p, level", [(0.048, st.CLEAR), (0.052, st.SUGGESTIVE), (0.25, st.NOT_SHOWN)])
def test_trend_flag_at_the_threshold(p, level):
    v = findings.verdict(findings.analyze(_trend_grid(p)))
    flag = v["flags"]["higher_T_hurts_ls"]
    assert flag["evidence"]["p"] == pytest.approx(p, rel=1e-6)
    assert flag["level"] == level
    assert flag["evidence"]["estimate"] < 0
    # the claim names the LS teacher's alpha and the T range the change is fitted over
    lo, hi = min(TEMPS), max(TEMPS)
    assert flag["claim"] == (f"Higher T hurts the LS teacher's (alpha = 0.1) students (fitted change on ln T from "
                             f"T = {lo:g} to {hi:g})")


def _interaction_grid(per_seed_slope_diff):
    """Plain students flat in T; LS student s has slope d_s on ln T exactly, so the paired
    per-seed slope differences are ``per_seed_slope_diff``."""
    rows = []
    for s, d in enumerate(per_seed_slope_diff):
        for i, t in enumerate(TEMPS):
            rows.append({"alpha": 0.0, "T": t, "seed": s, "value": 80.0 + s})
            rows.append({"alpha": 0.1, "T": t, "seed": s, "value": 80.0 + s + d * (X[i] - X.mean())})
    return rows


@pytest.mark.parametrize("p, level", [(0.049, st.CLEAR), (0.051, st.SUGGESTIVE)])
def test_interaction_flag_at_the_threshold(p, level):
    d = -values_with_p(6, p)
    assert sps.ttest_1samp(d, 0).pvalue == pytest.approx(p, rel=1e-6)
    v = findings.verdict(findings.analyze(_interaction_grid(d)))
    flag = v["flags"]["T_hurts_ls_more"]
    assert flag["evidence"]["n"] == 6 and flag["evidence"]["p"] == pytest.approx(p, rel=1e-6)
    assert flag["level"] == level
    # and the opposite sign is never "clear"
    v2 = findings.verdict(findings.analyze(_interaction_grid(-d)))
    assert v2["flags"]["T_hurts_ls_more"]["level"] == (st.OPPOSITE if level == st.CLEAR else st.NOT_SHOWN)


def test_small_interaction_is_stated_with_delta():
    d = 0.02 * centered(8) + 0.01  # tiny, precisely estimated slope differences
    an = findings.analyze(_interaction_grid(d), delta=0.5)
    flag = findings.verdict(an)["flags"]["T_hurts_ls_more"]
    lo, hi = flag["evidence"]["ci"]
    assert -0.5 <= lo and hi <= 0.5 and flag["smaller_than_delta"] is True
    assert "smaller than 0.5 points" in flag["text"] and f"{lo:+.2f} to {hi:+.2f}" in flag["text"]
    # a wide interval is not declared small
    an = findings.analyze(_interaction_grid(3 * centered(8)), delta=0.5)
    assert findings.verdict(an)["flags"]["T_hurts_ls_more"]["smaller_than_delta"] is False


@pytest.mark.parametrize("p, level", [(0.049, st.CLEAR), (0.051, st.SUGGESTIVE)])
def test_diffusion_flag_at_the_threshold(p, level):
    s1 = -values_with_p(5, p)
    eta = [{"alpha": 0.1, "t1": 1.0, "t2": 64.0, "seed": s, "target": 0, "eta_s1": s1[s], "eta_s2": -s1[s]}
           for s in range(5)]
    v = findings.verdict(findings.analyze(_interaction_grid(np.zeros(5)), eta))
    flag = v["flags"]["ls_diffusion_high_T"]
    assert flag["level"] == level and flag["evidence"]["n"] == 5


@pytest.mark.parametrize("p, sentence, conf", [(0.049, "Recommendation: alpha = 0.1, T = 1", "clear for these teachers"),
                                               (0.051, "No clear winner among these cells", "suggestive")])
def test_recommendation_at_the_threshold(p, sentence, conf):
    d = centered(6) + sps.t.isf(p, 5) / math.sqrt(6)  # one-sided p exactly p
    rows = ([{"alpha": 0.0, "T": 1.0, "seed": s, "value": 70.0 + s} for s in range(6)]
            + [{"alpha": 0.1, "T": 1.0, "seed": s, "value": 70.0 + s + d[s]} for s in range(6)])
    v = findings.verdict(findings.analyze(rows))
    assert v["sentence"].startswith(sentence) and v["confidence"] == conf
    if conf == "suggestive":
        assert v["leaning"] == [0.1, 1.0] and "suggestive only" in v["sentence"]


def test_zero_spread_grid_has_no_winner():
    rows = _grid(lambda a, t, s, k: 70.0 + s, temps=[1.0, 3.0])  # every cell identical seed by seed
    v = findings.verdict(findings.analyze(rows))
    assert v["sentence"].startswith("No clear winner") and len(v["indistinguishable"]) == 4
    assert v["flags"]["T_hurts_ls_more"]["level"] == st.NOT_SHOWN
    assert v["flags"]["T_hurts_ls_more"]["smaller_than_delta"] is True
    assert v["flags"]["compatible_at_lowest_T"]["text"].startswith(
        "LS teacher's students at least as good as the plain teacher's at T = 1 (point estimate: yes)")


def test_teacher_variance_enters_the_verdict():
    # students agree closely within a teacher, teachers disagree: with 3 teachers the interaction
    # is NOT clear, although the student seeds alone would make it look so
    rng = np.random.default_rng(9)
    t_eff = {0.0: [0.0, 0.0, 0.0], 0.1: [-2.0, 0.5, -1.0]}
    rows = _grid(lambda a, t, s, k: 80 + (t_eff[a][k] - 0.2) * math.log(t) + rng.normal(0, 0.05),
                 seeds=range(4), teachers=range(3))
    v = findings.verdict(findings.analyze(rows))
    inter = v["flags"]["T_hurts_ls_more"]
    assert inter["evidence"]["unit"] == "teacher" and inter["evidence"]["n"] == 3
    assert inter["level"] != st.CLEAR
    single = findings.verdict(findings.analyze([r for r in rows if r["teacher_seed"] == 0]))
    assert single["flags"]["T_hurts_ls_more"]["level"] == st.CLEAR  # the contrast the teachers' spread removes


def test_missing_and_bad_input():
    assert findings.verdict(findings.analyze([]))["status"] == "missing"
    one = findings.verdict(findings.analyze([{"alpha": 0.1, "T": 1, "seed": s, "value": 70.0 + s} for s in range(3)]))
    assert one["recommended"] is None and one["sentence"].startswith("Only one cell ran")
    with pytest.raises(ValueError, match="delta"):
        findings.analyze([{"alpha": 0, "T": 1, "seed": 0, "value": 1.0}], delta=0)


def _analysis_with_sets(best, suggestive, sampled=False):
    """A minimal analysis for findings._headline: cells (mean, interval) and the could-be-best sets."""
    cells = [{"alpha": a, "temperature": t, "mean": 80.0 - i, "interval": {"ci": [79.0 - i, 81.0 - i], "n": 3,
                                                                         "unit": "student seed"}}
             for i, (a, t) in enumerate([(0.1, 1.0), (0.1, 4.0), (0.0, 1.0), (0.0, 4.0)])]
    return {"cells": cells, "best": {"set": [list(c) for c in best]},
            "best_suggestive": {"set": [list(c) for c in suggestive]},
            "teacher_variance": {"sampled": sampled}}


def test_headline_names_what_the_tied_cells_share_and_the_suggestive_lean():
    same_alpha = findings._headline(_analysis_with_sets([(0.1, 1.0), (0.1, 4.0)], [(0.1, 1.0)]), "points")
    assert "all of them use alpha = 0.1, so that teacher is favoured" in same_alpha["sentence"]
    assert same_alpha["confidence"] == "suggestive" and same_alpha["leaning"] == [0.1, 1.0]
    assert same_alpha["recommended"] is None
    same_t = findings._headline(_analysis_with_sets([(0.1, 1.0), (0.0, 1.0)], [(0.1, 1.0), (0.0, 1.0)]), "points")
    assert "all of them use T = 1, so that temperature is favoured" in same_t["sentence"]
    assert same_t["confidence"] == "none" and same_t["leaning"] is None
    neither = findings._headline(_analysis_with_sets([(0.1, 1.0), (0.0, 4.0)], [(0.1, 1.0), (0.0, 4.0)]), "points")
    assert "all of them use" not in neither["sentence"] and neither["sentence"].startswith("No clear winner")
    sole = findings._headline(_analysis_with_sets([(0.1, 1.0)], [(0.1, 1.0)], sampled=True), "points")
    assert sole["recommended"] == [0.1, 1.0] and sole["confidence"] == "clear"
    assert "teacher's own variance is not sampled" not in sole["sentence"]
    unsampled = findings._headline(_analysis_with_sets([(0.1, 1.0)], [(0.1, 1.0)]), "points")
    assert unsampled["confidence"] == "clear for these teachers"
    assert "teacher's own variance is not sampled" in unsampled["sentence"]
