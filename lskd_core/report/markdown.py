"""Markdown building blocks shared by the report's sections."""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence

__all__ = ["fmt", "md_table", "section_status"]


def fmt(x: Optional[float], nd: int = 2) -> str:
    """``x`` with ``nd`` decimals; an em dash for a missing or non-finite value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{nd}f}"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(lines)


def section_status(sec: dict) -> str:
    """A quoted line saying why a section is incomplete (empty when it is complete)."""
    st = sec.get("status")
    if st in ("ok", None):
        return ""
    if st == "error":
        return f"\n> **This analysis failed**: {sec.get('error')}\n"
    if st == "partial":
        return f"\n> Partial: inputs missing ({', '.join(sec.get('missing_inputs', [])[:6])}).\n"
    return f"\n> Not available: {sec.get('reason', st)}.\n"
