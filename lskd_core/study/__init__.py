"""The alpha x T study: teachers for each alpha, KD students for each (alpha, T, seed), analyses, report.

``python -m lskd_core.study`` runs the experiment behind Table 2 of Chandrasegaran et al. (ICML
2022) on the user's own task and writes a report (:mod:`lskd_core.report`) that answers "smooth my
teacher or not, and at which temperature should I distil?" with the paper's evidence: the accuracy
grid (Table 2), the diffusion index (Eq. 1, Tables 3 / K.1), the S1/S2 agreement (Table G.1), the
teacher's entropy (Table H.1), the projections (Fig. 1), the soft-output profile (Fig. 2) and the
class-wise accuracy (Table I).

Every run is one separate process (``python -m vision_plugin.train`` / ``torch.distributed.run``,
``python -m vision_plugin.export_features``, ``fairseq-train`` ...): lskd_core never imports a plugin,
and the same plan can be dispatched by any scheduler (``--print-commands``) and collected back
(``--report-only``).

Modules: :mod:`~lskd_core.study.config` (settings), :mod:`~lskd_core.study.plan` (runs, ids,
hashes, commands), :mod:`~lskd_core.study.tasks` (task backends), :mod:`~lskd_core.study.state`
(run directories), :mod:`~lskd_core.study.launchers` (starting runs; :mod:`~lskd_core.study.launcher_slurm`
and :mod:`~lskd_core.study.slurm` for SLURM), :mod:`~lskd_core.study.runner`
(the loop), :mod:`~lskd_core.study.cli`.
"""

from lskd_core.study.cli import main
from lskd_core.study.config import StudyConfig, available_presets, load_config, read_config_file, read_preset
from lskd_core.study.dispatch import prepare_for_dispatch
from lskd_core.study.launcher_slurm import SlurmLauncher, SlurmSettings  # registers the "slurm" launcher
from lskd_core.study.launchers import LAUNCHERS, Handle, Launcher, LocalLauncher, SubprocessLauncher, make_launcher
from lskd_core.study.plan import (
    Run,
    build_plan,
    export_id,
    plan_commands,
    run_command,
    student_id,
    teacher_id,
    variant_student_id,
)
from lskd_core.study.runner import StudyOutcome, run_study
from lskd_core.study.state import (
                                   EVENT_LOG,
                                   LAUNCH,
                                   LAUNCH_LOG,
                                   MANIFEST,
                                   RESULT,
                                   RUN_CONFIG,
                                   RunState,
                                   fingerprint,
                                   inspect_run,
                                   write_manifest,
                                   write_run_config,
)
from lskd_core.study.tasks import TaskBackend, get_task

__all__ = [
    "StudyConfig", "load_config", "read_config_file", "read_preset", "available_presets",
    "Run", "build_plan", "run_command", "plan_commands", "teacher_id", "student_id", "variant_student_id", "export_id",
    "RunState", "inspect_run", "fingerprint", "write_run_config", "write_manifest",
    "RUN_CONFIG", "RESULT", "LAUNCH", "LAUNCH_LOG", "EVENT_LOG", "MANIFEST",
    "Launcher", "LocalLauncher", "SubprocessLauncher", "Handle", "LAUNCHERS", "make_launcher",
    "SlurmLauncher", "SlurmSettings",
    "StudyOutcome", "run_study", "prepare_for_dispatch", "main",
    "TaskBackend", "get_task",
]
