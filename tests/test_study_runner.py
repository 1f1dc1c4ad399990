"""The study runner (lskd_core.study.runner, state, launchers).

Fast tests check the run-state rules on hand-made run directories and the scheduler with a fake
launcher. The slow test runs a tiny real study (Fashion-MNIST, a few hundred samples, one epoch,
real trainer and exporter processes) end to end, then re-runs it unchanged, with a corrupt run
directory and with a changed temperature list, counting the processes each invocation starts.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_STUDY

from lskd_core import study as S
from lskd_core.jsonio import num
from lskd_core.study.launchers import LOST
from lskd_core.study.tasks.vision import default_fashion_mnist_dir

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path(default_fashion_mnist_dir())


def _ids(plan):
    return [r.run_id for r in plan]


# ------------------------------------------------------------------------------------------------
# run states on hand-made directories
# ------------------------------------------------------------------------------------------------
def _fake_done(study: Path, run: S.Run, cfg, inputs=None, result=None):
    d = study / "runs" / run.run_id
    d.mkdir(parents=True, exist_ok=True)
    S.write_run_config(run, study, cfg, S.run_command(run, study, cfg), inputs or {}, "study")
    for out in run.outputs:
        (d / out).write_bytes(b"PK\x05\x06" + b"\0" * 18 if out.endswith(".npz") else b"weights")
    (d / "result.json").write_text(json.dumps(result or {"status": "done", "val_acc1": 50.0}))
    return d


def test_run_states(tmp_path):
    cfg = S.load_config(overrides={"seeds": 1, "cache": False, "temperatures": [1, 2, 3, 64]})  # students depend on the teacher itself
    plan = {r.run_id: r for r in S.build_plan(cfg)}
    teacher, student = plan["teacher_a0.1"], plan["student_a0.1_T2_s0"]
    assert S.inspect_run(teacher, tmp_path, {}).status == "new"
    d = _fake_done(tmp_path, teacher, cfg)
    assert S.inspect_run(teacher, tmp_path, {}).status == "done"
    fp = {"teacher_a0.1": S.fingerprint(d)}

    sd = _fake_done(tmp_path, student, cfg, inputs=fp)
    assert S.inspect_run(student, tmp_path, fp).status == "done"
    # the teacher was re-run since: the student is stale even though its config is unchanged
    assert S.inspect_run(student, tmp_path, {"teacher_a0.1": "other"}).status == "stale"
    # garbage result.json / run_config.json
    (sd / "result.json").write_text("{not json")
    st = S.inspect_run(student, tmp_path, fp)
    assert st.status == "corrupt" and "result.json" in st.reason
    (sd / "result.json").write_text(json.dumps({"status": "done"}))
    (sd / "run_config.json").write_text("[1, 2")
    assert S.inspect_run(student, tmp_path, fp).status == "corrupt"
    # done but the checkpoint is gone
    _fake_done(tmp_path, student, cfg, inputs=fp)
    (sd / "checkpoint.pth").unlink()
    st = S.inspect_run(student, tmp_path, fp)
    assert st.status == "corrupt" and "checkpoint.pth" in st.reason
    # killed mid-run: checkpoint, no result -> resume with --resume <run>/checkpoint.pth
    _fake_done(tmp_path, student, cfg, inputs=fp)
    (sd / "result.json").unlink()
    assert S.inspect_run(student, tmp_path, fp).status == "resume"
    argv = S.run_command(student, tmp_path, cfg, resume=True)
    assert argv[-2:] == ["--resume", str(sd / "checkpoint.pth")]
    # a different config made this directory
    other = {r.run_id: r for r in S.build_plan(S.load_config(overrides={"seeds": 1, "student_epochs": 9, "cache": False,
                                                                     "temperatures": [1, 2, 3, 64]}))}
    assert S.inspect_run(other[student.run_id], tmp_path, fp).status == "stale"


class _FakeLauncher(S.LocalLauncher):
    """Writes plausible outputs instead of training (tests the scheduler, not the trainer); its
    handles are JSON like a real launcher's and already finished."""

    def __init__(self, fail=()):
        super().__init__()
        self.started = []
        self.fail = set(fail)

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        run_dir = Path(log_path).parent
        assert run_dir.name == run.run_id
        self.started.append(run_dir.name)
        if run_dir.name in self.fail:
            return {"launcher": "fake", "rc": 1}
        if "vision_plugin.train" in argv:
            (run_dir / "checkpoint.pth").write_bytes(b"w")
            (run_dir / "result.json").write_text(json.dumps({"status": "done", "val_acc1": 80.0, "val_acc5": 99.0}))
        else:
            from lskd_core.features_io import save_features

            save_features(run_dir / "features.npz", np.zeros((4, 2), np.float32), np.array([0, 0, 1, 1]))
        return {"launcher": "fake", "rc": 0}

    def poll(self, handle):
        return handle["rc"]

    def stop(self, handle):
        pass


