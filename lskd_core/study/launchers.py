"""How runs are started: the :class:`Launcher` interface and the local subprocess launcher.

The runner only talks to a launcher through :meth:`Launcher.start`, :meth:`Launcher.poll` and
:meth:`Launcher.stop`, and decides how to schedule from two class attributes:

* ``queues_dependencies``: the launcher can accept a run before the runs it depends on have
  finished (``start(..., after=[their handles])``), as a batch scheduler's job dependencies do.
  False: the runner starts a run only once its dependencies are done.
* ``detached``: runs keep going without the runner (a cluster queue), so the runner may exit while
  runs are in flight and a later invocation reconciles them from their recorded handles.

A handle is a JSON-serialisable dict (at least ``launcher``, ``log`` and ``started``; the local
launcher adds ``pid`` and ``host``, a batch launcher its job id). The runner writes it to the run's
``launch.json``; ``poll`` must accept a handle read back from there.

A new launcher: subclass :class:`Launcher`, set ``name`` and the two attributes, and add it to
:data:`lskd_core.study.registry.LAUNCHERS`; the ``launcher`` setting selects it: a name, or a table whose ``kind`` is the name
and whose other keys go to :meth:`Launcher.from_options` (the SLURM launcher's resources).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from lskd_core.study.lock import process_alive
from lskd_core.study.plan import Run
from lskd_core.study.registry import LAUNCHERS, launcher_class, launcher_spec
from lskd_core.study.warm_start import WarmServer, read_exit_file, warm_target

__all__ = ["Handle", "Launch", "Launcher", "LocalLauncher", "SubprocessLauncher", "LAUNCHERS", "make_launcher", "launcher_spec"]

#: A started run as the launcher describes it (JSON-serialisable).
Handle = Dict[str, Any]


@dataclass
class Launch:
    """One run to start: what :meth:`Launcher.start` takes, as one item of :meth:`Launcher.start_many`."""

    run: Run
    argv: List[str]
    log_path: Path
    cwd: Optional[Path] = None
    after: Sequence[Handle] = ()


class Launcher(ABC):
    """Starts, polls and stops runs. See the module docstring for the contract."""

    name: str = ""
    queues_dependencies: bool = False
    detached: bool = False

    @abstractmethod
    def start(self, run: Run, argv: Sequence[str], env: Mapping[str, str], log_path: Path,
              cwd: Optional[Path] = None, after: Sequence[Handle] = ()) -> Handle:
        """Start ``argv`` for ``run`` with output appended to ``log_path``. ``after``: handles of the
        runs it depends on that are still in flight (only when ``queues_dependencies``)."""

    def start_many(self, launches: Sequence[Launch], env: Mapping[str, str],
                   state_dir: Optional[Path] = None) -> List[Handle]:
        """Start several runs that are ready together (a queueing launcher gets every run of a stage
        at once); their handles, in order. ``state_dir``: a directory of the study where the launcher
        may keep its own files (a batch launcher's array scripts). By default one :meth:`start` each."""
        return [self.start(x.run, x.argv, env, x.log_path, x.cwd, x.after) for x in launches]

    def never_ran(self, handle: Handle) -> bool:
        """True for an ended run that never started because a run it waited for failed (a batch
        scheduler cancels a whole array behind one failed task): the runner starts it again once
        its own inputs are done."""
        return False

    @abstractmethod
    def poll(self, handle: Handle) -> Optional[int]:
        """None while the run is pending or running; its exit status once it has ended."""

    @abstractmethod
    def stop(self, handle: Handle) -> None:
        """Stop the run (and its children); return once it no longer runs."""

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "Launcher":
        """The launcher configured by the ``[launcher]`` table's keys besides ``kind``. A launcher
        without settings ignores them: one config file switches launchers with ``--launcher``."""
        return cls()

    def check(self, runs: Sequence[Run], nproc: int = 1) -> None:
        """Refuse settings that cannot work for these runs (``nproc``: processes per training run)
        with a ValueError, one line per problem, before anything starts."""
        return None  # nothing to check by default

    def describe(self, handle: Handle) -> str:
        """One line for ``--status``: where the run stands according to the launcher."""
        rc = self.poll(handle)
        return "running" if rc is None else f"ended (exit status {rc}), not yet collected"

    def on_interrupt(self, echo: Callable[[str], None]) -> None:
        """Ctrl-C while runs are in flight (detached launchers: they keep running unless this stops them)."""
        return None

    def close(self) -> None:
        """The runner is done with this launcher (release helpers such as a warm server)."""
        return None


#: Exit status reported for a local run whose process cannot be found (e.g. a handle from an
#: earlier invocation whose process has ended: its real status is unknowable).
LOST = 255


class LocalLauncher(Launcher):
    """Each run is a child process of this machine (its own process group, output to ``log_path``).

    With ``warm_start`` (the default) ``python -m MODULE`` runs and console scripts such as
    ``fairseq-train`` are forks of one warm server that
    imported torch once (:mod:`lskd_core.study.warm_start`): the same process, arguments, log and
    exit status as a cold start, without ~2-3 CPU seconds of imports per run. Other runs, and every
    run when the server cannot be used, start cold. ``[launcher] kind = "local", warm_start = false``
    turns it off. Subclass and override :meth:`start` to dispatch elsewhere (tests fake launches this way).
    """

    name = "local"
    queues_dependencies = False
    detached = False

    def __init__(self, warm_start: bool = True) -> None:
        self.warm_start = warm_start
        self._procs: Dict[int, subprocess.Popen] = {}
        self._warm: Dict[int, Path] = {}  # pid -> exit file, for runs forked by our server
        self._server: Optional[WarmServer] = None
        self.warm_note: Optional[str] = None  # why runs start cold although warm_start is on

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> "LocalLauncher":
        warm = options.get("warm_start", True)
        if not isinstance(warm, bool):
            raise ValueError(f"launcher setting warm_start must be true or false, got {warm!r}")
        return cls(warm_start=warm)

    def start(self, run: Run, argv: Sequence[str], env: Mapping[str, str], log_path: Path,
              cwd: Optional[Path] = None, after: Sequence[Handle] = ()) -> Handle:
        if after:
            raise ValueError("the local launcher cannot queue a run behind unfinished runs")
        handle: Handle = {"launcher": self.name, "host": socket.gethostname(), "log": str(log_path),
                          "started": time.time()}
        pid = self._start_warm(argv, env, log_path, cwd)
        if pid is not None:
            handle.update(pid=pid, exit_file=str(self._warm[pid]))
            return handle
        log = open(log_path, "ab")
        try:
            proc = subprocess.Popen(list(argv), env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
        finally:
            log.close()  # the child holds its own descriptor
        self._procs[proc.pid] = proc
        handle.update(pid=proc.pid, started=time.time())
        return handle

    def _start_warm(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path,
                    cwd: Optional[Path]) -> Optional[int]:
        target = warm_target(argv) if self.warm_start else None
        if target is None or self.warm_note:
            return None
        python, what, args = target
        server = self._server
        if server is not None and (server.python != python or server.env != dict(env)):
            server.close()  # another interpreter or environment: a server must match the runs'
            server = None
        if server is None:
            server = self._server = WarmServer(python, env, cwd=cwd)
        exit_path = Path(f"{log_path}.exit.json")
        exit_path.unlink(missing_ok=True)  # a record from an earlier attempt must not answer for this one
        pid = server.spawn(what.get("module"), args, log_path, exit_path, cwd, script=what.get("script"))
        if pid is None:
            if server.failed:
                self.warm_note = server.failed
            return None
        self._warm[pid] = exit_path
        return pid

    def poll(self, handle: Handle) -> Optional[int]:
        pid = int(handle.get("pid", -1))
        proc = self._procs.get(pid)
        if proc is not None:
            return proc.poll()
        if handle.get("exit_file"):
            record = read_exit_file(Path(handle["exit_file"]))
            if record is not None and record.get("pid", pid) == pid:
                self._warm.pop(pid, None)
                return int(record["returncode"])
        # A run our server has not reaped yet, or a handle reloaded from disk (this process is not
        # the child's parent): only its liveness can be seen (same host only; the recorded start
        # time tells a reused pid apart).
        if handle.get("host") == socket.gethostname() and process_alive(pid, handle.get("proc_start")):
            return None
        if pid in self._warm and self._server is not None and self._server.usable:
            return None  # ended a moment ago: the server writes its exit record within ~0.2 s
        return LOST

    def stop(self, handle: Handle) -> None:
        """Terminate a started run and its children (its process group), then reap it."""
        pid = int(handle.get("pid", -1))
        if pid <= 1:  # no pid, or init's: killpg(0) is this runner's own group, killpg(1) init's
            return
        _kill_group(pid, signal.SIGTERM)
        proc = self._procs.pop(pid, None)
        if proc is not None:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _kill_group(pid, signal.SIGKILL)
                proc.wait()
        elif pid in self._warm or handle.get("host") == socket.gethostname():
            # forked by our server, or a handle read back from disk (an orphan of a killed runner)
            if not _wait_gone(pid, 20, handle.get("proc_start")):
                _kill_group(pid, signal.SIGKILL)
                _wait_gone(pid, 20, handle.get("proc_start"))

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_gone(pid: int, timeout: float, start: Optional[str] = None) -> bool:
    """Wait until a process that is not our child has ended (a zombie counts as ended; ``start``:
    its recorded start time, so that a pid reused by another process counts as ended)."""
    deadline = time.time() + timeout
    while process_alive(pid, start):
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True


#: Former name of :class:`LocalLauncher`.
SubprocessLauncher = LocalLauncher

def make_launcher(setting: Any) -> Launcher:
    """The launcher the ``launcher`` setting names (:mod:`lskd_core.study.registry`), made from its options."""
    name, options = launcher_spec(setting)
    launcher: Launcher = launcher_class(name).from_options(options)
    return launcher
