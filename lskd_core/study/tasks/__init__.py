"""Task backends and their registry: ``get_task("vision")``, ``get_task("translation")``.

To add a task: write a module with a :class:`~lskd_core.study.tasks.base.TaskBackend` subclass and
add it to :data:`TASKS` (name -> "module:Class"; modules are imported on first use).
"""

from __future__ import annotations

import importlib
from typing import Dict, List

from lskd_core.study.tasks.base import ALL_ANALYSES, TaskBackend

__all__ = ["TaskBackend", "ALL_ANALYSES", "TASKS", "get_task", "task_names"]

TASKS: Dict[str, str] = {
    "vision": "lskd_core.study.tasks.vision:VisionTask",
    "translation": "lskd_core.study.tasks.translation:TranslationTask",
}
_LOADED: Dict[str, TaskBackend] = {}


def task_names() -> List[str]:
    return list(TASKS)


def get_task(name: str) -> TaskBackend:
    """The backend of task ``name``; ValueError naming the known tasks otherwise."""
    if name not in TASKS:
        raise ValueError(f"task must be {' or '.join(repr(n) for n in TASKS)}, got {name!r}")
    if name not in _LOADED:
        module, cls = TASKS[name].split(":")
        _LOADED[name] = getattr(importlib.import_module(module), cls)()
    return _LOADED[name]
