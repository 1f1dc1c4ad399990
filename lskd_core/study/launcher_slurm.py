"""The SLURM launcher: the runs of each stage of the study become one job array.

Settings: the study config's ``[launcher]`` table (``kind = "slurm"``), defaults for every run kind
at the top level and one table per run kind (``[launcher.teacher]``, ``[launcher.cache]``,
``[launcher.student]``, ``[launcher.matched]`` (default: the student's), ``[launcher.match]``,
``[launcher.export]``, ``[launcher.prepare]``, ``[launcher.generate]``) overriding them (their
``setup`` and ``extra_sbatch`` lines are added to the top level's)::

    [launcher]
    kind = "slurm"
    partition = "gpu"
    account = "my-lab"
    time = "1-00:00:00"
    setup = ["module load cuda/12.1", "source ~/venvs/lskd/bin/activate"]
    [launcher.teacher]
    nodes = 1
    gpus_per_node = 8
    cpus_per_task = 64
    mem = "480G"
    array_parallelism = 2          # at most 2 teachers at once (sbatch --array=...%2)

The runner hands over every run that is ready at once (:meth:`Launcher.start_many`); the runs of
one kind (teachers, caches, students, ...) become one ``sbatch --array`` (one job, which is what
MaxSubmitJobs counts), whose task ``i`` runs the i-th of them; its script is kept in
``<study>/launcher/<kind>-<n>.sbatch``. The array is submitted with ``--dependency=afterok:`` on the
array tasks its runs read that are still queued or running, and ``--kill-on-invalid-dep=yes``: a
failed teacher cancels the array behind it, and the runs of that array whose own inputs are done are
submitted again (:meth:`SlurmLauncher.never_ran`), so they lose only time. Each run's handle (its
task's job id ``<array>_<i>``, log, script) is recorded in the run dir's launch.json by the runner; the
task writes to the run's stdout.log, the same log the local launcher uses. A run that failed or was
cancelled is submitted again on the next invocation in a new array of only the failed runs. A task
requeued by SLURM (preemption, node failure) runs the same script again, which resumes from the
run's checkpoint.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from lskd_core.study.launchers import Handle, Launch, Launcher
from lskd_core.study.plan import Run
from lskd_core.study.slurm import (
    ACTIVE,
    MAX_ARRAY_TASKS,
    ArrayTask,
    JobState,
    Partition,
    Resources,
    SlurmClient,
    SlurmError,
    array_spec,
    check_resources,
    launch_command,
    render_array_script,
    render_script,
    sbatch_options,
    tasks_per_node,
)

__all__ = ["SlurmSettings", "SlurmLauncher", "RUN_KINDS"]

RUN_KINDS = ("teacher", "cache", "student", "match", "matched", "export", "prepare", "generate")
# a kind without its own table takes this kind's (entropy-matched students train like students)
_FALLBACK = {"matched": "student"}
_GENERAL_KEYS = ("kind", "poll_interval")


@dataclass
class SlurmSettings:
    """The ``[launcher]`` table: resources for every run kind, and how often to ask SLURM."""

    default: Resources = field(default_factory=Resources)
    per_kind: Dict[str, Resources] = field(default_factory=dict)
    poll_interval: float = 10.0  # seconds between squeue calls (a scheduler is not to be hammered)

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> "SlurmSettings":
        base = {k: v for k, v in table.items() if k not in _GENERAL_KEYS and k not in RUN_KINDS}
        for k, v in base.items():
            if isinstance(v, Mapping):
                raise SlurmError(f"[launcher.{k}] is not a run kind; run kinds: {', '.join(RUN_KINDS)}")
        settings = cls(default=Resources.from_mapping(base, "launcher"))
        for kind in RUN_KINDS:
            sub = table.get(kind)
            if sub is None:
                continue
            if not isinstance(sub, Mapping):
                raise SlurmError(f"launcher.{kind} must be a table of resources, got {sub!r}")
            over = Resources.from_mapping(sub, f"launcher.{kind}")
            settings.per_kind[kind] = settings.default.merged(over, [k for k in sub])
        pi = table.get("poll_interval", 10.0)
        if isinstance(pi, bool) or not isinstance(pi, (int, float)) or not pi > 0:
            raise SlurmError(f"launcher.poll_interval must be a positive number of seconds, got {pi!r}")
        settings.poll_interval = float(pi)
        return settings

    def for_kind(self, kind: str) -> Resources:
        if kind not in self.per_kind and kind in _FALLBACK:
            kind = _FALLBACK[kind]
        return self.per_kind.get(kind, self.default)


def _distributed(run: Run, argv: Sequence[str]) -> str:
    if (len(argv) > 2 and list(argv[1:3]) == ["-m", "torch.distributed.run"]) or \
            (run.distributed and run.program[0] == "module"):
        return "torch"
    if run.program[0] == "exe" and run.program[1] == "fairseq-train":
        return "fairseq"
    return ""


def _exit_status(st: JobState) -> Optional[int]:
    """What :meth:`Launcher.poll` reports for a SLURM state: None while it may still run."""
    if st.state in ACTIVE:
        return None
    if st.state == "COMPLETED":
        return 0
    if st.state == "UNKNOWN":
        # SLURM has forgotten the job (no accounting, MinJobAge passed): the runner's output checks
        # decide whether it finished.
        return 0
    return st.exit_code if st.exit_code else 1


class SlurmLauncher(Launcher):
    """Submits runs with sbatch; see the module docstring."""

    name = "slurm"
    queues_dependencies = True
    detached = True

    def __init__(self, settings: Optional[SlurmSettings] = None, client: Optional[SlurmClient] = None) -> None:
        self.settings = settings or SlurmSettings()
        self.client = client or SlurmClient()
        self.submitted: List[str] = []  # job ids submitted by this invocation (Ctrl-C offers to cancel these)
        self._states: Dict[str, JobState] = {}
        self._watched: set = set()
        self._polled_at = 0.0
        self._reported: set = set()

    # ------------------------------------------------------------------ checks
    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "SlurmLauncher":
        return cls(SlurmSettings.from_mapping(options))

    def check(self, runs: Sequence[Run], nproc: int = 1) -> None:
        """Everything that can be checked before a job is submitted: SLURM's commands on PATH, the
        partition of each run kind, resources it can give, and a world size (nodes x GPUs) that
        matches ``nproc`` (it is part of a training run's hash). SlurmError (a ValueError) lists one
        line per problem; nothing is submitted then."""
        problem = self.client.available()
        if problem:
            raise SlurmError(problem)
        errors: List[str] = []
        parts: Dict[Optional[str], Partition] = {}
        for kind in dict.fromkeys(r.kind for r in runs):
            res = self.settings.for_kind(kind)
            if res.partition not in parts:
                try:
                    parts[res.partition] = self.client.partition(res.partition)
                except SlurmError as exc:
                    errors.append(f"[launcher.{kind}] {exc}")
                    continue
            of_kind = [r for r in runs if r.kind == kind]
            dist = "fairseq" if any(r.program == ("exe", "fairseq-train") for r in of_kind) else ""
            found = check_resources(res, parts[res.partition], kind, tasks_per_node(res, dist))
            world = res.nodes * max(1, res.gpus_per_node)
            if any(r.distributed for r in of_kind) and world > 1 and world != nproc:
                found.append(f"[launcher.{kind}] nodes x gpus_per_node = {world} processes, but nproc = {nproc}: "
                             f"set nproc = {world} (the world size changes the global batch, so it is part of "
                             "the run's hash)")
            errors += found or self._probe(kind, res, dist)
        if errors:
            raise SlurmError("\n".join(dict.fromkeys(errors)))

    def _probe(self, kind: str, res: Resources, dist: str) -> List[str]:
        """``sbatch --test-only`` of the kind's options: SLURM itself checks what we cannot
        (account, qos, constraints in extra_sbatch) without queuing anything."""
        options = sbatch_options(res, f"lskd-check-{kind}", os.devnull, None, tasks_per_node(res, dist))
        fd, path = tempfile.mkstemp(suffix=".sbatch", prefix="lskd-check-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(render_script(["true"], options, res.setup))
            self.client.test_only(path)
        except SlurmError as exc:
            return [f"[launcher.{kind}] {exc}"]
        finally:
            os.unlink(path)
        return []

    # ------------------------------------------------------------------ launcher interface
    def array_task(self, index: int, launch: Launch) -> ArrayTask:
        """One run as a task of its kind's array: the command inside the job and its resume rule."""
        run, argv = launch.run, list(launch.argv)
        res = self.settings.for_kind(run.kind)
        rdir = launch.log_path.parent
        resume_arg = resume_if = None
        if run.resume_flag and run.resume_flag not in argv:
            # a requeued task runs this script again: it resumes from the checkpoint it has written
            resume_if = str(rdir / "checkpoint.pth")
            resume_arg = [run.resume_flag, resume_if]
        return ArrayTask(index, run.run_id, launch_command(argv, res, _distributed(run, argv)), str(launch.log_path),
                         str(launch.cwd or rdir), resume_arg, resume_if)

    def array_script(self, kind: str, dist: str, launches: Sequence[Launch], state_dir: Path) -> str:
        """The batch script of one array: every run in ``launches`` (one kind, one launch mode)."""
        res = self.settings.for_kind(kind)
        tasks = [self.array_task(i, x) for i, x in enumerate(launches)]
        options = sbatch_options(res, f"lskd-{kind}", str(state_dir / "%x-%A_%a.out"), None,
                                 tasks_per_node(res, dist))
        options.append(f"--array={array_spec(range(len(tasks)), res.array_parallelism)}")
        listing = "\n".join(f"task {t.index}: {t.name}" for t in tasks)
        return render_array_script(tasks, options, res.setup,
                                   header=f"lskd study: {len(tasks)} {kind} run(s)\n{listing}")

    def start(self, run: Run, argv: Sequence[str], env: Mapping[str, str], log_path: Path,
              cwd: Optional[Path] = None, after: Sequence[Handle] = ()) -> Handle:
        return self.start_many([Launch(run, list(argv), log_path, cwd, after)], env)[0]

    def start_many(self, launches: Sequence[Launch], env: Mapping[str, str],
                   state_dir: Optional[Path] = None) -> List[Handle]:
        """One ``sbatch --array`` per run kind and launch mode (what clusters' MaxSubmitJobs counts
        is jobs, and an array is one), throttled by ``array_parallelism``. The array waits
        (afterok) for the jobs of every run its tasks read."""
        groups: Dict[Tuple[str, str], List[int]] = {}
        for i, x in enumerate(launches):
            groups.setdefault((x.run.kind, _distributed(x.run, x.argv)), []).append(i)
        handles: List[Handle] = [{} for _ in launches]
        for (kind, dist), members in groups.items():
            for lo in range(0, len(members), MAX_ARRAY_TASKS):
                chunk = members[lo:lo + MAX_ARRAY_TASKS]
                got = self._submit_array(kind, dist, [launches[i] for i in chunk], env, state_dir)
                for i, h in zip(chunk, got):
                    handles[i] = h
        return handles

    def _submit_array(self, kind: str, dist: str, launches: Sequence[Launch], env: Mapping[str, str],
                      state_dir: Optional[Path]) -> List[Handle]:
        state_dir = state_dir or launches[0].log_path.parent
        state_dir.mkdir(parents=True, exist_ok=True)
        path = _unused(state_dir, kind)
        path.write_text(self.array_script(kind, dist, launches, state_dir), encoding="utf-8")
        deps = list(dict.fromkeys(str(h["job_id"]) for x in launches for h in x.after
                                  if h.get("launcher") == self.name and h.get("job_id")))
        if deps:
            # afterok on a job SLURM has already forgotten is refused by sbatch: keep the live ones
            states = self.client.states(deps)
            deps = [j for j in deps if states[j].state in ACTIVE or states[j].state == "COMPLETED"]
        env = dict(env)
        if "OMP_NUM_THREADS" not in os.environ:
            # the runner divides the local machine's cores between local runs; a job uses its
            # own allocation (the script sets OMP_NUM_THREADS from SLURM_CPUS_PER_TASK)
            env.pop("OMP_NUM_THREADS", None)
        array_job = self.client.with_env(env).submit(str(path), after=deps)
        self.submitted.append(array_job)
        self._polled_at = 0.0  # see the new jobs at the next poll
        now, stamp = time.time(), time.strftime("%Y-%m-%dT%H:%M:%S")
        handles = []
        for i, x in enumerate(launches):
            job_id = f"{array_job}_{i}"
            self._watched.add(job_id)
            handles.append({"launcher": self.name, "job_id": job_id, "array_job": array_job, "array_task": i,
                            "log": str(x.log_path), "script": str(path), "after": deps, "started": now,
                            "submitted": stamp})
        return handles

    def never_ran(self, handle: Handle) -> bool:
        st = self.state(handle)
        return st.state == "CANCELLED" and st.reason.startswith("Dependency")

    def state(self, handle: Handle) -> JobState:
        """SLURM's state of the run's job (one squeue call for every watched job per poll interval)."""
        job_id = str(handle.get("job_id", ""))
        if not job_id:
            return JobState("", "UNKNOWN")
        self._watched.add(job_id)
        now = time.time()
        if job_id not in self._states or now - self._polled_at >= self.settings.poll_interval:
            self._states.update(self.client.states(sorted(self._watched)))
            self._polled_at = now
        return self._states[job_id]

    def poll(self, handle: Handle) -> Optional[int]:
        st = self.state(handle)
        rc = _exit_status(st)
        if rc is not None:
            self._watched.discard(st.job_id)
            if st.job_id not in self._reported and st.state != "COMPLETED":
                self._reported.add(st.job_id)
                _note(handle, f"job {st.job_id} ended {st.state}" + (f" (exit status {st.exit_code})"
                                                                    if st.exit_code is not None else ""))
        return rc

    def stop(self, handle: Handle) -> None:
        job_id = str(handle.get("job_id", ""))
        if job_id and handle.get("launcher") == self.name:
            self.client.cancel([job_id])
            self._watched.discard(job_id)

    def describe(self, handle: Handle) -> str:
        """``job 123 PENDING (Dependency), log runs/x/stdout.log``."""
        st = self.state(handle)
        reason = f" ({st.reason})" if st.reason and st.reason not in ("None", "(null)") else ""
        return f"job {st.job_id} {st.state}{reason}, log {handle.get('log', '')}"

    def cancel_submitted(self) -> List[str]:
        """Cancel the jobs this invocation submitted (never anyone else's); returns their ids."""
        ids = list(self.submitted)
        self.client.cancel(ids)
        return ids

    def on_interrupt(self, echo: Callable[[str], None], ask: Optional[Callable[[str], str]] = None) -> None:
        """Ctrl-C: offer to cancel the jobs THIS invocation submitted (a prompt only on a terminal;
        otherwise they are left queued and the user is told how to follow or cancel them)."""
        ids = list(self.submitted)
        if not ids:
            return
        if ask is None and sys.stdin is not None and sys.stdin.isatty():
            ask = input
        answer = ""
        if ask is not None:
            try:
                answer = ask(f"cancel the {len(ids)} SLURM job(s) this invocation submitted ({' '.join(ids)})? [y/N] ")
            except (EOFError, KeyboardInterrupt):
                answer = ""
        if answer.strip().lower() in ("y", "yes"):
            self.cancel_submitted()
            echo(f"[study] cancelled job(s) {' '.join(ids)}; re-run the same command to resubmit them")
        else:
            echo(f"[study] left {len(ids)} SLURM job(s) queued or running ({' '.join(ids)}); re-run the same "
                 f"command (or --status) to follow them, or `scancel {' '.join(ids)}`")


def _unused(state_dir: Path, kind: str) -> Path:
    """``<state_dir>/<kind>-<n>.sbatch`` with the first n not yet taken (every submitted script is
    kept: it shows what each array ran)."""
    n = 0
    while (state_dir / f"{kind}-{n}.sbatch").exists():
        n += 1
    return state_dir / f"{kind}-{n}.sbatch"


def _note(handle: Handle, text: str) -> None:
    """A line for the run's log, so the failure's last lines (which the runner prints) say what SLURM did."""
    log = handle.get("log")
    if not log:
        return
    try:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} slurm: {text}\n")
    except OSError:
        pass

