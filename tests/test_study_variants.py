"""Variant arms end to end: a tiny real vision study trains the grid plus a TTM arm and a
logit-standardization arm, and its report has the calibration section and the variant comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lskd_core.study as S

TINY = {"name": "tiny-variants", "train_samples": 200, "val_samples": 100, "teacher_epochs": 1, "student_epochs": 1,
        "teacher_batch_size": 50, "student_batch_size": 50, "teacher_args": [], "alphas": [0, 0.1],
        "temperatures": [1, 4], "seeds": 2, "analysis": True, "jobs": 2, "student_args": ["--threads", "1"],
        "matched_temperatures": [], "variant_arms": ["teacher_only_T", "logit_standardization"]}


def test_variant_settings_are_refused_where_they_cannot_apply():
    with pytest.raises(ValueError, match="variant_arms entries must be among"):
        S.load_config(overrides={"variant_arms": ["ttm"]})
    with pytest.raises(ValueError, match="repeats the grid's own variant"):
        S.load_config(overrides={"kd_variant": "teacher_only_T", "variant_arms": ["teacher_only_T"]})
    with pytest.raises(ValueError, match="cache_topk"):
        S.load_config(overrides={"cache_topk": 3, "variant_arms": ["logit_standardization"]})
    with pytest.raises(ValueError, match="vision task only"):
        S.load_config(preset="translation", overrides={"kd_variant": "teacher_only_T"})
    with pytest.raises(ValueError, match="kd_variant must be one of"):
        S.load_config(overrides={"kd_variant": "ttm"})


def test_arm_students_have_their_own_ids_flags_and_val_exports():
    cfg = S.load_config(overrides=dict(TINY))
    by = {r.run_id: r for r in S.build_plan(cfg)}
    ttm, lstd = by["student_a0.1_T4_s1_ttm"], by["student_a0.1_T4_s1_lstd"]
    assert ttm.args[ttm.args.index("--kd-variant") + 1] == "teacher_only_T" and "--logit-standardization" not in ttm.args
    assert "--logit-standardization" in lstd.args and "--kd-variant" not in lstd.args
    grid = by["student_a0.1_T4_s1"]
    assert "--kd-variant" not in grid.args and "--logit-standardization" not in grid.args
    assert ttm.deps == grid.deps  # the same teacher (cache)
    assert "export_student_a0.1_T4_s1_ttm_val" in by and "export_student_a0.1_T4_s1_ttm_train" not in by
    # variant_seeds: the arms train the grid's first N seeds only; the grid's runs keep their hashes
    few = {r.run_id: r for r in S.build_plan(S.load_config(overrides=dict(TINY, variant_seeds=1)))}
    assert "student_a0.1_T4_s0_ttm" in few and "student_a0.1_T4_s1_ttm" not in few
    assert "export_student_a0_T1_s1_lstd_val" not in few
    assert all(few[k].hash == by[k].hash for k in few)
    with pytest.raises(ValueError, match="variant_seeds must be between 1 and the number of seeds"):
        S.load_config(overrides=dict(TINY, variant_seeds=3))


@pytest.mark.slow
def test_tiny_study_with_variant_arms_reports_calibration_and_comparison(tmp_path):
    from lskd_core.study.tasks.vision import default_fashion_mnist_dir

    fashion = Path(default_fashion_mnist_dir())
    if not any((fashion / n).exists() for n in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")):
        pytest.skip(f"Fashion-MNIST not installed at {fashion} (apt-get install dataset-fashion-mnist)")
    study = tmp_path / "study"
    out = S.run_study(S.load_config(overrides=dict(TINY)), study, progress=False, echo=lambda s: None)
    assert out.ok, out.failed
    res = json.loads((study / "runs" / "student_a0.1_T4_s0_ttm" / "result.json").read_text())
    assert res["args"]["kd_variant"] == "teacher_only_T" and res["args"]["logit_standardization"] is False
    res = json.loads((study / "runs" / "student_a0_T1_s1_lstd" / "result.json").read_text())
    assert res["args"]["kd_variant"] == "standard" and res["args"]["logit_standardization"] is True
    results = json.loads((study / "report" / "results.json").read_text())
    assert results["calibration"]["status"] == "ok"
    assert len(results["calibration"]["students"]) == 3 * 2 * 2
    assert results["variants"]["status"] == "ok" and len(results["variants"]["arms"]) == 2
    assert all(len(a["cells"]) == 4 for a in results["variants"]["arms"])
    md = (study / "report" / "report.md").read_text()
    assert "## Calibration and selective prediction" in md and "## Temperature variants against the grid" in md
    assert "Calibration: the ECE" in md and "reliability_a0.1.png" in md
