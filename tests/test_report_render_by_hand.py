"""What five report sections show, from small hand-made inputs: the accuracy grid (Table 2/5) and its
statistics block, calibration, the temperature variants, Table B.5 (feature KD) and eta during
training. Every expected cell, sentence and status is written out here from the numbers put in and
from what the section is documented to show (format specs, the interval rule, the unit), never copied
from the code's output. Written against the mutants of mutation/report_sections.toml that the other
section tests would let through (docs/testing.md): a cell in the wrong precision or column, a row or
note missing or shown when it should not be, a boundary (a tie, an interval touching 0, p = 0.05) read
the wrong way, a seed, teacher or record picked wrongly."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import t_ci

from lskd_core import statistics as st
from lskd_core import study as S
from lskd_core.report.accuracy import (
    _grid_status,
    accuracy_grid,
    grid_markdown,
    grid_table,
    mark_compatible,
    mean_std,
    statistics_markdown,
)
from lskd_core.report.calibration import _compute, _ls_vs_plain, _summary, calibration_markdown, calibration_sentence
from lskd_core.report.eta_training import epoch_etas, eta_training_markdown, eta_training_section
from lskd_core.report.feature_kd import _interval, feature_kd_markdown, feature_kd_section, scope_verdict
from lskd_core.report.variants import (
    _advice,
    _advice_text,
    _arm_vs_grid,
    _units,
    variants_markdown,
    variants_section,
    variants_sentence,
)
from lskd_core.study.tasks import get_task

VISION = get_task("vision")
TRANSLATION = get_task("translation")


def _iv(est, lo=None, hi=None, n=2, **more):
    """An estimate as lskd_core.statistics writes it (no interval when lo is None)."""
    return {"estimate": est, "ci": None if lo is None else [lo, hi], "n": n, "unit": "student seed", **more}


class _View:
    """The parts of StudyView the sections read, over hand-made results and runs (no study directory)."""

    student = staticmethod(S.student_id)

    def __init__(self, alphas, temperatures, seeds, results, runs=None, config=None, task=VISION):
        self.alphas = [float(a) for a in alphas]
        self.temperatures = [float(t) for t in temperatures]
        self.seeds = list(seeds)
        self.results = results
        self.runs = runs if runs is not None else {}
        self.config = config or {}
        self.task = task

    def teacher(self, alpha):
        return S.teacher_id(alpha)

    def score(self, run_id):
        return self.results.get(self.task.metric_run(run_id))


def _done(top1, top5=None):
    out = {"status": "done", "val_acc1": top1}
    if top5 is not None:
        out["val_acc5"] = top5
    return out


# ================================================================ accuracy grid (Table 2 / Table 5)
def test_mean_std_leaves_out_missing_and_non_finite_values():
    nan, inf = float("nan"), float("inf")
    assert mean_std([1.0, None, nan, inf, 3.0]) == (2.0, pytest.approx(math.sqrt(2.0)))  # sample sd of {1, 3}
    assert mean_std([4.0, 6.0, 11.0]) == (7.0, pytest.approx(math.sqrt(13.0)))  # (9 + 1 + 16) / 2
    assert mean_std([5.0]) == (5.0, None)  # one value: no spread
    assert mean_std([None, nan]) == (None, None) and mean_std([]) == (None, None)


def test_a_cell_holds_only_the_seeds_with_a_score_and_each_ones_teacher():
    results = {S.student_id(0.0, 1.0, 0): _done(80.0, 97.0),
               S.student_id(0.0, 1.0, 1): {"status": "done", "val_acc1": None},  # no score recorded
               # seed 2 has not finished; seed 3 recorded no top-5
               S.student_id(0.0, 1.0, 3): _done(84.0)}
    runs = {S.student_id(0.0, 1.0, 3): {"kind": "student", "info": {"teacher_seed": 2}}}
    view = _View([0.0], [1.0], [0, 1, 2, 3], results, runs)
    (cell,) = accuracy_grid(view)["cells"]
    assert cell["seeds"] == [0, 3] and cell["n"] == 2 and cell["top1"] == [80.0, 84.0]
    assert cell["teacher_seeds"] == [0, 2]  # a run without a recorded teacher seed learnt from teacher 0
    assert cell["top1_mean"] == 82.0 and cell["top1_std"] == pytest.approx(math.sqrt(8.0))
    assert (cell["top5_mean"], cell["top5_std"]) == (97.0, None)  # the missing top-5 is left out


def _grid_view(students, teachers):
    """alpha in {0, 0.1}, T = 1, one seed; ``students``/``teachers``: the alphas that finished."""
    results = {S.student_id(a, 1.0, 0): _done(80.0 + a, 99.0) for a in students}
    results.update({S.teacher_id(a): _done(90.0, 99.5) for a in teachers})
    return _View([0.0, 0.1], [1.0], [0], results)


@pytest.mark.parametrize("students,teachers,status", [
    ((0.0, 0.1), (0.0, 0.1), "ok"),  # one seed per cell is a finished cell
    ((0.0,), (0.0, 0.1), "partial"),
    ((), (0.0, 0.1), "missing"),
    ((0.0, 0.1), (0.0,), "partial"),  # every student, but a teacher without its score
])
def test_the_grid_is_ok_only_with_every_cell_and_every_teachers_score(students, teachers, status):
    assert accuracy_grid(_grid_view(students, teachers))["status"] == status


def test_grid_status_by_hand():
    teachers = [{"top1": 90.0}, {"top1": 91.0}]
    assert _grid_status([{"n": 1}, {"n": 3}], teachers, "top1") == "ok"
    assert _grid_status([{"n": 0}, {"n": 3}], teachers, "top1") == "partial"
    assert _grid_status([{"n": 0}, {"n": 0}], teachers, "top1") == "missing"
    assert _grid_status([{"n": 2}, {"n": 2}], [{"top1": 90.0}, {"top1": None}], "top1") == "partial"


def test_the_baseline_is_alpha_0_and_without_it_no_cell_is_marked():
    both = _grid_view((0.0, 0.1), (0.0, 0.1))
    grid = accuracy_grid(both)
    assert grid["baseline_alpha"] == 0.0
    assert [(c["alpha"], c["compatible"]) for c in grid["cells"]] == [(0.0, None), (0.1, True)]  # 80.1 >= 80
    ls_only = _View([0.1, 0.2], [1.0], [0], {S.student_id(a, 1.0, 0): _done(80.0) for a in (0.1, 0.2)})
    grid = accuracy_grid(ls_only)
    assert grid["baseline_alpha"] is None and [c["compatible"] for c in grid["cells"]] == [None, None]


def test_a_tie_with_the_plain_teachers_students_is_compatible():
    # Sec. 5: the LS teacher's student "at least as good as" the alpha = 0 teacher's: equal means count
    cells = [{"alpha": 0.0, "temperature": 2.0, "top1": [80.0, 82.0], "top1_mean": 81.0, "compatible": None},
             {"alpha": 0.1, "temperature": 2.0, "top1": [80.5, 81.5], "top1_mean": 81.0, "compatible": None}]
    mark_compatible(cells, 0.0)
    assert cells[1]["compatible"] is True and cells[1]["vs_alpha0"]["diff"] == 0.0


def _gcell(alpha, t, m1, s1, m5, s5, compatible):
    return {"alpha": alpha, "temperature": t, "top1_mean": m1, "top1_std": s1, "top5_mean": m5, "top5_std": s5,
            "compatible": compatible}


def test_grid_cells_show_a_spread_only_where_there_is_one_and_a_dash_for_no_student():
    grid = {"teachers": [{"alpha": 0.0, "top1": 90.0, "top5": 99.5}, {"alpha": 0.1, "top1": 89.0, "top5": None}],
            "cells": [_gcell(0.0, 3.0, None, None, None, None, None),
                      _gcell(0.1, 3.0, 79.0, 1.0, None, None, False),
                      _gcell(0.0, 1.0, 80.0, None, 99.0, None, None),
                      _gcell(0.1, 1.0, 81.25, 0.5, 98.5, 0.25, True)]}
    assert grid_table(grid, VISION).split("\n") == [
        "|  | T \\ alpha | alpha = 0 | alpha = 0.1 |",
        "|---|---|---|---|",
        "| teacher | — | 90.00 / 99.50 | 89.00 / — |",
        "| student | T = 1 | 80.00 / 99.00 | **81.25 ± 0.50 / 98.50 ± 0.25** |",
        "| student | T = 3 | — | 79.00 ± 1.00 / — |"]


def test_the_bleu_grid_shows_bleu_and_chrf_of_each_cell():
    results = {"bleu_" + S.student_id(0.0, 1.0, s): {"status": "done", "bleu": b, "chrf": c}
               for s, (b, c) in enumerate([(15.0, 50.0), (16.0, 51.0)])}
    results["bleu_" + S.teacher_id(0.0)] = {"status": "done", "bleu": 20.0, "chrf": 55.25}
    grid = accuracy_grid(_View([0.0], [1.0], [0, 1], results, task=TRANSLATION))
    assert grid["status"] == "ok" and grid["metric"] == "bleu"
    sd = math.sqrt(0.5)  # sample sd of {15, 16} and of {50, 51}
    assert grid_table(grid, TRANSLATION).split("\n")[2:] == [
        "| teacher | — | 20.00 / 55.25 |", f"| student | T = 1 | 15.50 ± {sd:.2f} / 50.50 ± {sd:.2f} |"]


def _analysis(sampled):
    return {"status": "ok", "alphas": [0.0, 0.1], "temperatures": [1.0],
            "cells": [{"alpha": a, "temperature": 1.0, "interval": _iv(80.0, 79.0, 81.0)} for a in (0.0, 0.1)],
            "trends": [], "interaction": None, "best": {"set": [[0.1, 1.0]], "method": "Holm"},
            "teacher_variance": {"sampled": sampled, "teachers_per_alpha": {"0": 1, "0.1": 1 if not sampled else 3}}}


def test_the_statistics_block_names_the_unit_and_the_unsampled_teacher_variance():
    md = "".join(statistics_markdown(_analysis(False), VISION))
    assert md.startswith("### Intervals, trends over T and the alpha x T interaction\n")
    assert "Mean [95 % interval] of the top-1 (%) over the units" in md
    assert ("> Teacher variance is not sampled (teachers per alpha: 0: 1, 0.1: 1): the intervals cover student "
            "seeds only.\n") in md
    assert "Teacher variance is not sampled" not in "".join(statistics_markdown(_analysis(True), VISION))
    unitless = SimpleNamespace(score_unit="")
    assert "Mean [95 % interval] of the points over the units" in "".join(statistics_markdown(_analysis(True),
                                                                                              unitless))


def test_no_statistics_block_without_a_finished_analysis():
    assert statistics_markdown(None, VISION) == []
    assert statistics_markdown(dict(_analysis(False), status="partial"), VISION) == []


def test_the_accuracy_figure_is_linked_only_when_it_was_drawn():
    grid = {"status": "ok", "teachers": [], "cells": [_gcell(0.0, 1.0, 80.0, None, 99.0, None, None)]}
    with_fig = grid_markdown({"accuracy_grid": grid, "figures": {"accuracy": "accuracy.png"}}, VISION)
    assert "![student accuracy vs T](accuracy.png)\n" in with_fig
    assert with_fig[0] == VISION.grid_title
    without = grid_markdown({"accuracy_grid": grid, "figures": {}}, VISION)
    assert not any(line.startswith("![") for line in without)


# ======================================================================================= calibration
def _records(eces_by_teacher):
    """Calibration records of one cell: every metric set to the record's ECE (so one number tells them apart)."""
    return [{"teacher_seed": ts, "seed": i, **{m: e for m in ("ece", "ece_equal_width", "nll", "brier", "aurc",
                                                               "logit_std")}}
            for i, (ts, e) in enumerate((ts, e) for ts, es in eces_by_teacher.items() for e in es)]


