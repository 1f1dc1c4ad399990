"""The flag groups that ``python -m lskd_core.study`` and ``python -m lskd_core.advise`` share.

Users copy a study's command line to the advisor and back, so each shared flag is defined once,
here: the settings source (``--preset``, ``--config``, ``--out``), progress (``--no-progress``, the
one definition of every lskd command: :mod:`lskd_core.cli_groups`) and the settings group that
overrides the preset and the config file. ``tests/test_cli_flags.py`` walks every CLI's parser and
checks that these groups are identical (names, types, defaults, help).
"""

from __future__ import annotations

import argparse
from typing import Any, Dict

from lskd_core.cli_groups import add_progress_flag, group_dests
from lskd_core.study.config import add_set_argument, available_presets, parse_set_items
from lskd_core.study.tasks import task_names

__all__ = ["add_source_flags", "add_progress_flag", "add_settings", "settings_overrides", "SHARED_DESTS"]

# Settings copied into StudyConfig under their own name (the rest are combined in settings_overrides).
_DIRECT = ("task", "dataset", "data_path", "teacher_model", "student_model", "alphas", "temperatures", "seeds",
           "teacher_seed", "teacher_epochs", "student_epochs", "teacher_lr", "student_lr", "train_samples",
           "val_samples", "target_classes", "projection_classes", "kd_beta", "device", "nproc", "workers",
           "jobs", "out", "launcher")


def add_source_flags(p: argparse.ArgumentParser) -> None:
    """Where the settings come from and where the study lives."""
    p.add_argument("--preset", help=f"base settings (default demo); one of: {', '.join(available_presets())}")
    p.add_argument("--config", help="study config file (.json or .toml) with StudyConfig settings")
    p.add_argument("--out", help="study directory (default runs/<preset>); finished teachers and caches in it "
                                 "are reused")


def add_settings(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The settings group (overrides the preset and the config file); returns it."""
    g = p.add_argument_group("settings (override the preset and the config file)")
    g.add_argument("--task", choices=task_names())
    for flag in ("--dataset", "--data-path", "--teacher-model", "--student-model"):
        g.add_argument(flag)
    g.add_argument("--alphas", type=float, nargs="+")
    g.add_argument("--temperatures", type=float, nargs="+")
    g.add_argument("--seeds", type=int, help="number of student seeds (0..n-1; the advisor: the most a finalist "
                                             "gets)")
    g.add_argument("--teacher-seed", type=int)
    g.add_argument("--epochs", type=int, help="teacher and student epochs")
    g.add_argument("--teacher-epochs", type=int)
    g.add_argument("--student-epochs", type=int)
    g.add_argument("--batch-size", type=int, help="teacher and student batch size")
    g.add_argument("--lr", type=float, help="teacher and student learning rate")
    g.add_argument("--teacher-lr", type=float)
    g.add_argument("--student-lr", type=float)
    g.add_argument("--train-samples", type=int)
    g.add_argument("--val-samples", type=int)
    g.add_argument("--target-classes", type=int, nargs="+")
    g.add_argument("--projection-classes", type=int, nargs=3)
    g.add_argument("--kd-beta", type=float)
    g.add_argument("--device")
    g.add_argument("--nproc", type=int, help="processes per run (torch.distributed.run when > 1)")
    g.add_argument("--workers", type=int)
    g.add_argument("--jobs", type=int, help="runs executed at the same time (default 1)")
    g.add_argument("--no-analysis", action="store_true", help="train only; skip feature exports and analyses")
    add_set_argument(g)
    return g


def settings_overrides(ns: argparse.Namespace) -> Dict[str, Any]:
    """Flags -> StudyConfig fields (values are validated once, by StudyConfig.validate)."""
    o = {k: getattr(ns, k) for k in _DIRECT if getattr(ns, k, None) is not None}
    if ns.epochs is not None:
        o.setdefault("teacher_epochs", ns.epochs)
        o.setdefault("student_epochs", ns.epochs)
    if ns.batch_size is not None:
        o["teacher_batch_size"] = o["student_batch_size"] = ns.batch_size
    if ns.lr is not None:
        o.setdefault("teacher_lr", ns.lr)
        o.setdefault("student_lr", ns.lr)
    if ns.no_analysis:
        o["analysis"] = False
    o.update(parse_set_items(ns.set))
    return o


#: dest names of every shared flag (the parser test's list)
SHARED_DESTS = group_dests(add_source_flags) + group_dests(add_progress_flag) + group_dests(add_settings)
