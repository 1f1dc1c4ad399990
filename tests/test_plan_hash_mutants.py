"""Run hashes and the plan's bookkeeping (lskd_core.study.plan, lskd_core.study.provenance) against
known answers written out here: the defining form of a command with every execution-only flag, the
hash recomputed from its documented parts with hashlib, the teacher-seed pairing by hand, the exact
argv of a run. Written to kill cosmic-ray survivors of issue 20 (docs/testing.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from lskd_core import study as S
from lskd_core.study import plan as PL
from lskd_core.study import provenance as P


def _run(args, distributed=False, program=("module", "vision_plugin.train")):
    return PL.Run(run_id="r", kind="student", program=program, args=list(args), distributed=distributed)


def test_the_defining_form_drops_every_execution_flag_with_its_values():
    args = ["--lr", "0.1", "--device", "cuda", "--cpu", "--epochs", "3", "--workers", "4", "--print-freq", "10",
            "--resume", "ckpt", "--output-dir", "{run}", "--out", "{run}/o", "--save-dir", "{run}/s",
            "--num-workers", "2", "--results-path", "{run}/r", "--no-progress", "--data-buffer-size", "8",
            "--kd-temperature", "4", "{study}/runs/teacher/checkpoint.pth"]
    by_hand = ["--lr", "0.1", "--epochs", "3", "--kd-temperature", "4", "{study}/runs/teacher/checkpoint.pth"]
    assert _run(args).defining(1) == {"program": ["module", "vision_plugin.train"], "args": by_hand}
    # a flag's value that looks like a flag is still its value; a zero-argument flag takes none
    assert _run(["--device", "--lr", "--cpu", "--lr", "1"]).defining(1)["args"] == ["--lr", "1"]
    assert _run(["--no-progress", "--epochs", "2"]).defining(1)["args"] == ["--epochs", "2"]


def test_the_world_size_is_defining_only_for_a_distributed_run_on_several_processes():
    assert "nproc" not in _run(["--lr", "1"], distributed=True).defining(1)
    assert _run(["--lr", "1"], distributed=True).defining(2)["nproc"] == 2
    assert "nproc" not in _run(["--lr", "1"], distributed=False).defining(4)


def _sha256_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_a_run_hash_is_its_command_its_dependencies_hashes_and_its_provenance():
    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1, 2], "cache": False})
    plan = S.build_plan(cfg)
    by_id = {r.run_id: r for r in plan}
    for r in plan:
        want = _sha256_json({"run": r.defining(cfg.nproc), "deps": {d: by_id[d].hash for d in r.deps},
                             "provenance": P.run_provenance(r, cfg)})
        assert r.hash == want, r.run_id
    assert len({r.hash for r in plan}) == len(plan)  # every run is a different computation


def test_a_duplicate_or_unordered_plan_is_refused(monkeypatch):
    from lskd_core.study.registry import get_task

    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1]})
    backend = get_task(cfg.task)
    runs = backend.build_runs(cfg)
    monkeypatch.setattr(type(backend), "build_runs", lambda self, c: runs + [runs[0]])
    with pytest.raises(ValueError, match="duplicate run id"):
        S.build_plan(cfg)
    later = next(r for r in runs if r.deps)
    monkeypatch.setattr(type(backend), "build_runs", lambda self, c: [later] + [r for r in runs if r is not later])
    with pytest.raises(AssertionError, match="not planned before it"):
        S.build_plan(cfg)


def test_teacher_seeds_and_their_pairing_by_hand():
    cfg = S.load_config(overrides={"seeds": [5, 6, 7, 8, 9], "teacher_seed": 3, "teacher_seeds": 2})
    assert PL.teacher_seed_list(cfg) == [3, 4]
    assert [PL.paired_teacher_seed(cfg, s) for s in (5, 6, 7, 8, 9)] == [3, 4, 3, 4, 3]
    assert PL.teacher_run_id(cfg, 0.1, 4) == "teacher_a0.1_ts4"
    one = dataclasses.replace(cfg, teacher_seeds=1)
    assert PL.teacher_seed_list(one) == [3] and PL.teacher_run_id(one, 0.1, 3) == "teacher_a0.1"


def test_the_ids_spell_their_cell():
    assert PL.student_id(0.1, 4.0, 2) == "student_a0.1_T4_s2"
    assert PL.teacher_id(0.0) == "teacher_a0" and PL.teacher_id(0.2, 0) == "teacher_a0.2_ts0"
    assert PL.export_id("student_a0_T1_s0", "val") == "export_student_a0_T1_s0_val"
    assert PL.match_id() == "match" and PL.match_id(1) == "match_ts1"
    assert PL.matched_id(0.0, 0.1, 64.0, 3) == "matched_a0_for_a0.1_T64_s3"


def test_the_exact_command_of_a_run(tmp_path):
    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1]})
    run = _run(["--out", "{run}", "--teacher", "{study}/runs/t/checkpoint.pth", "{run}{study}"])
    study = tmp_path / "st"
    rdir = study / "runs" / "r"
    argv = PL.run_command(run, study, dataclasses.replace(cfg, python="/py/bin/python"))
    assert argv == ["/py/bin/python", "-m", "vision_plugin.train", "--out", str(rdir), "--teacher",
                    f"{study}/runs/t/checkpoint.pth", f"{rdir}{study}"]
    resumed = PL.run_command(run, study, dataclasses.replace(cfg, python="/py/bin/python"), resume=True)
    assert resumed[-2:] == ["--resume", str(rdir / "checkpoint.pth")]
    no_flag = dataclasses.replace(run, resume_flag=None)
    assert PL.run_command(no_flag, study, dataclasses.replace(cfg, python="/py/bin/python"), resume=True) == argv
    dist = dataclasses.replace(run, distributed=True)
    multi = PL.run_command(dist, study, dataclasses.replace(cfg, python="/py/bin/python", nproc=2))
    assert multi[:9] == ["/py/bin/python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                         "-m", "vision_plugin.train", "--out"]
    single = PL.run_command(dist, study, dataclasses.replace(cfg, python="/py/bin/python", nproc=1))
    assert single == argv
    exe = PL.run_command(_run(["x"], program=("exe", "no-such-tool-lskd")), study,
                         dataclasses.replace(cfg, python="/py/bin/python"))
    assert exe == ["no-such-tool-lskd", "x"]  # neither next to the interpreter nor on PATH: the bare name


def test_a_console_script_next_to_the_interpreter_is_preferred(tmp_path):
    (tmp_path / "bin").mkdir()
    tool = tmp_path / "bin" / "fairseq-train"
    tool.write_text("")
    assert PL._executable("fairseq-train", str(tmp_path / "bin" / "python")) == str(tool)


def test_the_plugin_a_run_executes():
    assert P.run_plugin(_run([])) == "vision_plugin"
    assert P.run_plugin(_run([], program=("module", "fairseq_plugin.prepare"))) == "fairseq_plugin"
    assert P.run_plugin(_run([], program=("module", "lskd_core.study.match"))) is None
    assert P.run_plugin(_run([], program=("exe", "fairseq-generate"))) == "fairseq_plugin"
    assert P.run_plugin(_run([], program=("exe", "sacrebleu"))) is None


def test_provenance_names_the_frameworks_of_the_plugin_and_the_code_unless_versions_only():
    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1]})
    prov = P.run_provenance(_run([]), cfg)
    assert set(prov) == {"lskd_version", "code", "frameworks"} and set(prov["frameworks"]) == {"torch", "torchvision"}
    assert prov["code"] == P.source_digest("vision_plugin") != P.source_digest(None)
    core = P.run_provenance(_run([], program=("module", "lskd_core.study.match")), cfg)
    assert set(core) == {"lskd_version", "code"} and core["code"] == P.source_digest(None)
    versions = P.run_provenance(_run([]), dataclasses.replace(cfg, provenance="version"))
    assert set(versions) == {"lskd_version", "frameworks"}
    # the setting as a config file gives it: an equal string, not the interned literal (compared by value)
    from_file = json.loads('{"provenance": "version"}')["provenance"]
    assert from_file == "version" and from_file is not "version"  # noqa: F632 (the point of the check)
    assert set(P.run_provenance(_run([]), dataclasses.replace(cfg, provenance=from_file))) == {"lskd_version",
                                                                                               "frameworks"}


def test_the_source_digest_is_the_documented_json_of_its_parts():
    root = Path(P.__file__).resolve().parent.parent
    core = P._dir_digest(str(root), P._ANALYSIS_ONLY)
    plugin = P._dir_digest(str(root.parent / "vision_plugin"))
    assert P.source_digest(None) == hashlib.sha256(json.dumps({"lskd_core": core}, sort_keys=True).encode()).hexdigest()
    both = json.dumps({"lskd_core": core, "vision_plugin": plugin}, sort_keys=True).encode()
    assert P.source_digest("vision_plugin") == hashlib.sha256(both).hexdigest()
    absent = json.dumps({"lskd_core": core, "no_such_plugin_lskd": "absent"}, sort_keys=True).encode()
    assert P.source_digest("no_such_plugin_lskd") == hashlib.sha256(absent).hexdigest()
    # keys sorted: fairseq_plugin's part comes before lskd_core's in the hashed text
    fair = P._dir_digest(str(root.parent / "fairseq_plugin"))
    text = '{"fairseq_plugin": "%s", "lskd_core": "%s"}' % (fair, core)
    assert P.source_digest("fairseq_plugin") == hashlib.sha256(text.encode()).hexdigest()


def test_a_top_level_skip_only(tmp_path):
    """Only top-level folders named in ``skip`` are left out: a nested ``report/`` still counts."""
    for sub in ("report", "study/report"):
        (tmp_path / sub).mkdir(parents=True)
        (tmp_path / sub / "m.py").write_text("x = 1\n")
    P._dir_digest.cache_clear()
    by_hand = hashlib.sha256(b"study/report/m.py\0x = 1\n\0").hexdigest()
    assert P._dir_digest(str(tmp_path), ("report",)) == by_hand
    P._dir_digest.cache_clear()


def test_another_interpreter_is_asked_for_its_versions(tmp_path, monkeypatch):
    """The python setting names another interpreter: its answer is used, not this process's packages (a
    stand-in interpreter that prints a fixed answer)."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho \'{"torch": "0.0-stand-in", "torchvision": null}\'\n')
    fake.chmod(0o755)
    assert P.framework_versions(str(fake), ("torch", "torchvision")) == {"torch": "0.0-stand-in", "torchvision": None}
    # "another interpreter" means a different path, whichever way the two paths sort
    for ours in ("/aaa/python", "/zzz/python"):
        monkeypatch.setattr(P.sys, "executable", ours)
        P.framework_versions.cache_clear()
        assert P.framework_versions(str(fake), ("torch",)) == {"torch": "0.0-stand-in"}, ours
    monkeypatch.undo()
    P.framework_versions.cache_clear()
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(ValueError, match="could not report its package versions"):
        P.framework_versions(str(broken), ("torch",))
    # an interpreter that fails is not believed, even when it printed an answer first
    failing = tmp_path / "failing"
    failing.write_text('#!/bin/sh\necho \'{"torch": "0.0-stand-in"}\'\nexit 1\n')
    failing.chmod(0o755)
    with pytest.raises(ValueError, match="could not report its package versions"):
        P.framework_versions(str(failing), ("torch",))


