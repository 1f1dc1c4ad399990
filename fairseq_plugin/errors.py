"""The plugin's user-facing error types and the one-line reporting of them.

Errors a user can cause and fix (a bad flag, a missing or corrupt file, a stale cache, a full or
read-only disk) are reported as one line that names the problem and the remedy; everything else is
a bug and keeps its traceback.

* Our CLIs (``python -m fairseq_plugin.bleu`` / ``prepare_offline`` / ``prepare_iwslt`` /
  ``teacher_cache``) run their ``main`` through :func:`run_cli`: exit status 2 with one line.
* fairseq's own CLIs (``fairseq-train`` ...) are not ours to wrap, so importing the plugin installs
  :func:`install_excepthook`: an uncaught error of *our* types prints one line instead of
  fairseq's traceback (exit status 1, as for any uncaught exception). ``LSKD_TRACEBACK=1`` shows
  the traceback anyway. Other exceptions go to the previous hook untouched.
* Multi-GPU ``fairseq-train`` runs its workers through ``torch.multiprocessing.spawn``; a worker's
  error reaches the parent as ``ProcessRaisedException`` holding the worker's traceback as text.
  When that traceback ends in one of our types, the parent prints the same one line (naming the
  worker), not the parent's and the worker's tracebacks.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import sys
from typing import Callable, Optional, Sequence

TRACEBACK_ENV = "LSKD_TRACEBACK"


class LskdPluginError(Exception):
    """Marker base of the plugin's user errors (bad configuration or input; never a bug)."""


class CriterionConfigError(LskdPluginError, ValueError):
    """A criterion flag is invalid or flags contradict each other."""


class TeacherNotFoundError(LskdPluginError, FileNotFoundError):
    """``--teacher-path`` names a file that does not exist."""


class TeacherMismatchError(LskdPluginError, ValueError):
    """The teacher does not fit the student's task (different dictionaries)."""


class UsageError(LskdPluginError, ValueError):
    """A command-line argument is invalid."""


class MissingInputError(LskdPluginError, FileNotFoundError):
    """A required input file or directory does not exist (the message says where to get it)."""


class InputFileError(LskdPluginError, ValueError):
    """An input file exists but cannot be read as what it should be (corrupt, wrong format)."""


def is_user_error(error: BaseException) -> bool:
    """Our error types: the plugin's own, and ``lskd_core``'s ValueError subclasses
    (``CacheMismatch``, ``FeaturesFileError``...), which name their problem themselves."""
    if isinstance(error, LskdPluginError):
        return True
    module = type(error).__module__ or ""
    return isinstance(error, ValueError) and type(error) is not ValueError and (
        module == "lskd_core" or module.startswith("lskd_core.")
    )


# errno -> what the user can do about it
_OS_REMEDIES = {
    errno.ENOSPC: "no space left on the device: free disk space or choose another output directory",
    errno.EDQUOT: "disk quota exceeded: free space or choose another output directory",
    errno.EROFS: "read-only file system: choose a writable output directory",
    errno.EACCES: "permission denied: fix the permissions or choose another path",
    errno.EPERM: "operation not permitted: fix the permissions or choose another path",
    errno.ENOTDIR: "a component of the path is a file, not a directory: fix the path",
    errno.EISDIR: "is a directory, a file was expected: fix the path",
    errno.ENOENT: "no such file or directory: check the path",
    errno.EEXIST: "already exists: remove it or choose another path",
    errno.ENAMETOOLONG: "file name too long: choose a shorter path",
    errno.ELOOP: "too many levels of symbolic links (a symlink loop?): fix the path",
}


def describe_os_error(error: OSError, fallback_path: Optional[str] = None) -> str:
    """One line for an OS error: the file (or ``fallback_path`` when the OS did not say) and what
    to do. Write errors such as a full disk often carry no file name, hence the fallback."""
    name = error.filename or fallback_path or "(file not reported by the OS)"
    if error.filename2:
        name = f"{name} -> {error.filename2}"
    remedy = _OS_REMEDIES.get(error.errno or -1)
    if remedy is None:
        remedy = f"{error.strerror or error}: check the file and the disk"
    return f"{name}: {remedy}"


def user_error_line(error: BaseException, fallback_path: Optional[str] = None) -> Optional[str]:
    """The one-line message for a user-caused error, or None for a bug (keep its traceback)."""
    if is_user_error(error):
        return " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and error.errno is not None:
        return describe_os_error(error, fallback_path)
    return None


def run_cli(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None,
            prog: str = "lskd", fallback_path: Callable[[], Optional[str]] = lambda: None) -> int:
    """Run a CLI ``main``; user errors -> ``prog: error: <one line>`` on stderr and exit status 2."""
    try:
        return main(argv)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:  # noqa: BLE001 - re-raised below unless it is a user error
        line = user_error_line(error, fallback_path())
        if line is None or os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
            raise
        print(f"{prog}: error: {line}", file=sys.stderr)
        return 2


#: the last line of a Python traceback: "package.module.ErrorClass: message"
_TRACEBACK_TAIL = re.compile(r"^(?P<module>[A-Za-z_][\w.]*)\.(?P<name>[A-Za-z_]\w*): (?P<message>.*)$")


def worker_user_error_line(error: BaseException) -> Optional[str]:
    """The one line for a spawned worker's user error as the parent sees it (torch's
    ``ProcessRaisedException``, whose message is the worker's traceback), or None when the worker's
    error is not one of our types (a bug: the traceback stays). Only classes of ``fairseq_plugin``
    and ``lskd_core`` are looked up, and a class counts only if :func:`is_user_error` says so."""
    if type(error).__name__ != "ProcessRaisedException":
        return None
    lines = [line for line in str(error).splitlines() if line.strip()]
    match = _TRACEBACK_TAIL.match(lines[-1]) if lines else None
    if match is None or match["module"].split(".")[0] not in ("fairseq_plugin", "lskd_core"):
        return None
    try:
        cls = getattr(importlib.import_module(match["module"]), match["name"])
    except (ImportError, AttributeError):
        return None
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        return None
    try:
        probe = cls.__new__(cls)  # an instance only for the type test: its message is in the traceback
    except TypeError:
        return None
    if not is_user_error(probe):
        return None
    worker = getattr(error, "error_index", None)
    return f"{match['message'] or match['name']} (in worker process {worker})"


def _excepthook(previous):
    def hook(exc_type, exc_value, exc_tb):
        quiet = os.environ.get(TRACEBACK_ENV, "").strip() in ("", "0")
        if exc_value is not None and is_user_error(exc_value) and quiet:
            # One line (the first of the message): fairseq's 40-line traceback says nothing more.
            first = str(exc_value).splitlines()[0] if str(exc_value) else exc_type.__name__
            sys.stderr.write(f"lskd: error: {first}  ({TRACEBACK_ENV}=1 shows the traceback)\n")
            sys.stderr.flush()
            return
        worker_line = worker_user_error_line(exc_value) if exc_value is not None and quiet else None
        if worker_line is not None:
            sys.stderr.write(f"lskd: error: {worker_line}  ({TRACEBACK_ENV}=1 shows the traceback)\n")
            sys.stderr.flush()
            return
        previous(exc_type, exc_value, exc_tb)

    hook._lskd_excepthook = True  # type: ignore[attr-defined]
    return hook


def install_excepthook() -> None:
    """Print our error types as one line when they end a program (idempotent; chains)."""
    if not getattr(sys.excepthook, "_lskd_excepthook", False):
        sys.excepthook = _excepthook(sys.excepthook)
