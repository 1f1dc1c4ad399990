"""One prepared GPU check (issue 10, item 5): run it the day a CUDA machine is lent.

    PYTHONPATH=. python3 scripts/gpu_check.py                   # the full check, < 8 min on one H200
    PYTHONPATH=. python3 scripts/gpu_check.py --skip fairseq    # when no fairseq wheel was carried
    python scripts/gpu_check.py --device cpu --smoke            # every code path, tiny sizes, CPU

Four labelled sections, then a summary block (one line per check: PASS / FAIL / SKIP + key number):

1. ``kd_loss``: lskd's ``kd_loss`` vs the naive ``T^2 * kl_div(log_softmax, log_softmax)``, forward +
   backward, at 256x1000, 4096x32000 and 8192x50000 in fp16/bf16/fp32: time ratio (CUDA events),
   extra peak memory ratio (``max_memory_allocated``) and the max abs error of loss and gradient
   against a float64 reference.
2. ``vision``: ResNet-18 <- ResNet-50 with ``--amp`` on a synthetic ImageNet-sized image folder
   (seeded noise JPEGs), an initialised ResNet-50 teacher saved in the trainer's checkpoint format,
   a teacher cache built with ``python -m vision_plugin.teacher_cache build``, then the student
   trained live and from the cache: the trainer's logged images/s of the last epoch, ratio
   cached / live.
3. ``ddp``: a 2-process torchrun student from the cache (nccl) when 2 GPUs exist, else skipped. In
   ``--device cpu`` mode the same path runs with gloo.
4. ``fairseq``: ``--criterion ls_kd`` with ``--fp16`` for 50 updates on a synthetic random-token
   corpus (``fairseq_cli.preprocess``, a tiny teacher, then the student) vs
   ``label_smoothed_cross_entropy``: words/s of each from fairseq's own log. fairseq is not on the
   GPU image: without it this check FAILS naming the remedy unless ``--skip fairseq``.

Every external step is a subprocess with a timeout; a failing step prints its name, its command and
the last lines of its output, later independent checks still run (device time is scarce), and the
exit status is 1. Only the standard library, torch, torchvision, numpy, PIL and the repo are used
(plus fairseq for check 4).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CHECKS = ("kd_loss", "vision", "ddp", "fairseq")
FAIRSEQ_REMEDY = ("fairseq is not importable: carry a fairseq wheel (see docs/benchmarks.md, 'GPU check') "
                  "or pass --skip fairseq")
TAIL_LINES = 40


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one mode; the GPU ones are chosen to finish in < 8 min (docs/benchmarks.md)."""

    kd_shapes: Tuple[Tuple[int, int], ...]
    kd_reps: int
    classes: int
    train_per_class: int
    val_per_class: int
    image_size: int
    crop_size: int
    batch_size: int
    workers: int
    epochs: int
    fs_sentences: int
    fs_vocab: int
    fs_dim: int
    fs_layers: int
    fs_max_tokens: int
    fs_teacher_updates: int
    fs_student_updates: int
    step_timeout_s: int


GPU = Sizes(kd_shapes=((256, 1000), (4096, 32000), (8192, 50000)), kd_reps=10, classes=100, train_per_class=40,
            val_per_class=2, image_size=256, crop_size=224, batch_size=128, workers=12, epochs=2,
            fs_sentences=20000, fs_vocab=8000, fs_dim=512, fs_layers=3, fs_max_tokens=8192,
            fs_teacher_updates=20, fs_student_updates=50, step_timeout_s=240)
SMOKE = Sizes(kd_shapes=((16, 10), (64, 1000)), kd_reps=3, classes=3, train_per_class=4, val_per_class=1,
              image_size=40, crop_size=32, batch_size=4, workers=0, epochs=1,
              fs_sentences=120, fs_vocab=50, fs_dim=16, fs_layers=1, fs_max_tokens=256,
              fs_teacher_updates=2, fs_student_updates=3, step_timeout_s=120)


class StepFailed(Exception):
    """An external step failed: its name, command and the tail of its output."""

    def __init__(self, step: str, cmd: Sequence[str], output: str, why: str) -> None:
        super().__init__(f"{step}: {why}")
        self.step, self.cmd, self.output, self.why = step, list(cmd), output, why


