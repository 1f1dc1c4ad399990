"""Benchmark: reading teacher targets from a ``lskd_core.teacher_cache`` vs the KD loss itself.

For each cache layout (full fp32 / bf16, top-K) at a vision shape (batch 256 x 1000 classes) and
a translation shape (1024 target tokens x 32000 vocabulary, top-K only) it reports, measured in
one run on the same machine:

* ``read ms``: median time of ``cache.teacher_logits_at(rows, T)`` for one batch of random rows
  (memory-mapped shards, page cache warm: the steady state of a training run);
* ``kd ms``: median time of ``kd_loss`` forward + backward on the same shape (what the step pays
  anyway); ``read / kd`` is the ratio, the cache's per-step overhead in units of the loss;
* ``B/row``: bytes on disk per cached row (sample or token), from ``describe``.

    python bench/bench_teacher_cache.py           # a few minutes on 2 busy cores
    python bench/bench_teacher_cache.py --quick   # smaller caches
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, List, Optional

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from lskd_core.losses import kd_loss  # noqa: E402
from lskd_core.teacher_cache import CacheWriter, TeacherCache, describe, make_fingerprint  # noqa: E402


def median_seconds(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up (page cache, lazy sha256 check of the shards touched)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(root: str, rows: int, classes: int, per_shard: int, **layout) -> TeacherCache:
    fingerprint = make_fingerprint(bench="teacher_cache", rows=rows, classes=classes, **layout)
    writer = CacheWriter(root, num_classes=classes, num_rows=rows, rows_per_shard=per_shard,
                         fingerprint=fingerprint, **layout)
    gen = torch.Generator().manual_seed(0)
    for i in writer.pending_shards():
        shard = writer.shard_rows(i)
        writer.write_shard(i, torch.randn(len(shard), classes, generator=gen).mul_(3.0))
    writer.finalize()
    # Every shard is hashed once up front so the timed reads are steady-state reads.
    return TeacherCache.open(root, fingerprint, verify="full")


def read_seconds(cache: TeacherCache, batches: List[np.ndarray], temperature: float, reps: int) -> float:
    it = iter(batches * 2)
    return median_seconds(lambda: cache.teacher_logits_at(next(it), temperature), reps)


def kd_seconds(batch: int, classes: int, temperature: float, reps: int) -> float:
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(batch, classes, generator=gen).mul_(3.0).requires_grad_()
    t = torch.randn(batch, classes, generator=gen).mul_(3.0)

    def step() -> None:
        kd_loss(s, t, temperature).backward()
        s.grad = None

    return median_seconds(step, reps)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller caches (fewer rows; same batch shapes)")
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions (median)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    temperature = 4.0
    vision_rows = 5000 if args.quick else 20000
    token_rows = 2048 if args.quick else 8192
    cases = [
        ("vision", vision_rows, 1000, 256, dict(kind="full", dtype="float32")),
        ("vision", vision_rows, 1000, 256, dict(kind="full", dtype="bfloat16")),
        ("vision", vision_rows, 1000, 256, dict(kind="topk", dtype="float32", topk=20, temperatures=(1.0, 4.0))),
        ("translation", token_rows, 32000, 1024,
         dict(kind="topk", dtype="bfloat16", topk=64, temperatures=(1.0, 4.0))),
    ]
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}, reps {args.reps}, T = {temperature:g}; read / kd: cache read time per "
          "batch over kd_loss forward+backward time (lower is better)")
    header = f"{'task':>11} {'layout':>22} {'batch':>10} | {'read ms':>8} {'kd ms':>8} {'read/kd':>7} | {'B/row':>8}"
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for task, rows, classes, batch, layout in cases:
        with tempfile.TemporaryDirectory(prefix="lskd-bench-cache-") as root:
            cache = build(root, rows, classes, per_shard=min(rows, 4096), **layout)
            ids = [rng.integers(0, rows, size=batch) for _ in range(args.reps + 1)]
            read = read_seconds(cache, ids, temperature, args.reps)
            kd = kd_seconds(batch, classes, temperature, args.reps)
            info = describe(root)
        name = f"{layout['kind']} {layout['dtype']}" + (f" K={layout['topk']}" if layout.get("topk") else "")
        print(f"{task:>11} {name:>22} {batch:>5}x{classes:<5}| {read * 1e3:>8.2f} {kd * 1e3:>8.2f} "
              f"{read / kd:>7.2f} | {info['bytes_per_row']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
