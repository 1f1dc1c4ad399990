"""The advisor's runs start warm (issue 22 item 2): forks of the study's warm server
(lskd_core.study.warm_start) through the study's LocalLauncher. Stopping a trainer once epoch K is
logged, Ctrl-C, runs left by a killed advisor and the ``[launcher] warm_start = false`` setting work
as for cold runs, and (slow) a tiny real advisor run gives the same results warm and cold."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import needs_fashion_mnist, subprocess_env

from lskd_core import study as S
from lskd_core.advise.runner import advisor_launcher, read_curve, run_to_end
from lskd_core.study.config import load_config
from lskd_core.study.lock import process_alive, process_start
from lskd_core.study.state import read_launch, write_launch
from lskd_core.study.warm_start import read_exit_file

ROOT = Path(__file__).resolve().parent.parent

# a trainer that logs one epoch every 0.1 s and never stops by itself (no --stop-after-epoch)
FAKE_TRAINER = textwrap.dedent('''
    import json, os, sys, time
    if __name__ == "__main__":  # the warm server imports the module before it forks
        print("pid", os.getpid(), flush=True)
        for epoch in range(10000):
            with open(os.path.join(sys.argv[1], "metrics.jsonl"), "a") as fh:
                fh.write(json.dumps({"epoch": epoch, "val_acc1": 10.0 + epoch}) + "\\n")
            time.sleep(0.1)
''')


@pytest.fixture()
def fake_env(tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "lskd_fake_trainer.py").write_text(FAKE_TRAINER)
    (mods / "lskd_quick.py").write_text("if __name__ == '__main__':\n    print('quick ran')\n")
    return subprocess_env(PYTHONPATH=os.pathsep.join([str(mods), str(ROOT)]))


RUN = S.Run("student_x", "student", ("module", "x"), [])


def _logged_pid(log: Path) -> int:
    words = [line.split() for line in log.read_text().splitlines() if line.startswith("pid ")]
    return int(words[-1][1])


@pytest.mark.parametrize("warm", [True, False])
def test_a_trainer_without_stop_flag_is_stopped_once_epoch_k_is_logged(tmp_path, fake_env, warm):
    rdir = tmp_path / "run"
    rdir.mkdir()
    launcher = S.LocalLauncher(warm_start=warm)
    try:
        rc, cpu = run_to_end(launcher, RUN, [sys.executable, "-m", "lskd_fake_trainer", str(rdir)], fake_env, rdir,
                             echo=lambda line: None, done=lambda: len(read_curve(rdir)) >= 3)
        assert launcher.warm_note is None, launcher.warm_note
    finally:
        launcher.close()
    assert rc == 0
    assert 3 <= len(read_curve(rdir)) <= 5  # stopped within a poll of epoch 3, not left running
    pid, logged = _logged_pid(rdir / "stdout.log"), len(read_curve(rdir))
    time.sleep(0.3)
    assert not process_alive(pid) and len(read_curve(rdir)) == logged  # it no longer runs
    record = read_exit_file(rdir / "stdout.log.exit.json")
    if warm:  # forked by the server: it reaped the trainer after our SIGTERM and recorded its CPU time
        assert record is not None and record["pid"] == pid and record["returncode"] == -signal.SIGTERM
        assert cpu == pytest.approx(record["cpu_user_s"] + record["cpu_system_s"])
    else:
        assert record is None
    assert cpu > 0
    handle = read_launch(rdir)
    assert handle is not None and handle["pid"] == pid and handle["exit_status"] == 0 and "ended" in handle


def test_ctrl_c_stops_a_warm_run_and_is_raised(tmp_path, fake_env):
    rdir = tmp_path / "run"
    rdir.mkdir()

    def interrupted() -> bool:
        if read_curve(rdir):
            raise KeyboardInterrupt  # what SIGINT (or the advisor's SIGTERM handler) raises in the loop
        return False

    launcher = S.LocalLauncher()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_to_end(launcher, RUN, [sys.executable, "-m", "lskd_fake_trainer", str(rdir)], fake_env, rdir,
                       echo=lambda line: None, done=interrupted)
    finally:
        launcher.close()
    assert not process_alive(_logged_pid(rdir / "stdout.log"))
    assert read_launch(rdir)["exit_status"] is None


def test_a_run_left_by_a_killed_advisor_is_stopped_before_the_directory_is_reused(tmp_path, fake_env):
    rdir = tmp_path / "run"
    rdir.mkdir()
    left = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        write_launch(rdir, {"launcher": "local", "host": socket.gethostname(), "pid": left.pid,
                            "log": str(rdir / "stdout.log"), "started": time.time(),
                            "proc_start": process_start(left.pid)})
        lines: list = []
        launcher = S.LocalLauncher()
        try:
            rc, _ = run_to_end(launcher, RUN, [sys.executable, "-m", "lskd_quick"], fake_env, rdir, echo=lines.append)
        finally:
            launcher.close()
        assert left.wait(timeout=5) == -signal.SIGTERM
        assert rc == 0 and "quick ran" in (rdir / "stdout.log").read_text()
        assert len(lines) == 1 and f"stopping pid {left.pid}" in lines[0]
    finally:
        if left.poll() is None:
            left.kill()
            left.wait()


def test_the_studys_warm_start_setting_turns_the_advisors_warm_start_off():
    assert advisor_launcher(load_config("demo", None, {})).warm_start is True
    off = load_config("demo", None, {"launcher": {"kind": "local", "warm_start": False}})
    assert advisor_launcher(off).warm_start is False


def test_the_trainer_help_probe_starts_warm_and_finds_the_stop_flag(tmp_path):
    pytest.importorskip("torchvision")
    from lskd_core.advise.runner import STOP_FLAG, _trainer_supports_stop

    launcher = S.LocalLauncher()
    try:
        found = _trainer_supports_stop(load_config("demo", None, {}), subprocess_env(PYTHONPATH=str(ROOT)), launcher,
                                       tmp_path / "probe")
    finally:
        launcher.close()
    assert found is True and STOP_FLAG in (tmp_path / "probe" / "stdout.log").read_text()
    assert read_exit_file(tmp_path / "probe" / "stdout.log.exit.json")["returncode"] == 0  # forked, not cold


# ------------------------------------------------------------------------------------------------
# a tiny real advisor run, warm and cold
# ------------------------------------------------------------------------------------------------
TINY = ('preset = "demo"\nname = "tiny"\nanalysis = false\ntrain_samples = 300\nval_samples = 100\n'
        'teacher_model = "lskd_cnn_s"\nteacher_epochs = 1\nstudent_epochs = 2\nseeds = 2\n'
        'alphas = [0.1]\ntemperatures = [1, 4]\nstudent_batch_size = 100\nteacher_batch_size = 100\n')
_TIMING = ("time_s", "images_per_s", "time", "wall_s", "cpu_s")


def run_tiny_advisor(tmp_path: Path, warm: bool, timeout: float = 400) -> Path:
    """One tiny advisor run (fresh study dir) with warm start on or off; its study dir."""
    name = "warm" if warm else "cold"
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(TINY + f'\n[launcher]\nkind = "local"\nwarm_start = {str(warm).lower()}\n')
    study = tmp_path / name
    argv = [sys.executable, "-m", "lskd_core.advise", "--config", str(cfg), "--out", str(study), "--budget", "1",
            "--reduction-factor", "2", "--no-signals"]
    out = subprocess.run(argv, cwd=ROOT, env=subprocess_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return study


def _epochs(rdir: Path) -> list:
    recs = [json.loads(x) for x in (rdir / "metrics.jsonl").read_text().splitlines() if '"epoch": ' in x]
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in recs]


@needs_fashion_mnist
@pytest.mark.slow
def test_a_warm_advisor_run_gives_the_same_results_as_a_cold_one(tmp_path):
    warm, cold = run_tiny_advisor(tmp_path, True), run_tiny_advisor(tmp_path, False)
    runs = sorted(p.name for p in (cold / "advise" / "runs").iterdir())
    assert runs == sorted(p.name for p in (warm / "advise" / "runs").iterdir()) and len(runs) == 4
    for run in runs:
        w, c = warm / "advise" / "runs" / run, cold / "advise" / "runs" / run
        assert _epochs(w) == _epochs(c), run  # bit-identical curves, losses and per-class accuracies
        assert (w / "stdout.log.exit.json").is_file() and not (c / "stdout.log.exit.json").exists()
        assert sorted(p.name for p in w.iterdir() if p.name != "stdout.log.exit.json") == \
            sorted(p.name for p in c.iterdir())
    for teacher in ("teacher_a0.1", "cache_teacher_a0.1"):  # the study's runs the advisor made, warm too
        assert (warm / "runs" / teacher / "stdout.log.exit.json").is_file()
    a, b = (json.loads((s / "advise" / "advice.json").read_text()) for s in (warm, cold))
    for key in ("recommendation", "allocation", "confidence", "ranking", "tiebreak", "settings"):
        assert a[key] == b[key], key
    assert a["compute"]["epoch_runs"] == b["compute"]["epoch_runs"] > 0
    assert 0 < a["compute"]["cpu_s_train"] and 0 < b["compute"]["cpu_s_train"]