def test_calibration_averages_each_teachers_students_before_the_interval_over_teachers():
    two = _summary(_records({0: [0.1, 0.3], 1: [0.5]}))["ece"]
    assert two["unit"] == "teacher" and two["n"] == 2 and two["teacher_variance_sampled"] is True
    assert two["estimate"] == pytest.approx(0.35)  # mean of the teacher means 0.2 and 0.5, not of the 3 runs
    assert two["ci"] == pytest.approx(list(t_ci([0.2, 0.5])))
    one = _summary(_records({0: [0.1, 0.3, 0.5]}))["nll"]
    assert one["unit"] == "student seed" and one["n"] == 3 and one["estimate"] == pytest.approx(0.3)
    assert one["teacher_variance_sampled"] is False


def _export(conf, n=30):
    """A 2-class val export whose every sample is predicted right (class 1) with confidence ``conf``:
    ECE = 1 - conf in every bin, whichever the binning."""
    z = math.log(conf / (1.0 - conf))
    return SimpleNamespace(features=np.full((n, 1), z), weight=np.array([[0.0], [1.0]]), bias=np.zeros(2),
                           labels=np.ones(n, dtype=np.int64))


def test_a_missing_student_export_is_listed_and_the_cells_other_seeds_still_count():
    exports = {S.teacher_id(0.0): _export(0.9),  # the alpha = 0.1 teacher has no val export yet
               S.student_id(0.0, 1.0, 1): _export(0.7),  # seed 0 of this cell has no val export yet
               S.student_id(0.1, 1.0, 0): _export(0.6), S.student_id(0.1, 1.0, 1): _export(0.65)}
    runs = {S.teacher_id(0.1): {"kind": "teacher", "info": {"alpha": 0.1, "teacher_seed": 0}},
            S.teacher_id(0.0): {"kind": "teacher", "info": {"alpha": 0.0, "teacher_seed": 0}}}
    runs.update({S.student_id(a, 1.0, s): {"kind": "student", "info": {"teacher_seed": 0}}
                 for a in (0.0, 0.1) for s in (0, 1)})
    view = SimpleNamespace(alphas=[0.0, 0.1], temperatures=[1.0], seeds=[0, 1], config={}, runs=runs,
                           features=lambda rid, split: exports.get(rid) if split == "val" else None)
    sec = _compute(view)
    assert sec["status"] == "partial" and sec["missing_inputs"] == [
        S.export_id(S.teacher_id(0.1), "val"), S.export_id(S.student_id(0.0, 1.0, 0), "val")]
    assert [(t["alpha"], [r["run"] for r in t["runs"]]) for t in sec["teachers"]] == [(0.0, [S.teacher_id(0.0)])]
    assert sec["teachers"][0]["summary"]["ece"]["estimate"] == pytest.approx(0.1)
    cells = {(c["alpha"], c["temperature"]): c for c in sec["students"]}
    assert [r["seed"] for r in cells[(0.0, 1.0)]["runs"]] == [1]
    assert cells[(0.0, 1.0)]["summary"]["ece"]["estimate"] == pytest.approx(0.3)
    assert cells[(0.1, 1.0)]["summary"]["ece"]["estimate"] == pytest.approx(0.375)  # (0.4 + 0.35) / 2
    # LS - plain in percent: 37.5 - 30 = 7.5; the cells hold other seeds, so unpaired, and one unit: no interval
    (row,) = sec["ls_vs_plain"]
    assert row["difference"]["estimate"] == pytest.approx(7.5) and row["difference"]["ci"] is None


