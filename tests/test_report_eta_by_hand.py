"""The report's eta, entropy, class-wise, projection and soft-output sections (and the seed statistics
they share) against inputs made by hand: which teacher is the reference, which exports a table reads
and which it reports missing, when a cached section must be recomputed, what a status says, which rows,
columns and headings a table shows and in what precision. Every expected value is worked out here from
the inputs (by hand, with numpy/scipy or conftest's reference formulas), never copied from the code's
output. Written against mutants of mutation/report_sections.toml that the other section tests let
through (docs/testing.md): a break for a continue, a dropped ``missing.append``, a default number
changed, a comparison flipped at a boundary, arguments swapped in a run id of a cache key."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import (
    eta_reference,
    hand_translation_study,
    mean_entropy_reference,
    synthetic_study,
    token_sets_by_hand,
)
from scipy.special import softmax

from lskd_core import study as S
from lskd_core.classsets import FASHION_MNIST_CLASSES
from lskd_core.features_io import load_features, save_features
from lskd_core.report import write_report
from lskd_core.report.cache import AnalysisCache
from lskd_core.report.classwise import _status, _train_per_class, classwise_markdown, classwise_section
from lskd_core.report.entropy import entropy_markdown, entropy_section
from lskd_core.report.eta import _class_sets, _reference_alpha, _seed_tables, eta_markdown, eta_section
from lskd_core.report.profile import profile_markdown, profile_section, teacher_profiles
from lskd_core.report.projection import _compute as projection_compute
from lskd_core.report.projection import projection_markdown, projection_section
from lskd_core.report.seed_stats import _ci, eta_over_seeds, eta_over_seeds_md, eta_rows, grid_rows, trend_table
from lskd_core.report.token_entropy import (
    ENTROPY_FILE,
    token_entropy_markdown,
    token_entropy_section,
    token_mean_interval,
)
from lskd_core.report.token_eta import _split, _token_sets, embedding_sets, token_eta_markdown, token_eta_section
from lskd_core.report.view import StudyView


# ------------------------------------------------------------------------------------------------
# shared inputs
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A synthetic vision study (conftest.synthetic_study: alphas 0 and 0.1, T in {1, 3}, two seeds,
    targets 0 and 5, projection classes 0, 6, 7) and its report: (study, results)."""
    study = tmp_path_factory.mktemp("eta_by_hand") / "study"
    synthetic_study(study, {})
    rep = write_report(study)
    return study, json.loads((rep / "results.json").read_text())


def _copy(study: Path, dest: Path) -> Path:
    """The study without its report (so every section is computed afresh)."""
    shutil.copytree(study, dest, ignore=shutil.ignore_patterns("report"))
    return dest


def _rerun_export(study: Path, run_id: str, shift: float = 1.0) -> None:
    """The export ran again: class 0's features moved by ``shift`` along the first axis, and a new
    result.json (a run's identity is its result's bytes)."""
    path = study / "runs" / run_id / "features.npz"
    f = load_features(path)
    moved = f.features + shift * np.eye(f.features.shape[1])[0] * (f.labels == 0)[:, None]
    save_features(path, moved.astype(f.features.dtype), f.labels, class_names=f.class_names, weight=f.weight, bias=f.bias,
                  logits=f.logits, meta=f.meta)
    (path.parent / "result.json").write_text(json.dumps({"status": "done", "again": True}))


def _set_config(study: Path, **settings) -> None:
    manifest = json.loads((study / "study.json").read_text())
    manifest["config"].update(settings)
    (study / "study.json").write_text(json.dumps(manifest))


def _interval(est, lo, hi, n=3, unit="seed"):
    return {"estimate": est, "ci": [lo, hi], "n": n, "unit": unit}


# ------------------------------------------------------------------------------------------------
# eta (lskd_core/report/eta.py)
# ------------------------------------------------------------------------------------------------
def test_the_reference_teacher_is_alpha_0_else_the_first_alpha():
    assert _reference_alpha(SimpleNamespace(alphas=[0.1, 0.0, 0.2])) == 0.0
    assert _reference_alpha(SimpleNamespace(alphas=[0.2, 0.1, 0.3])) == 0.2


def _feats(centres, rng, n=6):
    """n samples per class around the rows of ``centres``."""
    lab = np.repeat(np.arange(len(centres)), n)
    return SimpleNamespace(features=np.asarray(centres, float)[lab] + 0.1 * rng.normal(size=(lab.size, 3)),
                           labels=lab)


def test_a_seeds_tables_compare_its_lowest_t_with_each_higher_t_it_has():
    rng = np.random.default_rng(3)
    base = np.array([[0, 0, 0], [2, 0, 0], [0, 3, 0], [0, 0, 4]], float)
    exports = {1.0: _feats(base, rng), 4.0: _feats(base * [[1], [0.5], [1.5], [1]], rng)}  # T = 2 not exported

    view = SimpleNamespace(temperatures=[1.0, 2.0, 4.0], student=S.student_id, export=S.export_id,
                           features=lambda model, split: exports.get(
                               next(t for t in (1.0, 2.0, 4.0) if S.student_id(0.1, t, 0) == model)))
    sets = {"hierarchy": {}, "feature": {0: ([1], [2, 3]), 3: ([2], [0, 1])}}  # no hierarchy sets (translation)
    tables, missing = _seed_tables(view, 0.1, "val", 0, [2.0, 4.0], sets, 4)
    assert missing == [S.export_id(S.student_id(0.1, 2.0, 0), "val")]
    assert [(t["sets"], t["t1"], t["t2"], t["split"]) for t in tables] == [("feature", 1.0, 4.0, "val")]
    b, a = exports[1.0], exports[4.0]
    for row in tables[0]["rows"]:
        s1, s2 = sets["feature"][row["target"]]
        want = eta_reference(b.features, b.labels, a.features, a.labels, row["target"], s1, s2)
        assert (row["eta_s1"], row["eta_s2"]) == pytest.approx(want, rel=1e-6)
    assert tables[0]["mean_eta_s1"] == pytest.approx(np.mean([r["eta_s1"] for r in tables[0]["rows"]]))
    # without the lowest T's export there is nothing to compare: that export is what is missing
    exports.pop(1.0)
    assert _seed_tables(view, 0.1, "val", 0, [2.0, 4.0], sets, 4) == ([], [S.export_id(S.student_id(0.1, 1.0, 0),
                                                                                         "val")])


