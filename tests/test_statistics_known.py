"""lskd_core.statistics on small hand-made cases whose answers are computed here with scipy's own
routines (Welch's t-test, linregress) or by hand (Holm): the unpaired paths, the bookkeeping of the
could-be-best set, and the fields the report reads. Written for the cosmic-ray survivors of issue 20."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from lskd_core import statistics as st


def _cell(alpha, t, values, seeds=None, teachers=None):
    seeds = list(range(len(values))) if seeds is None else seeds
    teachers = teachers or [0] * len(values)
    return [st.Obs(alpha, t, s, float(v), k) for s, v, k in zip(seeds, values, teachers)]


def test_unpaired_cell_difference_is_scipys_welch_test():
    a, b = [71.0, 73.5, 72.2, 74.1], [70.2, 69.0, 71.9, 70.5, 68.8]
    obs = _cell(0.1, 1.0, a, seeds=[0, 1, 2, 3]) + _cell(0.0, 1.0, b, seeds=[10, 11, 12, 13, 14])
    d = st.cell_difference(obs, (0.1, 1.0), (0.0, 1.0))
    ref = sps.ttest_ind(a, b, equal_var=False)
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 5
    df = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 4)
    assert d["method"] == "Welch t (unpaired)" and d["n"] == 9 and d["cells"] == [[0.1, 1.0], [0.0, 1.0]]
    assert d["estimate"] == pytest.approx(np.mean(a) - np.mean(b))
    assert d["se"] == pytest.approx(math.sqrt(va + vb)) and d["df"] == pytest.approx(df)
    assert d["p"] == pytest.approx(ref.pvalue)
    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert d["ci"] == pytest.approx([d["estimate"] - half, d["estimate"] + half])
    # reversed, the same test with the sign flipped
    r = st.cell_difference(obs, (0.0, 1.0), (0.1, 1.0))
    assert r["estimate"] == pytest.approx(-d["estimate"]) and r["p"] == pytest.approx(d["p"])


def test_a_cell_with_a_subset_of_the_others_seeds_is_compared_unpaired():
    # seeds 0-2 in one cell, 0-3 in the other: not the same units, so Welch over all seven runs,
    # never a paired t over the three shared seeds
    a, b = [71.0, 73.5, 72.2], [70.2, 69.0, 71.9, 75.5]
    obs = _cell(0.1, 1.0, a) + _cell(0.0, 1.0, b)
    for first, second, x, y in (((0.1, 1.0), (0.0, 1.0), a, b), ((0.0, 1.0), (0.1, 1.0), b, a)):
        d = st.cell_difference(obs, first, second)
        assert d["method"] == "Welch t (unpaired)" and d["n"] == 7
        assert d["p"] == pytest.approx(sps.ttest_ind(x, y, equal_var=False).pvalue)


def test_unpaired_with_one_unit_or_no_spread():
    obs = _cell(0.1, 1.0, [72.0], seeds=[0]) + _cell(0.0, 1.0, [70.0, 71.0, 69.0], seeds=[5, 6, 7])
    d = st.cell_difference(obs, (0.1, 1.0), (0.0, 1.0))
    assert d["estimate"] == pytest.approx(2.0) and d["ci"] is None and d["p"] is None and d["n"] == 4
    flat = _cell(0.1, 1.0, [72.0, 72.0], seeds=[0, 1]) + _cell(0.0, 1.0, [70.0, 70.0, 70.0], seeds=[5, 6, 7])
    e = st.cell_difference(flat, (0.1, 1.0), (0.0, 1.0))
    assert e["ci"] == [2.0, 2.0] and e["p"] == 0.0 and e["df"] == 3.0  # no spread: the t limit, n - 2 df
    with pytest.raises(ValueError, match="no runs"):
        st.cell_difference(flat, (0.1, 1.0), (0.2, 1.0))


def _holm(p):
    order = np.argsort(p)
    adj, running = np.empty(len(p)), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adj[i] = running
    return adj


def test_could_be_best_bookkeeping_matches_holm_by_hand():
    rng = np.random.default_rng(3)
    mus = {(0.0, 1.0): 70.0, (0.1, 1.0): 73.0, (0.1, 4.0): 72.8, (0.0, 4.0): 69.5}
    obs = [st.Obs(a, t, s, mu + rng.normal(0, 0.6)) for (a, t), mu in mus.items() for s in range(6)]
    got = st.could_be_best(obs)
    cells = sorted(mus)
    means = {c: np.mean([o.value for o in obs if (o.alpha, o.temperature) == c]) for c in cells}
    expect_kept, expect_dropped = [], {}
    for i in cells:
        rivals = [j for j in cells if j != i]
        p = []
        for j in rivals:
            d = [next(o.value for o in obs if (o.alpha, o.temperature, o.seed) == (*j, s))
                 - next(o.value for o in obs if (o.alpha, o.temperature, o.seed) == (*i, s)) for s in range(6)]
            p.append(sps.ttest_1samp(d, 0, alternative="greater").pvalue)
        adj = _holm(np.array(p))
        beaten = [(list(j), q) for j, q in zip(rivals, adj) if q < 0.05]
        if beaten:
            expect_dropped[i] = beaten
        else:
            expect_kept.append(i)
    assert got["set"] == [list(c) for c in sorted(expect_kept, key=lambda c: -means[c])]
    assert len(got["set"]) >= 2  # the two LS cells cannot be told apart
    assert got["best_mean_cell"] == list(max(cells, key=lambda c: means[c]))
    dropped = {tuple(d["cell"]): d["beaten_by"] for d in got["dropped"]}
    assert set(dropped) == set(expect_dropped)
    for c, beaten in expect_dropped.items():
        assert [b["by"] for b in dropped[c]] == [b[0] for b in beaten]
        assert [b["p_holm"] for b in dropped[c]] == pytest.approx([b[1] for b in beaten])
    assert {tuple(m["cell"]): m["mean"] for m in got["means"]} == pytest.approx(means)
    assert "Holm-adjusted over the 3 rivals, dropped when an adjusted p < 0.05" in got["method"]
    assert got["alpha"] == 0.05


def test_could_be_best_of_one_cell_and_a_sample_mean_below_a_rival():
    one = st.could_be_best(_cell(0.1, 1.0, [70.0, 71.0, 72.0]))
    assert one["set"] == [[0.1, 1.0]] and one["dropped"] == [] and "over the 0 rivals" in one["method"]


def test_cell_summaries_fields():
    obs = (_cell(0.1, 1.0, [70.0, 72.0, 74.0, 76.0], teachers=[0, 0, 1, 1]) + _cell(0.0, 1.0, [71.0]))
    cells = {(c["alpha"], c["temperature"]): c for c in st.cell_summaries(obs)}
    ls, plain = cells[(0.1, 1.0)], cells[(0.0, 1.0)]
    assert ls["teachers"] == 2 and plain["teachers"] == 1
    assert ls["std"] == pytest.approx(np.std([70, 72, 74, 76], ddof=1)) and plain["std"] is None
    assert plain["n_runs"] == 1 and plain["interval"]["ci"] is None
    # two teachers at alpha 0.1: its cell's unit is the teacher (students averaged first: 71, 75)
    assert ls["interval"]["unit"] == "teacher" and ls["interval"]["n"] == 2
    assert ls["interval"]["estimate"] == pytest.approx(73.0)
    half = sps.t.ppf(0.975, 1) * np.std([71.0, 75.0], ddof=1) / math.sqrt(2)
    assert ls["interval"]["ci"] == pytest.approx([73.0 - half, 73.0 + half])


def test_compatibility_skips_a_temperature_one_alpha_lacks():
    obs = (_cell(0.1, 1.0, [72.0, 73.0]) + _cell(0.0, 1.0, [70.0, 71.0]) + _cell(0.1, 4.0, [69.0, 70.0])
           + _cell(0.0, 8.0, [70.0, 70.5]) + _cell(0.2, 4.0, [60.0, 61.0]))
    comp = st.compatibility(obs, 0.1, 0.0)
    assert [c["temperature"] for c in comp] == [1.0]
    assert comp[0]["compatible"] is True and comp[0]["difference"]["estimate"] == pytest.approx(2.0)
    assert comp[0]["level"] == st.CLEAR


def test_trend_of_one_teacher_is_linregress_over_every_run():
    temps, vals = [1.0, 2.0, 8.0], {1.0: [80.0, 80.5], 2.0: [79.0, 79.8], 8.0: [76.0, 77.2]}
    obs = [st.Obs(0.1, t, s, v) for t in temps for s, v in enumerate(vals[t])]
    tr = st.trend(obs, 0.1)
    x = [math.log(t) for t in temps for _ in range(2)]
    y = [v for t in temps for v in vals[t]]
    fit = sps.linregress(x, y)
    est = tr["slope_per_ln_T"]
    assert est["estimate"] == pytest.approx(fit.slope) and est["se"] == pytest.approx(fit.stderr)
    assert est["df"] == 4 and est["n"] == 6 and est["p"] == pytest.approx(fit.pvalue)
    assert tr["temperatures"] == temps
    assert tr["change_over_range"]["estimate"] == pytest.approx(fit.slope * math.log(8.0))
    assert tr["change_over_range"]["ci"] == pytest.approx([c * math.log(8.0) for c in est["ci"]])
    single = st.trend([o for o in obs if o.temperature == 2.0], 0.1)
    assert single["slope_per_ln_T"] is None and single["change_over_range"] is None and "two temperatures" in \
        single["reason"]


def test_two_points_per_alpha_have_a_slope_but_no_interval():
    obs = [st.Obs(0.1, 1.0, 0, 80.0), st.Obs(0.1, 4.0, 0, 77.0)]
    est = st.trend(obs, 0.1)["slope_per_ln_T"]
    assert est["estimate"] == pytest.approx(-3.0 / math.log(4.0)) and est["se"] is None and est["ci"] is None


def test_interaction_range_and_pairing_fields():
    obs = []
    for s in range(4):
        for t in (1.0, 4.0, 16.0):
            obs.append(st.Obs(0.0, t, s, 80.0 + s - 0.1 * math.log(t)))
            obs.append(st.Obs(0.1, t, s, 80.0 + s - (1.0 + 0.1 * s) * math.log(t)))
    inter = st.interaction(obs, 0.1, 0.0)
    assert inter["paired"] is True and inter["range"] == [1.0, 16.0]
    d = [-(1.0 + 0.1 * s) + 0.1 for s in range(4)]  # per-seed slope differences, exactly
    est = inter["slope_difference_per_ln_T"]
    assert est["estimate"] == pytest.approx(np.mean(d)) and est["n"] == 4 and est["df"] == 3
    assert inter["change_over_range"]["estimate"] == pytest.approx(np.mean(d) * math.log(16.0))
    with pytest.raises(ValueError, match="method"):
        st.interaction(obs, 0.1, 0.0, method="z")
    one_seed = [o for o in obs if o.seed == 0]  # one unit: not paired (no spread over units)
    assert st.interaction(one_seed, 0.1, 0.0)["paired"] is False


def test_eta_records_refuse_non_finite_values_and_default_the_teacher():
    row = {"alpha": 0.1, "t1": 1, "t2": 4, "seed": 2, "target": 3, "eta_s1": -1.0, "eta_s2": 1.0}
    (r,) = st.as_eta_observations([row])
    assert r == st.EtaObs(0.1, 1.0, 4.0, 2, 3, -1.0, 1.0, 0)
    for bad in ({"eta_s1": float("nan")}, {"eta_s2": float("inf")}):
        with pytest.raises(ValueError, match="not finite"):
            st.as_eta_observations([dict(row, **bad)])


def test_eta_summary_groups_and_units():
    rows = [st.EtaObs(a, 1.0, t2, s, 0, v, -v, teacher_seed=s % 2) for a in (0.0, 0.1) for t2 in (4.0, 64.0)
            for s, v in enumerate([-1.0, -2.0, 0.5, -0.5])]
    groups = st.eta_summary(rows)
    assert [(g["alpha"], g["t1"], g["t2"]) for g in groups] == [(0.0, 1.0, 4.0), (0.0, 1.0, 64.0),
                                                                 (0.1, 1.0, 4.0), (0.1, 1.0, 64.0)]
    g = groups[0]["summary"]
    # two teachers (seed % 2): the unit is the teacher, its runs averaged first: (-1 + 0.5) / 2, (-2 - 0.5) / 2
    assert g["eta_s1"]["unit"] == "teacher" and g["eta_s1"]["n"] == 2
    assert g["eta_s1"]["estimate"] == pytest.approx(np.mean([-0.25, -1.25]))
    assert g["runs"] == 4 and g["share_diffusion"] == pytest.approx(3 / 4)
    one_teacher = st.eta_summary([st.EtaObs(0.1, 1.0, 4.0, s, 0, v, -v) for s, v in enumerate([-1.0, 2.0, -3.0])])
    s = one_teacher[0]["summary"]
    assert s["eta_s1"]["unit"] == "student seed" and s["eta_s1"]["n"] == 3
    assert s["eta_s2"]["estimate"] == pytest.approx(np.mean([1.0, -2.0, 3.0]))


def test_one_sided_p_without_spread_is_the_sign_of_the_difference():
    """se = 0 is the limit of the t test: any positive difference is certain (p = 0), none or a negative one
    cannot be excluded (p = 1); with spread it is scipy's t survival function."""
    for est, p in ((0.5, 0.0), (1e-9, 0.0), (0.0, 1.0), (-0.5, 1.0)):
        assert st._one_sided_p({"estimate": est, "se": 0.0, "df": 3}) == p
    assert st._one_sided_p({"estimate": 0.5, "se": 0.25, "df": 4}) == pytest.approx(sps.t.sf(2.0, 4))
    assert st._one_sided_p({"estimate": 0.5, "se": None, "df": None}) == 1.0