@dataclass
class Context:
    device: str
    smoke: bool
    sizes: Sizes
    work: Path
    inject: Optional[str]
    env: Dict[str, str]
    deadline: float  # time.perf_counter() by which every step must have finished (--budget-s)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


# ------------------------------------------------------------------------------------- helpers ---
def run_step(ctx: Context, step: str, cmd: Sequence[str]) -> str:
    """Run ``cmd`` (stdout+stderr merged) in the repo root; raise StepFailed on exit != 0 or timeout."""
    cmd = [str(c) for c in cmd]
    print(f"  $ {shlex.join(cmd)}", flush=True)
    # a hung step must not eat the lent machine's time: each step gets at most what the budget leaves
    timeout = max(1.0, min(ctx.sizes.step_timeout_s, ctx.deadline - time.perf_counter()))
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=ctx.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise StepFailed(step, cmd, out, f"timed out after {timeout:.0f} s (step limit or --budget-s)") from None
    if proc.returncode != 0:
        raise StepFailed(step, cmd, proc.stdout, f"exit status {proc.returncode}")
    return proc.stdout


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _fmt(x: Optional[float], spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


# ------------------------------------------------------------------------------ 1. kd_loss -------
def _naive(s, t, temperature: float):
    import torch.nn.functional as F

    return temperature**2 * F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                                     log_target=True, reduction="batchmean")


def _reference(s, t, temperature: float):
    """float64 loss and student gradient (autograd of the textbook formula in float64)."""
    import torch

    s64 = s.detach().double().requires_grad_(True)
    log_pt = torch.log_softmax(t.double() / temperature, -1)
    log_ps = torch.log_softmax(s64 / temperature, -1)
    loss = temperature**2 * (log_pt.exp() * (log_pt - log_ps)).sum() / s.shape[0]
    loss.backward()
    return float(loss.detach()), s64.grad


def _timed_fwd_bwd(fn: Callable, s, t, temperature: float, reps: int, cuda: bool) -> Tuple[float, Optional[int]]:
    """Median seconds of forward+backward, and the extra peak bytes of one call (CUDA only)."""
    import torch

    def once():
        s.grad = None
        fn(s, t, temperature).backward()

    once()  # warm-up: kernels, allocator
    times = []
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            once()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            once()
            times.append(time.perf_counter() - begin)
    peak = None
    if cuda:
        s.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        once()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    return statistics.median(times), peak


def check_kd_loss(ctx: Context) -> str:
    import torch

    from lskd_core.losses import kd_loss

    if ctx.inject == "kd_loss":
        raise RuntimeError("injected failure (--inject-failure kd_loss)")
    temperature = 4.0
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    print(f"  T = {temperature:g}, forward+backward, ratios ours / naive (lower is better), "
          f"{'CUDA events' if ctx.cuda else 'perf_counter'}, {ctx.sizes.kd_reps} reps (median)")
    print(f"  {'shape':>12} {'dtype':>5} | {'naive ms':>9} {'ours ms':>9} {'time x':>6} | {'naive MiB':>9} "
          f"{'ours MiB':>9} {'mem x':>6} | {'naive |dL|':>10} {'ours |dL|':>10} {'naive |dg|':>10} {'ours |dg|':>10}")
    worst_time, worst_mem, worst_err = 0.0, None, 0.0
    impls = {"naive": _naive, "ours": lambda s, t, temp: kd_loss(s, t, temp)}
    for rows, classes in ctx.sizes.kd_shapes:
        for name, dtype in dtypes.items():
            gen = torch.Generator(device=ctx.device).manual_seed(rows + classes)
            s = (3 * torch.randn(rows, classes, generator=gen, device=ctx.device)).to(dtype).requires_grad_(True)
            t = (3 * torch.randn(rows, classes, generator=gen, device=ctx.device)).to(dtype)
            ref_loss, ref_grad = _reference(s, t, temperature)
            res = {}
            for impl, fn in impls.items():
                sec, peak = _timed_fwd_bwd(fn, s, t, temperature, ctx.sizes.kd_reps, ctx.cuda)
                s.grad = None
                loss = fn(s, t, temperature)
                loss.backward()
                res[impl] = (sec, peak, abs(float(loss.detach()) - ref_loss),
                             float((s.grad.double() - ref_grad).abs().max()))
            del s, t, ref_grad
            if ctx.cuda:
                torch.cuda.empty_cache()
            (tn, mn, ln, gn), (to, mo, lo, go) = res["naive"], res["ours"]
            mem_ratio = mo / mn if (mo is not None and mn) else None
            worst_time = max(worst_time, to / tn)
            worst_mem = mem_ratio if worst_mem is None else max(worst_mem, mem_ratio or 0.0)
            worst_err = max(worst_err, lo)
            mib = (lambda b: _fmt(None if b is None else b / 2**20, ".1f"))
            print(f"  {rows:>6}x{classes:<5} {name:>5} | {tn * 1e3:>9.3f} {to * 1e3:>9.3f} {to / tn:>6.2f} | "
                  f"{mib(mn):>9} {mib(mo):>9} {_fmt(mem_ratio, '.2f'):>6} | {ln:>10.2e} {lo:>10.2e} "
                  f"{gn:>10.2e} {go:>10.2e}", flush=True)
    return (f"worst time ratio {worst_time:.2f}, worst mem ratio {_fmt(worst_mem, '.2f')}, "
            f"max |loss - float64| {worst_err:.2e}")


