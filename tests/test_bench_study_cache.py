"""bench/bench_study_cache.py: argument handling, run-id parsing and the timing wrapper (no study runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "bench_study_cache.py"


bench = load_script(SCRIPT, "bench_study_cache")


@pytest.mark.parametrize("argv, message", [
    (["--set", "seeds"], "KEY=VALUE"),
    (["--set", "cache=false"], "sets these itself"),
    (["--project-seeds", "0"], "--project-seeds must be >= 1"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_keep_dir_that_exists_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--keep", str(tmp_path)])
    assert exc.value.code == 2 and "already exists" in capsys.readouterr().err


def test_set_parses_json_values_and_bare_strings():
    assert bench.parse_set(["seeds=3", "alphas=[0, 0.1]", "device=cpu"]) == {
        "seeds": 3, "alphas": [0, 0.1], "device": "cpu"}


@pytest.mark.parametrize("argv, run_id, kind", [
    (["-m", "vision_plugin.train", "--teacher-ckpt", "/s/runs/teacher_a0/checkpoint.pth",
      "--output-dir", "/s/runs/student_a0_T64_s3"], "student_a0_T64_s3", "student"),
    (["-m", "vision_plugin.teacher_cache", "build", "--teacher-ckpt", "/s/runs/teacher_a0.1/c.pth",
      "--out", "/s/runs/cache_teacher_a0.1/cache"], "cache_teacher_a0.1", "cache"),
    (["-m", "vision_plugin.export_features", "--ckpt", "/s/runs/student_a0_T1_s0/c.pth",
      "--out", "/s/runs/export_student_a0_T1_s0_val/features.npz"], "export_student_a0_T1_s0_val", "export_student"),
    (["-m", "lskd_core.study.match", "--out", "/s/runs/match_ts0"], "match_ts0", "match"),
    (["-c", "print(1)"], None, "other"),
])
def test_run_id_comes_from_the_output_flag_not_the_inputs(argv, run_id, kind):
    assert bench.run_id_of(argv) == run_id
    assert bench.kind_of(run_id) == kind


def test_timed_wrapper_passes_exit_status_and_logs_child_cpu(tmp_path):
    log = tmp_path / "cpu.jsonl"
    # the child burns CPU for a while and exits 3; the wrapper must report both
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\nraise SystemExit(3)"
    rc = subprocess.call([sys.executable, str(SCRIPT), bench.TIMED_FLAG, str(log), "-c", code])
    assert rc == 3
    rec = json.loads(log.read_text())
    assert rec["rc"] == 3 and rec["argv"] == ["-c", code]
    assert rec["user_s"] + rec["sys_s"] >= 0.3 and rec["wall_s"] >= 0.3
