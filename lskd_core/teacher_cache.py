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
        indices.npy      sampled: [rows, len(temperatures), K] K token ids drawn from p_t(T) per
                         row and served T (with replacement; lskd_core.sampled_kd), seeded by the
                         header's ``sample_seed`` and the shard's first row
        logp.npy         sampled: [rows, len(temperatures), K] float32 log p_t(T) of each drawn id
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

This module is the reader and the public API (it re-exports the rest): the header, fingerprints and
shard checks live in :mod:`lskd_core.teacher_cache_format`, the builder in
:mod:`lskd_core.teacher_cache_writer`.
"""


from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

from lskd_core.checks import check_temperature
from lskd_core.sampled_kd import KDSamples
from lskd_core.teacher_cache_format import (
    DTYPES,
    FORMAT,
    KINDS,
    VERSION,
    CacheMismatch,
    PathLike,
    _expected_arrays,
    _first_difference,
    _from_storage,
    _num_shards,
    _read_header,
    _rebuild_hint,
    _shard_name,
    _shard_problem,
    _shard_range,
    _show,
    describe,
    file_sha256,
    make_fingerprint,
)
from lskd_core.teacher_cache_writer import CacheWriter

__all__ = [
    "DTYPES",
    "FORMAT",
    "KINDS",
    "VERSION",
    "CacheMismatch",
    "CacheWriter",
    "TeacherCache",
    "describe",
    "file_sha256",
    "make_fingerprint",
]

Rows = Union[Sequence[int], np.ndarray, torch.Tensor]

# Same floor as fairseq_plugin.teacher: a zero probability becomes log(tiny) = -87.3, finite.
_LOG_TINY = math.log(float(torch.finfo(torch.float32).tiny))


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
        if self.kind == "sampled":
            raise CacheMismatch(f"teacher cache {self.root} holds sampled tokens, not logits: read it with "
                                f"sampled_at (ls_kd --kd-topk-mode sample), or build a top-K or full cache")
        values = _from_storage(self._gather(rows, "values"), dtype)
        indices = torch.from_numpy(self._gather(rows, "indices").astype(np.int64))
        tail = torch.from_numpy(np.ascontiguousarray(self._gather(rows, "tail_lse")[:, column]))
        return _topk_dense(values, indices, tail, self.num_classes, temperature)


    def sampled_at(self, rows: Rows, temperature: float) -> KDSamples:
        """Sampled cache: the K tokens drawn for each row at T, their ``log p_T`` and importance
        weights (all 1: drawn from the target itself), for :func:`lskd_core.sampled_kd.sampled_kd_loss`."""
        if self.kind != "sampled":
            raise CacheMismatch(f"teacher cache {self.root} is a {self.kind} cache, not a sampled one; "
                                f"{_rebuild_hint(self.root, self._hint)} with sampling (or ask for its own kind)")
        column = self._temperature_column(check_temperature(temperature))
        ids = torch.from_numpy(np.ascontiguousarray(self._gather(rows, "indices")[:, column]).astype(np.int64))
        logp = torch.from_numpy(np.ascontiguousarray(self._gather(rows, "logp")[:, column]))
        return KDSamples(ids, logp, torch.ones_like(logp))


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
