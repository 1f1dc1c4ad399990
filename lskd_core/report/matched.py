"""Entropy-matched students (App. H, Tables H.2-H.4), beside the grid.

For each LS teacher cell (alpha > 0, T) of ``matched_temperatures``, the study's ``match`` run found
the plain teacher's temperature T' at which its mean entropy on the training set equals the LS
teacher's at T, and trained the plain teacher's students at T' (``matched`` students, seeds as the
grid). This section puts their scores next to the LS cell's students, with T' and both entropies:
equal smoothness, different teachers. Read from ``matched.json`` and the runs' result.json.

Each row also carries two differences with 95 % intervals from :func:`lskd_core.statistics.cell_difference`
(the same units as the verdict: the teacher when each alpha has two or more teachers, the student
seed otherwise; paired by (teacher seed, student seed)): ``vs_matched`` = LS cell minus the matched
plain students (what equal smoothness leaves unexplained) and ``vs_grid`` = LS cell minus the plain
teacher's grid students at the same T (the grid's own LS - plain difference at that T).

Compute: :func:`matched_section` (rows from the manifest and ``matched.json``, then each row's
scores and differences). Render: :func:`matched_markdown`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from lskd_core import statistics as st
from lskd_core.jsonio import BadJson, num, read_json_object
from lskd_core.report.accuracy import mean_std
from lskd_core.report.markdown import fmt, md_table
from lskd_core.report.view import StudyView

__all__ = ["matched_section", "matched_markdown"]


def _pairs(view: StudyView, match_run: str) -> Dict[str, dict]:
    """``matched.json``'s pairs by key, or {} while the match run is not done."""
    if match_run not in view.results:
        return {}
    try:
        got = read_json_object(view.run_dir(match_run) / "matched.json")
    except BadJson:
        return {}
    return {str(p["key"]): p for p in (got or {}).get("pairs", []) if isinstance(p, dict) and "key" in p}


def _score(view: StudyView, run_id: str):
    res = view.score(run_id)
    value = res.get(view.task.score_key) if res else None
    return None if value is None else float(value)


def _obs(view: StudyView, run_id: str, alpha: float, temperature: float) -> Optional[Dict[str, Any]]:
    """A finished student as a statistics record (its teacher seed and seed from the manifest)."""
    score = _score(view, run_id)
    if score is None:
        return None
    info = view.runs.get(run_id, {}).get("info") or {}
    return {"alpha": alpha, "temperature": temperature, "seed": int(info.get("seed", 0)),
            "teacher_seed": int(info.get("teacher_seed", 0)), "value": score}


def matched_differences(ls: List[dict], matched: List[dict], plain: List[dict]) -> Dict[str, Any]:
    """LS cell minus the matched plain students and minus the plain grid students at the same T.

    ``ls``, ``matched``, ``plain``: statistics records (alpha, temperature, seed, teacher_seed,
    value). The matched students are put in the cell (plain alpha, LS T) so that
    :func:`statistics.cell_difference` pairs them with the LS students unit by unit; a difference
    is None when a side has no runs."""
    out: Dict[str, Any] = {"vs_matched": None, "vs_grid": None}
    if not ls:
        return out
    a, t = ls[0]["alpha"], ls[0]["temperature"]
    for key, other in (("vs_matched", matched), ("vs_grid", plain)):
        if other:
            p_alpha = other[0]["alpha"]
            rows = ls + [dict(r, alpha=p_alpha, temperature=t) for r in other]
            out[key] = st.cell_difference(st.as_observations(rows), (a, t), (p_alpha, t))
    return out


def _new_row(key: str, info: dict) -> dict:
    """An empty row for the LS cell a matched student was matched to."""
    return {"key": key, "ls_alpha": float(info["matched_to_alpha"]), "ls_temperature": float(info["matched_to_temperature"]),
            "plain_alpha": float(info["alpha"]), "matched_temperatures": {}, "ls_entropy": [], "plain_entropy": [],
            "matched_runs": [], "matched_scores": [], "ls_scores": []}


def _add_pair(row: dict, pair: Optional[dict], teacher_seed: str) -> None:
    """T' and both entropies of one teacher seed's match (once per teacher seed)."""
    if pair is None or teacher_seed in row["matched_temperatures"]:
        return
    row["matched_temperatures"][teacher_seed] = float(pair["matched_temperature"])
    row["ls_entropy"].append(float(pair["ls_entropy"]))
    row["plain_entropy"].append(float(pair["plain_entropy"]))


def _add_matched_run(view: StudyView, row: dict, rid: str) -> None:
    """A matched student: listed, and its score (with its statistics record) when it finished."""
    row["matched_runs"].append(rid)
    rec = _obs(view, rid, row["plain_alpha"], row["ls_temperature"])
    if rec is not None:
        row["matched_scores"].append(rec["value"])
        row.setdefault("_matched", []).append(rec)


def _grid_obs(view: StudyView, alpha: float, temperature: float) -> List[dict]:
    """The finished grid students of (alpha, T) as statistics records."""
    return [r for r in (_obs(view, view.student(alpha, temperature, s), alpha, temperature) for s in view.seeds)
            if r is not None]


