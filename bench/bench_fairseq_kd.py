"""Benchmark of the fairseq ``ls_kd`` criterion (issue 4): throughput and loss memory.

1. words/s of a student training step with ``ls_kd`` (a frozen live teacher; by default the
   teacher and student architectures of the ``translation-demo`` study preset, on its corpus)
   against fairseq's ``label_smoothed_cross_entropy`` for the same
   student, same batches, measured in alternating blocks in one run (so machine load drifts hit
   both alike). Prints the ratio ls_kd / LSCE, and the time per update of ``ls_kd`` reading a
   top-K teacher cache (``--teacher-cache``, issue 10; target <= 1.15x LSCE) with the cache's disk
   bytes per target token; the same from a sampled-K cache (``build --sample K``, ``--kd-topk-mode
   sample``), and each sparse target's bias against full-vocabulary KD on one batch (top-K: the
   loss itself; sampled-K: the mean of 100 draws with its standard error).
2. peak memory of the KD loss + backward at a 32k vocabulary: ``lskd_core.losses.kd_loss``
   (row-chunked, float32 per chunk) and the whole ``ls_kd`` criterion math, against the naive
   ``F.kl_div(log_softmax(s/T), log_softmax(t/T))`` path. On CUDA this reads
   ``torch.cuda.max_memory_allocated``; on CPU each variant runs in a fresh subprocess and the
   peak resident set (``ru_maxrss``) above the inputs' baseline is reported.

Usage::

    python bench/bench_fairseq_kd.py [--preset translation-demo | --preset ''] [--data DIR/bin]
        [--steps 40] [--tokens 4096 --vocab 32000]

Without ``--data`` the preset's offline En->De corpus (``--preset ''``: a 6000-pair one) is prepared
into a temporary directory (Debian trans-de-en). Absolute numbers depend on the machine; read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ARCH = ["--arch", "transformer", "--encoder-layers", "2", "--decoder-layers", "2",
        "--encoder-embed-dim", "128", "--decoder-embed-dim", "128",
        "--encoder-ffn-embed-dim", "256", "--decoder-ffn-embed-dim", "256",
        "--encoder-attention-heads", "4", "--decoder-attention-heads", "4", "--share-all-embeddings"]


# ------------------------------------------------------------------ memory ---------------------
def _memory_variant(variant: str, tokens: int, vocab: int, temperature: float, device: str) -> dict:
    """Run one loss+backward variant; returns its peak memory above the inputs (bytes)."""
    import torch
    import torch.nn.functional as F

    from fairseq_plugin.criterions.ls_kd import masked_nll_sum
    from lskd_core.losses import kd_loss, ls_kd_loss_terms

    gen = torch.Generator().manual_seed(0)
    student = (torch.randn(tokens, vocab, generator=gen) * 3).to(device).requires_grad_(True)
    teacher = (torch.randn(tokens, vocab, generator=gen) * 3).to(device)
    target = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    mask = torch.ones(tokens, dtype=torch.bool, device=device)
    student.grad = torch.zeros_like(student)  # the gradient buffer is the same for every variant
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    if variant == "naive_kl_div":
        loss = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                        log_target=True, reduction="sum") * temperature ** 2
    elif variant == "kd_loss_chunked":
        loss = kd_loss(student, teacher, temperature, mask=mask, reduction="sum")
    elif variant == "ls_kd_criterion":
        loss = ls_kd_loss_terms(student, teacher, target, temperature, beta=1.0, label_smoothing=0.1, mask=mask,
                                reduction="sum", exclude_true_class=True).loss
        masked_nll_sum(student, target, mask)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    loss.backward()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"variant": variant, "peak_bytes": int(peak), "seconds": time.perf_counter() - start,
            "logits_bytes": tokens * vocab * 4}


def memory_bench(tokens: int, vocab: int, temperature: float, device: str) -> list:
    results = []
    for variant in ("naive_kl_div", "kd_loss_chunked", "ls_kd_criterion"):
        if device.startswith("cuda"):
            results.append(_memory_variant(variant, tokens, vocab, temperature, device))
            continue
        code = (f"import json, sys; sys.path.insert(0, {str(REPO)!r}); "
                f"sys.argv = ['x']; import bench.bench_fairseq_kd as b; "
                f"print(json.dumps(b._memory_variant({variant!r}, {tokens}, {vocab}, {temperature}, 'cpu')))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


# ------------------------------------------------------------------ throughput -----------------
def _prepare_data(workdir: Path) -> Path:
    from fairseq_plugin.prepare_offline import prepare

    prepare("en-de", str(workdir / "data"), max_pairs=6000, bpe_size=4000, valid_size=200, test_size=200)
    return workdir / "data" / "bin"


def _arch_flags(args: list) -> list:
    """The model-shape flags of a preset's teacher_args / student_args (layers, dims, heads, sharing)."""
    out, i = [], 0
    while i < len(args):
        flag = args[i]
        if flag in ("--share-all-embeddings", "--share-decoder-input-output-embed"):
            out.append(flag)
        elif flag.startswith(("--encoder-", "--decoder-")) and i + 1 < len(args):
            out += [flag, args[i + 1]]
            i += 1
        i += 1
    return out


