"""Entropy-matched students (App. H, Tables H.2-H.4), beside the grid.

For each LS teacher cell (alpha > 0, T) of ``matched_temperatures``, the study's ``match`` run found
the plain teacher's temperature T' at which its mean entropy on the training set equals the LS
teacher's at T, and trained the plain teacher's students at T' (``matched`` students, seeds as the
grid). This section puts their scores next to the LS cell's students, with T' and both entropies:
equal smoothness, different teachers. Read from ``matched.json`` and the runs' result.json.
"""

from __future__ import annotations

from typing import Dict, List

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


def matched_section(view: StudyView) -> dict:
    """One row per (LS alpha, T): T' (per teacher seed), both entropies, both students' scores."""
    matched = {rid: r.get("info") or {} for rid, r in view.runs.items() if (r.get("info") or {}).get("matched_key")}
    if not matched:
        return {"status": "not-applicable", "reason": "no entropy-matched students planned (matched_temperatures = [])"}
    pairs_by_run = {m: _pairs(view, m) for m in {str(i["match_run"]) for i in matched.values()}}
    rows: Dict[str, dict] = {}
    for rid, info in sorted(matched.items()):
        key = str(info["matched_key"])
        a, t = float(info["matched_to_alpha"]), float(info["matched_to_temperature"])
        row = rows.setdefault(key, {"key": key, "ls_alpha": a, "ls_temperature": t, "plain_alpha": float(info["alpha"]),
                                    "matched_temperatures": {}, "ls_entropy": [], "plain_entropy": [],
                                    "matched_runs": [], "matched_scores": [], "ls_scores": []})
        pair = pairs_by_run[str(info["match_run"])].get(key)
        tseed = str(info.get("teacher_seed", 0))
        if pair is not None and tseed not in row["matched_temperatures"]:
            row["matched_temperatures"][tseed] = float(pair["matched_temperature"])
            row["ls_entropy"].append(float(pair["ls_entropy"]))
            row["plain_entropy"].append(float(pair["plain_entropy"]))
        row["matched_runs"].append(rid)
        score = _score(view, rid)
        if score is not None:
            row["matched_scores"].append(score)
    for row in rows.values():
        for s in view.seeds:
            score = _score(view, view.student(row["ls_alpha"], row["ls_temperature"], s))
            if score is not None:
                row["ls_scores"].append(score)
        row["matched_mean"], row["matched_std"] = mean_std(row["matched_scores"])
        row["ls_mean"], row["ls_std"] = mean_std(row["ls_scores"])
    out: List[dict] = sorted(rows.values(), key=lambda r: (r["ls_alpha"], r["ls_temperature"]))
    complete = all(r["matched_temperatures"] and len(r["matched_scores"]) == len(r["matched_runs"]) for r in out)
    return {"status": "ok" if complete else "partial", "rows": out,
            "missing_inputs": [] if complete else [r["key"] for r in out if not r["matched_temperatures"]]}


def _mean_pm(mean, std, n: int) -> str:
    if mean is None:
        return "—"
    return f"{fmt(mean)}" + (f" ± {fmt(std)}" if std is not None else "") + f" (n={n})"


def matched_markdown(res: dict, unit: str) -> List[str]:
    sec = res.get("matched") or {}
    if sec.get("status") == "not-applicable":
        return []
    md = ["## Entropy-matched students (App. H, Tables H.2-H.4)\n",
          "The plain teacher distilled at the temperature T' where its mean entropy on the training set "
          "equals the LS teacher's at T: equally smooth targets from different teachers. If smoothness "
          f"alone decided KD, the two {unit} columns would agree.\n"]
    rows = []
    for r in sec.get("rows", []):
        temps = sorted(r["matched_temperatures"].values())
        t_prime = ", ".join(f"{x:.4g}" for x in temps) or "—"
        ent = (f"{fmt(sum(r['ls_entropy']) / len(r['ls_entropy']), 4)} / "
               f"{fmt(sum(r['plain_entropy']) / len(r['plain_entropy']), 4)}") if r["ls_entropy"] else "—"
        rows.append([f"alpha = {num(r['ls_alpha'])}, T = {num(r['ls_temperature'])}",
                     _mean_pm(r["ls_mean"], r["ls_std"], len(r["ls_scores"])),
                     f"alpha = {num(r['plain_alpha'])}, T' = {t_prime}",
                     _mean_pm(r["matched_mean"], r["matched_std"], len(r["matched_scores"])), ent])
    md.append(md_table(["LS teacher cell", f"its students' {unit}", "plain teacher, matched T'",
                        f"its students' {unit}", "mean entropy (LS at T / plain at T')"], rows))
    if sec.get("status") == "partial":
        md.append(f"\n> Partial: not all matched runs are done ({', '.join(sec.get('missing_inputs', [])[:6])}).")
    md.append("")
    return md
