"""The trainer's command-line flags: torchvision's classification-reference flags plus datasets,
subset caps, KD, feature KD and the eta monitor. One definition, used by the trainer
(``vision_plugin/train.py``) and by the tools that take the trainer's flags (the teacher-cache
builder, the feature exporter), so that neither imports the entry script of the other. The data,
device/threads and progress flags are the shared groups of ``vision_plugin.cli_groups``."""

from __future__ import annotations

import argparse

from vision_plugin.cli_groups import add_data_flags, add_device_flags, add_progress_group
from vision_plugin.eta_monitor import add_eta_arguments
from vision_plugin.feature_kd import add_feature_kd_args
from vision_plugin.kd import add_kd_args

__all__ = ["LR_SCHEDULERS", "OPTIMIZERS", "get_args_parser"]

LR_SCHEDULERS = ("steplr", "cosineannealinglr")
OPTIMIZERS = ("sgd", "adamw")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """torchvision classification-reference flags plus datasets, subset caps and KD flags."""
    parser = argparse.ArgumentParser(
        description="lskd image-classification trainer (LS teachers, KD students)", add_help=add_help
    )
    parser.add_argument("--model", default="resnet18",
                        help="lskd model (lskd_cnn_t, lskd_cnn_m, lskd_cnn_s) or any torchvision classifier")
    parser.add_argument("--weights", default=None, help="torchvision weights to start from (e.g. IMAGENET1K_V1)")
    parser.add_argument("--student-init", default=None, metavar="PATH",
                        help="initialise the model from this checkpoint's weights (ignored when resuming)")
    parser.add_argument("-b", "--batch-size", default=32, type=int, help="images per process and step")
    parser.add_argument("--epochs", default=90, type=int, help="number of epochs")
    parser.add_argument("--opt", default="sgd", choices=OPTIMIZERS, help="optimizer")
    parser.add_argument("--lr", default=0.1, type=float, help="initial learning rate")
    parser.add_argument("--momentum", default=0.9, type=float, help="SGD momentum")
    parser.add_argument("--wd", "--weight-decay", default=1e-4, type=float, dest="weight_decay",
                        help="weight decay")
    parser.add_argument("--label-smoothing", default=0.0, type=float,
                        help="label smoothing alpha in [0, 1) (teachers: 0 or 0.1; Sec. 2)")
    parser.add_argument("--lr-scheduler", default="steplr", choices=LR_SCHEDULERS, help="per-epoch LR schedule")
    parser.add_argument("--lr-warmup-epochs", default=0, type=int, help="linear warm-up epochs")
    parser.add_argument("--lr-warmup-decay", default=0.01, type=float, help="warm-up start factor")
    parser.add_argument("--lr-step-size", default=30, type=int, help="steplr: decay every N epochs")
    parser.add_argument("--lr-gamma", default=0.1, type=float, help="steplr: decay factor")
    parser.add_argument("--lr-min", default=0.0, type=float, help="cosineannealinglr: final LR")
    parser.add_argument("--clip-grad-norm", default=None, type=float, help="max gradient norm (off by default)")
    parser.add_argument("--print-freq", default=10, type=int, help="progress/log update every N steps")
    parser.add_argument("--output-dir", default=".", help="where checkpoints and metrics go")
    parser.add_argument("--resume", default="", help="checkpoint to resume from (e.g. OUTPUT/checkpoint.pth)")
    parser.add_argument("--start-epoch", default=0, type=int, help="first epoch (overridden by --resume)")
    parser.add_argument("--test-only", action="store_true", help="only evaluate (weights from --resume/--student-init)")
    parser.add_argument("--sync-bn", action="store_true", help="convert BatchNorm to SyncBatchNorm under DDP")
    parser.add_argument("--amp", action="store_true", help="mixed precision: bf16 on CPU, fp16 + GradScaler on CUDA")
    parser.add_argument("--seed", default=0, type=int, help="seed for init, sampling and augmentation")
    parser.add_argument("--channels-last", action="store_true",
                        help="NHWC memory format for student and teacher (1.2-1.8x faster small CNNs on CPU)")
    parser.add_argument("--deterministic", action="store_true",
                        help="torch.use_deterministic_algorithms(True), no cudnn benchmarking")
    parser.add_argument("--extra-augment", action="store_true",
                        help="imagefolder/cub training: + random rotation and colour jitter (paper's CUB recipe)")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="skip unreadable/undecodable images (warned once per file, counted as "
                             "train_skipped_images/val_skipped_images) instead of stopping")
    parser.add_argument("--stop-after-epoch", default=None, type=int, metavar="K",
                        help="train with the schedule of --epochs but stop after K epochs (checkpoint kept, no "
                             "result.json); --resume continues on the same trajectory (lskd advise's rungs)")
    parser.add_argument("--eval-every", default=1, type=int, metavar="N",
                        help="evaluate after every N-th epoch and always after the last one (or the "
                             "--stop-after-epoch stop); 0: only after the last (default 1)")
    parser.add_argument("--aug-seed", default=None, type=int,
                        help="draw each training view from (aug seed, epoch, sample index) only, as a teacher cache "
                             "records them (set from the cache with --teacher-cache; default: global RNG per --seed)")
    add_data_flags(parser)  # the groups the cache builder and the exporter share (vision_plugin.cli_groups)
    add_device_flags(parser)
    add_progress_group(parser)
    add_kd_args(parser)
    parser.add_argument("--teacher-cache", default=None, metavar="DIR",
                        help="KD from a teacher cache built by `python -m vision_plugin.teacher_cache build` "
                             "instead of --teacher (give --teacher-ckpt too to verify it was built from that file)")
    add_feature_kd_args(parser)  # --feature-kd overhaul --feature-kd-weight (vision_plugin.feature_kd)
    add_eta_arguments(parser)
    return parser
