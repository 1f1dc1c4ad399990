"""The plan: runs, their ids and hashes, and their exact commands.

This module is THE one place run ids (:func:`teacher_id`, :func:`student_id`, :func:`export_id`,
and the task backends' ids built from them) and run hashes are built; the report imports them
from here.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from lskd_core.jsonio import num, sha256_json
from lskd_core.study.config import VARIANT_ARMS, arm_setting
from lskd_core.study.provenance import run_provenance
from lskd_core.study.registry import get_task

if TYPE_CHECKING:
    from lskd_core.study.config import StudyConfig

__all__ = ["Run", "teacher_id", "student_id", "variant_student_id", "VARIANT_ARMS", "arm_setting", "export_id", "eta_reference_id", "cache_id", "match_id", "matched_id", "matched_key",
           "teacher_seed_list", "paired_teacher_seed", "teacher_run_id", "run_dir", "build_plan", "run_command",
           "plan_commands", "plugin_root", "checkout_with_plugins", "STUDY_TOKEN", "num"]

#: Study-root placeholder used in the hashed (defining) form of a command, so that moving a study
#: directory, or collecting it on another machine, does not invalidate its runs.
STUDY_TOKEN = "{study}"
# Flags that say *how* a run is executed, not *what* it computes: excluded from the hash so that a
# grid trained on a GPU cluster can be reported on a laptop (and a run moved to more workers is
# not retrained). --output-dir/--out/--save-dir are the run directory itself. Value: number of
# arguments the flag takes.
_EXECUTION_FLAGS = {"--device": 1, "--workers": 1, "--print-freq": 1, "--resume": 1, "--output-dir": 1,
                    "--out": 1, "--save-dir": 1, "--num-workers": 1, "--cpu": 0, "--results-path": 1,
                    "--no-progress": 0, "--data-buffer-size": 1}


# ------------------------------------------------------------------------------------------------
# run ids
# ------------------------------------------------------------------------------------------------
def teacher_id(alpha: float, teacher_seed: Optional[int] = None) -> str:
    """``teacher_a{alpha}``; with several teachers per alpha (``teacher_seeds`` > 1) the teacher's
    seed is part of the id (``teacher_a{alpha}_ts{seed}``), so a one-teacher study keeps its ids."""
    base = f"teacher_a{num(alpha)}"
    return base if teacher_seed is None else f"{base}_ts{teacher_seed}"


def student_id(alpha: float, temperature: float, seed: int) -> str:
    return f"student_a{num(alpha)}_T{num(temperature)}_s{seed}"


def variant_student_id(alpha: float, temperature: float, seed: int, arm: str) -> str:
    """A student of variant arm ``arm``: the grid's id with the arm's tag (``student_a0.1_T2_s0_ttm``)."""
    return f"{student_id(alpha, temperature, seed)}_{VARIANT_ARMS[arm][2]}"


def export_id(model_run_id: str, split: str) -> str:
    return f"export_{model_run_id}_{split}"


def eta_reference_id(model_run_id: str) -> str:
    """A student's val export with the training val cap, for ``eta_during_training`` when the
    analysis export (:func:`export_id`) holds other samples (``analysis_val_samples``)."""
    return f"export_{model_run_id}_val_eta_reference"


def cache_id(teacher_run_id: str) -> str:
    """The teacher-cache run of a teacher (its outputs on every recorded training view)."""
    return f"cache_{teacher_run_id}"


def match_id(teacher_seed: Optional[int] = None) -> str:
    """The entropy-matching run (App. H) of the teachers with one seed (``match`` for one teacher)."""
    return "match" if teacher_seed is None else f"match_ts{teacher_seed}"


def matched_key(ls_alpha: float, ls_temperature: float) -> str:
    """Key of one matched pair in ``matched.json``'s ``temperatures``: the LS teacher's cell."""
    return f"a{num(ls_alpha)}_T{num(ls_temperature)}"


def matched_id(plain_alpha: float, ls_alpha: float, ls_temperature: float, seed: int) -> str:
    """A student of the plain teacher at the T' whose entropy equals the LS teacher's at ``ls_temperature``."""
    return f"matched_a{num(plain_alpha)}_for_{matched_key(ls_alpha, ls_temperature)}_s{seed}"


def teacher_seed_list(cfg: "StudyConfig") -> List[int]:
    """The teachers' seeds of every alpha: ``teacher_seed + k`` for k < ``teacher_seeds``."""
    return [cfg.teacher_seed + k for k in range(cfg.teacher_seeds)]


def paired_teacher_seed(cfg: "StudyConfig", seed: int) -> int:
    """The teacher seed a student seed distils from: the i-th student seed (in ``seed_list``) gets
    teacher ``i mod teacher_seeds``, so every teacher has students and seeds pair across alphas."""
    return teacher_seed_list(cfg)[cfg.seed_list.index(seed) % cfg.teacher_seeds]


def teacher_run_id(cfg: "StudyConfig", alpha: float, teacher_seed: int) -> str:
    """The run id of the teacher of ``alpha`` with ``teacher_seed`` (the seed is in the id only
    when the study trains several teachers per alpha)."""
    return teacher_id(alpha, teacher_seed if cfg.teacher_seeds > 1 else None)


