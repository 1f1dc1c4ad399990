"""The study's scheduler, lock and launchers on hand-made cases: what a run records, which recorded
runs are adopted, what a queued dependent of a re-run input becomes, what a stop may signal. Written
against the survivors of mutation/study_exec.toml (docs/testing.md)."""

from __future__ import annotations

import json
import threading
import time

from test_study_launchers import _Detached, _fake_execute, _Queue

from lskd_core import study as S
from lskd_core.study import launchers as L
from lskd_core.study import lock as K
from lskd_core.study import runner as R


def _quiet(cfg, study, launcher):
    return S.run_study(cfg, study, launcher=launcher, report=False, progress=False, echo=lambda s: None)


def test_a_runs_recorded_wall_time_is_its_own_duration(tmp_path):
    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1, 2], "cache": False})
    t0 = time.time()
    out = _quiet(cfg, tmp_path, _Queue())
    elapsed = time.time() - t0
    exports = [r for r in out.launched if r.startswith("export_")]  # the runs whose result.json the runner writes
    assert exports
    for rid in exports:
        wall = json.loads((tmp_path / "runs" / rid / "result.json").read_text())["wall_time_s"]
        assert 0.0 <= wall <= elapsed + 1.0, (rid, wall)


def test_a_dependent_queued_behind_a_re_run_input_is_moved_aside_as_stale(tmp_path):
    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1, 2], "jobs": 100, "cache": False})
    assert _quiet(cfg, tmp_path, _Queue()).ok
    teacher = tmp_path / "runs" / "teacher_a0.1"
    (teacher / "result.json").unlink()  # the teacher must run again
    (teacher / "checkpoint.pth").unlink()
    out = _quiet(cfg, tmp_path, _Queue())
    assert out.ok and "teacher_a0.1" in out.launched
    stale = {p["run_id"]: p for p in out.problems if p.get("event") == "stale"}
    # its old outputs predate the teacher being re-run: kept aside, never reused in place
    assert "student_a0.1_T2_s0" in stale and "being re-run" in stale["student_a0.1_T2_s0"]["reason"]
    assert list((tmp_path / "runs").glob("student_a0.1_T2_s0.stale-*"))


def test_a_run_another_launcher_started_is_not_adopted(tmp_path):
    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1], "analysis": False, "cache": False})
    study = tmp_path.resolve()
    plan = {r.run_id: r for r in S.build_plan(cfg)}
    teacher = study / "runs" / "teacher_a0"
    teacher.mkdir(parents=True)
    S.write_run_config(plan["teacher_a0"], study, cfg, [], {}, "study")
    (teacher / "launch.json").write_text(json.dumps({"launcher": "slurm", "run": "teacher_a0"}))
    _fake_execute(plan["teacher_a0"], teacher, ())
    la = _Detached(alive={"teacher_a0"})
    out = _quiet(cfg, study, la)
    # recorded by a SLURM runner: this detached launcher cannot poll it, so it neither adopts nor waits for it
    assert out.ok and la.adopted == [] and "teacher_a0" not in out.adopted


def test_stopping_a_handle_without_a_real_pid_signals_nothing(monkeypatch):
    sent = []
    monkeypatch.setattr(L, "_kill_group", lambda pid, sig: sent.append((pid, sig)))
    la = L.LocalLauncher()
    for pid in (0, -1):  # pid 0 would be killpg(0): this runner's own process group
        la.stop({"launcher": "local", "pid": pid})
    la.stop({"launcher": "local"})
    assert sent == []


def test_the_sigterm_handler_is_skipped_off_the_main_thread():
    got = {}

    def body():
        try:
            got["prev"] = R._install_sigterm_handler()
        except Exception as exc:  # noqa: BLE001 - the test records what escaped
            got["error"] = exc

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert got == {"prev": None}


def test_a_proc_stat_line_is_read_from_its_twentieth_field(monkeypatch, tmp_path):
    # fields 3.. of /proc/<pid>/stat: exactly 20 of them is enough to reach the start time (field 22)
    line = "123 (a name) " + " ".join(f"f{i}" for i in range(3, 23)) + "\n"
    stat = tmp_path / "stat"
    stat.write_text(line)
    real_path = K.Path
    monkeypatch.setattr(K, "Path", lambda p: stat if p == "/proc/123/stat" else real_path(p))
    assert K.process_start(123) == "f22"


def test_a_released_lock_file_is_empty(tmp_path):
    with K.StudyLock(tmp_path):
        assert json.loads((tmp_path / K.LOCK_FILE).read_text())["pid"] > 0
    assert (tmp_path / K.LOCK_FILE).read_text() == ""  # nobody holds it now
