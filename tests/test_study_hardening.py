"""The study's hardening (issue 9): the directory lock, runs left running by a runner that died,
placeholders inside --out, checksums of finished runs, validation before any compute, and the
CLI's one-line error path.

Fake launchers stand in for training (they write real torch checkpoints where the checksum logic
needs one); processes that must outlive a "dead runner" are real children blocked on a pipe, so
no test races a poll against a sleep.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lskd_core import study as S
from lskd_core.study import cli
from lskd_core.study.lock import StudyLock, StudyLocked, process_alive, process_start
from lskd_core.study.state import CHECKSUMS, checksum_problem, write_launch

ROOT = Path(__file__).resolve().parent.parent
_FIELDS = {f.name for f in dataclasses.fields(S.StudyConfig)}


def _cfg(**over):
    """A small vision study: alphas {0, 0.1}, T {1, 2}, one seed, training runs only."""
    o = {"seeds": 1, "temperatures": [1, 2], "alphas": [0, 0.1], "analysis": False}
    if "cache" in _FIELDS:
        o["cache"] = False  # teacher -> student directly: the students read the teacher's checkpoint
    o.update(over)
    return S.load_config(overrides=o)


class _TorchFake(S.LocalLauncher):
    """Writes a real torch checkpoint and a result.json (with a fresh stamp, as the trainer's wall
    time makes each execution's result unique) instead of training."""

    def __init__(self):
        super().__init__()
        self.started = []

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        import torch

        rdir = Path(log_path).parent
        assert rdir.name == run.run_id
        self.started.append(run.run_id)
        torch.save({"w": torch.arange(64, dtype=torch.float32), "run": run.run_id}, rdir / "checkpoint.pth")
        (rdir / "result.json").write_text(json.dumps({"status": "done", "val_acc1": 80.0, "val_acc5": 99.0,
                                                      "stamp": time.time_ns()}))
        return {"launcher": "fake", "rc": 0}

    def poll(self, handle):
        return handle["rc"] if "rc" in handle else super().poll(handle)  # a real process's handle

    def stop(self, handle):
        pass


class _NoLaunch(_TorchFake):
    """The CLI tests' launcher: a test that reaches a launch has failed (and must not train for real)."""

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        raise AssertionError(f"{run.run_id} was launched")


@pytest.fixture(autouse=True)
def _no_real_runs(monkeypatch):
    from lskd_core.study import runner

    monkeypatch.setattr(runner, "make_launcher", lambda setting: _NoLaunch())


def _run(cfg, study, launcher, echo=lambda s: None):
    return S.run_study(cfg, study, launcher=launcher, report=False, progress=False, echo=echo)


# ------------------------------------------------------------------------------------------------
# 1. the lock
# ------------------------------------------------------------------------------------------------
_HOLDER = ("import sys; from lskd_core.study.lock import StudyLock; lock = StudyLock(sys.argv[1]).acquire(); "
           "print('locked', flush=True); sys.stdin.read()")


def _hold_lock(study: Path) -> subprocess.Popen:
    study.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(study)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_runner_exits_2_naming_the_holder_and_read_only_modes_need_no_lock(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "check_models", lambda cfg: None)  # not under test here (imports torchvision)
    study = tmp_path / "s"
    holder = _hold_lock(study)
    try:
        with pytest.raises(StudyLocked):
            _run(_cfg(), study, _TorchFake())
        capsys.readouterr()
        rc = cli.main(["--out", str(study), "--seeds", "1", "--no-progress", "--no-analysis"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1
        assert f"pid {holder.pid}" in err[0] and socket.gethostname() in err[0] and str(study) in err[0]
        assert not (study / "runs").exists()  # nothing launched
        # read-only modes work while another runner holds the directory
        assert cli.main(["--out", str(study), "--seeds", "1", "--status"]) == 0
        assert cli.main(["--out", str(study), "--seeds", "1", "--print-commands"]) == 0
        out = S.run_study(_cfg(), study, report=False, report_only=True, progress=False)
        assert not out.launched
    finally:
        holder.kill()  # SIGKILL: the kernel releases the flock with the process
        holder.wait()
    with StudyLock(study):  # free again, without anyone cleaning up the lock file
        pass
    out = _run(_cfg(), study, _TorchFake())
    assert out.ok and len(out.launched) == 6


# ------------------------------------------------------------------------------------------------
# 2. runs left running by a runner that died
# ------------------------------------------------------------------------------------------------
_ORPHAN = ("import sys, json, pathlib; d = pathlib.Path(sys.argv[1]); sys.stdin.read(); "
           "(d / 'checkpoint.pth').write_bytes(b'orphan weights'); "
           "(d / 'result.json').write_text(json.dumps({'status': 'done', 'val_acc1': 12.5, 'val_acc5': 50.0}))")


def _leave_orphan(cfg, study: Path, run_id: str) -> subprocess.Popen:
    """The state a SIGKILLed runner leaves: the run's config and launch.json written, its process
    alive in its own session (blocked on stdin until the test lets it finish)."""
    run = {r.run_id: r for r in S.build_plan(cfg)}[run_id]
    rdir = study / "runs" / run_id
    rdir.mkdir(parents=True)
    S.write_run_config(run, study, cfg, S.run_command(run, study, cfg), {}, "study")
    child = subprocess.Popen([sys.executable, "-c", _ORPHAN, str(rdir)], stdin=subprocess.PIPE,
                             start_new_session=True)
    write_launch(rdir, {"launcher": "local", "pid": child.pid, "host": socket.gethostname(),
                        "log": str(rdir / "stdout.log"), "started": time.time()})
    return child


def test_run_of_a_dead_runner_is_waited_for_not_started_again(tmp_path):
    cfg = _cfg()
    study = tmp_path / "s"
    child = _leave_orphan(cfg, study, "teacher_a0")
    assert json.loads((study / "runs/teacher_a0/launch.json").read_text())["proc_start"] == process_start(child.pid)
    seen = []

    def echo(msg):  # the runner says it waits for the orphan: let the orphan finish (no timing involved)
        seen.append(msg)
        if "still running from an earlier runner" in msg and child.stdin is not None and not child.stdin.closed:
            child.stdin.close()

    fake = _TorchFake()
    try:
        out = _run(cfg, study, fake, echo)
    finally:
        child.kill()  # a no-op when it finished; never left behind when the runner did not wait for it
        child.wait()
    assert any(f"pid {child.pid}" in m for m in seen)
    assert "teacher_a0" not in fake.started and "teacher_a0" in out.adopted
    assert out.ok and set(fake.started) == {"teacher_a0.1", "student_a0_T1_s0", "student_a0_T2_s0",
                                            "student_a0.1_T1_s0", "student_a0.1_T2_s0"}
    # the orphan's own result is the teacher's, and its students were recorded against it
    assert json.loads((study / "runs/teacher_a0/result.json").read_text())["val_acc1"] == 12.5
    rc = json.loads((study / "runs/student_a0_T1_s0/run_config.json").read_text())
    assert rc["inputs"]["teacher_a0"] == S.fingerprint(study / "runs/teacher_a0")
    # once it has ended, the next invocation has nothing left to do
    again = _run(cfg, study, _TorchFake())
    assert again.launched == [] and again.adopted == []


def test_orphan_of_another_config_is_refused_and_its_dir_kept(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "check_models", lambda cfg: None)
    study = tmp_path / "s"
    child = _leave_orphan(_cfg(student_epochs=3), study, "student_a0_T1_s0")
    try:
        capsys.readouterr()
        rc = cli.main(["--out", str(study), "--seeds", "1", "--temperatures", "1", "2", "--alphas", "0", "0.1",
                       "--no-analysis", "--no-progress"] + (["--student-epochs", "4"]))
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and f"pid {child.pid}" in err[0] and "student_a0_T1_s0" in err[0]
        assert (study / "runs/student_a0_T1_s0/launch.json").exists()  # not moved aside under the process
    finally:
        child.kill()
        child.wait()


def test_reused_pid_or_ended_process_is_not_mistaken_for_the_run(tmp_path):
    me = os.getpid()
    assert process_alive(me, process_start(me))
    assert not process_alive(me, "1")  # same pid, another start time: a reused pid
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    assert not process_alive(done.pid)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped yet
    assert not process_alive(zombie.pid)
    zombie.wait()
    # a launch.json whose pid is alive but is not the run's process: the run starts normally
    cfg = _cfg()
    study = tmp_path / "s"
    rdir = study / "runs" / "teacher_a0"
    rdir.mkdir(parents=True)
    write_launch(rdir, {"launcher": "local", "pid": me, "host": socket.gethostname(), "proc_start": "1",
                        "started": time.time()})
    fake = _TorchFake()
    out = _run(cfg, study, fake)
    assert out.ok and "teacher_a0" in fake.started and out.adopted == []


# ------------------------------------------------------------------------------------------------
# 3. placeholders inside --out
# ------------------------------------------------------------------------------------------------
def test_placeholder_text_in_the_study_path_is_not_substituted_again(tmp_path):
    cfg = _cfg()
    study = tmp_path / "x{run}y{study}z"
    plan = {r.run_id: r for r in S.build_plan(cfg)}
    argv = S.run_command(plan["student_a0.1_T2_s0"], study, cfg)
    run_dir = f"{tmp_path}/x{{run}}y{{study}}z/runs/student_a0.1_T2_s0"
    teacher_ckpt = f"{tmp_path}/x{{run}}y{{study}}z/runs/teacher_a0.1/checkpoint.pth"
    assert argv[argv.index("--output-dir") + 1] == run_dir
    assert argv[argv.index("--teacher-ckpt") + 1] == teacher_ckpt
    out = _run(cfg, study, _TorchFake())  # the fake asserts every run writes into its own dir
    assert out.ok and (study / "runs/student_a0.1_T2_s0/checkpoint.pth").is_file()


# ------------------------------------------------------------------------------------------------
# 4. checksums of finished runs
# ------------------------------------------------------------------------------------------------
def test_checksums_recorded_at_the_end_of_each_run(tmp_path):
    cfg = _cfg()
    _run(cfg, tmp_path, _TorchFake())
    ckpt = tmp_path / "runs/teacher_a0/checkpoint.pth"
    rec = json.loads((tmp_path / "runs/teacher_a0" / CHECKSUMS).read_text())["files"]["checkpoint.pth"]
    data = ckpt.read_bytes()
    assert rec == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_truncated_teacher_checkpoint_reruns_the_teacher_and_its_students(tmp_path):
    cfg = _cfg()
    first = _run(cfg, tmp_path, _TorchFake())
    assert first.ok and len(first.launched) == 6
    ckpt = tmp_path / "runs/teacher_a0.1/checkpoint.pth"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # result.json still says done
    fake = _TorchFake()
    again = _run(cfg, tmp_path, fake)
    assert set(fake.started) == {"teacher_a0.1", "student_a0.1_T1_s0", "student_a0.1_T2_s0"}
    assert again.ok and {p["run_id"] for p in again.problems} >= {"teacher_a0.1"}
    assert any(p.name.startswith("teacher_a0.1.corrupt-") for p in (tmp_path / "runs").iterdir())


class _DamagingFake(_TorchFake):
    """Damages the teacher's checkpoint while its first student "trains" (a disk error, a user's
    stray write): the teacher's next student must not read it."""

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        handle = super().start(run, argv, env, log_path, cwd, after)
        if run.run_id == "student_a0_T1_s0":
            ckpt = Path(log_path).parent.parent / "teacher_a0" / "checkpoint.pth"
            ckpt.write_bytes(ckpt.read_bytes()[:-10])
        return handle


def test_input_damaged_after_it_finished_is_not_read_and_is_rerun_next_time(tmp_path):
    cfg = _cfg()
    fake = _DamagingFake()
    out = _run(cfg, tmp_path, fake)
    assert set(out.failed) == {"student_a0_T2_s0"} and "teacher_a0" in out.failed["student_a0_T2_s0"]
    assert "student_a0_T2_s0" not in fake.started
    again = _TorchFake()
    out2 = _run(cfg, tmp_path, again)
    # the damaged teacher and every student of it (the one trained on the old file too) re-run
    assert out2.ok and set(again.started) == {"teacher_a0", "student_a0_T1_s0", "student_a0_T2_s0"}


def test_a_damaged_checkpoint_is_not_resumed_from(tmp_path):
    cfg = _cfg()
    _run(cfg, tmp_path, _TorchFake())
    teacher = {r.run_id: r for r in S.build_plan(cfg)}["teacher_a0"]
    rdir = tmp_path / "runs/teacher_a0"
    (rdir / "result.json").unlink()  # killed before it finished: resumable
    assert S.inspect_run(teacher, tmp_path, {}).status == "resume"
    ckpt = rdir / "checkpoint.pth"
    ckpt.write_bytes(ckpt.read_bytes()[:-50])
    st = S.inspect_run(teacher, tmp_path, {})
    assert st.status == "corrupt" and "checkpoint.pth" in st.reason


def test_same_size_damage_and_unrecorded_damage_are_caught(tmp_path):
    import torch

    cfg = _cfg()
    _run(cfg, tmp_path, _TorchFake())
    teacher = {r.run_id: r for r in S.build_plan(cfg)}["teacher_a0"]
    rdir = tmp_path / "runs/teacher_a0"
    ckpt = rdir / "checkpoint.pth"
    good = ckpt.read_bytes()
    assert checksum_problem(teacher, rdir) is None
    # one byte of the stored tensor changed, size unchanged: the recorded sha256 catches it
    i = good.index(torch.arange(64, dtype=torch.float32).numpy().tobytes()[8:16])
    ckpt.write_bytes(good[:i] + bytes([good[i] ^ 1]) + good[i + 1:])
    assert "sha256" in checksum_problem(teacher, rdir)
    # without a record (e.g. an externally dispatched run): the zip's CRC-32s catch the same damage
    (rdir / CHECKSUMS).unlink()
    assert "CRC" in checksum_problem(teacher, rdir)
    ckpt.write_bytes(good[:-100])
    assert "damaged" in checksum_problem(teacher, rdir)
    ckpt.write_bytes(good)
    assert checksum_problem(teacher, rdir) is None


# ------------------------------------------------------------------------------------------------
# 5. validation before any compute
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, setting", [
    (["--target-classes", "3", "10"], "target_classes"),
    (["--projection-classes", "0", "6", "10"], "projection_classes"),
    (["--train-samples", "5"], "train_samples"),
    (["--val-samples", "9"], "val_samples"),
    (["--temperatures", "1e-300"], "temperatures"),
    (["--temperatures", "1", "1e300"], "temperatures"),
    (["--temperatures", "nan"], "temperatures"),
    (["--epochs", "0"], "teacher_epochs"),
    (["--seeds", "0"], "seeds"),
    (["--teacher-model", "resnet_nonexistent"], "teacher_model"),
    (["--student-model", "lskd_cnn_xl"], "student_model"),
])
def test_bad_settings_exit_2_with_one_line_and_launch_nothing(tmp_path, capsys, flags, setting):
    study = tmp_path / "s"
    rc = cli.main(["--out", str(study), "--no-progress"] + flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and setting in err[0]
    assert not study.exists()


def test_class_ids_checked_against_the_dataset_class_count(tmp_path, capsys):
    cfgfile = tmp_path / "c.toml"
    cfgfile.write_text("[analysis]\nprofile_class = 10\n")
    assert cli.main(["--config", str(cfgfile), "--out", str(tmp_path / "s")]) == 2
    assert "profile_class" in capsys.readouterr().err
    # an image folder: its class directories count
    data = tmp_path / "imgs"
    for c in ("a", "b", "c"):
        (data / "train" / c).mkdir(parents=True)
    base = {"dataset": "imagefolder", "data_path": str(data), "target_classes": [0, 1, 2],
            "projection_classes": [0, 1, 2], "profile_class": 2, "train_samples": 3}
    S.load_config(overrides=base)  # 3 classes: every id below 3 and 3 samples are fine
    for bad in ({"target_classes": [3]}, {"profile_class": 3}, {"train_samples": 2}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            S.load_config(overrides=dict(base, **bad))
    # not there yet (e.g. mounted later on the cluster): left to the trainer
    S.load_config(overrides=dict(base, data_path=str(tmp_path / "later"), target_classes=[50]))


# ------------------------------------------------------------------------------------------------
# 6. the CLI's error path
# ------------------------------------------------------------------------------------------------
def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_cli_os_errors_are_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "check_models", lambda cfg: None)
    base = ["--seeds", "1", "--no-analysis", "--no-progress"]
    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert cli.main(["--out", str(a_file)] + base) == 2
    line = _one_error(capsys)
    assert str(a_file) in line and "not a directory" in line
    dangling = tmp_path / "link"  # to a place that cannot be created (under a file)
    dangling.symlink_to(a_file / "deeper")
    assert cli.main(["--out", str(dangling)] + base) == 2
    assert str(a_file) in _one_error(capsys)
    assert cli.main(["--out", str(a_file / "sub")] + base) == 2  # a file as a parent directory
    assert str(a_file) in _one_error(capsys)
    # a full disk / a read-only file system while the study writes its manifest
    from lskd_core.study import runner

    for code, words in ((errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"), (errno.EACCES, "permission")):
        def boom(study, *a, code=code, **k):
            raise OSError(code, os.strerror(code), str(study / "study.json"))

        monkeypatch.setattr(runner, "write_manifest", boom)
        assert cli.main(["--out", str(tmp_path / "s")] + base) == 2
        line = _one_error(capsys)
        assert "study.json" in line and words in line
    # a genuine bug keeps its traceback
    monkeypatch.setattr(runner, "write_manifest", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["--out", str(tmp_path / "s")] + base)


@pytest.mark.parametrize("name, text", [
    ("deep.json", "[" * 100000 + "]" * 100000),
    ("deep.toml", "a = " + "[" * 100000 + "]" * 100000),
    ("bad.toml", "alphas = [0, 0.1\n"),
    ("latin1.json", None),
])
def test_cli_bad_config_files_are_one_line_naming_the_file(tmp_path, capsys, name, text):
    path = tmp_path / name
    if text is None:
        path.write_bytes(b'{"name": "caf\xe9"}')
    else:
        path.write_text(text)
    assert cli.main(["--config", str(path), "--out", str(tmp_path / "s")]) == 2
    assert str(path) in _one_error(capsys)


def test_cli_unreadable_config_is_one_line(tmp_path, capsys, monkeypatch):
    path = tmp_path / "c.json"
    path.write_text("{}")
    real = Path.read_text

    def denied(self, *a, **k):
        if self == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", denied)  # root ignores chmod: simulate the denial
    assert cli.main(["--config", str(path), "--out", str(tmp_path / "s")]) == 2
    line = _one_error(capsys)
    assert str(path) in line and "permission" in line


def test_exit_statuses_are_documented_in_the_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "1 = some runs failed" in text and "2 = bad input" in text


def test_a_file_system_without_locks_is_one_line_not_a_false_holder(tmp_path, capsys, monkeypatch):
    import fcntl

    monkeypatch.setattr(cli, "check_models", lambda cfg: None)

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert cli.main(["--out", str(tmp_path / "s"), "--seeds", "1", "--no-progress"]) == 2
    line = _one_error(capsys)
    assert "study.lock" in line and "in use" not in line


_RUNNER = r"""
import json, sys
from pathlib import Path
from lskd_core import study as S

class Blocking(S.LocalLauncher):
    '''Real child processes in their own sessions, as the local launcher starts them; each waits
    for a go file (whenever it appears: no timing involved), then writes a trainer's outputs.'''

    def start(self, run, argv, env, log_path, cwd=None, after=()):
        code = ("import sys, json, pathlib, time; d = pathlib.Path(sys.argv[1]); go = pathlib.Path(sys.argv[2])\n"
                "while not go.exists():\n    time.sleep(0.01)\n"
                "(d / 'checkpoint.pth').write_bytes(b'w'); "
                "(d / 'result.json').write_text(json.dumps({'status': 'done', 'val_acc1': 33.0, 'val_acc5': 90.0}))")
        return super().start(run, [sys.executable, "-c", code, str(Path(log_path).parent), sys.argv[3]], env,
                             log_path, cwd, after)

cfg = S.load_config(overrides=json.loads(sys.argv[2]))
S.run_study(cfg, sys.argv[1], launcher=Blocking(), report=False, progress=False)
"""


def test_sigkilled_runner_its_surviving_run_is_collected_not_duplicated(tmp_path):
    """The issue's scenario with real processes: a runner is SIGKILLed while its first run is in
    flight; the run survives in its own session; the next runner waits for it and starts no
    duplicate. Ordering comes from a go file the runs wait for, not from timing."""
    import signal

    # provenance "version": two processes hash the same runs even while the source tree is being
    # edited (helpers at work); the code digest has its own tests
    over = {"seeds": 1, "temperatures": [1, 2], "alphas": [0, 0.1], "analysis": False, "jobs": 2,
            "provenance": "version"}
    if "cache" in _FIELDS:
        over["cache"] = False
    study = tmp_path / "s"
    go = tmp_path / "go"
    runner = subprocess.Popen([sys.executable, "-c", _RUNNER, str(study), json.dumps(over), str(go)],
                              cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    launches = [study / "runs" / t / "launch.json" for t in ("teacher_a0", "teacher_a0.1")]  # jobs = 2
    deadline = time.monotonic() + 120
    while not all(p.exists() and "pid" in p.read_text() for p in launches):  # both teachers started
        assert runner.poll() is None and time.monotonic() < deadline, "the runner did not start its runs"
        time.sleep(0.05)
    handles = [json.loads(p.read_text()) for p in launches]
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    assert all(process_alive(h["pid"], h.get("proc_start")) for h in handles)  # the runs outlived their runner

    def echo(msg):  # the new runner waits for the survivors: let them finish now
        if "still running from an earlier runner" in msg and "teacher_a0.1" in msg:
            go.touch()

    fake = _TorchFake()
    try:
        out = _run(S.load_config(overrides=over), study, fake, echo)
    finally:
        for h in handles:
            if process_alive(h["pid"], h.get("proc_start")):
                os.killpg(h["pid"], signal.SIGKILL)
    assert out.ok and sorted(out.adopted) == ["teacher_a0", "teacher_a0.1"]
    assert sorted(fake.started) == ["student_a0.1_T1_s0", "student_a0.1_T2_s0", "student_a0_T1_s0", "student_a0_T2_s0"]
    for t in ("teacher_a0", "teacher_a0.1"):  # the survivors' own results
        assert json.loads((study / "runs" / t / "result.json").read_text())["val_acc1"] == 33.0
