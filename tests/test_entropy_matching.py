"""App. H's entropy pairing end to end: the match run's command line (lskd_core.study.match) and the
report's matched table (lskd_core.report.matched), against entropies computed here with scipy and cells
written out by hand. Written for the cosmic-ray session mutation/entropy_matching.toml (issue 20)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import finished_run, mean_entropy_reference, well_formed_report

from lskd_core.features_io import save_features
from lskd_core.report.matched import matched_markdown
from lskd_core.study.match import FORMAT, match_pairs
from lskd_core.study.match import main as match_main

REPO = Path(__file__).resolve().parents[1]


def _teacher(rng, n, k, sharp):
    z = rng.normal(size=(n, k))
    z[np.arange(n), rng.integers(0, k, n)] += sharp
    return z.astype(np.float32)


def _export(path: Path, logits: np.ndarray) -> str:
    n = logits.shape[0]
    save_features(path, np.zeros((n, 2), np.float32), np.zeros(n, np.int64), logits=logits)
    return str(path)


# ----------------------------------------------------------------------------- the match run ---
def test_a_wide_vocabulary_is_matched_and_the_plain_alpha_is_recorded(tmp_path, capsys):
    """300 classes on both sides (ints above CPython's small-int cache: compared by value), the
    matched plain entropy equals the LS teacher's, and the plain teacher's alpha is what was given."""
    rng = np.random.default_rng(1)
    plain, ls = _teacher(rng, 80, 300, 8.0), 0.5 * _teacher(rng, 80, 300, 8.0)
    pairs = match_pairs(plain, [(0.1, ls)], [2.0])
    (p,) = pairs
    assert p["plain_alpha"] == 0.0 and p["ls_alpha"] == 0.1 and p["samples"] == 80
    assert p["ls_entropy"] == pytest.approx(mean_entropy_reference(ls, 2.0), rel=1e-9)
    assert mean_entropy_reference(plain, p["matched_temperature"]) == pytest.approx(p["ls_entropy"], rel=1e-6)
    out = tmp_path / "m.json"
    rc = match_main(["--plain", _export(tmp_path / "p.npz", plain), "--plain-alpha", "0.05",
                     "--ls", "0.1", _export(tmp_path / "l.npz", ls), "--at", "2", "--out", str(out)])
    got = json.loads(out.read_text())
    assert rc == 0 and got["format"] == FORMAT == "lskd-matched-temperatures" and got["version"] == 1
    said = capsys.readouterr().out.strip().splitlines()
    assert said == [f"a0.1_T2: plain teacher T' = {p['matched_temperature']:.6g} (entropy {p['plain_entropy']:.6f} = "
                    f"LS teacher's {p['ls_entropy']:.6f})"]
    assert got["pairs"][0]["plain_alpha"] == 0.05
    assert got["temperatures"] == {"a0.1_T2": pytest.approx(p["matched_temperature"])}
    default = tmp_path / "d.json"
    match_main(["--plain", str(tmp_path / "p.npz"), "--ls", "0.1", str(tmp_path / "l.npz"), "--at", "2",
                "--out", str(default)])
    assert json.loads(default.read_text())["pairs"][0]["plain_alpha"] == 0.0


def test_teachers_of_different_vocabularies_are_one_line(tmp_path, capsys):
    rng = np.random.default_rng(2)
    rc = match_main(["--plain", _export(tmp_path / "p.npz", _teacher(rng, 20, 10, 4.0)),
                     "--ls", "0.1", _export(tmp_path / "l.npz", _teacher(rng, 20, 12, 4.0)), "--at", "1",
                     "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "12 classes, the plain one 10" in err[0]
    assert not (tmp_path / "m.json").exists()


def test_a_corrupt_export_is_one_line_naming_it(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip archive" * 4)
    rc = match_main(["--plain", str(bad), "--ls", "0.1", str(bad), "--at", "1", "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(bad) in err[0] and "corrupt" in err[0]


@pytest.mark.parametrize("flag", ["--plain", "--ls", "--at", "--out"])
def test_every_input_and_the_output_are_required(capsys, flag):
    argv = {"--plain": ["p.npz"], "--ls": ["0.1", "l.npz"], "--at": ["1"], "--out": ["m.json"]}
    with pytest.raises(SystemExit) as exc:
        match_main([x for k, v in argv.items() if k != flag for x in (k, *v)])
    assert exc.value.code == 2 and flag in capsys.readouterr().err


def test_the_module_exits_with_the_cli_status(tmp_path):
    res = subprocess.run([sys.executable, "-m", "lskd_core.study.match", "--plain", str(tmp_path / "absent.npz"),
                          "--ls", "0.1", str(tmp_path / "absent.npz"), "--at", "1", "--out", str(tmp_path / "m.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "no such features file" in res.stderr and "Traceback" not in res.stderr


def _matched_study(study: Path, seeds: int, temps, matched_temps):
    """A hand-made demo study (one teacher per alpha) with its teachers and grid students finished
    (students of seed s score 80 + s); returns the helper that finishes further runs."""
    import lskd_core.study as S

    cfg = S.load_config("demo", overrides={"seeds": seeds, "temperatures": list(temps),
                                           "matched_temperatures": list(matched_temps), "analysis": False})
    S.write_manifest(study, cfg, S.build_plan(cfg))
    for a in (0, 0.1):
        finished_run(study, f"teacher_a{a}", val_acc1=85.0, val_acc5=99.0)
        for t in temps:
            for s in range(seeds):
                finished_run(study, f"student_a{a}_T{t}_s{s}", val_acc1=80.0 + s, val_acc5=99.0)
    return lambda run_id, **fields: finished_run(study, run_id, **fields)


# ------------------------------------------------------------------------- the report's table ---
def _row(**kw):
    row = {"key": "a0.1_T64", "ls_alpha": 0.1, "ls_temperature": 64.0, "plain_alpha": 0.0,
           "matched_temperatures": {"0": 140.0, "1": 151.0}, "ls_entropy": [2.25, 2.35], "plain_entropy": [2.2, 2.4],
           "matched_runs": ["m0", "m1", "m2"], "matched_scores": [79.0, 80.0, 81.5], "ls_scores": [78.0, 78.5],
           "matched_mean": 80.166667, "matched_std": 1.258306, "ls_mean": 78.25, "ls_std": 0.353553,
           "vs_matched": {"estimate": -1.5, "ci": [-3.25, 0.25], "n": 2, "unit": "teacher"}, "vs_grid": None}
    row.update(kw)
    return row


def test_the_matched_table_row_by_hand():
    md = "\n".join(matched_markdown({"matched": {"status": "ok", "rows": [_row()]}}, "points"))
    by_hand = ("| alpha = 0.1, T = 64 | 78.25 ± 0.35 (n=2) | alpha = 0, T' = 140, 151 | 80.17 ± 1.26 (n=3) | "
               "2.3000 / 2.3000 | -1.50 [-3.25, +0.25] (n = 2 teachers) | — |")
    assert by_hand in md and "Partial" not in md  # a complete section has no partial note
    # a row whose match has not run has no entropies; unequal entropies are each side's own mean
    md = "\n".join(matched_markdown({"matched": {"status": "partial", "missing_inputs": ["a0.1_T64"], "rows": [
        _row(matched_temperatures={}, ls_entropy=[], plain_entropy=[])]}}, "points"))
    assert "| alpha = 0, T' = — | 80.17 ± 1.26 (n=3) | — |" in md and "> Partial" in md
    md = "\n".join(matched_markdown({"matched": {"status": "ok", "rows": [
        _row(ls_entropy=[1.0, 2.0, 3.0], plain_entropy=[0.5, 0.75, 1.0])]}}, "points"))
    assert "| 2.0000 / 0.7500 |" in md


def test_only_a_section_that_does_not_apply_is_left_out():
    assert matched_markdown({"matched": {"status": "not-applicable"}}, "points") == []
    for status in ("ok", "missing", "error", "partial"):
        md = matched_markdown({"matched": {"status": status, "rows": []}}, "points")
        assert md[0].startswith("## Entropy-matched students"), status


def test_a_matched_student_still_running_makes_the_section_partial(tmp_path):
    """The section is complete only when every planned matched student has a score."""
    from lskd_core.report import write_report

    done = _matched_study(tmp_path, 2, (1, 64), (64,))
    (done("match") / "matched.json").write_text(json.dumps({"pairs": [
        {"key": "a0.1_T64", "matched_temperature": 90.0, "ls_entropy": 2.3, "plain_entropy": 2.3}]}))
    done("matched_a0_for_a0.1_T64_s0", val_acc1=79.0, val_acc5=99.0)  # seed 1's matched student has not finished
    res = json.loads((write_report(tmp_path) / "results.json").read_text())
    (row,) = res["matched"]["rows"]
    assert res["matched"]["status"] == "partial"
    assert row["matched_runs"] == ["matched_a0_for_a0.1_T64_s0", "matched_a0_for_a0.1_T64_s1"]
    assert row["matched_scores"] == [79.0] and row["matched_temperatures"] == {"0": 90.0}
    # the partial note and the table are their own blocks: the next section's heading is not run into them
    well_formed_report(tmp_path / "report")
    done("matched_a0_for_a0.1_T64_s1", val_acc1=79.5, val_acc5=99.0)
    rep = write_report(tmp_path)
    assert json.loads((rep / "results.json").read_text())["matched"]["status"] == "ok"
    well_formed_report(rep)


@pytest.mark.parametrize("alpha", ["abc", "1.5", "-0.1"])
def test_a_bad_ls_alpha_is_one_line(tmp_path, capsys, alpha):
    rc = match_main(["--plain", "p.npz", "--ls", alpha, "l.npz", "--at", "1", "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and f"--ls ALPHA must be a label-smoothing value in [0, 1), got {alpha!r}" in err[0]


def test_the_partial_note_names_up_to_six_cells_without_a_match():
    rows = [_row(key=f"a0.1_T{t}", ls_temperature=float(t), matched_temperatures={}, ls_entropy=[], plain_entropy=[])
            for t in (2, 3, 4, 5, 6, 7, 8)]
    sec = {"status": "partial", "rows": rows, "missing_inputs": [r["key"] for r in rows]}
    md = "\n".join(matched_markdown({"matched": sec}, "points"))
    assert "> Partial: not all matched runs are done (a0.1_T2, a0.1_T3, a0.1_T4, a0.1_T5, a0.1_T6, a0.1_T7)." in md


def test_only_cells_whose_match_is_missing_are_listed_and_keyless_pairs_are_skipped(tmp_path):
    from lskd_core.report import write_report

    done = _matched_study(tmp_path, 1, (1, 2, 64), (2, 64))
    # the match run wrote T = 64's pair (and a malformed entry without a key), not T = 2's
    (done("match") / "matched.json").write_text(json.dumps({"pairs": [
        {"matched_temperature": 5.0}, {"key": "a0.1_T64", "matched_temperature": 90.0, "ls_entropy": 2.3,
                                       "plain_entropy": 2.3}]}))
    for t in (2, 64):
        done(f"matched_a0_for_a0.1_T{t}_s0", val_acc1=79.0, val_acc5=99.0)
    res = json.loads((write_report(tmp_path) / "results.json").read_text())
    assert res["matched"]["status"] == "partial" and res["matched"]["missing_inputs"] == ["a0.1_T2"]
    rows = {r["key"]: r for r in res["matched"]["rows"]}
    assert rows["a0.1_T64"]["matched_temperatures"] == {"0": 90.0} and rows["a0.1_T2"]["matched_temperatures"] == {}


def test_a_damaged_matched_json_reads_as_no_pairs_yet(tmp_path):
    from types import SimpleNamespace

    from lskd_core.report.matched import _pairs

    run_dir = tmp_path / "match"
    run_dir.mkdir()
    view = SimpleNamespace(results={"match": {"status": "done"}}, run_dir=lambda rid: tmp_path / rid)
    (run_dir / "matched.json").write_text('{"pairs": [{"key": "0.1/64", "matched_temperature": 60}')  # cut off
    assert _pairs(view, "match") == {}
    (run_dir / "matched.json").write_text(json.dumps({"pairs": [{"key": "0.1/64", "t": 60}, {"no key": 1}]}))
    assert _pairs(view, "match") == {"0.1/64": {"key": "0.1/64", "t": 60}}
    assert _pairs(SimpleNamespace(results={}, run_dir=view.run_dir), "match") == {}  # not done: not read
