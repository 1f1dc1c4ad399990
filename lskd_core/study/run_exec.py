"""A run's process as the study and the advisor start it: its environment, and the check after it
ends (outputs present, ``result.json`` written for programs that do not write their own).

Shared by :mod:`lskd_core.study.runner` and :mod:`lskd_core.advise.runner`, the two layers that
start runs, so neither imports the other.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, Optional

from lskd_core.jsonio import BadJson, read_json_object, write_json
from lskd_core.study.config import StudyConfig
from lskd_core.study.plan import Run, plugin_root, run_dir
from lskd_core.study.state import RESULT, outputs_problem, record_checksums
from lskd_core.study.tasks import get_task

__all__ = ["child_env", "finish_run"]


def child_env(cfg: StudyConfig) -> Dict[str, str]:
    """The runs' environment: the checkout on PYTHONPATH, cores shared between concurrent runs."""
    env = dict(os.environ)
    root = plugin_root()
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if cfg.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        # Share the cores between concurrent runs instead of oversubscribing them.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cfg.jobs))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def finish_run(run: Run, study: Path, task: str, rc: int, wall: float) -> Optional[str]:
    """Check a finished process's outputs; write result.json for programs that do not. Returns an
    error message, or None when the run is done."""
    rdir = run_dir(study, run.run_id)
    if rc != 0:
        return f"exit status {rc}"
    if run.self_reporting:
        try:
            result = read_json_object(rdir / RESULT)
        except BadJson as exc:
            return str(exc)
        if result is None or result.get("status") != "done":
            return f"{RESULT} missing or not done after a zero exit status"
        return outputs_problem(run, rdir) or record_checksums(run, rdir)
    missing = outputs_problem(run, rdir) or record_checksums(run, rdir)
    if missing:
        return missing
    extra, err = get_task(task).complete_result(run, rdir)
    if err is not None:
        return err
    result = {"status": "done", "run_id": run.run_id, "kind": run.kind, "wall_time_s": round(wall, 3),
              "outputs": list(run.outputs), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
    write_json(rdir / RESULT, result)
    return None