# ------------------------------------------------------------------------------ 2. vision --------
def _noise_jpeg(path: Path, size: int, seed: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)


def make_image_folder(root: Path, sizes: Sizes) -> int:
    """``root/{train,val}/cNNN/*.jpg`` of seeded noise; returns the number of training images."""
    jobs = []
    for split, per_class in (("train", sizes.train_per_class), ("val", sizes.val_per_class)):
        for c in range(sizes.classes):
            folder = root / split / f"c{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs += [(folder / f"{i}.jpg", len(jobs) + i) for i in range(per_class)]
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(lambda job: _noise_jpeg(job[0], sizes.image_size, job[1]), jobs))
    return sizes.classes * sizes.train_per_class


def save_teacher(path: Path, num_classes: int) -> None:
    """An initialised ResNet-50 in the trainer's checkpoint format (only its cost matters here)."""
    import torch

    from vision_plugin.checkpoint import save_atomic
    from vision_plugin.models import build_model

    torch.manual_seed(0)
    save_atomic({"model": build_model("resnet50", num_classes).state_dict(), "num_classes": num_classes}, path)


def _data_flags(ctx: Context, data: Path) -> List[str]:
    flags = ["--dataset", "imagefolder", "--data-path", str(data), "--workers", str(ctx.sizes.workers),
             "--no-progress", "--batch-size", str(ctx.sizes.batch_size), "--crop-size", str(ctx.sizes.crop_size),
             "--device", ctx.device]
    return flags + (["--threads", "1"] if not ctx.cuda else [])


def _student_flags(ctx: Context, data: Path, out: Path) -> List[str]:
    return [*_data_flags(ctx, data), "--model", "resnet18", "--amp", "--epochs", str(ctx.sizes.epochs),
            "--seed", "1", "--kd-temperature", "4", "--print-freq", "1000", "--output-dir", str(out)]


