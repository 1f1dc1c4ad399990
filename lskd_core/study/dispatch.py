"""Dispatching a study by hand: the commands of every run, in dependency order, for a cluster.

``--print-commands`` writes the manifest and each run's ``run_config.json`` (so that
``--report-only`` can later verify what was collected) and prints the commands; it starts nothing.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import List

from lskd_core.study.config import StudyConfig
from lskd_core.study.plan import build_plan, run_command, run_dir
from lskd_core.study.state import RUN_CONFIG, dep_fingerprints, inspect_run, write_manifest, write_run_config

__all__ = ["prepare_for_dispatch"]


def prepare_for_dispatch(cfg: StudyConfig, study_dir: "os.PathLike[str] | str") -> List[str]:
    """Write the manifest and each run's run_config.json (so ``--report-only`` can later verify the
    collected results) and return the commands, in dependency order."""
    study = Path(study_dir).resolve()
    plan = build_plan(cfg)
    study.mkdir(parents=True, exist_ok=True)
    write_manifest(study, cfg, plan)
    cmds = []
    for run in plan:
        argv = run_command(run, study, cfg)
        rdir = run_dir(study, run.run_id)
        state = inspect_run(run, study, dep_fingerprints(run, study), strict=False)
        if state.status in ("new", "restart") and not (rdir / RUN_CONFIG).exists():
            rdir.mkdir(parents=True, exist_ok=True)
            write_run_config(run, study, cfg, argv, None, launched_by="external")
        cmds.append(shlex.join(argv))
    return cmds
