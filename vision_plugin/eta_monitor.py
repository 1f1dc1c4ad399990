"""The diffusion index eta (Eq. 1) of a training student, measured after every epoch.

``python -m vision_plugin.train ... --eta-reference FEATS.npz`` compares, after each epoch's
evaluation, the student's penultimate features on exactly the reference file's samples with the
reference's (typically the T = 1 student's validation export, ``python -m
vision_plugin.export_features``): eta per target class, its means over the targets and the share of
targets showing systematic diffusion (eta_S1 < 0 and eta_S2 > 0), as
:func:`lskd_core.diffusion.eta_over_targets` defines them. Numbers are those of ``python -m
lskd_core.eta --before FEATS.npz --after <this epoch's export>`` with the same class sets.

Cost: one extra forward pass (no gradients) over the reference's samples per epoch, on the main
process only, and the reference's features in memory (N x D float32).

Class sets: ``--eta-sets SETS.json`` (the eta CLI's ``--sets`` format and reader), else the eta
CLI's hierarchy sets (``--hierarchy``; default for Fashion-MNIST: its built-in hierarchy with
|S1| = 2, |S2| = 4, the study presets' sizes, since the CLI's 4 / 20 leave no Fashion-MNIST class
with sets), else, for other datasets without ``--eta-hierarchy``, the CLI's feature-space sets
(``--feature-sets 1,90``) ranked by the reference's centroids. The sets are fixed before training
from the reference alone, so every epoch is measured against the same sets.

The reference must hold this run's samples in this run's order: its ``meta`` (dataset, split,
class subset, sample cap and subset seed), sample count, class names, labels and feature dimension
are checked before training; a mismatch is one line naming the field and the remedy.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lskd_core.diffusion import class_stats, eta_over_targets
from lskd_core.eta import build_parser as eta_parser
from lskd_core.eta_sets import Sets, UsageError, resolve_class, select_sets
from lskd_core.features_io import FeatureFile, FeaturesFileError, load_features
from lskd_core.jsonio import file_sha256
from vision_plugin.batching import collate
from vision_plugin.datasets import build_dataset
from vision_plugin.models import find_final_linear
from vision_plugin.penultimate import penultimate_batches
from vision_plugin.train_data import num_workers, subset_seed

__all__ = ["add_eta_arguments", "RunSamples", "reference_mismatch", "eta_set_argv", "choose_sets",
           "EtaMonitor", "open_eta_monitor", "epoch_eta", "eta_scalars"]

# Fashion-MNIST's hierarchy has too few classes for the eta CLI's default |S1| = 4, |S2| = 20.
_FASHION_SIZES = (2, 4)
_FEATURE_SETS = "1,90"  # App. G.2's closest 1 % / farthest 90 %


def add_eta_arguments(parser: argparse.ArgumentParser) -> None:
    """The trainer's ``--eta-*`` flags."""
    g = parser.add_argument_group("diffusion during training (eta, Eq. 1)")
    g.add_argument("--eta-reference", default=None, metavar="FEATS.npz",
                   help="after each epoch, eta of this student against these reference features "
                        "(e.g. the T = 1 student's export_features --split val); costs one extra "
                        "forward pass over the reference's samples per epoch (main process)")
    g.add_argument("--eta-sets", default=None, metavar="SETS.json",
                   help="class sets as for `python -m lskd_core.eta --sets` (default: hierarchy "
                        "sets for fashion-mnist, feature-space sets 1,90 ranked by the reference else)")
    g.add_argument("--eta-targets", nargs="+", default=None, metavar="C",
                   help="target classes (index or name; default: every class that gets sets)")
    g.add_argument("--eta-hierarchy", default=None, metavar="H",
                   help="hierarchy of the default sets: fashion-mnist, wordnet or a parent-map JSON "
                        "(default: fashion-mnist for --dataset fashion-mnist)")
    g.add_argument("--eta-num-similar", default=None, type=int, metavar="N",
                   help="|S1| of hierarchy sets (default 2 for fashion-mnist, else the eta CLI's 4)")
    g.add_argument("--eta-num-dissimilar", default=None, type=int, metavar="N",
                   help="|S2| of hierarchy sets (default 4 for fashion-mnist, else the eta CLI's 20)")


# ---------------------------------------------------------------------------------- checks


@dataclass
class RunSamples:
    """What the run's own data is for the reference's split."""

    dataset: str
    split: str
    cap: Optional[int]
    subset_seed: int
    class_names: List[str]
    labels: np.ndarray


