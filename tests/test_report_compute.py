"""The report sections' compute steps on their own, against hand-computed numbers (no study, no markdown)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lskd_core.report.accuracy import mark_compatible
from lskd_core.report.cache_savings import cache_totals, outputs_avoided
from lskd_core.report.classwise import classwise_row, target_classes
from lskd_core.report.profile import profile_class
from lskd_core.report.projection import similar_pair_separation
from lskd_core.report.token_eta import class_records


def test_classwise_row_averages_seeds_then_targets_and_skips_nan_train_classes():
    val_seeds = [[10.0, 20.0, 30.0, 40.0], [30.0, 40.0, 50.0, 60.0]]  # per-class val accuracy of two seeds
    train = np.array([50.0, np.nan, 70.0, 80.0])  # class 1 had no train samples
    row = classwise_row(0.1, 3.0, val_seeds, train, targets=[1, 3])
    assert row["n_val_seeds"] == 2
    assert row["val"] == {"1": 30.0, "3": 50.0}  # (20 + 40) / 2, (40 + 60) / 2
    assert row["val_avg"] == 40.0  # (30 + 50) / 2
    assert math.isnan(row["train"]["1"]) and row["train"]["3"] == 80.0
    assert row["train_avg"] == 80.0  # the NaN target is left out of the average
    empty = classwise_row(0.0, 1.0, [], None, targets=[0])
    assert (empty["n_val_seeds"], empty["val"], empty["val_avg"], empty["train_avg"]) == (0, {"0": None}, None, None)


def test_target_classes_appends_the_projection_classes_once():
    assert target_classes({"target_classes": [0, 5], "projection_classes": [0, 6, 7]}, 10) == [0, 5, 6, 7]
    assert target_classes({}, 3) == [0, 1, 2]


def test_outputs_avoided_is_the_readers_rows_minus_the_build():
    # 3 finished students each computing 1200 outputs live; the build computed 1200 once
    assert outputs_avoided(1200, 1200, 3) == 2400
    # translation: one row per token serves 4 epochs, so a student computes 4 x the rows live
    assert outputs_avoided(500, 2000, 2) == 3500
    assert outputs_avoided(1200, 1200, 0) == 0 and outputs_avoided(0, 0, 5) == 0
    assert outputs_avoided(1200, 100, 1) == 0  # never negative


def test_cache_totals_count_only_built_caches_outputs():
    built = {"done": True, "bytes_on_disk": 3 * 2**20, "forwards_avoided": 2400, "build_wall_s": 12.5,
             "students_wall_s": 90.0, "students_done": 3, "rows": 1200}
    pending = {"done": False, "bytes_on_disk": None, "forwards_avoided": 0, "build_wall_s": None,
               "students_wall_s": None, "students_done": 0, "rows": 0}
    tot = cache_totals([built, pending])
    assert tot == {"caches": 2, "built": 1, "bytes_on_disk": 3 * 2**20, "forwards_avoided": 2400,
                   "build_wall_s": 12.5, "students_wall_s": 90.0, "students_done": 3,
                   "teacher_outputs_computed": 1200}


def test_similar_pair_separation_is_distance_over_mean_spread():
    assert similar_pair_separation(3.0, {4: 1.0, 9: 2.0, 1: 50.0}, [4, 9, 1]) == pytest.approx(2.0)
    assert similar_pair_separation(1.0, {0: 0.0, 1: 0.0, 2: 1.0}, [0, 1, 2]) == pytest.approx(1e12)  # floored spread


def test_profile_class_falls_back_to_the_first_projection_class_then_0():
    assert profile_class({"profile_class": 4, "projection_classes": [7, 8, 9]}) == 4
    assert profile_class({"projection_classes": [7, 8, 9]}) == 7
    assert profile_class({}) == 0


def test_class_records_leave_ids_and_counts_none_past_the_meta():
    sets = {0: ([1], [2]), 1: ([0], [2]), 2: ([1], [0])}
    recs = class_records(["a", "b", "c"], [10, 11], [7], sets)
    assert [(r["class"], r["token"], r["token_id"], r["count"]) for r in recs] == [
        (0, "a", 10, 7), (1, "b", 11, None), (2, "c", None, None)]
    assert (recs[2]["s1"], recs[2]["s2"]) == ([1], [0])


def _cell(alpha: float, t: float, scores: list) -> dict:
    mean = sum(scores) / len(scores) if scores else None
    return {"alpha": alpha, "temperature": t, "top1": scores, "top1_mean": mean, "compatible": None}


def test_mark_compatible_compares_with_the_plain_teachers_students_at_the_same_t():
    cells = [_cell(0.0, 1.0, [80.0, 81.0]), _cell(0.1, 1.0, [82.0, 83.0]),
             _cell(0.0, 3.0, [79.0, 80.0]), _cell(0.1, 3.0, [77.0, 78.0]), _cell(0.2, 3.0, [])]
    mark_compatible(cells, 0.0)
    assert [c["compatible"] for c in cells] == [None, True, None, False, None]
    assert cells[1]["vs_alpha0"]["diff"] == pytest.approx(82.5 - 80.5)
    assert "vs_alpha0" not in cells[4]  # no students: nothing to compare
    alone = [_cell(0.1, 1.0, [82.0])]
    mark_compatible(alone, None)  # no alpha = 0 teacher: compatibility is undefined
    assert alone[0]["compatible"] is None
