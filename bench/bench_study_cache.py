"""Benchmark: the study's grid compute with the teacher cache (``cache = true``) vs without it.

Runs the same study twice, each in a fresh temporary directory and as its own subprocess
(``python -m lskd_core.study --config C --out DIR``): once with ``cache = true`` (a cache run per
teacher; students read ``--teacher-cache``) and once with ``cache = false`` (every student runs its
teacher live). Everything else is identical: the same preset, the same overrides.

What it measures (the study records no CPU time of its own, so both numbers are taken here):

* **per run** (the number reported): the study's ``python`` setting points at a small wrapper that
  starts the real interpreter, waits for it with ``os.wait4`` and appends that process's user +
  system CPU seconds (its waited-for descendants included) and wall seconds to a log, with the run
  id taken from the run's ``--output-dir`` / ``--out``. Summed per run kind (teacher, cache,
  student, export of a teacher / of a student, match, matched) this is the grid's compute without
  the study runner and the report. Interpreter probes of the runner (package versions) are listed
  as ``other``.
* **warm start** (the local launcher's default, :mod:`lskd_core.study.warm_start`): runs forked by
  the warm server do not pass through the wrapper; the server records each one's CPU seconds
  (``wait4``) in the run's ``stdout.log.exit.json``, read here per run. The server itself goes
  through the wrapper, whose number then includes the children it reaped; what is left after
  subtracting them (its imports, paid once) is counted as the kind ``warm_server``. ``--cold``
  turns warm start off in both arms (every run its own interpreter, as before warm start).
* **whole study**: ``resource.getrusage(RUSAGE_CHILDREN)`` before and after each study subprocess:
  runner + runs + report (the report cannot be skipped; it is the same work in both arms except
  for its cache-savings section).

It prints both totals, the ratio without / with the cache for the whole grid and for the part the
cache changes (caches + students + matched students), per-kind CPU and wall seconds, each arm's
wall time and the load average. On a shared machine CPU time is far more robust than wall time.

    python bench/bench_study_cache.py --quick                 # a reduced demo: same grid, tiny runs
    python bench/bench_study_cache.py                         # the demo preset (long: 2 full studies)
    python bench/bench_study_cache.py --preset demo -- --seeds 4 --jobs 1   # study flags after --
    python bench/bench_study_cache.py --set analysis_train_samples=500      # any setting (JSON value)
    python bench/bench_study_cache.py -- --seeds 4 --project-seeds 25       # scale per-seed runs to 25 seeds
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
TIMED_FLAG = "--timed-child"

#: ``--quick``: the demo's grid (alphas, temperatures, exports, report) with tiny runs.
QUICK_SETTINGS: Dict[str, object] = {
    "train_samples": 1000, "val_samples": 500, "seeds": 1, "teacher_epochs": 1, "student_epochs": 1,
    "analysis_train_samples": 500, "analysis_val_samples": 500, "projection_per_class": 20,
}
#: the kinds whose cost the cache changes (the teachers and the exports are the same work in both arms)
CHANGED_KINDS = ("cache", "student", "matched")
#: kinds that scale with the number of student seeds (for --project-seeds)
PER_SEED_KINDS = ("student", "matched", "export_student", "export_matched")
KIND_ORDER = ("teacher", "cache", "student", "matched", "match", "export_teacher", "export_student",
              "export_matched", "warm_server", "other")
WARM_SERVER_MODULE = "lskd_core.study.warm_start"
_RUN_ID = re.compile(r"[/\\]runs[/\\]([^/\\]+)")
_SEED = re.compile(r"_s(\d+)$")


# ---------------------------------------------------------------------------------------------------
# the wrapper used as the study's ``python``


def timed_child(log: str, argv: Sequence[str]) -> int:
    """Run ``sys.executable argv``, append its CPU and wall seconds to ``log`` (one JSON line)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *argv])
    # wait4 gives this child's own rusage (with its waited-for descendants), unlike RUSAGE_CHILDREN
    # of the wrapper, which would be the same here but is not per-process in general.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    line = json.dumps({"argv": list(argv), "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
                       "wall_s": time.perf_counter() - start, "rc": proc.returncode})
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one short O_APPEND write: concurrent runs do not interleave
    finally:
        os.close(fd)
    rc = proc.returncode
    return 128 - rc if rc < 0 else rc  # a signalled child exits like a shell reports it


def write_wrapper(path: Path, log: Path) -> None:
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" {TIMED_FLAG} "{log}" "$@"\n')
    path.chmod(0o755)


# ---------------------------------------------------------------------------------------------------
# parsing what one study did


@dataclass
class KindCost:
    runs: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def add(self, cpu: float, wall: float) -> None:
        self.runs += 1
        self.cpu_s += cpu
        self.wall_s += wall