def run_dir(study: Path, run_id: str) -> Path:
    return study / "runs" / run_id


# ------------------------------------------------------------------------------------------------
# runs
# ------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One process of the study.

    ``program``: ``("module", "vision_plugin.train")`` runs ``python -m ...``; ``("exe", "fairseq-train")``
    runs a console script. ``args`` may contain ``{study}`` (the study root) and ``{run}`` (this
    run's directory); they are substituted when the command is built, and kept symbolic in the hash.
    ``outputs``: files (relative to the run dir) that must exist once the run is done.
    ``self_reporting``: the program writes result.json itself (the vision trainer); otherwise the
    study writes it after a zero exit status and a check of ``outputs``.
    """

    run_id: str
    kind: str  # teacher | cache | student | match | matched | export | prepare | generate
    program: Tuple[str, str]
    args: List[str]
    deps: List[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    outputs: List[str] = field(default_factory=list)
    self_reporting: bool = False
    distributed: bool = False  # launched through torch.distributed.run when nproc > 1
    resume_flag: Optional[str] = "--resume"  # how to resume from {run}/checkpoint.pth (None: program resumes itself)
    hash: str = ""

    def defining(self, nproc: int) -> dict:
        """The hashed description: program + args without execution-only flags."""
        args = []
        skip = 0
        for a in self.args:
            if skip:
                skip -= 1
                continue
            if a in _EXECUTION_FLAGS:
                skip = _EXECUTION_FLAGS[a]
                continue
            args.append(a)
        d: dict = {"program": list(self.program), "args": args}
        if self.distributed and nproc > 1:
            d["nproc"] = nproc  # world size changes the global batch: a different experiment
        return d


def build_plan(cfg: "StudyConfig") -> List[Run]:
    """All runs of the study in dependency order (from the task backend), with their hashes filled
    in: a run's hash covers its defining command and the hashes of the runs it depends on."""
    runs = get_task(cfg.task).build_runs(cfg)
    by_id: Dict[str, Run] = {}
    for r in runs:
        if r.run_id in by_id:
            raise ValueError(f"duplicate run id {r.run_id!r} in the plan")
        for d in r.deps:
            if d not in by_id:
                raise AssertionError(f"run {r.run_id} depends on {d}, which is not planned before it")
        # provenance: the code and framework versions that execute it (lskd_core.study.provenance)
        r.hash = sha256_json({"run": r.defining(cfg.nproc), "deps": {d: by_id[d].hash for d in r.deps},
                              "provenance": run_provenance(r, cfg)})
        by_id[r.run_id] = r
    return runs


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------
def plugin_root() -> Optional[Path]:
    """The source checkout holding lskd_core (so ``python -m vision_plugin.train`` also works from a
    clone that was not pip-installed). Found by path, without importing any plugin."""
    return checkout_with_plugins(Path(__file__).resolve().parent.parent.parent)


def checkout_with_plugins(root: Path) -> Optional[Path]:
    """``root`` when it holds either plugin's source (a checkout may carry one of the two), else None."""
    if (root / "vision_plugin").is_dir() or (root / "fairseq_plugin").is_dir():
        return root
    return None


def _executable(name: str, python: str) -> str:
    """A console script of the runs' environment: next to its interpreter, else on PATH."""
    cand = Path(python).parent / name
    if cand.exists():
        return str(cand)
    return shutil.which(name) or name


def run_command(run: Run, study: Path, cfg: "StudyConfig", resume: bool = False) -> List[str]:
    """The exact argv of ``run`` (paths substituted, launcher prefix added)."""
    python = cfg.python or sys.executable
    rdir = run_dir(study, run.run_id)
    subs = {"{study}": str(study), "{run}": str(rdir)}
    subs.update(get_task(cfg.task).placeholders(run.args))

    # One pass over each argument: substituted text (e.g. an --out path holding "{run}") is never
    # scanned again for placeholders. Longest first, so no placeholder shadows a longer one.
    pattern = re.compile("|".join(re.escape(k) for k in sorted(subs, key=len, reverse=True)))

    def sub(a: str) -> str:
        return pattern.sub(lambda m: subs[m.group(0)], a)

    args = [sub(a) for a in run.args]
    if resume and run.resume_flag:
        args += [run.resume_flag, str(rdir / "checkpoint.pth")]
    kind, target = run.program
    if kind == "module":
        if run.distributed and cfg.nproc > 1:
            # torchrun's -m runs the plugin as an installed module on every rank.
            prefix = [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(cfg.nproc),
                      "-m", target]
        else:
            # One process: plain `python -m` saves torchrun's start-up (rendezvous, agent) on CPU.
            prefix = [python, "-m", target]
    else:
        prefix = [_executable(target, python)]
    return prefix + args


def plan_commands(plan: Sequence[Run], study: Path, cfg: "StudyConfig") -> List[str]:
    """Every run's command, shell-quoted, one string per run, in dependency order."""
    return [shlex.join(run_command(r, study, cfg)) for r in plan]
