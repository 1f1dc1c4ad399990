"""The study's scheduler, lock, launchers and SLURM parsers on paths worked out by hand: the jobs limit
while runs are in flight, what a failed or blocked run records, a resumed or restarted run's files, runs
queued behind a re-run input, wait=False with a detached queue, the SIGTERM handler, what a stop signals
to a run that will not end, a warm run between its exit and its record, the lock file a new holder
writes, and squeue/sacct/scontrol/sbatch lines of the shapes SLURM prints. Written against survivors
of mutation/study_exec.toml (docs/testing.md): each test states a property a planted bug breaks."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_study_exec_mutants import _ONE_CELL, _Bar, _DetachedStopping, _quiet, _recorded
from test_study_launchers import _Detached, _fake_execute, _Queue

from lskd_core import study as S
from lskd_core.study import launchers as L
from lskd_core.study import lock as K
from lskd_core.study import runner as R
from lskd_core.study import slurm_states as ST
from lskd_core.study.state import write_launch

_TEACHER_ONLY = {**_ONE_CELL, "alphas": [0]}  # teacher_a0 and student_a0_T1_s0


def _events(study):
    return [json.loads(x) for x in (Path(study) / "events.jsonl").read_text().splitlines()]


def _launches(study):
    return [json.loads(x) for x in (Path(study) / "launches.jsonl").read_text().splitlines()]


_REAL_SLEEP = time.sleep


def _guard_sleep(monkeypatch, limit=100, real=False):
    """The runner's idle sleeps (``time.sleep``), recorded and, unless ``real``, not slept; a runner
    that would wait forever for runs that cannot change fails instead of hanging."""
    sleeps = []

    def sleep(s):
        sleeps.append(s)
        if len(sleeps) > limit:
            raise AssertionError("the runner kept waiting for runs that cannot change")
        if real:
            _REAL_SLEEP(min(s, 0.05))

    monkeypatch.setattr(R.time, "sleep", sleep)
    return sleeps


@pytest.fixture(autouse=True)
def _no_endless_waits(monkeypatch):
    _guard_sleep(monkeypatch, limit=400, real=True)


# ------------------------------------------------------------------------------- slurm_states ---
def test_squeue_skips_blank_lines_and_lines_without_a_job_id():
    got = ST.parse_squeue("\n|RUNNING|None\ngarbage\n  5|running|None  \n")
    assert list(got) == ["5"] and (got["5"].state, got["5"].reason) == ("RUNNING", "None")


def test_sacct_with_a_start_and_no_end_an_empty_state_and_no_job_id():
    got = ST.parse_sacct("21|RUNNING|0:0|2026-12-07T10:00:00\n22||\n|FAILED|1:0\n")
    assert sorted(got) == ["21", "22"]  # a line without a job id names no job
    assert (got["21"].start, got["21"].end, got["21"].exit_code) == ("2026-12-07T10:00:00", "", 0)
    assert (got["22"].state, got["22"].exit_code) == ("UNKNOWN", None)  # sacct printed no state
    assert not got["22"].active and not got["22"].finished


def test_scontrol_needs_both_the_job_id_and_its_state():
    assert ST.parse_scontrol_job("JobId=5 JobName=x") is None
    assert ST.parse_scontrol_job("JobName=x JobState=RUNNING") is None
    st = ST.parse_scontrol_job("JobId=6 JobState=completed EndTime=2026-12-07T10:05:00")
    assert (st.job_id, st.state, st.exit_code, st.reason, st.start, st.end) == (
        "6", "COMPLETED", None, "", "", "2026-12-07T10:05:00")
    assert st.finished and not st.active
    pending = ST.JobState("7", "PENDING")
    assert pending.active and not pending.finished


def test_sbatch_prints_its_job_id_on_the_last_line_and_a_refusal_is_quoted_at_most_200_characters():
    assert ST.parse_sbatch_parsable("sbatch: warning: can't honor --mem\n4321;cluster-a\n") == "4321"
    with pytest.raises(ST.SlurmError) as exc:
        ST.parse_sbatch_parsable("x" * 300)
    assert "x" * 200 in str(exc.value) and "x" * 201 not in str(exc.value)


# ------------------------------------------------------------------------------------- lock ---
def test_a_new_holder_replaces_what_an_earlier_holder_left_in_the_lock_file(tmp_path):
    (tmp_path / K.LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "old", "since": "then"}) + "\nleft over\n")
    with K.StudyLock(tmp_path):
        info = json.loads((tmp_path / K.LOCK_FILE).read_text())  # one record: the new holder's
        assert (info["pid"], info["host"]) == (os.getpid(), socket.gethostname())


def test_a_second_lock_is_refused_naming_the_holder_and_taken_once_released(tmp_path):
    lock = K.StudyLock(tmp_path).acquire()
    try:
        # flock conflicts between two open files even in one process
        with pytest.raises(K.StudyLocked) as exc:
            K.StudyLock(tmp_path).acquire()
        msg = str(exc.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in msg and str(tmp_path) in msg
        assert "use another --out" in msg
    finally:
        lock.release()
    lock.release()  # a second release is harmless
    with K.StudyLock(tmp_path):
        pass


def test_the_holder_of_a_missing_lock_file_or_one_without_a_time(tmp_path):
    assert K._holder_text(tmp_path / "no-such-lock") == "a process whose pid could not be read"
    (tmp_path / K.LOCK_FILE).write_text(json.dumps({"pid": 5, "host": "h"}))
    assert K._holder_text(tmp_path / K.LOCK_FILE) == "pid 5 on host h, since ?"


def _fake_stat(monkeypatch, tmp_path, pid, fields):
    stat = tmp_path / "stat"
    stat.write_text(f"{pid} (a (b) c) " + " ".join(fields) + "\n")
    real_path = K.Path
    monkeypatch.setattr(K, "Path", lambda p: stat if p == f"/proc/{pid}/stat" else real_path(p))


def test_a_one_letter_state_and_the_start_time_in_field_22(monkeypatch, tmp_path):
    me = os.getpid()
    fields = ["S"] + [str(i) for i in range(4, 22)] + ["start22"]  # fields 3..22
    _fake_stat(monkeypatch, tmp_path, me, fields)
    assert K.process_start(me) == "start22"
    assert K.process_alive(me, "start22") and not K.process_alive(me, "21")
    _fake_stat(monkeypatch, tmp_path, me, ["Z"] + fields[1:])
    assert not K.process_alive(me)  # ended, not yet reaped
    _fake_stat(monkeypatch, tmp_path, me, fields[:-1])  # a line cut short before field 22
    assert K.process_start(me) is None


def test_without_proc_a_live_pid_counts_as_alive_whatever_its_recorded_start(monkeypatch):
    monkeypatch.setattr(K, "_stat_fields", lambda pid: None)
    assert K.process_alive(os.getpid(), "12345") is True


def test_init_is_alive_and_a_reaped_process_has_no_start_time():
    assert K.process_alive(1)
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert K.process_start(p.pid) is None


# -------------------------------------------------------------------------------- launchers ---
class _Minimal(L.Launcher):
    """A user's launcher that sets only ``name``: runs 'end' on their second poll."""

    name = "minimal"

    def __init__(self):
        self.started, self.after, self.polls = [], {}, {}

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        self.started.append(run.run_id)
        self.after[run.run_id] = list(after)
        return {"launcher": self.name, "run": run.run_id, "dir": str(Path(log_path).parent)}

    def poll(self, handle):
        n = self.polls[handle["run"]] = self.polls.get(handle["run"], 0) + 1
        if n < 2:
            return None
        run = {r.run_id: r for r in self.plan}[handle["run"]]
        return _fake_execute(run, Path(handle["dir"]), ())

    def stop(self, handle):
        pass


