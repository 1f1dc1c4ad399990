"""Warm start for local runs: one process pays the imports, each run is a fork of it.

A run of a small study is mostly start-up: importing torch costs about 1 CPU second, and torch
imports ``torch._dynamo`` (another ~1.3 s) the first time any optimizer is built. The demo grid
starts ~300 processes, so about half its compute was imports, paid again by every run. The local
launcher therefore keeps one *warm server* per study invocation::

    python -m lskd_core.study.warm_start --preload torch torch._dynamo torchvision

It imports the preload modules once and then, per request (one JSON line on its stdin: module,
arguments, cwd, log file, exit file), imports the run's module, forks, and in the child runs the
module as ``__main__`` exactly as ``python -m module args`` would (``runpy``; the preloaded copy
of the module itself is dropped first so its top level runs afresh as ``__main__``). Each child is
a new session (its own process group, like ``start_new_session``), writes to its log, and is a
real process with a pid the launcher can poll, signal and adopt like a cold one. The server reaps
children and writes each one's exit status and CPU time (``wait4``) to the run's exit file.

Why forking is safe here: the server never runs tensor code, and it refuses to fork (the launcher
then starts the run cold) once it has more threads than a bare ``import numpy`` leaves: fork copies
only the calling thread, so a thread started by some import would be missing in the child. The one
thread allowed is OpenBLAS's pool, which numpy (and torch through it) start at import and which
OpenBLAS shuts down before a fork and restarts in the child (``pthread_atfork``), as it must for
``multiprocessing`` and DataLoader workers. The runs' environment is the
server's own (the launcher keys servers by environment), so variables read at import time
(``OMP_NUM_THREADS`` by the OpenMP runtime) mean the same as in a cold start. A run is started
cold whenever the server cannot be used: not ``python -m``, torchrun, a ``python`` setting that is
not a Python interpreter, no ``/proc`` to count threads, or a server that died.

Console scripts start warm too (``fairseq-train``, ``fairseq-generate``: ~5 CPU s of imports each):
a script whose ``#!`` line names an interpreter and whose name is one of that interpreter's
``console_scripts`` entry points, with the text of pip's wrapper for it (``from M import F`` ...
``F()``), is run by the server of that interpreter as the wrapper would: ``sys.argv[0]`` the script,
the script's folder first on ``sys.path``, exit status ``sys.exit(F())``'s. Any other file is cold.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import io
import json
import os
import re
import runpy
import select
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple

__all__ = ["DEFAULT_PRELOAD", "WarmServer", "read_exit_file", "warm_module", "warm_target"]

#: Imported once by the server (those not installed are skipped).
DEFAULT_PRELOAD = ("torch", "torch._dynamo", "torch.optim", "torchvision", "numpy")

# Modules run through torchrun start several processes with their own rendezvous: never warm.
_NEVER_WARM = ("torch.distributed.run", "torch.distributed.launch")
# Console scripts that start cold although they could be forked: fairseq-train ran 6-12 % fewer
# words/s as a fork of the server than started cold (200 updates of the translation demo's student,
# one thread, two A/B runs on 2 cores: 2,860 vs 3,260 and 2,690 vs 2,870 words/s; cause not found).
# A training run lasts minutes, so the ~3 s of imports a fork saves never pays for that.
COLD_SCRIPTS = ("fairseq-train",)


def warm_module(argv: Sequence[str], python: str) -> Optional[str]:
    """The module ``argv`` runs when it is ``python -m MODULE ...`` for this ``python`` and the
    module can be started warm; None otherwise."""
    if len(argv) < 3 or argv[0] != python or argv[1] != "-m" or argv[2] in _NEVER_WARM:
        return None
    return argv[2]


def _shebang_python(path: str) -> Optional[str]:
    """The interpreter a script's ``#!`` line names, when it is a plain path to an executable."""
    try:
        with open(path, "rb") as fh:
            first = fh.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    if len(words) != 1 or not os.path.isabs(words[0]) or not os.access(words[0], os.X_OK):
        return None  # "/usr/bin/env python", interpreter flags, ...: not known to be one interpreter
    # a shell or other script is not ours to fork (and a server it cannot start would turn warm
    # start off for the study's Python runs too)
    return words[0] if re.fullmatch(r"python[0-9.]*", os.path.basename(words[0])) else None