def test_eta_needs_a_class_count_and_two_temperatures():
    view = SimpleNamespace(num_classes=lambda: 10, config={}, temperatures=[1.0])
    assert eta_section(view, None) == {"status": "missing", "reason": "eta needs at least two temperatures"}
    view = SimpleNamespace(num_classes=lambda: None, config={}, temperatures=[1.0, 3.0])
    assert eta_section(view, None)["status"] == "missing"


def test_the_eta_section_reads_the_configured_targets_and_the_higher_ts(finished):
    _, res = finished
    eta = res["eta"]
    assert eta["targets"] == [0, 5] and eta["t1"] == 1.0
    assert {t["t2"] for t in eta["seed_tables"]} == {3.0}
    assert eta["reference_model"] == "teacher_a0 (val split)" and eta["seeds_with_features"] == [0, 1]


def test_feature_sets_of_other_sizes_than_the_hierarchys_and_their_agreement():
    rng = np.random.default_rng(5)
    centroids = rng.normal(size=(10, 4))
    view = SimpleNamespace(config={"num_similar": 1, "num_dissimilar": 2, "feature_sets": [30.0, 50.0]},
                           class_names=lambda: list(FASHION_MNIST_CLASSES))
    targets = [0, 2, 4, 5, 6, 7]
    sets = _class_sets(view, centroids, 10, targets)
    assert sets["feature_pct"] == [30.0, 50.0]
    swapped = []
    for t in targets:
        h1, h2 = sets["hierarchy"][t]
        assert (len(h1), len(h2)) == (1, 2)  # num_similar, num_dissimilar
        order = sorted((c for c in range(10) if c != t), key=lambda c: (float(((centroids[c] - centroids[t]) ** 2).sum()), c))
        f1, f2 = sets["feature"][t]
        assert (f1, f2) == (sorted(order[:3]), sorted(order[-5:]))  # ceil(30 % of 9), ceil(50 % of 9)
        agree = next(a for a in sets["agreement"] if a["target"] == t)
        assert (agree["s1"], agree["s2"]) == (len(set(h1) & set(f1)) / 1, len(set(h2) & set(f2)) / 2)
        swapped.append(len(set(h2) & set(f2)) / 5)
    assert [a["s2"] for a in sets["agreement"]] != swapped  # |h ∩ f| / |h|, not / |f|


def test_eta_with_a_missing_export_of_the_analysis_seed_is_partial_and_names_it(finished, tmp_path):
    study = _copy(finished[0], tmp_path / "study")
    gone = S.export_id(S.student_id(0.1, 3.0, 0), "val")
    shutil.rmtree(study / "runs" / gone)
    eta = eta_section(StudyView(study), AnalysisCache(tmp_path / "cache"))
    assert eta["status"] == "partial" and eta["missing_inputs"] == [gone]
    assert {(t["alpha"], t["split"]) for t in eta["tables"]} == {(0.0, "train"), (0.0, "val"), (0.1, "train")}
    # the table of that cell still shows its train side, the val side as a dash
    md = "".join(eta_markdown({"eta": eta}, list(FASHION_MNIST_CLASSES)))
    part = md.split("Teacher alpha = 0.1, eta(T1 = 1, T2 = 3)")[1].split("Teacher alpha = 0,")[0]
    assert "| **mean** | " in part and part.count("| — | — |") == 3  # two targets and the mean row


def test_eta_without_the_lowest_t_exports_is_missing(finished, tmp_path):
    study = _copy(finished[0], tmp_path / "study")
    for a in (0.0, 0.1):
        for sp in ("train", "val"):
            shutil.rmtree(study / "runs" / S.export_id(S.student_id(a, 1.0, 0), sp))
    eta = eta_section(StudyView(study), AnalysisCache(tmp_path / "cache"))
    assert eta["status"] == "missing" and eta["tables"] == []
    assert sorted(eta["missing_inputs"]) == sorted(S.export_id(S.student_id(a, 1.0, 0), sp)
                                                   for a in (0.0, 0.1) for sp in ("train", "val"))


def test_eta_without_the_reference_teachers_export_says_what_is_missing(finished, tmp_path):
    study = _copy(finished[0], tmp_path / "study")
    gone = S.export_id(S.teacher_id(0.0), "val")
    shutil.rmtree(study / "runs" / gone)
    eta = eta_section(StudyView(study), AnalysisCache(tmp_path / "cache"))
    assert {t["sets"] for t in eta["tables"]} == {"hierarchy"}  # the feature-space half is not there
    assert eta["status"] == "partial" and gone in eta["missing_inputs"]


@pytest.mark.parametrize("changed", [S.export_id(S.student_id(0.1, 3.0, 1), "val"),
                                     S.export_id(S.teacher_id(0.0), "val")])
def test_a_cached_eta_section_is_recomputed_when_any_input_export_is_re_run(finished, tmp_path, changed):
    study = _copy(finished[0], tmp_path / "study")
    cache = AnalysisCache(tmp_path / "cache")
    first = eta_section(StudyView(study), cache)
    assert first["status"] == "ok" and eta_section(StudyView(study), cache)["cached"] is True
    _rerun_export(study, changed, shift=0.0 if "teacher" in changed else 2.0)
    again = eta_section(StudyView(study), cache)
    assert again["cached"] is False and again["status"] == "ok"
    if "student" in changed:  # seed 1's val table at T = 3: class 0 moved, its eta changes
        def s1(eta):
            return [r["eta_s1"] for t in eta["seed_tables"] if (t["seed"], t["split"], t["alpha"]) == (1, "val", 0.1)
                    for r in t["rows"]]
        assert s1(again) != pytest.approx(s1(first))


