"""What the teacher caches saved: teacher forward passes avoided, build time vs the students' time, disk.

A cache run executes its teacher once on every (epoch, sample) view (vision) or every target token
(translation): ``rows`` forward outputs. Each student reading it would otherwise have computed the
same ``rows`` outputs itself (its epochs x its training samples, or tokens x epochs for
translation, where one row per token serves every epoch). So the cache avoids
``students x rows_per_student - rows`` teacher outputs. Times are the runs' own wall times from
result.json (the build's, the students'); disk is :func:`lskd_core.teacher_cache.describe`'s, as
recorded in the cache run's result.json when it finished.

Compute: :func:`cache_savings_section` (per cache run, then :func:`cache_totals`). Render:
:func:`cache_savings_markdown`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from lskd_core.report.markdown import fmt, md_table
from lskd_core.report.view import StudyView

__all__ = ["cache_savings_section", "cache_savings_markdown", "outputs_avoided", "cache_totals"]


def _wall(res: Optional[dict]) -> Optional[float]:
    value = (res or {}).get("wall_time_s")
    return float(value) if isinstance(value, (int, float)) else None


def _per_student_rows(view: StudyView, rows: int) -> int:
    """Teacher outputs one student computes live: vision caches hold one row per (epoch, sample)
    for exactly the students' epochs; translation caches one row per token, used every epoch."""
    if view.task.cache_rows_per_epoch:
        return rows
    return rows * int(view.config.get("student_epochs") or 1)


def outputs_avoided(rows: int, per_student: int, students_done: int) -> int:
    """Teacher outputs a cache of ``rows`` saved ``students_done`` finished readers that would each
    have computed ``per_student`` live: all theirs minus the build's own (never below 0)."""
    if not rows or not students_done:
        return 0
    return max(0, students_done * per_student - rows)


def _readers(view: StudyView, cache_run: str) -> List[str]:
    """The runs that depend on ``cache_run`` (its students), sorted."""
    return sorted(r for r, x in view.runs.items() if cache_run in (x.get("deps") or []))


def _cache_row(view: StudyView, rid: str) -> Dict[str, Any]:
    """One cache run: its description (rows, disk, dtype), its build and readers' wall times, the
    teacher outputs it avoided."""
    res = view.results.get(rid)
    desc = (res or {}).get("cache") or {}
    readers = _readers(view, rid)
    done = [r for r in readers if r in view.results]
    rows = int(desc.get("rows", 0)) if desc else 0
    per_student = _per_student_rows(view, rows) if rows else 0
    student_walls = [w for w in (_wall(view.results.get(r)) for r in done) if w is not None]
    return {"run_id": rid, "done": res is not None, "students": len(readers), "students_done": len(done),
            "rows": rows, "bytes_on_disk": desc.get("bytes_on_disk"), "bytes_per_row": desc.get("bytes_per_row"),
            "kind": desc.get("kind"), "dtype": desc.get("dtype"), "topk": desc.get("topk"),
            "build_wall_s": _wall(res), "students_wall_s": sum(student_walls) if student_walls else None,
            "forwards_avoided": outputs_avoided(rows, per_student, len(done))}


def cache_totals(caches: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Sums over the cache rows (missing sizes and times count 0; outputs computed: built caches only)."""
    return {"caches": len(caches), "built": sum(c["done"] for c in caches),
            "bytes_on_disk": sum(c["bytes_on_disk"] or 0 for c in caches),
            "forwards_avoided": sum(c["forwards_avoided"] for c in caches),
            "build_wall_s": sum(c["build_wall_s"] or 0.0 for c in caches),
            "students_wall_s": sum(c["students_wall_s"] or 0.0 for c in caches),
            "students_done": sum(c["students_done"] for c in caches),
            "teacher_outputs_computed": sum(c["rows"] for c in caches if c["done"])}


def cache_savings_section(view: StudyView) -> dict:
    """The cache runs' rows and their totals; ``partial`` while a cache is not built."""
    caches = sorted(rid for rid, r in view.runs.items() if r.get("kind") == "cache")
    if not caches:
        return {"status": "not-applicable", "reason": "students ran their teachers live (cache = false)"}
    out = [_cache_row(view, rid) for rid in caches]
    total = cache_totals(out)
    return {"status": "ok" if total["built"] == len(out) else "partial", "caches": out, "total": total,
            "missing_inputs": [c["run_id"] for c in out if not c["done"]]}


# ------------------------------------------------------------------------------------------------
# render
# ------------------------------------------------------------------------------------------------
def _mib(n: Optional[float]) -> str:
    return f"{(n or 0) / 2**20:.1f}"


def _summary(tot: Dict[str, Any]) -> str:
    """The paragraph over all caches (:func:`cache_totals`): built, disk, outputs computed and avoided, wall times."""
    return (f"{tot['built']} of {tot['caches']} teacher caches built ({_mib(tot['bytes_on_disk'])} MiB on disk) "
            f"computed {tot['teacher_outputs_computed']:,} teacher outputs once, for {tot['students_done']} finished "
            f"students: {tot['forwards_avoided']:,} teacher outputs that live-teacher students would have computed "
            "were not (students x the rows each would compute, minus the builds'). Wall time: builds "
            f"{fmt(tot['build_wall_s'], 1)} s, the students reading them {fmt(tot['students_wall_s'], 1)} s.\n")


def _table_row(c: Dict[str, Any]) -> List[str]:
    """One cache run's table row (— for what its description lacks)."""
    return [f"`{c['run_id']}`", c["kind"] or "—", c["dtype"] or "—", c["topk"] or "—", f"{c['rows']:,}",
            _mib(c["bytes_on_disk"]), fmt(c["bytes_per_row"], 0), f"{c['students_done']}/{c['students']}",
            f"{c['forwards_avoided']:,}", fmt(c["build_wall_s"], 1), fmt(c["students_wall_s"], 1)]


def cache_savings_markdown(res: dict) -> List[str]:
    """The teacher-cache section of report.md (nothing when the students ran their teachers live)."""
    sec = res.get("cache_savings") or {}
    if sec.get("status") == "not-applicable":
        return []
    md = ["## Teacher caches: compute saved and disk used\n", _summary(sec["total"])]
    md.append(md_table(["cache run", "kind", "dtype", "top-K", "rows", "MiB", "bytes/row", "students done",
                        "outputs avoided", "build s", "students s"],
                       [_table_row(c) for c in sec.get("caches", [])]))
    if sec.get("status") == "partial":
        md.append(f"\n> Partial: caches not built yet ({', '.join(sec.get('missing_inputs', [])[:6])}).")
    md.append("")
    return md
