"""The vision task: image classification with ``vision_plugin`` (Table 2 and the feature analyses).

Runs: one teacher per alpha (``python -m vision_plugin.train --label-smoothing alpha``), a KD
student per (alpha, T, seed), then feature exports (``python -m vision_plugin.export_features``)
of the teachers and of the analysis seed's students for the report's analyses. Commands are built
as text; the core never imports the plugin.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, List, Mapping, Optional

from lskd_core.classsets import FASHION_MNIST_CLASSES
from lskd_core.jsonio import num
from lskd_core.study.plan import Run, export_id, student_id, teacher_id
from lskd_core.study.tasks.base import ALL_ANALYSES, TaskBackend

if TYPE_CHECKING:
    from lskd_core.study.config import StudyConfig

__all__ = ["VisionTask", "DATASETS", "DEFAULT_FASHION_MNIST_DIR", "default_fashion_mnist_dir",
           "FASHION_MNIST_CLASSES"]

DATASETS = ("fashion-mnist", "imagefolder", "cub")
#: Documented location of the Debian package dataset-fashion-mnist (the demo's data).
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def default_fashion_mnist_dir() -> str:
    """``$LSKD_FASHION_MNIST_DIR``, else the Debian package's location."""
    return os.environ.get("LSKD_FASHION_MNIST_DIR", DEFAULT_FASHION_MNIST_DIR)


def _train_common(cfg: "StudyConfig", role: str) -> List[str]:
    args = ["--dataset", cfg.dataset]
    if cfg.data_path:
        args += ["--data-path", str(cfg.data_path)]
    if cfg.train_samples:
        args += ["--train-samples", str(cfg.train_samples)]
    if cfg.val_samples:
        args += ["--val-samples", str(cfg.val_samples)]
    if cfg.train_samples or cfg.val_samples:
        # one data subset for all runs: students of different seeds differ only in init and order
        args += ["--subset-seed", str(cfg.data_seed)]
    epochs = cfg.teacher_epochs if role == "teacher" else cfg.student_epochs
    bs = cfg.teacher_batch_size if role == "teacher" else cfg.student_batch_size
    lr = cfg.teacher_lr if role == "teacher" else cfg.student_lr
    args += ["--epochs", str(epochs), "--batch-size", str(bs), "--lr", num(lr)]
    return args


def _exec_args(cfg: "StudyConfig") -> List[str]:
    # --no-progress: the run's output goes to its log file, where tqdm redraws are noise
    return ["--device", cfg.device, "--workers", str(cfg.workers), "--no-progress"]


def _training_runs(cfg: "StudyConfig") -> List[Run]:
    runs: List[Run] = []
    train = ("module", "vision_plugin.train")
    for alpha in cfg.alphas:
        args = (["--model", cfg.teacher_model] + _train_common(cfg, "teacher")
                + ["--label-smoothing", num(alpha), "--seed", str(cfg.teacher_seed)]
                + list(cfg.teacher_args) + _exec_args(cfg) + ["--output-dir", "{run}"])
        runs.append(Run(teacher_id(alpha), "teacher", train, args, info={"alpha": alpha, "seed": cfg.teacher_seed},
                        outputs=["checkpoint.pth"], self_reporting=True, distributed=True))
    for alpha in cfg.alphas:
        for temperature in cfg.temperatures:
            for seed in cfg.seed_list:
                t_id = teacher_id(alpha)
                args = (["--model", cfg.student_model] + _train_common(cfg, "student")
                        + ["--label-smoothing", "0", "--seed", str(seed),
                           "--teacher", cfg.teacher_model, "--teacher-ckpt", f"{{study}}/runs/{t_id}/checkpoint.pth",
                           "--kd-temperature", num(temperature), "--kd-beta", num(cfg.kd_beta)]
                        + list(cfg.student_args) + _exec_args(cfg) + ["--output-dir", "{run}"])
                runs.append(Run(student_id(alpha, temperature, seed), "student", train, args, deps=[t_id],
                                info={"alpha": alpha, "temperature": temperature, "seed": seed},
                                outputs=["checkpoint.pth"], self_reporting=True, distributed=True))
    return runs


