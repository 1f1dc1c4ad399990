"""On-disk teacher outputs: one teacher pass serves every temperature and every student seed.

Layout of a cache directory ``DIR``::

    header.json          format, version, kind, dtype, top-K, classes, temperatures, rows,
                         rows per shard, aux floats per row, fingerprint, lskd version (written first)
    shard-00000/         one directory per ``rows_per_shard`` rows, renamed into place when complete
        logits.npy       full:  [rows, C] raw logits (bfloat16 stored as its uint16 bit pattern)
        values.npy       top-K: [rows, K] the K largest raw logits (same dtype rule), descending
        indices.npy      top-K: [rows, K] their class ids (int16 when C allows, else int32)
        tail_lse.npy     top-K: [rows, len(temperatures)] float32 log-sum-exp of the *other*
                         logits divided by T, one column per served temperature
        aux.npy          [rows, P] float32 replay parameters (e.g. crop boxes) when P > 0
        shard.json       row range, size and sha256 of every file: the completion marker

Raw logits are stored, never probabilities at one temperature: a full cache serves any T. A top-K
cache serves the temperatures it was built for: at those, ``p_t(T)`` is exact on the top-K classes
and the tail mass is exact, spread uniformly over the ``C - K`` other classes, which is what
``fairseq_plugin``'s ``--kd-topk`` does with a live teacher (``expand_topk``, including its clamp of
zero probabilities to the smallest normal float32).

A cache is only used when its fingerprint (teacher checkpoint, data, sample indices, transform,
augmentation seed, ...) equals the run's; any difference is a :class:`CacheMismatch` naming the
field. Loading never executes code: ``np.load(allow_pickle=False)`` and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from lskd_core import __version__ as LSKD_VERSION
from lskd_core.atomic import atomic_write_json
from lskd_core.checks import check_temperature

__all__ = [
    "FORMAT",
    "VERSION",
    "CacheMismatch",
    "CacheWriter",
    "TeacherCache",
    "describe",
    "file_sha256",
    "make_fingerprint",
]

FORMAT = "lskd-teacher-cache"
VERSION = 1
KINDS = ("full", "topk")
DTYPES = ("float32", "bfloat16", "float16")

PathLike = Union[str, "os.PathLike[str]"]
Rows = Union[Sequence[int], np.ndarray, torch.Tensor]

_HEADER = "header.json"
_SHARD_MARK = "shard.json"
_TMP_MARK = ".tmp-"
_OLD_MARK = ".old-"
# Same floor as fairseq_plugin.teacher: a zero probability becomes log(tiny) = -87.3, finite.
_LOG_TINY = math.log(float(torch.finfo(torch.float32).tiny))
# Rows per float64 block when computing top-K tail log-sum-exps (bounds the float64 temporaries).
_TOPK_BLOCK_ELEMENTS = 1 << 22


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


def file_sha256(path: PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints and shards can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(block)
    return digest.hexdigest()


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
    if not isinstance(fingerprint, dict):
        raise ValueError(f"fingerprint must be a dict (see make_fingerprint), got {type(fingerprint).__name__}")
    return {
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


# ----------------------------------------------------------------------------------------------
# top-K
# ----------------------------------------------------------------------------------------------
def _topk_arrays(x: torch.Tensor, k: int, temperatures: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(values [n, K] in x's dtype, indices [n, K] int64, tail_lse [n, len(T)] float32), on CPU.

    Runs on x's device (a GPU builder ships K values per row, not C). Order: descending logit,
    equal logits by class id, so the files are a function of the logits alone. Tail
    log-sum-exps are computed in float64 directly over the non-top-K logits (never as
    lse(all) - lse(top), which would cancel when the tail is tiny).
    """
    n, c = x.shape
    values, indices, tails = [], [], []
    block = max(1, _TOPK_BLOCK_ELEMENTS // c)
    for start in range(0, n, block):
        xb = x[start:start + block].double()
        top = torch.topk(xb, k, dim=-1, sorted=False).indices
        # Canonical order: class id ascending, then a stable descending sort by value.
        top = torch.sort(top, dim=-1).values
        order = torch.sort(xb.gather(1, top), dim=-1, descending=True, stable=True).indices
        top = top.gather(1, order)
        values.append(x[start:start + block].gather(1, top).cpu())
        indices.append(top.cpu())
        rest = xb.scatter(1, top, -math.inf)
        tails.append(torch.stack([torch.logsumexp(rest / temp, dim=-1) for temp in temperatures], dim=1)
                     .float().cpu())
    return torch.cat(values), torch.cat(indices), torch.cat(tails).numpy()


def _topk_dense(values: torch.Tensor, indices: torch.Tensor, tail_lse: torch.Tensor, num_classes: int,
                temperature: float) -> torch.Tensor:
    """Float32 logits z [n, C] with softmax(z / T) = the top-K target distribution at T.

    p_k = exp(v_k / T - L) on the top-K, each tail class gets exp(tail_lse - L) / (C - K), with
    L = logaddexp(lse(v / T), tail_lse); zero probabilities are floored at float32's tiny as in
    fairseq_plugin.teacher. Any per-row shift of z leaves softmax(z / T) unchanged; we add T * L so
    the top-K entries are the cached raw logits themselves (small numbers, no rounding of -T ln C).
    """
    v = values.double() / temperature
    lse_all = torch.logaddexp(torch.logsumexp(v, dim=-1), tail_lse.double())
    k = values.shape[1]
    floor = (_LOG_TINY + lse_all) * temperature
    if k < num_classes:
        fill = (tail_lse.double() - math.log(num_classes - k)) * temperature
    else:
        fill = torch.full_like(lse_all, -math.inf)  # no tail classes: every entry is overwritten
    fill = torch.maximum(fill, floor)
    top = torch.maximum(values.double(), floor.unsqueeze(1))
    dense = fill.float().unsqueeze(1).expand(-1, num_classes).clone()
    return dense.scatter_(1, indices.long(), top.float())


# ----------------------------------------------------------------------------------------------
# writer
# ----------------------------------------------------------------------------------------------
def _save_npy(path: Path, array: np.ndarray) -> Dict[str, Any]:
    with open(path, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


class CacheWriter:
    """Builds a cache shard by shard; safe to kill at any point and to resume.

    Creating a writer over an existing cache with the same header resumes it (``pending_shards``
    lists what is left); a different header raises :class:`CacheMismatch` naming the field.
    Several processes may write disjoint shards of one cache concurrently; one calls ``finalize``.
    """

    def __init__(
        self,
        root: PathLike,
        *,
        num_classes: int,
        num_rows: int,
        rows_per_shard: int,
        kind: str = "full",
        dtype: str = "float32",
        topk: Optional[int] = None,
        temperatures: Iterable[float] = (),
        aux_dim: int = 0,
        fingerprint: Dict[str, Any],
    ) -> None:
        self.root = Path(root)
        self.header = _make_header(
            kind=kind, dtype=dtype, topk=topk, num_classes=num_classes, temperatures=temperatures,
            num_rows=num_rows, rows_per_shard=rows_per_shard, aux_dim=aux_dim, fingerprint=fingerprint,
        )
        header_path = self.root / _HEADER
        if header_path.exists():
            existing = _read_header(self.root)
            diff = _first_difference(_flatten(existing), _flatten(self.header))
            if diff is not None:
                field, cached, wanted = diff
                raise CacheMismatch(
                    f"{self.root} already holds a teacher cache built with {field} = {_show(cached)}, this build "
                    f"has {_show(wanted)}; delete {self.root} or choose another --out directory"
                )
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_json(header_path, self.header, sort_keys=True)

    @property
    def num_shards(self) -> int:
        return _num_shards(self.header)

    def shard_rows(self, index: int) -> range:
        """Global row ids stored in shard ``index``."""
        self._check_index(index)
        return _shard_range(self.header, index)

    def pending_shards(self) -> List[int]:
        """Shards not yet complete (no ``shard.json``, or a file of the wrong size)."""
        return [i for i in range(self.num_shards) if _shard_problem(self.root, self.header, i) is not None]

    def _check_index(self, index: int) -> None:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < self.num_shards:
            raise ValueError(f"shard index must be in [0, {self.num_shards}), got {index!r}")

    def _arrays(self, logits: torch.Tensor, aux: Optional[Union[torch.Tensor, np.ndarray]], rows: int
                ) -> Dict[str, np.ndarray]:
        header = self.header
        c = int(header["num_classes"])
        if tuple(logits.shape) != (rows, c):
            raise ValueError(f"logits for this shard must have shape ({rows}, {c}), got {tuple(logits.shape)}")
        if bool(torch.isnan(logits).any()) or bool((logits == math.inf).any()):
            raise ValueError("teacher logits contain NaN or +inf; refusing to cache them")
        arrays: Dict[str, np.ndarray] = {}
        if header["kind"] == "full":
            arrays["logits.npy"] = _to_storage(logits.cpu(), header["dtype"])
        else:
            values, indices, tail = _topk_arrays(logits, int(header["topk"]), header["temperatures"])
            arrays["values.npy"] = _to_storage(values, header["dtype"])
            arrays["indices.npy"] = indices.numpy().astype(_index_dtype(c))
            arrays["tail_lse.npy"] = tail
        p = int(header["aux_dim"])
        if p > 0:
            if aux is None:
                raise ValueError(f"this cache stores {p} aux floats per row: pass aux with shape ({rows}, {p})")
            aux_np = np.asarray(aux.detach().cpu().numpy() if isinstance(aux, torch.Tensor) else aux,
                                dtype=np.float32)
            if aux_np.shape != (rows, p):
                raise ValueError(f"aux must have shape ({rows}, {p}), got {aux_np.shape}")
            arrays["aux.npy"] = aux_np
        elif aux is not None:
            raise ValueError("this cache was created with aux_dim=0; pass aux=None or create it with aux_dim=P")
        return arrays

    def write_shard(self, index: int, logits: Union[torch.Tensor, np.ndarray],
                    aux: Optional[Union[torch.Tensor, np.ndarray]] = None) -> None:
        """Store the teacher logits [rows, C] (and aux [rows, P]) of shard ``index`` atomically.

        Files are written into a private temporary directory that is renamed into place once
        ``shard.json`` (sizes and sha256 of every file) is in it. Deterministic: writing the same
        inputs again gives byte-identical files.
        """
        self._check_index(index)
        rows = self.shard_rows(index)
        arrays = self._arrays(_as_float_tensor(logits, "logits", keep_cuda=self.header["kind"] == "topk"),
                              aux, len(rows))
        name = _shard_name(index)
        tmp = self.root / f".{name}{_TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            files = {fname: _save_npy(tmp / fname, arr) for fname, arr in sorted(arrays.items())}
            mark = {"shard": index, "row_start": rows.start, "row_stop": rows.stop, "files": files}
            atomic_write_json(tmp / _SHARD_MARK, mark, sort_keys=True)
            final = self.root / name
            old = None
            if final.exists():
                old = self.root / f".{name}{_OLD_MARK}{os.getpid()}-{secrets.token_hex(4)}"
                os.replace(final, old)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def finalize(self, verify_hashes: bool = False) -> Dict[str, Any]:
        """Check that every shard is complete, remove leftovers of killed writers; returns
        :func:`describe`. Call once, after every writer process is done."""
        problems = [(i, _shard_problem(self.root, self.header, i, verify_hashes)) for i in range(self.num_shards)]
        problems = [(i, p) for i, p in problems if p is not None]
        if problems:
            listed = "; ".join(p for _, p in problems[:5] if p)
            raise CacheMismatch(f"teacher cache {self.root} is incomplete: {len(problems)} of {self.num_shards} "
                                f"shards pending ({listed}); run the builder again, it resumes")
        for leftover in self.root.iterdir():
            if leftover.name.startswith(".shard-") and (_TMP_MARK in leftover.name or _OLD_MARK in leftover.name):
                shutil.rmtree(leftover, ignore_errors=True)
        return describe(self.root)


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
# reader
# ----------------------------------------------------------------------------------------------
class TeacherCache:
    """Read side of a complete, fingerprint-checked cache. Use :meth:`open`."""

    def __init__(self, root: Path, header: Dict[str, Any], verify: str, hint: Optional[str]) -> None:
        self.root = root
        self.header = header
        self._verify = verify
        self._hint = hint
        self._shards: Dict[int, Dict[str, np.ndarray]] = {}

    def __getstate__(self) -> Dict[str, Any]:
        # Memory maps would pickle as full in-memory copies; a worker process re-opens its own.
        state = self.__dict__.copy()
        state["_shards"] = {}
        return state

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        root: PathLike,
        expected_fingerprint: Dict[str, Any],
        *,
        temperatures: Iterable[float] = (),
        min_rows: Optional[int] = None,
        verify: str = "lazy",
        rebuild_hint: Optional[str] = None,
    ) -> "TeacherCache":
        """Open the cache at ``root`` for a run with ``expected_fingerprint``.

        Raises :class:`CacheMismatch` (naming the field, the cached and the expected value) when
        the cache is missing or incomplete, a fingerprint field differs or exists on one side
        only, a requested temperature is not served (top-K), or it holds fewer than ``min_rows``
        rows. ``verify``: ``"size"`` checks file sizes on open; ``"lazy"`` (default) also checks
        each shard's sha256 the first time it is read; ``"full"`` checks every sha256 now.
        ``rebuild_hint`` replaces the generic "how to rebuild" advice (e.g. a builder command).
        """
        if verify not in ("size", "lazy", "full"):
            raise ValueError(f"verify must be 'size', 'lazy' or 'full', got {verify!r}")
        root = Path(root)
        header = _read_header(root, rebuild_hint)
        hint = _rebuild_hint(root, rebuild_hint)
        cached_fp = header.get("fingerprint") or {}
        diff = _first_difference(cached_fp, make_fingerprint(**expected_fingerprint))
        if diff is not None:
            field, cached, wanted = diff
            raise CacheMismatch(f"teacher cache {root} is stale: fingerprint field {field!r} is {_show(cached)} in "
                                f"the cache but {_show(wanted)} for this run; {hint}")
        cache = cls(root, header, verify, rebuild_hint)
        for temp in temperatures:
            cache._temperature_column(check_temperature(temp))
        if min_rows is not None and cache.num_rows < int(min_rows):
            raise CacheMismatch(f"teacher cache {root} holds num_rows = {cache.num_rows} but this run needs at least "
                                f"{int(min_rows)} (built for fewer epochs or samples than the student uses); {hint}")
        for i in range(_num_shards(header)):
            problem = _shard_problem(root, header, i, verify_hashes=verify == "full")
            if problem is not None:
                raise CacheMismatch(f"teacher cache {root} is incomplete or damaged: {problem}; rerun its builder "
                                    f"(it resumes and rewrites damaged shards after you delete them) or {hint}")
        return cache

    # -- properties ----------------------------------------------------------------------------
    @property
    def num_rows(self) -> int:
        return int(self.header["num_rows"])

    @property
    def kind(self) -> str:
        return str(self.header["kind"])

    @property
    def num_classes(self) -> int:
        return int(self.header["num_classes"])

    @property
    def temperatures(self) -> List[float]:
        return list(self.header["temperatures"])

    @property
    def fingerprint(self) -> Dict[str, Any]:
        return dict(self.header["fingerprint"])

    def _temperature_column(self, temperature: float) -> int:
        """Column of ``tail_lse`` for T (top-K); -1 for a full cache (serves every T)."""
        if self.kind == "full":
            return -1
        for j, served in enumerate(self.header["temperatures"]):
            if math.isclose(served, temperature, rel_tol=1e-12, abs_tol=0.0):
                return j
        raise CacheMismatch(
            f"top-K teacher cache {self.root} serves temperatures = {self.header['temperatures']} but T = "
            f"{temperature:g} was requested; {_rebuild_hint(self.root, self._hint)} including T = {temperature:g} "
            "(or use a full-logit cache, which serves every T)"
        )

    # -- shard access --------------------------------------------------------------------------
    def _shard(self, index: int) -> Dict[str, np.ndarray]:
        arrays = self._shards.get(index)
        if arrays is not None:
            return arrays
        name = _shard_name(index)
        if self._verify == "lazy":
            problem = _shard_problem(self.root, self.header, index, verify_hashes=True)
            if problem is not None:
                raise CacheMismatch(f"teacher cache {self.root} is damaged: {problem}; "
                                    f"{_rebuild_hint(self.root, self._hint)}")
        rows = len(_shard_range(self.header, index))
        arrays = {}
        for fname, (dtype, shape) in _expected_arrays(self.header, rows).items():
            path = self.root / name / fname
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as err:
                raise CacheMismatch(f"teacher cache file {path} cannot be read safely ({err}); "
                                    f"{_rebuild_hint(self.root, self._hint)}") from None
            if arr.dtype != dtype or arr.shape != shape:
                raise CacheMismatch(f"teacher cache file {path} holds {arr.dtype} {arr.shape}, expected {dtype} "
                                    f"{shape}; {_rebuild_hint(self.root, self._hint)}")
            arrays[fname[:-4]] = arr
        self._shards[index] = arrays
        return arrays

    def _gather(self, rows: Rows, field: str) -> np.ndarray:
        """``field``'s rows (global ids, any order, repeats allowed) as one in-memory array."""
        ids = _row_ids(rows, self.num_rows)
        size = int(self.header["rows_per_shard"])
        shard_of = ids // size
        shards = np.unique(shard_of)
        if shards.size == 1:  # the common case (a batch from one shard): one fancy-indexed read
            index = int(shards[0])
            return np.asarray(self._shard(index)[field][ids - index * size])
        out: Optional[np.ndarray] = None
        for index in shards:
            arr = self._shard(int(index))[field]
            where = np.nonzero(shard_of == index)[0]
            part = arr[ids[where] - int(index) * size]
            if out is None:
                out = np.empty((ids.shape[0],) + arr.shape[1:], dtype=arr.dtype)
            out[where] = part
        if out is None:  # no rows asked for
            arr = self._shard(0)[field]
            out = np.empty((0,) + arr.shape[1:], dtype=arr.dtype)
        return out

    # -- public reads --------------------------------------------------------------------------
    def aux(self, rows: Rows) -> np.ndarray:
        """Replay parameters [n, P] float32 of the given rows."""
        if int(self.header["aux_dim"]) == 0:
            raise ValueError(f"teacher cache {self.root} stores no aux parameters (aux_dim = 0)")
        return self._gather(rows, "aux")

    def teacher_logits_at(self, rows: Rows, temperature: float) -> torch.Tensor:
        """Float32 logits z [n, C] such that softmax(z / T) is the cached teacher's p_t(T).

        Full cache: the raw logits (any T). Top-K cache: exact p on the top-K classes, the tail
        mass exact at T spread uniformly over the other classes (T must be a served one). Feed
        the result to ``kd_loss(student, z, T)`` as if it were the live teacher's logits.
        """
        temperature = check_temperature(temperature)
        column = self._temperature_column(temperature)
        dtype = str(self.header["dtype"])
        if self.kind == "full":
            return _from_storage(self._gather(rows, "logits"), dtype)
        values = _from_storage(self._gather(rows, "values"), dtype)
        indices = torch.from_numpy(self._gather(rows, "indices").astype(np.int64))
        tail = torch.from_numpy(np.ascontiguousarray(self._gather(rows, "tail_lse")[:, column]))
        return _topk_dense(values, indices, tail, self.num_classes, temperature)


def _row_ids(rows: Rows, num_rows: int) -> np.ndarray:
    ids = rows.detach().cpu().numpy() if isinstance(rows, torch.Tensor) else np.asarray(rows)
    if ids.ndim != 1:
        raise ValueError(f"rows must be a 1-D array of row ids, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"rows must hold integer row ids, got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False)
    if ids.size and (ids.min() < 0 or ids.max() >= num_rows):
        raise ValueError(f"row ids must lie in [0, {num_rows}), got range [{ids.min()}, {ids.max()}]")
    return ids


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
