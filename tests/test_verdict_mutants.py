"""The verdict's wording and the flags' bookkeeping (lskd_core.findings) against numbers computed here
independently (numpy / scipy), and invariants of the verdict as a pure function of a JSON-able
analysis. Written to kill the cosmic-ray survivors of issue 20 (docs/testing.md): each test states the
property the mutant broke, not the current output."""

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from lskd_core import findings
from lskd_core import statistics as st

TEMPS = [1.0, 2.0, 4.0, 64.0]


def _paper_grid(seed=1, seeds=5):
    """LS students 1 point ahead at T = 1 and hurt more by T than the plain teacher's (one teacher each)."""
    rng = np.random.default_rng(seed)
    seed_eff = rng.normal(0, 0.5, seeds)
    rows = []
    for a in (0.0, 0.1):
        for t in TEMPS:
            for s in range(seeds):
                v = 80 + seed_eff[s] + (1.0 if a else 0.0) + (-1.5 if a else -0.3) * math.log(t) + rng.normal(0, 0.2)
                rows.append({"alpha": a, "T": t, "seed": s, "teacher_seed": 0, "value": float(v)})
    return rows


def _eta_rows(alpha, s1, s2, t1=1.0, t2=64.0):
    return [{"alpha": alpha, "t1": t1, "t2": t2, "seed": s, "target": 0, "eta_s1": float(a), "eta_s2": float(b)}
            for s, (a, b) in enumerate(zip(s1, s2))]


def _values(rows, a, t):
    return np.array([r["value"] for r in rows if r["alpha"] == a and r["T"] == t])


def _roundtrip(x):
    return json.loads(json.dumps(x))


# ----------------------------------------------------------------------------------- invariants ---
def test_the_verdict_survives_a_json_round_trip_of_its_inputs():
    """The analysis is JSON-able and the verdict a pure function of it: values read back from JSON
    (new float and str objects, equal but not identical) give the same verdict. Kills matching by
    identity (`is`) instead of equality in the trend, eta and status look-ups."""
    rows = _paper_grid()
    eta = (_eta_rows(0.1, -3 + 0.1 * np.arange(5), 3 - 0.1 * np.arange(5))
           + _eta_rows(0.0, -0.2 + 0.01 * np.arange(5), 0.1 * np.ones(5)))
    direct = findings.verdict(findings.analyze(rows, eta))
    assert direct["flags"]["ls_diffusion_high_T"]["level"] == st.CLEAR
    assert "plain teacher's students for comparison" in direct["flags"]["ls_diffusion_high_T"]["text"]
    via_json = findings.verdict(_roundtrip(findings.analyze(_roundtrip(rows), _roundtrip(eta))))
    assert _roundtrip(via_json) == _roundtrip(direct)
    assert via_json["status"] == "ok"


def _notes(v):
    return [v[k] for k in sorted(v) if k.endswith("_note") and v[k]]


def test_the_verdict_does_not_depend_on_the_order_of_the_cells():
    """The analysis's lists are data, not an index: reversing the cells gives the same verdict."""
    rows = _paper_grid()
    an = findings.analyze(rows)
    flipped = dict(an, cells=list(reversed(an["cells"])))
    for a in (an, flipped):
        v = findings.verdict(a)
        assert v["recommended"] == [0.1, 1.0]
    assert findings.verdict(flipped)["sentence"] == findings.verdict(an)["sentence"]
    # and a tie, where every tied cell is described by its own numbers
    tie = findings.analyze([dict(r, value=r["value"] - (1.0 if r["alpha"] else 0.0)) for r in rows if r["T"] <= 2.0])
    v, vf = findings.verdict(tie), findings.verdict(dict(tie, cells=list(reversed(tie["cells"]))))
    assert vf["sentence"] == v["sentence"] and len(v["indistinguishable"]) >= 2
    for cell in v["indistinguishable"]:
        x = _values(rows, *cell) - (1.0 if cell[0] else 0.0)
        assert f"{findings._cell_name(cell)} ({x.mean():.2f} points" in v["sentence"]


