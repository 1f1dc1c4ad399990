"""lskd_core.statistics against textbook formulas written out here (numpy polyfit, t quantiles),
hand-computed values and simulated coverage."""

import math
import warnings

import numpy as np
import pytest
from conftest import t_interval, values_with_p
from scipy import stats as sps

from lskd_core import statistics as st

TEMPS = [1.0, 2.0, 4.0, 64.0]


def _ols(x, y):
    """Slope, its standard error and df by the textbook formulas."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    df = len(x) - 2
    s2 = float(resid @ resid) / df
    return float(b), math.sqrt(s2 / float(((x - x.mean()) ** 2).sum())), df


def _grid(value, alphas=(0.0, 0.1), temps=TEMPS, seeds=range(5), teachers=(0,)):
    return [st.Obs(alpha=a, temperature=t, seed=s, teacher_seed=k, value=float(value(a, t, s, k)))
            for a in alphas for t in temps for k in teachers for s in seeds]


# ------------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------------
def test_records_from_dicts_and_refusals():
    obs = st.as_observations([{"alpha": 0.1, "T": 2, "seed": 0, "value": 70.0}])
    assert obs == [st.Obs(0.1, 2.0, 0, 70.0, 0)]
    with pytest.raises(ValueError, match="two records"):
        st.as_observations([{"alpha": 0.1, "T": 2, "seed": 0, "value": 70.0}] * 2)
    with pytest.raises(ValueError, match="temperature"):
        st.as_observations([{"alpha": 0.1, "T": 0, "seed": 0, "value": 70.0}])
    with pytest.raises(ValueError, match="'value'"):
        st.as_observations([{"alpha": 0.1, "T": 1, "seed": 0}])


# ------------------------------------------------------------------------------------------------
# basic intervals
# ------------------------------------------------------------------------------------------------
def test_mean_estimate_is_the_textbookt_interval():
    v = [71.2, 70.4, 72.9, 71.8, 70.1]
    est = st.mean_estimate(v)
    m, se = np.mean(v), np.std(v, ddof=1) / math.sqrt(5)
    assert est["estimate"] == pytest.approx(m)
    assert est["ci"] == pytest.approx(list(t_interval(m, se, 4)))
    assert est["ci80"] == pytest.approx(list(t_interval(m, se, 4, 0.80)))
    assert est["p"] == pytest.approx(sps.ttest_1samp(v, 0).pvalue)
    one = st.mean_estimate([3.0])
    assert one["ci"] is None and one["p"] is None and st.evidence_level(one, 1) == st.NOT_SHOWN


def test_cell_summaries_every_seed():
    obs = _grid(lambda a, t, s, k: 70 + s + a * 10, temps=[1.0, 3.0], seeds=range(4))
    cells = st.cell_summaries(obs)
    assert len(cells) == 4
    c = next(c for c in cells if c["alpha"] == 0.1 and c["temperature"] == 3.0)
    assert c["values"] == [71.0, 72.0, 73.0, 74.0] and c["n_runs"] == 4
    assert c["mean"] == pytest.approx(72.5) and c["std"] == pytest.approx(np.std([0, 1, 2, 3], ddof=1))
    se = np.std([0, 1, 2, 3], ddof=1) / 2
    assert c["interval"]["ci"] == pytest.approx(list(t_interval(72.5, se, 3)))
    assert c["interval"]["unit"] == "student seed" and not c["interval"]["teacher_variance_sampled"]


def test_holm_hand_values():
    # sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert st.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert st.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])


# ------------------------------------------------------------------------------------------------
# decision boundaries
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p, level", [(0.049, st.CLEAR), (0.051, st.SUGGESTIVE), (0.19, st.SUGGESTIVE),
                                      (0.21, st.NOT_SHOWN)])
def test_level_follows_p_at_both_thresholds(p, level):
    d = values_with_p(6, p)
    assert sps.ttest_1samp(d, 0).pvalue == pytest.approx(p, rel=1e-6)  # the construction is right
    est = st.mean_estimate(d)
    assert est["p"] == pytest.approx(p, rel=1e-6)
    assert st.evidence_level(est, +1) == level
    # the same evidence against the expected direction is never "clear"
    expected_opposite = st.OPPOSITE if level == st.CLEAR else st.NOT_SHOWN
    assert st.evidence_level(est, -1) == expected_opposite


def test_interval_touching_zero_is_not_clear():
    assert st.evidence_level({"ci": [0.0, 2.0], "ci80": [0.5, 1.5]}, +1) == st.SUGGESTIVE
    assert st.evidence_level({"ci": [1e-12, 2.0], "ci80": [0.5, 1.5]}, +1) == st.CLEAR
    assert st.evidence_level({"ci": [-2.0, 0.0], "ci80": [-1.5, -0.5]}, +1) == st.NOT_SHOWN
    assert st.evidence_level({"ci": [-2.0, 0.0], "ci80": [-1.5, -0.5]}, -1) == st.SUGGESTIVE


def test_equivalence_bounds_are_inclusive():
    assert st.within_delta({"ci": [-1.0, 1.0]}, 1.0) is True
    assert st.within_delta({"ci": [-0.5, 1.0]}, 1.0) is True
    assert st.within_delta({"ci": [-1.0000001, 0.5]}, 1.0) is False
    assert st.within_delta({"ci": [-0.2, 1.0000001]}, 1.0) is False
    assert st.within_delta({"ci": None}, 1.0) is None
    with pytest.raises(ValueError, match="delta"):
        st.within_delta({"ci": [0, 0]}, 0.0)


def test_compatible_tie_counts_as_compatible():
    obs = _grid(lambda a, t, s, k: 70.0 + s + (0.0 if t == 1 else -1.0 * (a > 0)), temps=[1.0, 8.0])
    comp = st.compatibility(obs, 0.1, 0.0)
    assert [c["compatible"] for c in comp] == [True, False]
    assert comp[0]["difference"]["estimate"] == 0.0


def test_zero_spread_pair_no_division_by_zero():
    obs = _grid(lambda a, t, s, k: 70.0 + s, temps=[1.0])  # both alphas identical seed by seed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = st.cell_difference(obs, (0.1, 1.0), (0.0, 1.0))
        best = st.could_be_best(obs)
    assert d["estimate"] == 0.0 and d["ci"] == [0.0, 0.0] and d["p"] == 1.0
    assert st.evidence_level(d, +1) == st.NOT_SHOWN and st.within_delta(d, 0.5) is True
    assert sorted(map(tuple, best["set"])) == [(0.0, 1.0), (0.1, 1.0)]
    # an exactly constant non-zero difference: the t limit, a point interval that excludes 0
    obs2 = _grid(lambda a, t, s, k: 70.0 + s + (1.0 if a else 0.0), temps=[1.0])
    d2 = st.cell_difference(obs2, (0.1, 1.0), (0.0, 1.0))
    assert d2["ci"] == [1.0, 1.0] and d2["p"] == 0.0 and st.evidence_level(d2, +1) == st.CLEAR


def test_shows_diffusion_is_strict():
    assert st.shows_diffusion(-0.1, 0.1)
    assert not st.shows_diffusion(0.0, 0.1) and not st.shows_diffusion(-0.1, 0.0)


# ------------------------------------------------------------------------------------------------
# trend and interaction
# ------------------------------------------------------------------------------------------------
def test_trend_matches_polyfit_and_textbook_interval():
    rng = np.random.default_rng(3)
    obs = _grid(lambda a, t, s, k: 75 - 0.8 * math.log(t) + rng.normal(0, 0.5), alphas=(0.1,))
    tr = st.trend(obs, 0.1)
    x = [math.log(o.temperature) for o in obs]
    b, se, df = _ols(x, [o.value for o in obs])
    est = tr["slope_per_ln_T"]
    assert est["estimate"] == pytest.approx(b) and est["n"] == 20 and est["df"] == df
    assert est["ci"] == pytest.approx(list(t_interval(b, se, df)))
    assert est["p"] == pytest.approx(2 * sps.t.sf(abs(b) / se, df))
    span = math.log(64)
    assert tr["change_over_range"]["estimate"] == pytest.approx(b * span)
    assert tr["change_over_range"]["ci"] == pytest.approx([x * span for x in t_interval(b, se, df)])


def test_trend_of_identical_values_is_an_exact_zero_slope():
    # scipy's linregress returns stderr = nan for a constant y; the exact fit has se 0, so the
    # interval is the point [0, 0] (not [nan, nan], which reached the report as None and crashed it)
    obs = _grid(lambda a, t, s, k: 70.0, alphas=(0.0, 0.1))
    for alpha in (0.0, 0.1):
        est = st.trend(obs, alpha)["slope_per_ln_T"]
        assert est["estimate"] == 0.0 and est["se"] == 0.0 and est["ci"] == [0.0, 0.0] and est["p"] == 1.0
        assert st.evidence_level(est, -1) == st.NOT_SHOWN


def test_report_renders_a_study_whose_seeds_all_agree(tmp_path):
    from conftest import synthetic_study

    from lskd_core.report import write_report

    synthetic_study(tmp_path, {})  # every cell at the same accuracy
    out = write_report(tmp_path)
    text = (out / "report.md").read_text()
    assert "0.00 [0.00, 0.00]" in text or "+0.00 [+0.00, +0.00]" in text  # the exact zero trend, shown


@pytest.mark.parametrize("sign", [-1, +1])
def test_trend_sign(sign):
    rng = np.random.default_rng(4)
    obs = _grid(lambda a, t, s, k: 75 + sign * 1.0 * math.log(t) + rng.normal(0, 0.3), alphas=(0.1,))
    est = st.trend(obs, 0.1)["slope_per_ln_T"]
    assert np.sign(est["estimate"]) == sign
    assert st.evidence_level(est, -1) == (st.CLEAR if sign < 0 else st.OPPOSITE)


def test_interaction_paired_per_seed_slopes():
    rng = np.random.default_rng(5)
    seed_eff = rng.normal(0, 2, 6)
    obs = _grid(lambda a, t, s, k: 75 + seed_eff[s] - (1.2 if a else 0.4) * math.log(t) + rng.normal(0, 0.4),
                seeds=range(6))
    inter = st.interaction(obs, 0.1, 0.0)
    assert inter["paired"]
    d = []
    for s in range(6):
        slope = {a: np.polyfit([math.log(o.temperature) for o in obs if o.seed == s and o.alpha == a],
                               [o.value for o in obs if o.seed == s and o.alpha == a], 1)[0] for a in (0.0, 0.1)}
        d.append(slope[0.1] - slope[0.0])
    m, se = np.mean(d), np.std(d, ddof=1) / math.sqrt(6)
    est = inter["slope_difference_per_ln_T"]
    assert est["n"] == 6 and est["unit"] == "student seed"
    assert est["estimate"] == pytest.approx(m) and est["ci"] == pytest.approx(list(t_interval(m, se, 5)))
    assert inter["change_over_range"]["estimate"] == pytest.approx(m * math.log(64))
    assert st.evidence_level(est, -1) == st.CLEAR


def test_interaction_unpaired_is_welch_of_the_two_slopes():
    rng = np.random.default_rng(6)
    obs = [o for o in _grid(lambda a, t, s, k: 75 - (1.0 if a else 0.5) * math.log(t) + rng.normal(0, 0.5),
                            seeds=range(5)) if not (o.alpha == 0.0 and o.seed == 4)]
    inter = st.interaction(obs, 0.1, 0.0)
    assert not inter["paired"]
    fits = {a: _ols([math.log(o.temperature) for o in obs if o.alpha == a], [o.value for o in obs if o.alpha == a])
            for a in (0.0, 0.1)}
    (b0, s0, d0), (b1, s1, d1) = fits[0.0], fits[0.1]
    se = math.sqrt(s0 ** 2 + s1 ** 2)
    df = (s0 ** 2 + s1 ** 2) ** 2 / (s0 ** 4 / d0 + s1 ** 4 / d1)
    est = inter["slope_difference_per_ln_T"]
    assert est["estimate"] == pytest.approx(b1 - b0) and est["df"] == pytest.approx(df)
    assert est["ci"] == pytest.approx(list(t_interval(b1 - b0, se, df)))


def test_interaction_of_a_partial_study_says_why():
    obs = [st.Obs(0.0, 1.0, 0, 70.0), st.Obs(0.1, 1.0, 0, 70.0), st.Obs(0.1, 2.0, 0, 69.0)]
    inter = st.interaction(obs, 0.1, 0.0)
    assert inter["slope_difference_per_ln_T"] is None and "two or more temperatures" in inter["reason"]


def test_teacher_is_the_unit_when_several_teachers():
    # three teachers per alpha whose students' slopes differ a lot by teacher, little by student seed
    rng = np.random.default_rng(7)
    t_slope = {0.0: [-0.2, -0.9, 0.3], 0.1: [-1.4, 0.1, -0.8]}
    obs = _grid(lambda a, t, s, k: 75 + t_slope[a][k] * math.log(t) + rng.normal(0, 0.05),
                seeds=range(4), teachers=(0, 1, 2))
    tr = st.trend(obs, 0.1)["slope_per_ln_T"]
    per_teacher = {a: [np.polyfit([math.log(o.temperature) for o in obs if o.alpha == a and o.teacher_seed == k],
                                  [o.value for o in obs if o.alpha == a and o.teacher_seed == k], 1)[0]
                       for k in range(3)] for a in (0.0, 0.1)}
    m, se = np.mean(per_teacher[0.1]), np.std(per_teacher[0.1], ddof=1) / math.sqrt(3)
    assert tr["n"] == 3 and tr["unit"] == "teacher" and tr["teacher_variance_sampled"]
    assert tr["ci"] == pytest.approx(list(t_interval(m, se, 2)))
    # student-level OLS would call this trend clear; with the teachers' spread it is not
    naive = _ols([math.log(o.temperature) for o in obs if o.alpha == 0.1], [o.value for o in obs if o.alpha == 0.1])
    assert t_interval(*naive)[1] < 0 and st.evidence_level(tr, -1) != st.CLEAR
    inter = st.interaction(obs, 0.1, 0.0)["slope_difference_per_ln_T"]
    d = np.subtract(per_teacher[0.1], per_teacher[0.0])
    assert inter["n"] == 3 and inter["unit"] == "teacher"
    assert inter["ci"] == pytest.approx(list(t_interval(d.mean(), d.std(ddof=1) / math.sqrt(3), 2)))
    cell = next(c for c in st.cell_summaries(obs) if c["alpha"] == 0.1 and c["temperature"] == 64.0)
    assert cell["interval"]["n"] == 3 and cell["teachers"] == 3
    diff = st.cell_difference(obs, (0.1, 64.0), (0.0, 64.0))
    assert diff["n"] == 3 and diff["unit"] == "teacher"


def test_bootstrap_interval_covers_at_nominal_rate():
    # 200 simulated paired studies with a known interaction; the BCa interval over seeds covers it ~95 %
    rng = np.random.default_rng(11)
    true_diff = -0.5
    x = np.log(TEMPS)
    hits = 0
    for sim in range(200):
        obs = []
        for s in range(30):
            u = rng.normal(0, 1)
            slope_pl = rng.normal(-0.3, 0.4)
            slope_ls = slope_pl + true_diff + rng.normal(0, 0.4)
            for t, xt in zip(TEMPS, x):
                obs.append(st.Obs(0.0, t, s, 75 + u + slope_pl * xt + rng.normal(0, 0.2)))
                obs.append(st.Obs(0.1, t, s, 75 + u + slope_ls * xt + rng.normal(0, 0.2)))
        est = st.interaction(obs, 0.1, 0.0, method="bootstrap", seed=sim, n_resamples=1999)["slope_difference_per_ln_T"]
        assert est["method"].startswith("BCa")
        hits += est["ci"][0] <= true_diff <= est["ci"][1]
    assert 0.90 <= hits / 200 <= 0.98


# ------------------------------------------------------------------------------------------------
# the best cell
# ------------------------------------------------------------------------------------------------
def test_could_be_best_clear_winner_and_ties():
    rng = np.random.default_rng(8)
    base = {1.0: 80.0, 2.0: 78.0, 4.0: 76.0, 64.0: 70.0}
    obs = _grid(lambda a, t, s, k: base[t] + (1.0 if a else 0.0) + rng.normal(0, 0.2), seeds=range(6))
    best = st.could_be_best(obs)
    assert best["set"] == [[0.1, 1.0]] and best["best_mean_cell"] == [0.1, 1.0]
    assert "Holm" in best["method"]
    # two cells equal at the top: neither can be dropped, the rest can
    noise = rng.normal(0, 0.2, (65, 6))  # shared by both alphas seed by seed: an exact tie at each T
    obs = _grid(lambda a, t, s, k: base[t] + noise[int(t), s], seeds=range(6))
    assert sorted(map(tuple, st.could_be_best(obs)["set"])) == [(0.0, 1.0), (0.1, 1.0)]


@pytest.mark.parametrize("p, size", [(0.049, 1), (0.051, 2)])
def test_could_be_best_one_sided_threshold(p, size):
    d = values_with_p(6, p, one_sided=True)
    assert sps.ttest_1samp(d, 0, alternative="greater").pvalue == pytest.approx(p, rel=1e-6)
    obs = [st.Obs(0.0, 1.0, s, 70.0 + s) for s in range(6)] + [st.Obs(0.1, 1.0, s, 70.0 + s + d[s]) for s in range(6)]
    assert len(st.could_be_best(obs)["set"]) == size
    assert len(st.could_be_best(obs, st.SUGGESTIVE_ALPHA)["set"]) == 1


def test_could_be_best_keeps_the_true_best_at_the_nominal_rate():
    # the best cell is only slightly ahead of two rivals, so whichever cell has the highest sample mean is
    # often not the true best; the set must still hold the true best in >= 95 % of studies (+ MC slack)
    rng = np.random.default_rng(12)
    kept = 0
    for _ in range(200):
        obs = [st.Obs(0.0, t, s, 70.0 + mu + rng.normal(0, 1.0)) for t, mu in ((1.0, 0.3), (2.0, 0.0), (3.0, 0.0))
               for s in range(6)]
        kept += [0.0, 1.0] in st.could_be_best(obs)["set"]
    assert kept / 200 >= 0.92


def test_could_be_best_with_one_seed_drops_nothing():
    obs = _grid(lambda a, t, s, k: 70 + a * 100 - t, seeds=[0])
    assert len(st.could_be_best(obs)["set"]) == 8


# ------------------------------------------------------------------------------------------------
# eta over seeds
# ------------------------------------------------------------------------------------------------
def _eta_rows(s1, s2, alpha=0.1, teachers=None):
    """s1[seed][target], s2[seed][target] -> rows; teachers[seed] gives the teacher seed."""
    return [st.EtaObs(alpha, 1.0, 64.0, s, k, s1[s][k], s2[s][k], teacher_seed=(teachers or {}).get(s, 0))
            for s in range(len(s1)) for k in range(len(s1[0]))]


def test_eta_summary_per_target_and_over_targets():
    s1 = [[-2.0, 1.0], [-3.0, -1.0], [-1.0, 0.5], [-4.0, -0.5]]
    s2 = [[1.0, -0.2], [2.0, 0.5], [0.5, -0.1], [3.0, 0.4]]
    (g,) = st.eta_summary(_eta_rows(s1, s2))
    t0, t1 = g["targets"]
    assert t0["eta_s1"]["estimate"] == pytest.approx(-2.5)
    se = np.std([-2, -3, -1, -4], ddof=1) / 2
    assert t0["eta_s1"]["ci"] == pytest.approx(list(t_interval(-2.5, se, 3)))
    assert t0["share_diffusion"] == 1.0 and t1["share_diffusion"] == 0.5  # seeds 1 and 3
    runs_s1 = [np.mean(r) for r in s1]
    assert g["summary"]["eta_s1"]["estimate"] == pytest.approx(np.mean(runs_s1))
    assert g["summary"]["eta_s1"]["ci"] == pytest.approx(
        list(t_interval(np.mean(runs_s1), np.std(runs_s1, ddof=1) / 2, 3)))
    assert g["summary"]["runs"] == 4 and g["summary"]["share_diffusion"] == 1.0


def test_eta_teacher_unit_and_pairwise_keys():
    s1 = [[-2.0], [-2.2], [1.0], [1.4]]
    s2 = [[1.0], [1.1], [-0.5], [-0.6]]
    (g,) = st.eta_summary(_eta_rows(s1, s2, teachers={0: 0, 1: 0, 2: 1, 3: 1}))
    est = g["summary"]["eta_s1"]
    assert est["n"] == 2 and est["unit"] == "teacher"
    assert est["ci"] == pytest.approx(list(t_interval(-0.45, np.std([-2.1, 1.2], ddof=1) / math.sqrt(2), 1)))
    assert g["summary"]["share_diffusion"] == 0.5
    rows = [{"alpha": 0.1, "t1": 1, "t2": 3, "seed": 0, "target": 2, "eta_s1": 9.0, "eta_s2": 9.0,
             "eta_s1_pairwise": -1.0, "eta_s2_pairwise": 2.0}]
    (r,) = st.as_eta_observations(rows, "eta_s1_pairwise", "eta_s2_pairwise")
    assert (r.eta_s1, r.eta_s2) == (-1.0, 2.0)
