"""The report's numeric sections against hand-built inputs: each test states what a table must show
(the right teacher, the right sets and variant, a note only when it applies), written against the
survivors of mutation/report_sections.toml (docs/testing.md)."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import (
    TRANSLATION_TOKENS,
    eta_from_cluster_distances,
    eta_reference,
    hand_translation_study,
    mean_entropy_reference,
    synthetic_study,
    token_sets_by_hand,
)

from lskd_core import statistics as st
from lskd_core import study as S
from lskd_core.classsets import FASHION_MNIST_CLASSES
from lskd_core.features_io import load_features, save_features
from lskd_core.jsonio import num
from lskd_core.report import write_report
from lskd_core.report.accuracy import grid_table
from lskd_core.report.cache import AnalysisCache
from lskd_core.report.cache_savings import cache_savings_markdown, cache_savings_section, cache_totals, outputs_avoided
from lskd_core.report.calibration import calibration_markdown, calibration_sentence
from lskd_core.report.entropy import entropy_markdown
from lskd_core.report.eta import _summary_cells
from lskd_core.report.feature_kd import feature_kd_markdown, feature_kd_section
from lskd_core.report.seed_stats import best_set_line, cell_interval_table, eta_over_seeds_md, eta_rows, trend_table
from lskd_core.report.token_entropy import (
    ENTROPY_FILE,
    token_entropy_markdown,
    token_entropy_section,
    token_mean_interval,
)
from lskd_core.report.token_eta import _classes_table, embedding_sets, token_eta_markdown, token_eta_section
from lskd_core.report.variants import _units
from lskd_core.report.view import StudyView
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


def _eta_summary(s1, share, runs):
    """An eta group's summary over units: eta_S1 = s1 [s1 - 1, s1 + 1], eta_S2 its mirror."""
    return {"eta_s1": _interval(s1, s1 - 1, s1 + 1), "eta_s2": _interval(-s1, -s1 - 1, -s1 + 1),
            "share_diffusion": share, "runs": runs}


def _over(variant, s1):
    summary = _eta_summary(s1, 1.0, 3)
    return {"sets": "feature", "split": "test", "variant": variant,
            "groups": [{"alpha": 0.1, "t1": 1.0, "t2": 64.0, "summary": summary}]}


@pytest.mark.parametrize("order", [("pairwise", "eq1"), ("eq1", "pairwise")])
def test_the_token_eta_table_is_eq1s_whichever_variant_comes_first(order):
    over = [_over(v, -7.0 if v == "eq1" else -2.0) for v in order]
    md = "\n".join(token_eta_markdown({"token_eta": _token_eta(over)}))
    assert "| 0.1 | 1 -> 64 | -7.000 [-8.000, -6.000] | +7.000 [+6.000, +8.000] | 100 % of 3 | 3 seeds |" in md
    assert "-2.000" not in md


def _cache_row():
    return {"run_id": "cache_a0.1", "done": True, "kind": "topk", "dtype": "float16", "topk": 8, "rows": 1200,
            "bytes_on_disk": 2 ** 20, "bytes_per_row": 64.0, "students_done": 3, "students": 3,
            "forwards_avoided": 2400, "build_wall_s": 1.0, "students_wall_s": 2.0}


@pytest.mark.parametrize("status", ["ok", "error", "missing"])
def test_only_a_partial_cache_section_has_the_partial_note(status):
    md = "\n".join(cache_savings_markdown({"cache_savings": {"status": status, "caches": [_cache_row()],
                                                             "total": cache_totals([_cache_row()])}}))
    assert "> Partial" not in md
    partial = {"status": "partial", "caches": [_cache_row()], "missing_inputs": ["cache_a0"],
               "total": cache_totals([_cache_row()])}
    md = "\n".join(cache_savings_markdown({"cache_savings": partial}))
    assert "> Partial: caches not built yet (cache_a0)." in md


def test_a_cache_row_by_hand():
    row = dict(_cache_row(), build_wall_s=12.34, students_wall_s=56.78, bytes_per_row=64.4)
    md = "\n".join(cache_savings_markdown({"cache_savings": {"status": "ok", "caches": [row], "total": cache_totals([row])}}))
    assert "| `cache_a0.1` | topk | float16 | 8 | 1,200 | 1.0 | 64 | 3/3 | 2,400 | 12.3 | 56.8 |" in md


def test_a_cache_without_rows_avoided_nothing():
    # not built (or its size unknown): the readers' live counts are not savings
    assert outputs_avoided(0, 1200, 3) == 0
    assert outputs_avoided(1200, 1200, 0) == 0


# ------------------------------------------------------------- a finished study by hand (synthetic) ---
@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    """A synthetic vision study (conftest.synthetic_study: two teachers, T in {1, 3}, two seeds, exports
    with logits, a teacher_only_T arm) and its report: (study, results, report.md)."""
    study = tmp_path_factory.mktemp("sections")
    synthetic_study(study, {}, overrides={"variant_arms": ["teacher_only_T"]})
    rep = write_report(study)
    return study, json.loads((rep / "results.json").read_text()), (rep / "report.md").read_text()