_REMEDY = ("export the reference from a run on this run's data (python -m vision_plugin.export_features "
           "--ckpt REF_RUN/checkpoint.pth --split val), or give this run the reference run's data flags")


def reference_mismatch(meta: Mapping[str, Any], names: Optional[List[str]], labels: np.ndarray,
                       run: RunSamples) -> Optional[str]:
    """The first field in which the reference's samples differ from the run's, as a sentence; None
    when they are the same samples in the same order."""
    if meta.get("dataset") != run.dataset:
        return f"its dataset is {meta.get('dataset')!r}, this run trains on {run.dataset!r}"
    if meta.get("classes"):
        return f"it holds only classes {meta['classes']}; eta needs every class of the split"
    if meta.get("sample_cap") != run.cap:
        return (f"its {run.split} sample cap is {meta.get('sample_cap')}, this run's is {run.cap} "
                f"(--{run.split}-samples)")
    if run.cap is not None and meta.get("subset_seed") != run.subset_seed:
        return (f"its subset seed is {meta.get('subset_seed')}, this run's is {run.subset_seed} "
                f"(--subset-seed)")
    if names is not None and names != run.class_names:
        return f"its {len(names)} class names differ from this run's {len(run.class_names)}"
    if labels.shape[0] != run.labels.shape[0]:
        return f"it holds {labels.shape[0]} samples, this run's {run.split} split {run.labels.shape[0]}"
    diff = np.flatnonzero(labels != run.labels)
    if diff.size:
        i = int(diff[0])
        return (f"its labels differ from this run's {run.split} split from sample {i} on "
                f"({int(labels[i])} vs {int(run.labels[i])}): other samples or another order")
    return None


def _split_of(meta: Mapping[str, Any], path: str) -> str:
    split = meta.get("split")
    if split not in ("train", "val"):
        raise ValueError(f"--eta-reference {path} records no split (meta 'split' is {split!r}); "
                         f"export it with python -m vision_plugin.export_features")
    return str(split)


# ---------------------------------------------------------------------------------- class sets


def eta_set_argv(args: argparse.Namespace, reference: str) -> List[str]:
    """The ``python -m lskd_core.eta`` arguments that choose this run's class sets."""
    argv = ["--before", reference, "--after", reference]
    if args.eta_sets:
        return argv + ["--sets", args.eta_sets]
    if args.eta_targets:
        argv += ["--target", *map(str, args.eta_targets)]
    hierarchy = args.eta_hierarchy or ("fashion-mnist" if args.dataset == "fashion-mnist" else None)
    if hierarchy is None:
        return argv + ["--feature-sets", _FEATURE_SETS]
    argv += ["--hierarchy", hierarchy]
    sizes = _FASHION_SIZES if hierarchy == "fashion-mnist" else (None, None)
    for flag, given, default in (("--num-similar", args.eta_num_similar, sizes[0]),
                                 ("--num-dissimilar", args.eta_num_dissimilar, sizes[1])):
        value = given if given is not None else default
        if value is not None:
            argv += [flag, str(value)]
    return argv


def choose_sets(args: argparse.Namespace, reference: str, ff: FeatureFile, num_classes: int
                ) -> Tuple[Sets, List[str]]:
    """(sets, notes on targets left out): the eta CLI's own selection on the reference's statistics
    (both sides, so which classes take part is decided by the reference alone)."""
    cli_args = eta_parser().parse_args(eta_set_argv(args, reference))
    stats = class_stats(ff.features, ff.labels, num_classes=num_classes)
    sets, notes, _ = select_sets(cli_args, stats, stats, num_classes, ff.class_names, None)
    if args.eta_sets and args.eta_targets:
        keep = [resolve_class(t, num_classes, ff.class_names, "--eta-targets class") for t in args.eta_targets]
        missing = [t for t in keep if t not in sets]
        if missing:
            raise UsageError(f"--eta-targets {missing} are not targets of --eta-sets {args.eta_sets}")
        sets = {t: sets[t] for t in keep}
    if not sets:
        raise UsageError("no target class could be given sets: " + "; ".join(notes[:3]))
    return sets, notes


# ---------------------------------------------------------------------------------- monitor