def test_scheduler_skips_done_blocks_dependents_of_failures(tmp_path):
    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1, 2], "cache": False})
    plan = S.build_plan(cfg)
    fl = _FakeLauncher(fail={"teacher_a0.1"})
    out = S.run_study(cfg, tmp_path, launcher=fl, report=False, progress=False, echo=lambda s: None)
    assert out.failed.keys() == {"teacher_a0.1"}
    blocked = {r.run_id for r in plan if "a0.1" in r.run_id and r.run_id != "teacher_a0.1"}
    assert set(out.blocked) == blocked
    assert set(fl.started) == {r.run_id for r in plan} - blocked
    # second invocation: only the failed teacher and what it blocked are started
    fl2 = _FakeLauncher()
    out2 = S.run_study(cfg, tmp_path, launcher=fl2, report=False, progress=False, echo=lambda s: None)
    assert out2.ok and set(fl2.started) == blocked | {"teacher_a0.1"}
    fl3 = _FakeLauncher()
    out3 = S.run_study(cfg, tmp_path, launcher=fl3, report=False, progress=False, echo=lambda s: None)
    assert out3.ok and fl3.started == [] and len(out3.skipped) == len(plan)


# ------------------------------------------------------------------------------------------------
# end to end on real data
# ------------------------------------------------------------------------------------------------
TINY = TINY_STUDY  # the tiny end-to-end study shared with the other launcher's tests (conftest)


