"""Issue 23: the entropy-matched section's intervals over teachers and the verdict's smoothness
sentence, against differences and t intervals computed here by hand (numpy/scipy), on synthetic
records and on a hand-made study directory with three teachers per alpha."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import finished_run
from scipy import stats

import lskd_core.study as S
from lskd_core import findings
from lskd_core import statistics as st
from lskd_core.report.matched import matched_differences

TEACHERS, SEEDS = (0, 1, 2), range(6)  # seed i -> teacher i mod 3, as the study pairs them


def _recs(alpha, temperature, value):
    return [{"alpha": alpha, "temperature": temperature, "seed": s, "teacher_seed": s % 3,
             "value": float(value(s))} for s in SEEDS]


def _t_interval(values):
    v = np.asarray(values, dtype=float)
    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return v.mean(), v.mean() - half, v.mean() + half


def test_matched_differences_are_over_teachers_and_paired():
    rng = np.random.default_rng(0)
    ls_v, m_v, p_v = rng.normal(80, 1, 6), rng.normal(79, 1, 6), rng.normal(77, 1, 6)
    ls = _recs(0.1, 64.0, lambda s: ls_v[s])
    matched = _recs(0.0, 64.0, lambda s: m_v[s])
    plain = _recs(0.0, 64.0, lambda s: p_v[s])
    got = matched_differences(ls, matched, plain)
    for key, other in (("vs_matched", m_v), ("vs_grid", p_v)):
        # unit = teacher: each teacher's students averaged first, then LS - plain paired by teacher
        per_teacher = [np.mean([ls_v[s] - other[s] for s in SEEDS if s % 3 == k]) for k in TEACHERS]
        mean, lo, hi = _t_interval(per_teacher)
        est = got[key]
        assert est["unit"] == "teacher" and est["n"] == 3 and est["teacher_variance_sampled"]
        assert est["estimate"] == pytest.approx(mean) and est["ci"] == pytest.approx([lo, hi])
    assert matched_differences([], matched, plain) == {"vs_matched": None, "vs_grid": None}
    assert matched_differences(ls, [], plain)["vs_matched"] is None


def _row(vs_matched, vs_grid, t_prime=60.0):
    return {"ls_alpha": 0.1, "ls_temperature": 64.0, "matched_temperatures": {"0": t_prime, "1": t_prime + 1},
            "vs_matched": vs_matched, "vs_grid": vs_grid}


def _est(values):
    return st.mean_estimate(values, "teacher", teacher_variance_sampled=True)


@pytest.mark.parametrize("matched_values, grid_values, level", [
    ([1.9, 2.1, 2.0, 2.2], [2.0, 2.5, 2.2, 2.4], "no"),          # excludes 0: smoothness leaves a gap
    ([-1.9, -2.1, -2.0, -2.2], [2.0, 2.5, 2.2, 2.4], "no"),      # matched plain students even better: differs
    ([0.05, -0.05, 0.1, -0.1], [2.0, 2.5, 2.2, 2.4], "yes"),      # within +-1: equally smooth = as good
    ([3.0, -3.0, 2.0, -1.5], [2.0, 2.5, 2.2, 2.4], "not decided"),  # wide, includes 0
    ([1.9, 2.1, 2.0, 2.2], [0.05, -0.05, 0.1, -0.1], "nothing to explain"),  # no LS effect at high T
])
def test_smoothness_flag_levels_follow_the_intervals(matched_values, grid_values, level):
    vm, vg = _est(matched_values), _est(grid_values)
    got = findings.smoothness_flag(_row(vm, vg), delta=1.0)
    assert got["level"] == level
    lo, hi = vm["ci"]
    # the one sentence names the claim, the temperatures and carries the interval of the matched difference
    text = got["text"]
    assert text.startswith("Smoothness alone explains the high-T result at T = 64:") and text.count("\n") == 0
    assert f"{lo:+.2f} to {hi:+.2f}" in text and "T' = 60, 61" in text
    assert "n = 4 teachers" in text and "student seeds only" not in text


def test_smoothness_flag_without_matched_students_or_teachers():
    got = findings.smoothness_flag(None, delta=1.0)
    assert got["level"] == "not tested" and "matched_temperatures" in got["text"]
    # a matched row whose LS - matched difference could not be estimated (no matched student finished)
    assert findings.smoothness_flag(_row(None, _est([2.0, 2.5, 2.2])), delta=1.0)["level"] == "not tested"
    one = st.mean_estimate([1.9, 2.1, 2.0, 2.2], "student seed", teacher_variance_sampled=False)
    got = findings.smoothness_flag(_row(one, None, t_prime=63.0), delta=1.0)
    assert got["level"] == "no" and "student seeds only" in got["text"]
    assert "within 10 % of T" in got["text"]  # T' = 63, 64 vs T = 64: the matching barely moved T
    far = findings.smoothness_flag(_row(one, None, t_prime=140.0), delta=1.0)  # T' = 140, 141: 2.2x T
    assert "T' = 140, 141" in far["text"] and "within 10 %" not in far["text"]
    edge = findings.smoothness_flag(_row(one, None, t_prime=71.0), delta=1.0)  # 71, 72: 10.9 % and 12.5 % above T
    assert "within 10 %" not in edge["text"]


def test_report_verdict_has_the_smoothness_sentence_and_teacher_units(tmp_path):
    """A hand-made study with 3 teachers per alpha: the verdict's intervals are over teachers and the
    smoothness sentence's interval is the matched table's."""
    from lskd_core.report import write_report

    cfg = S.load_config("demo", overrides={"seeds": 6, "teacher_seeds": 3, "temperatures": [1, 64],
                                           "matched_temperatures": [64], "analysis": False})
    S.write_manifest(tmp_path, cfg, S.build_plan(cfg))

    def done(run_id, **fields):
        return finished_run(tmp_path, run_id, **fields)

    rng = np.random.default_rng(5)
    base = {(a, t): 80.0 - (1.0 if t == 64 else 0.0) + (0.5 if a else 0.0) for a in (0, 0.1) for t in (1, 64)}
    values = {}
    for a in (0, 0.1):
        for k in TEACHERS:
            done(f"teacher_a{a}_ts{k}", val_acc1=85.0 + k, val_acc5=99.0)
        for t in (1, 64):
            for s in SEEDS:
                values[(a, t, s)] = base[(a, t)] + rng.normal(0, 0.3)
                done(f"student_a{a}_T{t}_s{s}", val_acc1=values[(a, t, s)], val_acc5=99.0)
    matched = {s: 79.5 + rng.normal(0, 0.3) for s in SEEDS}
    for s, v in matched.items():
        done(f"matched_a0_for_a0.1_T64_s{s}", val_acc1=v, val_acc5=99.0)
    for k in TEACHERS:
        (done(f"match_ts{k}") / "matched.json").write_text(json.dumps({"pairs": [
            {"key": "a0.1_T64", "matched_temperature": 63.0 + k, "ls_entropy": 2.3, "plain_entropy": 2.3}]}))
    res = json.loads((write_report(tmp_path) / "results.json").read_text())
    (row,) = res["matched"]["rows"]
    # each teacher seed's T' and entropies from its own match run, once
    assert row["matched_temperatures"] == {"0": 63.0, "1": 64.0, "2": 65.0}
    assert row["ls_entropy"] == row["plain_entropy"] == [2.3, 2.3, 2.3]
    per_teacher = [np.mean([values[(0.1, 64, s)] - matched[s] for s in SEEDS if s % 3 == k]) for k in TEACHERS]
    mean, lo, hi = _t_interval(per_teacher)
    assert row["vs_matched"]["estimate"] == pytest.approx(mean) and row["vs_matched"]["ci"] == pytest.approx([lo, hi])
    v = res["verdict"]
    assert v["smoothness"]["evidence"]["ci"] == pytest.approx([lo, hi])
    assert v["teacher_variance_note"] is None and "3 teachers per alpha" in v["teacher_units_note"]
    assert all(f["evidence"]["unit"] == "teacher" for f in v["flags"].values() if f.get("evidence"))
    md = (tmp_path / "report" / "report.md").read_text()
    assert v["smoothness"]["text"] in md and v["teacher_units_note"] in md
    assert f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}] (n = 3 teachers)" in md
