"""SLURM client for the study: sbatch scripts, submission, job states, cancellation and checks
against the partition, through the SLURM commands themselves (sbatch, squeue, scontrol, scancel).

Why not submitit: a study run is a command line, not a Python callable; submitit would pickle a
wrapper, read results back by unpickling (loading a file must never execute code here) and query
states through ``sacct``, which needs the accounting database that many clusters (and the test
cluster) do not have. ``sbatch --parsable`` + ``squeue``/``scontrol`` need nothing but the job id,
which the run dir records, so a later invocation can reconcile from disk.

Everything that does not run a command is a pure function (rendering, parsing, checking) and is
tested without a cluster.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from lskd_core.study.slurm_states import (
    ACTIVE,
    FINISHED_BAD,
    FINISHED_OK,
    JobState,
    SlurmError,
    gpus_in_gres,
    parse_exit_code,
    parse_kv_line,
    parse_sacct,
    parse_sbatch_parsable,
    parse_scontrol_job,
    parse_squeue,
)

# Job states and output parsers live in slurm_states; re-exported here (the client's public API).
__all__ = ["ACTIVE", "FINISHED_BAD", "FINISHED_OK", "JobState", "SlurmError", "gpus_in_gres", "parse_exit_code",
           "parse_kv_line", "parse_sacct", "parse_sbatch_parsable", "parse_scontrol_job", "parse_squeue"]

# ------------------------------------------------------------------------------------------------
# resources
# ------------------------------------------------------------------------------------------------
RESOURCE_KEYS = ("nodes", "gpus_per_node", "cpus_per_task", "mem", "time", "partition", "account", "qos",
                 "setup", "extra_sbatch", "array_parallelism")



@dataclass
class Resources:
    """What one run asks SLURM for. ``mem`` per node as SLURM writes it (``16G``); ``time`` in any
    SLURM form (``90``, ``1:30:00``, ``2-00:00:00``); ``setup``: shell lines run before the command
    (``module load cuda``, ``source venv/bin/activate``); ``extra_sbatch``: further ``#SBATCH``
    options (``--constraint=a100``); ``array_parallelism``: at most this many tasks of the kind's job
    array run at once (``sbatch --array=...%N``; None: as many as SLURM schedules)."""

    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem: Optional[str] = None
    time: Optional[str] = None
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    setup: List[str] = field(default_factory=list)
    extra_sbatch: List[str] = field(default_factory=list)
    array_parallelism: Optional[int] = None

    @classmethod
    def from_mapping(cls, d: Mapping, where: str = "launcher") -> "Resources":
        unknown = sorted(set(d) - set(RESOURCE_KEYS))
        if unknown:
            raise SlurmError(f"[{where}]: unknown key(s) {unknown}; known: {', '.join(RESOURCE_KEYS)}")
        r = cls()
        for k in ("nodes", "gpus_per_node", "cpus_per_task", "array_parallelism"):
            if k in d:
                v = d[k]
                if isinstance(v, bool) or not isinstance(v, int) or v < (1 if k != "gpus_per_node" else 0):
                    raise SlurmError(f"[{where}] {k} must be a {'non-negative' if k == 'gpus_per_node' else 'positive'}"
                                     f" integer, got {v!r}")
                setattr(r, k, v)
        for k in ("mem", "time", "partition", "account", "qos"):
            if k in d and d[k] is not None:
                v = d[k]
                if isinstance(v, bool) or not isinstance(v, (str, int)) or not str(v).strip():
                    raise SlurmError(f"[{where}] {k} must be a non-empty string, got {v!r}")
                setattr(r, k, str(v).strip())
        for k in ("setup", "extra_sbatch"):
            if k in d:
                v = d[k]
                if isinstance(v, str) or not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                    raise SlurmError(f"[{where}] {k} must be a list of strings, got {v!r}")
                setattr(r, k, list(v))
        if r.mem is not None:
            parse_mem_mb(r.mem, f"[{where}] mem")
        if r.time is not None:
            parse_time_s(r.time, f"[{where}] time")
        for line in r.extra_sbatch:
            if not line.startswith("-") or "\n" in line:
                raise SlurmError(f"[{where}] extra_sbatch entries are sbatch options such as '--constraint=a100', "
                                 f"got {line!r}")
        return r

    def merged(self, over: "Resources", keys: Iterable[str]) -> "Resources":
        """``self`` with the keys set in ``over`` replacing it (lists are appended)."""
        out = dataclasses.replace(self, setup=list(self.setup), extra_sbatch=list(self.extra_sbatch))
        for k in keys:
            v = getattr(over, k)
            setattr(out, k, getattr(out, k) + v if k in ("setup", "extra_sbatch") else v)
        return out


_MEM_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024 * 1024}


def parse_mem_mb(text: str, what: str = "mem") -> float:
    """SLURM memory (``--mem``): a number with an optional K/M/G/T suffix, megabytes by default."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTkmgt]?)[Bb]?\s*", str(text))
    if not m:
        raise SlurmError(f"{what} {text!r} is not a SLURM memory size (e.g. 16G, 4000M)")
    return float(m.group(1)) * _MEM_UNITS[(m.group(2) or "M").upper()]


