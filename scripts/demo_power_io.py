"""Reading the power estimate's pilots (scripts/demo_power.py): finished students and teachers of
study directories, and the CPU seconds per run kind from a timing wrapper's log or the warm
server's exit records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Rec:
    alpha: float
    temperature: float
    seed: int
    teacher_seed: int
    value: float


def read_students(study: Path, eval_name: Optional[str] = None,
                  matched: Optional[Tuple[float]] = None, arm: Optional[str] = None) -> List[Rec]:
    """Finished grid students of a study directory as :class:`Rec` (top-1 accuracy, percent); a run's
    ``eval_name`` file (a re-evaluation) is preferred over its result.json when present. With
    ``matched = (ls_alpha,)``: the entropy-matched students of that LS alpha instead (App. H), as
    records of the plain alpha at the LS cell's temperature. With ``arm``: the students of that
    variant arm (``variant_arms``) instead; the grid's own records never include an arm's students."""
    recs = []
    for rc in sorted(study.glob("runs/*/run_config.json")):
        cfg = json.loads(rc.read_text())
        res = rc.parent / "result.json"
        if eval_name and (rc.parent / eval_name).is_file():
            res = rc.parent / eval_name
        if cfg.get("kind") != "student" or not res.is_file():
            continue
        info, value = cfg["info"], json.loads(res.read_text()).get("val_acc1")
        if value is None or (matched is None) != ("matched_key" not in info):
            continue
        if matched is not None and float(info["matched_to_alpha"]) != matched[0]:
            continue
        if info.get("arm") != arm:
            continue
        temp = float(info["matched_to_temperature"] if matched is not None else info["temperature"])
        recs.append(Rec(float(info["alpha"]), temp, int(info["seed"]), int(info.get("teacher_seed", 0)),
                        float(value)))
    return recs


def read_teachers(study: Path) -> List[Tuple[float, int, float]]:
    out = []
    for rc in sorted(study.glob("runs/*/run_config.json")):
        cfg = json.loads(rc.read_text())
        res = rc.parent / "result.json"
        if cfg.get("kind") == "teacher" and res.is_file():
            info = cfg["info"]
            out.append((float(info["alpha"]), int(info.get("teacher_seed", 0)),
                        float(json.loads(res.read_text())["val_acc1"])))
    return out


def _flag(argv: Sequence[str], name: str, default: float) -> float:
    return float(argv[argv.index(name) + 1]) if name in argv else default


FULL_SPLIT = {"train": 60000, "val": 10000}  # Fashion-MNIST's splits (the default when uncapped)


def parse_cpu_log(path: Path) -> Dict[str, List[Tuple[float, float, float]]]:
    """Per run kind, (images trained, images evaluated, CPU s) from the timing wrapper's lines."""
    out: Dict[str, List[Tuple[float, float, float]]] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 5 or "-m" not in parts:
            continue
        try:
            cpu = float(parts[0]) + float(parts[1])
        except ValueError:
            continue
        argv = parts[3:]
        module = argv[argv.index("-m") + 1]
        train = _flag(argv, "--train-samples", FULL_SPLIT["train"])
        val = _flag(argv, "--val-samples", FULL_SPLIT["val"])
        epochs = _flag(argv, "--epochs", 1)
        if module == "vision_plugin.train" and "--test-only" not in argv:
            kind = "student" if "--teacher-cache" in argv or "lskd_cnn_s" in argv else "teacher"
            row = (train * epochs, val * epochs, cpu)
        elif module == "vision_plugin.teacher_cache":
            kind, row = "cache", (train * epochs, 0.0, cpu)
        elif module == "vision_plugin.export_features":
            split = argv[argv.index("--split") + 1] if "--split" in argv else "train"
            kind, row = "export", (0.0, train if split == "train" else val, cpu)
        else:
            continue
        out.setdefault(kind, []).append(row)
    return out


RUN_KINDS = (("export_", "export"), ("cache_", "cache"), ("teacher_", "teacher"), ("student_", "student"),
             ("matched_", "student"), ("match", "match"))


def read_exit_cpu(study: Path) -> Dict[str, List[Tuple[float, float, float]]]:
    """Per run kind, (0, 0, CPU s) of every warm-started run of a study, from the exit records the
    warm server writes (``runs/*/stdout.log.exit.json``, wait4's user + system time). The images are
    not recorded there: the cost is then a constant per kind, valid at the pilot's data size and
    epochs (the sizes the design search keeps)."""
    out: Dict[str, List[Tuple[float, float, float]]] = {}
    for path in sorted(study.glob("runs/*/stdout.log.exit.json")):
        name = path.parent.name
        kind = next((k for prefix, k in RUN_KINDS if name.startswith(prefix)), None)
        rec = json.loads(path.read_text())
        if kind is None or ".stale-" in name or rec.get("returncode") != 0:
            continue
        out.setdefault(kind, []).append((0.0, 0.0, float(rec["cpu_user_s"]) + float(rec["cpu_system_s"])))
    return out