def test_entropy_pairs_match_the_ls_teachers_entropy_on_the_exported_logits(synthetic_report):
    study, res, md = synthetic_report
    ent = res["entropy"]
    assert ent["status"] == "ok"  # every alpha's teacher export has logits
    logits = {a: load_features(study / "runs" / S.export_id(S.teacher_id(a), "train") / "features.npz").logits
              for a in (0.0, 0.1)}
    assert [(p["alpha"], p["temperature"]) for p in ent["pairs"]] == [(0.1, 1.0), (0.1, 3.0)]
    for t in ent["temperatures"]:  # Table H.1: a row per T, a column per teacher
        e0, e1 = (mean_entropy_reference(logits[a], t) for a in (0.0, 0.1))
        assert f"| T = {t:g} | {e0:.3f} | {e1:.3f} |" in md
    for p in ent["pairs"]:
        target = mean_entropy_reference(logits[0.1], p["temperature"])
        assert p["entropy"] == pytest.approx(target, rel=1e-5)
        # the plain teacher at the matched T is as smooth as the LS teacher at T
        assert mean_entropy_reference(logits[0.0], p["matched_temperature"]) == pytest.approx(target, abs=1e-4)
        row = (f"| alpha = 0.1, T = {p['temperature']:g} | {target:.3f} | alpha = 0, "
               f"T = {p['matched_temperature']:.4f} |")
        assert row in md


def test_the_entropy_pairs_table_only_with_pairs_and_a_failed_match_says_why():
    ent = {"status": "ok", "temperatures": [1.0], "max_entropy": 2.3, "table": {"0": {"1": 0.2}, "0.1": {"1": 0.3}}}
    assert "Entropy-matched pairs" not in "\n".join(entropy_markdown({"entropy": dict(ent, pairs=[])}))
    pairs = [{"alpha": 0.1, "temperature": 1.0, "entropy": 0.3, "matched_alpha": 0.0, "matched_temperature": None,
              "note": "beyond the plain teacher's range"}]
    md = "\n".join(entropy_markdown({"entropy": dict(ent, pairs=pairs)}))
    assert "| alpha = 0.1, T = 1 | 0.300 | — (beyond the plain teacher's range) |" in md


def test_the_per_target_eta_table_is_the_ls_teachers(synthetic_report):
    _, _, md = synthetic_report
    assert "Per target class over seeds (hierarchy sets, train split, teacher alpha = 0.1, T 1 -> 3)" in md


def test_a_missing_teacher_export_is_named_in_the_calibration_section(synthetic_report, tmp_path):
    study, _, _ = synthetic_report
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    shutil.rmtree(copy / "report")
    gone = S.export_id(S.teacher_id(0.0), "val")
    shutil.rmtree(copy / "runs" / gone)  # the teacher's val export has not run yet
    cal = json.loads((write_report(copy) / "results.json").read_text())["calibration"]
    assert cal["status"] == "partial" and gone in cal["missing_inputs"]


def test_the_teachers_calibration_is_reported_before_any_student_is_exported(synthetic_report, tmp_path):
    study, res, _ = synthetic_report
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    shutil.rmtree(copy / "report")
    gone = sorted(d.name for d in (copy / "runs").glob("export_student_*_val"))
    assert gone
    for name in gone:  # no student has a val export yet: the teachers' rows do not depend on them
        shutil.rmtree(copy / "runs" / name)
    cal = json.loads((write_report(copy) / "results.json").read_text())["calibration"]
    assert cal["status"] == "partial" and set(gone) <= set(cal["missing_inputs"])
    assert cal["students"] == [] and cal["teachers"] == res["calibration"]["teachers"] != []


def test_calibration_percentages_have_two_decimals_and_scores_three():
    summary = {"ece": _interval(0.02781, 0.025, 0.031), "ece_equal_width": _interval(0.03, 0.02, 0.04),
               "nll": _interval(0.12345, 0.1, 0.15), "brier": _interval(0.0101, 0.009, 0.011),
               "aurc": _interval(0.00456, 0.004, 0.005), "logit_std": _interval(1.9503, 1.9, 2.0)}
    sec = {"status": "ok", "arms": [], "students": [], "teachers": [{"alpha": 0.0, "runs": ["t"], "summary": summary}]}
    md = "\n".join(calibration_markdown({"calibration": sec}))
    assert ("| teacher alpha = 0 | — | 1 | 2.78 [2.50, 3.10] | 3.00 [2.00, 4.00] | 0.123 [0.100, 0.150] | "
            "0.010 [0.009, 0.011] | 0.46 [0.40, 0.50] | 1.950 [1.900, 2.000] |") in md


def _fkd_cell(alpha, t, mean, interval, n):
    return {"alpha": alpha, "temperature": t, "top1_mean": mean, "top1_interval": interval, "top5_mean": 99.0,
            "n": n, "eta_s1": None, "eta_s2": None, "eta_from": 1.0}