@dataclass
class Arm:
    cache: bool
    rc: int = 0
    wall_s: float = 0.0
    study_cpu_s: float = 0.0  # RUSAGE_CHILDREN delta: runner + runs + report
    kinds: Dict[str, KindCost] = field(default_factory=dict)
    seeds: int = 0
    failed_runs: List[str] = field(default_factory=list)

    def runs_cpu(self, kinds: Optional[Sequence[str]] = None) -> float:
        return sum(c.cpu_s for k, c in self.kinds.items() if k != "other" and (kinds is None or k in kinds))


def run_id_of(argv: Sequence[str]) -> Optional[str]:
    """The run id of a study run's command: the directory under ``runs/`` of its output flag."""
    for flag in ("--output-dir", "--out", "--save-dir", "--results-path"):
        if flag in argv:
            i = list(argv).index(flag)
            if i + 1 < len(argv):
                m = _RUN_ID.search(argv[i + 1])
                if m:
                    return m.group(1)
    return None


def kind_of(run_id: Optional[str]) -> str:
    """The run kind from the run id (the plan's naming: teacher_, cache_, student_, export_<model>_, ...)."""
    if run_id is None:
        return "other"
    for prefix in ("export_teacher", "export_student", "export_matched", "cache", "teacher", "student",
                   "matched", "match"):
        if run_id.startswith(prefix):
            return prefix
    return "other"


def _add_run(arm: Arm, run_id: Optional[str], cpu: float, wall: float, rc: int, seeds: set) -> None:
    kind = kind_of(run_id)
    arm.kinds.setdefault(kind, KindCost()).add(cpu, wall)
    if rc != 0 and run_id:
        arm.failed_runs.append(f"{run_id} (exit {rc})")
    if kind == "student" and run_id:
        m = _SEED.search(run_id)
        if m:
            seeds.add(m.group(1))


def read_log(log: Path, study: Path, arm: Arm) -> None:
    """Cold runs from the wrapper's log, warm-started runs from their exit records; the warm
    server's own CPU is its wrapper record minus the children it reaped."""
    seeds: set = set()
    server_cpu = server_wall = 0.0
    servers = 0
    for line in (log.read_text().splitlines() if log.exists() else []):
        rec = json.loads(line)
        if WARM_SERVER_MODULE in rec["argv"]:
            server_cpu += rec["user_s"] + rec["sys_s"]
            server_wall += rec["wall_s"]
            servers += 1
            continue
        _add_run(arm, run_id_of(rec["argv"]), rec["user_s"] + rec["sys_s"], rec["wall_s"], rec["rc"], seeds)
    children_cpu = 0.0
    for exit_file in sorted(study.glob("runs/*/stdout.log.exit.json")):
        rec = json.loads(exit_file.read_text())
        cpu = rec["cpu_user_s"] + rec["cpu_system_s"]
        children_cpu += cpu
        _add_run(arm, exit_file.parent.name, cpu, 0.0, rec["returncode"], seeds)
    if servers:
        arm.kinds["warm_server"] = KindCost(runs=servers, cpu_s=max(0.0, server_cpu - children_cpu),
                                            wall_s=server_wall)
    arm.seeds = len(seeds)


# ---------------------------------------------------------------------------------------------------
# running the arms


def parse_set(items: Sequence[str]) -> Dict[str, object]:
    out: Dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE (VALUE as JSON, e.g. seeds=3), got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw  # a bare string such as device=cpu
    return out