def _table(alpha, t2, split, sets="hierarchy", s1=-1.0, s2=2.0):
    rows = [{"target": 0, "eta_s1": s1, "eta_s2": s2, "eta_s1_pairwise": s1 / 2, "eta_s2_pairwise": s2 / 2}]
    return {"alpha": alpha, "t1": 1.0, "t2": t2, "split": split, "sets": sets, "rows": rows,
            "mean_eta_s1": s1, "mean_eta_s2": s2}


def _eta(tables, **extra):
    eta = {"status": "ok", "t1": 1.0, "seed": 0, "targets": [0], "tables": tables, "seed_tables": [],
           "over_seeds": [], "seeds_with_features": [0], "reference_model": "teacher_a0 (val split)",
           "sets": {"hierarchy": {}, "feature": {}, "agreement": [], "hierarchy_source": "by hand",
                    "feature_pct": [10.0, 50.0]}}
    return dict(eta, **extra)


def test_the_eta_tables_show_the_ls_teacher_first_then_t2_ascending():
    tables = [_table(a, t2, sp, s1=-(10 * a + t2)) for a in (0.0, 0.1) for t2 in (4.0, 2.0) for sp in ("train", "val")]
    md = "".join(eta_markdown({"eta": _eta(tables)}, ["T-shirt/top"]))
    heads = [f"Teacher alpha = {a}, eta(T1 = 1, T2 = {t})" for a, t in (("0.1", 2), ("0.1", 4), ("0", 2), ("0", 4))]
    at = [md.index(h) for h in heads]
    assert at == sorted(at)
    summary = [ln for ln in md.splitlines() if ln.startswith("| hierarchy |")]
    assert [ln.split(" | ")[1:3] for ln in summary] == [["0.1", "1 -> 2"], ["0.1", "1 -> 4"], ["0", "1 -> 2"],
                                                        ["0", "1 -> 4"]]
    assert summary[0].split(" | ")[3] == "-3.000"  # alpha 0.1, T2 = 2: -(1 + 2)


def test_a_per_target_table_is_shown_for_every_cell_that_has_a_table():
    # alpha 0.1 has T2 = 3 only, alpha 0 has T2 = 4 only: (0.1, 4) and (0, 3) have no table and no heading
    tables = [_table(0.1, 3.0, "train"), _table(0.0, 4.0, "val", s1=-5.0)]
    md = "".join(eta_markdown({"eta": _eta(tables)}, ["T-shirt/top"]))
    assert "Teacher alpha = 0.1, eta(T1 = 1, T2 = 3)" in md and "Teacher alpha = 0, eta(T1 = 1, T2 = 4)" in md
    assert "T2 = 4), percent" in md.split("Teacher alpha = 0,")[1]
    assert md.count("Teacher alpha = ") == 2
    # alpha 0's only table is its val split's: the train columns are dashes, its mean row too
    assert "| T-shirt/top | — | — | -5.000 (-2.500) | 2.000 (1.000) |" in md
    assert "| **mean** | — | — | **-5.000** | **2.000** |" in md


def test_a_target_beyond_the_class_names_is_shown_by_its_id():
    tables = [_table(0.1, 3.0, "train")]
    tables[0]["rows"][0]["target"] = 10  # the ten names are those of classes 0..9
    md = "".join(eta_markdown({"eta": _eta(tables, targets=[10])}, list(FASHION_MNIST_CLASSES)))
    assert "| 10 | -1.000 (-0.500) | 2.000 (1.000) | — | — |" in md


def test_table_g1_without_feature_sets_has_dashes_and_no_average_row():
    sets = {"hierarchy": {"0": [[6], [5, 7]]}, "feature": {}, "agreement": [], "hierarchy_source": "by hand",
            "feature_pct": [44.4, 22.2]}
    md = "".join(eta_markdown({"eta": _eta([_table(0.1, 3.0, "train")], sets=sets)}, list(FASHION_MNIST_CLASSES)))
    assert "| T-shirt/top | Shirt | Sandal, Sneaker | — | — | — | — |" in md
    assert "**average**" not in md
    assert "closest 44.4 % / farthest 22.2 % of the other classes by centroid distance in teacher_a0" in md


def test_no_per_target_table_over_seeds_without_an_ls_teacher():
    group = {"alpha": 0.0, "t1": 1.0, "t2": 3.0,
             "summary": {"eta_s1": _interval(-1.0, -2.0, 0.0), "eta_s2": _interval(1.0, 0.0, 2.0),
                         "share_diffusion": 0.5, "runs": 2},
             "targets": [{"target": 0, "eta_s1": _interval(-1.0, -2.0, 0.0), "eta_s2": _interval(1.0, 0.0, 2.0),
                          "share_diffusion": 0.5, "runs": 2}]}
    over = [{"sets": "hierarchy", "split": "train", "variant": "eq1", "groups": [group]}]
    seed_tables = [dict(_table(0.0, 3.0, "train"), seed=s) for s in (0, 2)]
    eta = _eta([_table(0.0, 3.0, "train")], over_seeds=over, seed_tables=seed_tables, seeds_with_features=[0, 2])
    md = "".join(eta_markdown({"eta": eta}, ["T-shirt/top"]))
    assert "Student seeds with exported features: 0, 2.\n" in md
    assert "| hierarchy | train | eq1 | 0 | 1 -> 3 |" in md
    assert "Per target class over seeds" not in md  # the per-target table is the LS teacher's only


def test_an_eta_section_without_tables_shows_its_heading_and_why():
    md = eta_markdown({"eta": {"status": "missing", "reason": "eta needs at least two temperatures"}}, [])
    assert md == ["## 2. Diffusion index (Table 3, pairwise: Table K.1)\n",
                  "\n> Not available: eta needs at least two temperatures.\n"]


