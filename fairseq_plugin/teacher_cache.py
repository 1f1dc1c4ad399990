"""Translation teacher cache: run the teacher once over fairseq's binarised training set, then train
every ``ls_kd`` student (every T served, every seed) from the stored outputs.

Build (teacher in eval mode: its outputs are a function of the sentence, so there are no epochs)::

    python -m fairseq_plugin.teacher_cache build DATA/bin --teacher-path teacher.pt --out CACHE \\
        --topk 64 --cache-temperatures 1 2 3 64        # or --full (small dictionaries)

Train a student from it (the teacher is not run for training batches; validation batches, which
the cache does not cover, use the live teacher: ``--teacher-path``, or the checkpoint recorded in
the cache's ``build.json`` when it is still there with the cached sha256; else they report loss
without the KD term)::

    fairseq-train DATA/bin --criterion ls_kd --teacher-cache CACHE --kd-temperature 2 [--kd-topk 64]

Storage: :mod:`lskd_core.teacher_cache` (memory-mapped shards, raw logits or top-K raw logits with
the tail log-sum-exp per served T, so that ``p_t(T)`` equals what ``--kd-topk K`` computes live; or,
with ``--sample K``, K tokens drawn from ``p_t(T)`` per token and served T with their ``log p_t(T)``,
for ``--kd-topk K --kd-topk-mode sample``: sampled-K KD, :mod:`lskd_core.sampled_kd`).
One row per target token (EOS included), rows of sample ``i`` at
``row_offsets[i] : row_offsets[i + 1]``; ``row_offsets.npy`` sits beside the shards, its sha256 in
the fingerprint. A student asking for ``--kd-topk K`` needs a top-K cache with that K (a full cache
for ``--kd-topk 0``); a top-K cache serves the temperatures it was built for.

Fingerprint (a stale cache is refused naming the field): teacher checkpoint sha256, sha256 of the
source and target ``dict.*.txt``, sha256 of the split's binarised files, split and languages, the
row offsets, K (``topk``), the row layout and the lskd version; the header also records dtype and
temperatures.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from lskd_core import __version__ as LSKD_VERSION
from lskd_core.atomic import atomic_write_json
from lskd_core.sampled_kd import KDSamples
from lskd_core.teacher_cache import CacheMismatch, CacheWriter, TeacherCache, file_sha256

from .errors import MissingInputError, UsageError, run_cli

logger = logging.getLogger(__name__)

OFFSETS_FILE = "row_offsets.npy"
ROW_LAYOUT = "fairseq target tokens incl. EOS, by sample id"
_SHARD_BYTES = 1 << 28  # float32 logits per shard in memory while building (~256 MiB)


# ---------------------------------------------------------------------------------- identity ---
def _single_data_dir(data: str) -> str:
    paths = [p for p in str(data or "").split(os.pathsep) if p]
    if len(paths) != 1:
        raise UsageError(f"a teacher cache covers one data directory; got {data!r} (sharded data "
                         f"directories are not supported by --teacher-cache)")
    return paths[0]


def split_files(data_dir: str, split: str, src: str, tgt: str) -> List[Path]:
    """The binarised files fairseq reads for ``split`` (``train``, ``train1``, ... both directions)."""
    root = Path(data_dir)
    found = []
    for pair in (f"{src}-{tgt}", f"{tgt}-{src}"):
        k = 0
        while True:
            prefix = f"{split}{k if k else ''}.{pair}"
            names = [root / f"{prefix}.{lang}.{ext}" for lang in (src, tgt) for ext in ("bin", "idx")]
            present = [n for n in names if n.is_file()]
            if not present:
                break
            found += present
            k += 1
    if not found:
        raise MissingInputError(f"no binarised {split!r} files for {src}-{tgt} in {data_dir}: is it "
                                f"the directory fairseq-preprocess wrote (--destdir)?")
    return found


def dataset_sha256(files: Sequence[Path]) -> str:
    """One digest over the names and contents of the split's files (no paths, no mtimes)."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(f"{path.name}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def row_offsets(target_sizes: Sequence[int]) -> np.ndarray:
    """``[0, n_0, n_0 + n_1, ...]`` (int64): sample id -> its first row."""
    sizes = np.asarray(target_sizes, dtype=np.int64)
    return np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes)])


def _offsets_sha256(offsets: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(offsets, dtype="<i8").tobytes()).hexdigest()


