"""Calibration and selective prediction of every teacher and student (beyond the paper; Xia et al., ICLR 2025).

From each model's val export (``features @ weight.T + bias``, :func:`lskd_core.calibration.logits_from_export`):
ECE over 15 equal-mass bins (the headline) and over 15 equal-width bins, NLL, Brier score, AURC
(max-probability confidence) and the mean logit standard deviation (Sun et al., CVPR 2024's
quantity), per teacher and per student cell (alpha x T, every variant arm), mean [95 % interval]
over the units of :mod:`lskd_core.statistics`; a reliability diagram per teacher alpha; and one
sentence for the verdict: at each T, the LS teacher's students' ECE minus the plain teacher's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from lskd_core import calibration as C
from lskd_core import statistics as st
from lskd_core.jsonio import num
from lskd_core.report.markdown import md_table, section_status
from lskd_core.report.seed_stats import _ci
from lskd_core.report.view import StudyView
from lskd_core.study.plan import VARIANT_ARMS, arm_setting, export_id, student_id, variant_student_id

__all__ = ["calibration_section", "calibration_markdown", "calibration_sentence", "grid_arm", "arm_student",
           "METRICS"]

#: results key -> (label, lower is better); ECE in percent in the tables
METRICS = {"ece": "ECE, 15 equal-mass bins (%)", "ece_equal_width": "ECE, 15 equal-width bins (%)",
           "nll": "NLL (nats)", "brier": "Brier", "aurc": "AURC (%)", "logit_std": "logit std"}
_PERCENT = ("ece", "ece_equal_width", "aurc")


def grid_arm(config: dict) -> str:
    """The name (a key of VARIANT_ARMS) of the variant the study's main grid trains."""
    main = (str(config.get("kd_variant") or "standard"), bool(config.get("logit_standardization")))
    return next(a for a in VARIANT_ARMS if arm_setting(a) == main)


def arm_student(view: StudyView, arm: str, alpha: float, temperature: float, seed: int) -> str:
    """The run id of a student of ``arm`` (the main grid's own ids for the grid's variant)."""
    if arm == grid_arm(view.config):
        return student_id(alpha, temperature, seed)
    return variant_student_id(alpha, temperature, seed, arm)


def _arms(view: StudyView) -> List[str]:
    return [grid_arm(view.config)] + [str(a) for a in view.config.get("variant_arms") or []]


def _teacher_runs(view: StudyView) -> List[Tuple[float, str, int]]:
    return [(float(r["info"]["alpha"]), rid, int(r["info"].get("teacher_seed", 0)))
            for rid, r in view.runs.items() if r["kind"] == "teacher"]


def _model_metrics(view: StudyView, model_run: str) -> Optional[Dict[str, Any]]:
    ff = view.features(model_run, "val")
    if ff is None:
        return None
    logits = C.logits_from_export(ff.features, ff.weight, ff.bias)
    out = C.calibration_metrics(logits, ff.labels)
    out["reliability"] = C.reliability_bins(logits, ff.labels)
    return out