# ------------------------------------------------------------------------------------------------
# seed statistics (lskd_core/report/seed_stats.py)
# ------------------------------------------------------------------------------------------------
def test_grid_rows_pair_each_seed_with_its_teacher_and_score():
    grid = {"cells": [{"alpha": 0.1, "temperature": 3.0, "seeds": [4, 5], "teacher_seeds": [1, 0],
                       "top1": [80.0, 81.0]},
                      {"alpha": 0.0, "temperature": 1.0, "seeds": [4, 5], "top1": [70.0, 71.0]}]}
    assert grid_rows(grid) == [
        {"alpha": 0.1, "temperature": 3.0, "seed": 4, "teacher_seed": 1, "value": 80.0},
        {"alpha": 0.1, "temperature": 3.0, "seed": 5, "teacher_seed": 0, "value": 81.0},
        {"alpha": 0.0, "temperature": 1.0, "seed": 4, "teacher_seed": 0, "value": 70.0},  # one teacher: seed 0
        {"alpha": 0.0, "temperature": 1.0, "seed": 5, "teacher_seed": 0, "value": 71.0}]


def test_eta_rows_of_a_variant_only_from_rows_that_have_it():
    rows = [{"target": 3, "eta_s1": -1.0, "eta_s2": 2.0, "eta_s1_pairwise": -0.5, "eta_s2_pairwise": 1.5},
            {"target": 4, "eta_s1": -3.0, "eta_s2": 4.0, "eta_s1_pairwise": -1.0}]  # half a pairwise variant
    eta = {"seed_tables": [{"alpha": 0.1, "t1": 1.0, "t2": 4.0, "seed": 2, "sets": "hierarchy", "split": "train",
                            "rows": rows}]}
    assert eta_rows(eta, variant="pairwise") == [{"alpha": 0.1, "t1": 1.0, "t2": 4.0, "seed": 2, "teacher_seed": 0,
                                                  "target": 3, "eta_s1": -0.5, "eta_s2": 1.5}]
    assert [r["target"] for r in eta_rows(eta)] == [3, 4]
    over = eta_over_seeds(eta)
    assert [(o["sets"], o["split"], o["variant"]) for o in over] == [("hierarchy", "train", "eq1"),
                                                                     ("hierarchy", "train", "pairwise")]
    assert eta_rows(None) == []


def test_a_value_without_an_interval_says_so_and_two_decimals_by_default():
    assert _ci({"estimate": 1.2345, "ci": None}) == "1.23 (no interval)"
    assert _ci({"estimate": 1.2345, "ci": [0.5, 2.0]}, 3, True) == "+1.234 [+0.500, +2.000]"
    assert _ci(None) == "—"


def test_the_trend_table_by_hand():
    est = {"estimate": -1.0, "ci": [-2.5, 0.25], "p": 0.012345, "n": 3, "unit": "seed", "method": "t"}
    change = {"estimate": -2.2, "ci": [-5.0, 0.5]}
    inter = {"alpha_ls": 0.1, "alpha_plain": 0.0, "change_over_range": {"estimate": -0.5, "ci": [-1.0, 0.0]},
             "slope_difference_per_ln_T": dict(est, p=None, n=2, unit="teacher", method="welch")}
    analysis = {"temperatures": [1.0, 4.0], "interaction": inter,
                "trends": [{"alpha": 0.0, "slope_per_ln_T": None, "change_over_range": None},
                           {"alpha": 0.1, "slope_per_ln_T": est, "change_over_range": change}]}
    lines = trend_table(analysis, "points").splitlines()
    assert lines[2:] == ["| alpha = 0.1 | -1.00 [-2.50, +0.25] | -2.20 [-5.00, +0.50] | 0.0123 | 3 seeds | t |",
                         "| LS − plain (alpha 0.1 − 0) | -1.00 [-2.50, +0.25] | -0.50 [-1.00, +0.00] | — | 2 teachers "
                         "| welch |"]


def test_the_per_target_table_over_seeds_is_the_ls_teachers_at_the_highest_t():
    def group(alpha, t2, v):
        tgt = {"target": 10, "eta_s1": _interval(v, v - 1, v + 1), "eta_s2": _interval(1.0, 0.0, 2.0),
               "share_diffusion": 0.25, "runs": 4}
        return {"alpha": alpha, "t1": 1.0, "t2": t2, "targets": [tgt],
                "summary": {"eta_s1": _interval(v, v - 1, v + 1), "eta_s2": _interval(1.0, 0.0, 2.0),
                            "share_diffusion": 0.25, "runs": 4}}

    over = [{"sets": "hierarchy", "split": "train", "variant": "eq1",
             "groups": [group(0.0, 3.0, -9.0), group(0.1, 2.0, -8.0), group(0.1, 3.0, -4.0)]}]
    md = "\n".join(eta_over_seeds_md(over, list(FASHION_MNIST_CLASSES), 0.1, 3.0))
    table = md.split("Per target class over seeds")[1]
    assert "(hierarchy sets, train split, teacher alpha = 0.1, T 1 -> 3)" in table
    assert "| 10 | -4.000 [-5.000, -3.000] | +1.000 [+0.000, +2.000] | 25 % of 4 |" in table  # no 11th name
    assert "-9.000" not in table and "-8.000" not in table
    assert eta_over_seeds_md([], [], 0.1, 3.0) == []


# ------------------------------------------------------------------------------------------------
# teacher entropy (lskd_core/report/entropy.py)
# ------------------------------------------------------------------------------------------------
def _teacher_logits(study, alpha):
    return load_features(study / "runs" / S.export_id(S.teacher_id(alpha), "train") / "features.npz").logits


def test_without_the_plain_teachers_export_the_entropy_table_is_partial_and_has_no_pairs(finished, tmp_path):
    study = _copy(finished[0], tmp_path / "study")
    shutil.rmtree(study / "runs" / S.export_id(S.teacher_id(0.0), "train"))
    ent = entropy_section(StudyView(study), AnalysisCache(tmp_path / "cache"))
    assert ent["status"] == "partial" and ent["pairs"] == []  # nothing to match the LS teacher with
    assert ent["max_entropy"] == pytest.approx(math.log(10))  # ln K, K = 10 classes (not the rows)
    logits = _teacher_logits(study, 0.1)
    assert list(ent["table"]) == ["0.1"]
    assert ent["temperatures"] == [1.0, 1.5, 3.0, 5.0]  # the grid's and the vision preset's extra 1.5 and 5
    assert ent["table"]["0.1"] == pytest.approx({k: mean_entropy_reference(logits, float(k))
                                                 for k in ("1", "1.5", "3", "5")}, rel=1e-5)