def expected_fingerprint(task, split: str, teacher_sha256: Optional[str], topk: Optional[int],
                         offsets: np.ndarray, sample_seed: Optional[int] = None) -> Dict[str, Any]:
    """What a cache for ``task``'s ``split`` must have been built with (see the module docstring);
    a sampled cache (``sample_seed`` given) also records the mode and the seed of its draws."""
    data = _single_data_dir(task.cfg.data)
    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    dicts = {}
    for side, lang in (("src", src), ("tgt", tgt)):
        path = Path(data) / f"dict.{lang}.txt"
        if not path.is_file():
            raise MissingInputError(f"{path} not found: the data directory lacks its dictionary")
        dicts[side] = file_sha256(path)
    fingerprint = {
        "teacher_sha256": teacher_sha256,
        "src_dict_sha256": dicts["src"],
        "tgt_dict_sha256": dicts["tgt"],
        "dataset_sha256": dataset_sha256(split_files(data, split, src, tgt)),
        "split": split,
        "source_lang": src,
        "target_lang": tgt,
        "row_offsets_sha256": _offsets_sha256(offsets),
        "topk": int(topk) if topk else None,
        "row_layout": ROW_LAYOUT,
        "lskd_version": LSKD_VERSION,
    }
    if sample_seed is not None:
        fingerprint.update(topk_mode="sample", sample_seed=int(sample_seed))
    return fingerprint


def _dataset_offsets(task, split: str) -> np.ndarray:
    if split not in task.datasets:
        task.load_dataset(split)
    return row_offsets(task.dataset(split).tgt_sizes)


# ------------------------------------------------------------------------------------ reader ---
class TranslationTeacherCache:
    """Teacher logits of training batches, looked up by fairseq sample id."""

    def __init__(self, cache: TeacherCache, offsets: np.ndarray, pad: int):
        self.cache, self.offsets, self.pad = cache, offsets, pad

    def logits_for_sample(self, sample: Dict[str, Any], temperature: float, device) -> torch.Tensor:
        """Float32 logits [B, L, V] for ``sample``, softmax(z / T) = p_t(T) (padding positions hold
        the sample's first row; the loss masks them)."""
        rows, shape = self._rows_for_sample(sample)
        return self.cache.teacher_logits_at(rows, temperature).view(*shape, -1).to(device)

    def samples_for_sample(self, sample: Dict[str, Any], temperature: float, device) -> KDSamples:
        """A sampled cache's draws for ``sample``: ids, log p_t(T) and weights, each [B, L, K]."""
        rows, shape = self._rows_for_sample(sample)
        drawn = self.cache.sampled_at(rows, temperature)
        return KDSamples(*(part.view(*shape, -1).to(device) for part in drawn))

    def _rows_for_sample(self, sample: Dict[str, Any]):
        """Cache row ids [B * L] of the batch's target positions, and (B, L)."""
        target = sample["target"]
        mask = target.ne(self.pad).cpu()
        ids = sample["id"].cpu().numpy().astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.offsets) - 1):
            raise CacheMismatch(f"sample id {int(ids.max())} is outside the teacher cache "
                                f"{self.cache.root} ({len(self.offsets) - 1} samples): it covers the "
                                f"training split only")
        starts, stops = self.offsets[ids], self.offsets[ids + 1]
        lengths = mask.sum(dim=1).numpy()
        bad = np.nonzero(lengths != stops - starts)[0]
        if bad.size:
            i = int(bad[0])
            raise CacheMismatch(f"sample {int(ids[i])} has {int(lengths[i])} target tokens in this batch "
                                f"but {int(stops[i] - starts[i])} rows in the teacher cache "
                                f"{self.cache.root}: the batch is not from the cached training set")
        # One cache row per position, padding included (it reads the sample's first row; the loss
        # masks it): the result is [B, L, V] without a second dense copy.
        positions = np.arange(target.shape[1])
        if bool(mask[:, 0].all()) or not ids.size:  # right-padded targets (fairseq's default)
            rows = np.where(positions[None, :] < lengths[:, None], starts[:, None] + positions[None, :],
                            starts[:, None])
        else:  # left-padded: the tokens sit at the end of each row
            shift = positions[None, :] - (target.shape[1] - lengths)[:, None]
            rows = np.where(shift >= 0, starts[:, None] + shift, starts[:, None])
        return rows.reshape(-1), (target.shape[0], target.shape[1])


def _header_fingerprint(root: str) -> Dict[str, Any]:
    try:
        header = json.loads((Path(root) / "header.json").read_text(encoding="utf-8"))
        return dict(header.get("fingerprint") or {})
    except (OSError, ValueError, AttributeError):
        return {}  # TeacherCache.open reports the missing/damaged header with its own message


