"""The local SLURM test cluster itself: jobs run, and ``--dependency=afterok`` orders them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import slurm_cluster

slurm = slurm_cluster.slurm  # the session fixture
pytestmark = [pytest.mark.slurm]


def _wait_gone(cluster: slurm_cluster.SlurmCluster, ids: list, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not set(ids) & set(cluster.queue()):
            return
        time.sleep(0.3)
    raise AssertionError(f"jobs {ids} still queued after {timeout} s: {cluster.queue()}")


def test_afterok_dependency_runs_in_order(slurm: slurm_cluster.SlurmCluster, tmp_path: Path) -> None:
    def job(name: str, seconds: float, *dep: str) -> str:
        script = tmp_path / f"{name}.sh"
        script.write_text("#!/bin/sh\n"
                          f"date +%s.%N > {tmp_path}/{name}.start\n"
                          f"sleep {seconds}\n"
                          f"date +%s.%N > {tmp_path}/{name}.end\n")
        argv = ["sbatch", "--parsable", "--job-name", name, "--cpus-per-task", "1", "--mem", "100M",
                "--output", str(tmp_path / f"{name}.out"), "--chdir", str(tmp_path)]
        if dep:
            argv.append(f"--dependency=afterok:{':'.join(dep)}")
        out = slurm.run(*argv, str(script)).stdout.strip()
        return out.split(";")[0]

    first = job("first", 2)
    second = job("second", 0.1, first)
    assert first.isdigit() and second.isdigit() and first != second
    # while the first runs, the second waits on its dependency (and not on resources: 2 of 1-CPU fit)
    deadline = time.time() + 30
    reason = ""
    while time.time() < deadline:
        info = slurm_cluster.job_info(slurm, second)
        reason = info.get("Reason", "")
        if slurm_cluster.job_info(slurm, first).get("JobState") == "RUNNING":
            break
        time.sleep(0.2)
    assert info["JobState"] == "PENDING" and reason == "Dependency", info
    _wait_gone(slurm, [first, second])
    t = {f"{n}.{e}": float((tmp_path / f"{n}.{e}").read_text()) for n in ("first", "second") for e in ("start", "end")}
    assert t["first.end"] <= t["second.start"], t
    assert t["first.end"] - t["first.start"] >= 1.9
    for jid in (first, second):
        info = slurm_cluster.job_info(slurm, jid)
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", info


def test_failed_parent_never_starts_afterok_child(slurm: slurm_cluster.SlurmCluster, tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\nexit 3\n")
    child = tmp_path / "child.sh"
    child.write_text(f"#!/bin/sh\ntouch {tmp_path}/child.ran\n")
    common = ["sbatch", "--parsable", "--mem", "100M", "--output", str(tmp_path / "%j.out")]
    parent_id = slurm.run(*common, str(bad)).stdout.strip()
    child_id = slurm.run(*common, f"--dependency=afterok:{parent_id}", "--kill-on-invalid-dep=yes",
                         str(child)).stdout.strip()
    _wait_gone(slurm, [parent_id, child_id])
    parent = slurm_cluster.job_info(slurm, parent_id)
    assert parent["JobState"] == "FAILED" and parent["ExitCode"] == "3:0", parent
    assert slurm_cluster.job_info(slurm, child_id)["JobState"] == "CANCELLED"
    assert not (tmp_path / "child.ran").exists()


@pytest.mark.slurm
def test_a_taken_port_is_replaced_by_another_pair(monkeypatch) -> None:
    """The fixture never learns a port by binding and releasing it: the daemon's own bind decides,
    and a pair with a port someone holds is replaced by a new draw."""
    if slurm_cluster.why_unavailable():
        pytest.skip(slurm_cluster.why_unavailable())
    import random
    import socket

    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    rng = random.Random(7)
    taken = slurm_cluster.pick_ports(rng, 1)[0]
    holder.bind(("0.0.0.0", taken))
    holder.listen()
    draws: list = []
    real_pick = slurm_cluster.pick_ports

    def pick(r, n=2):
        pair = [taken, real_pick(r, 1)[0]] if not draws else real_pick(r, n)
        draws.append(pair)
        return pair

    monkeypatch.setattr(slurm_cluster, "pick_ports", pick)
    try:
        cluster = slurm_cluster.start_cluster()
    finally:
        holder.close()
    try:
        assert len(draws) >= 2 and draws[0][0] == taken
        conf = cluster.conf.read_text()
        assert f"SlurmctldPort={taken}\n" not in conf and f"SlurmctldPort={draws[-1][0]}\n" in conf
        assert cluster.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle"
    finally:
        slurm_cluster.stop_cluster(cluster)
    # the ports drawn stay below the kernel's ephemeral range
    lo, hi = slurm_cluster._ephemeral_range()
    assert all(not lo <= p <= hi for p in slurm_cluster.pick_ports(random.Random(1), 50))