def test_extra_entropy_temperatures_join_the_table_but_not_the_pairs_and_renew_the_cache(finished, tmp_path):
    study = _copy(finished[0], tmp_path / "study")
    cache = AnalysisCache(tmp_path / "cache")
    assert entropy_section(StudyView(study), cache)["temperatures"] == [1.0, 1.5, 3.0, 5.0]
    _set_config(study, entropy_temperatures=[2.0])  # instead of the preset's 1.5 and 5
    ent = entropy_section(StudyView(study), cache)
    assert ent["cached"] is False and ent["status"] == "ok" and ent["temperatures"] == [1.0, 2.0, 3.0]
    for a in ("0", "0.1"):
        assert ent["table"][a]["2"] == pytest.approx(mean_entropy_reference(_teacher_logits(study, float(a)), 2.0),
                                                     rel=1e-5)
    assert [p["temperature"] for p in ent["pairs"]] == [1.0, 3.0]  # pairs at the grid's T only


def test_the_entropy_figure_is_linked_only_when_drawn():
    ent = {"status": "ok", "temperatures": [1.0], "max_entropy": math.log(10), "pairs": [],
           "table": {"0": {"1": 0.5}, "0.1": {"1": 0.75}}}
    md = "".join(entropy_markdown({"entropy": ent, "figures": {"entropy": "fig_entropy.png"}}))
    assert "maximum ln K = 2.303.\n" in md and "| T = 1 | 0.500 | 0.750 |" in md
    assert "![teacher entropy](fig_entropy.png)\n" in md
    assert "![teacher entropy]" not in "".join(entropy_markdown({"entropy": ent}))


# ------------------------------------------------------------------------------------------------
# token eta and token entropy on a translation study (token_eta.py, token_entropy.py)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def translation(tmp_path_factory):
    return hand_translation_study(tmp_path_factory.mktemp("translation") / "study")


def test_sets_summing_to_exactly_100_percent_are_kept_as_configured():
    w = np.random.default_rng(0).normal(size=(6, 4))
    got = embedding_sets(w, 3, 2)  # 3 and 2 of the 5 other classes: 60 % + 40 %
    assert got["pct"] == [60.0, 40.0]
    assert all((len(s1), len(s2)) == (3, 2) for s1, s2 in got["sets"].values())


def test_token_sets_default_to_the_papers_4_and_20_classes():
    w = np.random.default_rng(0).normal(size=(26, 3))  # 25 other classes: 4 -> 16 %, 20 -> 80 %
    assert _token_sets(SimpleNamespace(config={}), w)["pct"] == pytest.approx([16.0, 80.0])
    assert _token_sets(SimpleNamespace(config={"num_similar": 5, "num_dissimilar": 10}), w)["pct"] == \
        pytest.approx([20.0, 40.0])


def test_the_exports_split_is_the_configured_one_else_test():
    assert _split(SimpleNamespace(config={})) == "test"
    assert _split(SimpleNamespace(config={"translation_export_split": "valid"})) == "valid"


def test_without_alpha_0_the_token_sets_come_from_the_first_teachers_embeddings(tmp_path):
    study, weights = hand_translation_study(tmp_path / "st", alphas=(0.1, 0.2))
    eta = token_eta_section(StudyView(study), AnalysisCache(tmp_path / "cache"))
    assert eta["status"] == "ok" and eta["reference_model"] == "teacher_a0.1"
    for c in eta["classes"]:
        s1, s2 = token_sets_by_hand(weights[0.1], c["class"])
        assert (c["s1"], sorted(c["s2"])) == (s1, s2)


def test_token_eta_without_the_reference_export_is_missing_and_names_it(translation, tmp_path):
    study = _copy(translation[0], tmp_path / "study")
    gone = "export_teacher_a0_test"
    shutil.rmtree(study / "runs" / gone)
    eta = token_eta_section(StudyView(study), AnalysisCache(tmp_path / "cache"))
    assert eta["status"] == "missing" and eta["missing_inputs"] == [gone]


def test_token_eta_with_a_missing_student_export_is_partial(translation, tmp_path):
    study = _copy(translation[0], tmp_path / "study")
    gone = "export_student_a0_T4_s0_test"  # of the first (alpha, seed): later ones must not drop it
    shutil.rmtree(study / "runs" / gone)
    eta = token_eta_section(StudyView(study), AnalysisCache(tmp_path / "cache"))
    assert eta["status"] == "partial" and eta["missing_inputs"] == [gone]
    assert (0.0, 0) not in {(t["alpha"], t["seed"]) for t in eta["seed_tables"]}
    assert len(eta["seed_tables"]) == 3  # the other (alpha, seed) pairs, T 1 -> 4 each


def test_a_student_export_with_other_token_classes_fails_the_section_naming_both(translation, tmp_path):
    study = _copy(translation[0], tmp_path / "study")
    path = study / "runs" / "export_student_a0_T4_s1_test" / "features.npz"
    f = load_features(path)
    save_features(path, f.features, f.labels, class_names=f.class_names, weight=f.weight, bias=f.bias,
                  meta=dict(f.meta, token_ids=[9, 10, 11, 12, 13, 14]))
    eta = token_eta_section(StudyView(study), AnalysisCache(tmp_path / "cache"))
    assert eta["status"] == "error"
    assert "export_student_a0_T4_s1_test has other token classes than export_teacher_a0_test" in eta["error"]


