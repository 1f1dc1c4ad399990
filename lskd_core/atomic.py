"""Atomic file writes, used for every result lskd and its plugins write.

A file is written to a temporary name in its own folder, flushed to disk, then moved into place
with ``os.replace``: a reader, or a job resumed after a kill, sees either the old complete file or
the new complete one, never half of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", encoding: Optional[str] = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success move it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open writes whole files: mode must contain 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would (umask), so
        # checkpoints and results stay readable by collaborators on shared machines.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_write_json(path: PathLike, obj: Any, **dumps_kwargs: Any) -> None:
    """Write ``obj`` as JSON (indent 2 unless given, trailing newline) to ``path`` atomically."""
    dumps_kwargs.setdefault("indent", 2)
    atomic_write_text(path, json.dumps(obj, **dumps_kwargs) + "\n")


def atomic_savefig(fig: Any, path: PathLike, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure as PNG to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", **savefig_kwargs)
    return Path(path)
