"""Job arrays (issue 22 item 3): one ``sbatch --array`` per stage and run kind, throttled with
``%N``, behind the array tasks its runs read; a failed task cancels the unstarted array behind it,
whose runs with healthy inputs are submitted again; a later invocation resubmits only failed runs.

Pure parts (the ``--array`` spec, the array script under bash) need no cluster; the rest runs on the
real single-node SLURM of tests/slurm_cluster.py, or through a fake queue that behaves like SLURM's
arrays so the runner's side is checked without training anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest
import slurm_cluster
from test_study_launchers import _fake_execute  # the fake queue's stand-in for training

from lskd_core import study as S
from lskd_core.study import slurm as sl
from lskd_core.study.launcher_slurm import SlurmLauncher, SlurmSettings
from lskd_core.study.launchers import Launch

slurm = slurm_cluster.slurm  # the session fixture


# ------------------------------------------------------------------------------------------------
# pure: the array spec and the script
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("indices,throttle,spec", [
    ([0], None, "0"),
    ([0, 1, 2, 3], None, "0-3"),
    ([3, 0, 1, 2], 2, "0-3%2"),
    ([0, 1, 2, 5], 2, "0-2,5%2"),
    ([1, 3, 5], None, "1,3,5"),
    ([7, 8, 10, 11, 12, 20], 1, "7-8,10-12,20%1"),
])
def test_array_spec_is_sbatch_syntax(indices, throttle, spec):
    assert sl.array_spec(indices, throttle) == spec
    # the spec read back as SLURM reads it gives the same set of indices
    body = spec.split("%")[0]
    got = set()
    for part in body.split(","):
        lo, _, hi = part.partition("-")
        got |= set(range(int(lo), int(hi or lo) + 1))
    assert got == set(indices)


def test_array_spec_refuses_nothing():
    with pytest.raises(ValueError, match="at least one task"):
        sl.array_spec([])


def _echo_argv(tag: str) -> List[str]:
    return [sys.executable, "-c", "import json, os, sys; print(json.dumps([os.getcwd()] + sys.argv[1:]))", tag,
            "it's", "$HOME"]


def test_array_script_runs_the_task_of_its_index_in_its_dir_and_log(tmp_path):
    dirs = [tmp_path / "runs" / f"r{i}" for i in range(3)]
    for d in dirs:
        d.mkdir(parents=True)
    ckpt = dirs[1] / "checkpoint.pth"
    tasks = [sl.ArrayTask(i, f"r{i}", _echo_argv(f"run {i}"), str(d / "stdout.log"), str(d)) for i, d in enumerate(dirs)]
    tasks[1].resume_arg, tasks[1].resume_if = ["--resume", str(ckpt)], str(ckpt)
    options = sl.sbatch_options(sl.Resources(mem="1G"), "lskd-student", str(tmp_path / "%x-%A_%a.out"), None, 1)
    options.append("--array=" + sl.array_spec(range(3), 2))
    script = tmp_path / "student-0.sbatch"
    script.write_text(sl.render_array_script(tasks, options, setup=["export LSKD_SETUP_RAN=1"]))
    assert "#SBATCH --array=0-2%2\n" in script.read_text()

    def run(index: int) -> subprocess.CompletedProcess:
        env = dict(os.environ, SLURM_ARRAY_TASK_ID=str(index), SLURM_ARRAY_JOB_ID="41", SLURM_JOB_ID="99")
        env.pop("OMP_NUM_THREADS", None)
        return subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)

    def last(i: int) -> list:
        return json.loads((dirs[i] / "stdout.log").read_text().splitlines()[-1])

    for i in range(3):
        assert run(i).returncode == 0
        # bash is the oracle for quoting; the task ran in its own run dir and wrote its own log
        assert last(i) == [str(dirs[i]), f"run {i}", "it's", "$HOME"]
        assert f"job 41_{i} (r{i})" in (dirs[i] / "stdout.log").read_text()
    ckpt.write_bytes(b"x")  # a requeued task resumes; the others are as before
    assert run(1).returncode == 0 and last(1)[-2:] == ["--resume", str(ckpt)]
    assert run(0).returncode == 0 and last(0)[-1] == "$HOME"
    bad = run(7)
    assert bad.returncode == 2 and "array task 7 has no run in this script" in bad.stderr


# ------------------------------------------------------------------------------------------------
# the runner's side, through a fake queue with SLURM's array semantics
# ------------------------------------------------------------------------------------------------
class _ArrayQueue(S.Launcher):
    """Each start_many is one 'array' per kind; an array waits for the union of its tasks' inputs,
    and when one of them fails every task of the array is cancelled unstarted (kill-on-invalid-dep)."""

    name = "arrays"
    queues_dependencies = True
    detached = False

    def __init__(self, fail=()):
        self.fail = set(fail)
        self.arrays: List[dict] = []
        self.tasks: Dict[str, dict] = {}
        self.submissions: List[List[str]] = []

    def start(self, run, argv, env, log_path, cwd=None, after=()):  # pragma: no cover - start_many is used
        raise AssertionError("a queueing launcher with arrays gets start_many")

    def start_many(self, launches, env, state_dir=None):
        self.submissions.append([x.run.run_id for x in launches])
        by_kind: Dict[str, list] = {}
        for x in launches:
            by_kind.setdefault(x.run.kind, []).append(x)
        made = {}
        for kind, items in by_kind.items():
            deps = sorted({h["task"] for x in items for h in x.after})
            array = {"kind": kind, "deps": deps, "tasks": []}
            self.arrays.append(array)
            for i, x in enumerate(items):
                tid = f"{len(self.arrays)}_{i}"
                self.tasks[tid] = {"run": x.run, "dir": x.log_path.parent, "rc": None, "array": array,
                                   "never_ran": False}
                array["tasks"].append(tid)
                made[x.run.run_id] = {"launcher": self.name, "task": tid, "log": str(x.log_path),
                                      "started": time.time()}
        return [made[x.run.run_id] for x in launches]

    def poll(self, handle):
        t = self.tasks[handle["task"]]
        if t["rc"] is None:
            deps = [self.tasks[d] for d in t["array"]["deps"]]
            if any(d["rc"] not in (None, 0) for d in deps):
                t["rc"], t["never_ran"] = 1, True  # cancelled: DependencyNeverSatisfied
            elif all(d["rc"] == 0 for d in deps):
                t["rc"] = _fake_execute(t["run"], t["dir"], self.fail)
        return t["rc"]

    def never_ran(self, handle):
        return self.tasks[handle["task"]]["never_ran"]

    def stop(self, handle):
        t = self.tasks[handle["task"]]
        if t["rc"] is None:
            t["rc"] = -15


def _cfg() -> S.StudyConfig:
    return S.load_config(overrides={"seeds": 1, "temperatures": [1, 2], "jobs": 100, "cache": False})


def test_runner_hands_each_stage_over_at_once_one_array_per_kind(tmp_path):
    cfg = _cfg()
    plan = S.build_plan(cfg)
    q = _ArrayQueue()
    messages: List[str] = []
    out = S.run_study(cfg, tmp_path, launcher=q, report=False, progress=False, echo=messages.append)
    assert out.ok and sorted(out.launched) == sorted(r.run_id for r in plan)
    # stage k = the runs whose longest chain of inputs has k links: each is handed over as soon as
    # its inputs are, so submission k holds exactly stage k
    by_id = {r.run_id: r for r in plan}
    depth: Dict[str, int] = {}

    def stage(rid: str) -> int:
        if rid not in depth:
            depth[rid] = 1 + max((stage(d) for d in by_id[rid].deps), default=-1)
        return depth[rid]

    stages: Dict[int, set] = {}
    for r in plan:
        stages.setdefault(stage(r.run_id), set()).add(r.run_id)
    assert [set(w) for w in q.submissions] == [stages[k] for k in sorted(stages)]
    # one array per kind within a stage
    assert len(q.arrays) == sum(len({by_id[r].kind for r in w}) for w in q.submissions) < len(plan) / 3
    assert not [m for m in messages if "cancelled before it started" in m]


def test_a_failed_teacher_cancels_the_array_and_only_healthy_runs_are_submitted_again(tmp_path):
    cfg = _cfg()
    plan = S.build_plan(cfg)
    q = _ArrayQueue(fail={"teacher_a0.1"})
    messages: List[str] = []
    out = S.run_study(cfg, tmp_path, launcher=q, report=False, progress=False, echo=messages.append)
    dependents = {r.run_id for r in plan if "a0.1" in r.run_id and r.run_id != "teacher_a0.1"}
    healthy = {r.run_id for r in plan if r.run_id not in dependents and r.run_id != "teacher_a0.1"}
    assert set(out.failed) == {"teacher_a0.1"} and set(out.blocked) == dependents
    # the plain teacher's students shared an array with the LS teacher's: cancelled unstarted with
    # it, then submitted again (they finish); the LS teacher's own students are blocked, never rerun
    handed = [r for w in q.submissions for r in w]
    resubmitted = {r for r in handed if handed.count(r) > 1}
    assert {r for r in resubmitted if r.startswith("student_")} == {r for r in healthy if r.startswith("student_")}
    assert not resubmitted & dependents
    assert healthy <= {rid for rid in out.launched} and all(
        (tmp_path / "runs" / r / "result.json").exists() for r in healthy)
    assert any("cancelled before it started" in m for m in messages)
    # the run that failed is the only one a second invocation submits again with its dependents
    q2 = _ArrayQueue()
    again = S.run_study(cfg, tmp_path, launcher=q2, report=False, progress=False, echo=lambda s: None)
    assert again.ok and set(again.launched) == dependents | {"teacher_a0.1"}
    assert q2.submissions[0] == ["teacher_a0.1"]


# ------------------------------------------------------------------------------------------------
# the real SLURM
# ------------------------------------------------------------------------------------------------
def _iso(t: str) -> float:
    return time.mktime(time.strptime(t, "%Y-%m-%dT%H:%M:%S"))


def _wait_ended(launcher: SlurmLauncher, handles: List[dict], timeout: float = 120) -> List[int]:
    deadline = time.time() + timeout
    rcs: List = [None] * len(handles)
    while any(rc is None for rc in rcs):
        assert time.time() < deadline, [launcher.describe(h) for h in handles]
        for i, h in enumerate(handles):
            if rcs[i] is None:
                rcs[i] = launcher.poll(h)
        time.sleep(0.3)
    return rcs


@pytest.mark.slurm
def test_one_throttled_array_per_kind_on_slurm_and_a_failed_task_cancels_the_unstarted_array(slurm, tmp_path):
    launcher = SlurmLauncher(SlurmSettings.from_mapping(
        {"mem": "50M", "time": "5", "poll_interval": 0.3, "teacher": {"array_parallelism": 1}}),
        client=sl.SlurmClient(slurm.env))
    state = tmp_path / "launcher"

    def launch(run_id: str, kind: str, code: str, after=()) -> Launch:
        rdir = tmp_path / "runs" / run_id
        rdir.mkdir(parents=True)
        run = S.Run(run_id, kind, ("exe", "bash"), [], resume_flag=None)
        return Launch(run, ["bash", "-c", code], rdir / "stdout.log", after=list(after))

    teachers = [launch("t0", "teacher", "sleep 2; echo made t0"), launch("t1", "teacher", "sleep 2; exit 3"),
                launch("t2", "teacher", "sleep 2; echo made t2")]
    th = launcher.start_many(teachers, dict(slurm.env), state)
    assert len({h["array_job"] for h in th}) == 1 and [h["job_id"] for h in th] == \
        [f"{th[0]['array_job']}_{i}" for i in range(3)]
    students = [launch("s0", "student", "echo s0", [th[0]]), launch("s2", "student", "echo s2", [th[2]]),
                launch("s1", "student", "echo s1", [th[1]])]
    sh = launcher.start_many(students, dict(slurm.env), state)
    assert len({h["array_job"] for h in sh}) == 1 and sh[0]["array_job"] != th[0]["array_job"]
    # the array waits for the array tasks its runs read (SLURM's own view of the dependency)
    info = slurm_cluster.job_info(slurm, sh[0]["array_job"])
    assert all(h["job_id"] in info["Dependency"] for h in th), info["Dependency"]
    scripts = sorted(p.name for p in state.glob("*.sbatch"))
    assert scripts == ["student-0.sbatch", "teacher-0.sbatch"]
    assert "#SBATCH --array=0-2%1\n" in (state / "teacher-0.sbatch").read_text()
    assert "#SBATCH --array=0-2\n" in (state / "student-0.sbatch").read_text()
    # two arrays in the queue, not six jobs
    queued = slurm.run("squeue", "-h", "-o", "%F").stdout.split()
    assert set(queued) == {th[0]["array_job"], sh[0]["array_job"]}

    assert _wait_ended(launcher, th) == [0, 3, 0]
    assert "made t0" in (tmp_path / "runs" / "t0" / "stdout.log").read_text()
    assert f"job {th[2]['job_id']} (t2)" in (tmp_path / "runs" / "t2" / "stdout.log").read_text()
    # %1: the teachers ran one at a time (SLURM's clock, one-second resolution)
    spans = sorted((_iso(i["StartTime"]), _iso(i["EndTime"])) for i in
                   (slurm_cluster.job_info(slurm, h["job_id"]) for h in th))
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), spans
    # t1 failed: SLURM cancelled the whole student array before any task started
    rcs = _wait_ended(launcher, sh)
    assert all(rc != 0 for rc in rcs) and all(launcher.never_ran(h) for h in sh)
    assert not any(launcher.never_ran(h) for h in th)
    for h, name in zip(sh, ("s0", "s2", "s1")):
        log = Path(h["log"])
        text = log.read_text() if log.exists() else ""  # only the launcher's note of how it ended
        assert f"job {h['job_id']} (" not in text and f"\n{name}\n" not in text, text
        assert "ended CANCELLED" in text
