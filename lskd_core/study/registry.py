"""The study's registries: task backends and launchers, by name.

The bottom of the study's layers: it imports nothing of the study, so the settings
(:mod:`lskd_core.study.config`) and the plan can look a task or a launcher up without importing the
modules that implement them (which import the settings and the plan). Each entry is
``"module:Class"``, imported on first use.

To add a task or a launcher: write its class (a :class:`~lskd_core.study.tasks.base.TaskBackend` or
:class:`~lskd_core.study.launchers.Launcher` subclass) and add one line here.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, List, Mapping, Tuple

__all__ = ["TASKS", "LAUNCHERS", "get_task", "task_names", "launcher_class", "launcher_names", "launcher_spec"]

TASKS: Dict[str, str] = {
    "vision": "lskd_core.study.tasks.vision:VisionTask",
    "translation": "lskd_core.study.tasks.translation:TranslationTask",
}
LAUNCHERS: Dict[str, str] = {
    "local": "lskd_core.study.launchers:LocalLauncher",
    "slurm": "lskd_core.study.launcher_slurm:SlurmLauncher",
}
_TASK_INSTANCES: Dict[str, Any] = {}


def _load(spec: str) -> Any:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def task_names() -> List[str]:
    return list(TASKS)


def get_task(name: str) -> Any:
    """The backend (a ``TaskBackend``) of task ``name``; ValueError naming the known tasks otherwise."""
    if not isinstance(name, str) or name not in TASKS:
        raise ValueError(f"task must be {' or '.join(repr(n) for n in TASKS)}, got {name!r}")
    if name not in _TASK_INSTANCES:
        _TASK_INSTANCES[name] = _load(TASKS[name])()
    return _TASK_INSTANCES[name]


def launcher_names() -> List[str]:
    return sorted(LAUNCHERS)


def launcher_class(name: str) -> Any:
    """The ``Launcher`` subclass registered as ``name`` (see :func:`launcher_spec` for the check)."""
    return _load(LAUNCHERS[name])


def launcher_spec(setting: Any) -> Tuple[str, Dict[str, Any]]:
    """The ``launcher`` setting (a name, or a table with ``kind``) -> (name, the table's other keys)."""
    if isinstance(setting, Mapping):
        options = dict(setting)
        name = options.pop("kind", "local")
    else:
        name, options = setting, {}
    if not isinstance(name, str) or name not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {launcher_names()}, got {name!r}")
    return name, options
