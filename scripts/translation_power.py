"""Power estimate for the translation demo (issue 18), from a pilot translation study directory.

    python scripts/translation_power.py PILOT_DIR [--delta 1.0] [--budget-s 1800] [--cores 2] [--json OUT]

The same estimate as ``scripts/demo_power.py`` (the vision demo's), on BLEU instead of top-1: it
reads the pilot's finished students (``runs/student_*/run_config.json``) with the detokenised
sacreBLEU of their ``fairseq-generate`` run (``runs/bleu_<student>/result.json``), estimates the
student-seed spread within a cell (sigma_cell) and the sd of the per-seed slope difference on ln T
(sigma_d, seeds paired across alphas), and gives for each number of student seeds the 95 %
half-widths over the grid's ln T range of

* the LS teacher's trend (pooled OLS over every run and T, as :mod:`lskd_core.statistics` fits it),
* the alpha x T interaction (paired slope differences, t over seeds; one teacher per alpha),

and ``p_decide``, the probability that the interaction's interval decides (excludes 0 or lies within
[-delta, delta]) at a true effect of 0 and of delta. The T trend "can be decided" when its half-width
is at most delta / 2: then every outcome is decided (it excludes 0 or lies within [-delta, delta]).

Compute: summed CPU seconds per run kind read from the pilot's exit records
(``stdout.log.exit.json``, user + system; runs without one count their wall time from
``events.jsonl``), scaled to each design's run counts, and a wall estimate CPU / cores + the
serial part (data preparation and the report).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

HERE = Path(__file__).resolve().parent


def _demo_power():
    """scripts/demo_power.py (a script, not a package module): its pure estimate functions."""
    spec = importlib.util.spec_from_file_location("demo_power", HERE / "demo_power.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("demo_power", module)
    spec.loader.exec_module(module)
    return module


DP = _demo_power()


def read_students(study: Path) -> List[Any]:
    """Finished students as demo_power.Rec with their test BLEU (detokenised sacreBLEU)."""
    recs = []
    for rc in sorted(study.glob("runs/student_*/run_config.json")):
        cfg = json.loads(rc.read_text())
        if cfg.get("kind") != "student":
            continue
        bleu = study / "runs" / f"bleu_{rc.parent.name}" / "result.json"
        if not bleu.is_file():
            continue
        value = json.loads(bleu.read_text()).get("bleu")
        if value is None:
            continue
        info = cfg["info"]
        recs.append(DP.Rec(float(info["alpha"]), float(info["temperature"]), int(info["seed"]),
                           int(info.get("teacher_seed", 0)), float(value)))
    return recs


def _run_kind(run_id: str) -> str:
    for prefix, kind in (("bleu_teacher", "generate"), ("bleu_student", "generate"), ("teacher", "teacher"),
                         ("cache", "cache"), ("student", "student"), ("prepare", "prepare")):
        if run_id.startswith(prefix):
            return kind
    return "other"


def cpu_per_kind(study: Path) -> Dict[str, List[float]]:
    """CPU seconds of every finished run, by kind (exit records; else the run's wall time)."""
    walls: Dict[str, float] = {}
    events = study / "events.jsonl"
    if events.is_file():
        for line in events.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("event") == "done" and rec.get("wall_time_s") is not None:
                walls[str(rec["run_id"])] = float(rec["wall_time_s"])
    out: Dict[str, List[float]] = {}
    for run_dir in sorted((study / "runs").iterdir()):
        exit_file = run_dir / "stdout.log.exit.json"
        if exit_file.is_file():
            rec = json.loads(exit_file.read_text())
            cpu = float(rec["cpu_user_s"]) + float(rec["cpu_system_s"])
        elif run_dir.name in walls:
            cpu = walls[run_dir.name]
        else:
            continue
        out.setdefault(_run_kind(run_dir.name), []).append(cpu)
    return out


def design(seeds: int, temperatures: Sequence[float], var: Mapping[str, Any], cost: Mapping[str, float],
           delta: float, cores: int, serial_s: float, alphas: int = 2) -> Dict[str, Any]:
    """Half-widths (over the ln T range, BLEU), p_decide and the compute of one design."""
    span = DP.log_span(temperatures)
    scale = 1.0 / math.sqrt(DP.sxx(temperatures))
    sd_d = var["slope_difference"]["within_sd"] * scale
    hw_int = DP.interaction_halfwidth(sd_d, 0.0, seeds, 1) * span
    hw_trend = DP.pooled_trend_halfwidth(var["cell_sd"], seeds, temperatures) * span
    students = alphas * len(temperatures) * seeds
    counts = {"teacher": alphas, "cache": alphas, "student": students, "generate": alphas + students}
    cpu = {k: counts[k] * cost.get(k, 0.0) for k in counts}
    return {"seeds": seeds, "temperatures": list(temperatures), "students": students,
            "ls_trend_halfwidth_over_range": hw_trend, "interaction_halfwidth_over_range": hw_int,
            "trend_decided_always": hw_trend <= delta / 2,
            "p_decide_interaction_at_0": DP.p_decide(0.0, sd_d * span, seeds, delta),
            "p_decide_interaction_at_delta": DP.p_decide(delta, sd_d * span, seeds, delta),
            "cpu_s": {k: round(v, 1) for k, v in cpu.items()}, "cpu_total_s": round(sum(cpu.values()), 1),
            "wall_estimate_s": round(sum(cpu.values()) / cores + serial_s, 1)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pilot", type=Path, help="a finished (or partly finished) translation study directory")
    p.add_argument("--alpha-ls", type=float, default=0.1)
    p.add_argument("--alpha-plain", type=float, default=0.0)
    p.add_argument("--delta", type=float, default=1.0, help="smallest effect of interest, BLEU over the T range")
    p.add_argument("--budget-s", type=float, default=1800.0, help="wall-time budget of the study (s)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--temperatures", type=float, nargs="+", default=None,
                   help="temperature set of the designs (default: the pilot's)")
    p.add_argument("--json", type=Path, help="write the whole estimate here")
    args = p.parse_args(argv)
    if not (args.pilot / "runs").is_dir():
        print(f"error: {args.pilot} has no runs/ directory; give a study directory (its --out)", file=sys.stderr)
        return 2
    recs = read_students(args.pilot)
    var = DP.variance_summary([recs], args.alpha_ls, args.alpha_plain) if recs else None
    if var is None or not math.isfinite(var["slope_difference"]["within_sd"]):
        print("error: the pilot needs >= 2 paired student seeds at >= 2 temperatures under both alphas, "
              "each scored (runs/bleu_student_*)", file=sys.stderr)
        return 2
    per_kind = cpu_per_kind(args.pilot)
    cost = {k: sum(v) / len(v) for k, v in per_kind.items() if v}
    serial = sum(per_kind.get("prepare", [])) + 30.0  # data preparation + study start-up and report
    temps = args.temperatures or sorted({r.temperature for r in recs})
    rows = [design(n, temps, var, cost, args.delta, args.cores, serial) for n in range(2, 11)]
    fits = [r for r in rows if r["wall_estimate_s"] <= args.budget_s]
    decided = [r for r in fits if r["trend_decided_always"]]
    choice = min(decided, key=lambda r: r["cpu_total_s"]) if decided else (max(fits, key=lambda r: r["seeds"])
                                                                             if fits else None)
    print(f"pilot: {len(recs)} students, T = {sorted({r.temperature for r in recs})}; cell sd "
          f"{var['cell_sd']:.3f} BLEU (df {var['cell_df']}), per-seed slope-difference sd "
          f"{var['slope_difference']['within_sd']:.3f} (Sxx-normalised)")
    print("CPU s per run: " + ", ".join(f"{k} {c:.0f}" for k, c in sorted(cost.items())))
    for r in rows:
        print(f"  seeds {r['seeds']:2d}: trend +-{r['ls_trend_halfwidth_over_range']:.2f}, interaction "
              f"+-{r['interaction_halfwidth_over_range']:.2f} BLEU over the T range; P(decide interaction) "
              f"{r['p_decide_interaction_at_0']:.2f} at 0, {r['p_decide_interaction_at_delta']:.2f} at delta; "
              f"CPU {r['cpu_total_s']:.0f} s, wall ~{r['wall_estimate_s'] / 60:.1f} min")
    if choice is None:
        print(f"no design fits the {args.budget_s / 60:.0f}-minute budget")
    else:
        print(f"choice: seeds = {choice['seeds']} ({'trend always decided' if choice['trend_decided_always'] else 'the most seeds that fit; the trend is not always decided'})")
    if args.json:
        args.json.write_text(json.dumps({"variance": var, "cost_per_run_s": cost, "designs": rows,
                                         "choice": choice}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