def parse_time_s(text: str, what: str = "time") -> Optional[int]:
    """A SLURM time (``minutes``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``) in
    seconds; None for UNLIMITED/INFINITE."""
    t = str(text).strip()
    if t.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", t)
    if not m:
        raise SlurmError(f"{what} {text!r} is not a SLURM time (minutes, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        h, mi, s = (nums + [0, 0])[:3]
        total = int(days) * 86400 + h * 3600 + mi * 60 + s
    elif len(nums) == 1:  # minutes
        total = nums[0] * 60
    elif len(nums) == 2:  # MM:SS
        total = nums[0] * 60 + nums[1]
    else:  # HH:MM:SS
        total = nums[0] * 3600 + nums[1] * 60 + nums[2]
    if total <= 0:
        raise SlurmError(f"{what} {text!r} is zero; give the run's wall-time limit")
    return total


# ------------------------------------------------------------------------------------------------
# the batch script
# ------------------------------------------------------------------------------------------------
def sbatch_options(res: Resources, job_name: str, log_path: str, cwd: Optional[str], tasks_per_node: int) -> List[str]:
    """The ``#SBATCH`` options of one run (without its dependencies, which are given on sbatch's
    command line: they are only known at submission)."""
    opts = [f"--job-name={job_name}", f"--output={log_path}", "--open-mode=append",
            f"--nodes={res.nodes}", f"--ntasks-per-node={tasks_per_node}", f"--cpus-per-task={res.cpus_per_task}"]
    if cwd:
        opts.append(f"--chdir={cwd}")
    if res.gpus_per_node:
        opts.append(f"--gres=gpu:{res.gpus_per_node}")
    for key, opt in (("mem", "--mem"), ("time", "--time"), ("partition", "--partition"), ("account", "--account"),
                     ("qos", "--qos")):
        v = getattr(res, key)
        if v is not None:
            opts.append(f"{opt}={v}")
    # a requeued job (preemption, node failure) starts the same script again: it resumes (see render_script)
    opts.append("--requeue")
    return opts + list(res.extra_sbatch)


def _split_torch(argv: Sequence[str]) -> tuple:
    """``python -m MODULE ARGS`` or ``python -m torch.distributed.run [OPTS] -m MODULE ARGS`` ->
    (python, module, args)."""
    argv = list(argv)
    if len(argv) < 3 or argv[1] != "-m":
        raise SlurmError(f"cannot launch {argv[:3]} through torchrun: expected 'python -m MODULE ...'")
    if argv[2] != "torch.distributed.run":
        return argv[0], argv[2], argv[3:]
    i = argv.index("-m", 3)  # torchrun's own options end at its -m
    return argv[0], argv[i + 1], argv[i + 2:]


def launch_command(argv: Sequence[str], res: Resources, distributed: str) -> List[str]:
    """The command line inside the job, from the runner's command (``argv``).

    ``distributed``: ``"torch"`` (``python -m MODULE ...``, possibly already under ``torchrun
    --standalone``; one process per GPU: torchrun on one node, one torchrun agent per node through
    ``srun`` with a c10d rendezvous on several), ``"fairseq"`` (fairseq-train uses every GPU of its
    node itself; several nodes: ``srun`` with one task per GPU, fairseq reading its rank from
    SLURM's variables), or ``""`` (one process, as given)."""
    argv = list(argv)
    if distributed == "torch":
        if res.nodes > 1:
            python, module, rest = _split_torch(argv)
            return ["srun", "--kill-on-bad-exit=1", python, "-m", "torch.distributed.run", f"--nnodes={res.nodes}",
                    f"--nproc-per-node={max(1, res.gpus_per_node)}", "--rdzv-backend=c10d", "--rdzv-id=$SLURM_JOB_ID",
                    "--rdzv-endpoint=$LSKD_MASTER_ADDR:29500", "-m", module] + rest
        if res.gpus_per_node > 1 and argv[2:3] != ["torch.distributed.run"]:
            python, module, rest = _split_torch(argv)
            return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={res.gpus_per_node}",
                    "-m", module] + rest
        return argv  # one process, or torchrun --standalone as the runner built it
    if distributed == "fairseq" and res.nodes > 1:
        return ["srun", "--kill-on-bad-exit=1"] + argv + [f"--distributed-world-size={res.nodes * max(1, res.gpus_per_node)}",
                                                          "--distributed-port=12355"]
    return argv