def test_table_b5_by_hand():
    sec = {"status": "ok", "method": "overhaul", "weight": None, "eta_status": "missing", "trends": {},
           "teachers": [{"alpha": 0.0, "top1": 90.0, "top5": 99.5}, {"alpha": 0.1, "top1": 89.0, "top5": 99.4}],
           "cells": [_fkd_cell(0.0, 1.0, 80.0, _interval(80.0, 79.0, 81.0), 2),
                     _fkd_cell(0.1, 1.0, 81.0, _interval(81.0, 80.5, 81.5), 2),
                     _fkd_cell(0.0, 3.0, 78.0, {"estimate": 78.0, "ci": None, "n": 1}, 1),
                     _fkd_cell(0.1, 3.0, None, None, 0)]}
    md = "\n".join(feature_kd_markdown({"feature_kd": sec}))
    assert "| teacher | 90.00 / 99.50 | 89.00 / 99.40 |" in md
    assert "| T = 1 | 80.00 [79.00, 81.00] / 99.00 (n = 2) | 81.00 [80.50, 81.50] / 99.00 (n = 2) |" in md
    assert "| T = 3 | 78.00 (no interval) / 99.00 (n = 1) | — |" in md
    assert "Top-1 slope per ln T" not in md  # no trend fitted yet: no line
    sec["trends"] = {"0": _interval(-1.0, -2.0, 0.0), "0.1": _interval(-3.0, -4.0, -2.0), "0.2": None}
    md = "\n".join(feature_kd_markdown({"feature_kd": sec}))
    assert "Top-1 slope per ln T [95 %]: alpha = 0: -1.00 [-2.00, +0.00]; alpha = 0.1: -3.00 [-4.00, -2.00].\n" in md


def _eta_group(alpha, s1, target_s1):
    summary = _eta_summary(s1, 0.5, 2)
    target = {"target": 0, "eta_s1": _interval(target_s1, target_s1 - 1, target_s1 + 1),
              "eta_s2": _interval(1.0, 0.0, 2.0), "share_diffusion": 1.0, "runs": 2}
    return {"alpha": alpha, "t1": 1.0, "t2": 3.0, "summary": summary, "targets": [target]}


def test_the_per_target_table_is_eq1s_whichever_variant_comes_first():
    over = [{"sets": "hierarchy", "split": "train", "variant": v, "groups": [_eta_group(0.1, -1.0, t)]}
            for v, t in (("pairwise", -9.0), ("eq1", -4.0))]
    md = "\n".join(eta_over_seeds_md(over, ["T-shirt/top"], 0.1, 3.0))
    assert "| T-shirt/top | -4.000 [-5.000, -3.000] | +1.000 [+0.000, +2.000] | 100 % of 2 |" in md
    assert "-9.000" not in md.split("Per target class")[1]
    # the summary over seeds has every variant's row, three decimals, the share in percent
    for v in ("pairwise", "eq1"):
        assert (f"| hierarchy | train | {v} | 0.1 | 1 -> 3 | -1.000 [-2.000, +0.000] | +1.000 [+0.000, +2.000] | "
                "50 % of 2 | 3 seeds |") in md


def test_the_per_target_table_is_the_train_splits_whichever_split_comes_first():
    over = [{"sets": "hierarchy", "split": sp, "variant": "eq1", "groups": [_eta_group(0.1, -1.0, t)]}
            for sp, t in (("val", -9.0), ("train", -4.0))]  # "val" sorts after "train"
    md = "\n".join(eta_over_seeds_md(over, ["T-shirt/top"], 0.1, 3.0))
    assert "| T-shirt/top | -4.000 [-5.000, -3.000] | +1.000 [+0.000, +2.000] | 100 % of 2 |" in md
    assert "-9.000" not in md.split("Per target class")[1]


# --------------------------------------------------- a translation study's token eta, by hand ---
def test_token_set_sizes_are_the_configured_counts_as_percentages_of_the_other_classes():
    w = np.random.default_rng(0).normal(size=(6, 4))
    assert embedding_sets(w, 1, 2)["pct"] == pytest.approx([100 * 1 / 5, 100 * 2 / 5])
    # three classes, one similar and two dissimilar: 50 % + 100 % > 100 %, so S1 and S2 split the others
    assert embedding_sets(w[:3], 1, 2)["pct"] == [50.0, 50.0]
    # 20 % + 100 % of the five others > 100 %: S1 keeps its 20 %, S2 gets the remaining 80 %
    assert embedding_sets(w, 1, 5)["pct"] == [20.0, 80.0]
    assert embedding_sets(w, 1, 2, feature_sets=[10.0, 30.0])["pct"] == [10.0, 30.0]