class EtaMonitor:
    """Holds the reference and its sets; :meth:`measure` runs one features pass of a model."""

    def __init__(self, reference: Dict[str, str], ff: FeatureFile, num_classes: int, sets: Sets,
                 loader: DataLoader, device: torch.device):
        self.reference = reference
        self.ref = (np.asarray(ff.features), np.asarray(ff.labels))
        self.num_classes = num_classes
        self.sets = sets
        self.loader = loader
        self.device = device

    def features(self, model: nn.Module) -> np.ndarray:
        """Penultimate features [N, D] float32 of ``model`` on the reference's samples."""
        was_training = model.training
        model.eval()
        try:
            rows = [f.float().cpu().numpy() for f, _, _ in penultimate_batches(model, self.loader, self.device)]
        finally:
            model.train(was_training)
        return np.concatenate(rows) if rows else np.zeros((0, self.ref[0].shape[1]), np.float32)

    def measure(self, model: nn.Module) -> Dict[str, Any]:
        """The epoch's eta record: reference, per-target eta, means, share, seconds spent."""
        start = time.perf_counter()
        feats = self.features(model)
        eta = eta_over_targets(self.ref, (feats, self.ref[1]), self.num_classes, self.sets)
        return {"reference": dict(self.reference), **eta, "time_s": time.perf_counter() - start}


def _load_reference(path: str) -> FeatureFile:
    try:
        return load_features(path)
    except FileNotFoundError:
        raise ValueError(f"--eta-reference {path} does not exist (give a features file from "
                         f"python -m vision_plugin.export_features)") from None
    except FeaturesFileError as exc:
        raise ValueError(f"--eta-reference: {exc} (re-export it with python -m vision_plugin.export_features)") from None


def _run_samples(args: argparse.Namespace, split: str, val_ds: Dataset, class_names: List[str]
                 ) -> Tuple[RunSamples, Dataset]:
    if split == "val":
        ds, cap = val_ds, args.val_samples
    else:  # the run's training samples without augmentation, as export_features reads them
        ds = build_dataset(args.dataset, args.data_path, "train", augment=False, crop_size=args.crop_size,
                           val_resize_size=args.val_resize_size, max_samples=args.train_samples,
                           subset_seed=subset_seed(args))
        cap = args.train_samples
    labels = np.asarray(ds.targets, dtype=np.int64)  # type: ignore[attr-defined]
    return RunSamples(args.dataset, split, cap, subset_seed(args), list(class_names), labels), ds


def open_eta_monitor(args: argparse.Namespace, val_ds: Dataset, class_names: Sequence[str], model: nn.Module,
                     device: torch.device) -> Optional[EtaMonitor]:
    """None without ``--eta-reference``; else the checked monitor. ValueError (one line) when the
    reference is missing, damaged or holds other samples, or the sets cannot be chosen. Call
    before training on every rank, so that all ranks refuse together."""
    path = getattr(args, "eta_reference", None)
    if not path:
        for flag in ("eta_sets", "eta_targets", "eta_hierarchy", "eta_num_similar", "eta_num_dissimilar"):
            if getattr(args, flag, None) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} needs --eta-reference FEATS.npz")
        return None
    ff = _load_reference(path)
    split = _split_of(ff.meta, path)
    run, ds = _run_samples(args, split, val_ds, list(class_names))
    problem = reference_mismatch(ff.meta, ff.class_names, np.asarray(ff.labels), run)
    if problem is None:
        dim = find_final_linear(model)[1].in_features
        if ff.dim != dim:
            problem = f"its features have dimension {ff.dim}, this model's penultimate layer {dim}"
    if problem is not None:
        raise ValueError(f"--eta-reference {path} does not hold this run's {split} samples: {problem}; {_REMEDY}")
    try:
        sets, _ = choose_sets(args, path, ff, len(class_names))
    except UsageError as exc:
        raise ValueError(f"eta class sets for --eta-reference {path}: {exc}") from None
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=num_workers(args),
                        pin_memory=device.type == "cuda", collate_fn=collate)
    reference = {"path": str(path), "sha256": file_sha256(path)}
    return EtaMonitor(reference, ff, len(class_names), sets, loader, device)


def epoch_eta(monitor: Optional[EtaMonitor], model: nn.Module, is_main: bool) -> Dict[str, Any]:
    """``{"eta": record}`` for the epoch's metrics line; ``{}`` without a monitor or off the main
    process (other DDP ranks skip the extra pass)."""
    if monitor is None or not is_main:
        return {}
    return {"eta": monitor.measure(model)}


def eta_scalars(record: Mapping[str, Any]) -> Dict[str, float]:
    """TensorBoard scalars of an epoch's eta record."""
    out = {}
    for key, name in (("eta_s1", "eta/S1"), ("eta_s2", "eta/S2"), ("share", "eta/share")):
        value = record.get(key)
        if value is not None:
            out[name] = float(value)
    return out
