"""``report.md``: the header, the verdict, the sections that apply to the task, the runs."""

from __future__ import annotations

from typing import List

from lskd_core.jsonio import num
from lskd_core.report.accuracy import grid_markdown
from lskd_core.report.cache_savings import cache_savings_markdown
from lskd_core.report.calibration import calibration_markdown
from lskd_core.report.classwise import classwise_markdown
from lskd_core.report.entropy import entropy_markdown
from lskd_core.report.eta import eta_markdown
from lskd_core.report.eta_training import eta_training_markdown
from lskd_core.report.feature_kd import feature_kd_markdown
from lskd_core.report.markdown import md_table
from lskd_core.report.matched import matched_markdown
from lskd_core.report.profile import profile_markdown
from lskd_core.report.projection import projection_markdown
from lskd_core.report.token_entropy import token_entropy_markdown
from lskd_core.report.token_eta import token_eta_markdown
from lskd_core.report.variants import variants_markdown
from lskd_core.report.view import StudyView

__all__ = ["render"]


def _header(view: StudyView, res: dict) -> List[str]:
    cfg = view.config
    md = [f"# LS x KD study: {cfg.get('name')}\n"]
    md.append(view.task.setup_line(cfg) + f". alpha in {{{', '.join(num(a) for a in view.alphas)}}}, T in "
              f"{{{', '.join(num(t) for t in view.temperatures)}}}, {len(view.seeds)} student seed(s) "
              f"({', '.join(map(str, view.seeds))}), KD beta = {cfg.get('kd_beta')}.")
    if res.get("study_wall_time_s") is not None:
        md.append(f"Study wall time (this invocation): {res['study_wall_time_s'] / 60:.1f} min.")
    md.append(f"Report written {res['written']}.\n")
    return md


def _analyses(view: StudyView, res: dict) -> List[str]:
    names = view.class_names() or []
    applies = view.task.analyses
    md: List[str] = []
    note = view.task.not_applicable_note()
    if note:
        md.append(note)
    if "eta" in applies:
        md += eta_markdown(res, names)
    md += eta_training_markdown(res)  # empty unless students logged eta during training
    if "entropy" in applies:
        md += entropy_markdown(res)
    if "projection" in applies:
        md += projection_markdown(res)
    if "soft_output" in applies:
        md += profile_markdown(res, names)
    if "classwise" in applies:
        md += classwise_markdown(res, names)
    if "token_entropy" in applies:
        md += token_entropy_markdown(res)
    if "token_eta" in applies:
        md += token_eta_markdown(res)
    if "calibration" in applies:
        md += calibration_markdown(res)
    return md


def _runs(view: StudyView, res: dict) -> List[str]:
    md = ["## Runs\n"]
    runs = res["runs"]
    md.append(f"{runs['done']} of {runs['planned']} runs finished. Run directories: `{view.dir / 'runs'}`.\n")
    if runs["not_done"]:
        md.append("Not finished: " + ", ".join(f"`{r}`" for r in runs["not_done"][:30])
                  + (" ..." if len(runs["not_done"]) > 30 else "") + "\n")
    rows = view.provenance_rows()
    if rows:
        # a run's hash covers these (lskd_core.study.provenance): one row per kind means no mixing
        md.append("Code and versions each result came from:\n")
        md.append(md_table(["run kind", "runs", "lskd", "code digest", "frameworks"], rows) + "\n")
    if res.get("problems"):
        md.append("Problems found and handled in this invocation:\n")
        for p in res["problems"]:
            md.append(f"- `{p.get('run_id')}`: {p.get('event')} — {p.get('reason')}; {p.get('action')}")
        md.append("")
    return md


def render(view: StudyView, res: dict) -> str:
    md = _header(view, res)
    md.append("## Verdict\n")
    md.append(res["verdict"].get("text", "—") + "\n")
    md += grid_markdown(res, view.task)
    md += feature_kd_markdown(res)  # Table B.5: empty unless the students are feature-KD students
    md += matched_markdown(res, view.task.score_unit)
    md += variants_markdown(res, view.task.score_unit or "points")
    md += _analyses(view, res)
    md += cache_savings_markdown(res)
    md += _runs(view, res)
    return "\n".join(md) + "\n"
