"""The study's ``feature_kd`` setting (the paper's Table B.5): validation, the plan (live teachers,
the trainer's flags, hashes), the report's Table B.5 section and the verdict's scope, and a CPU-sized
Fashion-MNIST study run with ``--set feature_kd=overhaul``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from conftest import TINY_STUDY, needs_fashion_mnist, run_main, synthetic_study, well_formed_report

from lskd_core import study as S
from lskd_core.report import write_report
from lskd_core.report.feature_kd import scope_verdict
from lskd_core.study.tasks.vision_checks import feature_kd_model_problem


def _cfg(**over):
    base = {"seeds": 2, "temperatures": [1, 3], "alphas": [0, 0.1]}
    return S.load_config(overrides={**base, **over})


# --------------------------------------------------------------------------- settings


def test_setting_values_and_one_line_errors():
    assert _cfg().feature_kd is None
    assert _cfg(feature_kd="none").feature_kd is None  # TOML has no null
    cfg = _cfg(feature_kd="overhaul", feature_kd_weight=1e-3)
    assert (cfg.feature_kd, cfg.feature_kd_weight) == ("overhaul", 1e-3)
    for over, needle in (({"feature_kd": "fitnets"}, r"feature_kd must be one of \['overhaul'\]"),
                         ({"feature_kd_weight": 1e-3}, "no effect without feature_kd"),
                         ({"feature_kd": "overhaul", "feature_kd_weight": 0}, "feature_kd_weight must be"),
                         ({"feature_kd": "overhaul", "feature_kd_weight": "x"}, "feature_kd_weight must be")):
        with pytest.raises(ValueError, match=needle):
            _cfg(**over)
    with pytest.raises(ValueError, match="vision task only"):
        S.load_config(preset="translation", overrides={"feature_kd": "overhaul"})


def test_model_families_are_checked_up_front():
    ok = _cfg(feature_kd="overhaul")
    assert feature_kd_model_problem(ok) is None  # the demo's lskd_cnn_t -> lskd_cnn_s
    assert feature_kd_model_problem(dataclasses.replace(ok, teacher_model="resnet50", student_model="resnet18")) is None
    assert "no known feature positions for student_model 'mobilenet_v2'" in feature_kd_model_problem(
        dataclasses.replace(ok, student_model="mobilenet_v2"))
    assert "different numbers of stages" in feature_kd_model_problem(dataclasses.replace(ok, teacher_model="resnet50"))
    assert feature_kd_model_problem(dataclasses.replace(ok, feature_kd=None, student_model="mobilenet_v2")) is None


def test_study_cli_refuses_a_model_without_positions_in_one_line(tmp_path):
    from lskd_core.study.cli import main

    for extra, needle in ((["--student-model", "mobilenet_v2"], "no known feature positions for student_model"),
                          (["--set", "feature_kd=fitnets"], "feature_kd must be one of"),
                          (["--teacher-model", "resnet50"], "different numbers of stages")):
        argv = ["--out", tmp_path / "s", "--print-commands", "--set", "feature_kd=overhaul", *extra]
        code, out, err = run_main(main, argv)
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_plan_students_run_their_teacher_live_with_the_feature_kd_flags():
    cfg = _cfg(feature_kd="overhaul", feature_kd_weight=1e-3, matched_temperatures=[1])
    assert cfg.cache  # the preset's cache is on ...
    plan = S.build_plan(cfg)
    assert not [r for r in plan if r.kind == "cache"]  # ... but no cache runs: feature KD needs the live teacher
    students = [r for r in plan if r.kind == "student"]
    assert students and any(r.run_id.startswith("matched_") for r in students)
    for r in students:
        a = r.args
        assert "--teacher-cache" not in a and a[a.index("--teacher") + 1] == cfg.teacher_model
        assert a[a.index("--teacher-ckpt") + 1].endswith("/checkpoint.pth")
        assert a[a.index("--feature-kd") + 1] == "overhaul" and a[a.index("--feature-kd-weight") + 1] == "0.001"
        assert not r.info["cached"] and r.deps[0].startswith("teacher_")
    plain = [r for r in S.build_plan(_cfg()) if r.kind == "student"]
    assert all("--feature-kd" not in r.args for r in plain)
    # the weight defines the students (and their exports) only
    before = {r.run_id: r.hash for r in plan}
    after = {r.run_id: r.hash for r in S.build_plan(dataclasses.replace(cfg, feature_kd_weight=5e-4))}
    changed = {k for k in before if before[k] != after[k]}
    assert {r.run_id for r in students} <= changed
    kinds = {r.run_id: (r.kind, r.info.get("role")) for r in plan}
    assert not {k for k in changed if kinds[k] in (("teacher", None), ("match", None), ("export", "teacher"))}


# --------------------------------------------------------------------------- report


def _set_feature_kd(study: Path) -> None:
    path = study / "study.json"
    manifest = json.loads(path.read_text())
    manifest["config"]["feature_kd"] = "overhaul"
    path.write_text(json.dumps(manifest))


def test_report_has_table_b5_with_intervals_and_a_scoped_verdict(tmp_path):
    accs = {("student", 0.1, 1, 0): 80.0, ("student", 0.1, 1, 1): 82.0, ("student", 0.1, 3, 0): 75.0,
            ("student", 0.1, 3, 1): 76.0}
    synthetic_study(tmp_path, accs)
    _set_feature_kd(tmp_path)
    out = write_report(tmp_path)
    res = json.loads((out / "results.json").read_text())
    sec = res["feature_kd"]
    assert sec["status"] == "ok" and sec["method"] == "overhaul"
    cell = next(c for c in sec["cells"] if c["alpha"] == 0.1 and c["temperature"] == 1)
    assert cell["top1_mean"] == pytest.approx(81.0)
    lo, hi = cell["top1_interval"]["ci"]
    from conftest import t_ci
    assert (lo, hi) == pytest.approx(t_ci([80.0, 82.0]))  # the textbook t interval over the two seeds
    hot = next(c for c in sec["cells"] if c["alpha"] == 0.1 and c["temperature"] == 3)
    assert hot["eta_s1"] is not None and hot["eta_s1"]["ci"] is not None  # eta T=1 -> 3 over seeds
    md = well_formed_report(out)
    assert "## Feature distillation + KD (Table B.5)" in md
    assert "81.00 [" in md and "eta_S1 / eta_S2 (%) from T = 1" in md
    verdict = md.split("## Verdict", 1)[1].split("##", 1)[0]
    assert "feature KD + KD" in verdict
    assert res["verdict"]["scope"] == "feature_kd+kd"


def test_plain_kd_report_has_no_table_b5(tmp_path):
    synthetic_study(tmp_path, {})
    out = write_report(tmp_path)
    assert "Table B.5" not in (out / "report.md").read_text()
    res = json.loads((out / "results.json").read_text())
    assert res["feature_kd"]["status"] == "not-applicable" and "scope" not in res["verdict"]
    assert scope_verdict({"text": "x"}, {}) == {"text": "x"}


# --------------------------------------------------------------------------- a real CPU-sized study


@pytest.mark.slow
@needs_fashion_mnist
def test_fashion_mnist_study_with_set_feature_kd(tmp_path):
    from lskd_core.study.cli import main

    conf = tmp_path / "tiny.json"
    tiny = dict(TINY_STUDY, seeds=2, train_samples=200, val_samples=100, analysis_train_samples=None,
                analysis_val_samples=None)
    conf.write_text(json.dumps(tiny))
    study = tmp_path / "out"
    code, out, err = run_main(main, ["--config", conf, "--out", study, "--no-progress", "--set", "feature_kd=overhaul"])
    assert code == 0, err[-3000:]
    res = json.loads((study / "report" / "results.json").read_text())
    sec = res["feature_kd"]
    assert sec["status"] == "ok", sec
    assert all(c["top1_interval"]["ci"] is not None for c in sec["cells"])
    assert any(c["eta_s1"] is not None for c in sec["cells"])
    md = (study / "report" / "report.md").read_text()
    assert "## Feature distillation + KD (Table B.5)" in md and "feature KD + KD" in md
    metrics = (study / "runs" / S.student_id(0.1, 3, 1) / "metrics.jsonl").read_text().splitlines()
    assert json.loads(metrics[0])["args"]["feature_kd"] == "overhaul"
    assert json.loads(metrics[1])["train_feature_kd_loss"] > 0
    assert not (study / "runs" / "cache_teacher_a0").exists()