# --- the trend over a grid that does not start at T = 1, a unit with one T, the paired method text ---
SEED_SLOPE_NOISE = {0: 0.10, 1: -0.05, 2: 0.02, 3: -0.08}


def _linear_grid(temps, slope_ls, slope_plain):
    """Per seed, values exactly linear in ln T (a seed offset and a seed-specific slope wobble)."""
    obs = []
    for s, wobble in SEED_SLOPE_NOISE.items():
        for t in temps:
            x = math.log(t)
            obs.append(st.Obs(0.1, t, s, 70.0 + s + (slope_ls + wobble) * x, 0))
            obs.append(st.Obs(0.0, t, s, 71.0 - s + (slope_plain - wobble / 2) * x, 0))
    return obs


def test_interaction_change_is_the_slope_times_the_log_span_of_the_grid():
    temps = [2.0, 4.0, 8.0]  # span ln(8 / 2) = ln 4, not ln 16 or ln 8
    out = st.interaction(_linear_grid(temps, -1.0, -0.25), 0.1, 0.0)
    d = [(-1.0 + w) - (-0.25 - w / 2) for w in SEED_SLOPE_NOISE.values()]  # per-seed slope differences
    assert out["paired"] and out["range"] == [2.0, 8.0]
    assert out["slope_difference_per_ln_T"]["estimate"] == pytest.approx(np.mean(d))
    assert out["change_over_range"]["estimate"] == pytest.approx(np.mean(d) * math.log(4.0))
    half = sps.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d)) * math.log(4.0)
    lo, hi = out["change_over_range"]["ci"]
    assert (lo, hi) == (pytest.approx(np.mean(d) * math.log(4.0) - half), pytest.approx(np.mean(d) * math.log(4.0) + half))
    # the one-alpha trend agrees: its change over the grid is its slope times ln 4
    tr = st.trend(_linear_grid(temps, -1.0, -0.25), 0.1)
    assert tr["change_over_range"]["estimate"] == pytest.approx(tr["slope_per_ln_T"]["estimate"] * math.log(4.0))


