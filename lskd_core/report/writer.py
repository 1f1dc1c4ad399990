"""``write_report``: every section, the figures, ``results.json`` and ``report.md`` of a study.

Each analysis is cached in ``<report>/cache/<name>.json`` under a key made of its parameters and
the fingerprints of the runs it reads, so re-writing a report only recomputes what changed.
Every section records ``status`` (``ok``, ``missing``: inputs not available, ``error``: an
analysis raised, ``not-applicable``: the task has no such analysis) so that a partial study still
yields a report that says what is missing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence, Tuple

from lskd_core.atomic import atomic_write_bytes
from lskd_core.jsonio import jsonable
from lskd_core.report.accuracy import accuracy_grid
from lskd_core.report.cache import AnalysisCache
from lskd_core.report.cache_savings import cache_savings_section
from lskd_core.report.calibration import calibration_section, calibration_sentence
from lskd_core.report.classwise import classwise_section
from lskd_core.report.entropy import entropy_section
from lskd_core.report.eta import eta_section
from lskd_core.report.eta_training import eta_training_section
from lskd_core.report.feature_kd import feature_kd_section, scope_verdict
from lskd_core.report.figures import plot_accuracy, plot_entropy
from lskd_core.report.matched import matched_section
from lskd_core.report.profile import profile_section
from lskd_core.report.projection import projection_section
from lskd_core.report.render import render
from lskd_core.report.token_entropy import token_entropy_section
from lskd_core.report.token_eta import token_eta_section
from lskd_core.report.variants import variants_section, variants_sentence
from lskd_core.report.verdict import verdict
from lskd_core.report.view import StudyView
from lskd_core.study.tasks import ALL_ANALYSES

__all__ = ["write_report"]


def _verdict_eta(view: StudyView, res: dict) -> Tuple[Optional[dict], str, str]:
    """The eta the verdict's diffusion flag reads: Fig. 3's on the hierarchy class sets of the train
    split (vision), or the token-level extension on the feature sets of its split (translation)."""
    if "token_eta" in view.task.analyses and "eta" not in view.task.analyses:
        tok = res.get("token_eta") or {}
        return tok, "feature", str(tok.get("split") or "test")
    return res.get("eta"), "hierarchy", "train"


def _analyses(view: StudyView, cache: AnalysisCache, out: Path, res: dict) -> None:
    """The sections that apply to the task, in order (the soft-output profile reuses eta's sets)."""
    applies = view.task.analyses
    na = {"status": "not-applicable", "reason": f"feature analyses do not apply to the {view.task.name} task"}
    if "eta" in applies:
        res["eta"] = eta_section(view, cache)
    if "entropy" in applies:
        res["entropy"] = entropy_section(view, cache)
    if "projection" in applies:
        res["projection"] = projection_section(view, cache, out)
    if "soft_output" in applies:
        res["soft_output"] = profile_section(view, cache, out, res.get("eta", {}).get("sets"))
    if "classwise" in applies:
        res["classwise"] = classwise_section(view, cache)
    # per target token (sequence tasks): keys of their own, so other tasks' results are unchanged
    if "token_entropy" in applies:
        res["token_entropy"] = token_entropy_section(view, cache)
    if "token_eta" in applies:
        res["token_eta"] = token_eta_section(view, cache)
    if "calibration" in applies:
        res["calibration"] = calibration_section(view, cache, out)
    for k in ALL_ANALYSES:
        res.setdefault(k, dict(na))


def _figures(view: StudyView, out: Path, res: dict) -> dict:
    figures = {}
    if res["entropy"].get("status") in ("ok", "partial"):
        try:
            figures["entropy"] = plot_entropy(res["entropy"], out / "teacher_entropy.png")
        except Exception as exc:  # a figure failing must not lose the report
            res["entropy"]["figure_error"] = str(exc)
    if res.get("token_entropy", {}).get("status") in ("ok", "partial"):
        try:
            figures["token_entropy"] = plot_entropy(res["token_entropy"], out / "teacher_token_entropy.png")
        except Exception as exc:
            res["token_entropy"]["figure_error"] = str(exc)
    try:
        figures["accuracy"] = plot_accuracy(res["accuracy_grid"], out / "accuracy_vs_T.png", view.task)
    except Exception as exc:
        res["accuracy_grid"]["figure_error"] = str(exc)
    for k in ("projection", "soft_output", "eta_training", "calibration"):
        if res.get(k, {}).get("png"):
            figures[k] = res[k]["png"]
    return {k: v for k, v in figures.items() if v}


def write_report(study_dir: "os.PathLike[str] | str", out_dir: "Optional[os.PathLike[str] | str]" = None,
                 problems: Optional[Sequence[dict]] = None, study_wall_time_s: Optional[float] = None,
                 usable: Optional[set] = None) -> Path:
    """Write ``report.md``, ``results.json`` and figures for a study directory; return the report dir.

    ``usable``: run ids the caller vouches for (the study runner passes those it found done for the
    current config); None reads every run whose result.json says done.
    """
    view = StudyView(Path(study_dir), usable=usable)
    out = Path(out_dir) if out_dir is not None else view.dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    cache = AnalysisCache(out / "cache")
    res: dict = {"written": time.strftime("%Y-%m-%d %H:%M:%S"), "study_dir": str(view.dir),
                 "config": view.config, "study_wall_time_s": study_wall_time_s,
                 "problems": list(problems or [])}
    res["accuracy_grid"] = accuracy_grid(view)
    res["matched"] = matched_section(view)  # App. H's entropy-matched students, beside the grid
    res["cache_savings"] = cache_savings_section(view)
    _analyses(view, cache, out, res)
    res["eta_training"] = eta_training_section(view, out)  # students' per-epoch eta (eta_during_training)
    res["figures"] = _figures(view, out, res)
    res["variants"] = variants_section(view)  # variant arms vs the grid (empty without variant_arms)
    res["verdict"] = verdict(res["accuracy_grid"], *_verdict_eta(view, res), task=view.task.name,
                             matched=res.get("matched"))
    res["feature_kd"] = feature_kd_section(view, res)  # Table B.5 (feature_kd studies)
    res["verdict"] = scope_verdict(res["verdict"], view.config)  # says "feature KD + KD" when it is
    for key, sentence in (("calibration", calibration_sentence(res.get("calibration"))),
                          ("variants", variants_sentence(res.get("variants")))):
        if sentence:
            res["verdict"][key] = sentence
            res["verdict"]["text"] = (res["verdict"].get("text") or "").rstrip() + "\n\n" + sentence
    not_done = [r for r in view.runs if r not in view.results]
    res["runs"] = {"planned": len(view.runs), "done": len(view.runs) - len(not_done), "not_done": not_done}
    res = jsonable(res)
    atomic_write_bytes(out / "results.json", json.dumps(res, indent=1, allow_nan=False).encode())
    atomic_write_bytes(out / "report.md", render(view, res).encode())
    return out