def _summary(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Mean [95 %] over units of each metric: students averaged per teacher first when teachers are sampled."""
    obs_unit = "teacher" if len({r["teacher_seed"] for r in records}) > 1 else "student seed"
    out: Dict[str, Any] = {}
    for m in METRICS:
        if obs_unit == "teacher":
            by: Dict[int, List[float]] = {}
            for r in records:
                by.setdefault(r["teacher_seed"], []).append(r[m])
            values = [sum(v) / len(v) for v in by.values()]
        else:
            values = [r[m] for r in records]
        out[m] = st.mean_estimate(values, obs_unit, teacher_variance_sampled=obs_unit == "teacher")
    return out


def _compute(view: StudyView) -> dict:
    teachers: Dict[float, List[dict]] = {}
    missing: List[str] = []
    for alpha, rid, tseed in _teacher_runs(view):
        m = _model_metrics(view, rid)
        if m is None:
            missing.append(export_id(rid, "val"))
            continue
        teachers.setdefault(alpha, []).append(dict(m, run=rid, teacher_seed=tseed))
    students: List[dict] = []
    for arm in _arms(view):
        for a in view.alphas:
            for t in view.temperatures:
                recs = []
                for s in view.seeds:
                    rid = arm_student(view, arm, a, t, s)
                    if rid not in view.runs:  # an arm trains the grid's first variant_seeds seeds only
                        continue
                    m = _model_metrics(view, rid)
                    if m is None:
                        missing.append(export_id(rid, "val"))
                        continue
                    tseed = int((view.runs[rid].get("info") or {}).get("teacher_seed", 0))
                    recs.append(dict(m, run=rid, seed=s, teacher_seed=tseed))
                if recs:
                    students.append({"arm": arm, "alpha": a, "temperature": t, "runs": recs,
                                     "summary": _summary(recs)})
    if not teachers and not students:
        return {"status": "missing", "reason": "no val feature exports (set analysis = true)"}
    tsum = [{"alpha": a, "runs": recs, "summary": _summary(recs)} for a, recs in sorted(teachers.items())]
    out = {"status": "partial" if missing else "ok", "missing_inputs": missing, "teachers": tsum,
           "students": students, "grid_arm": grid_arm(view.config), "arms": _arms(view),
           "headline": "ece", "n_bins": C.N_BINS}
    out["ls_vs_plain"] = _ls_vs_plain(view, students)
    return out


def _ls_vs_plain(view: StudyView, students: List[dict]) -> List[dict]:
    """Per T (grid arm): ECE of the LS teacher's students minus the plain teacher's (paired by seed)."""
    alphas = view.alphas
    if 0.0 not in alphas or len(alphas) < 2:
        return []
    alpha_ls = max(alphas)
    arm = grid_arm(view.config)
    rows = [{"alpha": c["alpha"], "temperature": c["temperature"], "seed": r["seed"],
             "teacher_seed": r["teacher_seed"], "value": 100 * r["ece"]}
            for c in students if c["arm"] == arm and c["alpha"] in (0.0, alpha_ls) for r in c["runs"]]
    obs = st.as_observations(rows)
    have = {(o.alpha, o.temperature) for o in obs}
    out = []
    for t in view.temperatures:
        if (alpha_ls, t) in have and (0.0, t) in have:
            d = st.cell_difference(obs, (alpha_ls, t), (0.0, t))
            out.append({"temperature": t, "alpha_ls": alpha_ls, "difference": d,
                        # direction tested: LS teacher -> higher student ECE (Xia et al.'s concern)
                        "level": st.evidence_level(d, +1)})
    return out


def calibration_section(view: StudyView, cache: Any, out_dir: Path) -> dict:
    arms = _arms(view)
    models = [rid for _, rid, _ in _teacher_runs(view)]
    models += [rid for arm in arms for a in view.alphas for t in view.temperatures for s in view.seeds
               if (rid := arm_student(view, arm, a, t, s)) in view.runs]
    exports = [export_id(m, "val") for m in models]
    key = {"inputs": view.fingerprint(exports), "n_bins": C.N_BINS, "version": 1}
    res = cache.get("calibration", key, lambda: _compute(view))
    if res.get("status") in ("ok", "partial"):
        try:
            from lskd_core.report.calibration_figure import plot_reliability

            res["png"] = plot_reliability(res, view.analysis_seed, out_dir)
        except Exception as exc:  # a figure failing must not lose the section
            res["figure_error"] = str(exc)
    return res


# ------------------------------------------------------------------------------------------------
# verdict sentence and markdown
# ------------------------------------------------------------------------------------------------
def calibration_sentence(sec: Optional[dict]) -> Optional[str]:
    """One sentence: where the LS teacher's students are better or worse calibrated, with 95 % confidence."""
    if not sec or sec.get("status") not in ("ok", "partial") or not sec.get("ls_vs_plain"):
        return None
    worse: List[str] = []
    better: List[str] = []
    unclear: List[str] = []
    for row in sec["ls_vs_plain"]:
        ci = row["difference"].get("ci")
        (worse if ci and ci[0] > 0 else better if ci and ci[1] < 0 else unclear).append(num(row["temperature"]))
    a = num(sec["ls_vs_plain"][0]["alpha_ls"])
    parts = []
    if worse:
        parts.append(f"higher (worse calibrated) at T = {', '.join(worse)}")
    if better:
        parts.append(f"lower (better calibrated) at T = {', '.join(better)}")
    if unclear:
        parts.append(f"not distinguishable from zero at T = {', '.join(unclear)}")
    return (f"Calibration: the ECE (15 equal-mass bins) of the alpha = {a} teacher's students minus the alpha = 0 "
            f"teacher's is " + "; ".join(parts) + " (95 % intervals of the paired difference over seeds; a "
            "single-seed cell has no interval and counts as not distinguishable).")


def _fmt_est(est: Optional[dict], metric: str) -> str:
    if est is None:
        return "—"
    if metric in _PERCENT:
        est = st.scaled(est, 100.0)
    return _ci(est, 3 if metric in ("nll", "brier", "logit_std") else 2)


def _teacher_table(sec: dict) -> str:
    rows = [[f"teacher alpha = {num(t['alpha'])}", "—", str(len(t["runs"]))]
            + [_fmt_est(t["summary"][m], m) for m in METRICS] for t in sec["teachers"]]
    return md_table(["model", "T", "n"] + list(METRICS.values()), rows)


def _student_table(sec: dict, arm: str) -> str:
    rows = [[f"alpha = {num(c['alpha'])}", num(c["temperature"]), str(len(c["runs"]))]
            + [_fmt_est(c["summary"][m], m) for m in METRICS]
            for c in sec["students"] if c["arm"] == arm]
    return md_table(["teacher", "T", "n"] + list(METRICS.values()), rows)


def calibration_markdown(res: dict) -> List[str]:
    sec = res.get("calibration") or {}
    md = ["## Calibration and selective prediction (beyond the paper)\n",
          "From each model's val export (logits = features @ weight.T + bias). ECE: expected calibration error; "
          "the headline uses 15 equal-mass bins (Nixon et al. 2019), the usual 15 equal-width bins beside it. "
          "NLL and Brier: proper scoring rules. AURC: area under the risk-coverage curve with the max "
          "probability as confidence (Geifman et al. 2019; ties averaged over their orders). Logit std: mean "
          "over samples of the logit vector's standard deviation (the scale Sun et al. 2024 discuss). Lower "
          "is better for all but logit std; mean [95 % interval] over the units (student seeds, or teachers "
          "when each alpha has several).\n"]
    if sec.get("status") not in ("ok", "partial"):
        return md + [section_status(sec) or "> Not available.\n"]
    md += ["Teachers:\n", _teacher_table(sec) + "\n"]
    for arm in sec["arms"]:
        md += [f"Students, variant `{arm}`:\n", _student_table(sec, arm) + "\n"]
    if sec.get("ls_vs_plain"):
        rows = [[num(r["temperature"]), _ci(r["difference"], 2, True), f"{r['difference']['n']}",
                 r["difference"]["method"]] for r in sec["ls_vs_plain"]]
        md += [f"ECE (equal-mass, %) of the alpha = {num(sec['ls_vs_plain'][0]['alpha_ls'])} teacher's students "
               "minus the alpha = 0 teacher's, per T:\n",
               md_table(["T", "difference [95 %]", "n", "method"], rows) + "\n"]
    for a, png in sorted((sec.get("png") or {}).items()):
        md.append(f"![reliability diagram, teacher alpha = {a}]({png})\n")
    md.append(section_status(sec))
    return md
