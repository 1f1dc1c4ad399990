"""``--status``: where each run of a study stands, from its run dir and, for a run a detached
launcher (SLURM) still holds, from the launcher itself. Starts and changes nothing."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import List, Optional

from lskd_core.study.config import StudyConfig
from lskd_core.study.launchers import Launcher, make_launcher
from lskd_core.study.plan import build_plan, run_dir
from lskd_core.study.state import dep_fingerprints, inspect_run, read_launch

__all__ = ["study_status"]


def study_status(cfg: StudyConfig, study_dir: "os.PathLike[str] | str",
                 launcher: Optional[Launcher] = None) -> List[str]:
    """One line per run (``run_id  kind  state``), then a count per state."""
    study = Path(study_dir).resolve()
    launcher = launcher or make_launcher(cfg.launcher)
    plan = build_plan(cfg)
    width = max(len(r.run_id) for r in plan)
    lines: List[str] = []
    counts: Counter = Counter()
    for run in plan:
        handle = read_launch(run_dir(study, run.run_id))
        if handle is not None and handle.get("launcher") == launcher.name and "ended" not in handle \
                and launcher.detached:
            # not collected yet: the launcher knows better than the run dir (pending, running, ...)
            what = launcher.describe(handle)
            counts["in flight / not collected"] += 1
        else:
            state = inspect_run(run, study, dep_fingerprints(run, study), strict=False)
            what = state.status + (f" ({state.reason})" if state.reason else "")
            counts[state.status] += 1
        lines.append(f"{run.run_id:<{width}}  {run.kind:<8}  {what}")
    lines.append("; ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return lines
