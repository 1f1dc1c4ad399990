"""Multi-GPU fairseq-train's workers (torch.multiprocessing, as fairseq's distributed_utils.call_main
starts them): a user error in a worker ends the command with the same one line as in a single
process; a bug keeps its tracebacks."""

import subprocess
import sys
import textwrap

import pytest
from conftest import subprocess_env

pytest.importorskip("fairseq")

from torch.multiprocessing.spawn import ProcessRaisedException  # noqa: E402

from fairseq_plugin import errors  # noqa: E402

SCRIPT = textwrap.dedent('''
    import sys, time
    import torch.multiprocessing as mp
    from fairseq_plugin.errors import CriterionConfigError

    def worker(rank, kind):
        if rank == 1:
            if kind == "user":
                raise CriterionConfigError("--kd-temperature must be > 0, got -1")
            raise RuntimeError("a bug in worker 1")
        time.sleep(0.5)

    if __name__ == "__main__":
        # fork: the same error path as fairseq's spawn, without re-importing fairseq in every worker
        mp.start_processes(worker, args=(sys.argv[1],), nprocs=2, start_method="fork")
''')


def _run(tmp_path, kind, **env):
    script = tmp_path / "two_workers.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), kind], capture_output=True, text=True, timeout=300,
                          env=subprocess_env(**env))


def test_a_workers_user_error_is_one_line(tmp_path):
    proc = _run(tmp_path, "user")
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "tensorboardX" not in line]
    assert lines[-1] == ("lskd: error: --kd-temperature must be > 0, got -1 (in worker process 1)  "
                         "(LSKD_TRACEBACK=1 shows the traceback)")
    assert "Traceback" not in proc.stderr


def test_a_workers_bug_and_the_traceback_switch_keep_the_tracebacks(tmp_path):
    bug = _run(tmp_path, "bug")
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "RuntimeError: a bug in worker 1" in bug.stderr
    shown = _run(tmp_path, "user", LSKD_TRACEBACK="1")
    assert shown.returncode == 1 and "Traceback" in shown.stderr and "CriterionConfigError" in shown.stderr


def _raised(trace_tail):
    msg = f"\n\n-- Process 3 terminated with the following error:\nTraceback (most recent call last):\n  ...\n{trace_tail}\n"
    return ProcessRaisedException(msg, 3, 4242)


def test_only_our_user_error_types_are_shortened():
    line = errors.worker_user_error_line
    assert line(_raised("lskd_core.teacher_cache_format.CacheMismatch: stale cache: rebuild it")) == \
        "stale cache: rebuild it (in worker process 3)"
    assert line(_raised("fairseq_plugin.errors.UsageError: bad flag")) == "bad flag (in worker process 3)"
    assert line(_raised("ValueError: a plain ValueError is a bug")) is None
    assert line(_raised("lskd_core.losses.NoSuchError: x")) is None  # not a class of ours
    assert line(_raised("numpy.linalg.LinAlgError: singular")) is None  # not our module
    assert line(_raised("lskd_core.jsonio.BadJson: bad.json is not valid JSON")) == \
        "bad.json is not valid JSON (in worker process 3)"
    assert line(RuntimeError("not from a worker")) is None
