"""Teacher-cache format: header, fingerprints, shard layout, stored dtypes and shard checks.

The layout and its rules are described in :mod:`lskd_core.teacher_cache` (the public module, which
re-exports what users need) and in docs/formats.md, "Teacher cache". This module holds what both
the writer (:mod:`lskd_core.teacher_cache_writer`) and the reader agree on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import numpy as np
import torch

from lskd_core import __version__ as LSKD_VERSION
from lskd_core.checks import check_temperature
from lskd_core.jsonio import file_sha256

FORMAT = "lskd-teacher-cache"
VERSION = 1
KINDS = ("full", "topk", "sampled")  # sampled: K tokens drawn per row and T (lskd_core.sampled_kd)
DTYPES = ("float32", "bfloat16", "float16")

PathLike = Union[str, "os.PathLike[str]"]

_HEADER = "header.json"
_SHARD_MARK = "shard.json"
_TMP_MARK = ".tmp-"
_OLD_MARK = ".old-"

class CacheMismatch(ValueError):
    """The cache cannot serve this run (stale, incomplete, or built with other settings)."""


# ----------------------------------------------------------------------------------------------
# fingerprints
# ----------------------------------------------------------------------------------------------
def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    raise TypeError(f"fingerprint values must be JSON-like, got {type(value).__name__}: {value!r}")


def make_fingerprint(**fields: Any) -> Dict[str, Any]:
    """The fields as they will read back from JSON (tuples -> lists, numpy scalars -> numbers),
    so that a fingerprint compares equal to its stored copy."""
    normalised = json.loads(json.dumps(fields, sort_keys=True, default=_json_default))
    assert isinstance(normalised, dict)
    return normalised


def _show(value: Any) -> str:
    return "<absent>" if value is _ABSENT else json.dumps(value, sort_keys=True)


_ABSENT = object()


def _first_difference(cached: Dict[str, Any], expected: Dict[str, Any]) -> Optional[Tuple[str, Any, Any]]:
    for key in sorted(set(cached) | set(expected)):
        a, b = cached.get(key, _ABSENT), expected.get(key, _ABSENT)
        if a is _ABSENT or b is _ABSENT or a != b:
            return key, a, b
    return None


# ----------------------------------------------------------------------------------------------
# header
# ----------------------------------------------------------------------------------------------
def _positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _make_header(
    *, kind: str, dtype: str, topk: Optional[int], num_classes: int, temperatures: Iterable[float],
    num_rows: int, rows_per_shard: int, aux_dim: int, fingerprint: Dict[str, Any],
    sample_seed: Optional[int] = None,
) -> Dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    num_classes = _positive_int(num_classes, "num_classes")
    temps = sorted({check_temperature(t, "cache temperature") for t in temperatures})
    if kind == "full":
        if topk is not None:
            raise ValueError("topk only applies to kind='topk' caches; leave it None for a full cache")
        if temps:
            raise ValueError("temperatures only apply to kind='topk' caches (a full cache serves every T)")
    else:
        topk = _positive_int(topk, "topk")
        if topk > num_classes:
            raise ValueError(f"topk must be at most num_classes={num_classes}, got {topk}")
        if not temps:
            raise ValueError("a top-K cache needs the temperatures it will serve (e.g. temperatures=(1, 4))")
    if kind == "sampled":
        if isinstance(sample_seed, bool) or not isinstance(sample_seed, int) or sample_seed < 0:
            raise ValueError(f"a sampled cache needs a non-negative integer sample_seed, got {sample_seed!r}")
    elif sample_seed is not None:
        raise ValueError("sample_seed only applies to kind='sampled' caches")
    if not isinstance(fingerprint, dict):
        raise ValueError(f"fingerprint must be a dict (see make_fingerprint), got {type(fingerprint).__name__}")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "dtype": dtype,
        "topk": topk,
        "num_classes": num_classes,
        "temperatures": temps,
        "num_rows": _positive_int(num_rows, "num_rows"),
        "rows_per_shard": _positive_int(rows_per_shard, "rows_per_shard"),
        "aux_dim": _positive_int(aux_dim, "aux_dim", minimum=0),
        "fingerprint": make_fingerprint(**fingerprint),
        "lskd_version": LSKD_VERSION,
    }
    if kind == "sampled":  # only there, so that full and top-K headers are unchanged
        header["sample_seed"] = int(sample_seed)  # type: ignore[arg-type]
    return header


def _rebuild_hint(root: Path, hint: Optional[str]) -> str:
    return hint or f"delete {root} and rebuild the teacher cache with this run's settings"


def _read_header(root: Path, hint: Optional[str] = None) -> Dict[str, Any]:
    path = root / _HEADER
    if not path.is_file():
        raise CacheMismatch(f"no teacher cache at {root} ({_HEADER} missing); build it first "
                            f"({_rebuild_hint(root, hint)})")
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CacheMismatch(f"{path} is not a readable teacher-cache header ({err}); "
                            f"{_rebuild_hint(root, hint)}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CacheMismatch(f"{path} is not a {FORMAT} header; {_rebuild_hint(root, hint)}")
    if header.get("version") != VERSION:
        raise CacheMismatch(f"teacher cache {root} has format version {header.get('version')!r}, this lskd "
                            f"reads version {VERSION}; {_rebuild_hint(root, hint)}")
    return header


def _num_shards(header: Dict[str, Any]) -> int:
    return -(-int(header["num_rows"]) // int(header["rows_per_shard"]))


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _shard_range(header: Dict[str, Any], index: int) -> range:
    size = int(header["rows_per_shard"])
    return range(index * size, min((index + 1) * size, int(header["num_rows"])))


def _index_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.int16) if num_classes - 1 <= np.iinfo(np.int16).max else np.dtype(np.int32)


def _stored_dtype(dtype: str) -> np.dtype:
    stored: Dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
                                   "bfloat16": np.dtype(np.uint16)}
    return stored[dtype]


def _expected_arrays(header: Dict[str, Any], rows: int) -> Dict[str, Tuple[np.dtype, Tuple[int, ...]]]:
    """File name -> (dtype, shape) of every array a complete shard of ``rows`` rows holds."""
    stored = _stored_dtype(header["dtype"])
    out: Dict[str, Tuple[np.dtype, Tuple[int, ...]]] = {}
    if header["kind"] == "full":
        out["logits.npy"] = (stored, (rows, int(header["num_classes"])))
    elif header["kind"] == "sampled":
        shape = (rows, len(header["temperatures"]), int(header["topk"]))
        out["indices.npy"] = (_index_dtype(int(header["num_classes"])), shape)
        out["logp.npy"] = (np.dtype(np.float32), shape)
    else:
        k = int(header["topk"])
        out["values.npy"] = (stored, (rows, k))
        out["indices.npy"] = (_index_dtype(int(header["num_classes"])), (rows, k))
        out["tail_lse.npy"] = (np.dtype(np.float32), (rows, len(header["temperatures"])))
    if int(header["aux_dim"]) > 0:
        out["aux.npy"] = (np.dtype(np.float32), (rows, int(header["aux_dim"])))
    return out


# ----------------------------------------------------------------------------------------------
# dtype conversion
# ----------------------------------------------------------------------------------------------
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _to_storage(x: torch.Tensor, dtype: str) -> np.ndarray:
    """Cast float logits to the cache dtype (torch's rounding) and return the stored numpy array."""
    cast = x.to(_TORCH_DTYPES[dtype])
    if bool(torch.isinf(cast).logical_and(torch.isfinite(x)).any()):
        raise ValueError(f"teacher logits exceed the {dtype} range (max |logit| {float(x.abs().max()):.4g}); "
                         "build the cache with dtype='float32' or 'bfloat16'")
    if dtype == "bfloat16":
        return cast.view(torch.int16).numpy().view(np.uint16)
    return cast.numpy()


def _from_storage(a: np.ndarray, dtype: str) -> torch.Tensor:
    """Stored array -> float32 tensor (exact: every stored dtype widens losslessly)."""
    a = np.ascontiguousarray(a)
    if dtype == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(a).float()


def _as_float_tensor(logits: Union[torch.Tensor, np.ndarray], name: str, keep_cuda: bool) -> torch.Tensor:
    t = (logits if isinstance(logits, torch.Tensor) else torch.as_tensor(logits)).detach()
    if not (keep_cuda and t.device.type == "cuda"):
        t = t.cpu()
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {t.dtype}")
    return t


def _flatten(header: Dict[str, Any]) -> Dict[str, Any]:
    """Header with the fingerprint's fields lifted to ``fingerprint.NAME`` (for precise messages)."""
    flat = {k: v for k, v in header.items() if k != "fingerprint"}
    for key, value in (header.get("fingerprint") or {}).items():
        flat[f"fingerprint.{key}"] = value
    return flat


# ----------------------------------------------------------------------------------------------
# shard checks
# ----------------------------------------------------------------------------------------------
def _read_mark(root: Path, header: Dict[str, Any], index: int) -> Union[Dict[str, Any], str]:
    """The shard's ``shard.json`` if consistent with the header, else a one-line problem."""
    name = _shard_name(index)
    path = root / name / _SHARD_MARK
    if not path.is_file():
        return f"{name}/{_SHARD_MARK} missing (shard not built or deleted)"
    try:
        mark = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{name}/{_SHARD_MARK} unreadable"
    rows = _shard_range(header, index)
    expected_files = set(_expected_arrays(header, len(rows)))
    if (not isinstance(mark, dict) or mark.get("row_start") != rows.start or mark.get("row_stop") != rows.stop
            or not isinstance(mark.get("files"), dict) or set(mark["files"]) != expected_files):
        return f"{name}/{_SHARD_MARK} does not describe rows [{rows.start}, {rows.stop}) of this cache"
    return mark


def _shard_problem(root: Path, header: Dict[str, Any], index: int, verify_hashes: bool = False) -> Optional[str]:
    """None if shard ``index`` is complete (sizes; and sha256 with ``verify_hashes``), else why not."""
    mark = _read_mark(root, header, index)
    if isinstance(mark, str):
        return mark
    name = _shard_name(index)
    for fname, info in sorted(mark["files"].items()):
        path = root / name / fname
        if not path.is_file():
            return f"{name}/{fname} missing"
        size = path.stat().st_size
        if size != info.get("bytes"):
            return f"{name}/{fname} is {size} bytes, {_SHARD_MARK} says {info.get('bytes')} (truncated or modified)"
        if verify_hashes and file_sha256(path) != info.get("sha256"):
            return f"{name}/{fname} sha256 differs from {_SHARD_MARK} (corrupted or modified)"
    return None


# ----------------------------------------------------------------------------------------------

# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def describe(root: PathLike) -> Dict[str, Any]:
    """Size and shape of a cache (complete or not), for reports: rows, kind, dtype, top-K,
    shards complete/total, bytes on disk (shards and header) and bytes per row."""
    root = Path(root)
    header = _read_header(root)
    total = _num_shards(header)
    complete = sum(_shard_problem(root, header, i) is None for i in range(total))
    size = (root / _HEADER).stat().st_size
    for i in range(total):
        shard = root / _shard_name(i)
        if shard.is_dir():
            size += sum(f.stat().st_size for f in shard.iterdir() if f.is_file())
    rows = int(header["num_rows"])
    return {
        "root": str(root),
        "kind": header["kind"],
        "dtype": header["dtype"],
        "topk": header["topk"],
        "num_classes": header["num_classes"],
        "temperatures": header["temperatures"],
        "rows": rows,
        "aux_dim": header["aux_dim"],
        "shards": total,
        "shards_complete": complete,
        "bytes_on_disk": size,
        "bytes_per_row": size / rows,
    }
