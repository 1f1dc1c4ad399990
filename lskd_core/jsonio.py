"""JSON helpers shared by the study and the report: one strict reader, one writer, the hashes
(of a JSON value, of a file).

The study and the report used to read JSON in two ways: the study refused a file that was
present but unreadable, the report quietly treated it as absent. The stricter rule is kept here
for both: :func:`read_json_object` returns None only when the file does not exist and raises
:class:`BadJson` (a ValueError naming the file and the problem) otherwise, so a damaged
``result.json`` is reported as damaged, never mistaken for "not run yet". Callers that may go on
without the file (the report's cache, a run's result) catch :class:`BadJson` explicitly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Type

import numpy as np

from lskd_core.atomic import PathLike, atomic_write_json

__all__ = ["BadJson", "read_json_object", "write_json", "sha256_json", "file_sha256", "jsonable", "num"]


class BadJson(ValueError):
    """A JSON file exists but is not a readable JSON object."""


def read_json_object(path: PathLike) -> Optional[dict]:
    """The JSON object at ``path``; None when the file is absent; BadJson when present but unreadable,
    not JSON or not an object."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadJson(f"{p.name} is not valid JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise BadJson(f"{p.name} holds a {type(obj).__name__}, not a JSON object")
    return obj


def load_json_file(path: str, what: str, expected: str, error: Type[Exception] = ValueError,
                   missing: Optional[Type[Exception]] = None) -> Any:
    """``json.load`` of a user's file, each failure one ``error`` that names ``what`` and the file:
    missing (``missing``, default ``error``), not UTF-8 JSON, or nested too deeply for json's
    recursive parser (``expected`` describes the shape the file should have)."""
    if not os.path.isfile(path):
        raise (missing or error)(f"{what} not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{what} {path} is not valid JSON: {exc}") from None
    except RecursionError:  # json's parser recurses once per nesting level
        raise error(f"{what} {path} is nested too deeply; expected {expected}") from None


def write_json(path: PathLike, obj: Any) -> None:
    """Atomic, strict (no NaN/Infinity), key-sorted JSON: the form of every study record."""
    atomic_write_json(path, obj, sort_keys=True, allow_nan=False)


def sha256_json(obj: Any) -> str:
    """SHA-256 of the canonical (sorted, compact) JSON text of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_sha256(path: PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints and cache shards can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


def jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become None (results stay strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def num(x: float) -> str:
    """Compact, exact text for a hyper-parameter value (run ids, labels): 0.1 -> '0.1', 2.0 -> '2'."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)