def test_a_launcher_that_does_not_queue_gets_each_run_once_its_inputs_are_done(tmp_path):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    la = _Minimal()
    la.plan = S.build_plan(cfg)
    assert _quiet(cfg, tmp_path, la).ok
    assert la.started == ["teacher_a0", "student_a0_T1_s0"] and la.after == {"teacher_a0": [], "student_a0_T1_s0": []}
    assert la.never_ran({"launcher": "minimal"}) is False and la.check(la.plan) is None


def test_describe_says_running_or_ended_with_the_exit_status():
    class Fixed(_Minimal):
        def poll(self, handle):
            return handle.get("rc")

    la = Fixed()
    assert la.describe({"launcher": "minimal"}) == "running"
    assert la.describe({"launcher": "minimal", "rc": 3}) == "ended (exit status 3), not yet collected"


def test_the_local_launchers_warm_start_setting():
    assert L.LocalLauncher.from_options({}).warm_start is True
    assert L.LocalLauncher.from_options({"warm_start": False}).warm_start is False
    with pytest.raises(ValueError, match="warm_start must be true or false, got 'no'"):
        L.LocalLauncher.from_options({"warm_start": "no"})
    assert L.make_launcher({"kind": "local", "warm_start": False}).warm_start is False
    made = L.make_launcher("local")
    assert isinstance(made, L.LocalLauncher) and made.warm_start is True


def test_the_local_launcher_cannot_queue_behind_a_run(tmp_path):
    la = L.LocalLauncher(warm_start=False)
    with pytest.raises(ValueError, match="cannot queue"):
        la.start(S.Run("r", "export", ("module", "x"), []), [sys.executable, "-c", "pass"], {}, tmp_path / "log",
                 after=[{"launcher": "local", "pid": 2}])
    assert la._procs == {} and not (tmp_path / "log").exists()


def test_a_local_run_leads_its_own_session_and_its_stderr_is_appended_to_the_log(tmp_path):
    log = tmp_path / "log"
    log.write_text("earlier attempt\n")
    code = "import os, sys; print(os.getsid(0), os.getpgid(0), os.getpid()); sys.stderr.write('to stderr\\n')"
    la = L.LocalLauncher(warm_start=False)
    h = la.start(S.Run("r", "export", ("module", "x"), []), [sys.executable, "-c", code], dict(os.environ), log)
    la._procs[h["pid"]].wait(timeout=30)
    assert la.poll(h) == 0
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier attempt" and "to stderr" in lines
    sid, pgid, pid = (int(x) for x in next(x for x in lines if x[:1].isdigit()).split())
    assert sid == pgid == pid == h["pid"]  # stop() signals this group: the run's, never the runner's


class _Unending:
    """A child that ignores SIGTERM: wait(timeout) times out, wait() returns once it is killed."""

    def __init__(self):
        self.waits = []

    def wait(self, timeout=None):
        self.waits.append(timeout)
        if timeout is not None:
            raise subprocess.TimeoutExpired("run", timeout)
        return -9