def warm_target(argv: Sequence[str]) -> Optional[Tuple[str, Dict[str, str], List[str]]]:
    """For a run that may start warm: (the server's interpreter, what the server runs, the run's
    arguments) -- a module and the arguments after ``python -m MODULE``, or a console script naming
    its interpreter and the arguments after the script; else None. Whether a script really is an
    entry point's wrapper is the server's to check (it has the interpreter's metadata)."""
    if not argv:
        return None
    module = warm_module(argv, argv[0])
    if module is not None:
        return argv[0], {"module": module}, list(argv[3:])
    if os.path.basename(argv[0]) in COLD_SCRIPTS:
        return None
    python = _shebang_python(argv[0])
    return (python, {"script": os.path.abspath(argv[0])}, list(argv[1:])) if python else None


def read_exit_file(path: Path) -> Optional[Dict[str, Any]]:
    """The exit record the server wrote for a run (returncode, CPU seconds), or None before it ends."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("returncode"), int) else None


# --------------------------------------------------------------------------- client (the launcher)

class WarmServer:
    """The launcher's end: starts the server, asks it to fork runs, closes it."""

    def __init__(self, python: str, env: Mapping[str, str], preload: Sequence[str] = DEFAULT_PRELOAD,
                 cwd: Optional[Path] = None) -> None:
        self.python = python
        self.env = dict(env)
        self.failed: Optional[str] = None  # why the server cannot be used (then runs start cold)
        argv = [python, "-m", "lskd_core.study.warm_start", "--preload", *preload]
        try:
            self.proc: Optional[subprocess.Popen] = subprocess.Popen(
                argv, env=self.env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            self.proc, self.failed = None, f"cannot start {python}: {e}"
            return
        hello = self._read_reply()
        if not hello or not hello.get("ready"):
            self.failed = (hello or {}).get("cold") or "the warm server did not start"
            self.close()

    def _read_reply(self) -> Optional[Dict[str, Any]]:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        try:
            reply = json.loads(line) if line else None
        except ValueError:
            reply = None
        return reply if isinstance(reply, dict) else None

    @property
    def usable(self) -> bool:
        return self.failed is None and self.proc is not None and self.proc.poll() is None

    def spawn(self, module: Optional[str], args: Sequence[str], log_path: Path, exit_path: Path,
              cwd: Optional[Path] = None, script: Optional[str] = None) -> Optional[int]:
        """Fork a run of ``module`` (``python -m``) or of the console ``script``; its pid, or None
        when it must be started cold (``failed`` says why once the server is unusable for good)."""
        if not self.usable:
            return None
        assert self.proc is not None and self.proc.stdin is not None
        request = {"module": module, "script": script, "args": list(args), "log": str(log_path),
                   "exit": str(exit_path), "cwd": str(cwd) if cwd else None}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            self.failed = "the warm server ended"
            return None
        reply = self._read_reply()
        if reply is None:
            self.failed = "the warm server ended"
            return None
        if "pid" in reply:
            return int(reply["pid"])
        if reply.get("unusable"):
            self.failed = str(reply.get("cold"))
        return None

    def close(self) -> None:
        """End the server (its running children keep running: they are separate sessions)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- server

def _thread_count() -> Optional[int]:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None  # no /proc: the threads cannot be counted, so forking is not known to be safe


def _cuda_initialized() -> bool:
    """CUDA cannot be used in a child forked after the parent initialised it."""
    torch = sys.modules.get("torch")
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except Exception:  # a torch without the call: assume the worst
        return True


def _allowed_threads() -> Optional[int]:
    """Threads after ``import numpy`` (OpenBLAS's fork-aware pool): the most the server may have."""
    try:
        import numpy  # noqa: F401
    except ImportError:
        pass
    return _thread_count()


#: The server's reply channel: its original stdout, moved off fd 1 so that anything an import
#: prints (fd 1 then points at /dev/null) cannot corrupt the replies.
_REPLY_FD = 1


def _send(reply: Mapping[str, Any]) -> None:
    # os.write, not sys.stdout: nothing may sit in a Python buffer when the server forks, or the
    # child would flush the server's reply into the run's log.
    data = (json.dumps(dict(reply)) + "\n").encode()
    while data:
        data = data[os.write(_REPLY_FD, data):]


def _take_reply_channel() -> None:
    global _REPLY_FD
    _REPLY_FD = os.dup(1)
    null_fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null_fd, 1)
    os.close(null_fd)


def _write_exit(path: str, record: Mapping[str, Any]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(dict(record), fh)
        os.replace(tmp, path)
    except OSError:
        pass  # the run's directory is gone: nobody is waiting for this record


def _reap(children: Dict[int, str]) -> None:
    while children:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        path = children.pop(pid, None)
        if path:
            _write_exit(path, {"pid": pid, "returncode": os.waitstatus_to_exitcode(status),
                               "cpu_user_s": usage.ru_utime, "cpu_system_s": usage.ru_stime,
                               "max_rss_kb": usage.ru_maxrss})


def _exit_code(e: SystemExit) -> int:
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)  # what the interpreter does with sys.exit("message")
    return 1


def _run_child(request: Mapping[str, Any], ready_fd: int) -> int:
    """In the forked child: become the run (new session, its log, its argv) and run the module."""
    os.setsid()
    os.write(ready_fd, b"1")
    os.close(ready_fd)
    # the dispositions of a fresh interpreter (the server ignores SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    log_fd = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.close(null_fd)
    os.close(_REPLY_FD)
    if request.get("cwd"):
        os.chdir(request["cwd"])
    run = _run_entry if request.get("entry") else _run_module
    try:
        run(request)
    except SystemExit as e:
        return _exit_code(e)
    except KeyboardInterrupt:
        traceback.print_exc()
        return 130
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _run_module(request: Mapping[str, Any]) -> None:
    module = request["module"]
    sys.argv = [module, *request["args"]]
    sys.path[0] = os.getcwd()  # as `python -m` puts the current directory first
    sys.modules.pop(module, None)  # run its top level afresh as __main__, like `python -m`
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def _run_entry(request: Mapping[str, Any]) -> None:
    """A console script, as pip's wrapper runs it: ``sys.exit(F())``."""
    script = str(request["script"])
    sys.argv = [script, *request["args"]]
    sys.path[0] = os.path.dirname(script)  # a script's folder, as for ``python script``
    module, _, attr = str(request["entry"]).partition(":")
    sys.exit(_attr(_fresh_import(module), attr)())


def _fresh_import(module: str) -> Any:
    """Import ``module`` afresh, as the wrapper's first import of it would in a new interpreter.

    Its top level runs again with the root logger unconfigured, so a module that configures logging
    first thing (``fairseq_cli.train``: ``logging.basicConfig(format=...)``, before it imports
    fairseq) gets its own format, not the default one an earlier run's import left in the server.
    A module that configures nothing gets the server's configuration back (what its imports set up in
    a cold start too)."""
    import logging

    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    for handler in saved:
        root.removeHandler(handler)
    sys.modules.pop(module, None)
    try:
        return importlib.import_module(module)
    finally:
        if not root.handlers:
            for handler in saved:
                root.addHandler(handler)
            root.setLevel(level)


def _attr(obj: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def _script_entry(script: str) -> Tuple[Optional[str], str]:
    """``"module:attr"`` of the console_scripts entry point that ``script`` is pip's wrapper of, or
    (None, why not). The wrapper's text must import and call that very function: a file that merely
    shares an entry point's name is run cold."""
    import importlib.metadata as metadata

    name = os.path.basename(script)
    found = list(metadata.entry_points(group="console_scripts", name=name))
    if not found:
        return None, f"{name} is not a console script of this interpreter"
    ep = found[0]
    try:
        text = Path(script).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        return None, f"cannot read {script}: {e}"
    head = ep.attr.split(".")[0]
    if f"from {ep.module} import {head}" not in text or f"{ep.attr}()" not in text:
        return None, f"{script} is not the wrapper of entry point {ep.value}"
    return f"{ep.module}:{ep.attr}", ""


def _exit_child(code: int) -> NoReturn:
    """End a run as the interpreter would (non-daemon threads joined, atexit handlers, streams
    flushed) but without tearing down every loaded module: that teardown of torch's thousands of
    modules costs ~1 CPU second and does nothing a finished run needs."""
    try:
        for thread in threading.enumerate():
            if thread is not threading.main_thread() and not thread.daemon:
                thread.join()
        atexit._run_exitfuncs()  # the handlers a normal exit runs (multiprocessing, logging, ...)
    except BaseException:
        traceback.print_exc()
        code = code or 1
    _flush_open_files()
    os._exit(code & 0xFF if code >= 0 else 1)


_FILE_TYPES = (io.TextIOWrapper, io.BufferedWriter, io.BufferedRandom)


def _flush_open_files() -> None:
    """Flush every open buffered file, as the interpreter's teardown would before exiting (a run
    may leave a file object open in a global). ``type() in``, not isinstance: some of torch's
    objects warn when their class is looked up."""
    for obj in [sys.stdout, sys.stderr, *(o for o in gc.get_objects() if type(o) in _FILE_TYPES)]:
        try:
            if not obj.closed:
                obj.flush()
        except (OSError, ValueError):
            pass


def _handle(request: Mapping[str, Any], children: Dict[int, str], state: Dict[str, Any]) -> None:
    """Fork one run (the child runs it and exits; only the server returns)."""
    if state.get("unusable"):
        _send({"cold": state["unusable"], "unusable": True})
        return
    if request.get("script"):
        entry, why = _script_entry(str(request["script"]))
        if entry is None:
            _send({"cold": why})
            return
        request = dict(request, entry=entry)
        module = entry.partition(":")[0]
    else:
        module = str(request.get("module"))
    try:
        importlib.import_module(module)
    except BaseException as e:  # the cold start will show the error in the run's own log
        _send({"cold": f"cannot import {module}: {type(e).__name__}"})
        return
    threads = _thread_count()
    if threads is None or threads > state["allowed_threads"]:
        state["unusable"] = (f"the warm server has {threads} threads after importing {module}: "
                             "forking it is not safe" if threads else "threads cannot be counted (no /proc)")
    elif _cuda_initialized():
        state["unusable"] = f"importing {module} initialised CUDA in the warm server: a forked child could not use it"
    if state.get("unusable"):
        _send({"cold": state["unusable"], "unusable": True})
        return
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into the server's loop, whatever happens
        code = 1
        try:
            os.close(ready_r)
            code = _run_child(request, ready_w)
        except BaseException:
            traceback.print_exc()
        _exit_child(code)
    os.close(ready_w)
    os.read(ready_r, 1)  # until the child leads its own session: a stop right after start must reach it
    os.close(ready_r)
    children[pid] = str(request["exit"])
    _send({"pid": pid})


def serve(preload: Sequence[str]) -> int:
    """The server's loop; returns at the end of its input (forked children exit in ``_handle``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the runner's to handle (it stops runs)
    _take_reply_channel()
    allowed = _allowed_threads()
    for name in preload:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    threads = _thread_count()
    if allowed is None or threads is None or threads > allowed:
        _send({"cold": f"the warm server has {threads} threads after its imports (at most {allowed} is safe)"
               if threads else "threads cannot be counted (no /proc)"})
        return 0
    _send({"ready": True, "pid": os.getpid(), "threads": threads})
    children: Dict[int, str] = {}
    state: Dict[str, Any] = {"allowed_threads": allowed}
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.2)
        _reap(children)
        if not readable:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            return 0  # the launcher closed us (or died); running children carry on
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            try:
                request = json.loads(line)
            except ValueError:
                _send({"cold": "unreadable request"})
                continue
            _handle(request, children, state)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lskd_core.study.warm_start",
                                     description="The local launcher's warm server (started by the study).")
    parser.add_argument("--preload", nargs="*", default=list(DEFAULT_PRELOAD))
    return serve(parser.parse_args(argv).preload)


if __name__ == "__main__":
    sys.exit(main())
