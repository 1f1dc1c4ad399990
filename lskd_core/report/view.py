"""The study directory as the report sees it: the manifest, the finished runs, their features.

Run ids come from :mod:`lskd_core.study.plan` (the one place they are built) and the run whose
result holds a model's score from the task backend.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from lskd_core.jsonio import BadJson, read_json_object
from lskd_core.study.plan import export_id, run_dir, student_id, teacher_id
from lskd_core.study.state import RESULT, RUN_CONFIG, read_manifest
from lskd_core.study.tasks import TaskBackend, get_task

__all__ = ["StudyView"]


def _done_result(path: Path) -> Optional[dict]:
    """A run's result when it says done. A damaged result.json counts as not done (the study
    runner reports and re-runs such a directory; the report only leaves it out)."""
    try:
        res = read_json_object(path)
    except BadJson:
        return None
    return res if res is not None and res.get("status") == "done" else None


class StudyView:
    """Manifest + finished runs of a study directory."""

    # ids as built by lskd_core.study.plan
    student = staticmethod(student_id)
    export = staticmethod(export_id)

    def teacher(self, alpha: float) -> str:
        """The teacher run of ``alpha`` that the single-teacher sections (teacher row, entropy,
        profile, eta's reference) read: the first teacher seed's when the study trains several."""
        n = int(self.config.get("teacher_seeds") or 1)
        return teacher_id(alpha, int(self.config.get("teacher_seed") or 0) if n > 1 else None)

    def __init__(self, study_dir: Path, usable: Optional[set] = None):
        self.dir = Path(study_dir)
        manifest = read_manifest(self.dir)
        self.config: dict = manifest["config"]
        self.task: TaskBackend = get_task(str(self.config.get("task", "vision")))
        self.runs: Dict[str, dict] = {r["run_id"]: r for r in manifest["runs"]}
        self.results: Dict[str, dict] = {}
        for run_id in self.runs:
            if usable is not None and run_id not in usable:
                continue
            res = _done_result(self.run_dir(run_id) / RESULT)
            if res is not None:
                self.results[run_id] = res
        # exports dispatched externally have no result.json: their atomically written output is the proof
        for run_id, r in self.runs.items():
            if r["kind"] == "export" and run_id not in self.results and (usable is None or run_id in usable):
                if (self.run_dir(run_id) / "features.npz").is_file():
                    self.results[run_id] = {"status": "done"}
        self.alphas: List[float] = [float(a) for a in self.config["alphas"]]
        self.temperatures: List[float] = [float(t) for t in self.config["temperatures"]]
        seeds = self.config["seeds"]
        self.seeds: List[int] = [int(s) for s in seeds] if isinstance(seeds, list) else list(range(int(seeds)))
        self.analysis_seed: int = (int(self.config["analysis_seed"]) if self.config.get("analysis_seed") is not None
                                   else self.seeds[0])
        self._features: Dict[str, Any] = {}

    def run_dir(self, run_id: str) -> Path:
        return run_dir(self.dir, run_id)

    def score(self, model_run_id: str) -> Optional[dict]:
        """The finished result holding a trained model's score (the task decides which run that is)."""
        return self.results.get(self.task.metric_run(model_run_id))

    def fingerprint(self, run_ids: Iterable[str]) -> Dict[str, Optional[str]]:
        out: Dict[str, Optional[str]] = {}
        for rid in run_ids:
            p = self.run_dir(rid) / RESULT
            if p.is_file():
                out[rid] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                f = self.run_dir(rid) / "features.npz"
                out[rid] = f"{f.stat().st_size}:{f.stat().st_mtime_ns}" if f.is_file() else None
        return out

    def features(self, model_run: str, split: str) -> Any:
        """The FeatureFile of a model's export, or None when that export is not done."""
        rid = export_id(model_run, split)
        if rid not in self.results:
            return None
        if rid not in self._features:
            from lskd_core.features_io import load_features

            self._features[rid] = load_features(self.run_dir(rid) / "features.npz")
        return self._features[rid]

    def class_names(self) -> Optional[List[str]]:
        for res in self.results.values():
            if isinstance(res.get("class_names"), list):
                return [str(c) for c in res["class_names"]]
        for a in self.alphas:
            f = self.features(self.teacher(a), "val")
            if f is not None and f.class_names:
                return list(f.class_names)
        return None

    def provenance_rows(self) -> List[List[str]]:
        """One row per (run kind, provenance) among the finished runs: run kind, how many runs, lskd
        version, code digest (12 hex digits), framework versions. From each run's run_config.json
        (what its hash covered); runs dispatched without one count as "not recorded"."""
        seen: Dict[tuple, int] = {}
        for run_id in self.results:
            kind = str(self.runs.get(run_id, {}).get("kind", "?"))
            try:
                rc = read_json_object(self.run_dir(run_id) / RUN_CONFIG)
            except BadJson:
                rc = None
            prov = rc.get("provenance") if rc is not None else None
            if not isinstance(prov, dict):
                key: tuple = (kind, "not recorded", "—", "—")
            else:
                fw_raw = prov.get("frameworks")
                fw: Dict[str, Any] = fw_raw if isinstance(fw_raw, dict) else {}
                key = (kind, str(prov.get("lskd_version", "?")), str(prov.get("code", "versions only"))[:12],
                       ", ".join(f"{k} {v}" for k, v in sorted(fw.items())) or "—")
            seen[key] = seen.get(key, 0) + 1
        return [[k[0], str(n), k[1], k[2], k[3]] for k, n in sorted(seen.items())]

    def num_classes(self) -> Optional[int]:
        for res in self.results.values():
            if isinstance(res.get("num_classes"), int):
                return int(res["num_classes"])
        names = self.class_names()
        return len(names) if names else None
