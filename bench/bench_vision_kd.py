"""Images/s of a KD student step (live teacher, and teacher cache) vs. the same student's plain step.

All steps use the trainer's own ``train_step`` and ``KDCriterion`` (vision_plugin), measured in the
same run on the same synthetic batch, interleaved round by round so that background load affects
all alike. Also times the teacher's forward pass alone, to give its share of the KD step. The
cached KD step reads the teacher's logits from a ``lskd_core.teacher_cache`` on disk (memory-mapped
shards, rows in shuffled order as a sampler gives them) instead of running the teacher; the script
prints its time relative to the plain step (issue 10's target: <= 1.10x) and the cache's disk bytes
per sample (per epoch recorded).

    python bench/bench_vision_kd.py                      # lskd_cnn_s <- lskd_cnn_t, 28x28, CPU
    python bench/bench_vision_kd.py --student resnet18 --teacher resnet50 --crop-size 224 \\
        --batch-size 64 --device cuda --amp               # the paper's ImageNet pair on a GPU

Prints absolute images/s and the ratios that are comparable across machines:
KD/plain throughput, and teacher forward time / KD step time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lskd_core.teacher_cache import CacheWriter, TeacherCache, describe, make_fingerprint  # noqa: E402
from vision_plugin.engine import make_autocast, make_scaler, train_step  # noqa: E402
from vision_plugin.kd import CachedTeacher, KDCriterion, LiveTeacher  # noqa: E402
from vision_plugin.models import build_model, count_parameters  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def _time_block(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of ``fn`` averaged over ``steps`` calls (``--clock``)."""
    _sync(device)
    start = _clock()
    for _ in range(steps):
        fn()
    _sync(device)
    return (_clock() - start) / steps