def _export_args(cfg: "StudyConfig", model_run: str, model: str, split: str, role: str) -> List[str]:
    args = ["--model", model, "--ckpt", f"{{study}}/runs/{model_run}/checkpoint.pth", "--dataset", cfg.dataset]
    if cfg.data_path:
        args += ["--data-path", str(cfg.data_path)]
    args += ["--split", split]
    # The same caps and data seed as training, so the train export is the distilled subset.
    tr = cfg.analysis_train_samples or cfg.train_samples
    va = cfg.analysis_val_samples or cfg.val_samples
    if tr:
        args += ["--train-samples", str(tr)]
    if va:
        args += ["--val-samples", str(va)]
    args += ["--seed", str(cfg.data_seed)]
    if role == "teacher":
        args += ["--save-logits"]
    return args + list(cfg.export_args) + ["--device", cfg.device, "--out", "{run}/features.npz"]


def _export_runs(cfg: "StudyConfig") -> List[Run]:
    """Feature exports: teachers (train with logits: entropy, Fig. 2; val: Fig. 1) and every seed's
    students (train + val: eta over seeds; the analysis seed's also Fig. 1, Table I)."""
    exporter = ("module", "vision_plugin.export_features")
    models = [(teacher_id(a), cfg.teacher_model, {"role": "teacher", "alpha": a}) for a in cfg.alphas]
    models += [(student_id(a, t, s), cfg.student_model,
                {"role": "student", "alpha": a, "temperature": t, "seed": s})
               for a in cfg.alphas for t in cfg.temperatures for s in cfg.seed_list]
    runs = []
    for model_run, model, info in models:
        for split in ("train", "val"):
            args = _export_args(cfg, model_run, model, split, str(info["role"]))
            runs.append(Run(export_id(model_run, split), "export", exporter, args, deps=[model_run],
                            info=dict(info, model_run=model_run, split=split), outputs=["features.npz"],
                            resume_flag=None))
    return runs


class VisionTask(TaskBackend):
    name = "vision"
    settings = ("dataset", "data_path", "train_samples", "val_samples", "teacher_model", "student_model",
                "teacher_batch_size", "student_batch_size", "export_args")
    score_key = "val_acc1"
    second_score_key = "val_acc5"
    teacher_fields = {"top1": "val_acc1", "top5": "val_acc5"}
    teacher_main_field = "top1"
    grid_metric = "val top-1 / top-5 (%)"
    grid_title = "## 1. Accuracy grid (Table 2)\n"
    grid_caption = "Val top-1 / top-5 accuracy (%)"
    axis_label = "val top-1 (%)"
    score_unit = "top-1 (%)"
    analyses = frozenset(ALL_ANALYSES)
    rule_of_thumb = True

    def validate(self, cfg: "StudyConfig") -> None:
        if cfg.dataset not in DATASETS:
            raise ValueError(f"dataset must be fashion-mnist, imagefolder or cub, got {cfg.dataset!r}")
        if cfg.dataset != "fashion-mnist" and not cfg.data_path:
            raise ValueError(f"data_path is required for dataset {cfg.dataset!r}")

    def num_classes(self, cfg: "StudyConfig") -> Optional[int]:
        from lskd_core.study.tasks.vision_checks import dataset_class_count

        return dataset_class_count(cfg)

    def model_problem(self, cfg: "StudyConfig") -> Optional[str]:
        from lskd_core.study.tasks.vision_checks import model_name_problem

        return model_name_problem(cfg)

    def build_runs(self, cfg: "StudyConfig") -> List[Run]:
        """Teachers (one per alpha), students (alpha x T x seed), then feature exports for the analyses."""
        runs = _training_runs(cfg)
        if cfg.analysis:
            runs += _export_runs(cfg)
        return runs

    def setup_line(self, cfg: Mapping) -> str:
        return (f"Task: {cfg.get('dataset')}, teacher `{cfg.get('teacher_model')}` "
                f"({cfg.get('teacher_epochs')} epochs) -> student `{cfg.get('student_model')}` "
                f"({cfg.get('student_epochs')} epochs), train/val samples: "
                f"{cfg.get('train_samples') or 'all'} / {cfg.get('val_samples') or 'all'}")
