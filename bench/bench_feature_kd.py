"""Step time of a feature-KD student (``--feature-kd overhaul`` + KD) vs. the same logit-KD student.

Both use the trainer's own ``train_step`` with a live teacher, on the same synthetic batch, in the
same run, interleaved round by round so that background load affects both alike. The feature-KD
step adds the pre-ReLU taps of both networks, the connectors (1x1 conv + BN per stage, trained
too) and the partial-L2 loss (``vision_plugin.feature_kd``, ``lskd_core.feature_kd``).

    python bench/bench_feature_kd.py                    # lskd_cnn_s <- lskd_cnn_t, 28x28, CPU
    python bench/bench_feature_kd.py --student resnet18 --teacher resnet50 --crop-size 64 --batch-size 32
    python bench/bench_feature_kd.py --student resnet18 --teacher resnet50 --crop-size 224 \\
        --batch-size 64 --device cuda --amp             # the paper's ImageNet pair on a GPU

Prints the median over rounds of seconds per step of each arm and their ratio (feature KD / logit KD,
the number comparable across machines).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vision_plugin.engine import make_autocast, make_scaler, train_step  # noqa: E402
from vision_plugin.feature_kd import setup_feature_kd  # noqa: E402
from vision_plugin.kd import KDCriterion, LiveTeacher  # noqa: E402
from vision_plugin.models import build_model  # noqa: E402

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="lskd_cnn_s")
    p.add_argument("--teacher", default="lskd_cnn_t")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--crop-size", type=int, default=28)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds")
    p.add_argument("--steps", type=int, default=10, help="steps per round and arm")
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                   help="cpu: process CPU seconds (default; robust to a shared machine), wall: elapsed")
    p.add_argument("--quick", action="store_true", help="3 rounds x 5 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 3, 5
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    device = torch.device(args.device)
    torch.manual_seed(0)
    teacher = LiveTeacher(build_model(args.teacher, args.num_classes), args.num_classes).to(device)
    images = torch.randn(args.batch_size, 3, args.crop_size, args.crop_size, device=device)
    target = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    autocast, scaler = make_autocast(device, args.amp), make_scaler(device, args.amp)

    # two identical students: one logit KD, one feature KD + KD (the same KD criterion inside)
    arms = {}
    for name in ("logit KD", "feature KD + KD"):
        torch.manual_seed(1)
        student = build_model(args.student, args.num_classes).to(device)
        criterion = KDCriterion(teacher, temperature=4.0)
        trained = student
        if name != "logit KD":
            ns = argparse.Namespace(feature_kd="overhaul", feature_kd_weight=1e-4, teacher=args.teacher,
                                    model=args.student, resume="", crop_size=args.crop_size, dataset="bench",
                                    teacher_cache=None)
            fkd = setup_feature_kd(ns, student, teacher, criterion, {}, device)
            assert fkd is not None
            trained, criterion = fkd.module, fkd.criterion
        optimizer = torch.optim.SGD(trained.parameters(), lr=0.01, momentum=0.9)
        trained.train()
        arms[name] = (trained, criterion, optimizer)

    def step(name: str) -> None:
        trained, criterion, optimizer = arms[name]
        train_step(trained, criterion, optimizer, images, target, autocast, scaler)

    for name in arms:  # warm-up
        for _ in range(2):
            step(name)
    times = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name in arms:
            _sync(device)
            start = clock()
            for _ in range(args.steps):
                step(name)
            _sync(device)
            times[name].append((clock() - start) / args.steps)
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"{args.student} <- {args.teacher}, {args.crop_size}x{args.crop_size}, batch {args.batch_size}, "
          f"{args.device}{' amp' if args.amp else ''}, threads {torch.get_num_threads()}, clock {args.clock}")
    for name, t in med.items():
        print(f"  {name:>16}: {1000 * t:8.1f} ms/step ({args.batch_size / t:7.0f} img/s)")
    print(f"  step time, feature KD + KD / logit KD: {med['feature KD + KD'] / med['logit KD']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