def last_epoch_images_per_s(out: Path) -> float:
    """The trainer's own images/s of its last epoch (metrics.jsonl)."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    epochs = [r for r in records if "epoch" in r and "event" not in r]
    if not epochs or epochs[-1].get("images_per_s") is None:
        raise RuntimeError(f"{out / 'metrics.jsonl'} has no epoch record with images_per_s")
    return float(epochs[-1]["images_per_s"])


def check_vision(ctx: Context, state: Dict[str, Path]) -> str:
    train_py = str(REPO / "vision_plugin" / "train.py")
    data, ckpt, cache = ctx.work / "images", ctx.work / "teacher.pth", ctx.work / "teacher_cache"
    begin = time.perf_counter()
    n = make_image_folder(data, ctx.sizes)
    save_teacher(ckpt, ctx.sizes.classes)
    print(f"  synthetic image folder: {ctx.sizes.classes} classes x {ctx.sizes.train_per_class} train JPEGs "
          f"({ctx.sizes.image_size}px) in {time.perf_counter() - begin:.1f} s; ResNet-50 teacher saved", flush=True)
    run_step(ctx, "vision: teacher cache build",
             [sys.executable, "-m", "vision_plugin.teacher_cache", "build", *_data_flags(ctx, data),
              "--teacher", "resnet50", "--teacher-ckpt", ckpt, "--epochs", ctx.sizes.epochs, "--seed", "0",
              "--out", cache])
    state["cache"], state["data"], state["ckpt"] = cache, data, ckpt
    live_extra = ["--kd-temperature", "-1"] if ctx.inject == "vision" else []  # a real failing trainer call
    run_step(ctx, "vision: live-teacher student",
             [sys.executable, train_py, *_student_flags(ctx, data, ctx.work / "live"), "--teacher", "resnet50",
              "--teacher-ckpt", ckpt, "--aug-seed", "0", *live_extra])
    run_step(ctx, "vision: cached-teacher student",
             [sys.executable, train_py, *_student_flags(ctx, data, ctx.work / "cached"), "--teacher-cache", cache,
              "--teacher-ckpt", ckpt])
    live, cached = last_epoch_images_per_s(ctx.work / "live"), last_epoch_images_per_s(ctx.work / "cached")
    print(f"  live teacher   {live:10.1f} images/s  (trainer's metrics.jsonl, epoch {ctx.sizes.epochs - 1})")
    print(f"  cached teacher {cached:10.1f} images/s")
    print(f"  ratio cached / live {cached / live:.2f}  ({n} training images per epoch, --amp)")
    return f"cached {cached:.1f} vs live {live:.1f} images/s, ratio cached/live {cached / live:.2f}"


# ------------------------------------------------------------------------------ 3. ddp -----------
def check_ddp(ctx: Context, state: Dict[str, Path]) -> Optional[str]:
    """A 2-process student from the cache; None = skipped."""
    import torch

    if ctx.cuda and torch.cuda.device_count() < 2:
        return None
    if "cache" not in state:
        raise RuntimeError("needs the teacher cache of check 'vision', which did not finish")
    out = ctx.work / "ddp"
    run_step(ctx, f"ddp: 2-process torchrun ({'nccl' if ctx.cuda else 'gloo'})",
             [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              str(REPO / "vision_plugin" / "train.py"), *_student_flags(ctx, state["data"], out),
              "--teacher-cache", state["cache"], "--teacher-ckpt", state["ckpt"]])
    rate = last_epoch_images_per_s(out)
    print(f"  2-process student from the cache: {rate:.1f} images/s (trainer's metrics.jsonl)")
    return f"2 processes, {rate:.1f} images/s"


# ------------------------------------------------------------------------------ 4. fairseq -------
def write_corpus(raw: Path, sizes: Sizes, seed: int = 0) -> None:
    """Random-token parallel text: the target is a fixed word mapping of the reversed source, so a
    teacher has something learnable; only throughput matters here."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mapping = rng.permutation(sizes.fs_vocab)
    raw.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", sizes.fs_sentences), ("valid", max(10, sizes.fs_sentences // 100))):
        src, tgt = [], []
        for _ in range(count):
            words = rng.integers(0, sizes.fs_vocab, rng.integers(5, 30))
            src.append(" ".join(f"w{w}" for w in words))
            tgt.append(" ".join(f"w{mapping[w]}" for w in words[::-1]))
        (raw / f"{split}.src").write_text("\n".join(src) + "\n")
        (raw / f"{split}.tgt").write_text("\n".join(tgt) + "\n")