def test_a_cached_token_eta_is_recomputed_when_a_student_export_is_re_run(translation, tmp_path):
    study = _copy(translation[0], tmp_path / "study")
    cache = AnalysisCache(tmp_path / "cache")
    first = token_eta_section(StudyView(study), cache)
    _rerun_export(study, "export_student_a0.1_T4_s1_test", shift=1.0)
    again = token_eta_section(StudyView(study), cache)
    assert first["status"] == again["status"] == "ok" and again["cached"] is False

    def rows(eta):
        return [r["eta_s1"] for t in eta["seed_tables"] if (t["alpha"], t["seed"]) == (0.1, 1) for r in t["rows"]]
    assert rows(again) != pytest.approx(rows(first))


def test_a_cached_token_eta_is_recomputed_when_the_reference_teachers_export_is_re_run(translation, tmp_path):
    study = _copy(translation[0], tmp_path / "study")
    cache = AnalysisCache(tmp_path / "cache")
    assert token_eta_section(StudyView(study), cache)["cached"] is False
    assert token_eta_section(StudyView(study), cache)["cached"] is True  # nothing changed: read back
    _rerun_export(study, S.export_id(S.teacher_id(0.0), "test"))  # the token sets' source ran again
    assert token_eta_section(StudyView(study), cache)["cached"] is False


def _token_over(n_classes):
    summary = {"eta_s1": _interval(-1.0, -2.0, 0.0), "eta_s2": _interval(1.0, 0.5, 1.5), "share_diffusion": 0.5,
               "runs": 2}
    return {"status": "ok", "definition": "by hand", "split": "test", "sentences": 7, "feature_pct": [12.5, 37.5],
            "reference_model": "teacher_a0",
            "classes": [{"class": i, "token": f"t{i}", "count": 100 - i, "s1": [(i + 1) % n_classes], "s2": [0, 1]}
                        for i in range(n_classes)],
            "over_seeds": [{"sets": "feature", "split": "test", "variant": "eq1",
                            "groups": [{"alpha": 0.1, "t1": 1.0, "t2": 4.0, "summary": summary}]}]}


def test_the_token_table_shows_the_12_most_frequent_classes():
    md = "".join(token_eta_markdown({"token_eta": _token_over(13)}))
    assert "S1 of the 12 most frequent token classes" in md
    assert "| `t11` | 89 | `t12` | 2 |" in md and "`t12` | 88" not in md
    assert "S1 = the closest 12.5 %, S2 = the farthest 37.5 % of the other classes" in md
    assert "| 0.1 | 1 -> 4 | -1.000 [-2.000, +0.000] | +1.000 [+0.500, +1.500] | 50 % of 2 | 3 seeds |" in md
    assert "S1 of the 5 most frequent" in "".join(token_eta_markdown({"token_eta": _token_over(5)}))


def test_a_token_eta_section_without_results_says_why():
    md = token_eta_markdown({"token_eta": {"status": "missing", "reason": "eta needs at least two temperatures"}})
    assert md[-1] == "eta needs at least two temperatures.\n" and len(md) == 3


def test_sentences_without_tokens_are_left_out_and_two_sentences_have_an_interval():
    got = token_mean_interval(np.array([2.0, 9.0, 5.0]), np.array([2, 3, 0]))
    assert (got["mean"], got["sentences"], got["tokens"]) == (11.0 / 5, 2, 5)
    lo, hi = got["ci"]  # a resampled ratio lies between the sentences' own ratios, 1 and 3
    assert 1.0 <= lo <= got["mean"] <= hi <= 3.0
    empty = token_mean_interval(np.array([1.0]), np.array([0]))
    assert math.isnan(empty["mean"]) and empty["ci"] is None and empty["sentences"] == 0


def test_token_entropy_without_the_first_teachers_file_is_partial_and_keeps_the_others(translation, tmp_path):
    study = _copy(translation[0], tmp_path / "study")
    (study / "runs" / "export_teacher_a0_test" / ENTROPY_FILE).unlink()  # the first teacher export of the plan
    ent = token_entropy_section(StudyView(study), AnalysisCache(tmp_path / "cache"))
    assert ent["status"] == "partial" and ent["missing_inputs"] == ["export_teacher_a0_test"]
    assert [tr["model_run"] for tr in ent["teachers"]] == ["teacher_a0.1"]


def test_the_token_entropy_table_is_each_alphas_teachers_token_weighted_mean(translation, tmp_path):
    study = _copy(translation[0], tmp_path / "study")
    ent = token_entropy_section(StudyView(study), AnalysisCache(tmp_path / "cache"))
    want = {}
    for a in ("0", "0.1"):
        raw = json.loads((study / "runs" / f"export_teacher_a{a}_test" / ENTROPY_FILE).read_text())
        want[a] = {t: sum(raw["entropy_sum_per_sentence"][f"{t}.0"]) / sum(raw["tokens_per_sentence"])
                   for t in ("1", "4")}
    assert list(ent["table"]) == list(want)
    for a in want:
        assert ent["table"][a] == pytest.approx(want[a])
    assert [(tr["alpha"], tr["teacher_seed"]) for tr in ent["teachers"]] == [(0.0, 1), (0.1, 1)]  # the preset's teacher_seed
    assert (ent["split"], ent["sentences"], ent["vocab_size"], ent["max_entropy"]) == ("test", 12, 20000, 9.9)
    md = "".join(token_entropy_markdown({"token_entropy": ent, "figures": {"token_entropy": "fig_tok.png"}}))
    assert ("on 12 sentences (" + str(ent["tokens"]) + " target tokens, EOS included) of the `test` split; "
            "maximum ln V = 9.900. Token-weighted mean [95 % interval: cluster bootstrap over sentences (BCa, "
            "2000 resamples)].") in md
    assert "![teacher entropy per token](fig_tok.png)\n" in md
    assert "![teacher entropy per token]" not in "".join(token_entropy_markdown({"token_entropy": ent}))


def test_token_entropy_cells_without_a_row_or_an_interval():
    ent = {"status": "ok", "interval": "95 % cluster bootstrap", "temperatures": [1.0, 4.0],
           "teachers": [{"alpha": 0.0, "teacher_seed": 0, "rows": {"1": {"mean": 1.23456, "ci": None}}}]}
    md = "".join(token_entropy_markdown({"token_entropy": ent}))
    assert "|  | alpha = 0 |\n" in md  # one teacher seed: no seed in the heading
    assert "| T = 1 | 1.235 (no interval) |" in md and "| T = 4 | — |" in md
    md = token_entropy_markdown({"token_entropy": {"status": "missing", "reason": "no teacher export finished"}})
    assert md[-1] == "no teacher export finished.\n"


