"""Task backends: ``get_task("vision")``, ``get_task("translation")``.

To add a task: write a module with a :class:`~lskd_core.study.tasks.base.TaskBackend` subclass and
add it to :data:`lskd_core.study.registry.TASKS` (name -> "module:Class"; imported on first use).
"""

from __future__ import annotations

from lskd_core.study.registry import TASKS, task_names
from lskd_core.study.registry import get_task as _get_task
from lskd_core.study.tasks.base import ALL_ANALYSES, TaskBackend

__all__ = ["TaskBackend", "ALL_ANALYSES", "TASKS", "get_task", "task_names"]


def get_task(name: str) -> TaskBackend:
    """The backend of task ``name``; ValueError naming the known tasks otherwise."""
    backend: TaskBackend = _get_task(name)
    return backend
