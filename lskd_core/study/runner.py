"""The study loop: start every ready run, reap the finished ones, repeat; then write the report.

Resumability (each run directory ``<out>/runs/<run_id>/``, see :mod:`lskd_core.study.state`):

* ``run_config.json`` records the run's *defining* arguments (the command with execution details
  such as paths of this study, ``--device`` and ``--workers`` abstracted away) and their SHA-256,
  which also covers the hashes of the runs it depends on. A changed teacher therefore changes its
  students' hashes, and they re-run too.
* A run is skipped iff its ``result.json`` says ``"status": "done"``, its recorded hash equals the
  current one, its outputs exist, and the dependencies it consumed are the ones on disk now.
* A killed training run whose config still matches resumes from its ``checkpoint.pth``
  (``--resume``), so a killed study loses at most the epoch in progress.
* A run dir that cannot be trusted (unparseable JSON, "done" but checkpoint missing, produced by an
  older config) is reported and moved aside to ``<dir>.corrupt-<time>`` / ``<dir>.stale-<time>``:
  nothing is deleted.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from lskd_core.jsonio import BadJson, read_json_object
from lskd_core.study.config import StudyConfig
from lskd_core.study.launchers import LOST, Handle, Launch, Launcher, make_launcher
from lskd_core.study.lock import StudyLock
from lskd_core.study.plan import Run, build_plan, run_command, run_dir
from lskd_core.study.progress import make_bar, running_postfix
from lskd_core.study.run_exec import child_env, finish_run
from lskd_core.study.state import (
    CHECKSUMS,
    LAUNCH_LOG,
    RESULT,
    RUN_CONFIG,
    RunState,
    append_jsonl,
    checksum_problem,
    dep_fingerprints,
    inspect_run,
    log_event,
    move_aside,
    orphan_process,
    read_launch,
    record_checksums,
    record_inputs,
    write_launch,
    write_manifest,
    write_run_config,
)

__all__ = ["StudyOutcome", "run_study", "child_env", "LAUNCHER_DIR"]

#: ``<study>/<LAUNCHER_DIR>/``: the launcher's own files (a batch launcher's array scripts).
LAUNCHER_DIR = "launcher"


@dataclass
class StudyOutcome:
    study_dir: Path
    report_dir: Optional[Path]
    launched: list  # run ids started by this invocation
    skipped: list  # run ids found done
    failed: dict  # run id -> reason
    blocked: list  # run ids not run because a dependency failed
    problems: list  # corrupt / stale dirs found, with where they were moved
    wall_time_s: float
    in_flight: list = field(default_factory=list)  # run ids left queued/running (detached launcher, wait=False)
    adopted: list = field(default_factory=list)  # run ids an earlier invocation started (detached launcher)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


@dataclass
class _InFlight:
    handle: Handle
    started: float
    resume: bool
    adopted: bool = False  # started by an earlier invocation (detached launcher, or an orphaned local process)


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


@dataclass
class _Loop:
    """State of one invocation: what is pending, in flight, done, failed and blocked."""

    cfg: StudyConfig
    study: Path
    plan: List[Run]
    launcher: Launcher
    echo: Callable[[str], None]
    bar: Any
    env: Dict[str, str] = field(default_factory=dict)
    pending: List[Run] = field(default_factory=list)
    running: Dict[str, _InFlight] = field(default_factory=dict)
    done: set = field(default_factory=set)
    failed: dict = field(default_factory=dict)
    blocked: list = field(default_factory=list)
    launched: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    adopted: list = field(default_factory=list)
    warm_noted: bool = False

    def __post_init__(self) -> None:
        self.by_id = {r.run_id: r for r in self.plan}
        self.pending = list(self.plan)

    # ------------------------------------------------------------------ start
    def _ready(self, run: Run) -> bool:
        ok = self.done | set(self.running) if self.launcher.queues_dependencies else self.done
        return all(d in ok for d in run.deps)

    def _block(self, run_id: str) -> None:
        self.blocked.append(run_id)
        log_event(self.study, "blocked", run_id=run_id, deps=self.by_id[run_id].deps)
        self.bar.update(1)

    def start_ready(self) -> bool:
        """Start every ready run, up to ``jobs`` at a time; True when anything changed."""
        if self.launcher.queues_dependencies:
            return self._start_waves()
        progressed = False
        for run in list(self.pending):
            if len(self.running) >= self.cfg.jobs:
                break
            taken = self._take(run)
            progressed = progressed or taken is not None
            item = self._prepare(run) if taken == "ready" else None
            if item is not None:
                self._launch([item])
        return progressed

    def _take(self, run: Run) -> Optional[str]:
        """Take a pending run that can be decided now: "blocked" (an input failed), "ready", or
        None (it stays pending)."""
        if any(d in self.failed or d in self.blocked for d in run.deps):
            self.pending.remove(run)
            self._block(run.run_id)
            return "blocked"
        if not self._ready(run):
            return None
        self.pending.remove(run)
        return "ready"

    def _start_waves(self) -> bool:
        """A queueing launcher (it shares the machines itself) gets every ready run at once, one
        wave per stage: the runs behind a wave become ready once it is in flight."""
        progressed = False
        while True:
            wave, taken = [], False
            for run in list(self.pending):
                how = self._take(run)
                taken = taken or how is not None
                item = self._prepare(run) if how == "ready" else None
                if item is not None:
                    wave.append(item)
            if wave:
                self._launch(wave)
            progressed = progressed or taken
            if not taken:
                return progressed

    def _state(self, run: Run) -> RunState:
        in_flight = [d for d in run.deps if d in self.running]
        state = inspect_run(run, self.study, dep_fingerprints(run, self.study))
        if in_flight and state.status != "new":
            # queued behind dependencies that are being re-run: whatever is on disk predates them
            rdir = run_dir(self.study, run.run_id)
            if not (rdir / RESULT).exists() and not (rdir / "checkpoint.pth").exists():
                # nothing it made survives (e.g. a job cancelled before it started): reuse the dir
                return RunState("restart", f"queued again behind {in_flight}")
            return RunState("stale", f"its input run(s) {in_flight} are being re-run")
        return state

    def _prepare(self, run: Run) -> Optional[Tuple[Launch, bool]]:
        """Everything before a run is handed to the launcher (its dir checked, moved aside when it
        cannot be trusted, its command and run config written): the launch and whether it resumes;
        None when it needs no start (found done, or an input was damaged)."""
        state = self._state(run)
        rdir = run_dir(self.study, run.run_id)
        if state.status == "done":
            if not (rdir / CHECKSUMS).exists():
                record_checksums(run, rdir)  # verified by a zip check just now: guard it from here on
            self.done.add(run.run_id)
            self.skipped.append(run.run_id)
            self.bar.update(1)
            return None
        damaged = self._damaged_input(run)
        if damaged:
            self.failed[run.run_id] = damaged
            log_event(self.study, "failed", run_id=run.run_id, reason=damaged)
            self.echo(f"[study] {run.run_id} not started: {damaged}")
            self.bar.update(1)
            return None
        if state.status in ("corrupt", "stale"):
            moved = move_aside(rdir, state.status)
            self.problems.append(log_event(self.study, state.status, run_id=run.run_id, reason=state.reason,
                                           action=f"moved to {moved.name} and re-run"))
            self.echo(f"[study] {run.run_id}: {state.status} ({state.reason}); moved to {moved} and re-running")
        resume = state.status == "resume"
        argv = run_command(run, self.study, self.cfg, resume=resume)
        rdir.mkdir(parents=True, exist_ok=True)
        if not resume and (rdir / RESULT).exists():
            os.replace(rdir / RESULT, rdir / (RESULT + ".previous"))
        write_run_config(run, self.study, self.cfg, argv, dep_fingerprints(run, self.study), launched_by="study")
        log_path = rdir / "stdout.log"
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(f"\n# {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(argv)}\n")
        append_jsonl(self.study / LAUNCH_LOG, {"time": time.time(), "run_id": run.run_id, "resume": resume,
                                               "argv": argv})
        after = [self.running[d].handle for d in run.deps if d in self.running]
        return Launch(run, argv, log_path, after=after), resume

    def _launch(self, items: List[Tuple[Launch, bool]]) -> None:
        """Hand prepared runs to the launcher together, and record their handles."""
        handles = self.launcher.start_many([x for x, _ in items], self.env, self.study / LAUNCHER_DIR)
        self._note_cold_start()
        for (item, resume), handle in zip(items, handles):
            write_launch(item.log_path.parent, handle)
            self.running[item.run.run_id] = _InFlight(handle, time.time(), resume)
            self.launched.append(item.run.run_id)

    def _note_cold_start(self) -> None:
        note = getattr(self.launcher, "warm_note", None)
        if note and not self.warm_noted:
            self.warm_noted = True
            self.echo(f"[study] runs start cold (no warm start): {note}")

    def _damaged_input(self, run: Run) -> Optional[str]:
        """Re-verify the finished inputs a run is about to read (size + sha256 recorded when they
        finished): a file damaged since must not be trained on. The next invocation re-runs it."""
        for d in run.deps:
            if d in self.done:
                problem = checksum_problem(self.by_id[d], run_dir(self.study, d))
                if problem:
                    return (f"its input run {d} was damaged after it finished ({problem}); run the study again "
                            f"to re-run {d} and its dependents")
        return None

    def adopt_orphans(self) -> None:
        """Runs whose recorded local process still runs on this host (started by a runner that
        died, e.g. SIGKILL: its children live on in their own sessions) are waited for, never
        started a second time in the same directory. One started for another config cannot be
        adopted, and its directory must not be moved aside under it: refused with a clear line."""
        if self.launcher.detached:
            return  # adopt_in_flight reconciles detached launchers' handles
        for run in list(self.pending):
            handle = orphan_process(run_dir(self.study, run.run_id))
            if handle is None:
                continue
            where = f"pid {handle.get('pid')} on {handle.get('host')}"
            if not _same_config(run, self.study):
                raise ValueError(f"{run.run_id} is still being run by {where} (started by an earlier runner for "
                                 f"another config); wait for it or stop it (kill -TERM -{handle.get('pid')}), "
                                 "then run the study again")
            self.pending.remove(run)
            # its exit status is unknowable (not our child): the launcher polls it as LOST, its outputs decide
            self.running[run.run_id] = _InFlight(handle, float(handle.get("started", time.time())), False, True)
            self.adopted.append(run.run_id)
            log_event(self.study, "adopted", run_id=run.run_id, handle=handle)
            self.echo(f"[study] {run.run_id}: still running from an earlier runner ({where}); waiting for it")

    def adopt_in_flight(self) -> None:
        """Detached launchers: take over runs a previous invocation started and nobody collected
        since (their recorded handle has no ``ended``). Still in flight, they are not started again;
        ended, they are collected like this invocation's runs (outputs checked, inputs recorded),
        and one that ended unfinished (failed, cancelled) is started again."""
        if not self.launcher.detached:
            return
        for run in list(self.pending):
            handle = read_launch(run_dir(self.study, run.run_id))
            if handle is None or handle.get("launcher") != self.launcher.name or "ended" in handle:
                continue
            if not _same_config(run, self.study):
                # started for another config: its dir is moved aside when the run starts again
                if self.launcher.poll(handle) is None:
                    self.launcher.stop(handle)
                    self.echo(f"[study] {run.run_id}: stopped its job from an earlier config")
                continue
            self.pending.remove(run)
            self.running[run.run_id] = _InFlight(handle, float(handle.get("started", time.time())), False, True)
            self.adopted.append(run.run_id)
            log_event(self.study, "adopted", run_id=run.run_id, handle=handle)

    # ------------------------------------------------------------------ reap
    def reap_finished(self) -> bool:
        """Collect every run whose process ended; True when anything changed."""
        progressed = False
        for run_id, fl in list(self.running.items()):
            rc = self.launcher.poll(fl.handle)
            if rc is None:
                continue
            del self.running[run_id]
            progressed = True
            run = self.by_id[run_id]
            record_inputs(run, self.study)
            if rc == LOST:
                # not our child (an orphan), or a warm-started run whose server died before recording
                # its status: the status is unknowable, so its outputs decide (result.json / atomic files)
                rc = 0
            err = finish_run(run, self.study, self.cfg.task, rc, time.time() - fl.started)
            if self.launcher.detached and fl.handle.get("launcher") == self.launcher.name:
                # collected: a later invocation does not collect it again
                write_launch(run_dir(self.study, run_id), dict(fl.handle, ended=time.time(), exit_status=rc))
            if err is not None and self.launcher.never_ran(fl.handle):
                self._retry_unstarted(run)
                continue
            if err is not None and fl.adopted:
                self._retry_earlier_failure(run, err)
                continue
            self.bar.update(1)
            if err is None:
                self.done.add(run_id)
                log_event(self.study, "done", run_id=run_id, wall_time_s=round(time.time() - fl.started, 2),
                          resumed=fl.resume)
                continue
            self.failed[run_id] = err
            log_path = run_dir(self.study, run_id) / "stdout.log"
            log_event(self.study, "failed", run_id=run_id, reason=err, log=str(log_path))
            self.echo(f"[study] {run_id} failed ({err}); last lines of {log_path}:\n{_tail(log_path)}")
        if progressed:
            self._stop_orphans()
        return progressed

    def _retry_unstarted(self, run: Run) -> None:
        """Cancelled before it started, behind a failed run that its array waited for (not one of
        its own inputs, or it is blocked now): start it again once its own inputs are done."""
        log_event(self.study, "cancelled-unstarted", run_id=run.run_id, action="re-run")
        if not any(d in self.failed for d in run.deps):
            self.echo(f"[study] {run.run_id}: cancelled before it started (a run its job array waited for "
                      "failed); submitting it again")
        self._requeue(run)

    def _requeue(self, run: Run) -> None:
        order = {r.run_id: i for i, r in enumerate(self.plan)}
        self.pending = sorted(self.pending + [run], key=lambda r: order[r.run_id])

    def _retry_earlier_failure(self, run: Run, err: str) -> None:
        """A run an earlier invocation started ended unfinished (failed, cancelled, preempted):
        show why, then start it again (from its checkpoint when it has one)."""
        log_path = run_dir(self.study, run.run_id) / "stdout.log"
        log_event(self.study, "ended-unfinished", run_id=run.run_id, reason=err, log=str(log_path), action="re-run")
        self.echo(f"[study] {run.run_id}: its earlier start ended unfinished ({err}); last lines of {log_path}:\n"
                  f"{_tail(log_path)}\n[study] {run.run_id}: starting it again")
        self._requeue(run)

    def _stop_orphans(self) -> None:
        """Queued runs whose dependency failed will never start: stop them and count them blocked."""
        changed = True
        while changed:
            changed = False
            for run_id in list(self.running):
                if any(d in self.failed or d in self.blocked for d in self.by_id[run_id].deps):
                    self.launcher.stop(self.running.pop(run_id).handle)
                    if run_id in self.launched:  # not when adopted from an earlier invocation
                        self.launched.remove(run_id)
                    self._block(run_id)
                    changed = True

    def stop_all(self) -> None:
        for run_id, fl in self.running.items():
            if not self.launcher.detached:
                self.launcher.stop(fl.handle)
            log_event(self.study, "interrupted" if not self.launcher.detached else "left-running", run_id=run_id)

    def outcome(self, report_dir: Optional[Path], t0: float) -> StudyOutcome:
        return StudyOutcome(self.study, report_dir, self.launched, self.skipped, self.failed, self.blocked,
                            self.problems, time.time() - t0, sorted(self.running), self.adopted)


def _same_config(run: Run, study: Path) -> bool:
    try:
        rc = read_json_object(run_dir(study, run.run_id) / RUN_CONFIG)
    except BadJson:
        return False
    return rc is not None and rc.get("hash") == run.hash


def _collect_ended(loop: _Loop) -> None:
    """Report-only with a detached launcher: collect runs that ended since the last invocation
    (outputs checked, inputs recorded), without starting anything."""
    if not loop.launcher.detached:
        return
    for run in loop.plan:
        handle = read_launch(run_dir(loop.study, run.run_id))
        if handle is None or handle.get("launcher") != loop.launcher.name or "ended" in handle \
                or not _same_config(run, loop.study):
            continue
        rc = loop.launcher.poll(handle)
        if rc is None:
            continue
        record_inputs(run, loop.study)
        finish_run(run, loop.study, loop.cfg.task, rc, time.time() - float(handle.get("started", time.time())))
        write_launch(run_dir(loop.study, run.run_id), dict(handle, ended=time.time(), exit_status=rc))


def _report_only(loop: _Loop, report: bool, t0: float) -> StudyOutcome:
    _collect_ended(loop)
    for run in loop.plan:
        state = inspect_run(run, loop.study, dep_fingerprints(run, loop.study), strict=False)
        if state.status == "done":
            loop.done.add(run.run_id)
            loop.skipped.append(run.run_id)
            continue
        reason = state.reason or state.status
        if state.status in ("corrupt", "stale"):
            loop.problems.append(log_event(loop.study, state.status, run_id=run.run_id, reason=reason,
                                           action="not used (report-only)"))
        loop.failed[run.run_id] = f"not done: {reason}"
    return loop.outcome(_maybe_report(loop, report, t0), t0)


def run_study(cfg: StudyConfig, study_dir: "os.PathLike[str] | str", launcher: Optional[Launcher] = None,
              report: bool = True, report_only: bool = False, progress: bool = True,
              echo: Optional[Callable[[str], None]] = None, wait: bool = True) -> StudyOutcome:
    """Run (or resume) every run of the plan that is not already done, then write the report.

    The study directory is locked while this runs (:class:`~lskd_core.study.lock.StudyLock`): a
    second runner on it raises :class:`~lskd_core.study.lock.StudyLocked` naming the holder.
    ``report_only`` reads the run dirs and needs no lock.
    """
    study = Path(study_dir).resolve()
    study.mkdir(parents=True, exist_ok=True)
    if report_only:
        return _run_study(cfg, study, launcher, report, report_only, progress, echo, wait)
    with StudyLock(study):
        return _run_study(cfg, study, launcher, report, report_only, progress, echo, wait)


def _run_study(cfg: StudyConfig, study_dir: "os.PathLike[str] | str", launcher: Optional[Launcher] = None,
               report: bool = True, report_only: bool = False, progress: bool = True,
               echo: Optional[Callable[[str], None]] = None, wait: bool = True) -> StudyOutcome:
    """:func:`run_study` once the directory is locked.

    ``report_only``: launch nothing; classify the run dirs leniently (runs dispatched by an external
    scheduler are accepted) and write the report from whatever is finished.
    ``wait=False`` (detached launchers such as SLURM): return once every run is submitted; the
    same call later collects them (``in_flight`` lists what was still queued or running).
    """
    t0 = time.time()
    study = Path(study_dir).resolve()
    study.mkdir(parents=True, exist_ok=True)
    launcher = launcher or make_launcher(cfg.launcher)
    plan = build_plan(cfg)
    write_manifest(study, cfg, plan)
    if report_only:
        return _report_only(_Loop(cfg, study, plan, launcher, echo or (lambda s: None), None), report, t0)
    bar = make_bar(len(plan), progress)
    if echo is None:  # messages above the progress bar, not through it
        echo = bar.write if progress else (lambda msg: print(msg, file=sys.stderr))
    try:
        launcher.check(plan, cfg.nproc)  # bad launcher settings: nothing starts
    except ValueError:
        bar.close()
        raise
    loop = _Loop(cfg, study, plan, launcher, echo, bar, env=child_env(cfg))
    loop.adopt_in_flight()
    loop.adopt_orphans()
    interrupted = False
    prev_handler = _install_sigterm_handler()
    try:
        while loop.pending or loop.running:
            progressed = loop.start_ready()
            if not wait and launcher.detached and not loop.pending:
                break  # everything is queued; a later invocation collects it
            progressed = loop.reap_finished() or progressed
            bar.set_postfix_str(running_postfix(loop.running, study, loop.by_id, cfg), refresh=False)
            if not progressed:
                time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted = True
        loop.stop_all()
        launcher.on_interrupt(echo)
        echo("[study] interrupted: finished runs are kept and unfinished training runs resume from their "
             "last checkpoint on the next invocation")
    finally:
        _restore_sigterm_handler(prev_handler)
        launcher.close()
        bar.close()
    if interrupted:
        raise KeyboardInterrupt
    return loop.outcome(_maybe_report(loop, report and not loop.running, t0), t0)


def _maybe_report(loop: _Loop, report: bool, t0: float) -> Optional[Path]:
    if not report:
        return None
    from lskd_core.report import write_report

    return write_report(loop.study, problems=loop.problems, study_wall_time_s=time.time() - t0,
                        usable=set(loop.done))


def _install_sigterm_handler() -> Any:
    # SIGTERM (e.g. from a batch scheduler) behaves like Ctrl-C: stop children, keep checkpoints.
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _restore_sigterm_handler(prev: Any) -> None:
    if prev is not None:
        try:
            signal.signal(signal.SIGTERM, prev)
        except ValueError:
            pass