# ------------------------------------------------------------------------------------------------
# class-wise accuracy (lskd_core/report/classwise.py)
# ------------------------------------------------------------------------------------------------
def test_train_accuracy_goes_through_the_final_layers_bias():
    # logits = [x, -x] + [-1, 0]: class 0's x = 0.8 is right, 0.3 wrong; class 1's -0.5 and 0.4 both right
    f = SimpleNamespace(features=np.array([[0.8], [0.3], [-0.5], [0.4]]), labels=np.array([0, 0, 1, 1]),
                        weight=np.array([[1.0], [-1.0]]), bias=np.array([-1.0, 0.0]))
    view = SimpleNamespace(features=lambda run, split: f if (run, split) == ("student_x", "train") else None)
    assert _train_per_class(view, "student_x", 2).tolist() == [50.0, 100.0]  # without the bias: 100, 50
    assert _train_per_class(view, "student_y", 2) is None
    f.weight = None
    assert _train_per_class(view, "student_x", 2) is None  # no final layer exported


@pytest.mark.parametrize("seeds,status", [([2, 1], "ok"), ([2, 0], "partial"), ([0, 0], "missing")])
def test_the_classwise_status_counts_the_cells_with_a_val_seed(seeds, status):
    assert _status([{"n_val_seeds": n} for n in seeds]) == status


def test_the_classwise_val_mean_leaves_out_seeds_without_per_class_accuracy(finished, tmp_path):
    study = _copy(finished[0], tmp_path / "study")
    path = study / "runs" / S.student_id(0.1, 3.0, 1) / "result.json"
    res = json.loads(path.read_text())
    res.pop("val_per_class_acc")
    path.write_text(json.dumps(res))
    (study / "runs" / S.student_id(0.0, 1.0, 1) / "result.json").unlink()  # not finished
    cw = classwise_section(StudyView(study), AnalysisCache(tmp_path / "cache"))
    assert cw["status"] == "ok" and cw["train_seed"] == 0
    seeds = {(r["alpha"], r["temperature"]): r["n_val_seeds"] for r in cw["rows"]}
    assert seeds == {(0.0, 1.0): 1, (0.0, 3.0): 2, (0.1, 1.0): 2, (0.1, 3.0): 1}


def test_the_classwise_tables_by_hand():
    cw = {"status": "partial", "missing_inputs": ["x"], "targets": [0, 10], "train_seed": 2, "rows": [
        {"alpha": 0.1, "temperature": 3.0, "n_val_seeds": 2, "val": {"0": 81.234, "10": 70.0},
         "train": {"0": None, "10": 99.5}, "val_avg": 75.617, "train_avg": 99.5}]}
    md = "".join(classwise_markdown({"classwise": cw}, list(FASHION_MNIST_CLASSES)))
    assert "Train: seed 2, from the exported train features" in md
    train, val = md.split("**train**")[1].split("**val**")
    assert "| alpha | T | T-shirt/top | 10 | average |" in train  # class 10 has no name
    assert "| 0.1 | 3 | — | 99.50 | 99.50 |" in train
    assert "| 0.1 | 3 | 81.23 | 70.00 | 75.62 |" in val


def test_a_student_seed_finishing_later_joins_the_classwise_val_mean(finished, tmp_path):
    study = _copy(finished[0], tmp_path / "study")
    later = [study / "runs" / S.student_id(a, t, 1) / "result.json" for a in (0.0, 0.1) for t in (1.0, 3.0)]
    kept = {p: p.read_text() for p in later}
    for p in later:
        p.unlink()  # seed 1 is still training
    cache = AnalysisCache(tmp_path / "cache")
    assert {r["n_val_seeds"] for r in classwise_section(StudyView(study), cache)["rows"]} == {1}
    for p, text in kept.items():
        p.write_text(text)  # seed 1 finished
    assert {r["n_val_seeds"] for r in classwise_section(StudyView(study), cache)["rows"]} == {2}


# ------------------------------------------------------------------------------------------------
# projections (lskd_core/report/projection.py)
# ------------------------------------------------------------------------------------------------
def test_a_projection_without_one_teachers_val_export_is_partial_and_keeps_the_other_panels(finished, tmp_path):
    study = _copy(finished[0], tmp_path / "study")
    shutil.rmtree(study / "runs" / S.export_id(S.teacher_id(0.0), "val"))
    out = tmp_path / "out"
    out.mkdir()
    proj = projection_section(StudyView(study), AnalysisCache(tmp_path / "cache"), out)
    assert proj["status"] == "partial" and proj["missing_inputs"] == [S.teacher_id(0.0)]
    want = [("teacher", 0.1, S.teacher_id(0.1))] + [(f"student T={t}", a, S.student_id(a, float(t), 0))
                                                     for t in (1, 3) for a in (0.0, 0.1)]
    assert [(p["row"], p["alpha"], p["run"]) for p in proj["panels"]] == want
    assert (out / "fig1_projection.png").is_file() and proj["png"] == "fig1_projection.png"
    assert proj["class_names"] == [FASHION_MNIST_CLASSES[c] for c in (0, 6, 7)]


def test_a_projection_without_any_export_is_missing_and_lists_every_panels_run(tmp_path):
    view = SimpleNamespace(class_names=lambda: None, config={}, alphas=[0.0, 0.1], analysis_seed=0,
                           features=lambda run, split: None)
    rows_spec = [("teacher", None), ("student T=1", 1.0)]
    models = {("teacher", a): S.teacher_id(a) for a in (0.0, 0.1)}
    models.update({("student T=1", a): S.student_id(a, 1.0, 0) for a in (0.0, 0.1)})
    proj = projection_compute(view, [0, 6, 7], rows_spec, models, tmp_path / "fig.png")
    assert proj["status"] == "missing" and proj["missing_inputs"] == [
        "teacher_a0", "teacher_a0.1", S.student_id(0.0, 1.0, 0), S.student_id(0.1, 1.0, 0)]
    assert not (tmp_path / "fig.png").exists()


