"""Benchmark: lskd's chunked ``kd_loss`` vs the naive one-liner, forward + backward.

Baseline (measured in the same run, on the same inputs):

    F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T

Reported per shape: median wall time of forward+backward (ratio ours / naive), extra peak
memory of forward+backward over the inputs (each implementation in its own fresh subprocess, so
the two never share allocator state; ratio ours / naive), and each loss's relative error against
a float64 reference computed from the same inputs.

Peak memory is the Linux peak-RSS mark (``VmHWM``), reset with ``/proc/self/clear_refs`` right
before the measured call; without that file it falls back to ``ru_maxrss`` deltas (marked ``~``),
which can only under-estimate.

    python bench/bench_kd_loss.py            # full sizes (a few minutes on 2 cores)
    python bench/bench_kd_loss.py --quick    # smaller sizes (well under a minute)
    python bench/bench_kd_loss.py --memcheck # also 8192 x 32000 (ours only): extra peak / logits size
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import List, Tuple

import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from lskd_core.losses import kd_loss  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def naive_kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean") * (
        temperature * temperature
    )


def ours_kd(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    return kd_loss(s, t, temperature)


IMPLS = {"naive": naive_kd, "ours": ours_kd}


def make_inputs(rows: int, classes: int, dtype: torch.dtype, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(rows, classes, generator=g).mul_(3.0).to(dtype)
    t = torch.randn(rows, classes, generator=g).mul_(3.0).to(dtype)
    return s.requires_grad_(), t


def reference_kd(s: torch.Tensor, t: torch.Tensor, temperature: float, block: int = 128) -> float:
    """float64 T^2 KL, row block by row block (the full float64 copies would not fit comfortably)."""
    total = 0.0
    for start in range(0, s.shape[0], block):
        a = s[start : start + block].detach().double() / temperature
        b = t[start : start + block].double() / temperature
        log_ps, log_pt = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        total += float((log_pt.exp() * (log_pt - log_ps)).sum())
    return total / s.shape[0] * temperature**2


def step(fn, s, t, temperature) -> float:
    loss = fn(s, t, temperature)
    loss.backward()
    s.grad = None
    return float(loss.detach().float())


def time_pair(s, t, temperature, reps: int) -> Tuple[float, float, float, float]:
    """Median seconds of forward+backward for naive and ours, interleaved so that drifts in
    machine load hit both alike. Also returns each implementation's loss value."""
    values = {name: step(fn, s, t, temperature) for name, fn in IMPLS.items()}  # warm-up
    times = {name: [] for name in IMPLS}
    for _ in range(reps):
        for name, fn in IMPLS.items():
            start = time.perf_counter()
            step(fn, s, t, temperature)
            times[name].append(time.perf_counter() - start)
    return (statistics.median(times["naive"]), statistics.median(times["ours"]), values["naive"], values["ours"])


# ----------------------------------------------------------------------------------------------
# memory, in a child process per (implementation, shape)
# ----------------------------------------------------------------------------------------------
def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def child_main(impl: str, rows: int, classes: int, dtype_name: str, temperature: float, threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)
    s, t = make_inputs(rows, classes, DTYPES[dtype_name])
    step(IMPLS[impl], s[:4].detach().requires_grad_(), t[:4], temperature)  # load kernels on a slice
    exact = True
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak-RSS mark to the current RSS
        base = _status_bytes("VmRSS")
    except OSError:
        exact = False
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step(IMPLS[impl], s, t, temperature)
    peak = _status_bytes("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"extra_bytes": max(0, peak - base), "exact": exact}))


def measure_extra_peak(impl: str, rows: int, classes: int, dtype_name: str, temperature: float, threads: int):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, str(rows), str(classes), dtype_name,
           str(temperature), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed ({impl}, {rows}x{classes} {dtype_name}):\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["extra_bytes"], result["exact"]


# ----------------------------------------------------------------------------------------------
def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller shapes (1024 x 32000 instead of 4096 x 32000)")
    parser.add_argument("--memcheck", action="store_true", help="also measure ours at 8192 x 32000 (fp32, bf16)")
    parser.add_argument("--reps", type=int, default=2,
                        help="timed repetitions per implementation on the big shapes (median; small shapes use 100)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--child", nargs=5, metavar=("IMPL", "ROWS", "CLASSES", "DTYPE", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        impl, rows, classes, dtype_name, temperature = args.child
        child_main(impl, int(rows), int(classes), dtype_name, float(temperature), args.threads)
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    big = 1024 if args.quick else 4096
    cases = [
        (256, 1000, "fp32", 4.0),
        (256, 1000, "fp32", 1000.0),
        (big, 32000, "fp32", 4.0),
        (big, 32000, "bf16", 4.0),
    ]
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}, reps {args.reps}; ratios are ours / naive (lower is better)")
    header = (f"{'shape':>12} {'dtype':>5} {'T':>6} | {'naive ms':>9} {'ours ms':>9} {'time x':>6} | "
              f"{'naive MiB':>9} {'ours MiB':>9} {'mem x':>6} | {'naive err':>9} {'ours err':>9}")
    print(header)
    print("-" * len(header))
    time_ratios = []
    for rows, classes, dtype_name, temperature in cases:
        s, t = make_inputs(rows, classes, DTYPES[dtype_name])
        reps = args.reps if rows * classes > 10**7 else max(args.reps, 100)
        t_naive, t_ours, v_naive, v_ours = time_pair(s, t, temperature, reps)
        ref = reference_kd(s, t, temperature)
        del s, t
        mem_naive, exact_n = measure_extra_peak("naive", rows, classes, dtype_name, temperature, args.threads)
        mem_ours, exact_o = measure_extra_peak("ours", rows, classes, dtype_name, temperature, args.threads)
        mark = "" if (exact_n and exact_o) else "~"
        time_ratios.append((t_ours / t_naive, f"{rows}x{classes} {dtype_name} T={temperature:g}"))
        print(f"{rows:>6}x{classes:<5} {dtype_name:>5} {temperature:>6g} | {t_naive * 1e3:>9.1f} {t_ours * 1e3:>9.1f} "
              f"{t_ours / t_naive:>6.2f} | {mem_naive / 2**20:>9.1f} {mem_ours / 2**20:>9.1f} "
              f"{mark}{(mem_ours / mem_naive) if mem_naive else float('nan'):>5.2f} | "
              f"{abs(v_naive - ref) / abs(ref):>9.1e} {abs(v_ours - ref) / abs(ref):>9.1e}", flush=True)

    worst, where = max(time_ratios)
    print(f"# time ratio ours / naive per shape: "
          f"{', '.join(f'{label}: {ratio:.2f}' for ratio, label in time_ratios)}; "
          f"worst {worst:.2f} ({where}; target <= 1.00)")

    if args.memcheck:
        print("\n# extra peak of ours (forward+backward) at translation size, in logits-sized buffers "
              "(one buffer = the gradient; the rest is chunk temporaries)")
        for dtype_name in ("fp32", "bf16"):
            extra, exact = measure_extra_peak("ours", 8192, 32000, dtype_name, 4.0, args.threads)
            buffer = 8192 * 32000 * DTYPES[dtype_name].itemsize
            print(f"  8192x32000 {dtype_name}: extra peak {extra / 2**20:.0f} MiB = "
                  f"{'' if exact else '~'}{extra / buffer:.2f} x logits ({buffer / 2**20:.0f} MiB)", flush=True)


if __name__ == "__main__":
    main()
