"""``python -m lskd_core.study`` / ``lskd-study``: parser, flag overrides, main."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from lskd_core.study.cli_errors import os_error_line
from lskd_core.study.cli_flags import add_progress_flag, add_settings, add_source_flags, settings_overrides
from lskd_core.study.config import check_models, load_config
from lskd_core.study.dispatch import prepare_for_dispatch
from lskd_core.study.registry import LAUNCHERS
from lskd_core.study.runner import StudyOutcome, run_study
from lskd_core.study.status import study_status

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lskd_core.study",
        description="Run the label-smoothing x KD-temperature study (teachers per alpha, students per "
                    "alpha x T x seed, analyses) and write a report. Settings: preset < --config file < flags.",
        epilog=EXIT_STATUS_HELP)
    add_source_flags(p)
    p.add_argument("--print-commands", action="store_true",
                   help="print every run's command (one per line, dependency order) and exit; also writes "
                        "each run dir's run_config.json so --report-only can verify the collected results")
    p.add_argument("--report-only", action="store_true",
                   help="launch nothing: write the report from the run dirs that are finished")
    add_progress_flag(p)
    p.add_argument("--launcher", choices=sorted(LAUNCHERS),
                   help="how runs are started (default: the config's launcher, else local); 'slurm' submits "
                        "each run as a batch job with its dependencies (settings: the config's [launcher] table)")
    p.add_argument("--status", action="store_true",
                   help="print where each run stands (queued/running jobs as the launcher sees them) and exit")
    p.add_argument("--no-wait", action="store_true",
                   help="with a detached launcher (slurm): exit once every run is submitted; run the same "
                        "command again to collect the results and write the report")
    add_settings(p)
    return p


def _print_commands(lines: Sequence[str]) -> int:
    try:
        for line in lines:
            print(line)
        sys.stdout.flush()
    except BrokenPipeError:  # `| head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


#: exit statuses (the parser's epilog says the same to users)
EXIT_STATUS_HELP = ("exit status: 0 = every run done (or queued, with --no-wait); 1 = some runs failed or were "
                    "blocked (listed in the summary and the report); 2 = bad input, nothing (more) launched: a "
                    "setting, a config file, the output directory (unwritable, read-only, full, a file or a "
                    "dangling symlink) or a study directory in use by another runner; 130 = interrupted")

# errno -> what the user can do about it
def main(argv: Optional[Sequence[str]] = None) -> int:
    """The study CLI. Our own errors (ValueError, e.g. a bad setting or a locked study) and the OS
    errors a user can cause print one line each and exit 2; anything else keeps its traceback."""
    ns = _parser().parse_args(argv)
    study_dir: Optional[Path] = None
    try:
        cfg = load_config(ns.preset, ns.config, settings_overrides(ns))
        study_dir = Path(cfg.out or os.path.join("runs", cfg.name))
        if ns.status:
            print("\n".join(study_status(cfg, study_dir)))
            return 0
        if not ns.report_only:
            check_models(cfg)  # asks the plugin's registry: before anything is dispatched
        if ns.print_commands:
            return _print_commands(prepare_for_dispatch(cfg, study_dir))
        outcome = run_study(cfg, study_dir, report_only=ns.report_only, progress=not ns.no_progress,
                            wait=not ns.no_wait)
    except KeyboardInterrupt:
        print(f"interrupted; re-run the same command to resume ({study_dir})", file=sys.stderr)
        return 130
    except ValueError as exc:
        for line in str(exc).splitlines() or [""]:  # one line per problem (e.g. each bad SLURM resource)
            print(f"error: {line}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    return _summary(cfg.name, outcome)


def _summary(name: str, outcome: StudyOutcome) -> int:
    print(f"study '{name}': {len(outcome.launched)} run(s) launched, {len(outcome.skipped)} already done, "
          f"{len(outcome.failed)} failed/missing, {len(outcome.blocked)} blocked")
    for run_id, why in outcome.failed.items():
        print(f"  {run_id}: {why}")
    if outcome.adopted:
        print(f"{len(outcome.adopted)} run(s) started by an earlier invocation were followed and collected")
    if outcome.in_flight:
        print(f"{len(outcome.in_flight)} run(s) queued or running; run the same command again (or with --status) "
              "to follow them; the report is written once they are collected")
    if outcome.report_dir is not None:
        print(f"report: {outcome.report_dir / 'report.md'}")
    print(f"wall time: {outcome.wall_time_s:.1f} s ({outcome.wall_time_s / 60:.1f} min)")
    return 0 if outcome.ok else 1  # in flight is not a failure: a later invocation collects it
