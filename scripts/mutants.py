"""Mutation testing of the code that makes the verdict (``make mutants``; docs/testing.md).

Runs one cosmic-ray session per ``mutation/*.toml`` (each names its modules and the fast tests that
cover them), each in a private copy of the repository: cosmic-ray edits the module in place for every
mutant, so parallel sessions must not share a tree, and a killed run must not leave a mutant in
yours. Then writes ``<out>/summary.md`` and ``<out>/summary.json``: per module the killed, surviving
and incompetent mutants, the score over the non-equivalent ones, and every survivor's diff.
Mutants listed in ``mutation/equivalent.json`` (module, operator, line, with a reason) are reported
as equivalent and left out of the score.

    python scripts/mutants.py [--jobs 2] [--out runs/mutants] [--resume [--rerun-survivors]] [--max-minutes M]
                              [mutation/findings.toml ...]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

REPO = Path(__file__).resolve().parents[1]
_COPY = ("lskd_core", "vision_plugin", "fairseq_plugin", "tests", "pyproject.toml", "setup.py")


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


#: cosmic-ray with lskd's two extra operators (removed calls, swapped arguments): mutation/cr_lskd.py
_COSMIC_RAY = [sys.executable, str(REPO / "mutation" / "cr_lskd.py")]
#: part of every session's digest: a change of the operator set re-initialises the sessions on --resume
#: (outcomes of the mutants that are unchanged are carried over), so new operators reach old sessions
OPERATORS_VERSION = "cosmic-ray core + lskd/RemoveCall + lskd/SwapArguments (1)"


def _copy_tree(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in _COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _module_files(config: Path) -> List[str]:
    """The files a config mutates (its ``module-path``), relative to the repository."""
    files: List[str] = []
    # the list may span several lines (every one counts: a module left out would not re-initialise its session)
    listed = re.search(r"^\s*module-path\s*=\s*\[(.*?)\]", config.read_text(encoding="utf-8"), re.M | re.S)
    for name in re.findall(r'"([^"]+)"', listed.group(1) if listed else ""):
        src = REPO / name
        found = sorted(src.rglob("*.py")) if src.is_dir() else [src]
        files += [str(f.relative_to(REPO)) for f in found]
    return files


def _module_digest(config: Path) -> str:
    """sha256 over the mutated modules' source: a session whose modules changed must be re-initialised
    (cosmic-ray's mutants are positions in the old text)."""
    h = hashlib.sha256(OPERATORS_VERSION.encode() + b"\0")
    for name in _module_files(config):
        h.update(name.encode() + b"\0" + (REPO / name).read_bytes())
    return h.hexdigest()


def _mutant_keys(session: Path, source: Path) -> Dict[str, tuple]:
    """job id -> what the mutant is, independent of where its line now sits: the module, operator and
    arguments, the mutated source text and columns, and which of several identical ones it is."""
    con = sqlite3.connect(str(session))
    specs = con.execute("SELECT job_id, module_path, operator_name, operator_args, start_pos_row, start_pos_col, "
                        "end_pos_row, end_pos_col FROM mutation_specs ORDER BY module_path, start_pos_row, "
                        "start_pos_col, operator_name, occurrence").fetchall()
    con.close()
    texts: Dict[str, List[str]] = {}
    seen: Dict[tuple, int] = {}
    out = {}
    for job, module, op, args, r0, c0, r1, c1 in specs:
        if module not in texts:
            f = source / module
            texts[module] = f.read_text(encoding="utf-8").splitlines() if f.exists() else []
        base = (module, op, args, "\n".join(texts[module][int(r0) - 1:int(r1)]), c0, c1)
        seen[base] = seen.get(base, 0) + 1
        out[job] = base + (seen[base],)
    return out


UNSAMPLED = "lskd: not in the sample"


def _carry_over(old_session: Path, old_source: Path, session: Path, source: Path) -> int:
    """Copy the outcomes of the mutants that are unchanged (same text, operator and columns) from a session
    of an earlier version of the modules into a fresh one; returns how many were carried."""
    old_keys = _mutant_keys(old_session, old_source)
    con = sqlite3.connect(str(old_session))
    done = {old_keys[job]: row for job, *row in con.execute(
        "SELECT job_id, worker_outcome, output, test_outcome, diff FROM work_results "
        "WHERE lower(worker_outcome) != 'skipped' OR output = ?", (UNSAMPLED,)) if job in old_keys}
    con.close()
    con = sqlite3.connect(str(session))
    n = 0
    for job, key in _mutant_keys(session, source).items():
        if key in done:
            n += con.execute("INSERT OR IGNORE INTO work_results (worker_outcome, output, test_outcome, diff, job_id) "
                             "VALUES (?, ?, ?, ?, ?)", (*done[key], job)).rowcount
    con.commit()
    con.close()
    return n


def _sample(session: Path, keep: int, seed: int = 0, widen: bool = False) -> int:
    """Leave ``keep`` pending mutants (a seeded random choice) and set the rest aside as unsampled:
    an estimate of the score for a module too large to run whole. Returns how many were set aside.

    ``widen``: first return the mutants set aside by an earlier sample to the pool, so that ``keep``
    more are drawn from every mutant not yet run. A uniform draw from what an earlier uniform draw left
    makes the union a uniform sample too (sampling without replacement in two stages), so the score
    and its interval stay an estimate for the whole module."""
    con = sqlite3.connect(str(session))
    if widen:
        con.execute("DELETE FROM work_results WHERE output = ?", (UNSAMPLED,))
        # a new seed per widening (the count of mutants already run), so it is not the first draw again
        seed += con.execute("SELECT count(*) FROM work_results").fetchone()[0]
    pending = [j for (j,) in con.execute("SELECT m.job_id FROM mutation_specs m LEFT JOIN work_results w "
                                         "ON m.job_id = w.job_id WHERE w.job_id IS NULL ORDER BY m.job_id")]
    drop = random.Random(seed).sample(pending, max(0, len(pending) - keep)) if keep < len(pending) else []
    con.executemany("INSERT INTO work_results (worker_outcome, output, test_outcome, diff, job_id) "
                    "VALUES ('SKIPPED', ?, NULL, '', ?)", [(UNSAMPLED, j) for j in drop])
    con.commit()
    con.close()
    return len(drop)


def _snapshot(config: Path, dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    for name in _module_files(config):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)


def _forget_survivors(session: Path) -> int:
    """Drop the recorded survivors so that ``cosmic-ray exec`` tests them again (with the current tests)."""
    con = sqlite3.connect(str(session))
    cur = con.execute("DELETE FROM work_results WHERE lower(worker_outcome) = 'normal' "
                      "AND lower(test_outcome) = 'survived'")
    con.commit()
    n = cur.rowcount
    con.close()
    return n


def _reinit(config: Path, out: Path, tree: Path, stale: bool) -> None:
    """A fresh cosmic-ray session (init, operator filter); when ``stale`` (the modules or the operators
    changed since the old one began), the outcomes of its unchanged mutants are carried over."""
    name = config.stem
    session, source = out / name / "session.sqlite", out / name / "source"
    old_session, old_source = session.with_suffix(".old"), source.with_suffix(".old")
    carry = stale and source.is_dir()
    if carry:  # keep what is done for every mutant whose line is unchanged; the rest are run afresh
        session.replace(old_session)
        shutil.rmtree(old_source, ignore_errors=True)
        source.replace(old_source)
    session.unlink(missing_ok=True)
    for cmd in ([*_COSMIC_RAY, "init", "cosmic-ray.toml", str(session)],
                [_tool("cr-filter-operators"), str(session), "cosmic-ray.toml"]):
        subprocess.run(cmd, cwd=tree, env=_env(), check=True, capture_output=True)
    _snapshot(config, source)
    (out / name / "modules.sha256").write_text(_module_digest(config) + "\n")
    if carry:
        n = _carry_over(old_session, old_source, session, source)
        print(f"[mutants] {name}: the mutated source or the operators changed since the session began: "
              f"re-initialised, {n} outcomes of unchanged mutants carried over", flush=True)
        old_session.unlink()
        shutil.rmtree(old_source)
    elif stale:
        print(f"[mutants] {name}: the mutated source changed since the session began: re-initialised", flush=True)


def start_session(config: Path, out: Path, resume: bool, rerun_survivors: bool = False,
                  sample: int = 0, widen: bool = False) -> subprocess.Popen:
    """Start ``cosmic-ray exec`` of one session in its private tree (returns the process)."""
    name = config.stem
    tree, session = out / name / "tree", out / name / "session.sqlite"
    digest_file = out / name / "modules.sha256"
    # A fresh copy every time, also on --resume: a killed cosmic-ray can leave its last mutant in the
    # tree (the session database, outside it, keeps what is done). The copy carries the current tests,
    # so pending mutants meet the newest tests; --rerun-survivors re-tests the recorded survivors too.
    _copy_tree(tree)
    shutil.copy2(config, tree / "cosmic-ray.toml")
    stale = resume and session.exists() and (not digest_file.exists()
                                             or digest_file.read_text().strip() != _module_digest(config))
    if not (resume and session.exists()) or stale:
        _reinit(config, out, tree, stale)
    if sample:
        print(f"[mutants] {name}: {_sample(session, sample, widen=widen)} pending mutants set aside (at most {sample} pending, "
              "a seeded uniform random choice)", flush=True)
    # after the sample: the survivors to re-test are never set aside
    if resume and rerun_survivors:
        print(f"[mutants] {name}: {_forget_survivors(session)} survivors to re-test", flush=True)
    log = open(out / name / "exec.log", "a", encoding="utf-8")
    return subprocess.Popen([*_COSMIC_RAY, "exec", "cosmic-ray.toml", str(session)], cwd=tree, env=_env(),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _equivalent(path: Path) -> List[dict]:
    if not path.exists():
        return []
    return list(json.loads(path.read_text(encoding="utf-8")))


def _mutated_lines(diff: str) -> List[str]:
    return [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]


def _is_equivalent(row: dict, equivalent: Sequence[dict]) -> str:
    """The reason when ``row`` is listed as equivalent: same module and operator, and either the same
    mutated source line (``mutated``: the diff's + line, stripped; survives edits above it) or, for an
    entry without one, the same line number."""
    for e in equivalent:
        if (e["module"], e["operator"]) != (row["module"], row["operator"]):
            continue
        if "mutated" in e:
            if " ".join(str(e["mutated"]).split()) in [" ".join(x.split()) for x in _mutated_lines(row["diff"])]:
                return str(e["reason"])
        elif int(e["line"]) == row["line"]:
            return str(e["reason"])
    return ""


def session_results(session: Path) -> List[dict]:
    """One record per mutant: module, operator, line, outcome (killed/survived/incompetent/skipped/
    unsampled/pending), diff."""
    con = sqlite3.connect(str(session))
    rows = con.execute(
        "SELECT m.module_path, m.operator_name, m.start_pos_row, w.worker_outcome, w.test_outcome, w.diff, w.output "
        "FROM mutation_specs m LEFT JOIN work_results w ON m.job_id = w.job_id").fetchall()
    con.close()
    out = []
    for module, operator, line, worker, test, diff, output in rows:
        worker, test = (worker or "").lower() or None, (test or "").lower() or None  # cosmic-ray stores NORMAL, KILLED
        if worker is None:
            outcome = "pending"
        elif worker == "skipped":
            outcome = "unsampled" if output == UNSAMPLED else "skipped"
        elif worker == "normal":
            outcome = {"killed": "killed", "survived": "survived"}.get(test or "", "incompetent")
        elif worker in ("timeout", "abnormal"):
            outcome = "killed"  # the tests did not pass on the mutant (hung or crashed)
        else:
            outcome = "incompetent"  # the mutant could not be applied or imported
        out.append({"module": module, "operator": operator, "line": int(line), "outcome": outcome,
                    "diff": diff or ""})
    return out


def _score(counts: Dict[str, Any]) -> None:
    """Score = killed / (killed + survived) over the non-equivalent mutants run, with its exact binomial
    95 % interval (Clopper-Pearson): where only a random sample ran, the interval is for the whole module."""
    killed, decided = counts.get("killed", 0), counts.get("killed", 0) + counts.get("survived", 0)
    counts["run"] = sum(counts.get(k, 0) for k in ("killed", "survived", "equivalent", "incompetent"))
    counts["score_percent"] = round(100.0 * killed / decided, 1) if decided else None
    counts["ci95_percent"] = None
    if decided:
        from scipy.stats import binomtest

        ci = binomtest(killed, decided).proportion_ci(0.95)
        counts["ci95_percent"] = [round(100.0 * ci.low, 1), round(100.0 * ci.high, 1)]


def summarize(out: Path, configs: Sequence[Path], equivalent: Sequence[dict], wall_s: float) -> dict:
    """Write ``summary.json`` and ``summary.md`` over the sessions of ``configs``; returns the summary."""
    modules: Dict[str, Dict[str, Any]] = {}
    survivors: List[dict] = []
    for config in configs:
        session = out / config.stem / "session.sqlite"
        if not session.exists():
            continue
        for row in session_results(session):
            reason = _is_equivalent(row, equivalent) if row["outcome"] == "survived" else ""
            kind = "equivalent" if reason else row["outcome"]
            counts = modules.setdefault(row["module"], {})
            counts[kind] = counts.get(kind, 0) + 1
            if kind == "survived":
                survivors.append(row)
    for counts in modules.values():
        _score(counts)
    summary = {"modules": modules, "survivors": survivors, "wall_s": round(wall_s, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    lines = ["# Mutation testing (cosmic-ray)", "",
             "Score: killed / (killed + survived) over the mutants run; equivalent ones (mutation/equivalent.json) "
             "are not scored. 95 % interval: exact binomial (Clopper-Pearson), for the whole module where a "
             "uniform random sample of its mutants ran (the rest: unsampled).", "",
             "| module | run | killed | survived | equivalent | incompetent | skipped (filtered) | unsampled | pending "
             "| score | 95 % interval |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for module, c in sorted(modules.items()):
        score = "n/a" if c["score_percent"] is None else f"{c['score_percent']} %"
        ci = "n/a" if c["ci95_percent"] is None else f"{c['ci95_percent'][0]}-{c['ci95_percent'][1]} %"
        lines.append(f"| {module} | {c['run']} | {c.get('killed', 0)} | {c.get('survived', 0)} | "
                     f"{c.get('equivalent', 0)} | {c.get('incompetent', 0)} | {c.get('skipped', 0)} | "
                     f"{c.get('unsampled', 0)} | {c.get('pending', 0)} | {score} | {ci} |")
    lines += ["", f"Wall time of this invocation: {wall_s / 60:.1f} min.", "", "## Survivors", ""]
    for row in survivors:
        lines += [f"### {row['module']}:{row['line']} {row['operator']}", "", "```diff", row["diff"].strip(), "```", ""]
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summary


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="*", help="cosmic-ray configs (default: mutation/*.toml)")
    parser.add_argument("--jobs", type=int, default=2, help="sessions run at the same time (default 2)")
    parser.add_argument("--out", default="runs/mutants", help="sessions, logs and summary (default runs/mutants)")
    parser.add_argument("--resume", action="store_true", help="continue existing sessions (their pending mutants)")
    parser.add_argument("--summary-only", action="store_true", help="write the summary of existing sessions")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="with --resume: test the recorded survivors again (after adding tests)")
    parser.add_argument("--sample", type=int, default=0,
                        help="leave at most this many pending mutants per session (a seeded uniform random "
                             "choice; the rest are set aside as unsampled): an estimate of a large module's score")
    parser.add_argument("--widen", action="store_true",
                        help="with --resume --sample N: draw N more from every mutant not yet run (the ones an "
                             "earlier sample set aside included), widening the sample")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop the sessions after this long (what is done is kept: continue with --resume)")
    args = parser.parse_args(list(argv) or None)
    configs = [Path(c).resolve() for c in args.configs] or sorted((REPO / "mutation").glob("*.toml"))
    missing = [str(c) for c in configs if not c.is_file()]
    if missing:
        print(f"error: no such cosmic-ray config: {', '.join(missing)}", file=sys.stderr)
        return 2
    if importlib.util.find_spec("cosmic_ray") is None:
        print("error: cosmic-ray is not installed: pip install 'lskd[mutation]' (or make mutants)", file=sys.stderr)
        return 2
    out = (REPO / args.out) if not Path(args.out).is_absolute() else Path(args.out)
    start = time.time()
    if not args.summary_only:
        pending = list(configs)
        running: List[subprocess.Popen] = []
        deadline = None if args.max_minutes is None else start + 60.0 * args.max_minutes

        def _stop(*_: object) -> None:
            raise SystemExit(143)

        signal.signal(signal.SIGTERM, _stop)  # `timeout` or kill: take the sessions (own process groups) down too
        try:
            while pending or running:
                while pending and len(running) < max(1, args.jobs):
                    config = pending.pop(0)
                    (out / config.stem).mkdir(parents=True, exist_ok=True)
                    running.append(start_session(config, out, args.resume, args.rerun_survivors, args.sample,
                                                 args.widen))
                    print(f"[mutants] {config.stem}: started (log {out / config.stem / 'exec.log'})", flush=True)
                time.sleep(2)
                if deadline is not None and time.time() > deadline:
                    print(f"[mutants] stopped after {args.max_minutes:g} min: continue with --resume", flush=True)
                    break
                running = [p for p in running if p.poll() is None]
        finally:
            for p in running:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)  # cosmic-ray and its test run; finished mutants are kept
                    p.wait()
    summary = summarize(out, configs, _equivalent(REPO / "mutation" / "equivalent.json"), time.time() - start)
    for module, c in sorted(summary["modules"].items()):
        print(f"[mutants] {module}: {c['run']} run, {c.get('killed', 0)} killed, {c.get('survived', 0)} survived, "
              f"{c.get('equivalent', 0)} equivalent, score {c['score_percent']} % (95 % interval {c['ci95_percent']})")
    print(f"[mutants] summary: {out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