def run_arm(cache: bool, settings: Dict[str, object], study_args: Sequence[str], root: Path,
            cold: bool = False) -> Arm:
    name = "cache" if cache else "live"
    work = root / name
    work.mkdir()
    log, wrapper = work / "cpu.jsonl", work / "python"
    write_wrapper(wrapper, log)
    config = work / "config.json"
    extra: Dict[str, object] = {"launcher": {"kind": "local", "warm_start": False}} if cold else {}
    config.write_text(json.dumps({**settings, **extra, "cache": cache, "python": str(wrapper)}, indent=1))
    cmd = [sys.executable, "-m", "lskd_core.study", "--config", str(config), "--out", str(work / "study"),
           "--no-progress", *study_args]
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(work / "study.log", "w") as out:
        rc = subprocess.call(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    arm = Arm(cache=cache, rc=rc, wall_s=time.perf_counter() - start,
              study_cpu_s=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    read_log(log, work / "study", arm)
    if rc != 0:
        tail = (work / "study.log").read_text(errors="replace").splitlines()[-15:]
        print(f"[{name}] the study exited {rc}; last lines of its output:\n  " + "\n  ".join(tail), flush=True)
    print(f"[{name}] done: {arm.wall_s:.0f} s wall, {arm.study_cpu_s:.0f} s CPU", flush=True)
    return arm


# ---------------------------------------------------------------------------------------------------
# the table


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def projected(arm: Arm, seeds: int) -> Tuple[float, float]:
    """(grid CPU, changed-part CPU) with the per-seed kinds scaled from arm.seeds to ``seeds``."""
    scale = seeds / arm.seeds if arm.seeds else 1.0
    total = changed = 0.0
    for kind, c in arm.kinds.items():
        if kind == "other":
            continue
        cpu = c.cpu_s * (scale if kind in PER_SEED_KINDS else 1.0)
        total += cpu
        changed += cpu if kind in CHANGED_KINDS else 0.0
    return total, changed


def report(live: Arm, cached: Arm, project_seeds: Optional[int]) -> None:
    print("\nCPU seconds (user + sys) per run kind; wall seconds summed over the runs of that kind")
    print(f"{'kind':<16} {'runs':>5} {'CPU live':>9} {'CPU cache':>10} {'wall live':>10} {'wall cache':>11}")
    for kind in KIND_ORDER:
        a, b = live.kinds.get(kind, KindCost()), cached.kinds.get(kind, KindCost())
        if a.runs or b.runs:
            runs = f"{a.runs}/{b.runs}" if a.runs != b.runs else str(a.runs)
            print(f"{kind:<16} {runs:>5} {a.cpu_s:9.1f} {b.cpu_s:10.1f} {a.wall_s:10.1f} {b.wall_s:11.1f}")
    lg, cg = live.runs_cpu(), cached.runs_cpu()
    lc, cc = live.runs_cpu(CHANGED_KINDS), cached.runs_cpu(CHANGED_KINDS)
    print(f"\ngrid (sum over runs)     live {lg:8.1f} s   cache {cg:8.1f} s   live / cache {ratio(lg, cg)}")
    print(f"caches + students        live {lc:8.1f} s   cache {cc:8.1f} s   live / cache {ratio(lc, cc)}")
    print(f"whole study (RUSAGE_CHILDREN: runner + runs + report)"
          f"  live {live.study_cpu_s:.1f} s   cache {cached.study_cpu_s:.1f} s   "
          f"live / cache {ratio(live.study_cpu_s, cached.study_cpu_s)}")
    print(f"study wall               live {live.wall_s:8.1f} s   cache {cached.wall_s:8.1f} s")
    if project_seeds:
        (plg, plc), (pcg, pcc) = projected(live, project_seeds), projected(cached, project_seeds)
        print(f"projected to {project_seeds} seeds (per-seed kinds scaled from {cached.seeds}): "
              f"grid live / cache {ratio(plg, pcg)} ({plg:.0f} / {pcg:.0f} s), "
              f"caches + students {ratio(plc, pcc)} ({plc:.0f} / {pcc:.0f} s)")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    study_args: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, study_args = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", help="the study preset both arms start from (default demo)")
    parser.add_argument("--quick", action="store_true", help="the preset's grid with tiny runs: " +
                        ", ".join(f"{k} {v}" for k, v in QUICK_SETTINGS.items()))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a study setting for both arms (VALUE as JSON), e.g. --set seeds=4; repeatable")
    parser.add_argument("--project-seeds", type=int, default=None, metavar="N",
                        help="also print the ratios with the per-seed runs (students, their exports) scaled to N seeds")
    parser.add_argument("--cold", action="store_true",
                        help="no warm start: every run its own interpreter (launcher warm_start = false) in both arms")
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="keep both study directories under DIR (must not exist) instead of a removed temp dir")
    args = parser.parse_args(argv)
    try:
        settings: Dict[str, object] = {"preset": args.preset, **(QUICK_SETTINGS if args.quick else {}),
                                       **parse_set(args.set)}
    except ValueError as exc:
        parser.error(str(exc))
    if "cache" in settings or "python" in settings:
        parser.error("--set cache/python: the benchmark sets these itself (cache on in one arm, off in the other)")
    if args.project_seeds is not None and args.project_seeds < 1:
        parser.error("--project-seeds must be >= 1")
    if args.keep is not None and os.path.exists(args.keep):
        parser.error(f"--keep {args.keep}: already exists; name a new directory")
    root = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="bench_study_cache_"))
    root.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"settings: {json.dumps(settings)}  study flags: {study_args}  load average {load[0]:.1f}", flush=True)
    try:
        cached = run_arm(True, settings, study_args, root, cold=args.cold)
        live = run_arm(False, settings, study_args, root, cold=args.cold)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(live, cached, args.project_seeds)
    load_end = os.getloadavg()
    print(f"load average (1 min) at start {load[0]:.1f}, at end {load_end[0]:.1f}; "
          f"{os.cpu_count()} CPUs: CPU seconds are the robust number, wall seconds depend on the load")
    bad = [(a, "cache" if a.cache else "live") for a in (cached, live) if a.rc != 0 or a.failed_runs]
    for a, name in bad:
        print(f"[{name}] study exit status {a.rc}; failed runs: {', '.join(a.failed_runs) or 'none'}")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == TIMED_FLAG:
        sys.exit(timed_child(sys.argv[2], sys.argv[3:]))
    sys.exit(main())
