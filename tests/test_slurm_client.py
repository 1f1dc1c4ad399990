"""The SLURM client (lskd_core.study.slurm): time/memory parsing, batch scripts (run by bash
itself), state parsing, partition checks; then the same functions against the local SLURM:
submission, states, cancellation, requeue-resume and the checks that refuse before submitting."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurm_cluster

from lskd_core.study import slurm as sl

slurm = slurm_cluster.slurm  # the session fixture


# ------------------------------------------------------------------------------------------------
# pure functions
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,seconds", [
    ("90", 90 * 60), ("1:30", 90), ("01:30:00", 5400), ("2-0", 2 * 86400), ("2-1:30", 2 * 86400 + 5400),
    ("1-00:00:05", 86405), ("0:45", 45), ("UNLIMITED", None), ("infinite", None)])
def test_parse_time_matches_slurm_forms(text, seconds):
    # forms from sbatch(1) --time: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
    # days-hours:minutes, days-hours:minutes:seconds
    assert sl.parse_time_s(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "1:2:3:4", "0", "-5", "1h", "00:00:00", "2 days"])
def test_parse_time_refuses_garbage(bad):
    with pytest.raises(sl.SlurmError, match="not a SLURM time|is zero"):
        sl.parse_time_s(bad)


@pytest.mark.parametrize("text,mb", [("16G", 16384), ("4000", 4000), ("4000M", 4000), ("512K", 0.5),
                                     ("1T", 1048576), ("2g", 2048), ("1.5G", 1536), ("16GB", 16384)])
def test_parse_mem(text, mb):
    assert sl.parse_mem_mb(text) == pytest.approx(mb)


@pytest.mark.parametrize("bad", ["lots", "", "G16", "-1G", "16 X"])
def test_parse_mem_refuses_garbage(bad):
    with pytest.raises(sl.SlurmError, match="not a SLURM memory size"):
        sl.parse_mem_mb(bad)


def test_exit_codes_and_parsable():
    assert sl.parse_exit_code("0:0") == 0
    assert sl.parse_exit_code("3:0") == 3
    assert sl.parse_exit_code("0:15") == 128 + 15  # SIGTERM, as a shell reports it
    assert sl.parse_exit_code("") is None
    assert sl.parse_sbatch_parsable("1234\n") == "1234"
    assert sl.parse_sbatch_parsable("1234;cluster-a\n") == "1234"
    with pytest.raises(sl.SlurmError, match="did not print a job id"):
        sl.parse_sbatch_parsable("sbatch: error: nope")


def test_parse_scontrol_and_squeue_records():
    line = ("JobId=42 JobName=lskd-x UserId=root(0) JobState=FAILED Reason=NonZeroExitCode Dependency=(null) "
            "ExitCode=3:0 RunTime=00:00:01 StartTime=2026-01-01T00:00:01 EndTime=2026-01-01T00:00:02 "
            "Command=/tmp/a b.sh")
    st = sl.parse_scontrol_job(line)
    assert (st.job_id, st.state, st.exit_code, st.reason) == ("42", "FAILED", 3, "NonZeroExitCode")
    assert st.start == "2026-01-01T00:00:01" and st.finished and not st.active
    assert sl.parse_scontrol_job("slurm_load_jobs error: Invalid job id specified") is None
    q = sl.parse_squeue("7|PENDING|Dependency\n8|RUNNING|None\n")
    assert q["7"].state == "PENDING" and q["7"].reason == "Dependency" and q["7"].active and q["8"].active
    assert [(j.job_id, j.state, j.reason) for j in q.values()] == [("7", "PENDING", "Dependency"),
                                                                   ("8", "RUNNING", "None")]
    assert sl.parse_squeue("12_3|running\n")["12_3"].job_id == "12_3"  # no reason field: an array task's id kept
    acct = sl.parse_sacct("9|CANCELLED by 0|0:15|2026-01-01T00:00:00|2026-01-01T00:01:00\n")
    assert acct["9"].state == "CANCELLED" and acct["9"].exit_code == 143


def test_gres_gpu_counts():
    assert sl.gpus_in_gres("gpu:a100:8(S:0-1)") == 8
    assert sl.gpus_in_gres("gpu:4,gpu:tesla:2") == 6
    assert sl.gpus_in_gres("(null)") == 0
    assert sl.gpus_in_gres("craynetwork:4,gpu:2") == 2


# A partition of two 8-GPU nodes, in scontrol's one-line format.
GPU_PART = ("PartitionName=gpu AllowGroups=ALL Default=NO MaxNodes=2 MaxTime=2-00:00:00 MinNodes=0 "
            "Nodes=g[01-02] State=UP TotalCPUs=128 TotalNodes=2 MaxMemPerNode=UNLIMITED MaxCPUsPerNode=UNLIMITED")
GPU_NODES = [f"NodeName=g0{i} Arch=x86_64 CoresPerSocket=32 CPUAlloc=0 CPUTot=64 Gres=gpu:a100:8(S:0-1) "
             f"RealMemory=515000 Sockets=2 State=IDLE Partitions=gpu" for i in (1, 2)]
GPU_NODES.append("NodeName=c01 CPUTot=256 Gres=(null) RealMemory=2000000 Partitions=cpu")


def test_check_resources_against_a_gpu_partition():
    part = sl.partition_from_scontrol(GPU_PART, GPU_NODES)
    assert (part.max_time_s, part.max_nodes, part.total_nodes) == (2 * 86400, 2, 2)
    # the CPU-only node is not in this partition
    assert (part.node_cpus, part.node_mem_mb, part.node_gpus) == (64, 515000, 8)
    fits = sl.Resources(nodes=2, gpus_per_node=8, cpus_per_task=64, mem="500G", time="1-12:00:00")
    assert sl.check_resources(fits, part, "teacher") == []
    too_much = sl.Resources(nodes=3, gpus_per_node=16, cpus_per_task=65, mem="600G", time="3-00:00:00")
    errs = sl.check_resources(too_much, part, "teacher")
    assert len(errs) == 5, errs
    for word in ("nodes = 3", "cpus_per_task = 65", "mem = 600G", "gpus_per_node = 16", "time = 3-00:00:00"):
        assert sum(word in e for e in errs) == 1, (word, errs)
    assert all(e.startswith("[launcher.teacher]") and "\n" not in e for e in errs)
    # 8 tasks per node (fairseq over srun) x 9 CPUs each do not fit 64 CPUs
    assert sl.check_resources(sl.Resources(cpus_per_task=9), part, "student", ntasks_per_node=8)


def test_resources_from_mapping_names_the_bad_key():
    r = sl.Resources.from_mapping({"nodes": 2, "gpus_per_node": 8, "mem": "64G", "time": "2:00:00",
                                   "setup": ["module load cuda"], "extra_sbatch": ["--constraint=a100"]})
    assert (r.nodes, r.gpus_per_node, r.mem, r.setup) == (2, 8, "64G", ["module load cuda"])
    for bad, word in [({"gpus": 1}, "unknown key"), ({"nodes": 0}, "nodes must be"), ({"mem": "x"}, "memory size"),
                      ({"time": "soon"}, "SLURM time"), ({"setup": "module load x"}, "list of strings"),
                      ({"extra_sbatch": ["#SBATCH -x"]}, "extra_sbatch"), ({"cpus_per_task": True}, "cpus_per_task")]:
        with pytest.raises(sl.SlurmError, match=word):
            sl.Resources.from_mapping(bad, "launcher.teacher")


def test_launch_command_for_multi_gpu_training():
    argv = ["/venv/bin/python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "8",
            "-m", "vision_plugin.train", "--epochs", "90"]
    one_node = sl.Resources(gpus_per_node=8)
    assert sl.launch_command(argv, one_node, "torch") == argv  # single node: torchrun as the runner built it
    plain = ["/venv/bin/python", "-m", "vision_plugin.train", "--epochs", "90"]
    two = sl.launch_command(plain, sl.Resources(nodes=2, gpus_per_node=8), "torch")
    assert two[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert two[2:5] == ["/venv/bin/python", "-m", "torch.distributed.run"]
    assert "--nnodes=2" in two and "--nproc-per-node=8" in two and "--rdzv-backend=c10d" in two
    assert two[-4:] == ["-m", "vision_plugin.train", "--epochs", "90"]
    assert sl.launch_command(argv, sl.Resources(nodes=2, gpus_per_node=8), "torch") == two
    fs = sl.launch_command(["fairseq-train", "data"], sl.Resources(nodes=2, gpus_per_node=4), "fairseq")
    assert fs[0] == "srun" and "--distributed-world-size=8" in fs
    assert sl.tasks_per_node(sl.Resources(nodes=2, gpus_per_node=4), "fairseq") == 4
    assert sl.launch_command(["fairseq-train", "data"], sl.Resources(gpus_per_node=4), "fairseq") == \
        ["fairseq-train", "data"]  # one node: fairseq uses every visible GPU itself


def _script_argv(tmp_path: Path) -> list:
    return [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", "a b", "it's", '"q"', "$HOME"]


def test_rendered_script_runs_under_bash_and_resumes_only_from_an_existing_checkpoint(tmp_path):
    ckpt = tmp_path / "run dir" / "checkpoint.pth"
    ckpt.parent.mkdir()
    options = sl.sbatch_options(sl.Resources(mem="1G", time="10", partition="p", extra_sbatch=["--constraint=x"]),
                                "lskd-x", str(tmp_path / "log"), str(tmp_path), 1)
    script = sl.render_script(_script_argv(tmp_path), options, setup=["export LSKD_SETUP_RAN=1"],
                              resume_arg=["--resume", str(ckpt)], resume_if=str(ckpt))
    for opt in ("--mem=1G", "--time=10", "--partition=p", "--constraint=x", "--requeue", "--open-mode=append"):
        assert f"#SBATCH {opt}\n" in script
    path = tmp_path / "job.sh"
    path.write_text(script)
    env = dict(os.environ, SLURM_JOB_ID="1")

    def run() -> list:
        import json

        out = subprocess.run(["bash", str(path)], capture_output=True, text=True, env=env, check=True).stdout
        return json.loads(out.splitlines()[-1])

    # bash itself is the oracle for quoting: every argument arrives exactly as given
    assert run() == ["a b", "it's", '"q"', "$HOME"]
    ckpt.write_bytes(b"x")
    assert run() == ["a b", "it's", '"q"', "$HOME", "--resume", str(ckpt)]


# ------------------------------------------------------------------------------------------------
# against the local SLURM
# ------------------------------------------------------------------------------------------------
def _client(cluster: slurm_cluster.SlurmCluster) -> sl.SlurmClient:
    return sl.SlurmClient(cluster.env)


def _wait_state(client: sl.SlurmClient, job_id: str, want: set, timeout: float = 60) -> sl.JobState:
    deadline = time.time() + timeout
    st = client.states([job_id])[job_id]
    while st.state not in want and time.time() < deadline:
        time.sleep(0.3)
        st = client.states([job_id])[job_id]
    assert st.state in want, st
    return st


@pytest.mark.slurm
def test_partition_as_slurm_reports_it(slurm):
    part = _client(slurm).partition(None)  # the default partition
    assert part.name == slurm.partition
    assert part.node_cpus == slurm.cpus and part.node_mem_mb == slurm.real_memory_mb
    assert part.node_gpus == 0 and part.max_time_s == sl.parse_time_s(slurm.max_time)
    with pytest.raises(sl.SlurmError, match=r"unknown SLURM partition 'nope'; known: debug"):
        _client(slurm).partition("nope")


@pytest.mark.slurm
def test_submit_states_cancel(slurm, tmp_path):
    c = _client(slurm)
    out = f"#SBATCH --output={tmp_path}/%j.out\n"  # not slurm-%j.out in the current directory
    ok = tmp_path / "ok.sh"
    ok.write_text("#!/bin/bash\n#SBATCH --mem=50M\n" + out + "sleep 1\n")
    bad = tmp_path / "bad.sh"
    bad.write_text(f"#!/bin/bash\n#SBATCH --mem=50M\n#SBATCH --output={tmp_path}/bad.log\nexit 7\n")
    slow = tmp_path / "slow.sh"
    slow.write_text("#!/bin/bash\n#SBATCH --mem=50M\n" + out + "sleep 120\n")
    j_ok, j_bad = c.submit(str(ok)), c.submit(str(bad))
    j_child = c.submit(str(ok), after=[j_bad])  # never runs: its parent fails
    j_slow = c.submit(str(slow))
    assert _wait_state(c, j_ok, {"COMPLETED"}).exit_code == 0
    st = _wait_state(c, j_bad, {"FAILED"})
    assert st.exit_code == 7
    assert _wait_state(c, j_child, {"CANCELLED"}).reason == "DependencyNeverSatisfied"
    _wait_state(c, j_slow, {"RUNNING"})
    c.cancel([j_slow])
    st = _wait_state(c, j_slow, {"CANCELLED"})
    assert st.exit_code == 128 + 15 or st.exit_code == 0, st
    assert c.states(["987654"])["987654"].state == "UNKNOWN"


@pytest.mark.slurm
def test_requeued_job_resumes_from_its_checkpoint(slurm, tmp_path):
    """Preemption with requeue runs the same script again: the second start sees the checkpoint."""
    c = _client(slurm)
    ckpt = tmp_path / "checkpoint.pth"
    log = tmp_path / "job.log"
    prog = [sys.executable, "-c",
            "import sys, time, pathlib; print('ARGS', sys.argv[1:], flush=True); "
            "p = pathlib.Path(sys.argv[1]); p.write_text('epoch1') if len(sys.argv) == 2 else None; "
            "time.sleep(60 if len(sys.argv) == 2 else 0)", str(ckpt)]
    options = sl.sbatch_options(sl.Resources(mem="100M"), "lskd-requeue", str(log), str(tmp_path), 1)
    script = tmp_path / "job.sh"
    script.write_text(sl.render_script(prog, options, resume_arg=["--resume", str(ckpt)], resume_if=str(ckpt)))
    job = c.submit(str(script))
    _wait_state(c, job, {"RUNNING"})
    deadline = time.time() + 30
    while not ckpt.exists() and time.time() < deadline:
        time.sleep(0.2)
    slurm.run("scontrol", "requeue", job)  # what preemption with PreemptMode=REQUEUE does
    # SLURM holds a requeued batch job back for two minutes (reason BeginTime): let it go now
    _wait_state(c, job, {"PENDING"})
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    _wait_state(c, job, {"COMPLETED"})
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("ARGS")]
    assert lines == [f"ARGS [{str(ckpt)!r}]", f"ARGS [{str(ckpt)!r}, '--resume', {str(ckpt)!r}]"], log.read_text()


def test_multi_node_script_expands_the_rendezvous_under_bash(tmp_path):
    """Two 8-GPU nodes: srun starts one torchrun agent per node, rendezvous on the first node of
    the allocation. srun and scontrol are stand-ins that print what they were given."""
    import json

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f"#!/bin/sh\nexec {sys.executable} -c "
                                  "'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n")
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'gpu07\\ngpu08\\n'\n")
    for f in ("srun", "scontrol"):
        (bin_dir / f).chmod(0o755)
    res = sl.Resources(nodes=2, gpus_per_node=8, cpus_per_task=64)
    argv = ["/venv/bin/python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "16",
            "-m", "vision_plugin.train", "--output-dir", "/runs/a b"]
    command = sl.launch_command(argv, res, "torch")
    script = sl.render_script(command, sl.sbatch_options(res, "x", str(tmp_path / "log"), None, 1))
    assert "#SBATCH --gres=gpu:8\n" in script and "#SBATCH --nodes=2\n" in script
    assert "OMP_NUM_THREADS" not in script  # torchrun sets it per process
    (tmp_path / "job.sh").write_text(script)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242",
               SLURM_JOB_NODELIST="gpu[07-08]")
    out = subprocess.run(["bash", str(tmp_path / "job.sh")], capture_output=True, text=True, env=env, check=True)
    got = json.loads(out.stdout.splitlines()[-1])
    assert got[:4] == ["--kill-on-bad-exit=1", "/venv/bin/python", "-m", "torch.distributed.run"]
    assert "--rdzv-id=4242" in got and "--rdzv-endpoint=gpu07:29500" in got
    assert "--nnodes=2" in got and "--nproc-per-node=8" in got
    assert got[-4:] == ["-m", "vision_plugin.train", "--output-dir", "/runs/a b"]
