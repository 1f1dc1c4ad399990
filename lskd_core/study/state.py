"""Run state on disk: what a run directory holds, whether it can be trusted, and the study's records.

Each run directory ``<study>/runs/<run_id>/`` holds ``run_config.json`` (the run's defining
arguments, their hash and the fingerprints of the inputs it consumed), ``result.json`` (``"status":
"done"`` once finished), ``launch.json`` (the launcher's handle of the last start) and the run's
outputs. The study root holds ``study.json`` (the manifest), ``launches.jsonl`` and
``events.jsonl``. File formats: docs/formats.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

from lskd_core import __version__
from lskd_core.jsonio import BadJson, file_sha256, read_json_object, write_json
from lskd_core.study.lock import process_alive, process_start
from lskd_core.study.plan import Run, run_dir
from lskd_core.study.provenance import run_provenance

if TYPE_CHECKING:
    from lskd_core.study.config import StudyConfig

__all__ = ["RunState", "inspect_run", "fingerprint", "dep_fingerprints", "write_run_config", "write_manifest",
           "read_manifest", "move_aside", "log_event", "append_jsonl", "write_launch", "read_launch",
           "RUN_CONFIG", "RESULT", "LAUNCH", "LAUNCH_LOG", "EVENT_LOG", "MANIFEST", "CHECKSUMS",
           "record_checksums", "checksum_problem", "orphan_process"]

RUN_CONFIG = "run_config.json"
RESULT = "result.json"
LAUNCH = "launch.json"
LAUNCH_LOG = "launches.jsonl"
EVENT_LOG = "events.jsonl"
MANIFEST = "study.json"
#: sha256 and size of a finished run's outputs, written by the runner after the process exits
CHECKSUMS = "checksums.json"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format (a zip archive) starts with a local file header


def fingerprint(rdir: Path) -> Optional[str]:
    """Identity of one *execution* of a run: the hash of its result.json bytes (they include the
    run's wall time, so a re-executed dependency gets a new fingerprint and its dependents re-run)."""
    try:
        return hashlib.sha256((rdir / RESULT).read_bytes()).hexdigest()
    except OSError:
        return None


def dep_fingerprints(run: Run, study: Path) -> Dict[str, Optional[str]]:
    return {d: fingerprint(run_dir(study, d)) for d in run.deps}


@dataclass
class RunState:
    """What the study should do with a run: ``done`` (skip), ``new``, ``resume`` (checkpoint of the
    same config), ``restart`` (same config, nothing to resume from), ``stale`` (made by another
    config, or from dependencies that have since been re-run) or ``corrupt`` (cannot be trusted).
    Stale and corrupt dirs are moved aside before the run starts again."""

    status: str
    reason: str = ""


def outputs_problem(run: Run, rdir: Path) -> Optional[str]:
    """Why the run's declared outputs are not usable, or None when they all are."""
    for rel in run.outputs:
        p = rdir / rel
        if not p.exists():
            return f"{rel} is missing"
        if p.is_file() and p.stat().st_size == 0:
            return f"{rel} is empty"
        if p.suffix == ".npz" and not zipfile.is_zipfile(p):
            return f"{rel} is not a valid .npz"
    return None


def _zip_problem(path: Path) -> Optional[str]:
    """Why a zip-format file (a torch checkpoint, an .npz) is damaged: a missing end record
    (truncated) or a member whose CRC-32 does not match; None when it is intact or not a zip."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != _ZIP_MAGIC:
                return None  # not a zip (e.g. torch's legacy format): the recorded checksum decides
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        return f"{path.name} is damaged ({exc})"
    return f"{path.name} is damaged (bad CRC-32 of member {bad})" if bad else None


def record_checksums(run: Run, rdir: Path) -> Optional[str]:
    """After a run's process exited 0: check its outputs' integrity and record their size and
    sha256 in checksums.json, so later invocations (and the runs that read them) can tell a
    damaged file from the one the run wrote. Returns a problem, or None."""
    files = {}
    for rel in run.outputs:
        p = rdir / rel
        if not p.is_file():
            continue
        problem = _zip_problem(p)
        if problem:
            return problem
        files[rel] = {"size": p.stat().st_size, "sha256": file_sha256(p)}
    write_json(rdir / CHECKSUMS, {"files": files, "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return None


def checksum_problem(run: Run, rdir: Path) -> Optional[str]:
    """Why a finished run's outputs are not the ones it wrote: size or sha256 differ from
    checksums.json; without a record (externally dispatched, or the runner died before writing
    it), a zip integrity check (all CRC-32s) of the outputs. None when they verify."""
    try:
        record = read_json_object(rdir / CHECKSUMS)
    except BadJson as exc:
        return str(exc)
    files = record.get("files") if record is not None else None
    for rel in run.outputs:
        p = rdir / rel
        want = files.get(rel) if isinstance(files, Mapping) else None
        if not isinstance(want, Mapping):
            problem = _zip_problem(p) if p.is_file() else None
            if problem:
                return problem
            continue
        size = p.stat().st_size
        if size != want.get("size"):
            return f"{rel} has {size} bytes, {want.get('size')} were recorded when its run finished"
        if file_sha256(p) != want.get("sha256"):
            return f"{rel}'s sha256 differs from the one recorded when its run finished"
    return None


def orphan_process(rdir: Path) -> Optional[dict]:
    """The recorded local process of a run dir when it still runs on this host (a runner that
    died, e.g. SIGKILL, leaves its children running in their own sessions); None otherwise."""
    handle = read_launch(rdir)
    if handle is None or "pid" not in handle or "ended" in handle or handle.get("host") != socket.gethostname():
        return None
    return handle if process_alive(handle.get("pid"), handle.get("proc_start")) else None


def _config_state(run: Run, rdir: Path, rc: Optional[dict], result: Optional[dict],
                  deps_fp: Mapping[str, Optional[str]], strict: bool) -> Optional[RunState]:
    """The verdict from run_config.json alone (None: it matches, look at the result)."""
    if rc is None:
        if result is not None or (rdir / "checkpoint.pth").exists():
            return RunState("corrupt", f"{RUN_CONFIG} is missing, so the config that produced this run is unknown")
        return RunState("restart", f"{RUN_CONFIG} is missing and nothing finished")
    if rc.get("hash") != run.hash:
        return RunState("stale", "made by a different config (hash "
                        f"{str(rc.get('hash'))[:12]} != {run.hash[:12]})")
    inputs = rc.get("inputs")
    if isinstance(inputs, Mapping) and inputs:
        changed = [d for d in run.deps if inputs.get(d) != deps_fp.get(d)]
        if changed:
            return RunState("stale", f"its input run(s) {changed} were re-run since it started")
    elif strict and run.deps and result is not None and rc.get("launched_by") == "study":
        return RunState("corrupt", f"{RUN_CONFIG} has no record of its inputs")
    return None


def inspect_run(run: Run, study: Path, deps_fp: Mapping[str, Optional[str]], strict: bool = True) -> RunState:
    """Classify a run directory (see :class:`RunState`).

    ``deps_fp``: the current fingerprint of each dependency's result. ``strict=False``
    (report-only) accepts runs dispatched by an external scheduler: no recorded inputs, and
    export-like runs without a study-written result.json.
    """
    rdir = run_dir(study, run.run_id)
    if not rdir.exists() or not any(rdir.iterdir()):
        return RunState("new")
    try:
        rc = read_json_object(rdir / RUN_CONFIG)
        result = read_json_object(rdir / RESULT)
    except BadJson as exc:
        return RunState("corrupt", str(exc))
    state = _config_state(run, rdir, rc, result, deps_fp, strict)
    if state is not None:
        return state
    assert rc is not None  # _config_state returns a state when it is missing
    if result is not None and result.get("status") == "done":
        missing = outputs_problem(run, rdir) or checksum_problem(run, rdir)
        if missing:
            return RunState("corrupt", f"{RESULT} says done but {missing}")
        return RunState("done")
    if result is not None and result.get("status") not in (None, "done", "running", "failed"):
        return RunState("corrupt", f"{RESULT} has unknown status {result.get('status')!r}")
    if not run.self_reporting and result is None and outputs_problem(run, rdir) is None \
            and rc.get("launched_by") != "study":
        # An export dispatched by an external scheduler: its output is written atomically, so its
        # presence means it finished.
        return RunState("done", "outputs present (externally dispatched)")
    if run.resume_flag and (rdir / "checkpoint.pth").exists():
        damaged = _zip_problem(rdir / "checkpoint.pth")
        if damaged:  # e.g. the disk filled while it was written: start over rather than resume from it
            return RunState("corrupt", f"cannot resume: {damaged}")
        return RunState("resume", "checkpoint.pth of the same config")
    return RunState("restart", "unfinished")


def move_aside(rdir: Path, tag: str) -> Path:
    """Rename an untrusted run dir to ``<dir>.<tag>-<time>``: nothing is deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = rdir.with_name(f"{rdir.name}.{tag}-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = rdir.with_name(f"{rdir.name}.{tag}-{stamp}-{n}")
    os.replace(rdir, dest)
    return dest


def write_run_config(run: Run, study: Path, cfg: "StudyConfig", argv: List[str],
                     inputs: Optional[Mapping[str, Optional[str]]], launched_by: str) -> None:
    write_json(run_dir(study, run.run_id) / RUN_CONFIG, {
        "run_id": run.run_id,
        "kind": run.kind,
        "info": run.info,
        "defining": run.defining(cfg.nproc),
        "deps": list(run.deps),
        "hash": run.hash,
        "argv": argv,
        "inputs": dict(inputs or {}),
        "launched_by": launched_by,
        "lskd_version": __version__,
        # the code and framework versions this run's hash covers (the report lists them)
        "provenance": run_provenance(run, cfg),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })


def record_inputs(run: Run, study: Path) -> None:
    """Re-record the inputs of a run that was queued before its dependencies finished (their
    fingerprints were unknown when it started); a no-op when they were all known."""
    path = run_dir(study, run.run_id) / RUN_CONFIG
    try:
        rc = read_json_object(path)
    except BadJson:
        return
    if rc is None or all(rc.get("inputs", {}).get(d) is not None for d in run.deps):
        return
    rc["inputs"] = dep_fingerprints(run, study)
    write_json(path, rc)


def write_manifest(study: Path, cfg: "StudyConfig", plan: Sequence[Run]) -> None:
    write_json(study / MANIFEST, {
        "lskd_version": __version__,
        "config": cfg.to_dict(),
        "runs": [{"run_id": r.run_id, "kind": r.kind, "deps": r.deps, "info": r.info, "hash": r.hash,
                  "dir": f"runs/{r.run_id}"} for r in plan],
    })


def read_manifest(study: Path) -> dict:
    """The study's manifest; ValueError naming the problem when it is missing or damaged."""
    try:
        manifest = read_json_object(study / MANIFEST)
    except BadJson as exc:
        raise ValueError(f"{study} is not a readable study directory: {exc}") from None
    if manifest is None or not isinstance(manifest.get("runs"), list) or not isinstance(manifest.get("config"), dict):
        raise ValueError(f"{study} is not a study directory (no readable {MANIFEST})")
    return manifest


def append_jsonl(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, sort_keys=True) + "\n")


def log_event(study: Path, event: str, **kw: Any) -> dict:
    obj = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "event": event, **kw}
    append_jsonl(study / EVENT_LOG, obj)
    return obj


def write_launch(rdir: Path, handle: Mapping[str, Any]) -> None:
    """Record the launcher's handle of a started run, so a later invocation can poll it. A local
    process's handle gets its start time (``proc_start``): a later check of the pid then cannot
    mistake an unrelated process that reused the pid for the run."""
    handle = dict(handle)
    if "pid" in handle and "proc_start" not in handle and handle.get("host") == socket.gethostname():
        start = process_start(int(handle["pid"]))
        if start is not None:
            handle["proc_start"] = start
    write_json(rdir / LAUNCH, handle)


def read_launch(rdir: Path) -> Optional[dict]:
    """The recorded handle of a run's last start; None when absent or unreadable."""
    try:
        return read_json_object(rdir / LAUNCH)
    except BadJson:
        return None