def _finish_row(view: StudyView, row: dict) -> None:
    """The LS cell's scores, both sides' mean and std, and the two differences."""
    a, t, p = row["ls_alpha"], row["ls_temperature"], row["plain_alpha"]
    ls, plain = _grid_obs(view, a, t), _grid_obs(view, p, t)
    row["ls_scores"] = [r["value"] for r in ls]
    row["matched_mean"], row["matched_std"] = mean_std(row["matched_scores"])
    row["ls_mean"], row["ls_std"] = mean_std(row["ls_scores"])
    row.update(matched_differences(ls, row.pop("_matched", []), plain))


def _rows(view: StudyView, matched: Dict[str, dict]) -> List[dict]:
    """One row per LS cell, from the matched students' manifest info and the match runs' pairs."""
    pairs_by_run = {m: _pairs(view, m) for m in {str(i["match_run"]) for i in matched.values()}}
    rows: Dict[str, dict] = {}
    for rid, info in sorted(matched.items()):
        key = str(info["matched_key"])
        row = rows.setdefault(key, _new_row(key, info))
        _add_pair(row, pairs_by_run[str(info["match_run"])].get(key), str(info.get("teacher_seed", 0)))
        _add_matched_run(view, row, rid)
    for row in rows.values():
        _finish_row(view, row)
    return sorted(rows.values(), key=lambda r: (r["ls_alpha"], r["ls_temperature"]))


def matched_section(view: StudyView) -> dict:
    """One row per (LS alpha, T): T' (per teacher seed), both entropies, both students' scores."""
    matched = {rid: r.get("info") or {} for rid, r in view.runs.items() if (r.get("info") or {}).get("matched_key")}
    if not matched:
        return {"status": "not-applicable", "reason": "no entropy-matched students planned (matched_temperatures = [])"}
    out = _rows(view, matched)
    complete = all(r["matched_temperatures"] and len(r["matched_scores"]) == len(r["matched_runs"]) for r in out)
    return {"status": "ok" if complete else "partial", "rows": out,
            "missing_inputs": [] if complete else [r["key"] for r in out if not r["matched_temperatures"]]}


# ------------------------------------------------------------------------------------------------
# render
# ------------------------------------------------------------------------------------------------
def _mean_pm(mean, std, n: int) -> str:
    if mean is None:
        return "—"
    return f"{fmt(mean)}" + (f" ± {fmt(std)}" if std is not None else "") + f" (n={n})"


def _diff(est: Optional[dict]) -> str:
    """A difference with its 95 % interval and units, or — when a side has no runs."""
    if est is None:
        return "—"
    ci = f" [{est['ci'][0]:+.2f}, {est['ci'][1]:+.2f}]" if est.get("ci") else " (no interval)"
    return f"{est['estimate']:+.2f}{ci} (n = {est['n']} {est['unit']}s)"


def _entropies(r: dict) -> str:
    """Mean entropy of the LS teacher at T / the plain teacher at T' over teacher seeds (— without a match)."""
    if not r["ls_entropy"]:
        return "—"
    return (f"{fmt(sum(r['ls_entropy']) / len(r['ls_entropy']), 4)} / "
            f"{fmt(sum(r['plain_entropy']) / len(r['plain_entropy']), 4)}")


def _table_row(r: dict) -> List[str]:
    """One LS cell: its students, the matched plain students at T', entropies, both differences."""
    t_prime = ", ".join(f"{x:.4g}" for x in sorted(r["matched_temperatures"].values())) or "—"
    return [f"alpha = {num(r['ls_alpha'])}, T = {num(r['ls_temperature'])}",
            _mean_pm(r["ls_mean"], r["ls_std"], len(r["ls_scores"])),
            f"alpha = {num(r['plain_alpha'])}, T' = {t_prime}",
            _mean_pm(r["matched_mean"], r["matched_std"], len(r["matched_scores"])), _entropies(r),
            _diff(r.get("vs_matched")), _diff(r.get("vs_grid"))]


def matched_markdown(res: dict, unit: str) -> List[str]:
    """The entropy-matched section of report.md (nothing when no matched students were planned)."""
    sec = res.get("matched") or {}
    if sec.get("status") == "not-applicable":
        return []
    md = ["## Entropy-matched students (App. H, Tables H.2-H.4)\n",
          "The plain teacher distilled at the temperature T' where its mean entropy on the training set "
          "equals the LS teacher's at T: equally smooth targets from different teachers. If smoothness "
          f"alone decided KD, the two {unit} columns would agree. The last two columns are the LS cell's "
          "students minus the matched plain students and minus the plain teacher's students at the same T "
          "(mean [95 % interval]; over teachers, each teacher's students averaged first, when every alpha "
          "has two or more teachers, otherwise over student seeds; paired).\n"]
    md.append(md_table(["LS teacher cell", f"its students' {unit}", "plain teacher, matched T'",
                        f"its students' {unit}", "mean entropy (LS at T / plain at T')",
                        "LS − matched plain [95 %]", "LS − plain at the same T [95 %]"],
                       [_table_row(r) for r in sec.get("rows", [])]))
    if sec.get("status") == "partial":
        md.append(f"\n> Partial: not all matched runs are done ({', '.join(sec.get('missing_inputs', [])[:6])}).")
    md.append("")
    return md