def test_lines_are_the_sentence_the_flags_and_the_caveats_in_order():
    rows = _paper_grid()
    v = findings.verdict(findings.analyze(rows))
    head = [v["sentence"]] + [f["text"] for f in v["flags"].values()]
    assert v["lines"][:len(head)] == head and v["teacher_variance_note"] in v["lines"][len(head):]
    assert sorted(v["lines"][len(head):]) == sorted(_notes(v))
    sampled = [dict(r, teacher_seed=r["seed"] % 3) for r in rows]  # three teachers per alpha
    vs = findings.verdict(findings.analyze(sampled))
    head = [vs["sentence"]] + [f["text"] for f in vs["flags"].values()]
    assert vs["teacher_variance_note"] is None
    assert vs["lines"][:len(head)] == head and sorted(vs["lines"][len(head):]) == sorted(_notes(vs))


def test_analyze_takes_its_options_by_keyword_and_refuses_a_negative_delta():
    rows = _paper_grid()
    eta = _eta_rows(0.1, -np.arange(1, 6), np.arange(1, 6))
    assert findings.analyze(rows, eta_rows=eta)["eta"] == findings.analyze(rows, eta)["eta"]
    with pytest.raises(TypeError):
        findings.analyze(rows, eta, 0.5)  # delta is keyword-only: a positional 0.5 is a mistake
    for bad in (-0.5, -1e-9, 0.0):
        with pytest.raises(ValueError, match="delta"):
            findings.analyze(rows, delta=bad)


def test_a_grid_with_only_the_plain_teacher_has_no_ls_findings():
    rows = [r for r in _paper_grid() if r["alpha"] == 0.0]
    an = findings.analyze(rows)
    assert "alpha_ls" not in an and "interaction" not in an
    assert findings.verdict(an)["flags"] == {}  # nothing compares the plain teacher with itself


def test_the_ls_teacher_is_an_alpha_above_the_baseline():
    # baseline 0.1 with only alpha 0 below it: there is no LS teacher to test against the baseline
    an = findings.analyze(_paper_grid(), baseline_alpha=0.1)
    assert "alpha_ls" not in an and findings.verdict(an)["flags"] == {}


def test_a_grid_without_the_plain_teacher_has_no_ls_findings():
    rows = [dict(r, alpha=0.2 if r["alpha"] == 0.0 else 0.1) for r in _paper_grid()]
    an = findings.analyze(rows)
    assert "alpha_ls" not in an and "interaction" not in an and "compatibility" not in an
    v = findings.verdict(an)
    assert v["flags"] == {} and v["status"] == "ok"


# --------------------------------------------------------------------- known answers, the wording ---
def test_the_recommended_cell_is_described_by_its_own_mean_and_t_interval():
    rows = _paper_grid()
    v = findings.verdict(findings.analyze(rows))
    assert v["recommended"] == [0.1, 1.0]
    x = _values(rows, 0.1, 1.0)
    half = sps.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    words = f"alpha = 0.1, T = 1 ({x.mean():.2f} points, 95 % interval {x.mean() - half:.2f} to {x.mean() + half:.2f}, " \
            f"5 student seeds)"
    assert words in v["sentence"]


def test_the_trend_flag_states_the_regression_computed_here():
    rows = _paper_grid()
    flag = findings.verdict(findings.analyze(rows))["flags"]["higher_T_hurts_ls"]
    ls = [r for r in rows if r["alpha"] == 0.1]
    fit = sps.linregress([math.log(r["T"]) for r in ls], [r["value"] for r in ls])
    span = math.log(64.0)
    half = sps.t.ppf(0.975, len(ls) - 2) * fit.stderr
    est, lo, hi = fit.slope * span, (fit.slope - half) * span, (fit.slope + half) * span
    assert flag["level"] == st.CLEAR and est < 0
    assert f"{est:+.2f} points, 95 % interval {lo:+.2f} to {hi:+.2f}, p = {fit.pvalue:.3g}; n = 20 student runs" \
        in flag["text"]
    assert "(fitted change on ln T from T = 1 to 64)" in flag["text"]


