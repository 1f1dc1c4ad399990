"""One error path for the vision command lines (trainer, feature export, teacher-cache builder).

Bad input and faults a user can cause end in ONE line on stderr, ``PROG: error: ...`` naming the
file and the remedy, and exit status 2:

* our own error types (``CheckpointError``, ``DatasetError``, cache mismatches: all ``ValueError``),
  ``FloatingPointError`` (a diverging run);
* ``OSError`` with an errno a user can cause: no space left, read-only file system, permission
  denied, not a directory, is a directory, file exists where a directory is needed, missing file,
  dangling symlinks (ENOENT/ELOOP), quota exceeded.

Anything else (a genuine bug) propagates with its traceback. ``LSKD_DEBUG=1`` shows tracebacks for
the handled errors too.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any, Callable, Dict, Optional

EXIT_USER_ERROR = 2

_REMEDIES = {
    errno.ENOSPC: "free disk space or choose another output directory",
    errno.EDQUOT: "free space within your quota or choose another output directory",
    errno.EROFS: "the file system is read-only: choose a writable output directory",
    errno.EACCES: "check the file's permissions or choose another path",
    errno.EPERM: "check the file's permissions or choose another path",
    errno.ENOTDIR: "a path component is a file, not a directory: choose another path",
    errno.EISDIR: "a directory is in the way of a file: choose another path",
    errno.EEXIST: "a file (or a dangling symlink) is in the way of a directory: remove it or choose another path",
    errno.ENOENT: "the file or a directory on its path is missing (or a symlink on it is dangling)",
    errno.ELOOP: "a symlink on the path loops: fix the link",
    errno.ENAMETOOLONG: "shorten the path",
    errno.EIO: "an I/O error: check the disk",
}


def user_error_message(exc: BaseException) -> Optional[str]:
    """The one-line message for an error a user can cause, or None for a genuine bug."""
    if isinstance(exc, (ValueError, FloatingPointError)):
        text = str(exc).strip() or type(exc).__name__
        return " ".join(text.split("\n"))
    if isinstance(exc, OSError) and exc.errno in _REMEDIES:
        where = exc.filename if exc.filename is not None else "(file unknown)"
        if exc.filename2 is not None:
            where = f"{where} -> {exc.filename2}"
        reason = exc.strerror or os.strerror(exc.errno)
        return f"{where}: {reason}; {_REMEDIES[exc.errno]}"
    return None


def run_and_summarize(prog: str, work: Callable[[], Dict[str, Any]], summary: str) -> int:
    """:func:`run_cli` of ``work``, printing ``summary.format(**result)`` when it succeeds (the
    one line a builder command ends with: what it wrote, how much)."""
    return run_cli(prog, lambda: print(summary.format(**work())))


def run_cli(prog: str, body: Callable[[], object], cleanup: Optional[Callable[[], None]] = None) -> int:
    """Run ``body``; return 0, or print one ``prog: error:`` line and return 2 for user errors."""
    try:
        body()
    except Exception as exc:
        message = user_error_message(exc)
        if message is None or os.environ.get("LSKD_DEBUG"):
            raise
        print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    finally:
        if cleanup is not None:
            cleanup()
    return 0
