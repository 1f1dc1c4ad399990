"""Benchmark: the advisor's CPU time with warm start (its runs forked from one warm server) vs without.

Runs the same small advisor (``python -m lskd_core.advise --config C --out DIR``) twice in the same
invocation, each in a fresh temporary study directory and as its own subprocess: once with the
launcher's default warm start and once with ``[launcher] warm_start = false`` (every teacher,
cache and student segment its own interpreter, as before). Everything else is identical, so both
arms train the same teacher, build the same cache and run the same student segments.

What it measures: ``resource.getrusage(RUSAGE_CHILDREN)`` before and after each advisor subprocess,
i.e. the advisor, every run it started and (warm arm) the warm server with the forks it reaped: the
whole CPU cost of the advice. It prints both totals, their difference per run started (teacher,
cache, segments: what warm start saves each of them) and the ratio warm / cold; also each arm's
wall time, the training CPU the advisor recorded itself (advice.json ``cpu_s_train``) and the load
average. CPU seconds are the robust number on a shared machine; wall seconds depend on the load.

    python bench/bench_advisor_warm.py --quick      # 1 teacher, 2 temperatures x 2 seeds, tiny runs
    python bench/bench_advisor_warm.py              # 4 temperatures x 2 seeds, 3 epochs, more samples
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent

QUICK = {"train_samples": 300, "val_samples": 100, "teacher_epochs": 1, "student_epochs": 2, "seeds": 2,
         "alphas": [0.1], "temperatures": [1, 4]}
FULL = {"train_samples": 1000, "val_samples": 300, "teacher_epochs": 2, "student_epochs": 3, "seeds": 2,
        "alphas": [0.1], "temperatures": [1, 2, 4, 8]}
COMMON = {"preset": "demo", "name": "bench-advisor", "analysis": False, "teacher_model": "lskd_cnn_s",
          "student_batch_size": 100, "teacher_batch_size": 100}


@dataclass
class Arm:
    warm: bool
    rc: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    runs: int = 0  # teacher, cache and student segments started
    cpu_s_train: float = 0.0  # the advisor's own record of its segments' CPU
    recommendation: Optional[Dict[str, float]] = None
    stderr_tail: str = ""


def _toml(settings: Dict[str, object], warm: bool) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    return "\n".join(lines) + f'\n\n[launcher]\nkind = "local"\nwarm_start = {str(warm).lower()}\n'


def run_arm(warm: bool, settings: Dict[str, object], root: Path) -> Arm:
    """One advisor invocation in a fresh study directory; its CPU, wall time and what it ran."""
    arm = Arm(warm)
    name = "warm" if warm else "cold"
    cfg = root / f"{name}.toml"
    cfg.write_text(_toml(settings, warm), encoding="utf-8")
    study = root / name
    argv = [sys.executable, "-m", "lskd_core.advise", "--config", str(cfg), "--out", str(study), "--budget", "1",
            "--reduction-factor", "2", "--no-signals", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    u0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    arm.wall_s = time.perf_counter() - t0
    arm.cpu_s = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
    arm.rc, arm.stderr_tail = out.returncode, out.stderr[-1500:]
    segments = study / "advise" / "segments.jsonl"
    n_segments = len(segments.read_text().splitlines()) if segments.exists() else 0
    arm.runs = n_segments + sum(1 for p in (study / "runs").glob("*") if (p / "result.json").exists())
    advice = study / "advise" / "advice.json"
    if advice.exists():
        summary = json.loads(advice.read_text())
        arm.cpu_s_train = float(summary["compute"].get("cpu_s_train", 0.0))
        arm.recommendation = {k: summary["recommendation"][k] for k in ("alpha", "temperature")}
    return arm


def report(cold: Arm, warm: Arm) -> List[str]:
    """The benchmark's lines (the last one is the summary docs/benchmarks.md quotes)."""
    lines = []
    for arm in (cold, warm):
        lines.append(f"{'warm' if arm.warm else 'cold'}: advisor CPU {arm.cpu_s:.1f} s (its segments' own record "
                     f"{arm.cpu_s_train:.1f} s), wall {arm.wall_s:.1f} s, {arm.runs} runs started, "
                     f"advice {arm.recommendation}")
    saved = cold.cpu_s - warm.cpu_s
    per_run = saved / max(cold.runs, 1)
    lines.append(f"advisor warm start: CPU {warm.cpu_s:.1f} s vs {cold.cpu_s:.1f} s cold, warm/cold = "
                 f"{warm.cpu_s / cold.cpu_s:.3f}; saves {saved:.1f} CPU s ({per_run:.2f} s per run over "
                 f"{cold.runs} runs); wall {warm.wall_s:.1f} s vs {cold.wall_s:.1f} s")
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the tiny grid (about a minute per arm)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary study directories")
    args = parser.parse_args(argv)
    settings = {**COMMON, **(QUICK if args.quick else FULL)}
    root = Path(tempfile.mkdtemp(prefix="lskd-bench-advisor-"))
    load = os.getloadavg()
    print(f"settings: {json.dumps(settings)}  load average {load[0]:.1f}", flush=True)
    try:
        cold = run_arm(False, settings, root)  # the same order every time (the first arm reads the data from disk)
        warm = run_arm(True, settings, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    for arm in (cold, warm):
        if arm.rc != 0:
            print(f"{'warm' if arm.warm else 'cold'} arm failed (exit status {arm.rc}):\n{arm.stderr_tail}",
                  file=sys.stderr)
            return 1
    for line in report(cold, warm):
        print(line)
    if cold.recommendation != warm.recommendation or cold.runs != warm.runs:
        print("warm and cold advisors disagree (advice or runs): warm start must not change results", file=sys.stderr)
        return 1
    load_end = os.getloadavg()
    print(f"load average (1 min) at start {load[0]:.1f}, at end {load_end[0]:.1f}; {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
