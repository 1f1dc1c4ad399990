"""Warm start (lskd_core.study.warm_start): runs forked from a pre-imported server behave like
``python -m MODULE`` started cold: same argv and ``__name__``, same exit status, output in the
log, files flushed, signals and process groups, and bit-identical training results."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import needs_fashion_mnist, subprocess_env, wait_for_exit

from lskd_core import study as S
from lskd_core.study.launchers import LOST
from lskd_core.study.warm_start import WarmServer, read_exit_file, warm_module, warm_target
from vision_plugin.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent('''
    import json, os, sys, threading
    mode = sys.argv[1]
    print(json.dumps({"argv": sys.argv, "name": __name__, "cwd": os.getcwd(), "pid": os.getpid(),
                      "pgid": os.getpgid(0)}), flush=True)
    if mode == "fail":
        raise RuntimeError("probe failed on purpose")
    if mode == "exit":
        sys.exit(int(sys.argv[2]))
    if mode == "message":
        sys.exit("a message for stderr")
    if mode == "sleep":
        import time
        time.sleep(60)
    if mode == "leave-open":
        OPEN = open(sys.argv[2], "w")
        OPEN.write("written, never closed")
    if mode == "numpy":
        import numpy as np
        import torch
        a = np.random.default_rng(0).standard_normal((300, 300))
        t = torch.from_numpy(a)
        print(float((a @ a).trace()), float((t @ t).trace()), flush=True)
''')

THREADED = "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"


@pytest.fixture()
def probe_env(tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "lskd_probe.py").write_text(PROBE)
    (mods / "lskd_threaded.py").write_text(THREADED + "print('threaded ran')\n")
    # stands in for a module that initialises CUDA at import (this machine may have no GPU)
    (mods / "lskd_cuda_init.py").write_text("import torch\ntorch.cuda.is_initialized = lambda: True\n")
    env = subprocess_env(PYTHONPATH=os.pathsep.join([str(mods), str(ROOT)]))
    return env


def _wait_exit(path: Path, timeout: float = 30.0) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        rec = read_exit_file(path)
        if rec is not None:
            return rec
        time.sleep(0.05)
    raise AssertionError(f"no exit record at {path}")


def test_warm_module_accepts_only_plain_python_dash_m():
    py = "/env/bin/python"
    assert warm_module([py, "-m", "vision_plugin.train", "--epochs", "1"], py) == "vision_plugin.train"
    assert warm_module([py, "-c", "print(1)"], py) is None
    assert warm_module(["/other/python", "-m", "x"], py) is None
    assert warm_module([py, "-m", "torch.distributed.run", "-m", "x"], py) is None  # torchrun: own rendezvous
    assert warm_module([py, "-m"], py) is None


def test_server_runs_modules_like_python_dash_m(tmp_path, probe_env):
    server = WarmServer(sys.executable, probe_env, preload=("numpy",))
    try:
        assert server.usable, server.failed
        cases = {"ok": ["ok"], "exit": ["exit", "3"], "fail": ["fail"], "message": ["message"],
                 "leave-open": ["leave-open", str(tmp_path / "open.txt")], "numpy": ["numpy"]}
        pids = {}
        for name, args in cases.items():
            pids[name] = server.spawn("lskd_probe", args, tmp_path / f"{name}.log", tmp_path / f"{name}.exit.json",
                                      cwd=tmp_path)
            assert isinstance(pids[name], int)
        records = {name: _wait_exit(tmp_path / f"{name}.exit.json") for name in cases}
    finally:
        server.close()
    assert {n: r["returncode"] for n, r in records.items()} == {
        "ok": 0, "exit": 3, "fail": 1, "message": 1, "leave-open": 0, "numpy": 0}
    for name, rec in records.items():
        assert rec["pid"] == pids[name] and rec["cpu_user_s"] >= 0 and rec["cpu_system_s"] >= 0
    first = json.loads((tmp_path / "ok.log").read_text().splitlines()[0])
    # what a cold `python -m lskd_probe ok` would see: its own file as argv[0], __main__, the cwd,
    # and a new session (process group = its pid)
    assert first["argv"][0].endswith("lskd_probe.py") and first["argv"][1:] == ["ok"]
    assert first["name"] == "__main__" and first["cwd"] == str(tmp_path) and first["pgid"] == first["pid"]
    assert "RuntimeError: probe failed on purpose" in (tmp_path / "fail.log").read_text()
    assert "a message for stderr" in (tmp_path / "message.log").read_text()
    assert (tmp_path / "open.txt").read_text() == "written, never closed"  # flushed at exit
    # BLAS in numpy and torch still works in a forked child (OpenBLAS restarts its pool after fork)
    np_trace, torch_trace = map(float, (tmp_path / "numpy.log").read_text().splitlines()[1].split())
    assert np_trace == pytest.approx(torch_trace, rel=1e-9)


def test_a_child_that_cannot_start_exits_and_the_server_keeps_serving(tmp_path, probe_env):
    server = WarmServer(sys.executable, probe_env, preload=())
    try:
        # its log cannot be opened (no such directory): the child must exit, never run the server loop
        bad = server.spawn("lskd_probe", ["ok"], tmp_path / "missing" / "x.log", tmp_path / "bad.exit.json")
        assert isinstance(bad, int)
        assert _wait_exit(tmp_path / "bad.exit.json")["returncode"] == 1
        good = server.spawn("lskd_probe", ["exit", "5"], tmp_path / "g.log", tmp_path / "g.exit.json")
        assert isinstance(good, int) and _wait_exit(tmp_path / "g.exit.json")["returncode"] == 5
    finally:
        server.close()


def test_server_refuses_to_fork_once_an_import_started_a_thread(tmp_path, probe_env):
    server = WarmServer(sys.executable, probe_env, preload=())
    try:
        assert server.usable
        pid = server.spawn("lskd_threaded", [], tmp_path / "t.log", tmp_path / "t.exit.json")
        assert pid is None and "threads" in (server.failed or "")
        # unusable for good: later requests are refused without asking
        assert server.spawn("lskd_probe", ["ok"], tmp_path / "p.log", tmp_path / "p.exit.json") is None
    finally:
        server.close()


def test_server_refuses_to_fork_once_cuda_is_initialised(tmp_path, probe_env):
    server = WarmServer(sys.executable, probe_env, preload=("torch",))
    try:
        assert server.spawn("lskd_cuda_init", [], tmp_path / "c.log", tmp_path / "c.exit.json") is None
        assert "CUDA" in (server.failed or "")
    finally:
        server.close()


def test_launcher_falls_back_to_cold_when_python_is_not_python(tmp_path, probe_env):
    fake = tmp_path / "fakepython"
    fake.write_text('#!/bin/sh\necho "fake run $*"\nexit 0\n')
    fake.chmod(0o755)
    la = S.LocalLauncher()
    h = la.start(S.Run("r", "export", ("module", "x"), []), [str(fake), "-m", "lskd_probe", "ok"], probe_env,
                 tmp_path / "log.txt")
    assert wait_for_exit(la, h) == 0 and "exit_file" not in h
    assert la.warm_note  # the runner prints why runs start cold
    assert "fake run -m lskd_probe ok" in (tmp_path / "log.txt").read_text()
    la.close()


def test_launcher_warm_handles_poll_stop_and_reload(tmp_path, probe_env):
    la = S.LocalLauncher()
    run = S.Run("r", "export", ("module", "x"), [])
    try:
        h = la.start(run, [sys.executable, "-m", "lskd_probe", "exit", "4"], probe_env, tmp_path / "a.log")
        assert h["exit_file"] and json.loads(json.dumps(h)) == h
        assert wait_for_exit(la, h) == 4
        # another invocation reading launch.json gets the recorded status, not LOST
        assert S.LocalLauncher().poll(json.loads(json.dumps(h))) == 4
        # a new attempt at the same log path does not inherit the old record
        h2 = la.start(run, [sys.executable, "-m", "lskd_probe", "sleep"], probe_env, tmp_path / "a.log")
        assert h2["exit_file"] == h["exit_file"] and la.poll(h2) is None
        t0 = time.time()
        while (tmp_path / "a.log").read_text().count("pgid") < 2 and time.time() - t0 < 20:
            time.sleep(0.05)
        la.stop(h2)
        assert wait_for_exit(la, h2) == -signal.SIGTERM
        # stopped right after it was started: the run already leads its own process group
        h3 = la.start(run, [sys.executable, "-m", "lskd_probe", "sleep"], probe_env, tmp_path / "b.log")
        la.stop(h3)
        assert wait_for_exit(la, h3) == -signal.SIGTERM
        # without an exit record and no such process: LOST, as for a cold handle
        gone = dict(h2, exit_file=str(tmp_path / "none.json"))
        assert S.LocalLauncher().poll(gone) == LOST
    finally:
        la.close()


def test_warm_start_setting_is_validated():
    assert S.LocalLauncher.from_options({"warm_start": False}).warm_start is False
    assert S.LocalLauncher.from_options({}).warm_start is True
    with pytest.raises(ValueError, match="warm_start must be true or false"):
        S.LocalLauncher.from_options({"warm_start": "no"})


@needs_fashion_mnist
@pytest.mark.slow
def test_warm_training_run_is_bit_identical_to_a_cold_one(tmp_path):
    """The same deterministic CPU training run, cold and forked from the warm server: identical
    weights and identical per-epoch metrics."""
    env = subprocess_env(PYTHONPATH=str(ROOT))
    args = ["--model", "lskd_cnn_s", "--dataset", "fashion-mnist", "--train-samples", "300", "--val-samples", "200",
            "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--label-smoothing", "0.1", "--seed", "3",
            "--threads", "1", "--workers", "0", "--deterministic", "--no-progress", "--device", "cpu"]
    run = S.Run("r", "teacher", ("module", "vision_plugin.train"), [])
    outs = {}
    for mode in ("cold", "warm"):
        out = tmp_path / mode
        out.mkdir()
        la = S.LocalLauncher(warm_start=(mode == "warm"))
        try:
            h = la.start(run, [sys.executable, "-m", "vision_plugin.train", *args, "--output-dir", str(out)], env,
                         out / "stdout.log")
            assert wait_for_exit(la, h, timeout=300) == 0, (out / "stdout.log").read_text()[-2000:]
            assert ("exit_file" in h) == (mode == "warm")
        finally:
            la.close()
        outs[mode] = out
    cold = load_checkpoint(outs["cold"] / "checkpoint.pth")["model"]
    warm = load_checkpoint(outs["warm"] / "checkpoint.pth")["model"]
    assert cold.keys() == warm.keys()
    for k in cold:
        assert torch.equal(cold[k], warm[k]), k

    def epochs(out):
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [{k: r[k] for k in ("epoch", "train_loss", "val_acc1")} for r in rows if "val_acc1" in r]

    assert epochs(outs["cold"]) == epochs(outs["warm"]) and len(epochs(outs["cold"])) == 2


WRAPPER = "#!{python}\nimport sys\nfrom lskd_probe_entry import main\nif __name__ == '__main__':\n    sys.exit(main())\n"
ENTRY = textwrap.dedent('''
    import json, logging, os, sys
    # configures logging first thing, as fairseq_cli.train does before it imports fairseq
    logging.basicConfig(format="entry-format | %(name)s | %(message)s", level=logging.INFO, stream=sys.stdout)
    def main():
        print(json.dumps({"argv": sys.argv, "path0": sys.path[0], "name": __name__, "pgid": os.getpgid(0),
                          "pid": os.getpid()}), flush=True)
        logging.getLogger("probe").info("hello")
        return int(sys.argv[1])
''')
#: an earlier run's import that configured the root logger in the server (fairseq's import does)
DEFAULT_LOGGING = "import logging\nlogging.basicConfig()\n"


@pytest.fixture()
def script_env(tmp_path, probe_env):
    """A console script as pip installs one: an entry point in a distribution's metadata and pip's
    wrapper in a bin folder, its #! line naming this interpreter."""
    site = tmp_path / "site"
    info = site / "lskd_probe_entry-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lskd-probe-entry\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[console_scripts]\nlskd-probe = lskd_probe_entry:main\n"
                                           "lskd-other = lskd_probe_entry:main\n")
    (site / "lskd_probe_entry.py").write_text(ENTRY)
    (site / "lskd_default_logging.py").write_text(DEFAULT_LOGGING)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"lskd-probe": WRAPPER.format(python=sys.executable),
                       "lskd-other": "#!" + sys.executable + "\nprint('not the wrapper')\n",
                       "lskd-shell": "#!/bin/sh\necho shell\n"}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = dict(probe_env, PYTHONPATH=os.pathsep.join([str(site), probe_env["PYTHONPATH"]]))
    return env, bin_dir


