"""The study's progress bar (tqdm, or nothing) and its postfix: the runs in flight and their epoch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from lskd_core.study.plan import Run, run_dir

if TYPE_CHECKING:
    from lskd_core.study.config import StudyConfig

__all__ = ["make_bar", "running_postfix"]


class _NoBar:
    @staticmethod
    def write(msg: str) -> None:
        print(msg, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def make_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="study", unit="run", dynamic_ncols=True)


def epoch_progress(rdir: Path) -> Optional[int]:
    """Epochs finished so far by a running trainer (lines of its metrics.jsonl with an "epoch")."""
    try:
        with open(rdir / "metrics.jsonl", encoding="utf-8") as fh:
            return sum(1 for line in fh if '"epoch"' in line and '"event"' not in line)
    except OSError:
        return None


def running_postfix(running: Mapping[str, Any], study: Path, by_id: Mapping[str, Run], cfg: "StudyConfig") -> str:
    parts = []
    for run_id in running:
        run = by_id[run_id]
        ep = epoch_progress(run_dir(study, run_id)) if run.self_reporting else None
        total = cfg.teacher_epochs if run.kind == "teacher" else cfg.student_epochs
        parts.append(f"{run_id} ep {ep}/{total}" if ep is not None else run_id)
    return ", ".join(parts)
