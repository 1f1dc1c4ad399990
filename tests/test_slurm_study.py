"""The study through SLURM (``--launcher slurm``) on a real single-node SLURM (tests/slurm_cluster.py).

A tiny Fashion-MNIST study is submitted and the runner exits; a later invocation collects it and
writes the report, whose accuracy grid and eta tables equal those of the same study run by the
local launcher (CPU runs are deterministic: one thread each). SLURM's own start/end times show that
no run started before the runs it reads had finished. A student cancelled with scancel mid-run is
resubmitted by the next invocation, alone in a new array, and resumes from its checkpoint to the
uninterrupted result. Each stage and run kind is one job array (issue 22 item 3).
Bad settings are refused with one line each and nothing reaches the queue.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
import slurm_cluster
from conftest import TINY_STUDY, require_fashion_mnist

from lskd_core import study as S
from lskd_core.study.launcher_slurm import SlurmLauncher, SlurmSettings
from lskd_core.study.status import study_status

slurm = slurm_cluster.slurm  # the session fixture
pytestmark = [pytest.mark.slurm]

TINY = TINY_STUDY  # the tiny end-to-end study shared with the other launcher's tests (conftest)
# jobs of 1 CPU and 1 GB: both CPUs of the test node work at once; squeue is asked twice a second
SLURM_TABLE = {"kind": "slurm", "poll_interval": 0.5, "cpus_per_task": 1, "mem": "1G", "time": "30"}


@pytest.fixture(scope="module")
def one_thread(slurm: slurm_cluster.SlurmCluster) -> Iterator[None]:
    """Every run single-threaded (bitwise equal results under both launchers) and SLURM's commands
    pointed at the test cluster (the runner's own environment is what sbatch hands to the jobs)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
        yield


def _config(tmp: Path, settings: dict, launcher: object = "local") -> S.StudyConfig:
    path = tmp / f"{settings['name']}.json"
    path.write_text(json.dumps(settings), encoding="utf-8")
    return S.load_config(config_file=str(path), overrides={"launcher": launcher})


def _jobs(study: Path) -> Dict[str, dict]:
    """run id -> its recorded SLURM handle (launch.json)."""
    out = {}
    for d in (study / "runs").iterdir():
        h = d / "launch.json"
        if h.is_file():
            out[d.name] = json.loads(h.read_text())
    return out


def _launches(study: Path) -> List[dict]:
    p = study / S.LAUNCH_LOG
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


# ------------------------------------------------------------------------------------------------
# the tiny study: local reference, then submit-and-exit + collect through SLURM
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_reference(one_thread, tmp_path_factory) -> Path:
    require_fashion_mnist()
    root = tmp_path_factory.mktemp("local")
    out = S.run_study(_config(root, TINY), root / "study", progress=False, echo=lambda s: None)
    assert out.ok, (out.failed, out.blocked)
    return root / "study"


@pytest.fixture(scope="module")
def slurm_study(one_thread, slurm, tmp_path_factory) -> Tuple[S.StudyConfig, Path, dict]:
    require_fashion_mnist()
    root = tmp_path_factory.mktemp("slurm")
    cfg = _config(root, TINY, SLURM_TABLE)
    study = root / "study"
    facts: dict = {}
    t0 = time.time()
    first = S.run_study(cfg, study, progress=False, echo=lambda s: None, wait=False)
    facts["submit_s"] = time.time() - t0
    facts["first"] = first
    facts["queued"] = slurm.queue()
    facts["queued_arrays"] = slurm.run("squeue", "-h", "-o", "%F").stdout.split()  # array job ids
    facts["report_after_first"] = (study / "report").exists()
    facts["status"] = study_status(cfg, study)
    messages: List[str] = []
    second = S.run_study(cfg, study, progress=False, echo=messages.append)
    facts["second"], facts["messages"] = second, messages
    facts["collect_s"] = time.time() - t0
    return cfg, study, facts


@pytest.mark.slow
def test_submit_and_exit_then_a_later_invocation_collects_and_reports(slurm, slurm_study):
    cfg, study, facts = slurm_study
    plan = S.build_plan(cfg)
    ids = sorted(r.run_id for r in plan)
    first, second = facts["first"], facts["second"]
    # 1. every run submitted at once (students and exports behind afterok), then the runner exited
    assert sorted(first.launched) == ids and sorted(first.in_flight) == ids
    assert first.report_dir is None and not facts["report_after_first"]
    jobs = _jobs(study)
    assert sorted(jobs) == ids and len({h["job_id"] for h in jobs.values()}) == len(ids)
    # one job array per stage and run kind: runs of one array share kind and inputs' stage
    arrays: Dict[str, List[str]] = {}
    for run_id, h in jobs.items():
        arrays.setdefault(h["array_job"], []).append(run_id)
        assert h["job_id"] == f"{h['array_job']}_{h['array_task']}"
    kinds = {r.run_id: r.kind for r in plan}
    assert all(len({kinds[r] for r in members}) == 1 for members in arrays.values()), arrays
    stage_kinds = {(_stage(plan, r), kinds[r]) for r in ids}
    assert len(arrays) == len(stage_kinds) < len(ids) / 3, arrays
    assert set(facts["queued_arrays"]) <= set(arrays) and facts["queued_arrays"]
    status = facts["status"]
    # an array task behind a dependency: PENDING (SLURM gives the reason "Dependency" only once
    # its scheduler has looked at the array, which may be after this line was taken)
    student = jobs["student_a0.1_T3_s0"]["job_id"]
    assert any("student_a0.1_T3_s0" in ln and f"job {student} PENDING" in ln for ln in status), status
    # 2. the next invocation submitted nothing: it followed the queued jobs, collected them, reported
    assert second.ok, (second.failed, second.blocked, facts["messages"])
    assert second.launched == [] and sorted(second.adopted) == ids and second.in_flight == []
    assert len(_launches(study)) == len(ids)
    assert (second.report_dir / "report.md").is_file()
    assert all("ended" in h and h["exit_status"] == 0 for h in _jobs(study).values())
    # 3. a third invocation finds everything done, and --report-only works on the SLURM study
    third = S.run_study(cfg, study, progress=False, echo=lambda s: None)
    assert third.ok and third.launched == [] and sorted(third.skipped) == ids
    assert S.main(["--config", str(study.parent / "tiny.json"), "--launcher", "slurm", "--out", str(study),
                   "--report-only", "--no-progress"]) == 0
    assert len(_launches(study)) == len(ids) and slurm.queue() == []


@pytest.mark.slow
def test_same_grid_and_eta_tables_as_the_local_launcher(local_reference, slurm_study):
    _, study, _ = slurm_study
    local = json.loads((local_reference / "report" / "results.json").read_text())
    remote = json.loads((study / "report" / "results.json").read_text())
    assert local["accuracy_grid"]["status"] == "ok"
    assert remote["accuracy_grid"] == local["accuracy_grid"]
    assert local["eta"]["status"] == "ok" and local["eta"]["tables"]
    assert remote["eta"]["tables"] == local["eta"]["tables"]
    # the runs themselves: same scores, run by run
    for run in (local_reference / "runs").iterdir():
        a = json.loads((run / "result.json").read_text())
        b = json.loads((study / "runs" / run.name / "result.json").read_text())
        for key in ("val_acc1", "val_acc5", "val_per_class_acc"):
            assert a.get(key) == b.get(key), (run.name, key)


def _stage(plan: List[S.Run], run_id: str) -> int:
    """How many links the longest chain of inputs behind a run has (teachers: 0)."""
    by_id = {r.run_id: r for r in plan}
    return 1 + max((_stage(plan, d) for d in by_id[run_id].deps), default=-1)


def _iso(t: str) -> float:
    return time.mktime(time.strptime(t, "%Y-%m-%dT%H:%M:%S"))


@pytest.mark.slow
def test_no_run_started_before_the_runs_it_reads_had_finished(slurm, slurm_study):
    cfg, study, _ = slurm_study
    jobs = _jobs(study)
    times = {}
    for run_id, h in jobs.items():
        info = slurm_cluster.job_info(slurm, h["job_id"])
        assert info["JobState"] == "COMPLETED", (run_id, info)
        times[run_id] = (_iso(info["StartTime"]), _iso(info["EndTime"]))
    plan = S.build_plan(cfg)
    for run in plan:
        # its array is queued behind exactly the array tasks that the array's runs read ...
        members = [r for r in plan if jobs[r.run_id]["array_job"] == jobs[run.run_id]["array_job"]]
        reads = {jobs[d]["job_id"] for r in members for d in r.deps}
        assert set(jobs[run.run_id]["after"]) == reads, run.run_id
        for d in run.deps:
            # ... and started only once they had ended (SLURM's clock, one-second resolution)
            assert times[run.run_id][0] >= times[d][1], (run.run_id, d, times[run.run_id], times[d])
    # the file system agrees: a student's log begins after its teacher wrote result.json
    student = study / "runs" / "student_a0.1_T1_s0"
    teacher_done = (study / "runs" / "teacher_a0.1" / "checkpoint.pth").stat().st_mtime
    assert (student / "metrics.jsonl").stat().st_mtime >= teacher_done


# ------------------------------------------------------------------------------------------------
# a student cancelled mid-run resumes from its checkpoint
# ------------------------------------------------------------------------------------------------
RESUME = dict(TINY, name="resume", train_samples=1000, val_samples=200, student_epochs=3, alphas=[0.1],
              temperatures=[2], analysis=False, student_args=["--deterministic"], jobs=1)


def _epochs(run_dir: Path) -> List[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in rows if "epoch" in r and "event" not in r]


@pytest.mark.slow
def test_student_cancelled_mid_run_is_resubmitted_and_resumes(one_thread, slurm, tmp_path):
    require_fashion_mnist()
    student = "student_a0.1_T2_s0"
    ref = S.run_study(_config(tmp_path, RESUME), tmp_path / "local", progress=False, echo=lambda s: None)
    assert ref.ok
    cfg = _config(tmp_path, RESUME, SLURM_TABLE)
    study = tmp_path / "slurm"
    S.run_study(cfg, study, progress=False, echo=lambda s: None, wait=False)
    sdir = study / "runs" / student
    job = _jobs(study)[student]["job_id"]
    deadline = time.time() + 150
    while not (sdir / "checkpoint.pth").exists():  # its first epoch is done
        assert time.time() < deadline, slurm_cluster.job_info(slurm, job)
        time.sleep(0.05)
    slurm.run("scancel", job)
    while slurm_cluster.job_info(slurm, job)["JobState"] not in ("CANCELLED",):
        assert time.time() < deadline
        time.sleep(0.2)
    result = sdir / "result.json"
    assert not (result.exists() and json.loads(result.read_text()).get("status") == "done"), \
        "the student finished before it could be cancelled: make its epochs longer"
    done_before = len(_epochs(sdir))
    assert 1 <= done_before < RESUME["student_epochs"]
    messages: List[str] = []
    again = S.run_study(cfg, study, progress=False, echo=messages.append)
    assert again.ok, (again.failed, messages)
    assert again.launched == [student] and any("ended unfinished" in m for m in messages), messages
    relaunch = [x for x in _launches(study) if x["run_id"] == student]
    assert [x["resume"] for x in relaunch] == [False, True]
    assert relaunch[1]["argv"][-2:] == ["--resume", str(sdir.resolve() / "checkpoint.pth")]
    # submitted again alone: a new array of one task, the other runs untouched
    again_handle = _jobs(study)[student]
    assert again_handle["job_id"] != job and again_handle["array_job"] != job.split("_")[0]
    assert "#SBATCH --array=0\n" in Path(again_handle["script"]).read_text()
    assert slurm_cluster.job_info(slurm, again_handle["array_job"])["ArrayTaskId"] == "0"
    # the resumed run equals the uninterrupted one, epoch by epoch
    got, want = _epochs(sdir), _epochs(tmp_path / "local" / "runs" / student)
    assert [r["epoch"] for r in got] == list(range(RESUME["student_epochs"]))
    for a, b in zip(got, want):  # students evaluate after their last epoch only (--eval-every 0)
        assert (a["train_loss"], a.get("val_acc1"), a.get("val_per_class_acc")) == \
            (b["train_loss"], b.get("val_acc1"), b.get("val_per_class_acc")), a["epoch"]
    assert "val_acc1" in got[-1]
    ra = json.loads(result.read_text())
    rb = json.loads((tmp_path / "local" / "runs" / student / "result.json").read_text())
    assert (ra["val_acc1"], ra["val_per_class_acc"]) == (rb["val_acc1"], rb["val_per_class_acc"])


# ------------------------------------------------------------------------------------------------
# bad input: one line each, nothing submitted
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("table,message", [
    ({"partition": "gpu-a100"}, r"unknown SLURM partition 'gpu-a100'; known: debug"),
    ({"teacher": {"cpus_per_task": 999}}, r"\[launcher.teacher\] cpus_per_task = 999 .* at most \d+ CPUs"),
    ({"mem": "100T"}, r"\[launcher.(teacher|student|export)\] mem = 100T, but partition 'debug' nodes have at most"),
    ({"student": {"gpus_per_node": 1}}, r"\[launcher.student\] gpus_per_node = 1, but partition 'debug' nodes "
                                        r"have 0 GPU"),
    ({"time": "2:00:00"}, r"time = 2:00:00, but partition 'debug' allows at most 01:00:00"),
    ({"time": "soon"}, r"\[launcher\] time 'soon' is not a SLURM time"),
    ({"export": {"nodes": 2}}, r"\[launcher.export\] nodes = 2, but partition 'debug' has 1 node"),
    # what only SLURM knows: sbatch --test-only refuses it
    ({"extra_sbatch": ["--constraint=nosuchfeature"]}, r"\[launcher.teacher\] sbatch --test-only failed: .*"
                                                        r"Invalid feature specification"),
])
def test_bad_settings_give_one_line_and_submit_nothing(one_thread, slurm, tmp_path, capsys, table, message):
    import re

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(dict(TINY, launcher=dict(SLURM_TABLE, **table))))
    rc = S.main(["--config", str(path), "--out", str(tmp_path / "study"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert lines and all(ln.startswith("error: ") for ln in lines), err
    assert any(re.search(message, ln) for ln in lines), err
    assert "Traceback" not in err
    assert slurm.queue() == [] and not (tmp_path / "study" / "runs").exists()


def test_no_sbatch_on_path(one_thread, slurm, tmp_path, capsys, monkeypatch):
    path = tmp_path / "ok.json"
    path.write_text(json.dumps(dict(TINY, launcher=SLURM_TABLE)))
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    rc = S.main(["--config", str(path), "--out", str(tmp_path / "study"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("error: --launcher slurm needs the SLURM commands, but sbatch, squeue, scontrol, scancel "
                          "not found on PATH"), err
    monkeypatch.undo()
    assert slurm.queue() == [] and not (tmp_path / "study" / "runs").exists()


# ------------------------------------------------------------------------------------------------
# Ctrl-C: only this invocation's jobs, and only when asked
# ------------------------------------------------------------------------------------------------
def test_interrupt_cancels_only_this_invocations_jobs_when_asked(one_thread, slurm, tmp_path):
    script = tmp_path / "sleep.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --mem=50M\n#SBATCH --output={tmp_path}/%j.out\nsleep 300\n")
    others = slurm.run("sbatch", "--parsable", str(script)).stdout.strip()  # somebody else's job
    launcher = SlurmLauncher(SlurmSettings.from_mapping({"mem": "50M"}))
    ours = launcher.client.submit(str(script))
    launcher.submitted.append(ours)
    said: List[str] = []
    launcher.on_interrupt(said.append)  # stdin is not a terminal under pytest: no prompt, nothing cancelled
    assert said[-1].startswith(f"[study] left 1 SLURM job(s) queued or running ({ours})")
    launcher.on_interrupt(said.append, ask=lambda prompt: "n")  # declined: both keep running
    assert "left 1 SLURM job(s)" in said[-1] and f"scancel {ours}" in said[-1]
    assert set(slurm.queue()) == {others, ours}
    launcher.on_interrupt(said.append, ask=lambda prompt: "y")
    assert f"cancelled job(s) {ours}" in said[-1]
    deadline = time.time() + 30
    while ours in slurm.queue() and time.time() < deadline:
        time.sleep(0.2)
    assert slurm.queue() == [others]  # never anyone else's
    slurm.run("scancel", others)