def test_an_installed_plugin_outside_the_checkout_is_digested_where_it_lives(tmp_path, monkeypatch):
    """A package not next to lskd_core is found through importlib (not imported) and digested from its
    own folder: its files' bytes, by hand."""
    pkg = tmp_path / "site" / "lskd_elsewhere_plugin"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert P._package_dir("lskd_elsewhere_plugin") == pkg
    P._dir_digest.cache_clear()
    by_hand = hashlib.sha256(b"__init__.py\0X = 1\n\0").hexdigest()
    core = P._dir_digest(str(Path(P.__file__).resolve().parent.parent), P._ANALYSIS_ONLY)
    parts = json.dumps({"lskd_core": core, "lskd_elsewhere_plugin": by_hand}, sort_keys=True).encode()
    assert P.source_digest("lskd_elsewhere_plugin") == hashlib.sha256(parts).hexdigest()
    P._dir_digest.cache_clear()


def test_the_runs_get_the_checkout_on_their_path():
    """plugin_root is the folder holding lskd_core and the plugins; the runs' PYTHONPATH starts with it."""
    from lskd_core.study import run_exec

    root = Path(PL.__file__).resolve().parent.parent.parent
    assert (root / "lskd_core").is_dir() and (root / "vision_plugin").is_dir()
    assert PL.plugin_root() == root
    cfg = S.load_config("demo")
    assert run_exec.child_env(cfg)["PYTHONPATH"].split(os.pathsep)[0] == str(root)