def tasks_per_node(res: Resources, distributed: str) -> int:
    if distributed == "fairseq" and res.nodes > 1:
        return max(1, res.gpus_per_node)
    return 1


def _quote(arg: str) -> str:
    # $SLURM_JOB_ID / $LSKD_MASTER_ADDR are ours and must expand; everything else is quoted literally
    if re.fullmatch(r"--rdzv-(id|endpoint)=\$\w+(:\d+)?", arg):
        return '"' + arg + '"'
    return shlex.quote(arg)


def _command_lines(command: Sequence[str], resume_arg: Optional[Sequence[str]] = None,
                   resume_if: Optional[str] = None) -> List[str]:
    """The lines that start one run inside a job: its thread count, the rendezvous host, and the
    ``exec`` (with ``resume_arg`` appended when ``resume_if`` exists when the job starts)."""
    lines = []
    if command[0] != "srun" and "torch.distributed.run" not in command:
        lines.append('export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"')
    if any("$LSKD_MASTER_ADDR" in a for a in command):
        lines.append('LSKD_MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)')
    cmd = " ".join(_quote(a) for a in command)
    if resume_arg and resume_if:
        lines += ["RESUME=()",
                  f"if [ -f {shlex.quote(resume_if)} ]; then RESUME=({' '.join(shlex.quote(a) for a in resume_arg)}); fi",
                  f'exec {cmd} "${{RESUME[@]}}"']
    else:
        lines.append(f"exec {cmd}")
    return lines


def _prologue(options: Sequence[str], header: str) -> List[str]:
    lines = ["#!/bin/bash"] + [f"#SBATCH {o}" for o in options]
    lines += [f"# {ln}" for ln in header.splitlines()] if header else []
    return lines + ["set -eo pipefail"]


def render_script(command: Sequence[str], options: Sequence[str], setup: Sequence[str] = (),
                  resume_arg: Optional[Sequence[str]] = None, resume_if: Optional[str] = None,
                  header: str = "") -> str:
    """A bash batch script for one command. ``resume_arg`` is appended when the file ``resume_if``
    exists when the job starts: a job requeued after preemption (same script, same run dir) resumes
    from its checkpoint. A one-process command gets ``OMP_NUM_THREADS`` = its CPUs unless the
    environment sets it (torchrun and srun launches leave it to torchrun, which gives each process
    one thread)."""
    lines = _prologue(options, header)
    lines.append('echo "# $(date +%Y-%m-%dT%H:%M:%S) job $SLURM_JOB_ID on $(hostname)'
                 ' (restart count ${SLURM_RESTART_COUNT:-0})"')
    lines += list(setup) + _command_lines(command, resume_arg, resume_if)
    return "\n".join(lines) + "\n"


