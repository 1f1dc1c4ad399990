"""Up-front checks of a vision study's settings that need the dataset or the model registry.

:func:`dataset_class_count`: Fashion-MNIST 10, CUB-200-2011 200, an image folder the class
directories of its ``train`` split (None when the path does not exist yet: checked by the trainer).
:func:`model_name_problem`: asks vision_plugin's registry lazily, inside the function (lskd_core
never imports a plugin at import time), and says nothing when the plugin is not installed.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, FrozenSet, Optional

if TYPE_CHECKING:
    from lskd_core.study.config import StudyConfig

__all__ = ["dataset_class_count", "model_name_problem", "feature_kd_model_problem"]

_FIXED_CLASS_COUNTS = {"fashion-mnist": 10, "cub": 200}


def dataset_class_count(cfg: "StudyConfig") -> Optional[int]:
    """Number of classes of the configured dataset, or None when it cannot be known yet."""
    if cfg.dataset in _FIXED_CLASS_COUNTS:
        return _FIXED_CLASS_COUNTS[cfg.dataset]
    if cfg.dataset == "imagefolder" and cfg.data_path:
        train = Path(str(cfg.data_path)) / "train"
        try:
            n = sum(1 for p in train.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return None  # not there (yet): the trainer names the missing folder
        return n or None
    return None


@functools.lru_cache(maxsize=1)
def _known_models() -> Optional[FrozenSet[str]]:
    """lskd's registered models + torchvision's classifiers; None when vision_plugin is absent."""
    if importlib.util.find_spec("vision_plugin") is None:
        return None
    try:
        from vision_plugin import models  # lazily: only a vision study's validation asks

        return frozenset(models.lskd_model_names()) | frozenset(models.torchvision_classifiers())
    except ImportError:
        return None  # the plugin's own dependencies are missing here: the trainer will say so


def model_name_problem(cfg: "StudyConfig") -> Optional[str]:
    """One line naming an unknown teacher_model / student_model and the remedy, or None."""
    names = {setting: getattr(cfg, setting) for setting in ("teacher_model", "student_model")}
    known = _known_models()
    if known is None:
        return None
    for setting, name in names.items():
        if name not in known:
            lskd = sorted(n for n in known if n.startswith("lskd_"))
            return (f"{setting} {name!r} is neither an lskd model ({', '.join(lskd)}) nor a torchvision "
                    "classification model (e.g. resnet18, resnet50, mobilenet_v2); fix the name")
    return feature_kd_model_problem(cfg)


def _feature_kd_family(name: str) -> Optional[str]:
    """The model families whose feature positions vision_plugin.feature_kd knows (by name)."""
    if name.startswith("lskd_cnn_"):
        return "lskd_cnn"
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        return "resnet"
    return None


def feature_kd_model_problem(cfg: "StudyConfig") -> Optional[str]:
    """With ``feature_kd``: both models must have known feature positions, and the same family
    (a ResNet has 4 stages, lskd's small CNNs 2). One line, or None."""
    if not getattr(cfg, "feature_kd", None):
        return None
    families = {}
    for setting in ("teacher_model", "student_model"):
        name = getattr(cfg, setting)
        families[setting] = _feature_kd_family(name)
        if families[setting] is None:
            return (f"feature_kd = {cfg.feature_kd!r} has no known feature positions for {setting} {name!r}: use "
                    "torchvision's ResNet family (resnet*, resnext*, wide_resnet*) or lskd_cnn_*, or unset feature_kd")
    if families["teacher_model"] != families["student_model"]:
        return (f"feature_kd = {cfg.feature_kd!r} pairs stage by stage: teacher_model {cfg.teacher_model!r} and "
                f"student_model {cfg.student_model!r} have different numbers of stages; pick two ResNets or two lskd CNNs")
    return None
