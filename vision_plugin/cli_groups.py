"""The flag groups that the vision commands share, each defined once (issue 22 item 1).

``python -m vision_plugin.train``, ``python -m vision_plugin.teacher_cache build`` and
``python -m vision_plugin.export_features`` take the same data flags (which samples, at which size),
the same device/threads flags and, where they draw a bar, the same progress flag
(:func:`lskd_core.cli_groups.add_progress_flag`, shared with the study and the advisor). The teacher
flags (``--teacher``, ``--teacher-ckpt``, ``--teacher-weights``) are defined once with the other KD
flags (:func:`vision_plugin.kd.add_kd_args`); the cache builder reuses the trainer's.

A trainer flag that a command does not use is still accepted, so that a trainer command line can be
copied to it: :func:`accept_carried_flags` adds it (hidden from ``--help``) and
:func:`ignored_flags` names the ones given, for the command's one-line note. A group flag that a
command does not use (the cache builder's ``--val-samples``) is added the same way. The output
flags are not one group: a trainer's ``--output-dir`` (a run directory), the builder's ``--out`` (a
cache directory) and the exporter's ``--out`` (an ``.npz`` file) are different things.
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List, Sequence, Tuple

import torch

from lskd_core.cli_groups import add_progress_flag, group_dests
from vision_plugin.datasets import DATASETS

__all__ = ["CARRIED", "GROUPS", "TEACHER_DESTS", "accept_carried_flags", "add_data_flags", "add_device_flags",
           "add_progress_flag", "add_progress_group", "carried_value", "ignored_flags", "shared_dests"]

#: dest prefix of accepted flags that the command does not use
CARRIED = "carried__"

#: the teacher flags (defined in vision_plugin.kd.add_kd_args)
TEACHER_DESTS = ("teacher", "teacher_ckpt", "teacher_weights")

_CKPT = "export_features: default the checkpoint's"


def add_data_flags(p: argparse.ArgumentParser, unused: Sequence[str] = ()) -> None:
    """Which samples, at which size. ``unused``: dests the command accepts but ignores."""
    g = _Group(p, "data", unused)
    g.add("--data-path", default=None, help=f"dataset root (fashion-mnist: default Debian location; {_CKPT})")
    g.add("--dataset", default="imagefolder", choices=DATASETS,
          help=f"dataset layout (default imagefolder; {_CKPT})")
    g.add("--train-samples", default=None, type=int, help=f"stratified seeded cap on training samples ({_CKPT})")
    g.add("--val-samples", default=None, type=int, help=f"stratified seeded cap on validation samples ({_CKPT})")
    g.add("--subset-seed", default=None, type=int, help=f"seed of the subset caps (default: --seed; {_CKPT})")
    g.add("--crop-size", default=None, type=int,
          help=f"input size (default: 28 for fashion-mnist, 224 otherwise; {_CKPT})")
    g.add("--val-resize-size", default=None, type=int,
          help=f"validation resize before the centre crop (default crop*256/224; {_CKPT})")


def add_device_flags(p: argparse.ArgumentParser, unused: Sequence[str] = ()) -> None:
    """Where the tensors live and how many CPU threads and loader workers a process uses."""
    g = _Group(p, "device and threads", unused)
    g.add("--device", default="cuda" if torch.cuda.is_available() else "cpu",
          help="cpu, cuda or cuda:N (under torchrun cuda -> cuda:LOCAL_RANK)")
    g.add("-j", "--workers", default=None, type=int,
          help="data-loading workers (default: 0 for fashion-mnist, 8 otherwise)")
    g.add("--threads", default=None, type=int,
          help="torch intra-op CPU threads per process (default: torch's, i.e. OMP_NUM_THREADS or all cores); "
               "use 1 when several runs share a small machine")


def add_progress_group(p: argparse.ArgumentParser, unused: Sequence[str] = ()) -> None:
    """The progress flag (lskd_core.cli_groups, shared with the study and the advisor) under a heading."""
    _Group(p, "progress", unused).add_with(add_progress_flag)


#: group name -> adder (every adder takes the parser and the dests it leaves unused)
GROUPS: Dict[str, Callable[..., None]] = {"data": add_data_flags, "device": add_device_flags,
                                          "progress": add_progress_group}


class _Group:
    """Adds a group's flags to ``p`` (under a ``--help`` heading); the unused ones as carried."""

    def __init__(self, p: argparse.ArgumentParser, title: str, unused: Sequence[str]) -> None:
        self.parser, self.unused = p, set(unused)
        self.group = p.add_argument_group(title)

    def add(self, *flags: str, **kw) -> None:
        action = self.group.add_argument(*flags, **kw)
        if action.dest in self.unused:
            _hide(action)

    def add_with(self, adder: Callable[[argparse._ArgumentGroup], None]) -> None:
        before = len(self.parser._actions)
        adder(self.group)
        for action in self.parser._actions[before:]:
            if action.dest in self.unused:
                _hide(action)


def _hide(action: argparse.Action) -> None:
    action.dest, action.default, action.required = CARRIED + action.dest, argparse.SUPPRESS, False
    action.help = argparse.SUPPRESS


def accept_carried_flags(parser: argparse.ArgumentParser, donor: argparse.ArgumentParser,
                         skip: Sequence[str] = ()) -> None:
    """Add every flag of ``donor`` (the trainer's parser) that ``parser`` lacks, as accepted but
    unused (``skip``: dests not to add, e.g. those ``parser`` took from ``donor`` itself). A flag
    of ``parser``'s own with one of the donor's names (``--epochs``, ``--seed``) wins."""
    for action in donor._actions:
        if action.dest in skip or action.dest == "help" or not action.option_strings:
            continue
        if any(flag in parser._option_string_actions for flag in action.option_strings):
            continue
        _hide(action)
        parser._add_action(action)


def ignored_flags(args: argparse.Namespace) -> List[str]:
    """The accepted-but-unused flags given on the command line (as ``--flag-name``), sorted."""
    return sorted("--" + key[len(CARRIED):].replace("_", "-") for key in vars(args) if key.startswith(CARRIED))


def carried_value(args: argparse.Namespace, dest: str, default=None):
    """The value of an accepted-but-unused flag (``default`` when not given)."""
    return getattr(args, CARRIED + dest, default)


def shared_dests() -> Dict[str, Tuple[str, ...]]:
    """group name -> its dests (the parser test's list)."""
    return {name: group_dests(adder) for name, adder in GROUPS.items()}
