"""--set KEY=VALUE on the study and advisor CLIs: any setting, TOML-typed, validated like a file's."""

from __future__ import annotations

import pytest
from conftest import run_main

from lskd_core.study.cli import main as study_main
from lskd_core.study.config import parse_set_items


def test_values_are_read_as_toml():
    got = parse_set_items(["cache=false", "seeds=3", "kd_beta=0.5", "temperatures=[1, 64]", "dataset=cub",
                           'name="my study"', "eval-each-epoch=true", "hierarchy=a=b.json"])
    assert got == {"cache": False, "seeds": 3, "kd_beta": 0.5, "temperatures": [1, 64], "dataset": "cub",
                   "name": "my study", "eval_each_epoch": True, "hierarchy": "a=b.json"}
    assert parse_set_items(None) == {}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_set_items(["cache"])


def test_study_cli_applies_and_checks_set(tmp_path):
    out = str(tmp_path / "s")
    code, stdout, _ = run_main(study_main, ["--out", out, "--seeds", "2", "--set", "cache=false", "--set", "seeds=1",
                                            "--print-commands"])
    assert code == 0
    lines = stdout.splitlines()
    assert not [x for x in lines if "teacher_cache build" in x]  # cache = false: no cache runs
    students = [x for x in lines if "--kd-temperature" in x]
    assert students and all("--teacher-ckpt" in x for x in students)
    assert len(students) == 4 and all("_s0" in x for x in students)  # --set wins over --seeds 2
    code, _, err = run_main(study_main, ["--out", out, "--set", "no_such_setting=1", "--print-commands"])
    assert code == 2 and "unknown study setting(s) ['no_such_setting']" in err and "Traceback" not in err
    code, _, err = run_main(study_main, ["--out", out, "--set", "cache=maybe", "--print-commands"])
    assert code == 2 and "cache must be true or false" in err