def _fairseq_common(ctx: Context, data: Path) -> List[str]:
    s = ctx.sizes
    arch = ["--arch", "transformer", "--encoder-layers", s.fs_layers, "--decoder-layers", s.fs_layers,
            "--encoder-embed-dim", s.fs_dim, "--decoder-embed-dim", s.fs_dim,
            "--encoder-ffn-embed-dim", 4 * s.fs_dim, "--decoder-ffn-embed-dim", 4 * s.fs_dim,
            "--encoder-attention-heads", max(1, s.fs_dim // 64), "--decoder-attention-heads", max(1, s.fs_dim // 64),
            "--share-all-embeddings"]
    # fairseq's --fp16 needs CUDA; the CPU smoke mode runs the same commands in float32
    precision = ["--fp16"] if ctx.cuda else ["--cpu"]
    return [data, *arch, *precision, "--optimizer", "adam", "--lr", "5e-4", "--max-tokens", s.fs_max_tokens,
            "--seed", "1", "--log-format", "json", "--log-interval", "10", "--num-workers", "0",
            "--data-buffer-size", "0", "--disable-validation", "--no-epoch-checkpoints", "--label-smoothing", "0.1"]


def fairseq_words_per_s(log: str) -> float:
    """wps of fairseq's end-of-epoch ``| train |`` JSON record (the last one)."""
    records = [json.loads(line.split("| train | ", 1)[1]) for line in log.splitlines() if "| train | " in line]
    # fairseq 0.12 prefixes the end-of-epoch keys with the tag ("train_wps"); older ones do not
    for key in ("train_wps", "wps"):
        if records and key in records[-1]:
            return float(records[-1][key])
    raise RuntimeError("no '| train |' record with train_wps in fairseq's log")


def check_fairseq(ctx: Context) -> str:
    if importlib.util.find_spec("fairseq") is None:
        raise StepFailed("fairseq: import", [sys.executable, "-c", "import fairseq"], "", FAIRSEQ_REMEDY)
    s, root = ctx.sizes, ctx.work / "fairseq"
    write_corpus(root / "raw", s)
    run_step(ctx, "fairseq: preprocess",
             [sys.executable, "-m", "fairseq_cli.preprocess", "--source-lang", "src", "--target-lang", "tgt",
              "--trainpref", root / "raw" / "train", "--validpref", root / "raw" / "valid", "--destdir",
              root / "bin", "--joined-dictionary", "--workers", min(8, os.cpu_count() or 1)])
    common = _fairseq_common(ctx, root / "bin")
    run_step(ctx, "fairseq: teacher", [sys.executable, "-m", "fairseq_cli.train", *common,
                                       "--criterion", "label_smoothed_cross_entropy",
                                       "--max-update", s.fs_teacher_updates, "--save-dir", root / "teacher"])
    # --no-save still makes fairseq create its --save-dir (default ./checkpoints): keep it in the work dir
    student = [*common, "--max-update", s.fs_student_updates, "--no-save", "--save-dir", root / "student"]
    kd_extra = ["--kd-temperature", "-1"] if ctx.inject == "fairseq" else ["--kd-temperature", "2"]
    kd_log = run_step(ctx, "fairseq: ls_kd student",
                      [sys.executable, "-m", "fairseq_cli.train", *student, "--user-dir", REPO / "fairseq_plugin",
                       "--criterion", "ls_kd", "--teacher-path", root / "teacher" / "checkpoint_last.pt", *kd_extra])
    ce_log = run_step(ctx, "fairseq: label_smoothed_cross_entropy student",
                      [sys.executable, "-m", "fairseq_cli.train", *student,
                       "--criterion", "label_smoothed_cross_entropy"])
    kd, ce = fairseq_words_per_s(kd_log), fairseq_words_per_s(ce_log)
    flag = "--fp16" if ctx.cuda else "float32 (CPU)"
    print(f"  ls_kd                        {kd:10.0f} words/s  ({s.fs_student_updates} updates, {flag})")
    print(f"  label_smoothed_cross_entropy {ce:10.0f} words/s")
    print(f"  ratio ls_kd / lsce {kd / ce:.2f}")
    return f"ls_kd {kd:.0f} vs lsce {ce:.0f} words/s, ratio {kd / ce:.2f}"


# ------------------------------------------------------------------------------ driver -----------
def _report_failure(name: str, exc: BaseException) -> None:
    bar = "!" * 100
    print(f"\n{bar}\nFAILED: check '{name}'", file=sys.stderr)
    if isinstance(exc, StepFailed):
        print(f"step:    {exc.step} ({exc.why})\ncommand: {shlex.join(exc.cmd)}\n"
              f"last {TAIL_LINES} lines of its output:\n{_tail(exc.output) or '(no output)'}", file=sys.stderr)
    else:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(bar, file=sys.stderr, flush=True)


def run_checks(ctx: Context, selected: Sequence[str], skip: Sequence[str]) -> List[Tuple[str, str, str]]:
    """Run each selected check; returns (name, PASS/FAIL/SKIP, key line) per check."""
    titles = {"kd_loss": f"1. KD loss on {ctx.device}: kd_loss vs naive kl_div",
              "vision": "2. ResNet-18 <- ResNet-50 KD epoch, --amp, live vs cached teacher",
              "ddp": "3. 2-process torchrun student from the cache",
              "fairseq": "4. fairseq ls_kd vs label_smoothed_cross_entropy"}
    state: Dict[str, Path] = {}
    steps: Dict[str, Callable[[], Optional[str]]] = {
        "kd_loss": lambda: check_kd_loss(ctx), "vision": lambda: check_vision(ctx, state),
        "ddp": lambda: check_ddp(ctx, state), "fairseq": lambda: check_fairseq(ctx)}
    results = []
    for name in selected:
        print(f"\n== {titles[name]} ==", flush=True)
        if name in skip:
            print("  skipped: --skip")
            results.append((name, "SKIP", "--skip"))
            continue
        begin = time.perf_counter()
        if begin >= ctx.deadline:
            print("  not started: the --budget-s time is spent", file=sys.stderr)
            results.append((name, "FAIL", "not started: --budget-s spent"))
            continue
        try:
            line = steps[name]()
        except Exception as exc:  # a check's failure must not hide the others' numbers
            _report_failure(name, exc)
            results.append((name, "FAIL", str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            continue
        if line is None:
            print("  skipped: 1 GPU")
            results.append((name, "SKIP", "1 GPU"))
        else:
            results.append((name, "PASS", line))
        print(f"  ({time.perf_counter() - begin:.1f} s)", flush=True)
    return results


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: every code path in well under a minute")
    p.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS), help="run only these checks")
    p.add_argument("--skip", nargs="+", choices=CHECKS, default=[], help="report these checks as SKIP")
    p.add_argument("--inject-failure", choices=CHECKS, default=None,
                   help="make this check fail on purpose (tests the failure report)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall-time budget of all checks; a step still running then fails (default: 450, smoke 1200)")
    p.add_argument("--keep", metavar="DIR", default=None, help="work in DIR and keep it (default: a temp dir)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here; on a CPU machine run --device cpu --smoke", file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.smoke:
        print("gpu_check: --device cpu needs --smoke (the full sizes are for a GPU)", file=sys.stderr)
        return 2
    sizes = SMOKE if args.smoke else GPU
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("LSKD_FAIRSEQ_AUTOLOAD", None)  # --user-dir is passed explicitly
    if not args.device.startswith("cuda"):
        env["OMP_NUM_THREADS"] = "1"  # tiny CPU runs: extra threads only contend
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"gpu_check: torch {torch.__version__}, device {args.device} ({name}), "
          f"{torch.cuda.device_count()} CUDA device(s), {'smoke' if args.smoke else 'full'} sizes", flush=True)
    begin = time.perf_counter()
    budget = args.budget_s if args.budget_s is not None else (1200.0 if args.smoke else 450.0)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ctx = Context(args.device, args.smoke, sizes, work.resolve(), args.inject_failure, env,
                      begin + budget)
        selected = [c for c in CHECKS if c in args.only]
        results = run_checks(ctx, selected, args.skip)
    total = time.perf_counter() - begin
    print("\n== summary ==")
    for check, status, line in results:
        print(f"  {check:<8} {status:<4} {line}")
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    print(f"  total {total:.1f} s wall, {cpu:.1f} s CPU (this process and its steps)"
          f"{'  (over the 8 min budget!)' if total > 480 and not args.smoke else ''}")
    return 1 if any(status == "FAIL" for _, status, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
