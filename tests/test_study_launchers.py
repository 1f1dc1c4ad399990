"""Launchers and task backends of the study (lskd_core.study.launchers, lskd_core.study.tasks).

The local launcher runs real (tiny) child processes; queueing and detached launchers are fakes
that implement the interface, to check that the runner needs nothing else from a launcher.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_for_exit

from lskd_core import study as S
from lskd_core.study.launchers import LOST

ROOT = Path(__file__).resolve().parent.parent


def _dummy_run():
    return S.Run("r", "export", ("module", "x"), [])


def test_local_launcher_handle_is_json_and_reports_exit_status(tmp_path):
    la = S.LocalLauncher()
    log = tmp_path / "log.txt"
    h = la.start(_dummy_run(), [sys.executable, "-c", "print('hi'); raise SystemExit(3)"], dict(os.environ), log)
    assert json.loads(json.dumps(h)) == h  # what the runner records in launch.json
    assert h["launcher"] == "local" and h["log"] == str(log) and isinstance(h["pid"], int)
    assert wait_for_exit(la, h) == 3
    assert "hi" in log.read_text()
    # a handle reloaded by another invocation: the process is gone and its status unknowable
    assert S.LocalLauncher().poll(json.loads(json.dumps(h))) == LOST
    assert S.SubprocessLauncher is S.LocalLauncher
    assert S.LocalLauncher.queues_dependencies is False and S.LocalLauncher.detached is False


def test_local_launcher_stop_kills_the_process_group(tmp_path):
    la = S.LocalLauncher()
    # the child starts a grandchild; stop must end both (the run's whole process group)
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "print(p.pid, flush=True); time.sleep(60)")
    log = tmp_path / "log.txt"
    h = la.start(_dummy_run(), [sys.executable, "-c", code], dict(os.environ), log)
    t0 = time.time()
    while not log.read_text().strip() and time.time() - t0 < 20:
        time.sleep(0.05)
    grandchild = int(log.read_text().split()[0])
    # reloaded from disk while alive: still running
    assert S.LocalLauncher().poll(dict(h)) is None
    la.stop(h)
    assert la.poll(h) is not None
    t0 = time.time()
    while time.time() - t0 < 10:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("grandchild survived stop()")


def test_launcher_setting_is_validated():
    assert S.load_config(overrides={"launcher": "local"}).launcher == "local"
    with pytest.raises(ValueError, match="launcher"):
        S.load_config(overrides={"launcher": "carrier-pigeon"})


class _Queue(S.Launcher):
    """A batch queue in miniature: runs 'execute' on poll, after their dependencies; records `after`."""

    name = "queue"
    queues_dependencies = True
    detached = False

    def __init__(self, fail=()):
        self.jobs = {}
        self.after = {}
        self.stopped = []
        self.fail = set(fail)

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        job = len(self.jobs) + 1
        # handles recorded by an earlier invocation (no "job") are outside this miniature queue
        self.jobs[job] = {"run": run, "dir": Path(log_path).parent, "rc": None,
                          "deps": [a["job"] for a in after if "job" in a]}
        self.after[run.run_id] = [self.jobs[a["job"]]["run"].run_id if "job" in a else a["run"] for a in after]
        return {"launcher": self.name, "job": job, "log": str(log_path), "started": time.time()}

    def poll(self, handle):
        j = self.jobs[handle["job"]]
        if j["rc"] is None and all(self.jobs[d]["rc"] == 0 for d in j["deps"]):
            j["rc"] = _fake_execute(j["run"], j["dir"], self.fail)
        return j["rc"]

    def stop(self, handle):
        self.stopped.append(self.jobs[handle["job"]]["run"].run_id)
        self.jobs[handle["job"]]["rc"] = -15


def _fake_execute(run, run_dir, fail):
    if run.run_id in fail:
        return 1
    if run.kind in ("teacher", "student"):
        (run_dir / "checkpoint.pth").write_bytes(b"w")
        (run_dir / "result.json").write_text(json.dumps({"status": "done", "val_acc1": 80.0, "val_acc5": 99.0}))
    else:
        from lskd_core.features_io import save_features

        save_features(run_dir / "features.npz", np.zeros((4, 2), np.float32), np.array([0, 0, 1, 1]))
    return 0


def test_queueing_launcher_gets_dependencies_and_orphans_are_stopped(tmp_path):
    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1, 2], "jobs": 100, "cache": False})
    plan = S.build_plan(cfg)
    q = _Queue()
    out = S.run_study(cfg, tmp_path, launcher=q, report=False, progress=False, echo=lambda s: None)
    assert out.ok and sorted(out.launched) == sorted(r.run_id for r in plan)
    # every dependent was queued behind its dependency's handle, before that dependency finished
    assert q.after["student_a0.1_T2_s0"] == ["teacher_a0.1"]
    assert q.after["export_student_a0_T1_s0_train"] == ["student_a0_T1_s0"]
    # inputs recorded once the dependencies had finished: a second invocation skips everything
    rc = json.loads((tmp_path / "runs" / "student_a0.1_T2_s0" / "run_config.json").read_text())
    assert rc["inputs"]["teacher_a0.1"] == S.fingerprint(tmp_path / "runs" / "teacher_a0.1")
    launch = json.loads((tmp_path / "runs" / "student_a0.1_T2_s0" / "launch.json").read_text())
    assert launch["launcher"] == "queue" and isinstance(launch["job"], int)
    again = S.run_study(cfg, tmp_path, launcher=_Queue(), report=False, progress=False, echo=lambda s: None)
    assert again.ok and again.launched == [] and len(again.skipped) == len(plan)
    # a failing teacher: its queued dependents are stopped and counted as blocked
    q2 = _Queue(fail={"teacher_a0.1"})
    bad = S.run_study(S.load_config(overrides={"seeds": 1, "temperatures": [1, 2], "jobs": 100, "teacher_lr": 0.01,
                                         "cache": False}),
                      tmp_path / "b", launcher=q2, report=False, progress=False, echo=lambda s: None)
    dependents = {r.run_id for r in plan if "a0.1" in r.run_id and r.run_id != "teacher_a0.1"}
    assert set(bad.failed) == {"teacher_a0.1"} and set(bad.blocked) == dependents
    assert set(q2.stopped) == dependents and not set(bad.launched) & dependents


class _Detached(_Queue):
    name = "detached"
    detached = True

    def __init__(self, alive=()):
        super().__init__()
        self.alive = set(alive)
        self.adopted = []

    def poll(self, handle):
        if "job" not in handle:  # recorded by an earlier invocation
            if handle["run"] in self.alive:
                self.alive.discard(handle["run"])  # 'finishes' now
                self.adopted.append(handle["run"])
                return None
            return 0
        return super().poll(handle)


def test_detached_launcher_adopts_runs_left_in_flight(tmp_path):
    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1], "analysis": False, "cache": False})
    study = tmp_path.resolve()
    teacher = study / "runs" / "teacher_a0"
    teacher.mkdir(parents=True)
    plan = {r.run_id: r for r in S.build_plan(cfg)}
    S.write_run_config(plan["teacher_a0"], study, cfg, [], {}, "study")
    (teacher / "launch.json").write_text(json.dumps({"launcher": "detached", "run": "teacher_a0"}))
    # the earlier invocation's job 'finishes' while this one waits for it: its outputs appear
    _fake_execute(plan["teacher_a0"], teacher, ())
    la = _Detached(alive={"teacher_a0"})
    out = S.run_study(cfg, study, launcher=la, report=False, progress=False, echo=lambda s: None)
    assert out.ok and la.adopted == ["teacher_a0"]
    assert "teacher_a0" not in la.after  # not started again
    assert set(la.after) == set(plan) - {"teacher_a0"}


# ------------------------------------------------------------------------------------------------
# task backends
# ------------------------------------------------------------------------------------------------
def test_task_registry():
    assert S.get_task("vision").name == "vision" and S.get_task("translation").name == "translation"
    with pytest.raises(ValueError, match="task"):
        S.get_task("audio")
    v, t = S.get_task("vision"), S.get_task("translation")
    assert v.metric_run("student_a0_T1_s0") == "student_a0_T1_s0"
    assert t.metric_run("student_a0_T1_s0") == "bleu_student_a0_T1_s0"
    assert v.analyses == {"eta", "entropy", "projection", "soft_output", "classwise", "calibration"}
    assert t.analyses == {"token_entropy", "token_eta"}  # per target token (issue 18)


def test_runner_and_report_do_not_branch_on_the_task():
    files = list((ROOT / "lskd_core" / "report").glob("*.py")) + [ROOT / "lskd_core" / "study" / f
                                                                  for f in ("runner.py", "state.py", "launchers.py")]
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert not re.search(r"""task\W*(==|!=|in)\W*["'(]""", text), f
        assert '"translation"' not in text and "'translation'" not in text, f


def test_python_m_and_help():
    cp = subprocess.run([sys.executable, "-m", "lskd_core.study", "--help"], capture_output=True, text=True,
                        cwd=ROOT, timeout=120)
    assert cp.returncode == 0 and "--print-commands" in cp.stdout and "--report-only" in cp.stdout
    cp = subprocess.run([sys.executable, "-m", "lskd_core.study", "--seeds", "0"], capture_output=True, text=True,
                        cwd=ROOT, timeout=120)
    assert cp.returncode == 2 and cp.stderr.strip().splitlines() == ["error: seeds must be >= 1, got 0"]
