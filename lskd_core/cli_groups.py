"""Command-line flags that every lskd command shares, defined once (issue 22 item 1).

Users copy command lines between the study, the advisor, the vision trainer, the teacher-cache
builder and the feature exporter, so a flag they all take is defined here and nowhere else; the
groups of one family live next to it (``lskd_core.study.cli_flags``: study and advisor;
``vision_plugin.cli_groups``: trainer, cache builder, exporter). ``tests/test_cli_flags.py`` walks
every parser and checks that each shared flag is identical (names, type, default, help, action).

Also here: :func:`given_dests`, which flags a command line set explicitly (a command whose unset
flag means "the checkpoint's value" tells it apart from the shared default this way).
"""

from __future__ import annotations

import argparse
from typing import Callable, Sequence, Set, Tuple

__all__ = ["add_progress_flag", "given_dests", "group_dests"]


def add_progress_flag(p: "argparse.ArgumentParser | argparse._ArgumentGroup") -> None:
    """``--no-progress``: the one progress flag of every command."""
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: plain messages on stderr instead (the trainer: a log line every "
                        "--print-freq steps)")


def group_dests(adder: Callable[[argparse.ArgumentParser], object]) -> Tuple[str, ...]:
    """The dest names of the flags ``adder`` defines (a group's list, for parsers and tests)."""
    probe = argparse.ArgumentParser(add_help=False)
    adder(probe)
    return tuple(a.dest for a in probe._actions)


def given_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Set[str]:
    """The dests that ``argv`` sets explicitly (parsed again with every default suppressed)."""
    saved = [(a, a.default) for a in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        namespace = parser.parse_args(list(argv))
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(namespace))