def test_a_child_that_ignores_sigterm_is_killed_and_reaped(monkeypatch):
    sent = []
    monkeypatch.setattr(L, "_kill_group", lambda pid, sig: sent.append((pid, sig)))
    la = L.LocalLauncher(warm_start=False)
    proc = la._procs[4321] = _Unending()
    la.stop({"launcher": "local", "pid": 4321, "host": socket.gethostname()})
    assert sent == [(4321, signal.SIGTERM), (4321, signal.SIGKILL)]
    assert len(proc.waits) == 2 and 0 < proc.waits[0] <= 60 and proc.waits[1] is None  # reaped after the kill
    assert 4321 not in la._procs


@pytest.mark.parametrize("host,warm,gone,want", [
    ("here", False, [False, True], ["TERM", ("wait", "77"), "KILL", ("wait", "77")]),  # an orphan that stays
    ("here", False, [True], ["TERM", ("wait", "77")]),
    ("elsewhere", False, [], ["TERM"]),  # another host's pid: nothing to wait for here
    ("elsewhere", True, [True], ["TERM", ("wait", "77")]),  # forked by our warm server
])
def test_stopping_a_process_that_is_not_our_child(monkeypatch, host, warm, gone, want):
    did = []
    monkeypatch.setattr(L, "_kill_group", lambda pid, sig: did.append((pid, sig)))
    answers = iter(gone)

    def wait_gone(pid, timeout, start=None):
        did.append((pid, "wait", timeout, start))
        return next(answers)

    monkeypatch.setattr(L, "_wait_gone", wait_gone)
    la = L.LocalLauncher(warm_start=False)
    if warm:
        la._warm[5555] = Path("exit.json")
    la.stop({"launcher": "local", "pid": 5555, "proc_start": "77",
             "host": socket.gethostname() if host == "here" else "another-host.example"})
    names = {signal.SIGTERM: "TERM", signal.SIGKILL: "KILL"}
    got = [names[x[1]] if len(x) == 2 else ("wait", x[3]) for x in did]
    assert got == want and all(x[0] == 5555 for x in did)
    assert all(0 < x[2] <= 60 for x in did if len(x) == 4)


