"""One interface across the CLIs (issue 22 item 1): every CLI's parser is walked and each shared flag
group is identical wherever it appears (option strings, type, default, help, nargs, choices, action
class): the study and the advisor share their settings groups, the progress flag is one across
study, advisor, trainer and cache builder, and the trainer, the cache builder and the feature
exporter share the data and device/threads groups. The cache builder and the exporter accept every
trainer flag and name the ones they ignore in one line. (fairseq_plugin's CLIs carry none of these
groups: a positional fairseq data directory, no subset caps, no progress flag.)"""

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


# ------------------------------------------------------------------------------------------------
# every CLI's parser, every shared group
# ------------------------------------------------------------------------------------------------
def _vision_parsers() -> dict:
    pytest.importorskip("torchvision")
    from vision_plugin import export_features, teacher_cache
    from vision_plugin.train_args import get_args_parser as trainer_parser

    cache = teacher_cache.get_args_parser()
    build = next(a for a in cache._actions if isinstance(a, argparse._SubParsersAction)).choices["build"]
    return {"trainer": trainer_parser(), "cache build": build, "export": export_features.get_args_parser()}


def _reference(adder) -> dict:
    probe = argparse.ArgumentParser(add_help=False)
    adder(probe)
    return _actions(probe)


def _check_group(name: str, parser: argparse.ArgumentParser, reference: dict, unused=()) -> None:
    have = _actions(parser)
    from vision_plugin.cli_groups import CARRIED

    for dest, want in reference.items():
        if dest in unused:  # accepted and ignored: same flag names, hidden, named in the command's note
            hidden = have[CARRIED + dest]
            assert hidden.option_strings == want.option_strings and hidden.help == argparse.SUPPRESS, (name, dest)
            continue
        assert dest in have, (name, dest)
        assert _signature(have[dest]) == _signature(want), (name, dest)


def test_every_cli_carries_the_shared_groups_identically():
    from lskd_core.cli_groups import add_progress_flag
    from vision_plugin.cli_groups import TEACHER_DESTS, add_data_flags, add_device_flags

    parsers = {**_vision_parsers(), "study": study_parser(), "advise": advise_parser()}
    groups = {"data": (_reference(add_data_flags), ("trainer", "cache build", "export")),
              "device": (_reference(add_device_flags), ("trainer", "cache build", "export")),
              "progress": (_reference(add_progress_flag), ("trainer", "cache build", "study", "advise"))}
    unused = {("data", "cache build"): ("val_samples",)}
    for group, (reference, users) in groups.items():
        for name in users:
            _check_group(name, parsers[name], reference, unused.get((group, name), ()))
    # the groups hold what a user carries between commands
    assert {"data_path", "dataset", "train_samples", "val_samples", "subset_seed"} <= set(groups["data"][0])
    assert {"device", "workers", "threads"} == set(groups["device"][0])
    # teacher flags: defined once (vision_plugin.kd), the builder uses the trainer's
    trainer = _actions(parsers["trainer"])
    _check_group("cache build", parsers["cache build"], {d: trainer[d] for d in TEACHER_DESTS})


def test_builder_and_exporter_accept_every_trainer_flag():
    parsers = _vision_parsers()
    for name in ("cache build", "export"):
        for action in parsers["trainer"]._actions:
            for flag in action.option_strings:
                assert flag in parsers[name]._option_string_actions, (name, flag)


def test_exporter_notes_ignored_trainer_flags_and_uses_the_shared_ones(tmp_path, capsys):
    pytest.importorskip("torchvision")
    from vision_plugin import export_features

    missing = tmp_path / "no.pth"
    rc = export_features.main(["--ckpt", str(missing), "--out", str(tmp_path / "f.npz"), "--lr", "0.1",
                               "--epochs", "3", "--val-samples", "500", "--no-progress", "--threads", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 2  # the note, then the one error line
    assert err[0].startswith("note: --epochs, --lr, --no-progress:") and "ignored" in err[0]
    assert err[1].startswith(f"{export_features.PROG}: error: ") and str(missing) in err[1]
    args = export_features.parse_args(["--ckpt", "c", "--out", "o", "--val-samples", "500", "--subset-seed", "4"])
    assert (args.val_samples, args.subset_seed, export_features.ignored_flags(args)) == (500, 4, [])


def test_exporter_data_flags_not_given_mean_the_checkpoints():
    pytest.importorskip("torchvision")
    from vision_plugin import export_features

    unset = export_features.parse_args(["--ckpt", "c", "--out", "o"])
    # the shared --dataset default (imagefolder) would otherwise hide the checkpoint's dataset
    assert unset.dataset is None and unset.crop_size is None
    given = export_features.parse_args(["--ckpt", "c", "--out", "o", "--dataset", "imagefolder"])
    assert given.dataset == "imagefolder"
    ckpt = {"args": {"model": "lskd_cnn_s", "dataset": "fashion-mnist", "train_samples": 300, "subset_seed": 7,
                     "seed": 1}}
    resolved = export_features.resolve_args(unset, ckpt)
    assert (resolved.dataset, resolved.train_samples, resolved.seed) == ("fashion-mnist", 300, 7)
    # as in the trainer: --subset-seed first, else --seed
    both = export_features.parse_args(["--ckpt", "c", "--out", "o", "--seed", "2", "--subset-seed", "5"])
    assert export_features.resolve_args(both, ckpt).seed == 5
    assert export_features.resolve_args(export_features.parse_args(["--ckpt", "c", "--out", "o", "--seed", "2"]),
                                        ckpt).seed == 2


def test_given_dests_tells_explicit_values_from_defaults():
    from lskd_core.cli_groups import given_dests

    p = argparse.ArgumentParser()
    p.add_argument("--a", default="x")
    p.add_argument("--flag", action="store_true")
    p.add_argument("--n", type=int, default=3)
    assert given_dests(p, ["--a", "x", "--flag"]) == {"a", "flag"}  # a default value given explicitly counts
    assert given_dests(p, []) == set()
    assert p.parse_args([]).a == "x" and p.parse_args([]).n == 3  # the defaults are restored