@pytest.mark.parametrize("temperatures", [(1, 4), (1, 4, 16)])
def test_token_eta_is_eq1_on_the_decoder_states_with_sets_from_the_embeddings(tmp_path, temperatures):
    study = hand_translation_study(tmp_path / "st", temperatures)[0]
    eta = token_eta_section(StudyView(study), AnalysisCache(tmp_path / "cache"))
    assert eta["status"] == "ok", eta.get("reason") or eta.get("error")
    ref = load_features(study / "runs" / "export_teacher_a0_test" / "features.npz")
    weight = ref.weight.astype(np.float64)
    assert eta["feature_pct"] == pytest.approx([20.0, 40.0])  # 1 and 2 of the 5 other tokens
    for c in eta["classes"]:
        s1, s2 = token_sets_by_hand(weight, c["class"])
        assert (c["s1"], sorted(c["s2"]), c["token"]) == (s1, s2, TRANSLATION_TOKENS[c["class"]])
    t_hi = float(temperatures[-1])
    tab = next(t for t in eta["seed_tables"] if t["alpha"] == 0.1 and t["seed"] == 1 and t["t2"] == t_hi
               and t["sets"] == "feature")
    before = load_features(study / "runs" / "export_student_a0.1_T1_s1_test" / "features.npz")
    after = load_features(study / "runs" / f"export_student_a0.1_T{num(t_hi)}_s1_test" / "features.npz")
    for row in tab["rows"]:
        s1, s2 = token_sets_by_hand(weight, row["target"])
        want = eta_reference(before.features, before.labels, after.features, after.labels, row["target"], s1, s2)
        assert (row["eta_s1"], row["eta_s2"]) == pytest.approx(want, rel=1e-6)
    # the report's S1 table: one row per class, most frequent first, S1 named by its tokens
    # one table per LS-or-not teacher, seed and later temperature, each against the first temperature
    assert sorted({t["t2"] for t in eta["seed_tables"]}) == [float(t) for t in temperatures[1:]]
    assert {t["t1"] for t in eta["seed_tables"]} == {float(temperatures[0])}
    counts = [c["count"] for c in eta["classes"]]
    assert counts == sorted(counts, reverse=True)
    rows = [f"| `{TRANSLATION_TOKENS[c['class']]}` | {c['count']} | "
            + ", ".join(f"`{TRANSLATION_TOKENS[i]}`" for i in token_sets_by_hand(weight, c["class"])[0])
            + f" | {len(c['s2'])} |" for c in eta["classes"]]
    table = "\n".join(["| token | occurrences | S1 (nearest output embeddings) | size of S2 |", "|---|---|---|---|",
                       *rows])
    assert table + "\n" in "\n".join(token_eta_markdown({"token_eta": eta}))


def test_token_eta_with_one_temperature_says_it_needs_two(tmp_path):
    study = hand_translation_study(tmp_path / "st", (1,))[0]
    eta = token_eta_section(StudyView(study), AnalysisCache(tmp_path / "cache"))
    assert eta["status"] == "missing" and "two temperatures" in eta["reason"]


def test_the_best_set_line_names_each_cells_alpha_and_t():
    line = best_set_line({"best": {"set": [[0.1, 1.0], [0.0, 2.0]], "method": "Holm over one-sided Welch tests"}})
    assert line == ("Cells that cannot be told apart from the best: (alpha = 0.1, T = 1), (alpha = 0, T = 2). "
                    "Procedure: Holm over one-sided Welch tests.")


def test_the_provenance_table_counts_each_kinds_finished_runs(synthetic_report):
    study, _, _ = synthetic_report
    view = StudyView(study)
    counts: dict = {}
    for row in view.provenance_rows():
        counts[row[0]] = counts.get(row[0], 0) + int(row[1])
    by_kind: dict = {}
    for rid in view.results:
        by_kind[view.runs[rid]["kind"]] = by_kind.get(view.runs[rid]["kind"], 0) + 1
    assert counts == by_kind and counts["teacher"] == 2


def test_the_classwise_rows_are_the_grids_cells(synthetic_report):
    _, res, _ = synthetic_report
    cells = {(c["alpha"], c["temperature"]) for c in res["accuracy_grid"]["cells"]}
    assert {(r["alpha"], r["temperature"]) for r in res["classwise"]["rows"]} == cells


def test_calibration_ls_minus_plain_is_the_ls_cells_ece_minus_the_plain_cells(synthetic_report):
    _, res, _ = synthetic_report
    cal = res["calibration"]
    ece = {(c["alpha"], c["temperature"]): c["summary"]["ece"]["estimate"] for c in cal["students"]
           if c["arm"] == "standard"}
    assert [r["temperature"] for r in cal["ls_vs_plain"]] == [1.0, 3.0]
    for r in cal["ls_vs_plain"]:
        t = r["temperature"]
        # the same seeds in both cells: the paired mean difference is the difference of the cell means (%)
        assert r["difference"]["estimate"] == pytest.approx(100 * (ece[(0.1, t)] - ece[(0.0, t)]), rel=1e-9)
        assert r["difference"]["cells"] == [[0.1, t], [0.0, t]]