def _cal_cell(arm, alpha, t, eces):
    return {"arm": arm, "alpha": alpha, "temperature": t,
            "runs": [{"seed": s, "teacher_seed": 0, "ece": e} for s, e in enumerate(eces)]}


def test_ls_minus_plain_ece_is_per_t_in_percent_paired_by_seed_and_only_where_both_cells_exist():
    students = [_cal_cell("standard", 0.0, 1.0, [0.10, 0.11, 0.12]),
                _cal_cell("standard", 0.1, 1.0, [0.30, 0.32, 0.31]),
                _cal_cell("teacher_only_T", 0.1, 1.0, [0.05, 0.05, 0.05]),  # another arm: not the grid's
                _cal_cell("standard", 0.0, 3.0, [0.2, 0.2, 0.2])]  # no LS cell at T = 3
    view = SimpleNamespace(alphas=[0.0, 0.1], temperatures=[1.0, 3.0], config={})
    (row,) = _ls_vs_plain(view, students)
    assert (row["temperature"], row["alpha_ls"]) == (1.0, 0.1)
    d = row["difference"]
    assert d["estimate"] == pytest.approx(20.0) and d["n"] == 3  # per seed 20, 21, 19 points of ECE
    assert d["ci"] == pytest.approx(list(t_ci([20.0, 21.0, 19.0])))
    assert row["level"] == "clear"  # the LS teacher's students are worse calibrated: the direction tested
    assert _ls_vs_plain(SimpleNamespace(alphas=[0.0], temperatures=[1.0], config={}), students[:1]) == []
    assert _ls_vs_plain(SimpleNamespace(alphas=[0.1, 0.2], temperatures=[1.0], config={}), students) == []


