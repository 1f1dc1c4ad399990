"""The report's temperature-variant comparison with several teachers per alpha (the demo's design:
3 teachers, 2 student seeds each, the arms on every seed): cell means, arm − grid differences and
their intervals over teachers against scipy's t computed here, the "LS teacher + low T" wording
(holds / not decided) from hand-built values, and the verdict's sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import synthetic_study, well_formed_report
from scipy import stats

from lskd_core.report import write_report
from lskd_core.report.variants import variants_sentence

ALPHAS, TEMPS, SEEDS, TEACHERS = (0.0, 0.1), (1.0, 3.0), range(6), 3  # seed s distils from teacher s % 3
GRID_NOISE = [0.3, -0.2, 0.5, -0.4, 0.1, 0.0]
ARM_NOISE = [0.2, -0.1, 0.3, 0.1, -0.3, 0.0]
GRID = {(0.0, 1.0): 80.0, (0.0, 3.0): 78.0, (0.1, 1.0): 81.0, (0.1, 3.0): 79.0}
# teacher_only_T: far better at (0.1, 1), far worse at T = 3, about the grid at (0, 1)
TTM = {(0.0, 1.0): 80.0, (0.0, 3.0): 70.0, (0.1, 1.0): 86.0, (0.1, 3.0): 72.0}


def _lstd(cell_index: int, seed: int) -> float:
    """Cell j, seed s: 80 + 3 ((s + j) mod 3 - 1). Teacher k's two students (s = k, k + 3) agree, so
    the teacher means of cell j are 80 + 3 ((k + j) mod 3 - 1), a rotation of {77, 80, 83}: every
    difference between two cells averages 0 over the teachers (or is 0 for each), so no cell can
    be dropped from the could-be-best set."""
    return 80.0 + 3.0 * ((seed + cell_index) % 3 - 1)


def _accs() -> dict:
    accs = {}
    for j, cell in enumerate(GRID):
        for s in SEEDS:
            accs[("student", *cell, s)] = GRID[cell] + GRID_NOISE[s]
            accs[("student", *cell, s, "teacher_only_T")] = TTM[cell] + ARM_NOISE[s]
            accs[("student", *cell, s, "logit_standardization")] = _lstd(j, s)
    return accs


def _t_interval(values):
    v = np.asarray(values, dtype=float)
    se = v.std(ddof=1) / np.sqrt(v.size)
    h = stats.t.ppf(0.975, v.size - 1) * se
    return v.mean(), (v.mean() - h, v.mean() + h)


def _teacher_means(per_seed):
    """Per teacher k, the mean of the values of its students s = k, k + 3."""
    return [np.mean([per_seed[s] for s in SEEDS if s % TEACHERS == k]) for k in range(TEACHERS)]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    study = tmp_path_factory.mktemp("variants")
    synthetic_study(study, _accs(), overrides={
        "seeds": 6, "teacher_seeds": TEACHERS, "matched_temperatures": [], "variant_seeds": 6,
        "variant_arms": ["teacher_only_T", "logit_standardization"]})
    rep = write_report(study)
    return json.loads((rep / "results.json").read_text()), well_formed_report(rep)


def _cells(res, arm):
    sec = next(a for a in res["variants"]["arms"] if a["arm"] == arm)
    return sec, {(c["alpha"], c["temperature"]): c for c in sec["cells"]}


def test_cell_means_and_differences_are_over_teachers(report):
    res, _ = report
    assert res["variants"]["status"] == "ok"
    _, cells = _cells(res, "teacher_only_T")
    for cell, c in cells.items():
        arm = [TTM[cell] + ARM_NOISE[s] for s in SEEDS]
        grid = [GRID[cell] + GRID_NOISE[s] for s in SEEDS]
        arm_mean, arm_ci = _t_interval(_teacher_means(arm))
        grid_mean, grid_ci = _t_interval(_teacher_means(grid))
        d_mean, d_ci = _t_interval(_teacher_means([x - y for x, y in zip(arm, grid)]))
        assert c["arm"]["estimate"] == pytest.approx(arm_mean) and c["arm"]["ci"] == pytest.approx(arm_ci)
        assert c["grid"]["estimate"] == pytest.approx(grid_mean) and c["grid"]["ci"] == pytest.approx(grid_ci)
        assert c["difference"]["ci"] == pytest.approx(d_ci) and c["difference"]["estimate"] == pytest.approx(d_mean)
        # 3 teachers, 2 df: the interval includes the teacher's variance, not 6 seeds' 5 df
        assert c["difference"]["n"] == 3 and c["difference"]["df"] == 2 and c["units"] == "3 teachers"
    # hand values: (0.1, 1) is +5 up to the noise, clearly above; T = 3 clearly below
    assert cells[(0.1, 1.0)]["level"] == "clear" and cells[(0.0, 3.0)]["level"] == "opposite"


def test_advice_holds_when_the_cell_alone_is_best_and_is_not_decided_when_nothing_is_dropped(report):
    res, md = report
    ttm, _ = _cells(res, "teacher_only_T")
    # (0.1, 1) beats every other cell by >= 6 points for every teacher: the set is that cell alone
    assert ttm["advice"]["holds"] and ttm["advice"]["decided"] and ttm["advice"]["best_set"] == [[0.1, 1.0]]
    lstd, _ = _cells(res, "logit_standardization")
    # every pairwise difference of teacher means averages 0: no cell is dropped, nothing is decided
    assert lstd["advice"]["holds"] and not lstd["advice"]["decided"] and len(lstd["advice"]["best_set"]) == 4
    assert ('`teacher_only_T`: "LS teacher + low T" holds: (alpha = 0.1, T = 1) is among the 1 of 4 cells'
            in md)
    assert '`logit_standardization`: "LS teacher + low T" not decided: all 4 cells' in md
    assert "(95 %, over 3 teachers)" in md and "no: worse (clear)" in md


def test_the_advice_gives_ls_minus_plain_at_the_lowest_t_by_hand(report):
    res, md = report
    ttm, _ = _cells(res, "teacher_only_T")
    # both cells of a seed carry the same noise: each teacher's difference is 86 - 80 = 6 (arm), 81 - 80 = 1 (grid)
    d = ttm["advice"]["ls_minus_plain"]
    assert d["estimate"] == pytest.approx(6.0) and d["n"] == TEACHERS
    assert res["variants"]["grid_advice"]["ls_minus_plain"]["estimate"] == pytest.approx(1.0)
    assert "LS − plain at the lowest T: +6.00" in md


def test_the_verdict_says_where_each_arm_differs_with_its_units(report):
    res, _ = report
    text = res["verdict"]["variants"]
    assert text in res["verdict"]["text"]
    ttm = text.split("`teacher_only_T` − grid: ")[1].split(" (over")[0]
    assert ttm == "> 0 at (0.1, 1); < 0 at (0, 3), (0.1, 3); not distinguishable from 0 at (0, 1)"
    assert '(over 3 teachers; "LS teacher + low T" holds)' in text
    assert '"LS teacher + low T" is not decided)' in text


def _cell(alpha, temperature, estimate, p):
    return {"alpha": alpha, "temperature": temperature,
            "difference": {"estimate": estimate, "p": p, "ci": [estimate - 1.0, estimate + 1.0]}}


def test_the_sentence_adjusts_the_cells_of_an_arm_by_holm():
    # p 0.001, 0.04, 0.30, 0.50: Holm multiplies the sorted p by 4, 3, 2, 1 (running max) -> 0.004,
    # 0.12, 0.60, 0.60: only the first cell stays below 0.05, although the second's own 95 % interval
    # excludes 0 (p = 0.04): at T = 1 TTM's loss equals standard KD's, and such a cell is a false alarm
    cells = [_cell(0.0, 64.0, -30.0, 0.001), _cell(0.1, 1.0, -0.7, 0.04), _cell(0.0, 1.0, -0.6, 0.30),
             _cell(0.1, 64.0, 0.5, 0.50)]
    got = variants_sentence({"status": "ok", "arms": [{"arm": "teacher_only_T", "cells": cells, "advice": None}]})
    assert got is not None
    assert "< 0 at (0, 64); not distinguishable from 0 at (0.1, 1), (0, 1), (0.1, 64)" in got
    # with the first cell's p at 0.02 instead: 0.08 adjusted, nothing is claimed
    cells[0] = _cell(0.0, 64.0, -30.0, 0.02)
    got = variants_sentence({"status": "ok", "arms": [{"arm": "teacher_only_T", "cells": cells, "advice": None}]})
    assert got is not None and "< 0" not in got and "> 0" not in got


def test_no_sentence_without_arms_or_results():
    assert variants_sentence(None) is None
    assert variants_sentence({"status": "not-applicable"}) is None
    assert variants_sentence({"status": "missing", "arms": []}) is None
    cells = [{"alpha": 0.1, "temperature": 1.0, "difference": {"estimate": 1.0, "p": None, "ci": None}}]
    got = variants_sentence({"status": "partial", "arms": [{"arm": "teacher_only_T", "cells": cells, "advice": None}]})
    assert got is not None and "not distinguishable from 0 at (0.1, 1)" in got and "Partial" in got
    assert "is not testable" in got
