"""The report's numeric sections against hand-built inputs: each test states what a table must show
(the right teacher, the right sets and variant, a note only when it applies), written against the
survivors of mutation/report_sections.toml (docs/testing.md)."""

from __future__ import annotations

import json

import pytest

from lskd_core.report.accuracy import grid_table
from lskd_core.report.cache_savings import cache_savings_markdown, outputs_avoided
from lskd_core.report.seed_stats import cell_interval_table, eta_rows
from lskd_core.report.token_eta import token_eta_markdown
from lskd_core.study.tasks import get_task


def _cell(alpha, t, mean):
    return {"alpha": alpha, "temperature": t, "top1_mean": mean, "top1_std": None, "top5_mean": 99.0,
            "top5_std": None, "compatible": None}


def test_each_alpha_column_shows_its_own_teacher():
    # teachers listed in alpha order with different accuracies: a column must not borrow another's teacher
    grid = {"cells": [_cell(a, 1.0, 80.0) for a in (0.0, 0.1, 0.2)],
            "teachers": [{"alpha": 0.0, "top1": 90.0, "top5": 99.5}, {"alpha": 0.1, "top1": 88.0, "top5": 99.1},
                         {"alpha": 0.2, "top1": 86.0, "top5": 98.7}]}
    teacher_row = grid_table(grid, get_task("vision")).split("\n")[2]
    assert teacher_row == "| teacher | — | 90.00 / 99.50 | 88.00 / 99.10 | 86.00 / 98.70 |"


def _interval(est, lo, hi, n=3):
    return {"estimate": est, "ci": [lo, hi], "n": n, "unit": "seed"}


def test_the_cell_interval_table_reads_the_same_after_a_json_round_trip():
    # results.json is read back by later reports: cells are found by value, not by object identity
    analysis = {"alphas": [0.0, 0.1], "temperatures": [1.0, 4.0],
                "cells": [{"alpha": a, "temperature": t, "interval": _interval(80 + a * 10 + t, 79 + t, 81 + t)}
                          for a in (0.0, 0.1) for t in (1.0, 4.0)]}
    direct = cell_interval_table(analysis)
    assert cell_interval_table(json.loads(json.dumps(analysis))) == direct
    assert "| T = 4 | 84.00 [83.00, 85.00] (n = 3) | 85.00 [83.00, 85.00] (n = 3) |" in direct


def _seed_table(sets, split, value):
    return {"alpha": 0.1, "t1": 1.0, "t2": 4.0, "seed": 0, "sets": sets, "split": split,
            "rows": [{"target": 3, "eta_s1": value, "eta_s2": -value}]}


@pytest.mark.parametrize("sets,split", [("hierarchy", "train"), ("feature", "train"), ("hierarchy", "val")])
def test_eta_rows_are_those_of_the_asked_sets_and_split_only(sets, split):
    eta = {"seed_tables": [_seed_table(s, sp, v) for (s, sp, v) in
                           [("feature", "train", -1.0), ("hierarchy", "train", -2.0), ("hierarchy", "val", -3.0),
                            ("random", "train", -4.0), ("feature", "val", -5.0)]]}
    want = {("feature", "train"): -1.0, ("hierarchy", "train"): -2.0, ("hierarchy", "val"): -3.0}[(sets, split)]
    assert [r["eta_s1"] for r in eta_rows(eta, sets=sets, split=split)] == [want]


def _token_eta(over_seeds):
    return {"status": "ok", "definition": "Eq. 1", "classes": [{"class": 0, "token": "die", "count": 9, "s1": [],
                                                                "s2": [1]}],
            "sentences": 10, "split": "test", "feature_pct": [10.0, 50.0], "reference_model": "teacher_a0",
            "over_seeds": over_seeds}


def _over(variant, s1):
    summary = {"eta_s1": _interval(s1, s1 - 1, s1 + 1), "eta_s2": _interval(-s1, -s1 - 1, -s1 + 1),
               "share_diffusion": 1.0, "runs": 3}
    return {"sets": "feature", "split": "test", "variant": variant,
            "groups": [{"alpha": 0.1, "t1": 1.0, "t2": 64.0, "summary": summary}]}


@pytest.mark.parametrize("order", [("pairwise", "eq1"), ("eq1", "pairwise")])
def test_the_token_eta_table_is_eq1s_whichever_variant_comes_first(order):
    over = [_over(v, -7.0 if v == "eq1" else -2.0) for v in order]
    md = "\n".join(token_eta_markdown({"token_eta": _token_eta(over)}))
    assert "| 0.1 | 1 -> 64 | -7.000 [-8.000, -6.000] | +7.000 [+6.000, +8.000] | 100 % of 3 | 3 seeds |" in md
    assert "-2.000" not in md


def _cache_row():
    return {"run_id": "cache_a0.1", "kind": "topk", "dtype": "float16", "topk": 8, "rows": 1200,
            "bytes_on_disk": 2 ** 20, "bytes_per_row": 64.0, "students_done": 3, "students": 3,
            "forwards_avoided": 2400, "build_wall_s": 1.0, "students_wall_s": 2.0}


@pytest.mark.parametrize("status", ["ok", "error", "missing"])
def test_only_a_partial_cache_section_has_the_partial_note(status):
    md = "\n".join(cache_savings_markdown({"cache_savings": {"status": status, "caches": [_cache_row()],
                                                             "total": {}}}))
    assert "> Partial" not in md
    md = "\n".join(cache_savings_markdown({"cache_savings": {"status": "partial", "caches": [_cache_row()],
                                                             "missing_inputs": ["cache_a0"], "total": {}}}))
    assert "> Partial: caches not built yet (cache_a0)." in md


def test_a_cache_without_rows_avoided_nothing():
    # not built (or its size unknown): the readers' live counts are not savings
    assert outputs_avoided(0, 1200, 3) == 0
    assert outputs_avoided(1200, 1200, 0) == 0