def _lvp(t, ci, alpha_ls=0.1):
    est = None if ci is None else sum(ci) / 2
    return {"temperature": t, "alpha_ls": alpha_ls, "difference": {"estimate": est or 0.0, "ci": ci}}


def test_the_calibration_sentence_groups_the_temperatures_and_an_interval_touching_zero_is_not_a_claim():
    sec = {"status": "partial", "ls_vs_plain": [_lvp(1.0, [0.1, 0.9]), _lvp(2.0, [0.0, 0.8]), _lvp(4.0, [-0.8, 0.0]),
                                                _lvp(8.0, [0.2, 0.4]), _lvp(16.0, [-0.9, -0.1]), _lvp(32.0, None)]}
    assert calibration_sentence(sec) == (
        "Calibration: the ECE (15 equal-mass bins) of the alpha = 0.1 teacher's students minus the alpha = 0 "
        "teacher's is higher (worse calibrated) at T = 1, 8; lower (better calibrated) at T = 16; not "
        "distinguishable from zero at T = 2, 4, 32 (95 % intervals of the paired difference over seeds; a "
        "single-seed cell has no interval and counts as not distinguishable).")


def test_no_calibration_sentence_without_a_usable_section():
    row = [_lvp(1.0, [0.1, 0.9])]
    assert calibration_sentence(None) is None
    assert calibration_sentence({"status": "missing", "ls_vs_plain": row}) is None
    assert calibration_sentence({"status": "ok", "ls_vs_plain": []}) is None
    assert calibration_sentence({"status": "ok", "ls_vs_plain": row}).startswith("Calibration: ")


def _cal_summary(ece):
    return {"ece": _iv(ece, ece - 0.01, ece + 0.01), "ece_equal_width": _iv(0.07, 0.06, 0.08),
            "nll": _iv(0.25, 0.2, 0.3), "brier": _iv(0.125, 0.1, 0.15), "aurc": _iv(0.01, 0.005, 0.015),
            "logit_std": _iv(2.5, 2.0, 3.0)}


def test_each_arms_student_table_lists_that_arms_cells_only():
    sec = {"status": "ok", "teachers": [], "arms": ["standard", "teacher_only_T"],
           "students": [{"arm": "standard", "alpha": 0.1, "temperature": 3.0, "runs": [{}, {}],
                         "summary": _cal_summary(0.05)},
                        {"arm": "teacher_only_T", "alpha": 0.0, "temperature": 1.0, "runs": [{}],
                         "summary": _cal_summary(0.25)}]}
    md = calibration_markdown({"calibration": sec})
    std, ttm = md.index("Students, variant `standard`:\n"), md.index("Students, variant `teacher_only_T`:\n")
    rest = "| 7.00 [6.00, 8.00] | 0.250 [0.200, 0.300] | 0.125 [0.100, 0.150] | 1.00 [0.50, 1.50] | 2.500 [2.000, 3.000] |"
    assert md[std + 1].split("\n")[2:] == ["| alpha = 0.1 | 3 | 2 | 5.00 [4.00, 6.00] " + rest, ""]
    assert md[ttm + 1].split("\n")[2:] == ["| alpha = 0 | 1 | 1 | 25.00 [24.00, 26.00] " + rest, ""]
    assert md[std + 1].split("\n")[0].startswith("| teacher | T | n | ECE, 15 equal-mass bins (%) |")


def test_the_ls_minus_plain_ece_table_is_signed_with_two_decimals():
    diff = {"estimate": 0.5, "ci": [-0.2, 1.2], "n": 3, "method": "paired t over units"}
    sec = {"status": "ok", "teachers": [], "arms": [], "students": [],
           "ls_vs_plain": [{"temperature": 3.0, "alpha_ls": 0.2, "difference": diff}]}
    md = calibration_markdown({"calibration": sec})
    head = md.index("ECE (equal-mass, %) of the alpha = 0.2 teacher's students minus the alpha = 0 teacher's, per T:\n")
    assert md[head + 1].split("\n")[2:] == ["| 3 | +0.50 [-0.20, +1.20] | 3 | paired t over units |", ""]


def test_the_calibration_section_says_why_it_is_missing_or_partial():
    assert calibration_markdown({})[-1] == "> Not available.\n"
    missing = {"status": "missing", "reason": "no val feature exports (set analysis = true)"}
    assert calibration_markdown({"calibration": missing})[-1] == (
        "\n> Not available: no val feature exports (set analysis = true).\n")
    partial = {"status": "partial", "teachers": [], "arms": [], "students": [],
               "missing_inputs": [S.export_id(S.teacher_id(0.0), "val")]}
    assert calibration_markdown({"calibration": partial})[-1] == "\n> Partial: inputs missing (export_teacher_a0_val).\n"
    assert calibration_markdown({"calibration": dict(partial, status="ok")})[-1] == ""


# =================================================================================== variant arms
def test_one_run_is_one_student_seed():
    one = st.as_observations([{"alpha": 0.0, "temperature": 1.0, "seed": 0, "teacher_seed": 0, "value": 80.0}])
    assert _units(one) == "1 student seed"


def _vrows(cells, seeds=(0, 1), base=80.0):
    return [{"alpha": a, "temperature": t, "seed": s, "teacher_seed": 0, "value": base + 20 * a + t + s}
            for a, t in cells for s in seeds]