def test_each_projection_panels_separation_is_its_distance_over_the_pairs_spread(synthetic_report):
    _, res, _ = synthetic_report
    proj = res["projection"]
    a, b = proj["classes"][:2]
    assert proj["status"] == "ok" and proj["panels"]
    for p in proj["panels"]:
        spread = p["spread"]
        assert p["similar_pair_distance"] > 0  # two distinct class centroids
        by_hand = p["similar_pair_distance"] / (0.5 * (spread[str(a)] + spread[str(b)]))
        assert p["similar_pair_separation"] == pytest.approx(by_hand, rel=1e-12)


def test_every_soft_output_panel_of_a_teacher_shows_the_same_similar_classes(synthetic_report):
    _, res, md = synthetic_report
    by_alpha: dict = {}
    for prof in res["soft_output"]["profiles"]:
        sim = tuple(c for c, g in zip(prof["classes"], prof["groups"]) if g == "similar")
        by_alpha.setdefault(prof["alpha"], set()).add(sim)
    assert by_alpha and all(len(s) == 1 and len(next(iter(s))) == 2 for s in by_alpha.values()), by_alpha
    assert (res["soft_output"]["class"], res["soft_output"]["class_name"]) == (6, FASHION_MNIST_CLASSES[6])
    # the table names the true and similar classes with their mean probabilities (three decimals)
    for prof in res["soft_output"]["profiles"]:
        shown = ", ".join(f"{FASHION_MNIST_CLASSES[c]} {p:.3f}"
                          for c, p, g in zip(prof["classes"], prof["probs"], prof["groups"]) if g != "other")
        assert f"| {prof['title']} | {shown} | {prof['negligible_classes']} |" in md


def test_the_eta_summary_puts_each_splits_table_in_its_own_columns(synthetic_report):
    _, res, md = synthetic_report
    eta = res["eta"]

    def cells(sets, a, t2, split):
        (tab,) = [t for t in eta["tables"] if (t["sets"], t["alpha"], t["t2"], t["split"]) == (sets, a, t2, split)]
        k = sum(r["eta_s1"] < 0 < r["eta_s2"] for r in tab["rows"])
        return [f"{tab['mean_eta_s1']:.3f}", f"{tab['mean_eta_s2']:.3f}", f"{k}/{len(tab['rows'])}"]

    keys = {(t["sets"], t["alpha"], t["t2"]) for t in eta["tables"]}
    assert {t["split"] for t in eta["tables"]} == {"train", "val"} and keys
    for sets, a, t2 in keys:
        assert cells(sets, a, t2, "train") != cells(sets, a, t2, "val")  # the splits can be told apart
        row = [sets, num(a), f"{num(eta['t1'])} -> {num(t2)}", *cells(sets, a, t2, "train"), *cells(sets, a, t2, "val")]
        assert "| " + " | ".join(row) + " |" in md


def test_the_classwise_section_of_a_finished_study_is_complete(synthetic_report):
    _, res, _ = synthetic_report
    assert res["classwise"]["status"] == "ok" and all(r["n_val_seeds"] == 2 for r in res["classwise"]["rows"])


@pytest.mark.parametrize("eta,status", [({"status": "error"}, "error"), ({"status": "partial"}, "partial"),
                                        (None, "missing")])
def test_table_b5_says_why_eta_is_missing_in_the_eta_sections_own_words(eta, status):
    view = SimpleNamespace(config={"feature_kd": "overhaul"}, temperatures=[1.0, 3.0])
    sec = feature_kd_section(view, {"eta": eta, "accuracy_grid": {"cells": [], "teachers": []}})
    assert sec["eta_status"] == status


@pytest.mark.parametrize("ci,word", [([-0.8, -0.2], "lower (better calibrated)"),
                                     ([0.1, 0.9], "higher (worse calibrated)"),
                                     ([-0.5, 0.5], "not distinguishable from zero")])
def test_the_calibration_sentence_reads_the_interval_of_each_t(ci, word):
    sec = {"status": "ok", "ls_vs_plain": [{"temperature": 4.0, "alpha_ls": 0.1,
                                            "difference": {"estimate": sum(ci) / 2, "ci": ci}}]}
    sentence = calibration_sentence(sec)
    assert f"is {word} at T = 4 (95 %" in sentence


@pytest.mark.parametrize("status", ["missing", "error", "partial", "ok"])
def test_the_cache_section_is_left_out_only_when_it_does_not_apply(status):
    md = cache_savings_markdown({"cache_savings": {"status": status, "caches": [], "total": cache_totals([])}})
    assert md and md[0].startswith("## Teacher caches")
    assert cache_savings_markdown({"cache_savings": {"status": "not-applicable"}}) == []


def test_the_trend_table_spans_the_lowest_to_the_highest_t():
    est = {"estimate": -1.0, "ci": [-2.0, 0.0], "p": 0.05, "n": 3, "unit": "seed", "method": "t"}
    analysis = {"temperatures": [1.0, 4.0, 64.0], "interaction": None,
                "trends": [{"alpha": 0.1, "slope_per_ln_T": est, "change_over_range": est}]}
    assert "fitted change T = 1 → 64 (points) [95 %]" in trend_table(analysis, "points")