def test_a_unit_seen_at_one_temperature_has_no_slope_and_unpairs_the_interaction():
    obs = [o for o in _linear_grid([1.0, 4.0], -1.0, -0.25) if not (o.alpha == 0.1 and o.seed == 3 and o.temperature == 4.0)]
    out = st.interaction(obs, 0.1, 0.0)  # seed 3 of the LS teacher has T = 1 only: it gives no slope
    assert out["paired"] is False
    ls, pl = [o for o in obs if o.alpha == 0.1], [o for o in obs if o.alpha == 0.0]
    ref = (sps.linregress([math.log(o.temperature) for o in ls], [o.value for o in ls]).slope
           - sps.linregress([math.log(o.temperature) for o in pl], [o.value for o in pl]).slope)
    assert out["slope_difference_per_ln_T"]["estimate"] == pytest.approx(ref)


def test_paired_cell_difference_names_its_method_and_sampling():
    obs = _cell(0.1, 1.0, [72.0, 73.0, 71.5]) + _cell(0.0, 1.0, [70.0, 71.5, 70.5])
    d = st.cell_difference(obs, (0.1, 1.0), (0.0, 1.0))
    assert d["method"] == "paired t over units" and d["teacher_variance_sampled"] is False
    assert d["estimate"] == pytest.approx(np.mean([2.0, 1.5, 1.0]))