def test_the_advice_is_not_testable_without_alpha_0_an_ls_alpha_or_the_ls_cell_at_the_lowest_t():
    rows = _vrows([(0.0, 1.0), (0.1, 1.0), (0.0, 3.0), (0.1, 3.0)])
    full = SimpleNamespace(alphas=[0.0, 0.1], temperatures=[1.0, 3.0])
    assert _advice(full, rows)["cell"] == [0.1, 1.0]
    assert _advice(full, []) is None
    assert _advice(SimpleNamespace(alphas=[0.0], temperatures=[1.0, 3.0]), _vrows([(0.0, 1.0)])) is None
    assert _advice(SimpleNamespace(alphas=[0.1, 0.2], temperatures=[1.0]), _vrows([(0.1, 1.0), (0.2, 1.0)])) is None
    no_ls_low = [r for r in rows if (r["alpha"], r["temperature"]) != (0.1, 1.0)]
    assert _advice(full, no_ls_low) is None


def test_each_arm_cell_is_compared_with_the_grid_cell_of_the_same_seeds_and_unmatched_cells_are_left_out():
    view = SimpleNamespace(alphas=[0.0, 0.1], temperatures=[1.0, 3.0])
    grid = _vrows([(0.0, 1.0), (0.1, 1.0), (0.1, 3.0)])  # the grid's (0, 3) has not finished
    # the arm has (0, 3) (no grid cell to compare with) and (0.1, 3), not (0, 1) nor (0.1, 1)
    arm = [dict(r, value=r["value"] + 3.0) for r in _vrows([(0.0, 3.0), (0.1, 3.0)])]
    cells = _arm_vs_grid(view, arm, grid)
    assert [(c["alpha"], c["temperature"]) for c in cells] == [(0.1, 3.0)]
    (c,) = cells
    assert c["difference"]["estimate"] == pytest.approx(3.0) and c["difference"]["n"] == 2
    # grid at (0.1, 3): 80 + 2 + 3 + seed = 85, 86; the arm 3 more
    assert c["arm"]["estimate"] == pytest.approx(88.5) and c["grid"]["estimate"] == pytest.approx(85.5)
    assert c["units"] == "2 student seeds"


def _variant_view(grid_done, arm_done):
    """alpha in {0, 0.1}, T = 1, seeds {0, 1}, one teacher_only_T arm; ``*_done``: (alpha, seed) finished."""
    runs, results = {}, {}
    for a in (0.0, 0.1):
        for s in (0, 1):
            g, v = S.student_id(a, 1.0, s), S.variant_student_id(a, 1.0, s, "teacher_only_T")
            runs[g] = {"kind": "student", "info": {"alpha": a, "temperature": 1.0, "seed": s}}
            runs[v] = {"kind": "student", "info": {"alpha": a, "temperature": 1.0, "seed": s, "arm": "teacher_only_T"}}
            if (a, s) in grid_done:
                results[g] = _done(80.0 + s + 2 * (a > 0))
            if (a, s) in arm_done:
                results[v] = _done(81.0 + s + 3 * (a > 0))
    runs[S.teacher_id(0.0)] = {"kind": "teacher", "info": {"alpha": 0.0}}
    return _View([0.0, 0.1], [1.0], [0, 1], results, runs, config={"variant_arms": ["teacher_only_T"]})


ALL = {(a, s) for a in (0.0, 0.1) for s in (0, 1)}


@pytest.mark.parametrize("grid_done,arm_done,status", [
    (ALL, ALL, "ok"),
    (ALL, ALL - {(0.1, 1)}, "partial"),
    (ALL - {(0.0, 0)}, ALL, "partial"),
    (ALL, set(), "missing"),
])
def test_the_variants_section_is_ok_only_when_grid_and_arms_finished(grid_done, arm_done, status):
    sec = variants_section(_variant_view(grid_done, arm_done))
    assert sec["status"] == status
    assert ("reason" in sec) == (status == "missing")
    assert sec["arms"][0]["runs"] == len(arm_done)


def test_advice_wording_by_hand():
    beaten = {"cell": [0.1, 1.0], "holds": False, "cells": 4, "decided": True, "best_set": [[0.0, 1.0]],
              "units": "3 teachers"}
    assert _advice_text(beaten, "top-1 (%)") == (
        "does not hold: (alpha = 0.1, T = 1) is beaten, not among the 1 of 4 cells that cannot be told apart from "
        "the best (95 %, over 3 teachers)")
    # a record without "decided" (written before it existed) reads as decided
    held = {"cell": [0.1, 2.0], "holds": True, "cells": 6, "best_set": [[0.1, 2.0], [0.0, 2.0]],
            "units": "2 student seeds", "ls_minus_plain": {"estimate": 1.5, "ci": [0.5, 2.5]},
            "ls_minus_plain_level": "clear"}
    assert _advice_text(held, "top-1 (%)") == (
        "holds: (alpha = 0.1, T = 2) is among the 2 of 6 cells that cannot be told apart from the best (95 %, over "
        "2 student seeds); LS − plain at the lowest T: +1.50 [+0.50, +2.50] top-1 (%) (clear)")


def _vcell(alpha, t, est, p, ci=True, units=None):
    out = {"alpha": alpha, "temperature": t,
           "difference": {"estimate": est, "p": p, "ci": [est - 1.0, est + 1.0] if ci else None}}
    if units:
        out["units"] = units
    return out


def _sentence(cells, advice=None):
    return variants_sentence({"status": "ok", "arms": [{"arm": "logit_standardization", "cells": cells,
                                                        "advice": advice}]})


