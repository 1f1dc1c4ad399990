"""The study plan (lskd_core.study.plan): its shape, run hashes and commands."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from lskd_core import study as S

ROOT = Path(__file__).resolve().parent.parent


def _ids(plan):
    return [r.run_id for r in plan]


# ------------------------------------------------------------------------------------------------
# plan and hashes
# ------------------------------------------------------------------------------------------------
def test_plan_shape_and_dependency_order():
    cfg = S.load_config(overrides={"seeds": 2, "cache": False,  # the live-teacher path (cache runs: test_study_grid)
                                   "temperatures": [1, 2, 3, 64]})
    plan = S.build_plan(cfg)
    kinds = [r.kind for r in plan]
    assert kinds.count("teacher") == 2
    assert kinds.count("student") == 2 * 4 * 2
    # exports: 2 teachers + 8 students per seed (eta over every seed), train and val each
    assert kinds.count("export") == (2 + 8 * 2) * 2
    seen = set()
    for r in plan:
        assert all(d in seen for d in r.deps), r.run_id
        seen.add(r.run_id)
    st = next(r for r in plan if r.run_id == "student_a0.1_T3_s1")
    assert st.deps == ["teacher_a0.1"]
    i = st.args.index("--kd-temperature")
    assert st.args[i + 1] == "3"
    assert "{study}/runs/teacher_a0.1/checkpoint.pth" in st.args
    teacher_exports = [r for r in plan if r.kind == "export" and r.info["role"] == "teacher"]
    assert all("--save-logits" in r.args for r in teacher_exports)


def test_hash_ignores_execution_details_but_not_the_experiment():
    base = {r.run_id: r.hash for r in S.build_plan(S.load_config())}
    # where/how a run executes does not change what it computes
    moved = {r.run_id: r.hash for r in S.build_plan(S.load_config(overrides={"device": "cuda", "workers": 8,
                                                                             "jobs": 1}))}
    assert moved == base
    # a student setting changes exactly the students and what reads them (and the teacher caches,
    # which record the students' epochs of views)
    changed = {r.run_id: r.hash for r in S.build_plan(S.load_config(overrides={"student_epochs": 9}))}
    diff = {k for k in base if base[k] != changed[k]}
    assert diff == {k for k in base if k.startswith(("student_", "export_student_", "cache_"))}
    # a teacher setting propagates to its students (their hash covers the teacher's)
    changed = {r.run_id: r.hash for r in S.build_plan(S.load_config(overrides={"teacher_lr": 0.01}))}
    assert all(base[k] != changed[k] for k in base)


def test_print_commands(tmp_path, capsys):
    assert S.main(["--out", str(tmp_path / "s"), "--seeds", "1", "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    plan = S.build_plan(S.load_config(overrides={"seeds": 1}))
    assert len(lines) == len(plan)
    for line, run in zip(lines, plan):
        argv = shlex.split(line)
        assert str(tmp_path / "s" / "runs" / run.run_id) in line
        if run.kind in ("teacher", "student"):
            assert argv[1:3] == ["-m", "vision_plugin.train"]
        elif run.kind == "cache":
            assert argv[1:4] == ["-m", "vision_plugin.teacher_cache", "build"]
        else:
            assert argv[1:3] == ["-m", "vision_plugin.export_features"]
        # each run dir now records its config so --report-only can verify collected results
        rc = json.loads((tmp_path / "s" / "runs" / run.run_id / "run_config.json").read_text())
        assert rc["hash"] == run.hash and rc["launched_by"] == "external"


def test_nproc_uses_torchrun_module_mode(tmp_path):
    cfg = S.load_config(overrides={"nproc": 2})
    plan = S.build_plan(cfg)
    argv = S.run_command(plan[0], tmp_path, cfg)
    assert argv[1:8] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                         "vision_plugin.train"]
    exp = next(r for r in plan if r.kind == "export")
    assert S.run_command(exp, tmp_path, cfg)[1:3] == ["-m", "vision_plugin.export_features"]
    # world size is part of a training run's identity, not of an export's own arguments (an export
    # still re-runs when the model it reads is retrained: its hash covers the model's)
    base = {r.run_id: r for r in S.build_plan(S.load_config())}
    assert plan[0].hash != base[plan[0].run_id].hash
    assert exp.defining(2) == base[exp.run_id].defining(1) and exp.hash != base[exp.run_id].hash