def test_intervals_over_two_teachers_are_said_to_be_over_teachers():
    rows = [{"alpha": a, "temperature": 1.0, "seed": s, "teacher_seed": s % 2, "value": 80.0 + s}
            for a in (0.0, 0.1) for s in range(4)]
    assert _units(st.as_observations(rows)) == "2 teachers"
    one = [dict(r, teacher_seed=0) for r in rows]
    assert _units(st.as_observations(one)) == "4 student seeds"


def test_feature_sets_are_sized_like_the_hierarchy_sets(synthetic_report):
    _, res, _ = synthetic_report
    k, cfg = 10, res["config"]
    assert res["eta"]["sets"]["feature_pct"] == pytest.approx(
        [100 * cfg["num_similar"] / (k - 1), 100 * cfg["num_dissimilar"] / (k - 1)])


def test_each_target_row_of_the_eta_tables_shows_that_targets_own_values(synthetic_report):
    _, res, md = synthetic_report
    names = FASHION_MNIST_CLASSES  # the synthetic study's class names
    tabs = [t for t in res["eta"]["tables"] if t["sets"] == "hierarchy" and t["split"] == "train"]
    assert tabs and md.count("Students of seed 0; features of the train and val splits.") == 1
    for tab in tabs:
        for r in tab["rows"]:
            cells = (f"| {names[r['target']]} | {r['eta_s1']:.3f} ({r['eta_s1_pairwise']:.3f}) | "
                     f"{r['eta_s2']:.3f} ({r['eta_s2_pairwise']:.3f}) |")
            assert cells in md


def test_classwise_train_accuracy_is_the_exported_layers_accuracy(synthetic_report):
    study, res, _ = synthetic_report
    cw = res["classwise"]
    for row in cw["rows"]:
        f = load_features(study / "runs" / S.export_id(S.student_id(row["alpha"], row["temperature"],
                                                                    cw["train_seed"]), "train") / "features.npz")
        pred = (f.features.astype(np.float64) @ f.weight.T.astype(np.float64) + f.bias).argmax(axis=1)
        for c, got in row["train"].items():
            mask = f.labels == int(c)
            assert got == pytest.approx(100.0 * float((pred[mask] == int(c)).mean()))


def test_a_cached_section_is_recomputed_when_an_input_export_is_re_run(synthetic_report, tmp_path):
    study, _, _ = synthetic_report
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    first = json.loads((write_report(copy) / "results.json").read_text())["projection"]
    path = copy / "runs" / S.export_id(S.teacher_id(0.0), "val") / "features.npz"
    f = load_features(path)
    # the export ran again: new features and a new result.json (a run's identity is its result's bytes)
    save_features(path, f.features * 2.0, f.labels, class_names=f.class_names, weight=f.weight, bias=f.bias,
                  logits=f.logits)
    (path.parent / "result.json").write_text(json.dumps({"status": "done", "wall_time_s": 1.5}))
    again = json.loads((write_report(copy) / "results.json").read_text())["projection"]
    assert again["cached"] is False
    assert again["panels"][0]["similar_pair_distance"] != pytest.approx(first["panels"][0]["similar_pair_distance"])


def test_the_cache_summary_by_hand():
    tot = {"built": 1, "caches": 2, "bytes_on_disk": 3 * 2 ** 20, "teacher_outputs_computed": 1200,
           "students_done": 3, "forwards_avoided": 2400, "build_wall_s": 12.34, "students_wall_s": 56.78}
    md = "\n".join(cache_savings_markdown({"cache_savings": {"status": "ok", "caches": [], "total": tot}}))
    assert ("1 of 2 teacher caches built (3.0 MiB on disk) computed 1,200 teacher outputs once, for 3 finished "
            "students: 2,400 teacher outputs") in md
    assert "Wall time: builds 12.3 s, the students reading them 56.8 s." in md


def test_sentences_of_one_per_token_mean_have_no_interval():
    # every sentence has the same mean: nothing to resample, the mean is exact
    out = token_mean_interval(np.array([2.0, 4.0, 6.0]), np.array([1, 2, 3]))
    assert out == {"mean": 2.0, "ci": None, "sentences": 3, "tokens": 6}
    assert token_mean_interval(np.array([2.0]), np.array([4]))["ci"] is None
    spread = token_mean_interval(np.array([2.0, 8.0, 3.0, 9.0]), np.array([2, 2, 2, 2]), n_resamples=200)
    assert spread["ci"][0] < spread["mean"] < spread["ci"][1]


def test_table_b5_says_partial_only_when_partial():
    base = {"method": "overhaul", "weight": None, "eta_status": "missing", "trends": {}, "teachers": [],
            "cells": [_fkd_cell(0.0, 1.0, 80.0, _interval(80.0, 79.0, 81.0), 2)]}
    assert "> Partial" not in "\n".join(feature_kd_markdown({"feature_kd": dict(base, status="ok")}))
    assert "> Partial: some cells" in "\n".join(feature_kd_markdown({"feature_kd": dict(base, status="partial")}))