def test_signalling_a_group_that_is_gone_or_not_ours_is_not_an_error(monkeypatch):
    p = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    p.wait()
    L._kill_group(p.pid, signal.SIGTERM)  # ProcessLookupError: already gone

    def refuse(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(L.os, "killpg", refuse)
    L._kill_group(12345, signal.SIGTERM)


class _Server:
    def __init__(self, usable):
        self.usable = usable


def _ended_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("ours,server,want", [(True, True, None), (True, False, L.LOST), (True, None, L.LOST),
                                               (False, True, L.LOST)])
def test_a_warm_run_that_just_ended_waits_for_its_exit_record_only_while_the_server_lives(tmp_path, ours, server,
                                                                                          want):
    pid = _ended_pid()
    exit_file = tmp_path / "log.exit.json"  # not written yet
    la = L.LocalLauncher()
    if ours:
        la._warm[pid] = exit_file
    la._server = None if server is None else _Server(server)
    assert la.poll({"launcher": "local", "pid": pid, "host": socket.gethostname(), "exit_file": str(exit_file)}) == want


def test_a_warm_runs_exit_record_without_a_pid_is_its_own_and_a_missing_one_means_running(tmp_path):
    la = L.LocalLauncher()
    pending = {"launcher": "local", "pid": os.getpid(), "host": socket.gethostname(),
               "exit_file": str(tmp_path / "missing.exit.json")}
    assert la.poll(pending) is None  # no record yet and the process is alive
    exit_file = tmp_path / "log.exit.json"
    exit_file.write_text(json.dumps({"returncode": 5}))
    la._warm[4242] = exit_file
    assert la.poll({"launcher": "local", "pid": 4242, "exit_file": str(exit_file)}) == 5
    assert 4242 not in la._warm  # collected: the launcher no longer waits for a record of it


class _WarmFake:
    """A WarmServer stand-in: ``answers`` are what spawn returns, ``failed`` what it says when it returns None."""

    made: list = []

    def __init__(self, python, env, cwd=None):
        self.python, self.env, self.usable, self.spawns = python, dict(env), True, 0
        self.failed = _WarmFake.failed
        _WarmFake.made.append(self)

    def spawn(self, module, args, log_path, exit_path, cwd, script=None):
        self.spawns += 1
        return _WarmFake.answer

    def close(self):
        pass


@pytest.mark.parametrize("failed", ["the server could not fork (made up)", None])
def test_a_warm_server_that_fails_turns_warm_start_off_and_one_that_declines_does_not(monkeypatch, tmp_path, failed):
    monkeypatch.setattr(L, "WarmServer", _WarmFake)
    _WarmFake.made, _WarmFake.answer, _WarmFake.failed = [], None, failed
    la = L.LocalLauncher()
    argv = [sys.executable, "-m", "vision_plugin.train"]
    assert la._start_warm(argv, {}, tmp_path / "a.log", None) is None
    assert la.warm_note == failed
    assert la._start_warm(argv, {}, tmp_path / "b.log", None) is None
    # after a failure the next runs start cold without asking the server again; otherwise it is asked again
    assert sum(s.spawns for s in _WarmFake.made) == (1 if failed else 2)


def test_a_warm_start_removes_the_exit_record_of_an_earlier_attempt(monkeypatch, tmp_path):
    monkeypatch.setattr(L, "WarmServer", _WarmFake)
    _WarmFake.made, _WarmFake.answer, _WarmFake.failed = [], 777, None
    log = tmp_path / "stdout.log"
    stale = Path(f"{log}.exit.json")
    stale.write_text(json.dumps({"pid": 777, "returncode": 1}))
    la = L.LocalLauncher()
    h = la.start(S.Run("r", "student", ("module", "vision_plugin.train"), []),
                 [sys.executable, "-m", "vision_plugin.train"], {}, log)
    assert h["pid"] == 777 and h["exit_file"] == str(stale) and not stale.exists()
    assert la.poll(dict(h, host="another-host.example")) is None  # running: no record answers for it yet


# ----------------------------------------------------------------------------------- runner ---
class _Slow(S.Launcher):
    """A local-like launcher (runs start once their inputs are done) whose runs end after ``polls[run]``
    polls (default 1); records, at each start, which runs were in flight."""

    name = "slow"

    def __init__(self, polls=None):
        self.polls, self.started, self.in_flight_at_start, self.running = dict(polls or {}), [], [], set()

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        self.in_flight_at_start.append((run.run_id, sorted(self.running)))
        self.started.append(run.run_id)
        self.running.add(run.run_id)
        return {"launcher": self.name, "run": run.run_id, "dir": str(Path(log_path).parent),
                "left": self.polls.get(run.run_id, 1), "plan_run": None}

    def poll(self, handle):
        handle["left"] -= 1
        if handle["left"] > 0:
            return None
        run = self.plan[handle["run"]]
        self.running.discard(run.run_id)
        return _fake_execute(run, Path(handle["dir"]), ())

    def stop(self, handle):
        self.running.discard(handle["run"])


def test_the_jobs_limit_holds_while_runs_are_in_flight(monkeypatch, tmp_path):
    sleeps = _guard_sleep(monkeypatch)
    cfg = S.load_config(overrides={**_ONE_CELL, "alphas": [0, 0.1, 0.2], "jobs": 2})
    la = _Slow(polls={r.run_id: 3 for r in S.build_plan(cfg)})
    la.plan = {r.run_id: r for r in S.build_plan(cfg)}
    assert _quiet(cfg, tmp_path, la).ok and len(la.started) == 6
    busy = [len(running) for _, running in la.in_flight_at_start]
    assert max(busy) == 1  # a start with one run in flight: two at a time, never three
    assert la.in_flight_at_start[1] == ("teacher_a0.1", ["teacher_a0"])  # both teachers together
    assert sleeps and all(0 < s <= 1 for s in sleeps)  # polled again within a second while runs are in flight


def test_a_run_that_ends_is_collected_while_an_earlier_one_still_runs(monkeypatch, tmp_path):
    _guard_sleep(monkeypatch)
    cfg = S.load_config(overrides={**_ONE_CELL, "jobs": 2})
    la = _Slow(polls={"teacher_a0": 6})
    la.plan = {r.run_id: r for r in S.build_plan(cfg)}
    assert _quiet(cfg, tmp_path, la).ok
    # teacher_a0.1 ended first: its student starts while teacher_a0 still runs
    assert ("student_a0.1_T1_s0", ["teacher_a0"]) in la.in_flight_at_start


class _LoudQueue(_Queue):
    """A queue whose failing runs print 20 numbered lines to their log first."""

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        if run.run_id in self.fail:
            with open(log_path, "a") as fh:
                fh.write("".join(f"out {i}\n" for i in range(1, 21)))
        return super().start(run, argv, env, log_path, cwd, after)


def test_a_failed_run_shows_its_last_15_log_lines_and_its_dependents_are_logged_as_blocked(tmp_path):
    cfg = S.load_config(overrides={**_ONE_CELL, "jobs": 100, "analysis": True})
    plan = {r.run_id: r for r in S.build_plan(cfg)}
    said = []
    out = _quiet(cfg, tmp_path, _LoudQueue(fail={"teacher_a0.1"}), echo=said.append)
    (msg,) = [s for s in said if "teacher_a0.1 failed" in s]
    shown = msg.split(":\n", 1)[1].splitlines()
    assert shown == [f"out {i}" for i in range(6, 21)]
    log = tmp_path / "runs" / "teacher_a0.1" / "stdout.log"
    events = _events(tmp_path)
    (failed,) = [e for e in events if e["event"] == "failed"]
    assert (failed["run_id"], failed["reason"], failed["log"]) == ("teacher_a0.1", out.failed["teacher_a0.1"], str(log))
    behind = {r for r in plan if "a0.1" in r and r != "teacher_a0.1"}
    blocked = {e["run_id"]: e["deps"] for e in events if e["event"] == "blocked"}
    assert blocked == {r: plan[r].deps for r in behind} and set(out.blocked) == behind


def test_the_tail_of_a_missing_log_is_empty(tmp_path):
    assert R._tail(tmp_path / "never-written.log") == ""
    (tmp_path / "short.log").write_text("a\nb\nc\n")
    assert R._tail(tmp_path / "short.log", 2) == "b\nc"


def test_the_progress_count_reaches_the_plans_size_when_runs_fail_and_are_blocked(tmp_path, capsys):
    import re

    cfg = S.load_config(overrides={**_ONE_CELL, "jobs": 100, "analysis": True})
    n = len(S.build_plan(cfg))
    capsys.readouterr()
    out = _quiet(cfg, tmp_path, _Queue(fail={"teacher_a0.1"}), progress=True)
    assert out.failed and out.blocked
    counts = [(int(a), int(b)) for a, b in re.findall(r"\[study\] (\d+)/(\d+) runs done", capsys.readouterr().err)]
    assert counts and counts[-1] == (n, n) and all(k <= n for k, _ in counts)


def test_a_failed_teacher_stops_its_queued_student_without_waiting(monkeypatch, tmp_path):
    sleeps = _guard_sleep(monkeypatch)
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    q = _Queue(fail={"teacher_a0"})
    out = _quiet(cfg, tmp_path, q)
    # the failure is seen at the poll that ends the teacher: its student is stopped in the same pass
    assert q.stopped == ["student_a0_T1_s0"] and out.blocked == ["student_a0_T1_s0"] and sleeps == []


def _finish_first_run(cfg, study):
    assert _quiet(cfg, study, _Queue()).ok


def test_a_checkpoint_made_before_its_input_was_re_run_is_moved_aside_not_resumed(tmp_path):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    _finish_first_run(cfg, tmp_path)
    runs = tmp_path / "runs"
    for f in ("result.json", "checkpoint.pth"):
        (runs / "teacher_a0" / f).unlink()  # the teacher runs again
    (runs / "student_a0_T1_s0" / "result.json").unlink()  # killed mid-run: only its checkpoint is left
    out = _quiet(cfg, tmp_path, _Queue())
    assert out.ok and out.launched == ["teacher_a0", "student_a0_T1_s0"]
    (stale,) = runs.glob("student_a0_T1_s0.stale-*")
    assert (stale / "checkpoint.pth").exists()  # kept aside, never resumed from
    student = [x for x in _launches(tmp_path) if x["run_id"] == "student_a0_T1_s0"][-1]
    assert student["resume"] is False and "--resume" not in student["argv"]


def test_a_run_cancelled_before_it_started_behind_a_re_run_input_is_started_in_its_own_dir(tmp_path):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    _finish_first_run(cfg, tmp_path)
    runs = tmp_path / "runs"
    for f in ("result.json", "checkpoint.pth"):
        (runs / "teacher_a0" / f).unlink()
        (runs / "student_a0_T1_s0" / f).unlink()  # its job never ran: config, log and launch record only
    out = _quiet(cfg, tmp_path, _Queue())
    assert out.ok and out.problems == [] and not list(runs.glob("*.stale-*"))
    assert (runs / "student_a0_T1_s0" / "checkpoint.pth").exists()


def test_a_resumed_run_is_recorded_as_resumed_and_keeps_its_result_file(tmp_path):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    _finish_first_run(cfg, tmp_path)
    sdir = tmp_path / "runs" / "student_a0_T1_s0"
    (sdir / "result.json").write_text(json.dumps({"status": "running"}))  # killed at an epoch's end
    out = _quiet(cfg, tmp_path, _Queue())
    assert out.ok and out.launched == ["student_a0_T1_s0"]
    last = _launches(tmp_path)[-1]
    assert last["resume"] is True and last["argv"][-2:] == ["--resume", str(sdir / "checkpoint.pth")]
    done = [e for e in _events(tmp_path) if e["event"] == "done" and e["run_id"] == "student_a0_T1_s0"]
    assert done[-1]["resumed"] is True
    assert not (sdir / "result.json.previous").exists()  # a resumed run continues its own record


def test_a_failed_runs_result_is_kept_as_previous_when_it_starts_over(tmp_path):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    _finish_first_run(cfg, tmp_path)
    tdir = tmp_path / "runs" / "teacher_a0"
    (tdir / "checkpoint.pth").unlink()
    failed = json.dumps({"status": "failed", "error": "diverged (made up)"})
    (tdir / "result.json").write_text(failed)
    out = _quiet(cfg, tmp_path, _Queue())
    assert out.ok and "teacher_a0" in out.launched
    assert (tdir / "result.json.previous").read_text() == failed
    assert json.loads((tdir / "result.json").read_text())["status"] == "done"


def test_a_run_found_done_without_checksums_gets_them(tmp_path):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    _finish_first_run(cfg, tmp_path)
    tdir = tmp_path / "runs" / "teacher_a0"
    (tdir / "checksums.json").unlink()  # e.g. the runner died between the run's end and its record
    out = _quiet(cfg, tmp_path, _Queue())
    assert out.launched == [] and "teacher_a0" in out.skipped
    files = json.loads((tdir / "checksums.json").read_text())["files"]
    assert files["checkpoint.pth"]["size"] == (tdir / "checkpoint.pth").stat().st_size


class _Recording(_Queue):
    def check(self, runs, nproc=1):
        self.checked = ([r.run_id for r in runs], nproc)

    def start_many(self, launches, env, state_dir=None):
        self.given = getattr(self, "given", []) + [(dict(env), state_dir)]
        return super().start_many(launches, env, state_dir)


def test_the_launcher_is_checked_with_the_plan_and_given_the_runs_environment_and_its_dir(tmp_path):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    la = _Recording()
    study = tmp_path.resolve()
    assert _quiet(cfg, study, la).ok
    assert la.checked == ([r.run_id for r in S.build_plan(cfg)], cfg.nproc)
    assert la.given and all(env == R.child_env(cfg) and state_dir == study / R.LAUNCHER_DIR
                            for env, state_dir in la.given)


def test_each_start_writes_its_command_line_into_the_runs_log(tmp_path):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    _finish_first_run(cfg, tmp_path)
    for launch in _launches(tmp_path):
        log = (tmp_path / "runs" / launch["run_id"] / "stdout.log").read_text().splitlines()
        headers = [x for x in log if x.startswith("# ")]
        assert len(headers) == 1 and headers[0].endswith(" " + shlex.join(launch["argv"]))


def test_a_detached_run_records_when_it_ended_and_its_exit_status(tmp_path):
    cfg = S.load_config(overrides={**_ONE_CELL, "jobs": 100})
    t0 = time.time()
    la = _Detached()
    la.fail = {"teacher_a0.1"}
    _quiet(cfg, tmp_path, la)
    ok = json.loads((tmp_path / "runs" / "teacher_a0" / "launch.json").read_text())
    bad = json.loads((tmp_path / "runs" / "teacher_a0.1" / "launch.json").read_text())
    assert (ok["exit_status"], bad["exit_status"]) == (0, 1)
    assert t0 <= ok["started"] <= ok["ended"] <= time.time()


def test_a_detached_handle_without_a_trustworthy_run_config_is_not_adopted(tmp_path):
    cfg = S.load_config(overrides={**_ONE_CELL, "jobs": 100})
    study = tmp_path.resolve()
    _, first = _recorded(study, cfg, "teacher_a0", {"launcher": "detached", "run": "teacher_a0"})
    (first / "run_config.json").write_text("{not json")
    second = study / "runs" / "teacher_a0.1"
    second.mkdir(parents=True)
    (second / "launch.json").write_text(json.dumps({"launcher": "detached", "run": "teacher_a0.1"}))
    la = _DetachedStopping(alive={"teacher_a0", "teacher_a0.1"})
    out = _quiet(cfg, study, la)
    # whose config made them is unknown: their jobs are stopped and the runs started afresh
    assert out.ok and out.adopted == [] and sorted(la.stopped) == ["teacher_a0", "teacher_a0.1"]
    assert {"teacher_a0", "teacher_a0.1"} <= set(out.launched)


def test_a_detached_run_recorded_after_a_new_one_is_adopted(tmp_path):
    cfg = S.load_config(overrides={**_ONE_CELL, "jobs": 100})
    study = tmp_path.resolve()
    run, d = _recorded(study, cfg, "teacher_a0.1", {"launcher": "detached", "run": "teacher_a0.1"})
    _fake_execute(run, d, ())
    la = _Detached(alive={"teacher_a0.1"})  # teacher_a0, earlier in the plan, was never started
    out = _quiet(cfg, study, la)
    assert out.ok and out.adopted == ["teacher_a0.1"] and "teacher_a0.1" not in out.launched


def test_an_orphan_later_in_the_plan_is_waited_for_and_counted_as_adopted_not_resumed(tmp_path):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "alphas": [0, 0.1]})
    run, d = _recorded(tmp_path, cfg, "teacher_a0.1", {})
    _fake_execute(run, d, ())  # its outputs are complete: an unknowable exit status lets them decide
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                             start_new_session=True)
    write_launch(d, {"launcher": "local", "pid": child.pid, "host": socket.gethostname(), "started": time.time()})
    said = []

    def echo(msg):
        said.append(msg)
        if "still running from an earlier runner" in msg and child.stdin is not None and not child.stdin.closed:
            child.stdin.close()  # the orphan ends once the runner waits for it

    fl = _SlowLocal()
    try:
        out = _quiet(cfg, tmp_path, fl, echo=echo)
    finally:
        child.kill()
        child.wait()
    assert out.ok and out.adopted == ["teacher_a0.1"] and "teacher_a0.1" not in fl.started
    assert any(f"pid {child.pid} on {socket.gethostname()}" in s for s in said)
    (done,) = [e for e in _events(tmp_path) if e["event"] == "done" and e["run_id"] == "teacher_a0.1"]
    assert done["resumed"] is False