def test_a_trend_over_three_runs_has_one_residual_df():
    temps, vals = [1.0, 2.0, 64.0], [80.0, 78.9, 75.2]
    obs = [st.Obs(0.1, t, 0, v) for t, v in zip(temps, vals)]
    est = st.trend(obs, 0.1)["slope_per_ln_T"]
    x = np.log(temps)
    sxx = float(np.sum((x - x.mean()) ** 2))
    slope = float(np.sum((x - x.mean()) * (np.array(vals) - np.mean(vals))) / sxx)
    resid = np.array(vals) - (np.mean(vals) + slope * (x - x.mean()))
    se = math.sqrt(float(np.sum(resid ** 2)) / (3 - 2) / sxx)  # the textbook slope s.e., n - 2 = 1 df
    assert est["estimate"] == pytest.approx(slope) and est["se"] == pytest.approx(se) and est["df"] == 1
    half = sps.t.ppf(0.975, 1) * se
    assert est["ci"] == pytest.approx([slope - half, slope + half])


def test_unpaired_exact_trends_report_the_pooled_residual_df():
    # LS teacher's student seed 0 at 5 T, the plain teacher's seed 1 at 4 T: no unit in common, so the
    # slopes are compared unpaired; both fits are exact (constant scores), Welch's df is 0 / 0 and the
    # difference reports the pooled regressions' residual df, (5 - 2) + (4 - 2) = 5.
    obs = ([st.Obs(0.1, t, 0, 80.0) for t in (1.0, 2.0, 4.0, 8.0, 16.0)]
           + [st.Obs(0.0, t, 1, 70.0) for t in (1.0, 2.0, 4.0, 8.0)])
    inter = st.interaction(obs, 0.1, 0.0)
    est = inter["slope_difference_per_ln_T"]
    assert inter["paired"] is False and "unpaired" in est["method"]
    assert est["estimate"] == 0.0 and est["se"] == 0.0 and est["df"] == 5
    assert est["ci"] == [0.0, 0.0] and est["p"] == 1.0