def test_token_entropy_is_the_token_weighted_mean_with_a_95_percent_cluster_bootstrap(tmp_path):
    study = hand_translation_study(tmp_path / "st", (1, 4))[0]
    ent = token_entropy_section(StudyView(study), AnalysisCache(tmp_path / "cache"))
    assert ent["status"] == "ok" and ent["interval"] == "95 % cluster bootstrap over sentences (BCa, 2000 resamples)"
    for tr in ent["teachers"]:
        raw = json.loads((study / "runs" / f"export_{tr['model_run']}_test" / ENTROPY_FILE).read_text())
        for t in ("1", "4"):
            want = sum(raw["entropy_sum_per_sentence"][f"{t}.0"]) / sum(raw["tokens_per_sentence"])
            assert tr["rows"][t]["mean"] == pytest.approx(want)
            assert tr["rows"][t]["ci"][0] < want < tr["rows"][t]["ci"][1]
    # Table H.1 as the report shows it: one column per teacher, one row per T, three decimals
    md = "\n".join(token_entropy_markdown({"token_entropy": ent}))
    teachers = sorted(ent["teachers"], key=lambda tr: tr["alpha"])
    assert "|  | alpha = 0 | alpha = 0.1 |" in md
    for t in ("1", "4"):
        cells = [f"{r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" for r in (tr["rows"][t] for tr in teachers)]
        assert f"| T = {t} | {cells[0]} | {cells[1]} |" in md
    two = dict(ent, teachers=[dict(tr, teacher_seed=i) for i, tr in enumerate(ent["teachers"])])
    md = "\n".join(token_entropy_markdown({"token_entropy": two}))  # sampled teachers: each column names its seed
    assert "|  | alpha = 0, teacher seed 0 | alpha = 0.1, teacher seed 1 |" in md


def test_table_g1_names_each_targets_hierarchy_and_feature_sets(synthetic_report):
    _, res, md = synthetic_report
    sets = res["eta"]["sets"]
    assert sets and res["entropy"]["max_entropy"] == pytest.approx(np.log(10))  # ln K for K = 10 classes
    for t in res["eta"]["targets"]:
        h, f = sets["hierarchy"][str(t)], sets["feature"][str(t)]
        agree = [len(set(h[i]) & set(f[i])) / len(h[i]) for i in (0, 1)]  # |hierarchy ∩ feature| / |hierarchy|
        row = "| " + " | ".join([FASHION_MNIST_CLASSES[t]] + [", ".join(FASHION_MNIST_CLASSES[c] for c in part)
                                                            for part in (h[0], h[1], f[0], f[1])]
                                + [f"{a:.3f}" for a in agree]) + " |"
        assert row + "\n" in md
    s1, s2 = zip(*([len(set(sets["hierarchy"][str(t)][i]) & set(sets["feature"][str(t)][i]))
                    / len(sets["hierarchy"][str(t)][i]) for i in (0, 1)] for t in res["eta"]["targets"]))
    assert f"| **average** |  |  |  |  | **{np.mean(s1):.3f}** | **{np.mean(s2):.3f}** |" in md
    # the per-target table comes under its own heading, before Table G.1
    head = "Per target class, S1/S2 from the class hierarchy (Table 3; feature-space sets: results.json):\n"
    assert md.index("## 2. Diffusion index") < md.index(head) < md.index("### S1/S2 selection and agreement")


def test_a_vision_students_live_outputs_are_its_epochs_times_the_rows():
    from lskd_core.report.cache_savings import _per_student_rows

    vision = SimpleNamespace(task=SimpleNamespace(cache_rows_per_epoch=False), config={"student_epochs": 3})
    assert _per_student_rows(vision, 100) == 300
    translation = SimpleNamespace(task=SimpleNamespace(cache_rows_per_epoch=True), config={"student_epochs": 3})
    assert _per_student_rows(translation, 100) == 100


def test_table_b5_reads_eta_from_results_read_back_from_json():
    group = {"alpha": 0.1, "t1": 1.0, "t2": 3.0, "summary": {"eta_s1": _interval(-5.0, -6.0, -4.0),
                                                            "eta_s2": _interval(2.0, 1.0, 3.0), "share_diffusion": 1.0}}
    res = {"eta": {"status": "ok", "over_seeds": [{"sets": "hierarchy", "split": "train", "variant": "eq1",
                                                   "groups": [group]}]},
           "accuracy_grid": {"teachers": [], "cells": [
               {"alpha": 0.1, "temperature": t, "n": 2, "top1_mean": 80.0, "top5_mean": 99.0} for t in (1.0, 3.0)]}}
    view = SimpleNamespace(config={"feature_kd": "overhaul"}, temperatures=[1.0, 3.0])
    sec = feature_kd_section(view, json.loads(json.dumps(res)))
    cells = {c["temperature"]: c for c in sec["cells"]}
    assert cells[3.0]["eta_s1"]["estimate"] == -5.0 and cells[3.0]["eta_from"] == 1.0
    assert cells[1.0]["eta_s1"] is None and cells[1.0]["eta_from"] == 1.0  # the reference T itself has no eta
    assert "| T = 1 | (reference T) |" in "".join(feature_kd_markdown({"feature_kd": sec}))


