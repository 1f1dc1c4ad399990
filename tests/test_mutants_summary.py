"""scripts/mutants.py's summary (make mutants): outcomes read from a cosmic-ray session database, the score
over killed + survived only, equivalent mutants reported but not scored, survivors listed with their diffs."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("mutants_script", REPO / "scripts" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _session(path: Path, rows) -> None:
    con = sqlite3.connect(str(path))
    con.execute("CREATE TABLE mutation_specs (module_path VARCHAR, operator_name VARCHAR, operator_args JSON, "
                "occurrence INTEGER, start_pos_row INTEGER, start_pos_col INTEGER, end_pos_row INTEGER, "
                "end_pos_col INTEGER, definition_name VARCHAR, job_id VARCHAR NOT NULL PRIMARY KEY)")
    con.execute("CREATE TABLE work_results (worker_outcome VARCHAR(9), output TEXT, test_outcome VARCHAR(11), "
                "diff TEXT, job_id VARCHAR NOT NULL PRIMARY KEY)")
    for i, (line, operator, worker, test) in enumerate(rows):
        con.execute("INSERT INTO mutation_specs VALUES (?, ?, '{}', 0, ?, 0, ?, 1, 'f', ?)",
                    ("lskd_core/findings.py", operator, line, line, f"j{i}"))
        if worker is not None:
            con.execute("INSERT INTO work_results VALUES (?, '', ?, ?, ?)", (worker, test, f"-a\n+b{i}", f"j{i}"))
    con.commit()
    con.close()


def test_summary_counts_scores_and_lists_survivors(tmp_path):
    mutants = _load()
    (tmp_path / "findings").mkdir()
    _session(tmp_path / "findings" / "session.sqlite", [
        (10, "core/NumberReplacer", "NORMAL", "KILLED"), (11, "core/AddNot", "normal", "killed"),
        (12, "core/AddNot", "timeout", None), (13, "core/ReplaceTrueWithFalse", "normal", "survived"),
        (14, "core/NumberReplacer", "normal", "survived"), (15, "core/AddNot", "SKIPPED", None),
        (16, "core/AddNot", "exception", None), (17, "core/AddNot", None, None)])
    equivalent = [{"module": "lskd_core/findings.py", "operator": "core/NumberReplacer", "line": 14,
                   "reason": "a rounding constant that only changes printed digits"}]
    summary = mutants.summarize(tmp_path, [Path("findings.toml")], equivalent, wall_s=60.0)
    counts = summary["modules"]["lskd_core/findings.py"]
    assert (counts["killed"], counts["survived"], counts["equivalent"]) == (3, 1, 1)
    assert (counts["skipped"], counts["incompetent"], counts["pending"]) == (1, 1, 1)
    assert counts["score_percent"] == pytest.approx(75.0)  # 3 killed of 4 decided, the equivalent one left out
    assert [s["line"] for s in summary["survivors"]] == [13]
    text = (tmp_path / "summary.md").read_text()
    assert "lskd_core/findings.py:13 core/ReplaceTrueWithFalse" in text and "+b3" in text
    assert json.loads((tmp_path / "summary.json").read_text())["modules"] == summary["modules"]


def test_a_missing_config_is_one_line(capsys):
    assert _load().main(["no/such.toml"]) == 2
    assert "no such cosmic-ray config" in capsys.readouterr().err


def test_rerun_survivors_forgets_only_the_survivors(tmp_path):
    mutants = _load()
    db = tmp_path / "session.sqlite"
    _session(db, [(10, "core/AddNot", "NORMAL", "KILLED"), (11, "core/AddNot", "NORMAL", "SURVIVED"),
                  (12, "core/AddNot", "SKIPPED", None), (13, "core/AddNot", "normal", "survived")])
    assert mutants._forget_survivors(db) == 2
    outcomes = {r["line"]: r["outcome"] for r in mutants.session_results(db)}
    assert outcomes == {10: "killed", 11: "pending", 12: "skipped", 13: "pending"}


def test_the_module_digest_follows_the_mutated_source_only(tmp_path, monkeypatch):
    mutants = _load()
    monkeypatch.setattr(mutants, "REPO", tmp_path)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "other.py").write_text("y = 1\n")
    config = tmp_path / "a.toml"
    config.write_text('[cosmic-ray]\nmodule-path = ["pkg/a.py"]\ntest-command = "pytest"\n')
    before = mutants._module_digest(config)
    (tmp_path / "other.py").write_text("y = 2\n")
    assert mutants._module_digest(config) == before  # another file: the session stays valid
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert mutants._module_digest(config) != before  # the mutated module changed: re-initialise


def test_every_module_of_a_list_over_several_lines_is_in_the_digest(tmp_path, monkeypatch):
    mutants = _load()
    monkeypatch.setattr(mutants, "REPO", tmp_path)
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.py").write_text("x = 1\n")
    config = tmp_path / "s.toml"
    config.write_text('[cosmic-ray]\nmodule-path = ["a.py", "b.py",\n               "c.py"]\ntimeout = 1.0\n'
                      'excluded-modules = ["x.py"]\n')
    assert mutants._module_files(config) == ["a.py", "b.py", "c.py"]  # not excluded-modules' names
    before = mutants._module_digest(config)
    (tmp_path / "c.py").write_text("x = 2\n")  # the module on the list's second line changed
    assert mutants._module_digest(config) != before


def test_outcomes_of_unchanged_mutants_are_carried_to_a_new_version(tmp_path):
    """A line inserted above shifts every mutant: the unchanged ones keep their outcome, the changed line's
    mutant is run again."""
    mutants = _load()
    for version, text in (("old", "a = 1\nb = 2\n"), ("new", "x = 0\na = 1\nb = 3\n")):
        (tmp_path / version / "lskd_core").mkdir(parents=True)
        (tmp_path / version / "lskd_core" / "findings.py").write_text(text)
    _session(tmp_path / "old.sqlite", [(1, "core/NumberReplacer", "NORMAL", "KILLED"),
                                       (2, "core/NumberReplacer", "NORMAL", "SURVIVED")])
    _session(tmp_path / "new.sqlite", [(1, "core/NumberReplacer", None, None), (2, "core/NumberReplacer", None, None),
                                       (3, "core/NumberReplacer", None, None)])
    assert mutants._carry_over(tmp_path / "old.sqlite", tmp_path / "old", tmp_path / "new.sqlite", tmp_path / "new") == 1
    outcomes = {r["line"]: r["outcome"] for r in mutants.session_results(tmp_path / "new.sqlite")}
    assert outcomes == {1: "pending", 2: "killed", 3: "pending"}


def test_an_equivalent_mutant_is_found_by_its_mutated_line_after_lines_moved(tmp_path):
    mutants = _load()
    row = {"module": "lskd_core/findings.py", "operator": "core/AddNot", "line": 40,
           "diff": "--- a\n+++ b\n@@ -40 +40 @@\n-    if x:\n+    if not  x:\n"}
    by_text = [{"module": "lskd_core/findings.py", "operator": "core/AddNot", "line": 12, "mutated": "if not x:",
                "reason": "x is always true here"}]
    assert mutants._is_equivalent(row, by_text) == "x is always true here"  # line 12 -> 40: still found
    assert mutants._is_equivalent(dict(row, operator="core/NumberReplacer"), by_text) == ""
    assert mutants._is_equivalent(row, [dict(by_text[0], mutated="if not y:")]) == ""
    by_line = [{"module": "lskd_core/findings.py", "operator": "core/AddNot", "line": 40, "reason": "r"}]
    assert mutants._is_equivalent(row, by_line) == "r"


def test_a_widened_sample_keeps_what_ran_and_draws_from_every_mutant_not_run(tmp_path):
    mutants = _load()
    db = tmp_path / "session.sqlite"
    _session(db, [(10 + i, "core/AddNot", None, None) for i in range(20)])
    assert mutants._sample(db, 5) == 15
    first = {r["line"] for r in mutants.session_results(db) if r["outcome"] == "pending"}
    assert len(first) == 5
    con = sqlite3.connect(str(db))  # two of the sample ran: one killed, one survived
    ran = sorted(first)[:2]
    for line, test in zip(ran, ("KILLED", "SURVIVED")):
        con.execute("INSERT INTO work_results VALUES ('NORMAL', '', ?, '', ?)", (test, f"j{line - 10}"))
    con.commit()
    con.close()
    # not widened: only the 3 left of the first sample stay pending, nothing set aside returns
    assert mutants._sample(db, 10) == 0
    assert sum(r["outcome"] == "pending" for r in mutants.session_results(db)) == 3
    # widened: 10 pending drawn from the 18 not run; the two that ran keep their outcomes
    assert mutants._sample(db, 10, widen=True) == 8
    results = {r["line"]: r["outcome"] for r in mutants.session_results(db)}
    assert (results[ran[0]], results[ran[1]]) == ("killed", "survived")
    assert sum(o == "pending" for o in results.values()) == 10
    assert sum(o == "unsampled" for o in results.values()) == 8
