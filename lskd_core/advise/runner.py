"""The advisor's real runs: the study's teachers and caches (reused when done), and student
segments trained up to a given epoch, resumable, in ``<study>/advise/runs/<student id>/``.

A student segment is the study's own student command (:func:`lskd_core.study.plan.run_command`,
so the same teacher cache, data subset, schedule and seed) with its output directory moved under
``advise/`` and ``--stop-after-epoch K``: the student trains with the schedule of the full
``--epochs`` and stops after K epochs, so a cell promoted later resumes (``--resume``) on the
trajectory it would have had in the full grid. A trainer without that flag is stopped by the
advisor itself once epoch K is in its metrics.jsonl (its checkpoint is written before the line),
which wastes at most the start of one epoch. Each advisor run directory records the study run's
hash and its inputs' fingerprints (``advise_run.json``); a directory made for another hash or from
another teacher cache is moved aside, never reused.

Every run (teacher, cache, student segment) is started by the study's local launcher
(:class:`lskd_core.study.launchers.LocalLauncher`): with warm start on (the default; the config's
``[launcher] warm_start = false`` turns it off) it is a fork of one warm server that imported torch
once (:mod:`lskd_core.study.warm_start`), saving the ~2-3 CPU seconds of imports per run. The
advisor closes the server when it is done. Its runs lead their own sessions, so the launcher's
handle is recorded in the run directory (``launch.json``, as the study does): a run left running by
a killed advisor is stopped (its checkpoint kept) before the directory is used again.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from lskd_core.jsonio import BadJson, read_json_object, write_json
from lskd_core.study.config import StudyConfig
from lskd_core.study.launchers import Handle, LocalLauncher
from lskd_core.study.plan import Run, build_plan, run_command, run_dir
from lskd_core.study.registry import launcher_spec
from lskd_core.study.run_exec import child_env, finish_run
from lskd_core.study.state import (
    RESULT,
    append_jsonl,
    dep_fingerprints,
    inspect_run,
    move_aside,
    orphan_process,
    write_launch,
    write_run_config,
)
from lskd_core.study.warm_start import read_exit_file

__all__ = ["StudentRunner", "ensure_teachers", "teachers_ready", "teacher_class_counts", "advisor_launcher",
           "run_to_end", "ADVISE_DIR", "SEGMENTS", "RUN_RECORD"]

ADVISE_DIR = "advise"
SEGMENTS = "segments.jsonl"
RUN_RECORD = "advise_run.json"
STOP_FLAG = "--stop-after-epoch"
Cell = Tuple[float, float]


# ------------------------------------------------------------------------------------------------
# starting runs: the study's local launcher (warm start)
# ------------------------------------------------------------------------------------------------
def advisor_launcher(cfg: StudyConfig) -> LocalLauncher:
    """The launcher of the advisor's runs: local processes whatever launcher the study uses (the
    advisor waits for each run), warm-started unless the config says ``[launcher] warm_start = false``."""
    _, options = launcher_spec(cfg.launcher)
    return LocalLauncher.from_options({"warm_start": options.get("warm_start", True)})


def _stop_orphan(launcher: LocalLauncher, rdir: Path, echo: Callable[[str], None]) -> None:
    """Stop a run that a killed advisor (or study runner) left running in ``rdir``: two processes
    must never train in one directory. Its checkpoint stays, so the next start resumes from it."""
    handle = orphan_process(rdir)
    if handle is None:
        return
    echo(f"[advise] {rdir.name}: stopping pid {handle.get('pid')}, left running by an earlier invocation")
    launcher.stop(handle)
    write_launch(rdir, dict(handle, ended=time.time(), exit_status=None))


def _record_cpu(handle: Handle, wait_s: float = 2.0) -> float:
    """CPU seconds of a warm-forked run from the server's exit record (written within ~0.2 s of
    its end); 0 for a cold run (its CPU time is in this process's RUSAGE_CHILDREN)."""
    path = handle.get("exit_file")
    if not path:
        return 0.0
    deadline = time.time() + wait_s
    record = read_exit_file(Path(path))
    while record is None and time.time() < deadline:
        time.sleep(0.05)
        record = read_exit_file(Path(path))
    return float(record.get("cpu_user_s", 0.0)) + float(record.get("cpu_system_s", 0.0)) if record else 0.0


def run_to_end(launcher: LocalLauncher, run: Run, argv: Sequence[str], env: Mapping[str, str], rdir: Path,
               echo: Callable[[str], None] = print, done: Optional[Callable[[], bool]] = None) -> Tuple[int, float]:
    """Run ``argv`` with its output appended to ``rdir/stdout.log`` and wait for it: (exit status,
    CPU seconds of the run, cold or warm). ``done()`` true: the run has done what was asked, so it
    is stopped and counts as exit status 0. Ctrl-C or SIGTERM (KeyboardInterrupt) stops the run."""
    _stop_orphan(launcher, rdir, echo)
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    handle = launcher.start(run, argv, env, rdir / "stdout.log")
    write_launch(rdir, handle)
    rc: Optional[int] = None
    try:
        while rc is None:
            rc = launcher.poll(handle)
            if rc is None and done is not None and done():
                launcher.stop(handle)
                rc = 0
            elif rc is None:
                time.sleep(0.2)
    except BaseException:
        launcher.stop(handle)  # a killed advisor leaves no trainer behind
        raise
    finally:
        write_launch(rdir, dict(handle, ended=time.time(), exit_status=rc))
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cold = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    return rc, cold + _record_cpu(handle)


# ------------------------------------------------------------------------------------------------
# teachers and caches: the study's own runs
# ------------------------------------------------------------------------------------------------
def _needed_runs(plan: Sequence[Run]) -> List[Run]:
    """Teachers and teacher caches (what every student depends on), in plan order."""
    return [r for r in plan if r.kind in ("teacher", "cache")]


def ensure_teachers(cfg: StudyConfig, study: Path, echo=print,
                    launcher: Optional[LocalLauncher] = None) -> List[Run]:
    """Train the study's teachers and build their caches where they are not done (one at a time,
    the study's commands, run dirs and records; done runs are reused as they are). ``launcher``:
    the advisor's (:func:`advisor_launcher`; one is made and closed here when not given)."""
    own = launcher is None
    launcher = launcher or advisor_launcher(cfg)
    try:
        return _ensure_teachers(cfg, study, echo, launcher)
    finally:
        if own:
            launcher.close()


def _ensure_teachers(cfg: StudyConfig, study: Path, echo, launcher: LocalLauncher) -> List[Run]:
    plan = build_plan(cfg)
    env = child_env(cfg)
    for run in _needed_runs(plan):
        rdir = run_dir(study, run.run_id)
        state = inspect_run(run, study, dep_fingerprints(run, study))
        if state.status == "done":
            continue
        if state.status in ("corrupt", "stale"):
            moved = move_aside(rdir, state.status)
            echo(f"[advise] {run.run_id}: {state.status} ({state.reason}); moved to {moved.name} and re-running")
        resume = state.status == "resume"
        argv = run_command(run, study, cfg, resume=resume)
        rdir.mkdir(parents=True, exist_ok=True)
        write_run_config(run, study, cfg, argv, dep_fingerprints(run, study), launched_by="study")
        echo(f"[advise] {run.run_id}: {'resuming' if resume else 'running'}")
        t0 = time.time()
        rc, _ = run_to_end(launcher, run, argv, env, rdir, echo)
        err = finish_run(run, study, cfg.task, rc, time.time() - t0)
        if err is not None:
            raise RuntimeError(f"{run.run_id} failed ({err}); see {rdir / 'stdout.log'}")
    return plan


def teachers_ready(cfg: StudyConfig, study: Path) -> bool:
    """Every teacher and cache of the plan is done (then the study directory need not be locked:
    the advisor only reads them, and a study runner may be busy with its students meanwhile)."""
    return all(inspect_run(r, study, dep_fingerprints(r, study)).status == "done" for r in _needed_runs(build_plan(cfg)))


def teacher_class_counts(plan: Sequence[Run], study: Path) -> Dict[str, Optional[int]]:
    """num_classes recorded in each finished teacher's result.json (None where not recorded)."""
    out: Dict[str, Optional[int]] = {}
    for run in plan:
        if run.kind != "teacher":
            continue
        try:
            result = read_json_object(run_dir(study, run.run_id) / RESULT) or {}
        except BadJson:
            result = {}
        n = result.get("num_classes")
        out[run.run_id] = int(n) if isinstance(n, int) else None
    return out


# ------------------------------------------------------------------------------------------------
# student segments
# ------------------------------------------------------------------------------------------------
def read_curve(rdir: Path, key: str = "val_acc1") -> List[float]:
    """Per-epoch ``key`` from a run's metrics.jsonl, epochs 0, 1, ... without gaps."""
    path = rdir / "metrics.jsonl"
    by_epoch: Dict[int, float] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), int) and key in rec:
            by_epoch[rec["epoch"]] = float(rec[key])
    curve: List[float] = []
    while len(curve) in by_epoch:
        curve.append(by_epoch[len(curve)])
    return curve


