"""Per-analysis JSON cache: ``<report>/cache/<name>.json`` keyed by parameters + input fingerprints.

A section is recomputed only when its key changes (different parameters, or an input run that was
re-executed) or its figure files are gone; failed or partial results are never reused.
"""

from __future__ import annotations

import hashlib
import json
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from lskd_core.atomic import atomic_write_bytes
from lskd_core.jsonio import BadJson, jsonable, read_json_object

__all__ = ["AnalysisCache"]


class AnalysisCache:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _cached(self, name: str, digest: str, files: Sequence[Path]) -> Any:
        try:
            old = read_json_object(self.root / f"{name}.json")
        except BadJson:  # a damaged cache entry is simply recomputed
            return None
        if old and old.get("key") == digest and all(Path(f).is_file() for f in files) \
                and old.get("result", {}).get("status") in ("ok", "not-applicable"):
            return old["result"]
        return None

    def get(self, name: str, key: Any, compute: Callable[[], dict], files: Sequence[Path] = ()) -> dict:
        digest = _key_digest(key)
        res = self._cached(name, digest, files)
        if res is not None:
            res["cached"] = True
            return res
        try:
            res = jsonable(compute())
        except Exception as exc:  # an analysis failing must not lose the rest of the report
            res = {"status": "error", "error": f"{exc.__class__.__name__}: {exc}",
                   "traceback": traceback.format_exc(limit=6)}
        atomic_write_bytes(self.root / f"{name}.json",
                           json.dumps({"key": digest, "result": res}, indent=1, allow_nan=False).encode())
        res = dict(res)
        res["cached"] = False
        return res


def _key_digest(key: Any) -> str:
    """SHA-256 of the key's sorted JSON text. The default separators (not the compact form of the
    study's run hashes) keep caches written by earlier versions valid."""
    return hashlib.sha256(json.dumps(jsonable(key), sort_keys=True).encode()).hexdigest()