@dataclass
class ArrayTask:
    """One run of a job array: its task index, command, log, working directory and resume rule."""

    index: int
    name: str
    command: List[str]
    log: str
    cwd: str
    resume_arg: Optional[List[str]] = None
    resume_if: Optional[str] = None


#: Task indices per array: SLURM's default MaxArraySize is 1001 (indices 0-1000).
MAX_ARRAY_TASKS = 1000


def array_spec(indices: Sequence[int], parallelism: Optional[int] = None) -> str:
    """``sbatch --array`` of these task indices, runs of consecutive ones as ranges, and the
    throttle: ``[0, 1, 2, 5] , 2`` -> ``0-2,5%2``."""
    idx = sorted(set(int(i) for i in indices))
    if not idx:
        raise ValueError("a job array needs at least one task")
    parts, start = [], idx[0]
    for prev, cur in zip(idx, idx[1:] + [None]):
        if cur is not None and cur == prev + 1:
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = cur if cur is not None else start
    return ",".join(parts) + (f"%{parallelism}" if parallelism else "")


def render_array_script(tasks: Sequence[ArrayTask], options: Sequence[str], setup: Sequence[str] = (),
                        header: str = "") -> str:
    """A bash batch script for a job array: ``$SLURM_ARRAY_TASK_ID`` picks the task's run, whose
    output is appended to its own log (the run dir's ``stdout.log``, as a single job's is) and which
    starts in its own directory. A requeued task runs the same script with the same index, so it
    resumes from its run's checkpoint like a single job. ``options`` carry ``--array``."""
    lines = _prologue(options, header)
    lines.append('case "${SLURM_ARRAY_TASK_ID:-}" in')
    for t in tasks:
        lines.append(f"  {t.index}) LSKD_RUN={shlex.quote(t.name)}; LSKD_LOG={shlex.quote(t.log)}; "
                     f"LSKD_DIR={shlex.quote(t.cwd)} ;;")
    lines += ['  *) echo "array task ${SLURM_ARRAY_TASK_ID:-?} has no run in this script" >&2; exit 2 ;;', "esac",
              'exec >> "$LSKD_LOG" 2>&1',
              'cd "$LSKD_DIR"',
              'echo "# $(date +%Y-%m-%dT%H:%M:%S) job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} ($LSKD_RUN) on'
              ' $(hostname) (restart count ${SLURM_RESTART_COUNT:-0})"']
    lines += list(setup)
    lines.append('case "$SLURM_ARRAY_TASK_ID" in')
    for t in tasks:
        body = _command_lines(t.command, t.resume_arg, t.resume_if)
        lines.append(f"  {t.index})")
        lines += [f"    {ln}" for ln in body] + ["    ;;"]
    lines.append("esac")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# checks against the partition
# ------------------------------------------------------------------------------------------------
@dataclass
class Partition:
    name: str
    max_time_s: Optional[int]  # None: unlimited
    max_nodes: Optional[int]
    total_nodes: int
    node_cpus: int  # the largest node's CPUs
    node_mem_mb: float  # the largest node's RealMemory
    node_gpus: int  # the largest node's GPUs
    max_mem_per_node_mb: Optional[float] = None
    max_cpus_per_node: Optional[int] = None
    state: str = "UP"


