"""The study's progress (tqdm on a terminal, plain lines in a log, or nothing) and its postfix:
the runs in flight and their epoch."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

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


class _LineBar(_NoBar):
    """Progress for a log file (stderr is not a terminal): a plain line at most every ``interval``
    seconds and at the end, instead of tqdm's carriage-return redraws, which a log keeps as one
    ever-growing line."""

    def __init__(self, total: int, interval: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.done, self.interval, self.clock = total, 0, interval, clock
        self.start = self.last = clock()
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.done += n
        self._maybe_print(force=self.done >= self.total)

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        # the runner refreshes the running runs' epochs while long runs train: a line every
        # interval then too, not only when a run finishes (a 10-minute teacher left the log silent)
        self.postfix = s
        self._maybe_print(force=False)

    def _maybe_print(self, force: bool) -> None:
        now = self.clock()
        if now - self.last >= self.interval or force:
            self.last = now
            running = f"; running: {self.postfix}" if self.postfix and self.done < self.total else ""
            print(f"[study] {self.done}/{self.total} runs done after {now - self.start:.0f} s{running}",
                  file=sys.stderr, flush=True)


def make_bar(total: int, enabled: bool) -> Any:
    """tqdm on a terminal, plain lines every 30 s in a log, nothing when disabled (--no-progress)."""
    if not enabled:
        return _NoBar()
    if not sys.stderr.isatty():
        return _LineBar(total)
    from tqdm import tqdm

    return tqdm(total=total, desc="study", unit="run", dynamic_ncols=True)


def epoch_progress(rdir: Path) -> Optional[int]:
    """Epochs finished so far by a running trainer (lines of its metrics.jsonl with an "epoch")."""
    try:
        with open(rdir / "metrics.jsonl", encoding="utf-8") as fh:
            return sum(1 for line in fh if '"epoch"' in line and '"event"' not in line)
    except OSError:
        return None


def fairseq_epoch_progress(rdir: Path) -> Optional[int]:
    """Epochs finished so far by a running ``fairseq-train`` (its end-of-epoch ``| train | epoch N``
    log lines in stdout.log; fairseq writes no metrics.jsonl)."""
    try:
        with open(rdir / "stdout.log", encoding="utf-8", errors="replace") as fh:
            return sum(1 for line in fh if "| train | epoch " in line)
    except OSError:
        return None


def running_postfix(running: Mapping[str, Any], study: Path, by_id: Mapping[str, Run], cfg: "StudyConfig") -> str:
    parts = []
    for run_id in running:
        run = by_id[run_id]
        if run.self_reporting:
            ep = epoch_progress(run_dir(study, run_id))
        elif tuple(run.program) == ("exe", "fairseq-train"):
            ep = fairseq_epoch_progress(run_dir(study, run_id))
        else:
            ep = None
        total = cfg.teacher_epochs if run.kind == "teacher" else cfg.student_epochs
        parts.append(f"{run_id} ep {ep}/{total}" if ep is not None else run_id)
    return ", ".join(parts)