def recorded_teacher(root: str) -> Optional[str]:
    """The teacher checkpoint a cache was built from (``build.json``), if that file is still there
    with the sha256 the cache's fingerprint holds; else None. For validation batches, which the
    cache does not cover."""
    try:
        path = json.loads((Path(root) / "build.json").read_text(encoding="utf-8"))["teacher_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    expected = _header_fingerprint(root).get("teacher_sha256")
    return path if expected and file_sha256(path) == expected else None


def check_served_temperature(root: str, temperature: float) -> None:
    """Refuse at start-up a top-K cache that does not serve ``temperature`` (the full check, with
    fingerprints, runs on the first training step; an unreadable header is reported there)."""
    header = {}
    try:
        header = json.loads((Path(root) / "header.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    served = header.get("temperatures") if isinstance(header, dict) else None
    if header.get("kind") not in ("topk", "sampled") or not isinstance(served, list):
        return
    if not any(math.isclose(float(t), temperature, rel_tol=1e-12, abs_tol=0.0) for t in served):
        raise CacheMismatch(f"top-K teacher cache {root} serves temperatures = {served} but T = {temperature:g} "
                            f"was requested; rebuild it with --cache-temperatures including {temperature:g} "
                            f"(or build a --full cache, which serves every T)")


def open_for_task(root: str, task, teacher_path: Optional[str], topk: int, temperature: float,
                  split: str = "train", mode: str = "top") -> TranslationTeacherCache:
    """Open ``root`` for a student on ``task``; refuses a cache built for anything else.

    Without ``teacher_path`` the cache's teacher is trusted (the cache is the teacher); with it,
    the checkpoint's sha256 must match the one the cache was built from. ``mode="sample"`` asks
    for a sampled cache of ``topk`` draws per token (any seed: the cache's own is used).
    """
    if not os.path.isdir(root):
        raise MissingInputError(f"teacher cache {root} not found (from --teacher-cache); build it with "
                                f"python -m fairseq_plugin.teacher_cache build")
    offsets = _dataset_offsets(task, split)
    if teacher_path:
        if not os.path.isfile(teacher_path):
            raise MissingInputError(f"teacher checkpoint not found: {teacher_path} (from --teacher-path)")
        teacher_sha = file_sha256(teacher_path)
    else:
        teacher_sha = _header_fingerprint(root).get("teacher_sha256")
    seed = None
    if mode == "sample":
        recorded = _header_fingerprint(root).get("sample_seed")
        seed = int(recorded) if isinstance(recorded, int) else 0
    expected = expected_fingerprint(task, split, teacher_sha, topk, offsets, sample_seed=seed)
    kind = ("--sample %d --cache-temperatures T..." % topk if mode == "sample"
            else "--topk %d --cache-temperatures T..." % topk if topk else "--full")
    hint = (f"rebuild it: python -m fairseq_plugin.teacher_cache build {task.cfg.data} --teacher-path "
            f"CKPT --out {root} ({kind})")
    cache = TeacherCache.open(root, expected, temperatures=(temperature,), min_rows=int(offsets[-1]),
                              rebuild_hint=hint)
    vocab = len(task.target_dictionary)
    if cache.num_classes != vocab:
        raise CacheMismatch(f"teacher cache {root} has num_classes = {cache.num_classes}, the target "
                            f"dictionary has {vocab} symbols; {hint}")
    stored = Path(root) / OFFSETS_FILE
    try:
        cached_offsets = np.load(stored, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CacheMismatch(f"{stored} cannot be read ({error}); {hint}") from None
    if _offsets_sha256(cached_offsets) != expected["row_offsets_sha256"]:
        raise CacheMismatch(f"{stored} does not match its fingerprint field 'row_offsets_sha256' "
                            f"(damaged); {hint}")
    return TranslationTeacherCache(cache, offsets, task.target_dictionary.pad())


# ----------------------------------------------------------------------------------- builder ---
def _setup(data: str, teacher_path: str, unsafe: bool):
    """The translation task over ``data`` (the teacher's task settings) and the loaded teacher."""
    from fairseq import tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import open_dict

    from .safe_load import load_checkpoint_state
    from .teacher import load_teacher_model

    state = load_checkpoint_state(teacher_path, unsafe=unsafe)
    cfg = state.get("cfg")
    if state.get("args") is not None:
        cfg = convert_namespace_to_omegaconf(state["args"])
    task_cfg = copy.deepcopy(cfg.task)
    with open_dict(task_cfg):
        task_cfg.data = data
        if "eval_bleu" in task_cfg:
            task_cfg.eval_bleu = False
    task = tasks.setup_task(task_cfg)
    del state
    return task, load_teacher_model(teacher_path, task, unsafe=unsafe)


def _batches(ids: np.ndarray, sizes: np.ndarray, max_tokens: int) -> Iterator[List[int]]:
    """Sample ids grouped by length (less padding), at most ``max_tokens`` padded tokens each;
    a function of the ids alone, so a resumed build runs the same batches."""
    order = ids[np.argsort(sizes[ids], kind="stable")]
    batch: List[int] = []
    longest = 0
    for i in order.tolist():
        longest_next = max(longest, int(sizes[i]))
        if batch and longest_next * (len(batch) + 1) > max_tokens:
            yield batch
            batch, longest_next = [], int(sizes[i])
        batch.append(i)
        longest = longest_next
    if batch:
        yield batch


@torch.no_grad()
def _teacher_rows(model, dataset, ids: np.ndarray, pad: int, max_tokens: int, device) -> torch.Tensor:
    """Teacher logits of the samples ``ids`` (consecutive), their target tokens in id order."""
    from fairseq import utils

    sizes = np.maximum(dataset.src_sizes, dataset.tgt_sizes)
    per_id: Dict[int, torch.Tensor] = {}
    for batch_ids in _batches(ids, sizes, max_tokens):
        sample = utils.move_to_cuda(dataset.collater([dataset[i] for i in batch_ids]), device) \
            if device.type == "cuda" else dataset.collater([dataset[i] for i in batch_ids])
        logits = model(**sample["net_input"])[0].float().cpu()
        mask = sample["target"].ne(pad).cpu()
        for b, sample_id in enumerate(sample["id"].tolist()):
            rows = logits[b][mask[b]]
            if rows.shape[0] != int(dataset.tgt_sizes[sample_id]):
                raise RuntimeError(f"sample {sample_id}: {rows.shape[0]} target tokens, tgt_sizes says "
                                   f"{int(dataset.tgt_sizes[sample_id])}")
            per_id[sample_id] = rows
    return torch.cat([per_id[int(i)] for i in ids])


def build(data: str, teacher_path: str, out: str, *, topk: Optional[int] = None,
          temperatures: Sequence[float] = (), dtype: str = "float32", split: str = "train",
          max_tokens: int = 4096, rows_per_shard: Optional[int] = None, device: Optional[str] = None,
          unsafe: bool = False, sample: Optional[int] = None, sample_seed: int = 0) -> Dict[str, Any]:
    """Build (or resume) the cache of ``teacher_path`` over ``data``'s ``split``; returns its
    :func:`lskd_core.teacher_cache.describe` plus samples/tokens. ``topk``: the K largest logits;
    ``sample``: K tokens drawn from p_t(T) per token and T (sampled-K KD), seeded by ``sample_seed``;
    neither: all logits."""
    if topk and sample:
        raise UsageError("--topk and --sample are two kinds of cache: choose one")
    if ":" in teacher_path:
        raise UsageError("a teacher cache stores one teacher's raw logits; an ensemble's average "
                         "probabilities depend on T: cache each teacher separately or train live")
    if not os.path.isfile(teacher_path):
        raise MissingInputError(f"teacher checkpoint not found: {teacher_path} (from --teacher-path)")
    if not os.path.isdir(_single_data_dir(data)):
        raise MissingInputError(f"data directory {data} not found: pass fairseq-preprocess's --destdir")
    if int(max_tokens) < 1:
        raise UsageError(f"--max-tokens must be >= 1, got {max_tokens}")
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    task, model = _setup(data, teacher_path, unsafe)
    model.to(torch_device)
    task.load_dataset(split)
    dataset = task.dataset(split)
    offsets = _dataset_offsets(task, split)
    vocab = len(task.target_dictionary)
    if topk is not None and int(topk) >= vocab:
        raise UsageError(f"--topk {topk} is not below the vocabulary size {vocab}: use --full")
    k = int(topk or sample or 0) or None
    seed = int(sample_seed) if sample else None
    fingerprint = expected_fingerprint(task, split, file_sha256(teacher_path), k, offsets, sample_seed=seed)
    per_shard = int(rows_per_shard or max(1, _SHARD_BYTES // (4 * vocab)))
    kind = "sampled" if sample else "topk" if topk else "full"
    writer = CacheWriter(out, num_classes=vocab, num_rows=int(offsets[-1]), rows_per_shard=per_shard,
                         kind=kind, dtype=dtype, topk=k, temperatures=tuple(temperatures) if k else (),
                         fingerprint=fingerprint, sample_seed=seed)
    offsets_path = Path(out) / OFFSETS_FILE
    if not offsets_path.is_file():
        tmp = offsets_path.with_name(OFFSETS_FILE + ".tmp.npy")
        np.save(tmp, offsets, allow_pickle=False)
        os.replace(tmp, offsets_path)
    pad = task.target_dictionary.pad()
    pending = writer.pending_shards()
    for number, index in enumerate(pending, 1):
        rows = writer.shard_rows(index)
        first = int(np.searchsorted(offsets, rows.start, side="right")) - 1
        last = int(np.searchsorted(offsets, rows.stop - 1, side="right")) - 1
        block = _teacher_rows(model, dataset, np.arange(first, last + 1), pad, max_tokens, torch_device)
        lo = rows.start - int(offsets[first])
        writer.write_shard(index, block[lo:lo + len(rows)])
        logger.info("teacher cache: shard %d (%d of %d pending) written", index, number, len(pending))
    summary = writer.finalize()
    atomic_write_json(Path(out) / "build.json", {"teacher_path": os.path.abspath(teacher_path),
                                                 "data": os.path.abspath(data), "split": split})
    summary.update(samples=len(dataset), tokens=int(offsets[-1]),
                   bytes_per_token=summary["bytes_on_disk"] / max(1, int(offsets[-1])))
    return summary


# --------------------------------------------------------------------------------------- CLI ---
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fairseq_plugin.teacher_cache",
                                     description="Teacher-output cache for the ls_kd criterion.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="run the teacher once over the binarised training set")
    b.add_argument("data", help="fairseq data directory (fairseq-preprocess --destdir)")
    b.add_argument("--teacher-path", required=True, help="one fairseq teacher checkpoint")
    b.add_argument("--out", required=True, help="cache directory (resumes an interrupted build)")
    kind = b.add_mutually_exclusive_group(required=True)
    kind.add_argument("--topk", type=int, help="store the K largest logits per token (+ tail mass per T)")
    kind.add_argument("--full", action="store_true", help="store all V logits per token (small vocabularies)")
    kind.add_argument("--sample", type=int, metavar="K",
                      help="store K tokens drawn from the teacher at each served T per token (sampled-K KD, "
                           "unbiased for full KD; students use --kd-topk K --kd-topk-mode sample)")
    b.add_argument("--sample-seed", type=int, default=0, help="seed of the --sample draws (in the fingerprint)")
    b.add_argument("--cache-temperatures", type=float, nargs="+", default=[],
                   help="temperatures a top-K cache serves (its tail mass is exact at these)")
    b.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    b.add_argument("--split", default="train")
    b.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per teacher batch")
    b.add_argument("--rows-per-shard", type=int, default=None, help="target tokens per shard")
    b.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    b.add_argument("--teacher-unsafe-load", action="store_true",
                   help="torch.load(weights_only=False): EXECUTES CODE from the file; trusted files only")
    return parser


def _main(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    _main.out = args.out  # type: ignore[attr-defined]
    for flag, value in (("--topk", args.topk), ("--sample", args.sample)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.topk and not args.cache_temperatures:
        raise UsageError("--topk needs --cache-temperatures T [T ...]: the tail mass is stored per T")
    if args.sample and not args.cache_temperatures:
        raise UsageError("--sample needs --cache-temperatures T [T ...]: tokens are drawn from the teacher at each T")
    if args.sample_seed < 0:
        raise UsageError(f"--sample-seed must be >= 0, got {args.sample_seed}")
    if args.full and args.cache_temperatures:
        raise UsageError("--cache-temperatures applies to --topk caches (a full cache serves every T)")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = build(args.data, args.teacher_path, args.out, topk=args.topk,
                    temperatures=args.cache_temperatures, dtype=args.dtype, split=args.split,
                    max_tokens=args.max_tokens, rows_per_shard=args.rows_per_shard, device=args.device,
                    unsafe=args.teacher_unsafe_load, sample=args.sample, sample_seed=args.sample_seed)
    print(json.dumps(summary))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI; bad flags, missing inputs, stale caches and OS errors -> one line, exit status 2."""
    _main.out = None  # type: ignore[attr-defined]
    return run_cli(_main, argv, prog="teacher_cache", fallback_path=lambda: getattr(_main, "out", None))


if __name__ == "__main__":
    sys.exit(main())