def test_the_variants_sentence_claims_a_cell_only_with_an_interval_and_p_below_5_percent():
    head = ("Temperature variants (beyond the paper; arm − grid per (alpha, T) cell, paired by seed, Holm-adjusted "
            "over each arm's cells at the 5 % level): `logit_standardization` − grid: ")
    # no interval (one seed): counts as p = 1 whatever p says
    assert _sentence([_vcell(0.0, 1.0, 2.0, 0.001, ci=False)]) == (
        head + 'not distinguishable from 0 at (0, 1) ("LS teacher + low T" is not testable).')
    # one cell: Holm leaves p = 0.05 as it is, and 0.05 is not below 5 %
    assert "not distinguishable from 0 at (0, 1)" in _sentence([_vcell(0.0, 1.0, 2.0, 0.05)])
    assert "> 0 at (0, 1)" in _sentence([_vcell(0.0, 1.0, 2.0, 0.049)])


def test_the_arm_clause_gives_the_units_of_the_first_cell_that_has_them_and_a_beaten_advice():
    adv = {"cell": [0.1, 1.0], "holds": False, "decided": True, "best_set": [[0.0, 1.0]], "cells": 2}
    got = _sentence([_vcell(0.1, 1.0, 2.0, 0.001), _vcell(0.0, 1.0, -0.5, 0.4, units="3 teachers")], adv)
    assert got.endswith(': `logit_standardization` − grid: > 0 at (0.1, 1); not distinguishable from 0 at (0, 1) '
                        '(over 3 teachers; "LS teacher + low T" does not hold).')
    cells = [_vcell(0.1, 1.0, 2.0, 0.001), _vcell(0.0, 1.0, -0.5, 0.4, units="3 teachers")]
    assert got.replace("does not hold", "is not decided") == _sentence(cells, dict(adv, holds=True, decided=False))
    # a record without "decided" (written before it existed) reads as decided
    old_record = {k: v for k, v in adv.items() if k != "decided"}
    assert got.replace("does not hold", "holds") == _sentence(cells, dict(old_record, holds=True))


def test_the_variants_table_row_by_hand_and_the_notes():
    cell = {"alpha": 0.1, "temperature": 1.0, "arm": _iv(83.5, 82.0, 85.0), "grid": _iv(80.5, 79.0, 82.0),
            "difference": _iv(3.0, 2.0, 4.0), "level": "clear", "units": "2 student seeds"}
    sec = {"status": "partial", "grid_arm": "standard", "grid_advice": None,
           "arms": [{"arm": "teacher_only_T", "runs": 2, "cells": [cell], "advice": None}]}
    md = variants_markdown({"variants": sec}, "top-1 (%)")
    for name in ("grid (`standard`)", "`teacher_only_T`"):
        assert (f'- {name}: "LS teacher + low T" not testable (needs alpha 0, an LS alpha and the lowest T '
                'finished).') in md
    at = md.index("`teacher_only_T` (top-1 (%); mean [95 % interval]):\n")
    assert md[at + 1].split("\n") == [
        "| teacher alpha | T | arm | grid | arm − grid [95 %] | arm better? | over |", "|---|---|---|---|---|---|---|",
        "| 0.1 | 1 | 83.50 [82.00, 85.00] | 80.50 [79.00, 82.00] | +3.00 [+2.00, +4.00] | yes (clear) | 2 student seeds |",
        ""]
    assert md[-1] == "> Partial: some students of the grid or an arm have not finished.\n"
    assert "> Partial" not in "".join(variants_markdown({"variants": dict(sec, status="ok")}, "top-1 (%)"))
    missing = {"status": "missing", "reason": "no variant-arm student has finished", "grid_arm": "standard"}
    assert variants_markdown({"variants": missing}, "BLEU")[-1] == "> Not available: no variant-arm student has finished.\n"


# ====================================================================================== Table B.5
def _group(s1):
    return {"alpha": 0.1, "t1": 1.0, "t2": 3.0,
            "summary": {"eta_s1": _iv(s1, s1 - 1, s1 + 1), "eta_s2": _iv(2.0, 1.0, 3.0), "share_diffusion": 1.0}}


def _fkd_res(over_seeds, with_intervals=(1.0, 3.0)):
    cells = [{"alpha": 0.1, "temperature": t, "n": 2, "top1_mean": 80.0, "top5_mean": 99.0} for t in (1.0, 3.0)]
    analysis = {"cells": [{"alpha": 0.1, "temperature": t, "interval": _iv(80.0, 79.0, 81.0)} for t in with_intervals],
                "trends": []}
    return {"eta": {"status": "ok", "over_seeds": over_seeds}, "accuracy_grid": {"teachers": [], "cells": cells},
            "verdict": {"analysis": analysis}}


FKD_VIEW = SimpleNamespace(config={"feature_kd": "overhaul"}, temperatures=[1.0, 3.0])


def test_table_b5_takes_eta_of_the_hierarchy_sets_train_split_and_eq1_only():
    over = [{"sets": "hierarchy", "split": "val", "variant": "eq1", "groups": [_group(-9.0)]},
            {"sets": "hierarchy", "split": "test", "variant": "eq1", "groups": [_group(-6.0)]},  # sorts before train
            {"sets": "feature", "split": "train", "variant": "eq1", "groups": [_group(-8.0)]},
            {"sets": "hierarchy", "split": "train", "variant": "pairwise", "groups": [_group(-7.0)]},
            {"sets": "hierarchy", "split": "train", "variant": "eq1", "groups": [_group(-5.0)]}]
    cells = {c["temperature"]: c for c in feature_kd_section(FKD_VIEW, _fkd_res(over))["cells"]}
    assert cells[3.0]["eta_s1"]["estimate"] == -5.0


