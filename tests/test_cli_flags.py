"""One interface across the CLIs (issue 22 item 1): the study and the advisor share their flag groups
(identical names, types, defaults, help), and the vision cache builder accepts every trainer flag."""

from __future__ import annotations

import argparse

import pytest

from lskd_core.advise.cli import _parser as advise_parser
from lskd_core.study.cli import _parser as study_parser
from lskd_core.study.cli_flags import SHARED_DESTS


def _signature(action: argparse.Action) -> tuple:
    return (tuple(action.option_strings), action.type, action.default, action.help, action.nargs,
            tuple(action.choices) if action.choices else None, type(action).__name__)


def _actions(parser: argparse.ArgumentParser) -> dict:
    return {a.dest: a for a in parser._actions}


def test_study_and_advisor_share_identical_flag_groups():
    study, advise = _actions(study_parser()), _actions(advise_parser())
    assert {"preset", "config", "out", "no_progress", "alphas", "val_samples", "jobs", "set"} <= set(SHARED_DESTS)
    for dest in SHARED_DESTS:
        assert dest in study and dest in advise, dest
        assert _signature(study[dest]) == _signature(advise[dest]), dest


def test_a_study_command_line_carries_over_to_the_advisor():
    line = ["--preset", "demo", "--no-progress", "--alphas", "0", "0.1", "--temperatures", "1", "4",
            "--seeds", "2", "--epochs", "3", "--val-samples", "500", "--jobs", "2", "--set", "kd_beta=1"]
    from lskd_core.study.cli_flags import settings_overrides

    study_ns, advise_ns = study_parser().parse_args(line), advise_parser().parse_args(line)
    assert settings_overrides(study_ns) == settings_overrides(advise_ns)
    assert settings_overrides(advise_ns)["student_epochs"] == 3 and advise_ns.no_progress


def test_cache_builder_accepts_every_trainer_flag_and_names_the_ignored_ones(capsys):
    pytest.importorskip("torchvision")
    from vision_plugin import teacher_cache
    from vision_plugin.train import get_args_parser as trainer_parser

    parser = teacher_cache.get_args_parser()
    build = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["build"]
    for action in trainer_parser(add_help=False)._actions:
        for flag in action.option_strings:
            assert flag in build._option_string_actions, flag
    args = parser.parse_args(["build", "--epochs", "1", "--seed", "0", "--out", "x", "--val-samples", "500",
                              "--lr", "0.1", "--train-samples", "100"])
    assert teacher_cache.ignored_trainer_flags(args) == ["--lr", "--val-samples"]
    assert args.train_samples == 100  # a shared flag is used, not ignored
    with pytest.raises(SystemExit):
        teacher_cache.main(["build", "--epochs", "1", "--seed", "0", "--out", "x", "--aug-seed", "3"])
    assert "--aug-seed 3 differs from --seed 0" in capsys.readouterr().err
