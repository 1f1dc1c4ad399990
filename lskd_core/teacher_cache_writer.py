"""Teacher-cache writer: builds a cache shard by shard, resumable and safe to kill.

See :mod:`lskd_core.teacher_cache` for the layout; this module only writes it.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from lskd_core.atomic import atomic_write_json
from lskd_core.sampled_kd import draw_kd_samples
from lskd_core.teacher_cache_format import (
    _HEADER,
    _OLD_MARK,
    _SHARD_MARK,
    _TMP_MARK,
    CacheMismatch,
    PathLike,
    _as_float_tensor,
    _first_difference,
    _flatten,
    _index_dtype,
    _make_header,
    _num_shards,
    _read_header,
    _shard_name,
    _shard_problem,
    _shard_range,
    _show,
    _to_storage,
    describe,
    file_sha256,
)

# Rows per float64 block when computing top-K tail log-sum-exps (bounds the float64 temporaries).
_TOPK_BLOCK_ELEMENTS = 1 << 22


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


def _sampled_arrays(x: torch.Tensor, k: int, temperatures: Sequence[float], seed: int, first_row: int
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """(ids [n, len(T), K], log p_T of each id [n, len(T), K] float32): K draws per row from the
    teacher at each served T (lskd_core.sampled_kd, proposal = target). The generator is seeded by
    (seed, first row of the shard, T's column), so the draws depend on the header alone, not on
    which process writes the shard or in which order."""
    ids, logps = [], []
    for column, temperature in enumerate(temperatures):
        generator = torch.Generator(device=x.device)
        generator.manual_seed((int(seed) * 1_000_003 + int(first_row)) * 1_009 + column)
        drawn = draw_kd_samples(x, float(temperature), k, generator=generator)
        ids.append(drawn.ids.cpu().numpy())
        logps.append(drawn.teacher_logp.cpu().numpy())
    return np.stack(ids, axis=1), np.stack(logps, axis=1).astype(np.float32)


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
        sample_seed: Optional[int] = None,
    ) -> None:
        self.root = Path(root)
        self.header = _make_header(
            kind=kind, dtype=dtype, topk=topk, num_classes=num_classes, temperatures=temperatures,
            num_rows=num_rows, rows_per_shard=rows_per_shard, aux_dim=aux_dim, fingerprint=fingerprint,
            sample_seed=sample_seed,
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

    def _arrays(self, logits: torch.Tensor, aux: Optional[Union[torch.Tensor, np.ndarray]], rows: int,
                first_row: int = 0) -> Dict[str, np.ndarray]:
        header = self.header
        c = int(header["num_classes"])
        if tuple(logits.shape) != (rows, c):
            raise ValueError(f"logits for this shard must have shape ({rows}, {c}), got {tuple(logits.shape)}")
        if bool(torch.isnan(logits).any()) or bool((logits == math.inf).any()):
            raise ValueError("teacher logits contain NaN or +inf; refusing to cache them")
        arrays: Dict[str, np.ndarray] = {}
        if header["kind"] == "full":
            arrays["logits.npy"] = _to_storage(logits.cpu(), header["dtype"])
        elif header["kind"] == "sampled":
            ids, logp = _sampled_arrays(logits, int(header["topk"]), header["temperatures"],
                                        int(header["sample_seed"]), first_row)
            arrays["indices.npy"] = ids.astype(_index_dtype(c))
            arrays["logp.npy"] = logp
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
        arrays = self._arrays(_as_float_tensor(logits, "logits", keep_cuda=self.header["kind"] != "full"),
                              aux, len(rows), rows.start)
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