@pytest.mark.parametrize("with_intervals,status", [((1.0, 3.0), "ok"), ((1.0,), "partial")])
def test_table_b5_is_partial_while_a_cell_has_no_interval(with_intervals, status):
    sec = feature_kd_section(FKD_VIEW, _fkd_res([], with_intervals))
    assert sec["status"] == status
    empty = dict(_fkd_res([]), accuracy_grid={"teachers": [], "cells": []})
    assert feature_kd_section(FKD_VIEW, empty)["status"] == "missing"


def _b5_cell(alpha, t, eta_s1=None, eta_s2=None, share=None, eta_from=1.0):
    return {"alpha": alpha, "temperature": t, "top1_mean": 80.0, "top1_interval": _iv(80.0, 79.0, 81.0),
            "top5_mean": 99.0, "n": 2, "eta_s1": eta_s1, "eta_s2": eta_s2, "share_diffusion": share,
            "eta_from": eta_from}


def _b5(cells, **more):
    return {"status": "ok", "method": "overhaul", "weight": None, "eta_status": "ok", "trends": {},
            "teachers": [{"alpha": 0.0, "top1": 90.0, "top5": 99.5}], "cells": cells, "eta_from": 1.0, **more}


def test_the_b5_eta_table_by_hand():
    cells = [_b5_cell(0.0, 1.0), _b5_cell(0.1, 1.0), _b5_cell(0.0, 3.0),
             _b5_cell(0.1, 3.0, _iv(-5.25, -6.5, -4.0), _iv(2.125, 1.0, 3.25), 0.75),
             _b5_cell(0.0, 9.0), _b5_cell(0.1, 9.0, _iv(-1.0), _iv(0.5))]
    md = feature_kd_markdown({"feature_kd": _b5(cells)})
    head = md.index("eta_S1 / eta_S2 (%) from T = 1 to the row's T, mean [95 % interval over seeds] (hierarchy sets, "
                    "train split, Eq. 1); diffusion = eta_S1 < 0 and eta_S2 > 0:\n")
    assert md[head + 1].split("\n") == [
        "| T \\ alpha | alpha = 0 | alpha = 0.1 |", "|---|---|---|",
        "| T = 1 | (reference T) | (reference T) |",  # no teacher row in the eta table
        "| T = 3 | — | -5.250 [-6.500, -4.000] / +2.125 [+1.000, +3.250]; diffusion in 75 % of runs |",
        "| T = 9 | — | -1.000 (no interval) / +0.500 (no interval) |", ""]


def test_b5_accuracy_cells_without_an_interval_or_a_top5():
    cells = [dict(_b5_cell(0.0, 1.0), top1_interval=None, n=1), dict(_b5_cell(0.1, 1.0), top5_mean=None)]
    md = "".join(feature_kd_markdown({"feature_kd": _b5(cells)}))
    assert "| T = 1 | 80.00 / 99.00 (n = 1) | 80.00 [79.00, 81.00] (n = 2) |" in md


def test_b5_names_the_weight_and_says_what_is_not_available():
    md = feature_kd_markdown({"feature_kd": _b5([], weight=0.5)})
    assert ", weight 0.5, added to the KD loss" in md[1]
    assert md[-1] == "> Not available: no student finished yet.\n"
    md = feature_kd_markdown({"feature_kd": _b5([_b5_cell(0.1, 1.0)], eta_status="partial")})
    assert ", the trainer's default weight, added" in md[1]
    assert md[-1] == ("> eta not available (partial): it needs the students' feature exports (analysis = true) and "
                      "at least two temperatures.\n")
    assert not any(line.startswith("eta_S1 / eta_S2") for line in md)


def test_b5_interval_of_a_missing_estimate_is_a_dash():
    assert _interval(None) == "—" and _interval({"estimate": None, "ci": None}) == "—"
    assert _interval({"estimate": 1.0, "ci": [0.5, 1.5]}, 1, True) == "+1.0 [+0.5, +1.5]"


def test_the_b5_eta_table_marks_the_reference_t_of_a_section_built_from_results():
    sec = feature_kd_section(FKD_VIEW, _fkd_res([{"sets": "hierarchy", "split": "train", "variant": "eq1",
                                                  "groups": [_group(-5.0)]}]))
    md = feature_kd_markdown({"feature_kd": sec})
    assert "| T = 1 | (reference T) |" in "".join(md)


def test_a_feature_kd_verdict_says_its_scope_first_and_keeps_its_text():
    v = {"text": "Recommendation: alpha = 0.1, T = 1.", "sentence": "s"}
    out = scope_verdict(v, {"feature_kd": "overhaul"})
    assert out["text"].startswith("**Scope: feature distillation + KD.** The students were trained with Heo et al.")
    assert out["text"].endswith("not for KD alone.\n\nRecommendation: alpha = 0.1, T = 1.")
    assert (out["scope"], out["feature_kd"], out["sentence"]) == ("feature_kd+kd", "overhaul", "s")
    assert v == {"text": "Recommendation: alpha = 0.1, T = 1.", "sentence": "s"}  # the input is not changed


# ============================================================================ eta during training
def _line(epoch, s1, s2, share=None):
    eta = {"eta_s1": s1, "eta_s2": s2}
    if share is not None:
        eta["share"] = share
    return json.dumps({"epoch": epoch, "eta": eta})