def test_compatibility_flags_at_the_lowest_and_highest_T():
    rows = _paper_grid()
    flags = findings.verdict(findings.analyze(rows))["flags"]
    lo_d = _values(rows, 0.1, 1.0) - _values(rows, 0.0, 1.0)   # same seeds: paired
    hi_d = _values(rows, 0.1, 64.0) - _values(rows, 0.0, 64.0)
    assert lo_d.mean() > 0 and sps.ttest_1samp(lo_d, 0).pvalue < 0.05  # the LS students are clearly ahead at T = 1
    assert hi_d.mean() < 0 and sps.ttest_1samp(hi_d, 0).pvalue < 0.05  # and clearly behind at T = 64
    low, high = flags["compatible_at_lowest_T"], flags["incompatible_at_highest_T"]
    # "at least as good" is the expected direction at T = 1: ahead is clear, not opposite
    assert low["level"] == st.CLEAR and "(point estimate: yes)" in low["text"]
    assert high["level"] == st.CLEAR and "(point estimate: yes)" in high["text"]
    assert low["evidence"]["estimate"] == pytest.approx(lo_d.mean())
    # swap the teachers: now the LS students are behind at T = 1 (opposite) and ahead at T = 64
    swapped = [dict(r, alpha=0.1 if r["alpha"] == 0.0 else 0.0) for r in rows]
    flags = findings.verdict(findings.analyze(swapped))["flags"]
    assert flags["compatible_at_lowest_T"]["level"] == st.OPPOSITE
    assert "(point estimate: no)" in flags["compatible_at_lowest_T"]["text"]
    assert "(point estimate: no)" in flags["incompatible_at_highest_T"]["text"]


def test_two_temperatures_one_seed_say_there_is_no_interval():
    # one student per cell at T = 1 and 4: the changes are known exactly, their spread is not
    vals = {(0.0, 1.0): 80.0, (0.0, 4.0): 79.0, (0.1, 1.0): 82.0, (0.1, 4.0): 78.0}
    rows = [{"alpha": a, "T": t, "seed": 0, "value": v} for (a, t), v in vals.items()]
    flags = findings.verdict(findings.analyze(rows))["flags"]
    trend, inter = flags["higher_T_hurts_ls"], flags["T_hurts_ls_more"]
    assert trend["level"] == inter["level"] == st.NOT_SHOWN
    assert "-4.00 points; no interval with 2 student run(s) (the spread is unknown)" in trend["text"]
    assert "-3.00 points; no interval with 4 student run(s)" in inter["text"]  # (-4) - (-1)
    assert "p = " not in trend["text"]
    # the "teachers trained here" caveat qualifies a claim (clear / opposite), never a "not shown"
    assert "student seeds only" not in trend["text"] and "student seeds only" not in inter["text"]
    # two temperatures are enough for both ends of the compatibility comparison
    assert {"compatible_at_lowest_T", "incompatible_at_highest_T"} <= set(flags)
    assert "T = 4 (point estimate: yes)" in flags["incompatible_at_highest_T"]["text"]  # 78 < 79


def test_a_single_temperature_has_no_trend_to_report():
    rows = [r for r in _paper_grid() if r["T"] == 4.0]
    flag = findings.verdict(findings.analyze(rows))["flags"]["higher_T_hurts_ls"]
    assert flag["level"] == st.NOT_SHOWN and flag["evidence"] is None
    assert "not enough cells to test it" in flag["text"] and "fitted change" not in flag["text"]
    # one T: one compatibility comparison, not the same T read as both the lowest and the highest
    flags = findings.verdict(findings.analyze(rows))["flags"]
    assert "compatible_at_lowest_T" in flags and "incompatible_at_highest_T" not in flags


def test_the_suggestive_lean_names_the_80_percent_level():
    # one-sided p = 0.1 for the LS cell against the plain one: beaten at 20 %, not at 5 %
    d = values_with_p_one_sided(6, 0.1)
    rows = ([{"alpha": 0.0, "T": 1.0, "seed": s, "value": 70.0 + s} for s in range(6)]
            + [{"alpha": 0.1, "T": 1.0, "seed": s, "value": 70.0 + s + d[s]} for s in range(6)])
    v = findings.verdict(findings.analyze(rows))
    assert v["confidence"] == "suggestive" and v["leaning"] == [0.1, 1.0]
    # suggestive = the 80 % interval excludes 0 = it alone survives at the 20 % level
    assert "it alone survives at the 20 % level" in v["sentence"]


