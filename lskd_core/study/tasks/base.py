"""What a task backend provides: the interface the runner, the report and the config ask.

A task (vision, translation, ...) owns everything that differs between tasks: the settings it
reads and how they are validated, the plan of runs and their execution-only flags, how a run's
result is completed after its process exits, the metric of the grid and its labels, the lines of
the report's setup, and which of the report's analyses apply. The runner and the report never
test a task's name; they call these methods. Adding a task = one module with a subclass of
:class:`TaskBackend` + one line in :data:`lskd_core.study.tasks.TASKS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Dict, FrozenSet, List, Mapping, Optional, Tuple

if TYPE_CHECKING:  # typing only: config imports the task registry
    from lskd_core.study.config import StudyConfig
    from lskd_core.study.plan import Run

#: Every analysis of the report; a backend lists the ones that apply to its task.
ALL_ANALYSES: Tuple[str, ...] = ("eta", "entropy", "projection", "soft_output", "classwise", "calibration")
#: Token-level analyses of a sequence task (translation): the teachers' per-token entropy per T and
#: the diffusion index on decoder states (lskd_core.report.token_entropy / token_eta). Not in
#: ALL_ANALYSES, so a task without them (vision) reports nothing about them.
TOKEN_ANALYSES: Tuple[str, ...] = ("token_entropy", "token_eta")


def cache_result(run_dir: Path) -> Tuple[Dict[str, object], Optional[str]]:
    """result.json fields of a finished teacher-cache run: its size on disk and shape
    (:func:`lskd_core.teacher_cache.describe`), which the report's cache-savings section reads."""
    from lskd_core.teacher_cache import describe

    try:
        info = describe(run_dir / "cache")
    except (OSError, ValueError) as exc:
        return {}, f"the teacher cache cannot be described: {exc}"
    if info["shards_complete"] != info["shards"]:
        return {}, f"the teacher cache has {info['shards_complete']} of {info['shards']} shards complete"
    return {"cache": info}, None


class TaskBackend(ABC):
    """One task of the study. Subclasses set the class attributes and implement the methods."""

    #: registry key, the ``task`` setting
    name: str = ""
    #: StudyConfig fields this task reads (documentation, and the config's group check)
    settings: Tuple[str, ...] = ()
    #: result.json key holding the grid's main score, and the optional second score (top-5)
    score_key: str = ""
    second_score_key: Optional[str] = None
    #: the grid's teacher row: field name in the report -> result.json key
    teacher_fields: Mapping[str, str] = {}
    #: the teacher field that must be present for the grid to count as complete
    teacher_main_field: str = "top1"
    #: ``metric`` recorded with the grid in results.json
    grid_metric: str = ""
    #: the report's section title, the grid's caption, the figure's y label, the verdict's unit
    grid_title: str = ""
    grid_caption: str = ""
    axis_label: str = ""
    score_unit: str = ""
    #: the analyses of :data:`ALL_ANALYSES` (and :data:`TOKEN_ANALYSES`) that apply
    analyses: FrozenSet[str] = frozenset()
    #: the verdict may cite the paper's rule of thumb (LS teacher + low T), which the paper
    #: established on image classification
    rule_of_thumb: bool = False
    #: a teacher-cache row serves one student epoch (vision: a row per recorded (epoch, sample)
    #: view) rather than every epoch (translation: a row per target token, reused each epoch)
    cache_rows_per_epoch: bool = True

    # ------------------------------------------------------------------ config
    @abstractmethod
    def validate(self, cfg: "StudyConfig") -> None:
        """Check (and normalise) this task's own settings; ValueError naming the setting."""

    # ------------------------------------------------------------------ plan
    @abstractmethod
    def build_runs(self, cfg: "StudyConfig") -> List["Run"]:
        """Every run of the study in dependency order (hashes are filled in by the caller)."""

    def placeholders(self, args: List[str]) -> Dict[str, str]:
        """Extra ``{name}`` substitutions the task's commands use besides ``{study}`` and ``{run}``."""
        return {}

    # ------------------------------------------------------------------ results
    def complete_result(self, run: "Run", run_dir: Path) -> Tuple[Dict[str, object], Optional[str]]:
        """Fields to add to the study-written result.json of a run that exited 0 and whose outputs
        exist, or an error message when the outputs do not hold what they should."""
        if run.kind == "cache":
            return cache_result(run_dir)
        return {}, None

    def metric_run(self, model_run_id: str) -> str:
        """The run whose result.json holds the score of a trained model (itself, by default)."""
        return model_run_id

    # ------------------------------------------------------------------ report
    @abstractmethod
    def setup_line(self, cfg: Mapping) -> str:
        """The report's first sentence: what was trained on what."""

    def not_applicable_note(self) -> str:
        """Markdown standing in for the analyses that do not apply (empty when all apply)."""
        return ""

    # ------------------------------------------------------------------ up-front checks
    def num_classes(self, cfg: "StudyConfig") -> Optional[int]:
        """The dataset's class count, for checking class ids and sample caps before any compute
        (None: not applicable or not known yet)."""
        return None

    def model_problem(self, cfg: "StudyConfig") -> Optional[str]:
        """One line naming a model setting the task cannot build, and the remedy (None: fine or unknown)."""
        return None