def test_warm_target_knows_modules_and_python_console_scripts(script_env):
    _, bin_dir = script_env
    py = sys.executable
    assert warm_target([py, "-m", "vision_plugin.train", "--epochs", "1"]) == (
        py, {"module": "vision_plugin.train"}, ["--epochs", "1"])
    assert warm_target([str(bin_dir / "lskd-probe"), "3"]) == (py, {"script": str(bin_dir / "lskd-probe")}, ["3"])
    assert warm_target([py, "-m", "m"]) == (py, {"module": "m"}, [])
    assert warm_target([str(bin_dir / "lskd-shell")]) is None  # a shell script: never forked from Python
    assert warm_target([str(bin_dir / "no-such-script")]) is None
    assert warm_target([]) is None
    # the same wrapper named fairseq-train starts cold (it trains slower as a fork: COLD_SCRIPTS)
    train = bin_dir / "fairseq-train"
    train.write_bytes((bin_dir / "lskd-probe").read_bytes())
    train.chmod(0o755)
    assert warm_target([str(train), "data"]) is None
    generate = bin_dir / "fairseq-generate"
    generate.write_bytes((bin_dir / "lskd-probe").read_bytes())
    generate.chmod(0o755)
    assert warm_target([str(generate), "data"]) == (py, {"script": str(generate)}, ["data"])