def preset_shapes(name: str) -> dict:
    """Teacher and student architectures and the data preparation of a translation study preset."""
    from lskd_core.study.config import read_preset

    preset = read_preset(name)
    if preset.get("task") != "translation":
        raise SystemExit(f"--preset {name}: not a translation preset (task = {preset.get('task')!r})")
    arch = ["--arch", preset.get("arch", "transformer")]
    return {"teacher": arch + _arch_flags(preset.get("teacher_args", [])),
            "student": arch + _arch_flags(preset.get("student_args", [])),
            "prepare_args": list(preset.get("prepare_args", [])), "max_tokens": int(preset.get("max_tokens", 4096))}


def _prepare_preset_data(workdir: Path, prepare_args: list) -> Path:
    """The corpus exactly as the preset's study prepares it (python -m fairseq_plugin.prepare_offline)."""
    cmd = [sys.executable, "-m", "fairseq_plugin.prepare_offline", "--pair", "en-de", "--out", str(workdir / "data"),
           *prepare_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return workdir / "data" / "bin"


def _make_teacher(data: Path, workdir: Path, arch: list = ARCH) -> Path:
    """A teacher checkpoint (1 update: only its cost matters here), by default of the student's architecture."""
    save = workdir / "teacher"
    cmd = [sys.executable, "-m", "fairseq_cli.train", str(data), *arch, "--cpu", "--optimizer", "adam",
           "--lr", "1e-3", "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
           "--max-tokens", "2048", "--max-update", "1", "--save-dir", str(save), "--disable-validation",
           "--no-epoch-checkpoints", "--num-workers", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return save / "checkpoint_last.pt"


def build_cache(data: Path, teacher: Path, out: Path, topk: int, temperature: float, device: str,
                sample: bool = False) -> dict:
    """A top-K (or, with ``sample``, a sampled-K) teacher cache over the training set: build time and size."""
    from fairseq_plugin.teacher_cache import build

    start = time.perf_counter()
    kind = {"sample": topk} if sample else {"topk": topk}
    summary = build(str(data), str(teacher), str(out), temperatures=(temperature,),
                    device="cuda" if device.startswith("cuda") else "cpu", **kind)
    summary["build_seconds"] = time.perf_counter() - start
    return summary


def bias_bench(criteria: dict, model, sample, draws: int = 100) -> dict:
    """KD loss of one batch (student in eval mode): full vocabulary, top-K, and the mean [± standard
    error] of ``draws`` sampled-K estimates (Anshumann et al.): the top-K bias against the sampled one."""
    import torch

    model.eval()
    with torch.no_grad():
        full = float(criteria["ls_kd_full"](model, sample)[0])
        top = float(criteria["ls_kd_topk_live"](model, sample)[0])
        sampled = torch.tensor([float(criteria["ls_kd_sampled_live"](model, sample)[0]) for _ in range(draws)],
                               dtype=torch.float64)
    se = float(sampled.std() / draws ** 0.5)
    return {"full": full, "topk": top, "topk_bias": top - full, "sampled_mean": float(sampled.mean()),
            "sampled_bias": float(sampled.mean()) - full, "sampled_se": se, "draws": draws}


def throughput_bench(data: Path, teacher: Path, steps: int, block: int, max_tokens: int, device: str,
                     cache: Path = None, topk: int = 0, arch: list = ARCH, sampled_cache: Path = None) -> dict:
    import torch
    from fairseq import options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    import fairseq_plugin  # noqa: F401  (registers ls_kd)

    def cfg(extra):
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(parser, [str(data), *arch, "--max-tokens", str(max_tokens)] + extra)
        return convert_namespace_to_omegaconf(args)

    base = cfg(["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"])
    task = tasks.setup_task(base.task)
    task.load_dataset("train")
    torch.manual_seed(1)
    model = task.build_model(base.model).to(device)
    criteria = {
        "label_smoothed_cross_entropy": task.build_criterion(base.criterion),
        "ls_kd": task.build_criterion(cfg(["--criterion", "ls_kd", "--teacher-path", str(teacher),
                                           "--kd-temperature", "2", "--label-smoothing", "0.1"]).criterion),
    }
    if cache is not None:
        criteria["ls_kd_topk_cache"] = task.build_criterion(cfg([
            "--criterion", "ls_kd", "--teacher-cache", str(cache), "--kd-topk", str(topk),
            "--kd-temperature", "2", "--label-smoothing", "0.1"]).criterion)
    if sampled_cache is not None:
        criteria["ls_kd_sampled_cache"] = task.build_criterion(cfg([
            "--criterion", "ls_kd", "--teacher-cache", str(sampled_cache), "--kd-topk", str(topk),
            "--kd-topk-mode", "sample", "--kd-temperature", "2", "--label-smoothing", "0.1"]).criterion)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    itr = task.get_batch_iterator(task.dataset("train"), max_tokens=max_tokens, seed=1).next_epoch_itr(shuffle=True)
    batches = [utils.move_to_cuda(b) if device.startswith("cuda") else b for b, _ in zip(itr, range(block))]

    def step(criterion, sample):
        model.train()
        loss, _, _ = criterion(model, sample)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for criterion in criteria.values():  # warm-up (and the teacher's lazy load) outside the timing
        step(criterion, batches[0])
    totals = {name: [0.0, 0] for name in criteria}
    done = 0
    while done < steps:
        for name, criterion in criteria.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            for sample in batches:
                step(criterion, sample)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            totals[name][0] += time.perf_counter() - start
            totals[name][1] += sum(int(s["ntokens"]) for s in batches)
        done += len(batches)
    words = {name: tokens / seconds for name, (seconds, tokens) in totals.items()}
    lsce = words["label_smoothed_cross_entropy"]
    # time per update relative to LSCE (same batches): the inverse of the words/s ratio
    time_ratio = {name: lsce / w for name, w in words.items()}
    result = {"words_per_s": words, "ratio_ls_kd_over_lsce": words["ls_kd"] / lsce,
              "time_per_update_over_lsce": time_ratio, "steps_each": done, "max_tokens": max_tokens}
    if topk > 0:  # bias of each sparse target against full KD on one batch, beta = 1
        live = ["--criterion", "ls_kd", "--teacher-path", str(teacher), "--kd-temperature", "2"]
        kinds = {"ls_kd_full": [], "ls_kd_topk_live": ["--kd-topk", str(topk)],
                 "ls_kd_sampled_live": ["--kd-topk", str(topk), "--kd-topk-mode", "sample"]}
        judges = {name: task.build_criterion(cfg(live + extra).criterion) for name, extra in kinds.items()}
        for criterion in judges.values():
            criterion.train()  # sample mode draws in training steps only
        result["bias"] = bias_bench(judges, model, batches[0])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="fairseq binarised data dir (default: prepare a small offline corpus)")
    parser.add_argument("--teacher", default=None, help="teacher checkpoint (default: a 1-update teacher of the same arch)")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per criterion")
    parser.add_argument("--block", type=int, default=5, help="steps per alternating block")
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=4096, help="rows of the memory benchmark")
    parser.add_argument("--vocab", type=int, default=32000, help="vocabulary of the memory benchmark")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: tiny ops on a shared CPU only oversubscribe)")
    parser.add_argument("--cache-topk", type=int, default=64,
                        help="K of the teacher cache benchmarked against LSCE (0 = skip the cache)")
    parser.add_argument("--preset", default="translation-demo",
                        help="a translation study preset whose corpus, teacher and student architectures and "
                             "max_tokens are measured (default: translation-demo, what `make demo-translation` "
                             "trains); '' for the built-in 2-layer 128-d shape on a 6000-pair corpus")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="fewer steps and a 1024-row memory case (make bench); ratios stay comparable")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.block, args.tokens = min(args.steps, 10), min(args.block, 5), min(args.tokens, 1024)

    if not args.device.startswith("cuda") and args.threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the memory subprocesses
        import torch

        torch.set_num_threads(args.threads)
    report = {"device": args.device, "threads": args.threads}
    if not args.skip_memory:
        mem = memory_bench(args.tokens, args.vocab, args.temperature, args.device)
        naive = next(r for r in mem if r["variant"] == "naive_kl_div")["peak_bytes"]
        print(f"KD loss + backward peak memory above inputs, {args.tokens} x {args.vocab} float32 logits "
              f"({args.tokens * args.vocab * 4 / 2**20:.0f} MiB each), device={args.device}:")
        for r in mem:
            print(f"  {r['variant']:<18} {r['peak_bytes'] / 2**20:9.1f} MiB  "
                  f"({r['peak_bytes'] / max(naive, 1):.2f} x naive)  {r['seconds']:.2f} s")
        report["memory"] = mem
    if not args.skip_throughput:
        shapes = preset_shapes(args.preset) if args.preset else None
        if shapes is not None:
            args.max_tokens = shapes["max_tokens"]
            report["preset"] = args.preset
        with tempfile.TemporaryDirectory() as tmp:
            if args.data:
                data = Path(args.data)
            else:
                data = _prepare_preset_data(Path(tmp), shapes["prepare_args"]) if shapes else _prepare_data(Path(tmp))
            teacher = (Path(args.teacher) if args.teacher
                       else _make_teacher(data, Path(tmp), shapes["teacher"] if shapes else ARCH))
            cache_dir, cache, sampled_dir, sampled = None, None, None, None
            if args.cache_topk > 0:
                cache_dir = Path(tmp) / "teacher_cache"
                cache = build_cache(data, teacher, cache_dir, args.cache_topk, 2.0, args.device)
                sampled_dir = Path(tmp) / "sampled_cache"
                sampled = build_cache(data, teacher, sampled_dir, args.cache_topk, 2.0, args.device, sample=True)
            thr = throughput_bench(data, teacher, args.steps, args.block, args.max_tokens, args.device,
                                   cache=cache_dir, topk=args.cache_topk, arch=shapes["student"] if shapes else ARCH,
                                   sampled_cache=sampled_dir)
        words = thr["words_per_s"]
        shape = f"preset {args.preset}'s teacher and student" if shapes else "teacher of the student's arch"
        print(f"student training step ({shape}), {thr['steps_each']} steps each, max-tokens {thr['max_tokens']}:")
        print(f"  label_smoothed_cross_entropy {words['label_smoothed_cross_entropy']:10.0f} words/s")
        print(f"  ls_kd (live teacher)         {words['ls_kd']:10.0f} words/s")
        print(f"  ratio ls_kd / LSCE           {thr['ratio_ls_kd_over_lsce']:10.3f}")
        if cache is not None:
            ratio = thr["time_per_update_over_lsce"]
            print(f"  ls_kd from a top-{args.cache_topk} cache {words['ls_kd_topk_cache']:10.0f} words/s")
            print(f"  time per update / LSCE: live teacher {ratio['ls_kd']:.3f}x, top-{args.cache_topk} cache "
                  f"{ratio['ls_kd_topk_cache']:.3f}x (target <= 1.15x)")
            print(f"  cache: {cache['tokens']} target tokens, {cache['bytes_on_disk'] / 2**20:.1f} MiB on disk, "
                  f"{cache['bytes_per_token']:.1f} bytes/token ({cache['dtype']}, K = {cache['topk']}, "
                  f"vocabulary {cache['num_classes']}), built in {cache['build_seconds']:.1f} s")
            thr["cache"] = cache
            k = args.cache_topk
            print(f"  ls_kd from a sampled-{k} cache {words['ls_kd_sampled_cache']:9.0f} words/s "
                  f"({ratio['ls_kd_sampled_cache']:.3f}x LSCE; {sampled['bytes_per_token']:.1f} bytes/token, "
                  f"built in {sampled['build_seconds']:.1f} s)")
            bias = thr["bias"]
            print(f"  KD loss of one batch at T = 2 (sum over tokens): full {bias['full']:.2f}; top-{k} "
                  f"{bias['topk']:.2f} (bias {bias['topk_bias']:+.2f}); sampled-{k} mean of {bias['draws']} draws "
                  f"{bias['sampled_mean']:.2f} (bias {bias['sampled_bias']:+.2f} ± {bias['sampled_se']:.2f} s.e.)")
            thr["sampled_cache"] = sampled
        report["throughput"] = thr
    print(json.dumps(report))
    return 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())
