"""One runner per study directory, and whether a recorded process still runs.

:class:`StudyLock` holds an exclusive ``fcntl.flock`` on ``<study>/study.lock`` while a runner
uses the directory; the file also says who holds it (pid, host, start time) so that a second
runner can name the holder. The kernel drops the lock when its holder dies, SIGKILL included,
so a stale lock file never blocks anyone. (flock on some network file systems is local to one
host; the pid/host line still tells a user on another host who is running.)

:func:`process_start` / :func:`process_alive` identify a process by pid *and* its start time, so
that a pid reused by an unrelated process is not mistaken for a run's process.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, Any, List, Optional

__all__ = ["StudyLock", "StudyLocked", "LOCK_FILE", "process_start", "process_alive"]

LOCK_FILE = "study.lock"


class StudyLocked(ValueError):
    """Another runner holds the study directory (a ValueError: the CLI prints it as one line, exit 2)."""


def _stat_fields(pid: int) -> Optional[List[str]]:
    """Fields 3.. of /proc/<pid>/stat (state first), or None without /proc or such a process."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after its last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    return fields if len(fields) > 19 else None


def process_start(pid: int) -> Optional[str]:
    """An identifier of when process ``pid`` started (Linux: field 22 of /proc/<pid>/stat, clock
    ticks since boot), or None when it cannot be read (no such process, no /proc)."""
    fields = _stat_fields(pid)
    return fields[19] if fields is not None else None


def process_alive(pid: Any, start: Optional[str] = None) -> bool:
    """True when process ``pid`` exists on this host and, if ``start`` was recorded, it is the
    same process (same start time; a different one means the pid was reused)."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _stat_fields(pid)
    if fields is not None and fields[0] in ("Z", "X"):
        return False  # ended, not yet reaped by its parent
    if start is not None and fields is not None and fields[19] != str(start):
        return False  # the pid now belongs to another process
    return True


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on host {info['host']}, since {info.get('since', '?')}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process whose pid could not be read"


class StudyLock:
    """Exclusive use of a study directory: ``with StudyLock(study): ...``.

    Raises :class:`StudyLocked` naming the holder's pid and host when another process holds it.
    """

    def __init__(self, study: "os.PathLike[str] | str"):
        self.path = Path(study) / LOCK_FILE
        self._fh: Optional[IO[str]] = None

    def acquire(self) -> "StudyLock":
        import fcntl

        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                # e.g. ENOLCK: a file system without locks; the CLI names the file and the error
                raise OSError(exc.errno, f"{exc.strerror} (the study's lock; use an --out on a local disk)",
                              str(self.path)) from None
            raise StudyLocked(f"{self.path.parent} is in use by another study runner ({_holder_text(self.path)}); "
                              "wait for it to finish, stop it, or use another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "since": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is None:
            return
        import fcntl

        try:
            self._fh.seek(0)
            self._fh.truncate()  # nobody holds it now
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
        finally:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "StudyLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