def test_server_runs_a_console_script_as_its_wrapper_would(tmp_path, script_env):
    env, bin_dir = script_env
    server = WarmServer(sys.executable, env, preload=("lskd_default_logging", "lskd_probe_entry"))
    try:
        assert server.usable, server.failed
        pid = server.spawn(None, ["7"], tmp_path / "s.log", tmp_path / "s.exit.json", cwd=tmp_path,
                           script=str(bin_dir / "lskd-probe"))
        assert isinstance(pid, int)
        rec = _wait_exit(tmp_path / "s.exit.json")
        # same name as an entry point, other text: not known to be its wrapper, so it must start cold
        other = server.spawn(None, ["1"], tmp_path / "o.log", tmp_path / "o.exit.json",
                             script=str(bin_dir / "lskd-other"))
        assert other is None and server.usable
    finally:
        server.close()
    assert rec["returncode"] == 7  # sys.exit(main()) with main() returning the code
    seen = json.loads((tmp_path / "s.log").read_text().splitlines()[0])
    assert seen["argv"] == [str(bin_dir / "lskd-probe"), "7"] and seen["path0"] == str(bin_dir)
    assert seen["name"] == "lskd_probe_entry" and seen["pgid"] == seen["pid"] == pid
    # the entry module's top level ran afresh: its own log format, not the server's earlier default
    assert "entry-format | probe | hello" in (tmp_path / "s.log").read_text()


def test_launcher_starts_console_scripts_warm_and_cold_alike(tmp_path, script_env):
    env, bin_dir = script_env
    outs = {}
    for warm in (True, False):
        la = S.LocalLauncher(warm_start=warm)
        log = tmp_path / f"warm{warm}.log"
        h = la.start(S.Run("r", "export", ("exe", "lskd-probe"), []), [str(bin_dir / "lskd-probe"), "4"], env, log,
                     cwd=tmp_path)
        assert wait_for_exit(la, h) == 4 and ("exit_file" in h) == warm
        la.close()
        outs[warm] = json.loads(log.read_text().splitlines()[0])
    for key in ("argv", "path0", "name"):
        assert outs[True][key] == outs[False][key]
    for warm in (True, False):
        assert "entry-format | probe | hello" in (tmp_path / f"warm{warm}.log").read_text()
