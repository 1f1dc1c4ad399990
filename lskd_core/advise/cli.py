"""``python -m lskd_core.advise`` / ``lskd-advise``: parser, input checks, the advisor's main loop."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from lskd_core.advise.allocation import allocate
from lskd_core.advise.runner import (
    ADVISE_DIR,
    StudentRunner,
    advisor_launcher,
    ensure_teachers,
    install_sigterm,
    segments,
    teacher_class_counts,
    teachers_ready,
)
from lskd_core.advise.teachers import install_external_teachers
from lskd_core.advise.tiebreak import TARGET, settle
from lskd_core.jsonio import write_json
from lskd_core.study.cli_flags import add_progress_flag, add_settings, add_source_flags, settings_overrides
from lskd_core.study.config import (
    StudyConfig,
    check_models,
    load_config,
)
from lskd_core.study.launchers import LocalLauncher
from lskd_core.study.lock import StudyLock
from lskd_core.study.plan import build_plan

__all__ = ["main", "advise", "check_input"]

LOG = "allocation.jsonl"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lskd_core.advise",
        description="Recommend (alpha, T) at a fraction of the full grid's cost: successive halving over the "
                    "grid's cells (Optuna), fed by the teacher cache, with a confidence from the finalists' seeds. "
                    "Settings as for the study: preset < --config file < flags. Writes <study>/advise/.")
    add_source_flags(p)
    add_progress_flag(p)  # the advisor draws no bar; accepted so that a study command line carries over
    p.add_argument("--teacher", action="append", default=[], metavar="ALPHA=CKPT",
                   help="use this trained teacher checkpoint for ALPHA instead of training one (repeat per alpha)")
    g = p.add_argument_group("allocation")
    g.add_argument("--budget", type=float, default=0.25, help="most compute to spend, as a fraction of the full "
                                                              "grid's epoch-runs (default 0.25)")
    g.add_argument("--reduction-factor", type=int, default=3, help="successive halving's eta (default 3)")
    g.add_argument("--min-epochs", default="auto",
                   help="epochs of the first level; default auto: 3/4 of the student's schedule, less when "
                        "screening every cell that long would exceed the budget (docs/advise.md)")
    g.add_argument("--order-seed", type=int, default=0, help="seed of the order in which cells arrive at a rung")
    g.add_argument("--no-signals", action="store_true", help="no feature exports: no eta, no teacher entropy")
    g.add_argument("--target-probability", type=float, default=TARGET,
                   help="after successive halving, add seeds to the tied finalists until the pick's probability "
                        f"of being the grid's best reaches this, or the budget is spent (default {TARGET:g})")
    g.add_argument("--tie-seeds", type=int, default=None,
                   help="most seeds per cell the tie-break may train (default: all the study's seeds)")
    add_settings(p)
    return p


def _teacher_specs(specs: Sequence[str]) -> Dict[float, str]:
    out: Dict[float, str] = {}
    for spec in specs:
        alpha, sep, path = spec.partition("=")
        try:
            a = float(alpha)
        except ValueError:
            a = float("nan")
        if not sep or not path or a != a:
            raise ValueError(f"--teacher must be ALPHA=CHECKPOINT (e.g. 0.1=runs/t/checkpoint.pth), got {spec!r}")
        out[a] = path
    return out


def check_input(cfg: StudyConfig, teachers: Dict[float, str]) -> None:
    """One line naming what cannot be advised on (ValueError)."""
    if cfg.task != "vision":
        raise ValueError(f"the advisor supports the vision task, got task = {cfg.task!r}; run the full study "
                         "(python -m lskd_core.study) for translation")
    if len(cfg.alphas) * len(cfg.temperatures) < 2:
        raise ValueError(f"nothing to choose: one alpha ({cfg.alphas[0]:g}) and one temperature "
                         f"({cfg.temperatures[0]:g}); give a T range (--temperatures 1 2 4) or several alphas")
    extra = sorted(set(teachers) - set(cfg.alphas))
    if extra:
        raise ValueError(f"--teacher given for alpha {extra} that is not among the alphas {cfg.alphas}; "
                         "add it to --alphas or drop that --teacher")


def _check_class_counts(counts: Dict[str, Optional[int]]) -> None:
    known = {k: v for k, v in counts.items() if v is not None}
    if len(set(known.values())) > 1:
        desc = ", ".join(f"{k} has {v}" for k, v in sorted(known.items()))
        raise ValueError(f"the teachers have different class counts ({desc}); every teacher must be trained on "
                         "the same classes as the students")


def advise(cfg: StudyConfig, study: Path, teachers: Dict[float, str], opts: argparse.Namespace,
           echo=print) -> Dict[str, Any]:
    """Teachers and caches (reused or made), the allocation, the signals, the advice files. The
    runs start warm through one launcher (:func:`lskd_core.advise.runner.advisor_launcher`),
    closed (its warm server ended) when the advisor is done, interrupted or not."""
    root = study / ADVISE_DIR
    root.mkdir(parents=True, exist_ok=True)
    launcher = advisor_launcher(cfg)  # warm start: one server for every run of this invocation
    try:
        with StudyLock(root):
            return _advise(cfg, study, teachers, opts, echo, launcher)
    finally:
        if launcher.warm_note:
            echo(f"[advise] runs started cold: {launcher.warm_note}")
        launcher.close()


def _advise(cfg: StudyConfig, study: Path, teachers: Dict[float, str], opts: argparse.Namespace, echo,
            launcher: LocalLauncher) -> Dict[str, Any]:
    from lskd_core.advise.evidence import Exporter, cell_signals, export_totals
    from lskd_core.advise.report import markdown, plot_eta, plot_trajectories, summarize

    root = study / ADVISE_DIR
    if teachers or not teachers_ready(cfg, study):
        with StudyLock(study):  # the study's own runs: locked only while teachers/caches are installed or made
            _check_class_counts(install_external_teachers(cfg, study, teachers))
            ensure_teachers(cfg, study, echo=echo, launcher=launcher)
    plan = build_plan(cfg)
    counts = teacher_class_counts(plan, study)
    _check_class_counts(counts)
    runner = StudentRunner(cfg, study, plan, echo=echo, launcher=launcher)
    log_path = root / LOG
    if log_path.exists():
        os.replace(log_path, root / "allocation.previous.jsonl")
    invocation = time.time()

    def log(event: dict) -> None:
        with open(log_path, "a", encoding="utf-8") as fh:
            import json

            fh.write(json.dumps(dict(event, time=round(time.time(), 3))) + "\n")

    cells = [(a, t) for a in cfg.alphas for t in cfg.temperatures]
    alloc = allocate(cells, runner, cfg.student_epochs, cfg.seed_list, eta=opts.reduction_factor,
                     min_epochs=opts.min_epochs, budget=opts.budget, seed=opts.order_seed, log=log)
    tiebreak = settle(alloc, runner, cfg.student_epochs, cfg.seed_list, target=opts.target_probability,
                      max_seeds=opts.tie_seeds, log=log)
    num_classes = next((v for v in counts.values() if v), None) or 0
    signals: Dict[Any, Any] = {}
    exporter = Exporter(cfg, study, runner.env, echo=echo)
    if not opts.no_signals and num_classes:
        signals = cell_signals(cfg, study, alloc, runner, exporter, num_classes)
    segs = segments(study)
    cpu = {"cpu_s_train": round(sum(s.get("cpu_s", 0.0) for s in segs), 3),
           "wall_s_train": round(sum(s.get("wall_s", 0.0) for s in segs), 3),
           **export_totals(study),
           "exports_this_invocation": exporter.count, "segments": len(segs),
           "segments_this_invocation": sum(1 for s in segs if _seg_time(s) >= invocation - 1)}
    summary = summarize(alloc, signals, cfg.student_epochs, runner.train_samples or _cap(cfg), cpu,
                        tiebreak=tiebreak)
    summary["settings"] = {"budget": opts.budget, "reduction_factor": opts.reduction_factor,
                           "min_epochs": alloc.levels[0].epochs,
                           "min_epochs_option": "auto" if opts.min_epochs is None else opts.min_epochs,
                           "order_seed": opts.order_seed, "target_probability": opts.target_probability,
                           "tie_seeds": tiebreak["max_seeds"],
                           "alphas": cfg.alphas, "temperatures": cfg.temperatures, "seeds": cfg.seed_list,
                           "student_epochs": cfg.student_epochs}
    write_json(root / "advice.json", summary)
    (root / "advice.md").write_text(markdown(summary), encoding="utf-8")
    plot_trajectories(alloc, cfg.student_epochs, root / "trajectories.png")
    plot_eta(signals, root / "eta_over_epochs.png")
    return summary


def _cap(cfg: StudyConfig) -> Optional[int]:
    return cfg.train_samples


def _seg_time(seg: dict) -> float:
    try:
        return time.mktime(time.strptime(seg.get("time", ""), "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return 0.0


def _min_epochs(value: str) -> Optional[int]:
    if value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--min-epochs must be auto or an integer >= 1, got {value!r}")
    return n


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Bad input (a setting, a teacher, nothing to choose) -> one ``error:`` line, exit 2."""
    ns = _parser().parse_args(argv)
    study: Optional[Path] = None
    try:
        if not 0 < ns.budget <= 1:
            raise ValueError(f"--budget must be a fraction in (0, 1], got {ns.budget}")
        ns.min_epochs = _min_epochs(ns.min_epochs)
        if ns.reduction_factor < 2:
            raise ValueError(f"--reduction-factor must be >= 2, got {ns.reduction_factor}")
        if not 0 < ns.target_probability <= 1:
            raise ValueError(f"--target-probability must be in (0, 1], got {ns.target_probability}")
        if ns.tie_seeds is not None and ns.tie_seeds < 1:
            raise ValueError(f"--tie-seeds must be >= 1, got {ns.tie_seeds}")
        cfg = load_config(ns.preset, ns.config, settings_overrides(ns))
        # its students' early eta comes from per-epoch exports (evidence.py); the grid's eta references
        # (eta_during_training) are exports of the grid's students, which the advisor never runs
        cfg.eta_during_training = False
        cfg.eval_each_epoch = True  # its students' per-epoch validation curves feed the allocation
        teachers = _teacher_specs(ns.teacher)
        check_input(cfg, teachers)
        if ns.min_epochs is not None and ns.min_epochs > cfg.student_epochs:
            raise ValueError(f"--min-epochs {ns.min_epochs} exceeds the student's epochs ({cfg.student_epochs})")
        check_models(cfg)
        study = Path(cfg.out or os.path.join("runs", cfg.name)).resolve()
        install_sigterm()
        summary = advise(cfg, study, teachers, ns)
    except KeyboardInterrupt:
        print(f"interrupted; run the same command again to resume ({study})", file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else exc!r}", file=sys.stderr)
        return 2
    except OSError as exc:
        from lskd_core.study.cli_errors import os_error_line

        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 2
    rec, comp = summary["recommendation"], summary["compute"]
    p = rec.get("p_best")
    print(f"advice: alpha = {rec['alpha']:g}, T = {rec['temperature']:g} (P(grid's best) = "
          f"{'not computed' if p is None else f'{p:.2f}'}; confidence: "
          f"{summary['confidence']['level']}); compute {comp['epoch_runs']}/{comp['grid_epoch_runs']} epoch-runs "
          f"({comp['fraction']:.3f} of the grid); {study / ADVISE_DIR / 'advice.md'}")
    return 0
