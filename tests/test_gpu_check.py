"""scripts/gpu_check.py (issue 10, item 5): the smoke mode runs every check on the CPU and prints
each section with numbers; failures (injected, missing fairseq, no CUDA) exit non-zero naming the step."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env

SCRIPT = REPO / "scripts" / "gpu_check.py"
HAVE_FAIRSEQ = importlib.util.find_spec("fairseq") is not None
NUMBER = r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = subprocess_env(threads=None)
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def _section(out: str, title: str) -> str:
    """The text of the section whose header starts with ``title`` (up to the next header)."""
    match = re.search(rf"^== {re.escape(title)}.*?==\n(.*?)(?=^== |\Z)", out, re.S | re.M)
    assert match, f"section {title!r} missing from:\n{out}"
    return match.group(1)


def _metric(out: Path) -> float:
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in records if "epoch" in r and "event" not in r][-1]["images_per_s"]


@pytest.mark.slow
def test_smoke_mode_prints_every_section_with_numbers(tmp_path):
    proc = _run("--keep", str(tmp_path), *([] if HAVE_FAIRSEQ else ["--skip", "fairseq"]))
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    kd = _section(out, "1. KD loss")
    rows = re.findall(rf"^\s+(\d+)x(\d+)\s+(fp16|bf16|fp32) \|\s+({NUMBER})\s+({NUMBER})\s+({NUMBER}) \|.*\|"
                      rf"\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})\s+({NUMBER})$", kd, re.M)
    assert len(rows) == 6, kd  # 2 smoke shapes x 3 dtypes
    for _rows, _classes, dtype, naive_ms, ours_ms, ratio, *errors in rows:
        assert float(ratio) == pytest.approx(float(ours_ms) / float(naive_ms), rel=0.05, abs=0.01)
        if dtype == "fp32":  # float32 losses agree with the float64 reference to float32 rounding
            assert float(errors[0]) < 1e-5 and float(errors[1]) < 1e-5

    vision = _section(out, "2. ResNet-18 <- ResNet-50")
    live = float(re.search(rf"live teacher\s+({NUMBER}) images/s", vision).group(1))
    cached = float(re.search(rf"cached teacher\s+({NUMBER}) images/s", vision).group(1))
    # the printed rates are the trainer's own logged ones, not the script's
    assert live == pytest.approx(_metric(tmp_path / "live"), abs=0.06)
    assert cached == pytest.approx(_metric(tmp_path / "cached"), abs=0.06)
    assert re.search(rf"ratio cached / live {NUMBER}", vision)

    ddp = _section(out, "3. 2-process torchrun")
    assert re.search(rf"({NUMBER}) images/s", ddp)
    assert (tmp_path / "ddp" / "result.json").is_file()

    fairseq = _section(out, "4. fairseq")
    if HAVE_FAIRSEQ:
        assert re.search(rf"ls_kd\s+{NUMBER} words/s", fairseq)
        assert re.search(rf"label_smoothed_cross_entropy\s+{NUMBER} words/s", fairseq)
    summary = _section(out, "summary")
    for check in ("kd_loss", "vision", "ddp", "fairseq"):
        status = "PASS" if check != "fairseq" or HAVE_FAIRSEQ else "SKIP"
        assert re.search(rf"^\s+{check}\s+{status}\b.*{NUMBER}", summary, re.M), summary


@pytest.mark.slow
def test_injected_failure_exits_nonzero_naming_step_command_and_output():
    proc = _run("--only", "vision", "--inject-failure", "vision")
    assert proc.returncode == 1
    err = proc.stderr
    assert "FAILED: check 'vision'" in err
    assert "step:    vision: live-teacher student (exit status 2)" in err
    assert re.search(r"command: .*train\.py .*--kd-temperature -1", err)
    assert "temperature" in err.split("lines of its output:", 1)[1]  # the trainer's own error line
    assert re.search(r"^\s+vision\s+FAIL\b", proc.stdout, re.M)


def test_missing_fairseq_fails_with_the_remedy_unless_skipped(monkeypatch, capsys):
    gpu_check = _load()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fairseq" else real(name, *a))
    assert gpu_check.main(["--device", "cpu", "--smoke", "--only", "fairseq"]) == 1
    captured = capsys.readouterr()
    assert "carry a fairseq wheel" in captured.err and "docs/benchmarks.md" in captured.err
    assert re.search(r"fairseq\s+FAIL", captured.out)
    assert gpu_check.main(["--device", "cpu", "--smoke", "--only", "fairseq", "--skip", "fairseq"]) == 0
    assert re.search(r"fairseq\s+SKIP", capsys.readouterr().out)


def test_injected_kd_failure_shows_the_traceback_and_fails(capsys):
    gpu_check = _load()
    assert gpu_check.main(["--device", "cpu", "--smoke", "--only", "kd_loss", "--inject-failure", "kd_loss"]) == 1
    err = capsys.readouterr().err
    assert "FAILED: check 'kd_loss'" in err and "Traceback" in err and "injected failure" in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line_exit_2(capsys):
    assert _load().main([]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cpu --smoke" in err


def test_cpu_without_smoke_is_refused(capsys):
    assert _load().main(["--device", "cpu"]) == 2
    assert "--smoke" in capsys.readouterr().err


def test_fairseq_words_per_s_reads_the_last_train_record():
    log = ('2026 | INFO | train_inner | {"epoch": 1, "wps": "10"}\n'
           '2026 | INFO | train | {"epoch": 1, "train_loss": "6.5", "train_wps": "3556.4"}\n'
           '2026 | INFO | train | {"epoch": 2, "train_wps": "4000.5"}\n')
    assert _load().fairseq_words_per_s(log) == 4000.5
    with pytest.raises(RuntimeError, match="train_wps"):
        _load().fairseq_words_per_s('x | train_inner | {"wps": "1"}\n')


def test_spent_budget_fails_the_checks_not_started(capsys):
    assert _load().main(["--device", "cpu", "--smoke", "--only", "kd_loss", "--budget-s", "0"]) == 1
    captured = capsys.readouterr()
    assert "--budget-s time is spent" in captured.err
    assert re.search(r"kd_loss\s+FAIL\s+not started", captured.out)


@pytest.mark.slow
def test_a_step_running_past_the_budget_is_killed_and_named(capsys):
    # image folder + teacher take ~2-5 s in-process; the cache build then gets the 1 s minimum
    assert _load().main(["--device", "cpu", "--smoke", "--only", "vision", "--budget-s", "1"]) == 1
    err = capsys.readouterr().err
    assert "step:    vision: teacher cache build (timed out after 1 s" in err
    assert re.search(r"command: .*-m vision_plugin\.teacher_cache build", err)
