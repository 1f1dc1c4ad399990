"""Provenance of a run: which code and which framework versions produce it.

A run's hash (:func:`lskd_core.study.plan.build_plan`) covers :func:`run_provenance`: lskd's
version, a digest of the source it executes (every ``.py`` file of ``lskd_core`` -- except the
analysis-only ``report/`` and ``advise/``, which no run executes -- and of the plugin the run's
command uses, in sorted order) and the versions of the host framework the plugin runs
on (torch + torchvision for ``vision_plugin``; torch + fairseq for ``fairseq_plugin``), read from
package metadata without importing the framework. Changing the code therefore re-runs the runs
it defines instead of silently mixing their results with old ones.

The ``provenance`` setting: ``"code"`` (default, as above) or ``"version"`` -- the documented
escape hatch for editing the source without retraining (comments, a report fix, a checkout on
another machine): only lskd's and the frameworks' versions enter the hash, so the user, not the
study, vouches that the edit does not change what a run computes.

Nothing here imports a plugin or a framework; digests are cached per process.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Protocol, Tuple

from lskd_core import __version__

if TYPE_CHECKING:
    from lskd_core.study.config import StudyConfig


class RunLike(Protocol):
    """What provenance reads of a :class:`lskd_core.study.plan.Run` (the plan imports this module)."""

    program: Tuple[str, str]

__all__ = ["PROVENANCE_MODES", "PLUGIN_FRAMEWORKS", "run_plugin", "source_digest", "framework_versions",
           "run_provenance"]

PROVENANCE_MODES = ("code", "version")
#: plugin -> the distributions whose versions define what its runs compute
PLUGIN_FRAMEWORKS: Dict[str, Tuple[str, ...]] = {
    "vision_plugin": ("torch", "torchvision"),
    "fairseq_plugin": ("torch", "fairseq"),
}
_CORE_DIR = Path(__file__).resolve().parent.parent  # lskd_core


def run_plugin(run: RunLike) -> Optional[str]:
    """The plugin a run's command executes: the top package of a ``python -m`` module, and
    fairseq_plugin for fairseq's console scripts (they load it through ``--user-dir``)."""
    kind, target = run.program
    if kind == "module":
        top = target.split(".")[0]
        return top if top in PLUGIN_FRAMEWORKS else None
    return "fairseq_plugin" if target.startswith("fairseq-") else None


def _package_dir(name: str) -> Optional[Path]:
    """Where package ``name`` lives, found without importing it: the checkout next to lskd_core
    first (the runs get it on PYTHONPATH), else the installed package."""
    local = _CORE_DIR.parent / name
    if (local / "__init__.py").is_file():
        return local
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


#: lskd_core subpackages that only read finished runs (the report, the advisor's summaries): no run
#: executes them, so editing them must not invalidate trained runs
_ANALYSIS_ONLY = ("report", "advise")


@functools.lru_cache(maxsize=None)
def _dir_digest(path: str, skip: Tuple[str, ...] = ()) -> str:
    """sha256 over (relative path, bytes) of every .py file under ``path`` outside the top-level
    folders ``skip``, in sorted order."""
    root = Path(path)
    h = hashlib.sha256()
    files = (p for p in root.rglob("*.py")
             if "__pycache__" not in p.parts and p.relative_to(root).parts[0] not in skip)
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def source_digest(plugin: Optional[str]) -> str:
    """Digest of the source a run executes: lskd_core, plus ``plugin`` when it has one (a plugin
    that is not installed contributes ``absent``)."""
    parts = {"lskd_core": _dir_digest(str(_CORE_DIR), _ANALYSIS_ONLY)}
    if plugin is not None:
        pdir = _package_dir(plugin)
        parts[plugin] = _dir_digest(str(pdir)) if pdir is not None else "absent"
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


#: Asks an interpreter for the versions of import names; a package installed under another
#: distribution name (``fairseq`` from ``fairseq-fixed``) is found through its top-level modules and
#: reported as "VERSION (DISTRIBUTION)". Run in-process for our own interpreter, else through -c.
_VERSIONS_CODE = """
import importlib.metadata as m
def installed_version(n):
    try:
        return m.version(n)
    except m.PackageNotFoundError:
        pass
    for dist in sorted(m.packages_distributions().get(n, [])):
        try:
            return m.version(dist) + " (" + dist + ")"
        except m.PackageNotFoundError:
            pass
    return None
"""


@functools.lru_cache(maxsize=None)
def framework_versions(python: Optional[str], names: Tuple[str, ...]) -> Dict[str, Optional[str]]:
    """Installed versions of the packages ``names`` (import names) in the runs' interpreter (None:
    not installed). Another interpreter (the ``python`` setting) is asked once, the same way."""
    if python is None or Path(python).resolve() == Path(sys.executable).resolve():
        scope: Dict[str, Any] = {}
        exec(_VERSIONS_CODE, scope)  # our own constant: the same lookup as in another interpreter
        return {n: scope["installed_version"](n) for n in names}
    code = _VERSIONS_CODE + "import json, sys\nprint(json.dumps({n: installed_version(n) for n in sys.argv[1:]}))"
    try:
        res = subprocess.run([python, "-c", code, *names], capture_output=True, text=True, timeout=60, check=True)
        got = json.loads(res.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise ValueError(f"python {python!r} (the interpreter for the runs) could not report its package "
                         f"versions ({exc}); check the python setting") from None
    return {n: (str(got[n]) if got.get(n) is not None else None) for n in names}


def run_provenance(run: RunLike, cfg: "StudyConfig") -> dict:
    """What, besides its command, defines a run's result (see the module docstring)."""
    plugin = run_plugin(run)
    prov: dict = {"lskd_version": __version__}
    if getattr(cfg, "provenance", "code") != "version":
        prov["code"] = source_digest(plugin)
    if plugin is not None:
        prov["frameworks"] = dict(framework_versions(cfg.python, PLUGIN_FRAMEWORKS[plugin]))
    return prov