@pytest.mark.parametrize("plugins, found", [(("vision_plugin",), True), (("fairseq_plugin",), True),
                                            (("vision_plugin", "fairseq_plugin"), True), ((), False)])
def test_a_checkout_with_either_plugin_is_put_on_the_runs_path(tmp_path, plugins, found):
    for name in plugins:
        (tmp_path / name).mkdir()
    (tmp_path / "fairseq_plugin.txt").write_text("a file is not a plugin's source")
    assert PL.checkout_with_plugins(tmp_path) == (tmp_path if found else None)


def test_a_task_placeholder_is_substituted_in_the_exact_command(tmp_path):
    """Translation commands name the plugin folder as {fairseq_plugin} (fairseq's --user-dir): the argv
    a run executes has the folder itself."""
    from lskd_core.study.tasks.translation import fairseq_plugin_dir

    cfg = S.load_config("translation-demo")
    student = next(r for r in S.build_plan(cfg) if r.kind == "student")
    assert "{fairseq_plugin}" in student.args
    argv = PL.run_command(student, tmp_path, cfg)
    assert not any("{fairseq_plugin}" in a for a in argv)
    assert argv[argv.index("--user-dir") + 1] == fairseq_plugin_dir()


# the execution-only flags and how many values each takes, written out from the trainers' --help
_EXECUTION_ONLY = {"--device": 1, "--workers": 1, "--print-freq": 1, "--resume": 1, "--output-dir": 1, "--out": 1,
                   "--save-dir": 1, "--num-workers": 1, "--cpu": 0, "--results-path": 1, "--no-progress": 0,
                   "--data-buffer-size": 1}


