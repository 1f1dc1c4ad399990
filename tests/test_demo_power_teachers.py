"""scripts/demo_power.py, issue 23: the alpha claims' variance over teachers, the entropy-matched
students, CPU from the warm server's exit records, and the choice among designs with >= 3 teachers;
against values computed here by hand."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from scipy import stats

_SPEC = importlib.util.spec_from_file_location(
    "demo_power", Path(__file__).resolve().parent.parent / "scripts" / "demo_power.py")
assert _SPEC and _SPEC.loader
dp = importlib.util.module_from_spec(_SPEC)
sys.modules["demo_power"] = dp
_SPEC.loader.exec_module(dp)


def test_cell_differences_pair_by_teacher_and_seed():
    recs = [dp.Rec(0.1, 64.0, 0, 0, 80.0), dp.Rec(0.0, 64.0, 0, 0, 78.5), dp.Rec(0.1, 64.0, 1, 1, 79.0),
            dp.Rec(0.0, 64.0, 1, 1, 79.5), dp.Rec(0.1, 1.0, 0, 0, 70.0),
            dp.Rec(0.1, 64.0, 2, 0, 81.0)]  # seed 2 has no plain partner
    assert dp.cell_differences(recs, 0.1, 0.0, 64.0) == {(0, 0): pytest.approx(1.5), (1, 1): pytest.approx(-0.5)}
    matched = [dp.Rec(0.0, 64.0, 0, 0, 77.0), dp.Rec(0.0, 64.0, 2, 0, 80.0)]
    assert dp.cell_differences(recs, 0.1, 0.0, 64.0, matched) == {(0, 0): pytest.approx(3.0), (0, 2): pytest.approx(1.0)}


def test_alpha_difference_components_by_hand():
    # 2 teachers x 2 seeds; LS - plain at the high T: teacher 0: 1, 3; teacher 1: 5, 7
    recs = []
    for (k, s), d in {(0, 0): 1.0, (0, 1): 3.0, (1, 2): 5.0, (1, 3): 7.0}.items():
        for t in (1.0, 64.0):
            recs += [dp.Rec(0.1, t, s, k, 80.0 + (d if t == 64.0 else 0.0)), dp.Rec(0.0, t, s, k, 80.0)]
    var = dp.variance_summary([recs], 0.1, 0.0)
    high = var["alpha_difference"]["high"]
    assert high["within_sd"] == pytest.approx(math.sqrt(2.0))  # SS 4 on 2 df
    assert high["teacher_sd"] == pytest.approx(math.sqrt(8.0 - 2.0 / 2))  # var(2, 6) - within^2 / m
    assert var["alpha_difference"]["low"]["teacher_sd"] == 0.0 and "matched" not in var["alpha_difference"]
    # the design's half-width of that claim: t over teachers, unit var tau^2 + within^2 / m
    d = dp.Design(12, 4, (1.0, 64.0), 6000, 10000, 4, 2, 4000, matched=False)
    unit = {k: (1.0, 0.0, 0.0) for k in ("teacher", "cache", "student", "export")}
    row = dp.evaluate_design(d, var, unit, 1.0, 2, 0.0)
    want = stats.t.ppf(0.975, 3) * math.sqrt(7.0 + 2.0 / 3) / 2
    assert row["claim_halfwidths"]["alpha_high"] == pytest.approx(want)
    assert row["widest_claim_halfwidth"] == max(row["claim_halfwidths"].values())


def test_matched_students_are_priced():
    unit = {k: (1.0, 0.0, 0.0) for k in ("teacher", "cache", "student", "export", "match")}
    plain = dp.Design(6, 3, (1.0, 64.0), 6000, 10000, 4, 2, 4000)
    matched = dp.Design(6, 3, (1.0, 64.0), 6000, 10000, 4, 2, 4000, matched=True)
    a, b = dp.design_cpu(plain, unit), dp.design_cpu(matched, unit)
    assert b["student"] - a["student"] == 6 and b["match"] == 3 and b["export"] == a["export"]


def test_choose_teachers_respects_the_minimum_and_the_budget():
    rows = [{"teacher_seeds": 1, "wall_estimate_s": 100, "widest_claim_halfwidth": 0.5, "cpu_total_s": 1},
            {"teacher_seeds": 3, "wall_estimate_s": 500, "widest_claim_halfwidth": 0.6, "cpu_total_s": 1},
            {"teacher_seeds": 4, "wall_estimate_s": 300, "widest_claim_halfwidth": 0.9, "cpu_total_s": 1},
            {"teacher_seeds": 5, "wall_estimate_s": 390, "widest_claim_halfwidth": 0.8, "cpu_total_s": 1}]
    assert dp.choose_teachers(rows, 400, 3)["teacher_seeds"] == 5
    assert dp.choose_teachers(rows, 100, 3) is None


def _study(tmp_path: Path) -> Path:
    study = tmp_path / "pilot"
    runs = {"teacher_a0_ts0": ("teacher", {"alpha": 0.0, "teacher_seed": 0}, 70.0),
            "student_a0.1_T64_s0": ("student", {"alpha": 0.1, "temperature": 64, "seed": 0, "teacher_seed": 0}, 2.0),
            "matched_a0_for_a0.1_T64_s0": ("student", {"alpha": 0.0, "matched_to_alpha": 0.1, "matched_key": "a0.1_T64",
                                                       "matched_to_temperature": 64, "seed": 0, "teacher_seed": 0}, 3.0),
            "export_student_a0.1_T64_s0_val": ("export", {}, 0.5), "match_ts0": ("match", {}, 1.5),
            "cache_teacher_a0_ts0": ("cache", {}, 5.0)}
    for rid, (kind, info, cpu) in runs.items():
        d = study / "runs" / rid
        d.mkdir(parents=True)
        (d / "run_config.json").write_text(json.dumps({"kind": kind, "info": info}))
        (d / "result.json").write_text(json.dumps({"val_acc1": 80.0 + cpu}))
        (d / "stdout.log.exit.json").write_text(json.dumps({"returncode": 0, "cpu_user_s": cpu - 0.25,
                                                            "cpu_system_s": 0.25}))
    failed = study / "runs" / "student_a0_T1_s0"
    failed.mkdir()
    (failed / "stdout.log.exit.json").write_text(json.dumps({"returncode": 1, "cpu_user_s": 99, "cpu_system_s": 0}))
    return study


def test_exit_records_and_matched_students_are_read(tmp_path):
    study = _study(tmp_path)
    cpu = dp.read_exit_cpu(study)
    assert {k: [r[2] for r in v] for k, v in cpu.items()} == {
        "teacher": [70.0], "cache": [5.0], "student": [3.0, 2.0], "export": [0.5], "match": [1.5]}  # failed run left out
    grid = dp.read_students(study)
    assert grid == [dp.Rec(0.1, 64.0, 0, 0, 82.0)]  # the matched student is not a grid cell
    assert dp.read_students(study, matched=(0.1,)) == [dp.Rec(0.0, 64.0, 0, 0, 83.0)]
    assert dp.read_students(study, matched=(0.2,)) == []
