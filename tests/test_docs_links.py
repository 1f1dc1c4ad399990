"""Every relative link in README.md and docs/*.md points at a file that exists, and every ``#anchor``
at a heading that exists (GitHub's heading ids), so moved or renamed sections fail CI."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+).*?\1")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")


def _prose_lines(text: str) -> Iterator[Tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def github_slug(heading: str) -> str:
    """GitHub's id for a heading: markdown emphasis/code marks and link targets dropped, lower case,
    every character but letters, digits, '_', '-' and spaces removed, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> List[str]:
    ids: List[str] = []
    seen: Dict[str, int] = {}
    for _, line in _prose_lines(path.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        ids.append(slug if n == 0 else f"{slug}-{n}")  # repeated headings get -1, -2, ...
    ids += re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", path.read_text(encoding="utf-8"))
    return ids


def links(path: Path) -> Iterator[Tuple[int, str]]:
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        ref = _REF_DEF.match(line)
        if ref:
            yield number, ref.group(1)
            continue
        for m in _LINK.finditer(_INLINE_CODE.sub("", line)):
            yield number, m.group(1)


def _problems(doc: Path) -> List[str]:
    out = []
    for number, target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        where = f"{doc.relative_to(REPO)}:{number}: {target}"
        if not dest.exists():
            out.append(f"{where}: {file_part} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{where}: no heading #{anchor} in {dest.relative_to(REPO)}")
    return out


def test_slug_rule_on_known_headings():
    assert github_slug("Report: `report/results.json`") == "report-reportresultsjson"
    assert github_slug("Command line: `python -m lskd_core.eta` (also installed as `lskd-eta`)") == \
        "command-line-python--m-lskd_coreeta-also-installed-as-lskd-eta"
    assert github_slug("Features file (`.npz`)") == "features-file-npz"


def test_checker_finds_broken_links(tmp_path, monkeypatch):
    """The checker itself: a missing file and a missing anchor are reported, good ones are not,
    and links inside code are ignored."""
    import test_docs_links as me

    monkeypatch.setattr(me, "REPO", tmp_path)
    (tmp_path / "b.md").write_text("# Title here\n\n## Same\n\n## Same\n", encoding="utf-8")
    doc = tmp_path / "a.md"
    doc.write_text("[ok](b.md#title-here) [ok2](b.md#same-1) [self](#top) [web](https://x.invalid/y)\n"
                   "# Top\n[gone](missing.md) [bad](b.md#nope) `[code](nowhere.md)`\n"
                   "```\n[fenced](nowhere.md)\n```\n[ref]: b.md#same\n", encoding="utf-8")
    problems = me._problems(doc)
    assert len(problems) == 2, problems
    assert "missing.md does not exist" in problems[0] and "no heading #nope" in problems[1]


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(REPO)) for d in DOCS])
def test_relative_links_and_anchors_resolve(doc):
    problems = _problems(doc)
    assert not problems, "\n".join(problems)
