"""Cached-teacher KD student step / plain student step, at the demo's shape and at an ImageNet-like one.

The cached step (``KDCriterion`` over a ``CachedTeacher``: the teacher's logits read from a
``lskd_core.teacher_cache`` on disk, rows in shuffled order) should cost about what the plain step
(label-smoothed cross-entropy, the same student) costs: issue 10's target is <= 1.10x. Both are
the trainer's own ``train_step`` on the same synthetic batch, timed in the same run, interleaved
round by round, by this process's CPU time (``--clock cpu``: insensitive to other jobs on a shared
machine). Shapes:

* demo: ``lskd_cnn_s``, 10 classes, 28 px, batch 128 (the demo preset's student);
* imagenet: ``resnet18``, 1000 classes, 224 px crops, batch 8, on the CPU.

With ``--profile`` (or when a shape's ratio exceeds 1.10) it prints a ``torch.profiler`` breakdown
of both steps at that shape: the operators by self CPU time, so the extra cost can be located.

    python bench/bench_cached_step_shapes.py [--quick] [--shapes demo imagenet] [--profile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_vision_kd import build_cache  # noqa: E402

from vision_plugin.engine import make_autocast, make_scaler, train_step  # noqa: E402
from vision_plugin.kd import CachedTeacher, KDCriterion  # noqa: E402
from vision_plugin.models import build_model  # noqa: E402

SHAPES: Dict[str, Dict[str, object]] = {
    "demo": {"student": "lskd_cnn_s", "classes": 10, "crop": 28, "batch": 128, "steps": 10, "rounds": 5},
    "imagenet": {"student": "resnet18", "classes": 1000, "crop": 224, "batch": 8, "steps": 3, "rounds": 5},
}
TARGET = 1.10


def _cpu_per_step(fn: Callable[[], None], steps: int) -> float:
    start = time.process_time()
    for _ in range(steps):
        fn()
    return (time.process_time() - start) / steps


def _steppers(shape: Dict[str, object], root: str, temperature: float):
    torch.manual_seed(0)
    n_classes, crop, batch = int(shape["classes"]), int(shape["crop"]), int(shape["batch"])  # type: ignore[call-overload]
    device = torch.device("cpu")
    plain_model = build_model(str(shape["student"]), n_classes)
    cached_model = build_model(str(shape["student"]), n_classes)
    cached_model.load_state_dict(plain_model.state_dict())
    control_model = build_model(str(shape["student"]), n_classes)  # a second plain student: the noise floor
    control_model.load_state_dict(plain_model.state_dict())
    images = torch.randn(batch, 3, crop, crop)
    target = torch.randint(0, n_classes, (batch,))
    autocast = make_autocast(device, False)
    rows_total = 8 * batch
    cache = build_cache(root, rows_total, n_classes, "float32", aux_dim=3 if crop <= 32 else 5)
    order = torch.randperm(rows_total, generator=torch.Generator().manual_seed(1))
    plain_crit = KDCriterion(None, label_smoothing=0.1)
    cached_crit = KDCriterion(CachedTeacher(cache, temperature, device, n_classes), temperature=temperature, beta=1.0)
    models = (plain_model, cached_model, control_model)
    opts = {m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in models}
    scalers = {m: make_scaler(device, False) for m in models}
    for m in models:
        m.train()
    cursor = [0]

    def plain() -> None:
        train_step(plain_model, plain_crit, opts[plain_model], images, target, autocast, scalers[plain_model])

    def control() -> None:
        train_step(control_model, plain_crit, opts[control_model], images, target, autocast, scalers[control_model])

    def cached() -> None:
        start = cursor[0] % rows_total
        rows = order[start:start + batch]
        cursor[0] += batch
        train_step(cached_model, cached_crit, opts[cached_model], images, target, autocast,
                   scalers[cached_model], rows=rows)

    parts = {"plain_crit": plain_crit, "cached_crit": cached_crit, "target": target, "order": order,
             "batch": batch, "classes": n_classes, "control": control}
    return plain, cached, parts


def components(name: str, quick: bool, temperature: float = 4.0) -> Dict[str, float]:
    """Seconds per call of the parts that differ between the two steps, on fixed student logits:
    the plain loss (LS cross-entropy) forward + backward, the cached KD loss forward + backward
    (cache read included), and the cache read alone."""
    shape = SHAPES[name]
    reps = 50 if quick else 200
    with tempfile.TemporaryDirectory(prefix="bench-shapes-") as root:
        _, _, parts = _steppers(shape, root, temperature)
        batch, classes = parts["batch"], parts["classes"]
        logits = torch.randn(batch, classes, requires_grad=True)
        rows = parts["order"][:batch]

        def plain_loss() -> None:
            parts["plain_crit"](logits, parts["target"]).backward()

        def cached_loss() -> None:
            parts["cached_crit"](logits, parts["target"], rows=rows).backward()

        def read() -> None:
            parts["cached_crit"].teacher.logits_at(rows)

        out: Dict[str, list] = {"plain_loss": [], "cached_loss": [], "cache_read": []}
        for fn in (plain_loss, cached_loss, read):
            fn()
        for _ in range(3):
            out["plain_loss"].append(_cpu_per_step(plain_loss, reps))
            out["cached_loss"].append(_cpu_per_step(cached_loss, reps))
            out["cache_read"].append(_cpu_per_step(read, reps))
    return {k: statistics.median(v) for k, v in out.items()}


def measure(name: str, quick: bool, temperature: float = 4.0) -> Dict[str, float]:
    """Median CPU seconds per step of the plain, the cached and a second plain student (the control:
    what two identical steps differ by in this run), interleaved round by round."""
    shape = dict(SHAPES[name])
    rounds = 3 if quick else int(shape["rounds"])  # type: ignore[call-overload]
    steps = int(shape["steps"])  # type: ignore[call-overload]
    with tempfile.TemporaryDirectory(prefix="bench-shapes-") as root:
        plain, cached, parts = _steppers(shape, root, temperature)
        modes = {"plain": plain, "cached": cached, "control": parts["control"]}
        for _ in range(8 if steps > 3 else 3):  # warm-up; the cache's one shard is checked on its first read
            for fn in modes.values():
                fn()
        times: Dict[str, list] = {k: [] for k in modes}
        for i in range(rounds):
            order = list(modes) if i % 2 == 0 else list(reversed(modes))  # no mode always goes first
            for k in order:
                times[k].append(_cpu_per_step(modes[k], steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"plain_s": med["plain"], "cached_s": med["cached"], "control_s": med["control"],
            "ratio": med["cached"] / med["plain"], "control_ratio": med["control"] / med["plain"],
            "rounds": rounds, "steps": steps}


def profile(name: str, temperature: float = 4.0, rows: int = 12) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    shape = SHAPES[name]
    with tempfile.TemporaryDirectory(prefix="bench-shapes-") as root:
        plain, cached, _ = _steppers(shape, root, temperature)
        for _ in range(3):
            plain()
            cached()
        for label, fn in (("plain", plain), ("cached", cached)):
            with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(int(shape["steps"])):  # type: ignore[call-overload]
                    fn()
            print(f"--- profile, {name} shape, {label} step ({shape['steps']} steps), by self CPU time")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--quick", action="store_true", help="3 rounds instead of 5 (make bench)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler breakdown of every shape")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.shapes:
        r = measure(name, args.quick)
        results[name] = r
        s = SHAPES[name]
        print(f"{name}: {s['student']}, {s['classes']} classes, {s['crop']} px, batch {s['batch']}, "
              f"{args.threads} thread(s): plain {1e3 * r['plain_s']:.1f} ms/step, cached {1e3 * r['cached_s']:.1f} "
              f"ms/step (median of {r['rounds']} rounds x {r['steps']} steps, CPU clock)", flush=True)
    print("ratio cached-KD step / plain step (target <= 1.10x): "
          + "; ".join(f"{name} {r['ratio']:.3f}x" for name, r in results.items())
          + "  [control, a second plain student / plain: "
          + "; ".join(f"{name} {r['control_ratio']:.3f}x" for name, r in results.items()) + "]")
    for name, r in results.items():
        if args.profile or r["ratio"] > TARGET:
            c = components(name, args.quick)
            extra = c["cached_loss"] - c["plain_loss"]
            print(f"breakdown, {name}: plain step {1e3 * r['plain_s']:.2f} ms, cached step {1e3 * r['cached_s']:.2f} ms "
                  f"(difference {1e3 * (r['cached_s'] - r['plain_s']):+.2f} ms); on fixed logits: LS cross-entropy "
                  f"fwd+bwd {1e3 * c['plain_loss']:.3f} ms, cached KD loss fwd+bwd {1e3 * c['cached_loss']:.3f} ms "
                  f"(of which the cache read {1e3 * c['cache_read']:.3f} ms): the KD loss adds {1e3 * extra:+.3f} ms "
                  f"= {100 * extra / r['plain_s']:+.1f} % of the plain step; the rest of the difference is the "
                  "student's own forward/backward, timed twice", flush=True)
            profile(name)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