class _SlowLocal(S.LocalLauncher):
    """The local launcher, its own runs finishing at once; recorded processes are polled as usual."""

    def __init__(self):
        super().__init__(warm_start=False)
        self.started = []

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        self.started.append(run.run_id)
        _fake_execute(run, Path(log_path).parent, ())
        return {"launcher": "fake", "rc": 0}

    def poll(self, handle):
        return handle["rc"] if "rc" in handle else super().poll(handle)

    def stop(self, handle):
        pass


class _Batch(S.Launcher):
    """A detached batch queue: ``runs=False`` never runs anything (the jobs wait in the queue); ``runs=True``
    runs a job, its own or an earlier invocation's, once its inputs have results."""

    name = "batch"
    queues_dependencies = True
    detached = True

    def __init__(self, plan, runs):
        self.plan, self.runs, self.started = {r.run_id: r for r in plan}, runs, []

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        self.started.append(run.run_id)
        return {"launcher": self.name, "run": run.run_id, "log": str(log_path), "started": time.time()}

    def poll(self, handle):
        run, rdir = self.plan[handle["run"]], Path(handle["log"]).parent
        if not self.runs or not all((rdir.parent / d / "result.json").exists() for d in run.deps):
            return None
        return _fake_execute(run, rdir, ())

    def stop(self, handle):
        pass


