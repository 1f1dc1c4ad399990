"""Export penultimate-layer features (and optionally logits) of a trained model to an .npz.

    python -m vision_plugin.export_features --model M --ckpt PATH --dataset D --data-path P \\
        --split train|val [--train-samples N --val-samples N --subset-seed S] [--classes 0 1 2] \\
        [--save-logits] --out feats.npz

The penultimate representation is the *input* of the classifier's final ``nn.Linear`` (paper
Sec. 2: logit ``x^T w_k``), captured by a forward hook on that layer, found generically
(resnet ``fc``, mobilenet/efficientnet/convnext ``classifier[-1]``, lskd models ``fc``). The file
follows docs/formats.md: ``features [N, D]``, ``labels [N]``, ``class_names``, the final layer's
``weight [K, D]`` and ``bias [K]`` (for the projection of App. F), ``meta`` (JSON) and, with
``--save-logits``, ``logits [N, K]`` float32 (for App. E/H entropy analyses).

Rows stream batch by batch into preallocated ``np.memmap`` files next to ``--out`` and are then
packaged with ``lskd_core.features_io.save_features``, so an ImageNet-size export (1.28M x 2048)
needs memory for one batch, not for the whole array. Defaults for ``--model``, ``--dataset``,
``--data-path``, ``--crop-size`` and the subset caps/seed come from the checkpoint's training
arguments, so by default the exported samples are exactly the ones the run trained/validated on.
The data flags (``--data-path`` ... ``--subset-seed``, ``--crop-size``) and the device/threads flags
(``--device``, ``-j/--workers``, ``--threads``) are the trainer's own (``vision_plugin.cli_groups``);
every other trainer flag is accepted, so a trainer command line can be reused, and named in one
``note:`` line as ignored.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from lskd_core.cli_groups import given_dests, group_dests
from lskd_core.features_io import save_features
from vision_plugin import __version__
from vision_plugin.batching import collate
from vision_plugin.checkpoint import (
    CheckpointError,
    check_fits,
    checkpoint_num_classes,
    extract_state_dict,
    load_checkpoint,
)
from vision_plugin.cli_errors import run_and_summarize
from vision_plugin.cli_groups import accept_carried_flags, add_data_flags, add_device_flags, ignored_flags
from vision_plugin.datasets import DATASETS, SPLITS, build_dataset, filter_classes
from vision_plugin.models import build_model, find_final_linear
from vision_plugin.penultimate import penultimate_batches

PROG = "python -m vision_plugin.export_features"
DATA_DESTS = group_dests(add_data_flags)


def get_args_parser() -> argparse.ArgumentParser:
    """The exporter's parser: its own flags, the shared data and device/threads groups
    (``vision_plugin.cli_groups``; a data flag not given defaults to the checkpoint's), and every
    other trainer flag accepted (hidden, ignored with a note) so that a trainer command line can be
    copied here."""
    from vision_plugin.train_args import get_args_parser as trainer_parser

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog="Data flags not given default to the checkpoint's training arguments; "
                                       "trainer flags that an export does not use are accepted and ignored.")
    p.add_argument("--ckpt", required=True, help="checkpoint (ours, torchvision reference, or state dict)")
    p.add_argument("--model", default=None, help="architecture (default: the checkpoint's --model)")
    p.add_argument("--split", default="val", choices=SPLITS, help="train or val (no augmentation either way)")
    p.add_argument("--seed", default=None, type=int,
                   help="subset seed when --subset-seed is not given, as for the trainer (default: the "
                        "checkpoint's --subset-seed, else its --seed, else 0)")
    p.add_argument("--classes", nargs="+", type=int, default=None, help="keep only these class ids")
    p.add_argument("--save-logits", action="store_true", help="also store logits [N, K] (float32)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                   help="features dtype (float16 halves ImageNet-size files)")
    p.add_argument("-b", "--batch-size", default=256, type=int, help="images per step (default 256)")
    p.add_argument("--out", required=True, help="output .npz")
    add_data_flags(p)
    add_device_flags(p)
    accept_carried_flags(p, trainer_parser(add_help=False))
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse the command line; the data flags it does not give are None (then the checkpoint's)."""
    parser = get_args_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    given = given_dests(parser, argv)
    for dest in DATA_DESTS:
        if dest not in given:
            setattr(args, dest, None)
    return args


def _pick(explicit, train_args: Dict[str, Any], key: str, default=None):
    if explicit is not None:
        return explicit
    value = train_args.get(key)
    return default if value is None else value


def resolve_args(args: argparse.Namespace, ckpt: Any) -> argparse.Namespace:
    """Fill unset flags from the checkpoint's training arguments (same samples as training)."""
    train_args = ckpt.get("args") if isinstance(ckpt, dict) else None
    if isinstance(train_args, argparse.Namespace):  # torchvision reference checkpoints
        train_args = vars(train_args)
    train_args = train_args if isinstance(train_args, dict) else {}
    out = argparse.Namespace(**vars(args))
    out.model = _pick(args.model, train_args, "model")
    out.dataset = _pick(args.dataset, train_args, "dataset")
    out.data_path = _pick(args.data_path, train_args, "data_path")
    out.train_samples = _pick(args.train_samples, train_args, "train_samples")
    out.val_samples = _pick(args.val_samples, train_args, "val_samples")
    out.crop_size = _pick(args.crop_size, train_args, "crop_size")
    out.val_resize_size = _pick(args.val_resize_size, train_args, "val_resize_size")
    seed = args.subset_seed if args.subset_seed is not None else args.seed
    if seed is None:
        seed = train_args.get("subset_seed")
    if seed is None:
        seed = train_args.get("seed", 0)
    out.seed = int(seed or 0)
    if not out.model:
        raise ValueError(f"--model is required: checkpoint {args.ckpt} does not record its architecture")
    if not out.dataset:
        raise ValueError(f"--dataset is required: checkpoint {args.ckpt} does not record its dataset")
    if out.dataset not in DATASETS:
        raise ValueError(f"--dataset must be one of {DATASETS}, got {out.dataset!r}")
    for flag in ("train_samples", "val_samples", "batch_size"):
        value = getattr(out, flag)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive integer, got {value!r}")
    return out


def export(args: argparse.Namespace) -> Dict[str, Any]:
    """Write the features file; returns a small summary (path, rows, dim)."""
    ckpt = load_checkpoint(args.ckpt)
    state = extract_state_dict(ckpt, args.ckpt)
    args = resolve_args(args, ckpt)
    if args.batch_size <= 0:
        raise ValueError(f"--batch-size must be a positive integer, got {args.batch_size!r}")
    cap = args.train_samples if args.split == "train" else args.val_samples
    dataset = build_dataset(args.dataset, args.data_path, args.split, augment=False, crop_size=args.crop_size,
                            val_resize_size=args.val_resize_size, max_samples=cap, subset_seed=args.seed)
    class_names = list(dataset.classes)
    num_classes = len(class_names)
    if args.classes:
        dataset = filter_classes(dataset, args.classes)
    if len(dataset) == 0:
        raise ValueError(f"no samples to export (split {args.split}, classes {args.classes})")

    model = build_model(args.model, num_classes=num_classes)
    found = checkpoint_num_classes(ckpt, state, model)
    if found is not None and found != num_classes:
        raise CheckpointError(f"--ckpt {args.ckpt} predicts {found} classes but dataset {args.dataset} has "
                              f"{num_classes} classes")
    check_fits(model, state, args.model, args.ckpt, what="--ckpt")
    model.load_state_dict(state)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model.to(device).eval()
    layer_name, layer = find_final_linear(model)

    workers = args.workers if args.workers is not None else (0 if args.dataset == "fashion-mnist" else 8)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda", collate_fn=collate)
    n = len(dataset)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Scratch memmaps live beside the output (same filesystem, usually roomier than /tmp).
    scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        labels = np.empty(n, dtype=np.int64)
        feats_mm = logits_mm = None
        row = 0
        for feats, logits, target in penultimate_batches(model, loader, device):
            b = feats.shape[0]
            if feats_mm is None:
                feats_mm = np.lib.format.open_memmap(scratch / "features.npy", mode="w+",
                                                     dtype=np.dtype(args.dtype), shape=(n, feats.shape[1]))
                if args.save_logits:
                    logits_mm = np.lib.format.open_memmap(scratch / "logits.npy", mode="w+",
                                                          dtype=np.float32, shape=(n, logits.shape[1]))
            feats_mm[row:row + b] = feats.float().cpu().numpy().astype(args.dtype, copy=False)
            if logits_mm is not None:
                logits_mm[row:row + b] = logits.float().cpu().numpy()
            labels[row:row + b] = target.numpy()
            row += b
        if row != n:
            raise RuntimeError(f"exported {row} rows, expected {n}")
        feats_mm.flush()
        if logits_mm is not None:
            logits_mm.flush()
        train_args = ckpt.get("args") if isinstance(ckpt, dict) and isinstance(ckpt.get("args"), dict) else {}
        meta = {
            "model": args.model,
            "checkpoint": str(args.ckpt),
            "epoch": ckpt.get("epoch") if isinstance(ckpt, dict) else None,
            "dataset": args.dataset,
            "split": args.split,
            "num_samples": n,
            "subset_seed": args.seed,
            "sample_cap": cap,
            "classes": args.classes,
            "feature_layer": layer_name,
            "teacher": train_args.get("teacher"),
            "temperature": train_args.get("kd_temperature") if train_args.get("teacher") else None,
            "kd_beta": train_args.get("kd_beta") if train_args.get("teacher") else None,
            "label_smoothing": train_args.get("label_smoothing"),
            "seed": train_args.get("seed"),
            "lskd_version": __version__,
        }
        save_features(
            out, feats_mm, labels, class_names=class_names,
            weight=layer.weight.detach().float().cpu().numpy(),
            bias=None if layer.bias is None else layer.bias.detach().float().cpu().numpy(),
            meta=meta, logits=logits_mm,
        )
        dim = int(feats_mm.shape[1])
        del feats_mm, logits_mm
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"out": str(out), "rows": n, "dim": dim, "feature_layer": layer_name}


def main(argv: Optional[List[str]] = None) -> int:
    """Run the export; bad input and user-caused OS errors -> one ``error:`` line, exit 2
    (``vision_plugin.cli_errors``); genuine bugs keep their traceback."""
    args = parse_args(argv)
    ignored = ignored_flags(args)
    if ignored:
        print(f"note: {', '.join(ignored)}: trainer flag(s) that an export does not use; ignored", file=sys.stderr)
    return run_and_summarize(PROG, lambda: export(args),
                             "wrote {rows} x {dim} features ({feature_layer} input) to {out}")


if __name__ == "__main__":
    sys.exit(main())
