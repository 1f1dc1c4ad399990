"""SLURM job states and the parsers of SLURM's command output (pure functions, no command run).

:mod:`lskd_core.study.slurm` re-exports every name here; see its docstring for why the study talks
to SLURM through its own commands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional


class SlurmError(ValueError):
    """Bad SLURM settings or a SLURM command that refused: one line naming the problem and the remedy."""


def parse_kv_line(line: str) -> Dict[str, str]:
    """One ``scontrol show ... -o`` record. Values never contain spaces in the fields we read."""
    return {m.group(1): m.group(2) for m in re.finditer(r"(?:^|\s)([A-Za-z][\w:/.]*)=(\S*)", line)}


def gpus_in_gres(gres: str) -> int:
    """GPUs in a node's ``Gres=gpu:a100:8(S:0-1),gpu:2`` field."""
    n = 0
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            n += int(parts[-1])
    return n


# ------------------------------------------------------------------------------------------------
# job states
# ------------------------------------------------------------------------------------------------
# SLURM job states -> what the study does with them
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
          "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "STOPPED", "RESV_DEL_HOLD", "PREEMPTED"}
FINISHED_OK = {"COMPLETED"}
FINISHED_BAD = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
                "REVOKED", "SPECIAL_EXIT"}


@dataclass
class JobState:
    job_id: str
    state: str  # SLURM's JobState (``CANCELLED`` without "by 0"), or UNKNOWN when SLURM forgot the job
    exit_code: Optional[int] = None  # the batch script's exit status (128+signal when killed)
    reason: str = ""
    start: str = ""
    end: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_OK or self.state in FINISHED_BAD


def parse_exit_code(text: str) -> Optional[int]:
    """scontrol's ``ExitCode=status:signal`` -> a shell-style status (128+signal when signalled)."""
    m = re.fullmatch(r"(\d+):(\d+)", text.strip())
    if not m:
        return None
    status, sig = int(m.group(1)), int(m.group(2))
    return 128 + sig if sig else status


def parse_squeue(out: str) -> Dict[str, JobState]:
    """``squeue -h -o '%i|%T|%r'`` lines -> states (array/het job suffixes kept as SLURM prints them)."""
    states = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            states[parts[0]] = JobState(parts[0], parts[1].upper(), reason=parts[2] if len(parts) > 2 else "")
    return states


def parse_scontrol_job(out: str) -> Optional[JobState]:
    """``scontrol show job -o ID`` -> its state, or None when SLURM does not know the job."""
    fields = parse_kv_line(out)
    if "JobId" not in fields or "JobState" not in fields:
        return None
    return JobState(fields["JobId"], fields["JobState"].upper(), parse_exit_code(fields.get("ExitCode", "")),
                    fields.get("Reason", ""), fields.get("StartTime", ""), fields.get("EndTime", ""))


def parse_sacct(out: str) -> Dict[str, JobState]:
    """``sacct -n -P -X -o JobID,State,ExitCode,Start,End`` (only where accounting exists)."""
    states = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 3 and parts[0]:
            state = parts[1].split()[0].upper() if parts[1] else "UNKNOWN"  # "CANCELLED by 0"
            states[parts[0]] = JobState(parts[0], state, parse_exit_code(parts[2]),
                                        start=parts[3] if len(parts) > 3 else "", end=parts[4] if len(parts) > 4 else "")
    return states


def parse_sbatch_parsable(out: str) -> str:
    """``sbatch --parsable`` prints ``jobid`` or ``jobid;cluster``."""
    first = out.strip().splitlines()[-1] if out.strip() else ""
    job_id = first.split(";")[0].strip()
    if not job_id.isdigit():
        raise SlurmError(f"sbatch did not print a job id (got {out.strip()[:200]!r})")
    return job_id