def test_without_waiting_a_detached_study_returns_once_all_is_queued_and_a_later_call_collects_it(monkeypatch,
                                                                                                  tmp_path):
    _guard_sleep(monkeypatch, limit=20)
    cfg = S.load_config(overrides={**_ONE_CELL, "jobs": 100})
    ids = sorted(r.run_id for r in S.build_plan(cfg))
    first = _quiet(cfg, tmp_path, _Batch(S.build_plan(cfg), runs=False), wait=False, report=True)
    assert sorted(first.launched) == ids and first.in_flight == ids and first.failed == {}
    assert first.report_dir is None and not (tmp_path / "report").exists()  # nothing finished to report on
    later = _quiet(cfg, tmp_path, _Batch(S.build_plan(cfg), runs=True))
    assert later.ok and sorted(later.adopted) == ids and later.launched == [] and later.in_flight == []


def test_a_launcher_that_is_not_detached_is_waited_for_even_without_wait(tmp_path):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    out = _quiet(cfg, tmp_path, _Queue(), wait=False)
    assert out.ok and out.in_flight == [] and len(out.launched) == 2


class _TermOnPoll(_Queue):
    """A SIGTERM (e.g. from a batch scheduler) arrives while the runner polls; nothing ever finishes."""

    def poll(self, handle):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs at the next bytecode in the main thread
        return None


