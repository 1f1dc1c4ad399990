"""A single-node SLURM on localhost for tests: munged, slurmctld and slurmd from the Debian packages
(``slurm-wlm``, ``munge``; ``make setup`` installs them as root), everything under one temporary
directory.

Nothing is read from or written to /etc or /var: munged gets its own key, socket, pid, log and seed
paths; the daemons get ``-f <tmp>/slurm.conf`` and every SLURM command run by the tests gets
``SLURM_CONF`` pointing at it. Ports are drawn at random and the daemons' own bind decides: a pair
that is taken is replaced (:func:`start_cluster`), so two test sessions on one machine do not collide. The daemons run in the foreground (``-D``) as children of the test process and are
stopped by pid at the end.

Use it from a test module as::

    import slurm_cluster

    slurm = slurm_cluster.slurm  # the session fixture, under this module's namespace

    def test_x(slurm): ...
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
START_TIMEOUT_S = 60.0
PARTITION = "debug"
MAX_TIME = "01:00:00"  # the partition's time limit: a longer --time is refused (tests check it)
DEF_MEM_PER_CPU_MB = 512  # jobs without --mem get this much, so several 1-CPU jobs fit on the node


@dataclass
class SlurmCluster:
    """What a test needs: the environment for SLURM commands and the node's resources."""

    root: Path
    conf: Path
    env: Dict[str, str]
    node: str
    cpus: int
    real_memory_mb: int
    partition: str = PARTITION
    max_time: str = MAX_TIME
    procs: Dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a SLURM command against this cluster."""
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check,
                              timeout=timeout)

    def queue(self) -> List[str]:
        """Job ids still known to squeue (pending, running, completing)."""
        out = self.run("squeue", "-h", "-o", "%i").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def cancel_all(self, wait_s: float = 30) -> None:
        """Cancel every job of this (private) cluster and wait until the queue is empty."""
        self.run("scancel", "--user", _user(), check=False)
        deadline = time.time() + wait_s
        while self.queue() and time.time() < deadline:
            time.sleep(0.5)

    def log_tail(self, name: str, n: int = 20) -> str:
        try:
            lines = (self.root / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def why_unavailable() -> Optional[str]:
    """The reason a local SLURM cannot be started here, or None."""
    missing = [b for b in DAEMONS + CLIENTS if shutil.which(b) is None
               and not Path("/usr/sbin", b).exists()]
    if missing:
        return (f"SLURM/munge binaries not found ({', '.join(missing)}); as root run "
                "`apt-get install -y slurm-wlm munge` (make setup does it when run as root)")
    if os.geteuid() != 0:
        return "the local SLURM test cluster needs root (slurmd launches jobs as their user)"
    return None


def _which(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise FileNotFoundError(name)
    return found


# Ports: binding port 0 to learn a free port and releasing it races with every other process on the
# machine (the port can be taken before slurmctld binds it). Instead the daemons are given a random
# pair below the kernel's ephemeral range (which connect() draws from) and, if either daemon cannot
# bind its port, the cluster is started again with another pair: the daemon's own bind is the test.
PORT_RANGE = (12000, 30000)
START_ATTEMPTS = 6


class PortTaken(RuntimeError):
    """A daemon could not bind its port (someone else holds it): start again on other ports."""


def _ephemeral_range() -> tuple:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def pick_ports(rng: random.Random, n: int = 2) -> List[int]:
    """``n`` distinct ports in PORT_RANGE outside the ephemeral range."""
    lo_e, hi_e = _ephemeral_range()
    pool = [p for p in range(*PORT_RANGE) if not lo_e <= p <= hi_e]
    return rng.sample(pool, n)


def node_hardware() -> Dict[str, str]:
    """The node line slurmd itself reports (``slurmd -C``): CPUs, sockets, cores, RealMemory..."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("NodeName="))
    return dict(tok.split("=", 1) for tok in line.split())


def render_conf(root: Path, node: str, hw: Dict[str, str], ctld_port: int, slurmd_port: int,
                munge_socket: Path) -> str:
    node_fields = " ".join(f"{k}={hw[k]}" for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                                                     "ThreadsPerCore", "RealMemory") if k in hw)
    return "\n".join([
        "ClusterName=lskdtest",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd.log",
        f"PlugStackConfig={root}/plugstack.conf",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        f"DefMemPerCPU={DEF_MEM_PER_CPU_MB}",
        "SchedulerType=sched/backfill",
        "MpiDefault=none",
        "ReturnToService=2",
        "MailProg=/bin/true",
        # finished jobs stay visible to `scontrol show job` for an hour (there is no accounting DB)
        "MinJobAge=3600",
        "KillWait=5",
        "InactiveLimit=0",
        f"NodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} {node_fields} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes={node} Default=YES MaxTime={MAX_TIME} State=UP",
        "",
    ])


