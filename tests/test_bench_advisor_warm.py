"""bench/bench_advisor_warm.py: its config per arm and its summary arithmetic (no advisor runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "bench_advisor_warm.py"


bench = load_script(SCRIPT, "bench_advisor_warm")


def test_each_arm_differs_only_in_the_warm_start_setting():
    settings = {**bench.COMMON, **bench.QUICK}
    tomllib = pytest.importorskip("tomllib")
    warm, cold = (tomllib.loads(bench._toml(settings, w)) for w in (True, False))
    assert warm.pop("launcher") == {"kind": "local", "warm_start": True}
    assert cold.pop("launcher") == {"kind": "local", "warm_start": False}
    assert warm == cold == settings


def test_summary_line_by_hand():
    cold = bench.Arm(False, cpu_s=100.0, wall_s=80.0, runs=10)
    warm = bench.Arm(True, cpu_s=70.0, wall_s=60.0, runs=10)
    last = bench.report(cold, warm)[-1]
    # 70/100 = 0.700; (100 - 70) / 10 runs = 3.00 s per run
    assert "warm/cold = 0.700" in last and "saves 30.0 CPU s (3.00 s per run over 10 runs)" in last
