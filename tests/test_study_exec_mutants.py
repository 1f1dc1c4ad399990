"""The study's scheduler, lock and launchers on hand-made cases: what a run records, which recorded
runs are adopted, what a queued dependent of a re-run input becomes, what a stop may signal. Written
against the survivors of mutation/study_exec.toml (docs/testing.md)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_study_launchers import _Detached, _fake_execute, _Queue

from lskd_core import study as S
from lskd_core.study import launchers as L
from lskd_core.study import lock as K
from lskd_core.study import runner as R


def _quiet(cfg, study, launcher, **kw):
    """run_study without a report, progress or messages (``kw`` overrides: report_only, echo, ...)."""
    return S.run_study(cfg, study, launcher=launcher, **{"report": False, "progress": False,
                                                         "echo": lambda s: None, **kw})


def _recorded(study, cfg, run_id, handle):
    """A run dir an earlier invocation left: its run config (this config) and its launch handle."""
    plan = {r.run_id: r for r in S.build_plan(cfg)}
    d = study / "runs" / run_id
    d.mkdir(parents=True)
    S.write_run_config(plan[run_id], study, cfg, [], {}, "study")
    (d / "launch.json").write_text(json.dumps(handle))
    return plan[run_id], d


_ONE_CELL = {"seeds": 1, "temperatures": [1], "analysis": False, "cache": False}


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
    cfg = S.load_config(overrides=_ONE_CELL)
    study = tmp_path.resolve()
    run, teacher = _recorded(study, cfg, "teacher_a0", {"launcher": "slurm", "run": "teacher_a0"})
    _fake_execute(run, teacher, ())
    la = _Detached(alive={"teacher_a0"})
    out = _quiet(cfg, study, la)
    # recorded by a SLURM runner: this detached launcher cannot poll it, so it neither adopts nor waits for it
    assert out.ok and la.adopted == [] and "teacher_a0" not in out.adopted


def test_stop_signals_no_group_of_pid_0_or_1_and_any_other(monkeypatch):
    sent = []
    monkeypatch.setattr(L, "_kill_group", lambda pid, sig: sent.append((pid, sig)))
    la = L.LocalLauncher()
    for pid in (0, -1, 1):  # pid 0 would be killpg(0): this runner's own process group; 1: init's
        la.stop({"launcher": "local", "pid": pid})
    la.stop({"launcher": "local"})
    assert sent == []
    # any other pid may be a run's: in a container whose runner is pid 1, its first run is often pid 2

    la.stop({"launcher": "local", "pid": 2})
    assert sent == [(2, signal.SIGTERM)]


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


# ------------------------------------------------------------------ the warm server, faked ---
class _FakeServer:
    """Stands in for WarmServer: records what it was made for and what it spawned."""

    made: list = []

    def __init__(self, python, env, cwd=None):
        self.python, self.env, self.closed, self.failed, self.usable = python, dict(env), False, None, True
        _FakeServer.made.append(self)

    def spawn(self, module, args, log_path, exit_path, cwd, script=None):
        self.spawned = (module, list(args), Path(log_path), Path(exit_path))
        return 4242 + len(_FakeServer.made)

    def close(self):
        self.closed = True


def _warm_argv(python):
    return [python, "-m", "vision_plugin.train", "--epochs", "1"]


def test_warm_start_off_never_makes_a_server(monkeypatch, tmp_path):
    monkeypatch.setattr(L, "WarmServer", _FakeServer)
    _FakeServer.made = []
    cold = L.LocalLauncher(warm_start=False)
    assert cold._start_warm(_warm_argv("/py/a"), {"X": "1"}, tmp_path / "log", None) is None
    assert _FakeServer.made == []
    warm = L.LocalLauncher(warm_start=True)
    assert warm._start_warm(_warm_argv("/py/a"), {"X": "1"}, tmp_path / "log", None) is not None
    assert [s.python for s in _FakeServer.made] == ["/py/a"]


@pytest.mark.parametrize("first,second", [("/py/b", "/py/a"), ("/py/a", "/py/b")])
def test_a_run_for_another_interpreter_or_environment_gets_its_own_server(monkeypatch, tmp_path, first, second):
    monkeypatch.setattr(L, "WarmServer", _FakeServer)
    _FakeServer.made = []
    la = L.LocalLauncher()
    env = {"X": "1"}
    la._start_warm(_warm_argv(first), env, tmp_path / "a.log", None)
    la._start_warm(_warm_argv(first), dict(env), tmp_path / "b.log", None)  # same interpreter and env: reused
    assert len(_FakeServer.made) == 1
    la._start_warm(_warm_argv(second), env, tmp_path / "c.log", None)  # another interpreter, either way round
    assert [s.python for s in _FakeServer.made] == [first, second] and _FakeServer.made[0].closed
    la._start_warm(_warm_argv(second), {"X": "2"}, tmp_path / "d.log", None)  # another environment
    assert len(_FakeServer.made) == 3 and _FakeServer.made[1].closed


def test_a_local_run_left_by_a_finished_runner_is_started_again_not_adopted(tmp_path):
    # the local launcher's runs end with their runner: a recorded handle without "ended" is not in flight
    cfg = S.load_config(overrides=_ONE_CELL)
    _recorded(tmp_path, cfg, "teacher_a0", {"launcher": "fake", "run": "teacher_a0"})
    fl = _FakeLocal()
    out = _quiet(cfg, tmp_path, fl)
    assert out.ok and out.adopted == [] and "teacher_a0" in fl.started


class _InstantRuns:
    """Launcher methods whose runs 'finish' at once with plausible outputs (mixed into a launcher class)."""

    name = "fake"

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        self.started.append(run.run_id)
        _fake_execute(run, Path(log_path).parent, ())
        return {"launcher": self.name, "rc": 0}

    def stop(self, handle):
        pass


class _FakeLocal(_InstantRuns, S.LocalLauncher):
    """A local launcher whose runs finish at once; handles of real processes are polled as usual."""

    def __init__(self):
        super().__init__(warm_start=False)
        self.started = []

    def poll(self, handle):
        return handle["rc"] if "rc" in handle else super().poll(handle)


# ----------------------------------------------------------------------- the scheduler ---
def test_adopted_orphans_count_against_the_job_limit(tmp_path):
    """Two local processes of a runner that died still run: with jobs = 1, nothing else starts until
    they have ended (adopt_orphans puts them in flight, beyond the limit)."""

    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1], "alphas": [0, 0.1, 0.2], "analysis": False,
                                   "cache": False, "jobs": 1})
    plan = {r.run_id: r for r in S.build_plan(cfg)}
    orphans = []
    for tid in ("teacher_a0", "teacher_a0.1"):
        d = tmp_path / "runs" / tid
        d.mkdir(parents=True)
        S.write_run_config(plan[tid], tmp_path, cfg, [], {}, "study")
        _fake_execute(plan[tid], d, ())  # its outputs are complete: an unknowable exit status lets them decide
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"], start_new_session=True)
        orphans.append(p)
        (d / "launch.json").write_text(json.dumps({"launcher": "fake", "pid": p.pid, "host": socket.gethostname(),
                                                   "proc_start": K.process_start(p.pid), "started": time.time()}))
    fl = _FakeLocal()
    fl.alive_at_start = []
    real_start = fl.start

    def start(run, argv, env, log_path, cwd=None, after=()):
        fl.alive_at_start.append(sum(p.poll() is None for p in orphans))
        return real_start(run, argv, env, log_path, cwd, after)

    fl.start = start
    try:
        out = _quiet(cfg, tmp_path, fl)
    finally:
        for p in orphans:
            p.wait(timeout=30)
    assert out.ok and sorted(out.adopted) == ["teacher_a0", "teacher_a0.1"]
    assert "teacher_a0.2" in fl.started and set(fl.alive_at_start) == {0}
    # the events log says which processes were waited for, not started
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    adopted = {e["run_id"]: e["handle"]["pid"] for e in events if e["event"] == "adopted"}
    assert adopted == {"teacher_a0": orphans[0].pid, "teacher_a0.1": orphans[1].pid}


def test_a_failed_teacher_stops_every_queued_run_behind_it_however_deep(tmp_path):
    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1, 2], "jobs": 100, "cache": False})
    plan = S.build_plan(cfg)
    q = _Queue(fail={"teacher_a0.1"})
    out = _quiet(cfg, tmp_path, q)
    behind = {r.run_id for r in plan if "a0.1" in r.run_id and r.run_id != "teacher_a0.1"}
    assert any(r.startswith("export_student") for r in behind)  # two levels behind the teacher
    assert set(q.stopped) == behind and set(out.blocked) == behind and not out.in_flight


def test_the_outcome_wall_time_is_the_invocations_duration(tmp_path):
    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1], "cache": False})
    t0 = time.time()
    out = _quiet(cfg, tmp_path, _Queue())
    assert 0.0 <= out.wall_time_s <= time.time() - t0 + 1e-3


def test_report_false_writes_no_report_and_report_true_does(tmp_path):
    cfg = S.load_config(overrides=_ONE_CELL)
    out = _quiet(cfg, tmp_path, _Queue())
    assert out.report_dir is None and not (tmp_path / "report").exists()
    again = _quiet(cfg, tmp_path, _Queue(), report=True)
    assert again.report_dir is not None and (again.report_dir / "report.md").is_file()
    wall = json.loads((again.report_dir / "results.json").read_text())["study_wall_time_s"]
    assert 0.0 <= wall <= again.wall_time_s + 1.0


def test_a_stale_dir_is_announced_with_where_it_went(tmp_path):
    cfg = S.load_config(overrides={**_ONE_CELL, "jobs": 100})
    assert _quiet(cfg, tmp_path, _Queue()).ok
    (tmp_path / "runs" / "teacher_a0" / "result.json").unlink()
    (tmp_path / "runs" / "teacher_a0" / "checkpoint.pth").unlink()
    said = []
    _quiet(cfg, tmp_path, _Queue(), echo=said.append)
    assert any("student_a0_T1_s0: stale" in s and "moved to" in s and "re-running" in s for s in said)


def test_report_only_names_a_corrupt_run_as_not_used(tmp_path):
    cfg = S.load_config(overrides=_ONE_CELL)
    assert _quiet(cfg, tmp_path, _Queue()).ok
    (tmp_path / "runs" / "student_a0_T1_s0" / "result.json").write_text("{not json")
    out = _quiet(cfg, tmp_path, _Queue(), report_only=True)
    (p,) = [p for p in out.problems if p["run_id"] == "student_a0_T1_s0"]
    assert p["event"] == "corrupt" and p["action"] == "not used (report-only)"
    assert out.failed["student_a0_T1_s0"].startswith("not done")


def test_report_only_collects_a_detached_run_that_ended_and_records_its_inputs(tmp_path):
    cfg = S.load_config(overrides=_ONE_CELL)
    study = tmp_path.resolve()
    plan = {r.run_id: r for r in S.build_plan(cfg)}
    assert _quiet(cfg, study, _Detached()).ok
    sdir = study / "runs" / "student_a0_T1_s0"
    rc = json.loads((sdir / "run_config.json").read_text())
    rc["inputs"] = {}  # as when the runner was stopped before it collected the run
    (sdir / "run_config.json").write_text(json.dumps(rc))
    (sdir / "launch.json").write_text(json.dumps({"launcher": "detached", "run": "student_a0_T1_s0"}))
    _quiet(cfg, study, _Detached(), report_only=True)
    rc = json.loads((sdir / "run_config.json").read_text())
    assert rc["inputs"] == {"teacher_a0": S.fingerprint(study / "runs" / "teacher_a0")}
    assert "ended" in json.loads((sdir / "launch.json").read_text())
    assert plan  # the plan the study ran


def test_a_lock_file_of_another_shape_is_named_as_unreadable(tmp_path):
    for text in ("[1, 2]", "null", "{\"host\": \"h\"}", "not json"):
        (tmp_path / K.LOCK_FILE).write_text(text)
        assert K._holder_text(tmp_path / K.LOCK_FILE) == "a process whose pid could not be read", text


class _DetachedStopping(_Detached):
    """A detached queue that can also stop the runs an earlier invocation started (handles without a job)."""

    def stop(self, handle):
        if "job" in handle:
            return super().stop(handle)
        self.stopped.append(handle["run"])
        self.alive.discard(handle["run"])


def test_an_adopted_run_behind_a_failed_input_is_stopped_too(tmp_path):
    """An export still running from an earlier invocation, whose student must run again behind a teacher
    that now fails: it was adopted before its student was queued, so only a second pass over the runs in
    flight finds it behind the blocked student."""
    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1], "alphas": [0, 0.1], "analysis": True,
                                   "cache": False, "jobs": 100})
    study = tmp_path.resolve()
    plan = {r.run_id: r for r in S.build_plan(cfg)}
    export = next(r for r in plan if r.startswith("export_student_a0.1_T1_s0"))
    d = study / "runs" / export
    d.mkdir(parents=True)
    S.write_run_config(plan[export], study, cfg, [], {}, "study")
    (d / "launch.json").write_text(json.dumps({"launcher": "detached", "run": export}))
    la = _DetachedStopping(alive={export})
    la.fail = {"teacher_a0.1"}
    out = _quiet(cfg, study, la)
    assert export in out.adopted and "teacher_a0.1" in out.failed
    assert export in la.stopped and export in out.blocked


def test_a_launcher_that_does_not_say_is_not_detached(tmp_path):
    """A user's own Launcher subclass that leaves ``detached`` alone: its runs end with the runner, so a
    handle it recorded earlier is not adopted (the run starts again)."""

    class Mine(_InstantRuns, L.Launcher):
        name = "mine"

        def __init__(self):
            self.started = []

        def poll(self, handle):
            return handle.get("rc", 0)  # a handle it recorded earlier reads as ended: never waited on forever

    cfg = S.load_config(overrides=_ONE_CELL)
    _recorded(tmp_path, cfg, "teacher_a0", {"launcher": "mine", "run": "teacher_a0"})
    la = Mine()
    out = _quiet(cfg, tmp_path, la)
    assert out.ok and out.adopted == [] and "teacher_a0" in la.started


def _progress_lines(text):

    return [(int(a), int(b)) for a, b in re.findall(r"\[study\] (\d+)/(\d+) runs done", text)]


def test_the_progress_count_ends_at_the_plans_size_whether_runs_ran_or_were_skipped(tmp_path, capsys):
    cfg = S.load_config(overrides=_ONE_CELL)
    n = len(S.build_plan(cfg))
    for _ in range(2):  # every run launched, then every run found done
        capsys.readouterr()
        assert _quiet(cfg, tmp_path, _Queue(), progress=True).ok
        lines = _progress_lines(capsys.readouterr().err)
        assert lines and lines[-1] == (n, n) and all(k <= n for k, _ in lines)


def test_a_failed_run_with_nothing_behind_it_is_not_ok(tmp_path):
    cfg = S.load_config(overrides=_ONE_CELL)
    leaf = next(r.run_id for r in S.build_plan(cfg) if r.kind == "student")  # nothing runs behind it here
    out = _quiet(cfg, tmp_path, _Queue(fail={leaf}))
    assert out.failed.keys() == {leaf} and out.blocked == [] and not out.ok


def test_sacct_lines_give_each_jobs_state_exit_code_start_and_end():
    from lskd_core.study.slurm_states import parse_sacct

    out = ("17|COMPLETED|0:0|2026-12-07T10:00:00|2026-12-07T10:05:00\n18|CANCELLED by 0|0:15|Unknown|2026-12-07T10:06:00\n"
           "19|RUNNING|0:0\n20|PENDING\n")
    got = parse_sacct(out)
    assert (got["19"].state, got["19"].start, got["19"].end) == ("RUNNING", "", "") and "20" not in got
    assert (got["17"].state, got["17"].exit_code, got["17"].start, got["17"].end) == (
        "COMPLETED", 0, "2026-12-07T10:00:00", "2026-12-07T10:05:00")
    assert (got["18"].state, got["18"].end) == ("CANCELLED", "2026-12-07T10:06:00")


def test_stop_sends_sigterm_first(tmp_path):

    la = L.LocalLauncher(warm_start=False)
    h = la.start(S.Run(run_id="r", kind="student", program=("exe", sys.executable), args=[]),
                 [sys.executable, "-c", "import time; time.sleep(60)"], {}, tmp_path / "log")
    proc = la._procs[h["pid"]]
    t0 = time.time()
    la.stop(h)
    assert proc.returncode == -signal.SIGTERM and time.time() - t0 < 10  # ended by TERM, not KILL after 20 s


class _EndedUnfinished(_Detached):
    """Runs an earlier invocation started ended with a failure (recorded handles poll 1)."""

    def poll(self, handle):
        return 1 if "job" not in handle else super().poll(handle)


def test_an_adopted_run_that_ended_unfinished_is_shown_and_started_again(tmp_path):
    cfg = S.load_config(overrides=_ONE_CELL)
    study = tmp_path.resolve()
    _, d = _recorded(study, cfg, "teacher_a0", {"launcher": "detached", "run": "teacher_a0"})
    (d / "stdout.log").write_text("Traceback ...\nRuntimeError: CUDA out of memory\n")
    said = []
    la = _EndedUnfinished()
    out = _quiet(cfg, study, la, echo=said.append)
    assert out.ok and "teacher_a0" in la.after  # started again by this invocation
    events = [json.loads(x) for x in (study / "events.jsonl").read_text().splitlines()]
    (ev,) = [e for e in events if e["event"] == "ended-unfinished"]
    assert ev["run_id"] == "teacher_a0" and ev["log"] == str(d / "stdout.log") and ev["action"] == "re-run"
    assert any("ended unfinished" in s and "CUDA out of memory" in s for s in said)


def test_an_adopted_exports_wall_time_counts_from_its_recorded_start(tmp_path):
    cfg = S.load_config(overrides={**_ONE_CELL, "analysis": True})
    study = tmp_path.resolve()
    assert _quiet(cfg, study, _Detached()).ok
    export = next(r.run_id for r in S.build_plan(cfg) if r.kind == "export")
    d = study / "runs" / export
    (d / "result.json").unlink()  # as if the earlier runner died before collecting it
    (d / "launch.json").write_text(json.dumps({"launcher": "detached", "run": export, "started": time.time() - 5}))
    out = _quiet(cfg, study, _Detached(alive={export}))
    assert export in out.adopted
    wall = json.loads((d / "result.json").read_text())["wall_time_s"]
    assert 4.0 <= wall <= 60.0
    done = [json.loads(x) for x in (study / "events.jsonl").read_text().splitlines()]
    (ev,) = [e for e in done if e["event"] == "done" and e["run_id"] == export and "resumed" in e][-1:]
    assert ev["resumed"] is False  # this invocation only waited for it


@pytest.mark.parametrize("host", ["another-host.example", "", socket.gethostname() + "-2", "~"])
def test_a_handle_from_another_host_is_not_seen_as_running_here(host):
    la = L.LocalLauncher(warm_start=False)
    # a live pid on this machine, recorded on another host (names sorting before and after this one's):
    # this launcher cannot see that process
    assert la.poll({"launcher": "local", "host": host, "pid": os.getpid()}) == L.LOST


def test_a_handle_without_a_pid_is_not_running(tmp_path):
    # a damaged launch record of this host: no pid to look at (pid 1, init, is always alive)
    assert L.LocalLauncher(warm_start=False).poll({"launcher": "local", "host": socket.gethostname()}) == L.LOST


def test_a_process_owned_by_another_user_is_alive(monkeypatch):
    # kill(pid, 0) on another user's process raises PermissionError: it exists
    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(K.os, "kill", kill)
    assert K.process_alive(os.getpid()) is True


def test_process_alive_refuses_what_is_not_a_pid():
    assert K.process_alive(None) is False and K.process_alive("abc") is False and K.process_alive(0) is False


def test_runs_started_fresh_are_not_given_resume(tmp_path):
    cfg = S.load_config(overrides=_ONE_CELL)
    assert _quiet(cfg, tmp_path, _Queue()).ok
    launches = [json.loads(x) for x in (tmp_path / "launches.jsonl").read_text().splitlines()]
    assert launches and all(x["resume"] is False and "--resume" not in x["argv"] for x in launches)


def test_report_only_without_a_report_writes_none(tmp_path):
    cfg = S.load_config(overrides=_ONE_CELL)
    assert _quiet(cfg, tmp_path, _Queue()).ok
    t0 = time.time()
    out = _quiet(cfg, tmp_path, _Queue(), report_only=True)
    assert out.report_dir is None and not (tmp_path / "report").exists()
    assert 0.0 <= out.wall_time_s <= time.time() - t0 + 1.0 and len(out.skipped) == len(S.build_plan(cfg))


def test_a_launcher_must_say_how_it_starts_polls_and_stops_runs():
    class Incomplete(L.Launcher):
        name = "incomplete"

        def poll(self, handle):
            return 0

        def stop(self, handle):
            pass

    with pytest.raises(TypeError, match="start"):
        Incomplete()


def test_report_only_names_a_never_started_run_by_its_state(tmp_path):
    cfg = S.load_config(overrides=_ONE_CELL)
    out = _quiet(cfg, tmp_path, _Queue(), report_only=True)
    assert out.failed["teacher_a0"] == "not done: new"


# ------------------------------------------------------------- waiting, notes, interrupts ---
class _SlowTeachers(_InstantRuns, S.Launcher):
    """Teachers stay running for ``polls`` polls; every other run finishes at once. Records, at each
    poll of a running teacher, how many times the runner had slept by then."""

    def __init__(self, polls, sleeps):
        self.started, self.polls, self.sleeps, self.seen = [], polls, sleeps, []

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        handle = super().start(run, argv, env, log_path, cwd, after)
        return {**handle, "left": self.polls} if run.kind == "teacher" else handle

    def poll(self, handle):
        if handle.get("left", 0) > 0:
            handle["left"] -= 1
            self.seen.append(len(self.sleeps))
            return None
        return handle["rc"]


def test_the_runner_sleeps_between_polls_while_nothing_changes(monkeypatch, tmp_path):
    """A teacher still running and its students waiting for it: nothing can change until the next poll,
    so the runner sleeps between polls instead of spinning (the students staying pending is no progress)."""
    sleeps = []
    monkeypatch.setattr(R.time, "sleep", sleeps.append)
    cfg = S.load_config(overrides={**_ONE_CELL, "alphas": [0], "jobs": 100})
    la = _SlowTeachers(polls=4, sleeps=sleeps)
    assert _quiet(cfg, tmp_path, la).ok
    # the launch was progress: no sleep before the second poll; from then on, one sleep per idle pass
    assert la.seen == [0, 0, 1, 2]


def test_the_cold_start_note_is_said_once_however_many_launches(tmp_path):
    cfg = S.load_config(overrides={**_ONE_CELL, "jobs": 1})
    fl = _FakeLocal()
    fl.warm_note = "the warm server could not start (a made-up reason)"
    said = []
    out = _quiet(cfg, tmp_path, fl, echo=said.append)
    assert out.ok and len(fl.started) == 4  # four launches, one at a time
    assert [s for s in said if "made-up reason" in s] == [f"[study] runs start cold (no warm start): {fl.warm_note}"]


def test_a_run_of_another_config_does_not_stop_adoption_of_the_runs_after_it(tmp_path):
    cfg = S.load_config(overrides=_ONE_CELL)
    study = tmp_path.resolve()
    _, first = _recorded(study, cfg, "teacher_a0", {"launcher": "detached", "run": "teacher_a0"})
    rc_path = first / "run_config.json"
    rc_path.write_text(json.dumps({**json.loads(rc_path.read_text()), "hash": "another-config"}))
    run, second = _recorded(study, cfg, "teacher_a0.1", {"launcher": "detached", "run": "teacher_a0.1"})
    _fake_execute(run, second, ())
    la = _DetachedStopping(alive={"teacher_a0", "teacher_a0.1"})
    out = _quiet(cfg, study, la)
    # the first (earlier in the plan) is another config's: its job is stopped, the run started afresh;
    # the second is this config's, still in flight: adopted, not started again
    assert out.ok and la.stopped == ["teacher_a0"] and out.adopted == ["teacher_a0.1"]
    assert "teacher_a0" in out.launched and "teacher_a0.1" not in out.launched
    events = [json.loads(x) for x in (study / "events.jsonl").read_text().splitlines()]
    assert [(e["run_id"], e["handle"]["run"]) for e in events if e["event"] == "adopted"] == [("teacher_a0.1",) * 2]


class _InterruptedQueue(_Queue):
    """Runs never finish; the third poll is a Ctrl-C. ``detached`` as the test sets it."""

    def __init__(self, detached):
        super().__init__()
        self.detached, self.polls = detached, 0

    def poll(self, handle):
        self.polls += 1
        if self.polls == 3:
            raise KeyboardInterrupt
        return None

    def on_interrupt(self, echo):
        echo(f"[queue] told of the interrupt, detached={self.detached}")


@pytest.mark.parametrize("detached", [False, True])
def test_ctrl_c_stops_a_local_launchers_runs_and_leaves_a_detached_ones_running(tmp_path, detached):
    cfg = S.load_config(overrides={**_ONE_CELL, "jobs": 100})
    q = _InterruptedQueue(detached)
    said = []
    with pytest.raises(KeyboardInterrupt):
        _quiet(cfg, tmp_path, q, echo=said.append)
    # the launcher is told (SLURM offers to cancel its jobs), then the user
    assert said[-2:] == [f"[queue] told of the interrupt, detached={detached}",
                         "[study] interrupted: finished runs are kept and unfinished training runs resume from "
                         "their last checkpoint on the next invocation"]
    queued = sorted(r.run_id for r in S.build_plan(cfg))  # a queueing launcher had every run queued
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    ended = {e["run_id"]: e["event"] for e in events if e["event"] in ("interrupted", "left-running")}
    assert sorted(ended) == queued
    if detached:  # a SLURM job outlives its runner: the next invocation collects it
        assert q.stopped == [] and set(ended.values()) == {"left-running"}
    else:
        assert sorted(q.stopped) == queued and set(ended.values()) == {"interrupted"}


def test_waiting_for_a_process_that_never_ends_gives_up_at_its_deadline(monkeypatch):
    ticks = iter(range(1000, 11_000))  # one second per reading, never exactly on the deadline
    monkeypatch.setattr(L, "time", type("Clock", (), {"time": staticmethod(lambda: float(next(ticks))),
                                                      "sleep": staticmethod(lambda s: None)}))
    monkeypatch.setattr(L, "process_alive", lambda pid, start=None: True)
    assert L._wait_gone(123, 2.5) is False
    assert next(ticks) < 1010  # gave up a few readings past its start + 2.5 s, not at the clock's end


def test_waiting_for_a_process_that_ends_before_the_deadline_says_it_is_gone(monkeypatch):
    ticks = iter(range(1000, 11_000))
    monkeypatch.setattr(L, "time", type("Clock", (), {"time": staticmethod(lambda: float(next(ticks))),
                                                      "sleep": staticmethod(lambda s: None)}))
    alive = iter([True, True, True, False])  # ends at the fourth look, about 3 s in: within 20 s
    monkeypatch.setattr(L, "process_alive", lambda pid, start=None: next(alive))
    assert L._wait_gone(123, 20.0) is True


@pytest.mark.parametrize("recorded_pid,want", [(4243, L.LOST), (4241, L.LOST), (4242, 3)])
def test_a_warm_runs_exit_record_is_read_only_when_it_names_that_runs_pid(tmp_path, recorded_pid, want):
    # a stale exit file (another run's, from a reused path) must not end this run with its status
    exit_file = tmp_path / "exit.json"
    exit_file.write_text(json.dumps({"pid": recorded_pid, "returncode": 3}))
    la = L.LocalLauncher(warm_start=False)
    assert la.poll({"launcher": "local", "pid": 4242, "exit_file": str(exit_file)}) == want


def test_a_warm_run_writes_its_log_where_asked_and_its_exit_record_beside_it(monkeypatch, tmp_path):
    monkeypatch.setattr(L, "WarmServer", _FakeServer)
    _FakeServer.made = []
    la = L.LocalLauncher()
    log = tmp_path / "runs" / "r" / "stdout.log"
    pid = la._start_warm(_warm_argv("/py/a"), {"X": "1"}, log, None)
    module, args, log_path, exit_path = _FakeServer.made[0].spawned
    assert (module, args) == ("vision_plugin.train", ["--epochs", "1"])
    assert log_path == log and exit_path == Path(f"{log}.exit.json") and la._warm[pid] == exit_path


class _Bar:
    """A progress bar that records being closed."""

    def __init__(self):
        self.closed = False

    def update(self, n=1):
        pass

    def write(self, msg):
        pass

    def set_postfix_str(self, s, refresh=False):
        pass

    def close(self):
        self.closed = True


class _RefusingQueue(_Queue):
    def check(self, runs, nproc=1):
        raise ValueError("bad launcher settings (made up)")


def test_a_launcher_that_refuses_its_settings_starts_nothing_and_leaves_no_bar_open(monkeypatch, tmp_path):
    bars = []
    monkeypatch.setattr(R, "make_bar", lambda total, enabled: bars.append(_Bar()) or bars[-1])
    q = _RefusingQueue()
    with pytest.raises(ValueError, match="made up"):
        _quiet(S.load_config(overrides=_ONE_CELL), tmp_path, q)
    assert q.jobs == {} and len(bars) == 1 and bars[0].closed


def test_waiting_for_a_process_that_has_ended_says_it_is_gone(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert L._wait_gone(p.pid, 5.0) is True
    assert L._wait_gone(os.getpid(), 0.1) is False  # this process: alive throughout


def test_a_file_system_without_locks_names_the_lock_file_and_the_remedy(monkeypatch, tmp_path):
    import errno
    import fcntl

    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)
    with pytest.raises(OSError) as got:
        K.StudyLock(tmp_path).acquire()
    exc = got.value
    assert (exc.errno, exc.filename) == (errno.ENOLCK, str(tmp_path / K.LOCK_FILE))
    assert exc.strerror == "No locks available (the study's lock; use an --out on a local disk)"