@pytest.mark.parametrize("flag", sorted(_EXECUTION_ONLY))
def test_each_execution_flag_drops_exactly_its_own_values(flag):
    # followed by a defining flag: dropping one value too many or too few changes the defining form
    values = [f"v{i}" for i in range(_EXECUTION_ONLY[flag])]
    args = ["--epochs", "3", flag, *values, "--lr", "0.1", "pos"]
    assert _run(args).defining(1)["args"] == ["--epochs", "3", "--lr", "0.1", "pos"]


def test_a_variant_students_id_is_its_cells_id_and_the_arms_tag():
    assert PL.variant_student_id(0.1, 2.0, 0, "teacher_only_T") == "student_a0.1_T2_s0_ttm"
    assert PL.variant_student_id(0.0, 64.0, 3, "logit_standardization") == "student_a0_T64_s3_lstd"
    assert PL.variant_student_id(0.2, 4.0, 1, "teacher_only_T+logit_standardization") == "student_a0.2_T4_s1_ttm_lstd"


def test_a_run_read_back_from_json_has_the_same_command(tmp_path):
    # the manifest stores runs as JSON: their program's strings are new objects, compared by value
    cfg = dataclasses.replace(S.load_config(overrides={"seeds": 1, "temperatures": [1]}), python="/py/bin/python")
    run = _run(["--out", "{run}"])
    back = dataclasses.replace(run, program=tuple(json.loads(json.dumps(list(run.program)))))
    assert PL.run_command(back, tmp_path, cfg) == PL.run_command(run, tmp_path, cfg)
    assert PL.run_command(back, tmp_path, cfg)[:3] == ["/py/bin/python", "-m", "vision_plugin.train"]


def test_plan_commands_are_each_runs_exact_command_shell_quoted(tmp_path):
    import shlex
    import sys

    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1]})
    study = tmp_path / "my study"  # a space: the command must be quoted to split back into the argv
    plan = S.build_plan(cfg)
    cmds = PL.plan_commands(plan, study, cfg)
    assert len(cmds) == len(plan)
    for run, cmd in zip(plan, cmds):
        argv = shlex.split(cmd)
        assert argv == PL.run_command(run, study, cfg) and argv[0] == (cfg.python or sys.executable)
        assert any(a.startswith(str(study / "runs")) for a in argv)  # its paths are inside this study


def test_a_package_that_cannot_be_looked_up_has_no_folder(monkeypatch):
    import sys
    import types

    # a dotted name whose parent is not installed: find_spec raises ModuleNotFoundError
    assert P._package_dir("lskd_no_such_parent_pkg.child") is None
    # a module in sys.modules without a spec (made at run time): find_spec raises ValueError
    fake = types.ModuleType("lskd_spec_less_module")
    fake.__spec__ = None
    monkeypatch.setitem(sys.modules, "lskd_spec_less_module", fake)
    assert P._package_dir("lskd_spec_less_module") is None


def test_the_runners_own_interpreter_is_asked_in_process(monkeypatch):
    # the same interpreter (named by another path to it, or not named): no subprocess is started
    def no_subprocess(*a, **k):
        raise AssertionError("a subprocess was started for the runner's own interpreter")

    monkeypatch.setattr(P.subprocess, "run", no_subprocess)
    import sys

    for python in (None, sys.executable, str(Path(sys.executable).parent / "." / Path(sys.executable).name)):
        P.framework_versions.cache_clear()
        got = P.framework_versions(python, ("pytest", "no_such_package_lskd"))
        assert got == {"pytest": pytest.__version__, "no_such_package_lskd": None}
    P.framework_versions.cache_clear()
