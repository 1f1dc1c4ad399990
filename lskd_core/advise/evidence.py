"""Feature exports the signals need, and the signals of every cell (:mod:`lskd_core.advise.signals`).

Exports are ``python -m vision_plugin.export_features`` processes on the validation split (the
checkpoint's own data settings): each teacher once, with logits (entropy at every T; its features
give the S1/S2 sets), and the first seed's student of a cell after each epoch it was trained
(``model_{epoch}.pth``), for early eta against the lowest-T student of the same alpha. A student's
exports live in its advisor run directory (moved aside with it if it ever goes stale); a teacher's
file name carries its result's fingerprint. Finished exports are reused.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from lskd_core.advise.allocation import Allocation
from lskd_core.advise.runner import ADVISE_DIR, StudentRunner
from lskd_core.advise.signals import early_eta, reference_sets, teacher_entropies
from lskd_core.study.config import StudyConfig
from lskd_core.study.plan import paired_teacher_seed, run_dir, teacher_run_id
from lskd_core.study.state import append_jsonl, fingerprint

__all__ = ["Exporter", "cell_signals", "export_totals", "EXPORTS_LOG"]

EXPORTS_LOG = "exports.jsonl"


def export_totals(study: Path) -> Dict[str, float]:
    """CPU and wall seconds of every feature export the advisor ran in this study (all invocations)."""
    cpu = wall = 0.0
    try:
        lines = (study / ADVISE_DIR / EXPORTS_LOG).read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        cpu += float(rec.get("cpu_s", 0.0))
        wall += float(rec.get("wall_s", 0.0))
    return {"cpu_s_exports": round(cpu, 3), "wall_s_exports": round(wall, 3)}


class Exporter:
    """Runs (or reuses) feature exports and counts their CPU seconds."""

    def __init__(self, cfg: StudyConfig, study: Path, env: Dict[str, str], echo=print) -> None:
        self.cfg, self.env, self.echo = cfg, env, echo
        self.log = study / ADVISE_DIR / EXPORTS_LOG
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.count = 0

    def export(self, ckpt: Path, out: Path, logits: bool = False) -> Optional[Path]:
        if out.exists():
            return out
        if not ckpt.exists():
            return None
        out.parent.mkdir(parents=True, exist_ok=True)
        argv = [self.cfg.python or sys.executable, "-m", "vision_plugin.export_features", "--ckpt", str(ckpt),
                "--split", "val", "--device", self.cfg.device, "--out", str(out)] + (["--save-logits"] if logits else [])
        u0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.time()
        with open(out.with_suffix(".log"), "w", encoding="utf-8") as log:
            rc = subprocess.call(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu_s += (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
        self.wall_s += time.time() - t0
        append_jsonl(self.log, {"out": str(out), "rc": rc, "cpu_s": round((u1.ru_utime - u0.ru_utime)
                                                                         + (u1.ru_stime - u0.ru_stime), 3),
                                "wall_s": round(time.time() - t0, 3)})
        self.count += 1
        if rc != 0 or not out.exists():
            self.echo(f"[advise] export of {ckpt} failed (exit status {rc}); see {out.with_suffix('.log')}; "
                      "that signal is left out")
            return None
        return out


def _load(path: Optional[Path]) -> Optional[Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]]:
    if path is None:
        return None
    from lskd_core.features_io import load_features

    ff = load_features(path)
    return np.asarray(ff.features), np.asarray(ff.labels), None if ff.logits is None else np.asarray(ff.logits)


def _teacher_signals(cfg: StudyConfig, study: Path, exporter: Exporter, alpha: float, seed: int
                     ) -> Tuple[Optional[Dict[float, float]], Any]:
    tid = teacher_run_id(cfg, alpha, paired_teacher_seed(cfg, seed))
    fp = (fingerprint(run_dir(study, tid)) or "none")[:12]
    out = study / ADVISE_DIR / "exports" / f"{tid}_{fp}_val.npz"
    data = _load(exporter.export(run_dir(study, tid) / "checkpoint.pth", out, logits=True))
    if data is None:
        return None, None
    feats, labels, logits = data
    ent = teacher_entropies(logits, cfg.temperatures) if logits is not None else None
    return ent, (feats, labels)


def _student_export(runner: StudentRunner, exporter: Exporter, cell: Tuple[float, float], seed: int,
                    epoch: int) -> Optional[Path]:
    rdir = runner.run_dir(cell, seed)
    return exporter.export(rdir / f"model_{epoch - 1}.pth", rdir / f"features_val_e{epoch}.npz")


def cell_signals(cfg: StudyConfig, study: Path, alloc: Allocation, runner: StudentRunner, exporter: Exporter,
                 num_classes: int) -> Dict[Tuple[float, float], Dict[str, Any]]:
    """Per cell: teacher entropy at its T, and early eta against the T = 1 (else lowest-T) cell of its alpha
    after each epoch both were trained (first seed): ``{"teacher_entropy", "eta": [{epoch, ...}],
    "diffusion_share"}`` (share at the latest epoch with eta)."""
    seed = cfg.seed_list[0]
    t_ref = 1.0 if 1.0 in cfg.temperatures else min(cfg.temperatures)  # the paper's reference: T = 1
    curves = {r.cell: r.curves.get(seed, []) for r in alloc.cells}
    out: Dict[Tuple[float, float], Dict[str, Any]] = {c: {"teacher_entropy": None, "eta": [], "diffusion_share": None,
                                                          "eta_reference_T": t_ref} for c in curves}
    for alpha in cfg.alphas:
        ent, ref = _teacher_signals(cfg, study, exporter, alpha, seed)
        for t in cfg.temperatures:
            if ent is not None:
                out[(alpha, t)]["teacher_entropy"] = ent[t]
        if ref is None or len(cfg.temperatures) < 2:
            continue
        targets = cfg.target_classes or list(range(num_classes))
        sets = reference_sets(ref[0], ref[1], num_classes, targets, cfg.num_similar, cfg.num_dissimilar)
        base = (alpha, t_ref)
        for t in cfg.temperatures:
            if t == t_ref:
                continue
            cell = (alpha, t)
            for epoch in range(1, min(len(curves[cell]), len(curves[base])) + 1):
                before = _load(_student_export(runner, exporter, base, seed, epoch))
                after = _load(_student_export(runner, exporter, cell, seed, epoch))
                if before is None or after is None:
                    continue
                eta = early_eta(before[:2], after[:2], num_classes, sets)
                out[cell]["eta"].append(dict(eta, epoch=epoch))
            if out[cell]["eta"]:
                out[cell]["diffusion_share"] = out[cell]["eta"][-1]["share"]
                out[base]["diffusion_share"] = 0.0  # the reference against itself: eta = 0, no diffusion
    return out


def seed_finals(alloc: Allocation, epochs: int) -> Dict[Tuple[float, float], Dict[int, float]]:
    """Final accuracy of every (cell, seed) trained to the full schedule."""
    return {r.cell: {s: c[epochs - 1] for s, c in r.curves.items() if len(c) >= epochs} for r in alloc.cells}