def test_sigterm_acts_as_ctrl_c_and_the_previous_handler_is_restored(tmp_path):
    got = []

    def handler(signum, frame):
        got.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
        q = _TermOnPoll()
        with pytest.raises(KeyboardInterrupt):
            _quiet(cfg, tmp_path, q)
        assert sorted(q.stopped) == ["student_a0_T1_s0", "teacher_a0"] and got == []
        assert signal.getsignal(signal.SIGTERM) is handler  # ours again once the study returned
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_restoring_the_handler_off_the_main_thread_is_skipped():
    errors = []

    def body():
        try:
            R._restore_sigterm_handler(signal.SIG_DFL)
        except Exception as exc:  # noqa: BLE001 - the test records what escaped
            errors.append(exc)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert errors == []


class _Closing(_Queue):
    closed = 0

    def close(self):
        self.closed += 1


def test_a_finished_study_closes_its_launcher_and_its_progress_bar(monkeypatch, tmp_path):
    bars = []
    monkeypatch.setattr(R, "make_bar", lambda total, enabled: bars.append(_Bar()) or bars[-1])
    la = _Closing()
    assert _quiet(S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100}), tmp_path, la).ok
    assert la.closed == 1 and len(bars) == 1 and bars[0].closed


def test_without_an_echo_and_a_progress_bar_messages_go_to_stderr(tmp_path, capsys):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    capsys.readouterr()
    out = S.run_study(cfg, tmp_path, launcher=_Queue(fail={"student_a0_T1_s0"}), report=False, progress=False)
    assert not out.ok and "[study] student_a0_T1_s0 failed (exit status 1)" in capsys.readouterr().err


def test_report_only_collects_only_ended_runs_of_this_config(tmp_path):
    cfg = S.load_config(overrides={**_ONE_CELL, "jobs": 100})
    study = tmp_path.resolve()
    _recorded(study, cfg, "teacher_a0", {"launcher": "detached", "run": "teacher_a0"})  # still in the queue
    run, other = _recorded(study, cfg, "teacher_a0.1", {"launcher": "detached", "run": "teacher_a0.1"})
    _fake_execute(run, other, ())
    rc = json.loads((other / "run_config.json").read_text())
    (other / "run_config.json").write_text(json.dumps({**rc, "hash": "another-config"}))
    run, ended = _recorded(study, cfg, "student_a0_T1_s0", {"launcher": "detached", "run": "student_a0_T1_s0"})
    _fake_execute(run, ended, ())
    out = _quiet(cfg, study, _Detached(alive={"teacher_a0"}), report_only=True)
    launch = {d.name: json.loads((d / "launch.json").read_text()) for d in (study / "runs").iterdir()}
    assert "ended" in launch["student_a0_T1_s0"] and launch["student_a0_T1_s0"]["exit_status"] == 0
    assert "ended" not in launch["teacher_a0"] and "ended" not in launch["teacher_a0.1"]
    assert out.failed["teacher_a0"].startswith("not done") and out.launched == []


def test_report_only_accepts_a_finished_run_without_a_record_of_its_inputs(tmp_path):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    _finish_first_run(cfg, tmp_path)
    path = tmp_path / "runs" / "student_a0_T1_s0" / "run_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "inputs": {}}))  # dispatched by another scheduler
    out = _quiet(cfg, tmp_path, _Queue(), report_only=True)
    assert sorted(out.skipped) == ["student_a0_T1_s0", "teacher_a0"] and out.failed == {} and out.problems == []


class _Unstarted(_Queue):
    """A queue that cancels the first submission of the runs in ``cancel`` before they start."""

    def __init__(self, cancel, fail=()):
        super().__init__(fail)
        self.cancel, self.submitted = set(cancel), []

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        self.submitted.append(run.run_id)
        if len(self.submitted) > 20:
            raise AssertionError("the same runs are submitted again and again")
        handle = super().start(run, argv, env, log_path, cwd, after)
        if run.run_id in self.cancel:
            self.cancel.discard(run.run_id)
            self.jobs[handle["job"]]["rc"] = 1
            handle["unstarted"] = True
        return handle

    def never_ran(self, handle):
        return bool(handle.get("unstarted"))