def build_cache(root: str, num_rows: int, num_classes: int, dtype: str, aux_dim: int) -> TeacherCache:
    """A cache of ``num_rows`` random teacher logits (timing only: values do not matter)."""
    fingerprint = make_fingerprint(purpose="bench_vision_kd")
    writer = CacheWriter(root, num_classes=num_classes, num_rows=num_rows, rows_per_shard=min(num_rows, 8192),
                         dtype=dtype, aux_dim=aux_dim, fingerprint=fingerprint)
    gen = torch.Generator().manual_seed(0)
    for index in writer.pending_shards():
        rows = len(writer.shard_rows(index))
        writer.write_shard(index, 3 * torch.randn(rows, num_classes, generator=gen),
                           aux=torch.zeros(rows, aux_dim))
    writer.finalize()
    return TeacherCache.open(root, fingerprint)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="lskd_cnn_s")
    p.add_argument("--teacher", default="lskd_cnn_t")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--crop-size", type=int, default=28)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    p.add_argument("--steps", type=int, default=10, help="steps per round and mode")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CPU / fp16 + GradScaler on CUDA")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format (as the trainer's flag)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="fewer rounds/steps (bench/run_all.py --quick)")
    p.add_argument("--cache-dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--cache-batches", type=int, default=50, help="batches of rows in the benchmark cache")
    p.add_argument("--clock", default="auto", choices=("auto", "wall", "cpu"),
                   help="wall: elapsed time; cpu: this process's CPU time (all its threads), insensitive to "
                        "other jobs on a shared machine; auto: cpu on a CPU device, wall on CUDA")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 3, 5
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    global _clock
    clock = args.clock if args.clock != "auto" else ("wall" if device.type == "cuda" else "cpu")
    _clock = CLOCKS[clock]
    torch.manual_seed(0)

    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    student_plain = build_model(args.student, args.num_classes).to(device, memory_format=fmt)
    student_kd = build_model(args.student, args.num_classes).to(device, memory_format=fmt)
    student_kd.load_state_dict(student_plain.state_dict())
    teacher = LiveTeacher(build_model(args.teacher, args.num_classes), args.num_classes).to(device)
    teacher.module.to(memory_format=fmt)
    images = torch.randn(args.batch_size, 3, args.crop_size, args.crop_size, device=device)
    images = images.contiguous(memory_format=fmt)
    target = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    autocast = make_autocast(device, args.amp)

    def stepper(model, criterion):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scaler = make_scaler(device, args.amp)
        model.train()
        return lambda: train_step(model, criterion, opt, images, target, autocast, scaler)

    plain = stepper(student_plain, KDCriterion(None, label_smoothing=0.1))
    kd = stepper(student_kd, KDCriterion(teacher, temperature=args.temperature, beta=1.0))

    scratch = tempfile.TemporaryDirectory(prefix="bench-cache-")
    num_rows = args.cache_batches * args.batch_size
    cache = build_cache(scratch.name, num_rows, args.num_classes, args.cache_dtype,
                        aux_dim=3 if args.crop_size <= 32 else 5)
    disk = describe(scratch.name)
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(1))
    student_cached = build_model(args.student, args.num_classes).to(device, memory_format=fmt)
    student_cached.load_state_dict(student_plain.state_dict())
    cached_criterion = KDCriterion(CachedTeacher(cache, args.temperature, device, args.num_classes),
                                   temperature=args.temperature, beta=1.0)
    opt_cached = torch.optim.SGD(student_cached.parameters(), lr=0.01, momentum=0.9)
    scaler_cached = make_scaler(device, args.amp)
    student_cached.train()
    cursor = [0]

    def cached():
        start = cursor[0] % num_rows
        rows = order[start:start + args.batch_size]
        cursor[0] += args.batch_size
        train_step(student_cached, cached_criterion, opt_cached, images, target, autocast, scaler_cached, rows=rows)

    def teacher_only():
        with autocast():
            teacher.logits(images)

    for fn in (plain, kd, teacher_only):  # warm-up: allocator, kernels, autocast caches
        _time_block(fn, 2, device)
    for _ in range(args.cache_batches):  # first touch of every shard (lazy sha256 check on open)
        cached()
    times = {"plain": [], "kd": [], "teacher": [], "cached": []}
    for _ in range(args.rounds):
        times["plain"].append(_time_block(plain, args.steps, device))
        times["kd"].append(_time_block(kd, args.steps, device))
        times["teacher"].append(_time_block(teacher_only, args.steps, device))
        times["cached"].append(_time_block(cached, args.steps, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: args.batch_size / v for k, v in med.items()}

    flags = (" amp" if args.amp else "") + (" channels_last" if args.channels_last else "")
    print(f"device {device}{flags}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"{args.crop_size}x{args.crop_size}, {args.rounds} rounds x {args.steps} steps (median per step, "
          f"{clock} clock)")
    print(f"student {args.student} ({count_parameters(student_plain) / 1e6:.3f} M params), "
          f"teacher {args.teacher} ({count_parameters(teacher.module) / 1e6:.3f} M params)")
    print(f"plain student step (LS cross-entropy): {ips['plain']:9.1f} images/s  ({1e3 * med['plain']:.2f} ms/step)")
    print(f"KD student step (teacher + KD loss):   {ips['kd']:9.1f} images/s  ({1e3 * med['kd']:.2f} ms/step)")
    print(f"teacher forward alone (no_grad):       {ips['teacher']:9.1f} images/s  "
          f"({1e3 * med['teacher']:.2f} ms/step)")
    print(f"ratio KD / plain throughput:  {ips['kd'] / ips['plain']:.3f}  "
          f"(KD step costs {med['kd'] / med['plain']:.2f}x)")
    print(f"cached KD step (teacher cache):        {ips['cached']:9.1f} images/s  "
          f"({1e3 * med['cached']:.2f} ms/step)")
    print(f"teacher share of the KD step: {100 * med['teacher'] / med['kd']:.1f} %")
    print(f"ratio cached-KD step / plain step time: {med['cached'] / med['plain']:.3f}x  (target <= 1.10x); "
          f"live KD step / cached KD step: {med['kd'] / med['cached']:.2f}x")
    print(f"cache on disk ({args.cache_dtype}, {args.num_classes} classes, full logits + aux): "
          f"{disk['bytes_per_row']:.1f} bytes per sample per recorded epoch")
    rest = med["kd"] - med["plain"] - med["teacher"]
    print(f"KD overhead beyond the teacher forward: {100 * rest / med['kd']:+.1f} % of the KD step "
          f"(loss terms; noise can make it negative)")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
