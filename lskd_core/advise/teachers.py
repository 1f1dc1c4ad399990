"""Teachers the user already has (``--teacher ALPHA=CKPT``): installed as the study's teacher runs.

The checkpoint is copied into ``<study>/runs/<teacher id>/checkpoint.pth`` with the run's
``run_config.json`` (the plan's hash) and a ``result.json`` that records where it came from and
its sha256, so the study's caches and students (and the advisor's) use it as if the study had
trained it. A run dir that holds another checkpoint is moved aside, never overwritten. Loading
never executes code: ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from lskd_core.jsonio import BadJson, file_sha256, read_json_object, write_json
from lskd_core.study.config import StudyConfig
from lskd_core.study.plan import build_plan, run_dir, teacher_run_id
from lskd_core.study.state import RESULT, move_aside, record_checksums, write_run_config

__all__ = ["install_external_teachers", "checkpoint_num_classes"]


def checkpoint_num_classes(path: Path) -> Optional[int]:
    """The class count a trained checkpoint records (``num_classes``), else the rows of its last
    2-D weight (the classifier); ValueError naming the file when it cannot be read safely."""
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"teacher checkpoint {path} cannot be loaded safely ({first}); give a checkpoint "
                         "written by python -m vision_plugin.train") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("num_classes"), int):
        return int(obj["num_classes"])
    state: Any = obj.get("model", obj) if isinstance(obj, Mapping) else None
    if isinstance(state, Mapping):
        weights = [v for k, v in state.items() if str(k).endswith("weight") and getattr(v, "ndim", 0) == 2]
        if weights:
            return int(weights[-1].shape[0])
    return None


def install_external_teachers(cfg: StudyConfig, study: Path, teachers: Mapping[float, str]) -> Dict[str, Optional[int]]:
    """Install each given teacher as its alpha's teacher run; returns run id -> class count."""
    if not teachers:
        return {}
    if cfg.teacher_seeds > 1:
        raise ValueError(f"--teacher gives one teacher per alpha; teacher_seeds = {cfg.teacher_seeds} asks for "
                         "several: set teacher_seeds = 1")
    counts: Dict[str, Optional[int]] = {}
    paths = {}
    for alpha, ckpt in teachers.items():
        p = Path(ckpt)
        if not p.is_file():
            raise ValueError(f"--teacher {alpha:g}={ckpt}: no such file")
        paths[alpha] = p
        counts[teacher_run_id(cfg, alpha, cfg.teacher_seed)] = checkpoint_num_classes(p)
    known = {k: v for k, v in counts.items() if v is not None}
    if len(set(known.values())) > 1:
        return counts  # the caller names the mismatch before anything is installed
    by_id = {r.run_id: r for r in build_plan(cfg)}
    for alpha, p in paths.items():
        run = by_id[teacher_run_id(cfg, alpha, cfg.teacher_seed)]
        rdir = run_dir(study, run.run_id)
        digest = file_sha256(p)
        try:
            result = read_json_object(rdir / RESULT) or {}
        except BadJson:
            result = {}
        if result.get("external_sha256") == digest:
            continue
        if rdir.exists() and any(rdir.iterdir()):
            move_aside(rdir, "replaced")
        rdir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, rdir / "checkpoint.pth")
        write_run_config(run, study, cfg, ["external", str(p.resolve())], {}, launched_by="advise")
        record_checksums(run, rdir)
        write_json(rdir / RESULT, {"status": "done", "run_id": run.run_id, "kind": "teacher", "external": str(p.resolve()),
                                   "external_sha256": digest, "num_classes": counts[run.run_id],
                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return counts