def partition_from_scontrol(part_line: str, node_lines: Sequence[str]) -> Partition:
    """Build a :class:`Partition` from ``scontrol show partition -o NAME`` and ``scontrol show node -o``."""
    p = parse_kv_line(part_line)
    name = p.get("PartitionName", "?")
    nodes = [parse_kv_line(ln) for ln in node_lines if ln.strip()]
    nodes = [n for n in nodes if name in n.get("Partitions", "").split(",")]

    def opt_int(v: str) -> Optional[int]:
        return int(v) if v.isdigit() else None

    mt = p.get("MaxTime", "UNLIMITED")
    max_mem = p.get("MaxMemPerNode", "UNLIMITED")
    return Partition(
        name=name,
        max_time_s=parse_time_s(mt) if mt.upper() not in ("UNLIMITED", "INFINITE", "NONE") else None,
        max_nodes=opt_int(p.get("MaxNodes", "")),
        total_nodes=int(p.get("TotalNodes", "0") or 0),
        node_cpus=max((int(n.get("CPUTot", "0") or 0) for n in nodes), default=0),
        node_mem_mb=max((float(n.get("RealMemory", "0") or 0) for n in nodes), default=0.0),
        node_gpus=max((gpus_in_gres(n.get("Gres", "")) for n in nodes), default=0),
        max_mem_per_node_mb=float(max_mem) if max_mem.isdigit() else None,
        max_cpus_per_node=opt_int(p.get("MaxCPUsPerNode", "")),
        state=p.get("State", "UP"),
    )


def check_resources(res: Resources, part: Partition, kind: str, ntasks_per_node: int = 1) -> List[str]:
    """Every reason the partition cannot run this request (empty: it can). One line each."""
    where = f"[launcher.{kind}]"
    errs = []
    if res.nodes > part.total_nodes or (part.max_nodes is not None and res.nodes > part.max_nodes):
        errs.append(f"{where} nodes = {res.nodes}, but partition {part.name!r} has {part.total_nodes} node(s)"
                    + (f" (at most {part.max_nodes} per job)" if part.max_nodes is not None else ""))
    cpus = res.cpus_per_task * ntasks_per_node
    cpu_cap = min(part.node_cpus, part.max_cpus_per_node or part.node_cpus)
    if cpus > cpu_cap:
        errs.append(f"{where} cpus_per_task = {res.cpus_per_task} ({cpus} per node), but partition {part.name!r} "
                    f"nodes have at most {cpu_cap} CPUs")
    if res.mem is not None:
        mem = parse_mem_mb(res.mem, f"{where} mem")
        cap = min(part.node_mem_mb, part.max_mem_per_node_mb or part.node_mem_mb)
        if mem > cap:
            errs.append(f"{where} mem = {res.mem}, but partition {part.name!r} nodes have at most {cap:.0f}M")
    if res.gpus_per_node > part.node_gpus:
        errs.append(f"{where} gpus_per_node = {res.gpus_per_node}, but partition {part.name!r} nodes have "
                    f"{part.node_gpus} GPU(s) (gres gpu)")
    if res.time is not None and part.max_time_s is not None:
        t = parse_time_s(res.time, f"{where} time")
        if t is not None and t > part.max_time_s:
            errs.append(f"{where} time = {res.time}, but partition {part.name!r} allows at most "
                        f"{format_time(part.max_time_s)}")
    elif res.time is not None and parse_time_s(res.time) is None and part.max_time_s is not None:
        errs.append(f"{where} time = {res.time}, but partition {part.name!r} allows at most "
                    f"{format_time(part.max_time_s)}")
    return errs