def values_with_p_one_sided(n, p):
    z = np.arange(n, dtype=float) - (n - 1) / 2
    z = z / z.std(ddof=1)
    return z + sps.t.isf(p, n - 1) / math.sqrt(n)


# -------------------------------------------------------------------- the diffusion flag's pairing ---
def test_the_diffusion_flag_counts_the_runs_that_show_it():
    s1 = np.array([-1.0, -2.0, -3.0, 0.5, 1.0])
    s2 = np.array([1.0, 2.0, 3.0, -0.5, 0.2])   # runs 0-2: S1 closer and S2 farther; 3: neither; 4: S1 farther
    plain_s1 = np.array([-0.1, -0.3, -0.2, -0.2, -0.2])
    eta = _eta_rows(0.1, s1, s2) + _eta_rows(0.0, plain_s1, -plain_s1)
    flag = findings.verdict(findings.analyze(_paper_grid(), eta))["flags"]["ls_diffusion_high_T"]
    assert flag["share_diffusion"] == pytest.approx(3 / 5)
    assert "; 60 % of 5 student runs show it" in flag["text"]
    assert f"eta_S2 {s2.mean():+.2f} %" in flag["text"]
    assert f"plain teacher's students for comparison: eta_S1 {plain_s1.mean():+.2f} %" in flag["text"]
    assert "T = 1 -> 64" in flag["text"]
    assert flag["evidence"]["estimate"] == pytest.approx(s1.mean())
    # eta is in percent, after its estimate; the remarks close the sentence
    assert f" — {s1.mean():+.2f} %, 95 % interval " in flag["text"]
    assert flag["text"].endswith(f"plain teacher's students for comparison: eta_S1 {plain_s1.mean():+.2f} %.")


def test_the_diffusion_flag_reads_the_grids_lowest_to_highest_T_pair():
    """eta rows for other T pairs (here 0.5 -> 64 and 1 -> 4, pointing the other way) are not the finding."""
    neg, pos = -3 - 0.1 * np.arange(5), 3 + 0.1 * np.arange(5)
    eta = (_eta_rows(0.1, pos, neg, t1=0.5) + _eta_rows(0.1, pos, neg, t2=4.0) + _eta_rows(0.1, neg, pos)
           + _eta_rows(0.1, pos, neg, t1=2.0) + _eta_rows(0.1, pos, neg, t2=128.0))
    flag = findings.verdict(findings.analyze(_paper_grid(), eta))["flags"]["ls_diffusion_high_T"]
    assert flag["level"] == st.CLEAR and "T = 1 -> 64" in flag["text"]
    assert flag["evidence"]["estimate"] == pytest.approx(neg.mean())


@pytest.mark.parametrize("plain_pair", [None, (2.0, 64.0), (1.0, 128.0), (0.5, 64.0), (1.0, 4.0)])
def test_the_plain_comparison_is_the_same_t_pair_or_none(plain_pair):
    """The plain teacher's eta is quoted only for the LS flag's own T pair, never another pair's, nor
    the LS teacher's own eta passed off as the plain one."""
    ls = _eta_rows(0.1, -3 - 0.1 * np.arange(5), 3 + 0.1 * np.arange(5))
    eta = ls + ([] if plain_pair is None else _eta_rows(0.0, 5 + np.zeros(5), -5 + np.zeros(5), *plain_pair))
    flag = findings.verdict(findings.analyze(_paper_grid(), eta))["flags"]["ls_diffusion_high_T"]
    assert flag["level"] == st.CLEAR
    assert "plain teacher's students for comparison" not in flag["text"]