def _launch_count(study: Path) -> int:
    p = study / S.LAUNCH_LOG
    return sum(1 for _ in p.open()) if p.exists() else 0


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _check_report(study: Path, cfg: S.StudyConfig) -> dict:
    rep = study / "report"
    res = json.loads((rep / "results.json").read_text())
    md = (rep / "report.md").read_text()
    for header in ("## Verdict", "## 1. Accuracy grid", "## 2. Diffusion index", "Table G.1",
                   "## 3. Teacher smoothness", "## 4. Penultimate-layer projections", "## 5. Soft outputs",
                   "## 6. Class-wise accuracy"):
        assert header in md, header
    # grid: every cell filled, equal to the run directories' own result.json
    grid = res["accuracy_grid"]
    assert grid["status"] == "ok"
    for c in grid["cells"]:
        assert c["n"] == len(cfg.seed_list)
        for s, top1 in zip(c["seeds"], c["top1"]):
            run = json.loads((study / "runs" / S.student_id(c["alpha"], c["temperature"], s) / "result.json").read_text())
            assert top1 == pytest.approx(run["val_acc1"])
        assert _finite(c["top1_mean"]) and _finite(c["top5_mean"])
        if c["alpha"] > 0:
            base = next(b for b in grid["cells"] if b["alpha"] == 0 and b["temperature"] == c["temperature"])
            assert c["compatible"] == (c["top1_mean"] >= base["top1_mean"])
    for t in grid["teachers"]:
        run = json.loads((study / "runs" / S.teacher_id(t["alpha"]) / "result.json").read_text())
        assert t["top1"] == pytest.approx(run["val_acc1"])
    # eta: both splits, both alphas, both set methods, every T2 > T1, finite numbers
    eta = res["eta"]
    assert eta["status"] == "ok", eta
    combos = {(t["alpha"], t["split"], t["t2"], t["sets"]) for t in eta["tables"]}
    want = {(a, sp, t2, m) for a in cfg.alphas for sp in ("train", "val") for t2 in cfg.temperatures[1:]
            for m in ("hierarchy", "feature")}
    assert combos == want
    for t in eta["tables"]:
        assert [r["target"] for r in t["rows"]] == cfg.target_classes
        for r in t["rows"]:
            assert all(_finite(r[k]) for k in ("eta_s1", "eta_s2", "eta_s1_pairwise", "eta_s2_pairwise"))
    assert len(eta["sets"]["agreement"]) == len(cfg.target_classes)
    assert all(0 <= a["s1"] <= 1 and 0 <= a["s2"] <= 1 for a in eta["sets"]["agreement"])
    # entropy (Table H.1): finite, within [0, ln K], increasing with T for each teacher
    ent = res["entropy"]
    assert ent["status"] == "ok", ent
    for _a, row in ent["table"].items():
        vals = [row[num(t)] for t in sorted(ent["temperatures"])]
        assert all(_finite(v) and -1e-6 <= v <= ent["max_entropy"] + 1e-6 for v in vals)
        assert all(x <= y + 1e-9 for x, y in zip(vals, vals[1:]))
    assert ent["pairs"]
    # figures exist and are PNGs
    for key in ("projection", "soft_output"):
        assert res[key]["status"] == "ok", res[key]
        png = rep / res[key]["png"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (rep / "accuracy_vs_T.png").is_file()
    # class-wise accuracy: val equals the run's val_per_class_acc (1 seed), train in [0, 100]
    cw = res["classwise"]
    assert cw["status"] == "ok"
    for r in cw["rows"]:
        run = json.loads((study / "runs" / S.student_id(r["alpha"], r["temperature"], cfg.first_seed)
                          / "result.json").read_text())
        for c in cw["targets"]:
            assert r["val"][str(c)] == pytest.approx(run["val_per_class_acc"][c])
            assert 0 <= r["train"][str(c)] <= 100
    v = res["verdict"]
    assert v["status"] == "ok" and v["text"]
    assert (v["best"]["alpha"], v["best"]["temperature"]) in {(c["alpha"], c["temperature"]) for c in grid["cells"]}
    return res


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    if not (FASHION / "train-images-idx3-ubyte.gz").exists() and not (FASHION / "train-images-idx3-ubyte").exists():
        pytest.skip(f"Fashion-MNIST not installed at {FASHION} (apt-get install dataset-fashion-mnist)")
    root = tmp_path_factory.mktemp("study")
    cfg_path = root / "tiny.json"
    cfg_path.write_text(json.dumps(TINY), encoding="utf-8")
    cfg = S.load_config(config_file=str(cfg_path))
    study = root / "out"
    out = S.run_study(cfg, study, progress=False)
    return cfg_path, cfg, study, out


@pytest.mark.slow
def test_tiny_study_end_to_end(tiny_study):
    cfg_path, cfg, study, out = tiny_study
    plan = S.build_plan(cfg)
    assert out.ok, (out.failed, out.blocked)
    assert sorted(out.launched) == sorted(_ids(plan))
    assert _launch_count(study) == len(plan)
    _check_report(study, cfg)

    # 1. unchanged re-run: no new process, the report is rewritten from the same runs
    again = S.run_study(cfg, study, progress=False)
    assert again.ok and again.launched == [] and _launch_count(study) == len(plan)
    assert sorted(again.skipped) == sorted(_ids(plan))

    # 2. --report-only through the CLI launches nothing either
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cp = subprocess.run([sys.executable, "-m", "lskd_core.study", "--config", str(cfg_path), "--out", str(study),
                         "--report-only"], capture_output=True, text=True, env=env, timeout=300)
    assert cp.returncode == 0, cp.stderr
    assert "report:" in cp.stdout and _launch_count(study) == len(plan)

    # 3. a corrupt run directory is reported, moved aside (not deleted) and re-run with its dependents
    victim = "student_a0.1_T3_s0"
    (study / "runs" / victim / "result.json").write_text("garbage{")
    fixed = S.run_study(cfg, study, progress=False, echo=lambda s: None)
    assert fixed.ok
    assert sorted(fixed.launched) == sorted([victim, f"export_{victim}_train", f"export_{victim}_val"])
    events = {p["run_id"]: p["event"] for p in fixed.problems}
    assert events == {victim: "corrupt", f"export_{victim}_train": "stale", f"export_{victim}_val": "stale"}
    aside = [p for p in (study / "runs").iterdir() if p.name.startswith(victim + ".corrupt-")]
    assert len(aside) == 1 and (aside[0] / "result.json").read_text() == "garbage{"
    res = _check_report(study, cfg)
    assert {p["run_id"] for p in res["problems"]} == set(events)

    # 4. a changed temperature list re-runs exactly the affected runs
    cfg2 = S.load_config(config_file=str(cfg_path), overrides={"temperatures": [1, 2]})
    before = _launch_count(study)
    changed = S.run_study(cfg2, study, progress=False)
    assert changed.ok
    new = {S.student_id(a, 2, 0) for a in cfg2.alphas}
    new |= {S.export_id(s, sp) for s in list(new) for sp in ("train", "val")}
    assert set(changed.launched) == new
    assert _launch_count(study) == before + len(new)
    _check_report(study, cfg2)


class _LostStatusLauncher(_FakeLauncher):
    """Runs end with an unknowable status (LOST), as when a warm server dies before recording it."""

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        handle = super().start(run, argv, env, log_path, cwd, after)
        return dict(handle, rc=LOST)


def test_unknowable_exit_status_lets_the_outputs_decide(tmp_path):
    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1, 2], "cache": False})
    plan = S.build_plan(cfg)
    la = _LostStatusLauncher(fail={"teacher_a0.1"})  # this one writes no outputs
    out = S.run_study(cfg, tmp_path, launcher=la, report=False, progress=False, echo=lambda s: None)
    assert set(out.failed) == {"teacher_a0.1"}  # no result.json: failed, whatever the status
    done = set(out.launched) - set(out.failed)
    assert {r.run_id for r in plan if "a0.1" not in r.run_id} <= done  # outputs complete: done