def format_time(seconds: int) -> str:
    d, rem = divmod(int(seconds), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return (f"{d}-" if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


# ------------------------------------------------------------------------------------------------
# the commands
# ------------------------------------------------------------------------------------------------
class SlurmClient:
    """Runs the SLURM commands (``env``: their environment, e.g. ``SLURM_CONF``)."""

    def __init__(self, env: Optional[Mapping[str, str]] = None, timeout: float = 60):
        self.env = dict(env) if env is not None else None
        self.timeout = timeout

    def with_env(self, env: Mapping[str, str]) -> "SlurmClient":
        """The same client running its commands in ``env`` (sbatch hands it to the job)."""
        return SlurmClient(env, self.timeout)

    def _path(self) -> Optional[str]:
        return (self.env or {}).get("PATH") if self.env is not None else None

    def available(self) -> Optional[str]:
        """None when sbatch/squeue/scontrol/scancel are on PATH, else the one-line problem."""
        missing = [c for c in ("sbatch", "squeue", "scontrol", "scancel") if shutil.which(c, path=self._path()) is None]
        if missing:
            return (f"--launcher slurm needs the SLURM commands, but {', '.join(missing)} "
                    "not found on PATH (run on a cluster login node, or load the slurm module)")
        return None

    def _run(self, argv: Sequence[str], input_text: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
        try:
            r = subprocess.run(list(argv), input=input_text, capture_output=True, text=True, env=self.env,
                               timeout=self.timeout)
        except FileNotFoundError as exc:
            raise SlurmError(f"{argv[0]} not found on PATH ({exc})") from None
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{argv[0]} did not answer within {self.timeout:.0f} s (is slurmctld up?)") from None
        if check and r.returncode != 0:
            msg = (r.stderr.strip() or r.stdout.strip()).splitlines()
            raise SlurmError(f"{shlex.join(list(argv[:2]))} failed: {msg[-1] if msg else f'exit {r.returncode}'}")
        return r

    def partition(self, name: Optional[str]) -> Partition:
        """The named partition (the default one when None); SlurmError when unknown."""
        r = self._run(["scontrol", "show", "partition", "-o"] + ([name] if name else []), check=False)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("PartitionName=")]
        if name is None:
            lines = [ln for ln in lines if " Default=YES" in ln]
        if r.returncode != 0 or not lines:
            known = self.partition_names()
            if name is None:
                raise SlurmError("no partition given and the cluster has no default partition; set "
                                 f"launcher.partition (known: {', '.join(known) or 'none'})")
            raise SlurmError(f"unknown SLURM partition {name!r}; known: {', '.join(known) or 'none'} "
                             "(set launcher.partition)")
        nodes = self._run(["scontrol", "show", "node", "-o"]).stdout.splitlines()
        return partition_from_scontrol(lines[0], nodes)

    def partition_names(self) -> List[str]:
        r = self._run(["scontrol", "show", "partition", "-o"], check=False)
        return [parse_kv_line(ln).get("PartitionName", "") for ln in r.stdout.splitlines() if "PartitionName=" in ln]

    def test_only(self, script_path: str) -> None:
        """``sbatch --test-only``: slurmctld checks the script (account, qos, limits) without queuing it."""
        self._run(["sbatch", "--test-only", script_path])

    def submit(self, script_path: str, after: Sequence[str] = ()) -> str:
        """Queue the batch script; its job id (an array's job id for a script with ``--array``).
        ``after``: job ids it waits for (afterok; array tasks as ``123_4``); if one of them fails,
        SLURM cancels this job too."""
        argv = ["sbatch", "--parsable"]
        if after:
            argv += [f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"]
        return parse_sbatch_parsable(self._run(argv + [script_path]).stdout)

    def states(self, job_ids: Sequence[str]) -> Dict[str, JobState]:
        """Current state of each job: squeue for queued/running jobs, then ``scontrol show job`` for
        finished ones still in slurmctld's memory, then sacct where accounting exists; UNKNOWN last."""
        ids = [str(j) for j in job_ids]
        if not ids:
            return {}
        # -r: one line per array task ("123_4"), pending ones too (not "123_[4-7]")
        out = self._run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(ids), "-o", "%i|%T|%r"],
                        check=False).stdout
        found = {k: v for k, v in parse_squeue(out).items() if k in ids}
        for jid in ids:
            if jid in found and found[jid].active:
                continue
            r = self._run(["scontrol", "show", "job", "-o", jid], check=False)
            st = parse_scontrol_job(r.stdout) if r.returncode == 0 else None
            if st is not None:
                # an array task's record names its own internal JobId: keep the id we asked for
                found[jid] = dataclasses.replace(st, job_id=jid)
        rest = [j for j in ids if j not in found]
        if rest and shutil.which("sacct", path=self._path()):
            r = self._run(["sacct", "-n", "-P", "-X", "-j", ",".join(rest), "-o", "JobID,State,ExitCode,Start,End"],
                          check=False)
            if r.returncode == 0:
                found.update({k: v for k, v in parse_sacct(r.stdout).items() if k in rest})
        return {j: found.get(j, JobState(j, "UNKNOWN")) for j in ids}

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            self._run(["scancel"] + [str(j) for j in job_ids], check=False)