def test_diffusion_needs_s1_closer_and_s2_farther():
    assert st.shows_diffusion(-1.0, 0.5)
    # S1 closer while S2 also moved closer (possible: Eq. 1 weights the two sets differently) is not it
    assert not st.shows_diffusion(-1.0, -0.2)
    assert not st.shows_diffusion(0.5, 1.0) and not st.shows_diffusion(0.5, -1.0)


def test_a_cell_of_two_runs_has_a_std_and_an_unpaired_single_run_names_its_method():
    (cell,) = st.cell_summaries(_cell(0.1, 1.0, [70.0, 73.0]))
    assert cell["std"] == pytest.approx(np.std([70.0, 73.0], ddof=1)) and cell["n_runs"] == 2
    obs = _cell(0.1, 1.0, [72.0], seeds=[0]) + _cell(0.0, 1.0, [70.0, 71.0], seeds=[5, 6])
    d = st.cell_difference(obs, (0.1, 1.0), (0.0, 1.0))
    assert d["method"] == "Welch t (unpaired)" and d["teacher_variance_sampled"] is False and d["unit"] == "student seed"


def test_two_paired_units_are_paired_with_one_df():
    obs = []
    for s, (ls_slope, pl_slope) in enumerate(((-1.0, -0.2), (-1.4, -0.1))):
        for t in (1.0, 4.0):
            obs.append(st.Obs(0.1, t, s, 80.0 + ls_slope * math.log(t)))
            obs.append(st.Obs(0.0, t, s, 79.0 + pl_slope * math.log(t)))
    inter = st.interaction(obs, 0.1, 0.0)
    d = [-1.0 + 0.2, -1.4 + 0.1]
    est = inter["slope_difference_per_ln_T"]
    assert inter["paired"] is True and est["n"] == 2 and est["df"] == 1
    assert est["estimate"] == pytest.approx(np.mean(d))
    assert est["se"] == pytest.approx(np.std(d, ddof=1) / math.sqrt(2))


def test_compatibility_at_a_t_compares_the_two_cells_of_that_t_only():
    # the plain teacher's students are far better at T = 1 than at T = 4: the T = 4 verdict reads T = 4's
    obs = (_cell(0.1, 1.0, [80.0, 81.0]) + _cell(0.0, 1.0, [90.0, 91.0])
           + _cell(0.1, 4.0, [75.0, 76.0]) + _cell(0.0, 4.0, [70.0, 71.0]))
    comp = {c["temperature"]: c for c in st.compatibility(obs, 0.1, 0.0)}
    assert comp[1.0]["compatible"] is False and comp[4.0]["compatible"] is True
    assert comp[4.0]["difference"]["estimate"] == pytest.approx(75.5 - 70.5)