def _trainer_supports_stop(cfg: StudyConfig, env: Dict[str, str], launcher: LocalLauncher, where: Path,
                           timeout: float = 300) -> bool:
    """Whether the trainer's ``--help`` lists ``--stop-after-epoch`` (run like the advisor's other
    runs, so warm when they are: one torch import less per invocation). ``where``: its directory."""
    argv = [cfg.python or sys.executable, "-m", "vision_plugin.train", "--help"]
    probe = Run("trainer_help", "probe", ("module", "vision_plugin.train"), ["--help"])
    where.mkdir(parents=True, exist_ok=True)
    log = where / "stdout.log"
    log.unlink(missing_ok=True)
    deadline = time.time() + timeout
    try:
        run_to_end(launcher, probe, argv, env, where, echo=lambda line: None, done=lambda: time.time() > deadline)
        return STOP_FLAG in log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


class StudentRunner:
    """``runner(cell, seed, epochs)`` -> the student's val top-1 after each epoch 1..epochs, training
    only what is not on disk yet. Usable as the allocation's trainer."""

    def __init__(self, cfg: StudyConfig, study: Path, plan: Sequence[Run], echo=print,
                 launcher: Optional[LocalLauncher] = None) -> None:
        self.cfg, self.study, self.echo = cfg, study, echo
        self.launcher = launcher or advisor_launcher(cfg)  # the caller closes it (advise() does)
        self.root = study / ADVISE_DIR
        self.students: Dict[Tuple[float, float, int], Run] = {
            (float(r.info["alpha"]), float(r.info["temperature"]), int(r.info["seed"])): r
            for r in plan if r.kind == "student" and "temperature" in r.info}
        self.env = child_env(cfg)
        self._stop_flag: Optional[bool] = None
        self.train_samples: Optional[int] = None

    def run_dir(self, cell: Cell, seed: int) -> Path:
        return self.root / "runs" / self.students[(cell[0], cell[1], seed)].run_id

    def _identity(self, run: Run) -> dict:
        return {"run_id": run.run_id, "study_hash": run.hash, "inputs": dep_fingerprints(run, self.study)}

    def _checked_dir(self, run: Run) -> Path:
        """The advisor's dir of ``run``, moved aside first when it was made for another run."""
        rdir = self.root / "runs" / run.run_id
        want = self._identity(run)
        try:
            have = read_json_object(rdir / RUN_RECORD)
        except BadJson:
            have = {"corrupt": True}
        if rdir.exists() and have != want and any(rdir.iterdir()):
            differing = sorted(k for k in set(want) | set(have or {}) if (have or {}).get(k) != want.get(k))
            moved = move_aside(rdir, "stale")
            self.echo(f"[advise] {run.run_id}: made for another run ({', '.join(differing)} differ); "
                      f"moved to {moved.name}")
        rdir.mkdir(parents=True, exist_ok=True)
        write_json(rdir / RUN_RECORD, want)
        return rdir

    def _argv(self, run: Run, rdir: Path, epochs: int, resume: bool) -> List[str]:
        grid_dir = str(run_dir(self.study, run.run_id))
        argv = [a.replace(grid_dir, str(rdir)) for a in run_command(run, self.study, self.cfg)]
        if self._stop_flag is None:
            self._stop_flag = _trainer_supports_stop(self.cfg, self.env, self.launcher, self.root / "trainer_help")
        if self._stop_flag:
            argv += [STOP_FLAG, str(epochs)]
        if resume:
            argv += ["--resume", str(rdir / "checkpoint.pth")]
        return argv

    def __call__(self, cell: Cell, seed: int, epochs: int) -> List[float]:
        run = self.students[(cell[0], cell[1], seed)]
        rdir = self._checked_dir(run)
        curve = read_curve(rdir)
        if len(curve) >= epochs:
            return curve[:epochs]
        resume = (rdir / "checkpoint.pth").exists()
        argv = self._argv(run, rdir, epochs, resume)
        self.echo(f"[advise] {run.run_id}: epochs {len(curve)} -> {epochs}")
        t0 = time.time()
        rc, cpu = self._train(run, argv, rdir, epochs)
        after = read_curve(rdir)
        if len(after) < epochs:
            raise RuntimeError(f"{run.run_id}: the student stopped at epoch {len(after)} of {epochs} "
                               f"(exit status {rc}); see {rdir / 'stdout.log'}")
        append_jsonl(self.root / SEGMENTS, {"run_id": run.run_id, "alpha": cell[0], "temperature": cell[1],
                                            "seed": seed, "from_epoch": len(curve), "to_epoch": len(after),
                                            "cpu_s": round(cpu, 3), "wall_s": round(time.time() - t0, 3),
                                            "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if self.train_samples is None:
            self.train_samples = _train_images(rdir)
        return after[:epochs]

    def _train(self, run: Run, argv: List[str], rdir: Path, epochs: int) -> Tuple[int, float]:
        """Run the trainer: (exit status, CPU seconds); without --stop-after-epoch support it is
        stopped once epoch ``epochs`` is logged (a warm-forked trainer as a cold one)."""
        with open(rdir / "stdout.log", "a", encoding="utf-8") as log:
            log.write(f"\n# {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n")
        done = None if self._stop_flag else (lambda: len(read_curve(rdir)) >= epochs)
        return run_to_end(self.launcher, run, argv, self.env, rdir, self.echo, done=done)


def _train_images(rdir: Path) -> Optional[int]:
    """Training images per epoch, from the first epoch record of metrics.jsonl."""
    try:
        for line in (rdir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            if isinstance(rec, dict) and "train_images" in rec:
                return int(rec["train_images"])
    except (OSError, ValueError):
        return None
    return None


def segments(study: Path) -> List[dict]:
    """Every training segment the advisor ran in this study (all invocations)."""
    path = study / ADVISE_DIR / SEGMENTS
    out = []
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    except OSError:
        pass
    return out


def install_sigterm() -> None:
    """SIGTERM -> KeyboardInterrupt, so a killed advisor stops its trainer (see _train)."""
    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