def test_epoch_etas_skips_bad_lines_and_incomplete_records_and_the_last_line_of_an_epoch_wins(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join([
        "{not json", _line(0, -1.0, 2.0, 0.5), _line(1, -9.0, None), _line(2, None, 3.0),
        json.dumps({"epoch": "3", "eta": {"eta_s1": 1.0, "eta_s2": 1.0}}), json.dumps({"epoch": 4, "eta": [1, 2]}),
        "[1, 2]", json.dumps({"epoch": 5, "train_loss": 0.3}), _line(0, -3.0, 4.0, 1.0), _line(6, 0.5, -0.5)]))
    assert epoch_etas(path) == {0: {"eta_s1": -3.0, "eta_s2": 4.0, "share": 1.0}, 6: {"eta_s1": 0.5, "eta_s2": -0.5}}
    assert epoch_etas(tmp_path / "absent.jsonl") == {}


def test_eta_training_averages_the_finished_students_logs_per_cell_and_epoch(tmp_path):
    logs = {S.student_id(0.1, 3.0, 0): [_line(0, -1.0, 2.0, 0.5), _line(1, -3.0, 4.0, 1.0)],
            S.student_id(0.1, 3.0, 1): [_line(0, -2.0, 3.0), _line(1, -5.0, 6.0, 0.0)],
            S.student_id(0.1, 9.0, 0): [_line(0, 7.0, 7.0)],  # not finished
            "export_x": [_line(0, 8.0, 8.0)], "odd": [_line(0, 9.0, 9.0)]}
    for rid, lines in logs.items():
        (tmp_path / rid).mkdir()
        (tmp_path / rid / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    runs = {S.student_id(0.1, 3.0, s): {"kind": "student", "info": {"alpha": 0.1, "temperature": 3.0}} for s in (0, 1)}
    runs[S.student_id(0.1, 9.0, 0)] = {"kind": "student", "info": {"alpha": 0.1, "temperature": 9.0}}
    runs[S.student_id(0.0, 3.0, 0)] = {"kind": "student", "info": {"alpha": 0.0, "temperature": 3.0}}  # no log
    runs["export_x"] = {"kind": "export", "info": {"alpha": 0.1, "temperature": 3.0}}  # not a student
    runs["odd"] = {"kind": "student", "info": {"alpha": 0.1}}  # no temperature
    results = {rid: {"status": "done"} for rid in runs if rid != S.student_id(0.1, 9.0, 0)}
    view = SimpleNamespace(runs=runs, results=results, temperatures=[3.0, 1.0, 9.0], run_dir=lambda rid: tmp_path / rid)
    sec = eta_training_section(view, tmp_path)
    assert sec["status"] == "ok" and sec["reference_T"] == 1.0
    assert sec["runs"] == [S.student_id(0.1, 3.0, 0), S.student_id(0.1, 3.0, 1)]
    (curve,) = sec["curves"]
    assert (curve["alpha"], curve["temperature"]) == (0.1, 3.0)
    assert curve["points"] == [{"epoch": 0, "seeds": 2, "eta_s1": -1.5, "eta_s2": 2.5, "share": 0.5},
                               {"epoch": 1, "seeds": 2, "eta_s1": -4.0, "eta_s2": 5.0, "share": 0.5}]
    none = SimpleNamespace(runs={}, results={}, temperatures=[1.0], run_dir=lambda rid: tmp_path / rid)
    assert eta_training_section(none, tmp_path)["status"] == "not-applicable"


def test_the_eta_training_table_shows_the_first_and_the_last_epoch():
    pts = [{"epoch": 0, "seeds": 3, "eta_s1": -0.1234, "eta_s2": 0.5678, "share": None},
           {"epoch": 1, "seeds": 3, "eta_s1": -1.0, "eta_s2": 1.0, "share": 0.2},
           {"epoch": 2, "seeds": 2, "eta_s1": -2.5, "eta_s2": 3.25, "share": 0.4}]
    sec = {"status": "ok", "reference_T": 2.0, "curves": [
        {"alpha": 0.1, "temperature": 8.0, "points": pts},
        {"alpha": 0.0, "temperature": 4.0, "points": [dict(pts[0], share=None)]}]}
    md = eta_training_markdown({"eta_training": sec})
    assert md[0] == "## Diffusion during training\n"
    assert md[1].startswith("eta (Eq. 1, percent) of each T > 2 student against the final T = 2 student of the same")
    assert not any(line.startswith("![") for line in md)  # no figure drawn: no link
    assert md[2].split("\n")[2:] == ["| 0.1 | 8 | 2 | -0.123 / 0.568 | 3 | -2.500 | 3.250 | 0.40 |",
                                     "| 0 | 4 | 3 | -0.123 / 0.568 | 1 | -0.123 | 0.568 | — |"]
    assert "![eta during training](eta_during_training.png)\n" in eta_training_markdown(
        {"eta_training": dict(sec, png="eta_during_training.png")})
    assert eta_training_markdown({"eta_training": {"status": "not-applicable"}}) == []


def test_the_eta_training_figure_plots_epochs_trained_against_eta(monkeypatch, tmp_path):
    from matplotlib.axes import Axes

    from lskd_core.report.eta_training import plot_eta_training

    drawn = []
    real_plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda ax, x, y, *a, **k: drawn.append((list(x), list(y))) or real_plot(ax, x, y, *a, **k))
    curves = [{"alpha": 0.1, "temperature": 3.0, "points": [{"epoch": 0, "eta_s1": -1.0, "eta_s2": 2.0},
                                                            {"epoch": 1, "eta_s1": None, "eta_s2": 3.0},
                                                            {"epoch": 2, "eta_s1": -4.0, "eta_s2": 5.0}]}]
    plot_eta_training(curves, tmp_path / "eta.png")
    # epochs count from 1 on the x axis; an epoch without a value is left out of that panel only
    assert drawn == [([1, 3], [-1.0, -4.0]), ([1, 2, 3], [2.0, 3.0, 5.0])]
    assert (tmp_path / "eta.png").is_file()