def _spawn(argv: List[str], log: Path, env: Dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _node_state(cluster: SlurmCluster) -> str:
    try:
        r = cluster.run("sinfo", "-h", "-N", "-n", cluster.node, "-o", "%T", check=False, timeout=10)
    except subprocess.TimeoutExpired:
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def start_cluster(timeout_s: float = START_TIMEOUT_S, attempts: int = START_ATTEMPTS) -> SlurmCluster:
    """Start munged, slurmctld and slurmd on a random pair of ports, again on another pair when a
    daemon finds its port taken; return once ``sinfo`` shows the node idle.

    Raises RuntimeError (with the daemons' last log lines) when the node does not come up.
    """
    rng = random.Random()  # seeded from the OS: two test sessions draw different pairs
    for attempt in range(attempts):
        try:
            return _start_cluster(pick_ports(rng), timeout_s)
        except PortTaken:
            if attempt == attempts - 1:
                raise RuntimeError(f"every port pair tried ({attempts}) was taken") from None
    raise AssertionError("unreachable")


def _port_taken(cluster: SlurmCluster) -> bool:
    logs = " ".join(cluster.log_tail(n, 40) + _read(cluster.root / f"{n}.out") for n in ("slurmctld", "slurmd"))
    return "Address already in use" in logs


def _start_cluster(ports: List[int], timeout_s: float) -> SlurmCluster:
    root = Path(tempfile.mkdtemp(prefix="lskd-slurm-"))
    os.chmod(root, 0o700)
    for d in ("state", "spool"):
        (root / d).mkdir()
    (root / "plugstack.conf").write_text("")
    key = root / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    os.chmod(key, 0o400)
    munge_socket = root / "munge.socket"
    hw = node_hardware()
    node = hw["NodeName"]
    conf = root / "slurm.conf"
    conf.write_text(render_conf(root, node, hw, ports[0], ports[1], munge_socket))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["SLURM_CONF"] = str(conf)
    cluster = SlurmCluster(root=root, conf=conf, env=env, node=node, cpus=int(hw["CPUs"]),
                           real_memory_mb=int(hw["RealMemory"]))
    try:
        cluster.procs["munged"] = _spawn(
            [_which("munged"), "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
             f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"],
            root / "munged.out", env)
        _wait_for(lambda: munge_socket.exists(), 15, "munged did not create its socket", cluster, "munged")
        cluster.procs["slurmctld"] = _spawn([_which("slurmctld"), "-D", "-i", "-f", str(conf)],
                                            root / "slurmctld.out", env)
        cluster.procs["slurmd"] = _spawn([_which("slurmd"), "-D", "-f", str(conf), "-N", node],
                                         root / "slurmd.out", env)
        _wait_for(lambda: _node_state(cluster) == "idle", timeout_s,
                  f"node {node} did not become idle", cluster, "slurmctld")
    except RuntimeError:
        taken = _port_taken(cluster)
        stop_cluster(cluster)
        if taken:
            raise PortTaken(f"ports {ports} taken") from None
        raise
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def _wait_for(cond, timeout_s: float, what: str, cluster: SlurmCluster, log: str) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for name, proc in cluster.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode} while starting; "
                                   f"its log:\n{cluster.log_tail(name)}\n{_read(cluster.root / (name + '.out'))}")
        if cond():
            return
        time.sleep(0.3)
    raise RuntimeError(f"{what} within {timeout_s:.0f} s; last lines of {log}.log:\n{cluster.log_tail(log)}")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


def stop_cluster(cluster: SlurmCluster, keep_dir: bool = False) -> None:
    """Cancel the jobs, stop slurmd, slurmctld and munged (by pid), remove the temporary directory."""
    if "slurmctld" in cluster.procs and cluster.procs["slurmctld"].poll() is None:
        try:
            cluster.cancel_all(wait_s=20)
        except (subprocess.SubprocessError, OSError):
            pass
    for name in ("slurmd", "slurmctld", "munged"):
        if name in cluster.procs:
            _stop(cluster.procs[name])
    if not keep_dir:
        shutil.rmtree(cluster.root, ignore_errors=True)


# One cluster per test session even when several modules bind the fixture (pytest keeps a
# separate fixture definition per module that imports it): a reference count stops it after the last.
_shared: Dict[str, object] = {"cluster": None, "users": 0, "error": None}


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A running single-node SLURM; the test is skipped with the reason where it cannot start."""
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    if _shared["error"]:
        pytest.fail(str(_shared["error"]))
    if _shared["cluster"] is None:
        try:
            t0 = time.time()
            cluster = start_cluster()
            cluster.env["LSKD_SLURM_START_S"] = f"{time.time() - t0:.1f}"
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            _shared["error"] = f"the local SLURM test cluster did not start: {exc}"
            pytest.fail(str(_shared["error"]))
        _shared["cluster"] = cluster
    _shared["users"] = int(_shared["users"]) + 1  # type: ignore[call-overload]
    cluster = _shared["cluster"]
    assert isinstance(cluster, SlurmCluster)
    try:
        yield cluster
    finally:
        _shared["users"] = int(_shared["users"]) - 1  # type: ignore[call-overload]
        if _shared["users"] == 0:
            stop_cluster(cluster)
            _shared["cluster"] = None


def job_info(cluster: SlurmCluster, job_id: str) -> Dict[str, str]:
    """``scontrol show job -o`` as a dict (JobState, StartTime, EndTime, ExitCode, ...)."""
    out = cluster.run("scontrol", "show", "job", "-o", job_id).stdout
    return dict(m.groups() for m in re.finditer(r"(\w[\w:/]*)=(\S*)", out))