def test_the_projection_section_by_hand():
    proj = {"status": "ok", "png": "fig1.png", "class_names": ["A", "B", "C"],
            "panels": [{"row": "teacher", "alpha": 0.1, "similar_pair_distance": 1.23456,
                        "similar_pair_separation": None},
                       {"row": "student T = 3", "alpha": 0.0, "similar_pair_distance": 0.5, "similar_pair_separation": 2.71828}]}
    md = "".join(projection_markdown({"projection": proj}))
    assert "Classes A and B (semantically similar) and C (dissimilar);" in md
    assert "![projection grid](fig1.png)\n" in md and "| teacher | 0.1 | 1.235 | — |" in md
    assert "| student T = 3 | 0 | 0.500 | 2.718 |" in md  # both columns to three decimals
    assert projection_markdown({"projection": {"status": "missing", "reason": "set projection_classes"}}) == [
        "## 4. Penultimate-layer projections (Fig. 1)\n", "\n> Not available: set projection_classes.\n"]


# ------------------------------------------------------------------------------------------------
# soft outputs (lskd_core/report/profile.py)
# ------------------------------------------------------------------------------------------------
def test_the_soft_output_panels_show_the_hierarchys_similar_classes_of_the_profile_class(finished, tmp_path):
    study = _copy(finished[0], tmp_path / "study")
    out = tmp_path / "out"
    out.mkdir()
    cache = AnalysisCache(tmp_path / "cache")
    # eta's targets are 0 and 5: no hierarchy sets of the profile class 6, the teachers rank the classes
    ranked = profile_section(StudyView(study), cache, out, {"hierarchy": {"0": [[6, 2], [5, 7]]}})
    assert ranked["class"] == 6 and ranked["similar"] is None
    sets = {"hierarchy": {"0": [[6, 2], [5, 7]], "6": [[0, 4], [5, 7]]}}
    so = profile_section(StudyView(study), cache, out, sets)
    assert so["cached"] is False and so["similar"] == [0, 4]
    for prof in so["profiles"]:
        assert [c for c, g in zip(prof["classes"], prof["groups"]) if g == "similar"] == [0, 4]
    assert [p["title"] for p in so["profiles"]] == [f"teacher alpha = {a}, T = {t}" for a in ("0.1", "0")
                                                    for t in (1, 2)]  # the LS teacher first, the preset's T


def test_without_hierarchy_sets_a_teacher_shows_its_two_runner_up_classes_at_every_t():
    rng = np.random.default_rng(2)
    k = 6
    labels = np.repeat(np.arange(k), 20)
    logits = rng.normal(size=(labels.size, k)) + 4.0 * np.eye(k)[labels]
    logits[labels == 0, 3] += 2.5  # class 0's runners-up: 3, then 5
    logits[labels == 0, 5] += 1.5
    logits[labels == 0, 1] -= 6.0  # negligible at T = 1
    logits[labels == 0, 2] -= 6.0
    panel = teacher_profiles(logits, labels, 0, [1.0, 4.0], None, 0.1)
    assert [p["title"] for p in panel] == ["teacher alpha = 0.1, T = 1", "teacher alpha = 0.1, T = 4"]
    for p, t in zip(panel, (1.0, 4.0)):
        probs = softmax(logits[labels == 0].astype(np.float64) / t, axis=1).mean(axis=0)
        assert p["groups"] == ["true", "similar", "similar", "other", "other", "other"]  # K - 1 - 2 others
        assert p["classes"][:3] == [0, 3, 5] and sorted(p["classes"][3:]) == [1, 2, 4]
        assert p["probs"] == pytest.approx([probs[c] for c in p["classes"]], rel=1e-5)
        runner_up = max(probs[c] for c in range(1, k))
        assert p["negligible_classes"] == sum(1 for c in range(1, k) if probs[c] * 100 <= runner_up
                                              and probs[c] != runner_up)
    assert panel[0]["negligible_classes"] > 0


def test_soft_outputs_without_the_ls_teachers_export_are_partial(finished, tmp_path):
    study = _copy(finished[0], tmp_path / "study")
    shutil.rmtree(study / "runs" / S.export_id(S.teacher_id(0.1), "train"))
    out = tmp_path / "out"
    out.mkdir()
    so = profile_section(StudyView(study), AnalysisCache(tmp_path / "cache"), out, None)
    assert so["status"] == "partial" and so["figures"] == {"0": "fig2_soft_output_a0.png"}
    assert so["png"] == "fig2_soft_output_a0.png" and (out / so["png"]).is_file()
    assert {p["alpha"] for p in so["profiles"]} == {0.0}


def test_the_soft_output_section_by_hand():
    prof = {"status": "ok", "png": "a.png", "class_name": "Shirt",
            "figures": {"0": "fig2_soft_output_a0.png", "0.1": "fig2_soft_output_a0.1.png"},
            "profiles": [{"title": "teacher alpha = 0.1, T = 1", "classes": [6, 10, 2], "probs": [0.61234, 0.2, 0.1],
                          "groups": ["true", "similar", "other"], "negligible_classes": 3}]}
    md = "".join(profile_markdown({"soft_output": prof}, list(FASHION_MNIST_CLASSES)))
    assert md.index("Teacher alpha = 0.1:") < md.index("Teacher alpha = 0:")  # the LS teacher first
    assert "![soft output profile, alpha = 0.1](fig2_soft_output_a0.1.png)" in md
    assert "| teacher alpha = 0.1, T = 1 | Shirt 0.612, 10 0.200 | 3 |" in md  # class 10 has no name
    assert profile_markdown({"soft_output": {"status": "missing", "reason": "no teacher"}}, []) == [
        "## 5. Soft outputs of the teachers (Fig. 2)\n", "\n> Not available: no teacher.\n"]