def test_diffusion_is_counted_only_where_s1_came_closer_and_s2_went_farther():
    # Eq. 1 averages RELATIVE changes, so eta_S1 and eta_S2 can both be positive: squared distances to
    # S1 = {a}, S2 = {b, c} of (1 | 8, 1) at T1 and (1.5 | 6.5, 2) at T2 give +50 % and +40.6 %
    both_up = eta_from_cluster_distances([1, 8, 1], [1.5, 6.5, 2], 1)
    assert both_up == pytest.approx((50.0, 40.625))
    diffusion = eta_from_cluster_distances([1, 8, 1], [0.5, 9.0, 1.0], 1)
    assert diffusion[0] < 0 < diffusion[1]
    rows = [dict(zip(("eta_s1", "eta_s2"), e)) for e in (both_up, diffusion, (0.0, 1.0), (-1.0, 0.0))]
    tab = {"rows": rows, "mean_eta_s1": 1.0, "mean_eta_s2": 2.0}
    assert _summary_cells(tab) == ["1.000", "2.000", "1/4"]  # only the second: strict on both sides
    assert _summary_cells(None) == ["—", "—", "—"]


def test_a_token_with_a_pipe_or_backtick_keeps_the_s1_table_in_its_columns():
    classes = [{"class": 0, "token": "a|b", "count": 3, "s1": [1], "s2": [2]},
               {"class": 1, "token": "`x`", "count": 2, "s1": [0], "s2": [2]},
               {"class": 2, "token": "||", "count": 1, "s1": [0], "s2": [1]}]
    lines = _classes_table(classes, 3).splitlines()
    assert len(lines) == 5
    assert {ln.count("|") for ln in lines} == {5}  # four cells per row, the header's
    body = [ln.split(" | ") for ln in lines[2:]]
    assert [b[0] for b in body] == ["| `a¦b`", "| `'x'`", "| `¦¦`"]


def test_the_single_teacher_sections_read_the_first_teacher_seeds_run_when_there_are_several():
    view = object.__new__(StudyView)  # only the config matters here
    for cfg, want in (({"teacher_seeds": 3, "teacher_seed": 5}, "teacher_a0.1_ts5"),
                      ({"teacher_seeds": 2}, "teacher_a0.1_ts0"),
                      ({"teacher_seeds": 1, "teacher_seed": 5}, "teacher_a0.1"), ({}, "teacher_a0.1")):
        view.config = cfg
        assert view.teacher(0.1) == want == S.teacher_id(0.1, None if cfg.get("teacher_seeds", 1) == 1
                                                         else cfg.get("teacher_seed", 0))


def test_a_view_limited_to_usable_runs_reads_each_of_them_wherever_it_is_in_the_plan(synthetic_report):
    study, _, _ = synthetic_report
    everything = StudyView(study)
    trained = [r for r, run in everything.runs.items() if run["kind"] in ("teacher", "student")]
    usable = {trained[-1], trained[len(trained) // 2]}  # later runs in the manifest, none of the first
    assert list(everything.runs)[0] not in usable and all("val_acc1" in everything.results[r] for r in usable)
    view = StudyView(study, usable=usable)
    assert set(view.results) == usable and all(view.results[r] == everything.results[r] for r in usable)


def _cache_view(built):
    """Two cache runs, each read by one finished student; ``built``: the caches whose build finished."""
    runs = {"cache_a0": {"kind": "cache", "deps": []}, "cache_a0.1": {"kind": "cache", "deps": []},
            "student_a0": {"kind": "student", "deps": ["cache_a0"]},
            "student_a0.1": {"kind": "student", "deps": ["cache_a0.1"]}}
    desc = {"rows": 100, "bytes_on_disk": 1000, "bytes_per_row": 10.0, "kind": "topk", "dtype": "float16", "topk": 4}
    results = {r: {"status": "done", "wall_time_s": 5.0} for r in ("student_a0", "student_a0.1")}
    results.update({c: {"status": "done", "cache": desc, "wall_time_s": 2.0} for c in built})
    return SimpleNamespace(runs=runs, results=results, task=SimpleNamespace(cache_rows_per_epoch=False),
                           config={"student_epochs": 3})


def test_the_cache_section_is_ok_once_every_cache_is_built_and_partial_before():
    sec = cache_savings_section(_cache_view(["cache_a0", "cache_a0.1"]))
    assert sec["status"] == "ok" and sec["missing_inputs"] == []
    # each student would have computed 100 rows x 3 epochs live; the build computed 100 once
    assert [c["forwards_avoided"] for c in sec["caches"]] == [200, 200] and sec["total"]["built"] == 2
    sec = cache_savings_section(_cache_view(["cache_a0"]))
    assert sec["status"] == "partial" and sec["missing_inputs"] == ["cache_a0.1"]
    assert [c["forwards_avoided"] for c in sec["caches"]] == [200, 0] and sec["total"]["built"] == 1