def test_a_run_cancelled_before_it_started_is_submitted_again(tmp_path):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    q = _Unstarted(cancel={"student_a0_T1_s0"})
    said = []
    out = _quiet(cfg, tmp_path, q, echo=said.append)
    assert out.ok and q.submitted.count("student_a0_T1_s0") == 2
    assert json.loads((tmp_path / "runs" / "student_a0_T1_s0" / "result.json").read_text())["status"] == "done"
    assert [e["run_id"] for e in _events(tmp_path) if e["event"] == "cancelled-unstarted"] == ["student_a0_T1_s0"]
    assert any("student_a0_T1_s0: cancelled before it started" in s and "submitting it again" in s for s in said)


def test_a_run_cancelled_behind_its_own_failed_input_is_blocked_without_a_resubmission_notice(tmp_path):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    q = _Unstarted(cancel={"student_a0_T1_s0"}, fail={"teacher_a0"})
    said = []
    out = _quiet(cfg, tmp_path, q, echo=said.append)
    assert out.blocked == ["student_a0_T1_s0"] and q.submitted.count("student_a0_T1_s0") == 1
    assert not any("submitting it again" in s for s in said)


class _SlowQueue(_Slow):
    """:class:`_Slow` as a queueing launcher (a run may be handed over behind runs in flight)."""

    queues_dependencies = True

    def __init__(self, polls, sleeps):
        super().__init__(polls)
        self.sleeps, self.seen = sleeps, []

    def poll(self, handle):
        self.seen.append(len(self.sleeps))
        return super().poll(handle)


def test_handing_a_wave_to_a_queue_counts_as_progress(monkeypatch, tmp_path):
    cfg = S.load_config(overrides={**_TEACHER_ONLY, "jobs": 100})
    _finish_first_run(cfg, tmp_path)
    (tmp_path / "runs" / "student_a0_T1_s0" / "result.json").unlink()  # only the student runs again
    sleeps = _guard_sleep(monkeypatch)
    la = _SlowQueue({"student_a0_T1_s0": 3}, sleeps)
    la.plan = {r.run_id: r for r in S.build_plan(cfg)}
    assert _quiet(cfg, tmp_path, la).ok and la.started == ["student_a0_T1_s0"]
    # polled at once after the hand-over, then once per idle pass
    assert la.seen == [0, 0, 1]


class _DamagingLocal(_SlowLocal):
    """Damages teacher_a0's checkpoint (same size, other bytes) when the next run starts."""

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        if run.run_id == "teacher_a0.1":
            (Path(log_path).parent.parent / "teacher_a0" / "checkpoint.pth").write_bytes(b"x")
        return super().start(run, argv, env, log_path, cwd, after)


class _CountingBar(_Bar):
    def __init__(self):
        super().__init__()
        self.count = 0

    def update(self, n=1):
        self.count += n


def test_a_run_whose_input_was_damaged_is_counted_logged_and_said_once(monkeypatch, tmp_path):
    bars = []
    monkeypatch.setattr(R, "make_bar", lambda total, enabled: bars.append(_CountingBar()) or bars[-1])
    cfg = S.load_config(overrides={**_ONE_CELL, "jobs": 1})
    said = []
    out = _quiet(cfg, tmp_path, _DamagingLocal(), echo=said.append)
    assert list(out.failed) == ["student_a0_T1_s0"] and "teacher_a0" in out.failed["student_a0_T1_s0"]
    (ev,) = [e for e in _events(tmp_path) if e["event"] == "failed"]
    assert (ev["run_id"], ev["reason"]) == ("student_a0_T1_s0", out.failed["student_a0_T1_s0"])
    assert [s for s in said if "not started" in s] == [f"[study] student_a0_T1_s0 not started: {ev['reason']}"]
    assert bars[0].count == len(S.build_plan(cfg))  # every run counted once: 3 done, 1 not started


def test_report_only_gives_a_collected_export_its_wall_time_from_its_recorded_start(tmp_path):
    cfg = S.load_config(overrides={**_ONE_CELL, "analysis": True, "jobs": 100})
    study = tmp_path.resolve()
    assert _quiet(cfg, study, _Detached()).ok
    export = next(r.run_id for r in S.build_plan(cfg) if r.kind == "export")
    d = study / "runs" / export
    (d / "result.json").unlink()  # the earlier runner died before collecting it
    (d / "launch.json").write_text(json.dumps({"launcher": "detached", "run": export, "started": time.time() - 5}))
    _quiet(cfg, study, _Detached(), report_only=True)
    assert 4.0 <= json.loads((d / "result.json").read_text())["wall_time_s"] <= 60.0


def test_start_many_starts_each_launch_in_its_own_directory_in_order(tmp_path):
    la = L.LocalLauncher(warm_start=False)
    code = "import os; print(os.getcwd())"
    launches = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        launches.append(L.Launch(S.Run(name, "export", ("module", "x"), []), [sys.executable, "-c", code],
                                 tmp_path / f"{name}.log", cwd=tmp_path / name))
    handles = la.start_many(launches, dict(os.environ))
    for name, h in zip("ab", handles):
        la._procs[h["pid"]].wait(timeout=30)
        assert h["log"] == str(tmp_path / f"{name}.log")
        assert (tmp_path / f"{name}.log").read_text().strip() == str(tmp_path / name)
