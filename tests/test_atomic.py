"""lskd_core.atomic: a failed write leaves the previous file intact and no temporary behind."""

import json

import pytest

from lskd_core.atomic import atomic_open, atomic_savefig, atomic_write_json, atomic_write_text


def test_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "result.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w", encoding="utf-8") as handle:
            handle.write("half of the new cont")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_unserialisable_json_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"ok": True})
    with pytest.raises(ValueError):
        atomic_write_json(path, {"x": float("nan")}, allow_nan=False)
    assert json.loads(path.read_text()) == {"ok": True}


def test_read_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "x", "rb"):
            pass


def test_savefig_writes_a_png(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    out = atomic_savefig(fig, tmp_path / "f.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_written_files_follow_the_umask_like_open(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as handle:
            handle.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644