def test_the_plain_comparison_is_the_baseline_alpha_not_a_lower_one():
    rows = _paper_grid() + [dict(r, alpha=0.05) for r in _paper_grid(seed=7) if r["alpha"] == 0.0]
    eta = (_eta_rows(0.1, -3 - 0.1 * np.arange(5), 3 + 0.1 * np.arange(5))
           + _eta_rows(0.0, 5 + np.zeros(5), -5 + np.zeros(5))
           + _eta_rows(0.05, -0.25 + np.zeros(5), np.zeros(5)))
    an = findings.analyze(rows, eta, baseline_alpha=0.05)
    assert (an["alpha_ls"], an["alpha_plain"]) == (0.1, 0.05)
    text = findings.verdict(an)["flags"]["ls_diffusion_high_T"]["text"]
    assert "plain teacher's students for comparison: eta_S1 -0.25 %" in text


def test_the_teacher_units_note_counts_the_teachers():
    rows = _paper_grid(seeds=6)
    three = [dict(r, teacher_seed=r["seed"] % 3) for r in rows]
    v = findings.verdict(findings.analyze(three))
    assert v["teacher_units_note"].startswith("Teacher variance is sampled: 3 teachers per alpha,")
    mixed = [dict(r, teacher_seed=r["seed"] % (2 if r["alpha"] == 0.0 else 3)) for r in rows]
    assert "sampled: 2 to 3 teachers per alpha" in findings.verdict(findings.analyze(mixed))["teacher_units_note"]
    assert findings.verdict(findings.analyze(rows))["teacher_units_note"] is None  # one teacher each


def test_the_diffusion_flag_names_the_eta_scope_it_was_given():
    eta = _eta_rows(0.1, -3 - 0.1 * np.arange(5), 3 + 0.1 * np.arange(5))
    scope = "decoder states of target tokens, mean over token classes"
    an = findings.analyze(_paper_grid(), eta, eta_scope=scope)
    assert f"T = 1 -> 64, {scope}: " in findings.verdict(an)["flags"]["ls_diffusion_high_T"]["text"]
    # an analysis saved before the scope was recorded reads as Fig. 3's default
    an.pop("eta_scope")
    assert "T = 1 -> 64, mean over target classes: " in findings.verdict(an)["flags"]["ls_diffusion_high_T"]["text"]


@pytest.mark.parametrize("pair", [(2.0, 64.0), (1.0, 128.0), (1.0, 4.0), (0.5, 64.0)])
def test_without_eta_for_the_grids_t_range_there_is_no_diffusion_finding(pair):
    eta = _eta_rows(0.1, -3 - 0.1 * np.arange(5), 3 + 0.1 * np.arange(5), *pair)
    flag = findings.verdict(findings.analyze(_paper_grid(), eta))["flags"]["ls_diffusion_high_T"]
    assert flag["level"] == st.NOT_SHOWN and flag["evidence"] is None and "not enough cells" in flag["text"]


def test_a_matched_interval_that_excludes_zero_is_a_no_even_inside_delta():
    """App. H: the LS - matched interval excludes 0 (here 0.2 to 0.8, computed by hand with scipy's t quantile)
    so the students still differ at equal entropy: "no", although the interval also lies within +-1."""
    vals = [0.4, 0.5, 0.6, 0.5]
    est = st.mean_estimate(vals, "teacher", teacher_variance_sampled=True)
    half = sps.t.ppf(0.975, 3) * np.std(vals, ddof=1) / 2
    assert est["ci"] == pytest.approx([0.5 - half, 0.5 + half]) and 0 < 0.5 - half and 0.5 + half < 1
    row = {"ls_alpha": 0.1, "ls_temperature": 64.0, "matched_temperatures": {"0": 60.0}, "vs_matched": est,
           "vs_grid": st.mean_estimate([2.0, 2.5, 2.2, 2.4], "teacher", teacher_variance_sampled=True)}
    assert findings.smoothness_flag(row, delta=1.0)["level"] == "no"
    mirrored = dict(row, vs_matched=st.mean_estimate([-v for v in vals], "teacher", teacher_variance_sampled=True))
    assert findings.smoothness_flag(mirrored, delta=1.0)["level"] == "no"
