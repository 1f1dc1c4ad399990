"""The alpha x T study: teachers for each alpha, KD students for each (alpha, T, seed), analyses, report.

``python -m lskd_core.study`` runs the experiment behind Table 2 of Chandrasegaran et al. (ICML
2022) on the user's own task and writes a report (``lskd_core.report``) that answers "smooth my
teacher or not, and at which temperature should I distil?" with the paper's evidence: the accuracy
grid (Table 2), the diffusion index (Eq. 1, Tables 3 / K.1), the S1/S2 agreement (Table G.1), the
teacher's entropy (Table H.1), the projections (Fig. 1), the soft-output profile (Fig. 2) and the
class-wise accuracy (Table I).

Every run is one separate process (``python -m vision_plugin.train`` / ``torch.distributed.run``,
``python -m vision_plugin.export_features``, ``fairseq-train`` ...): lskd_core never imports a plugin,
and the same plan can be dispatched by any scheduler (``--print-commands``) and collected back
(``--report-only``).

Resumability (each run directory ``<out>/runs/<run_id>/``):

* ``run_config.json`` records the run's *defining* arguments (the command with execution details
  such as paths of this study, ``--device`` and ``--workers`` abstracted away) and their SHA-256,
  which also covers the hashes of the runs it depends on. A changed teacher therefore changes its
  students' hashes, and they re-run too.
* A run is skipped iff its ``result.json`` says ``"status": "done"``, its recorded hash equals the
  current one, its outputs exist, and the dependencies it consumed are the ones on disk now.
* A killed training run whose config still matches resumes from its ``checkpoint.pth``
  (``--resume``), so a killed study loses at most the epoch in progress.
* A run dir that cannot be trusted (unparseable JSON, "done" but checkpoint missing, produced by an
  older config) is reported and moved aside to ``<dir>.corrupt-<time>`` / ``<dir>.stale-<time>``:
  nothing is deleted.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from lskd_core import __version__
from lskd_core.atomic import atomic_write_json
from lskd_core.checks import check_alpha, check_beta, check_temperature

__all__ = [
    "StudyConfig",
    "Run",
    "RunState",
    "SubprocessLauncher",
    "load_config",
    "build_plan",
    "inspect_run",
    "run_study",
    "plan_commands",
    "main",
]

PRESET_DIR = Path(__file__).resolve().parent / "presets"
#: Study-root placeholder used in the hashed (defining) form of a command, so that moving a study
#: directory, or collecting it on another machine, does not invalidate its runs.
STUDY_TOKEN = "{study}"
RUN_CONFIG = "run_config.json"
RESULT = "result.json"
LAUNCH_LOG = "launches.jsonl"
EVENT_LOG = "events.jsonl"
MANIFEST = "study.json"
# Flags that say *how* a run is executed, not *what* it computes: excluded from the hash so that a
# grid trained on a GPU cluster can be reported on a laptop (and a run moved to more workers is
# not retrained). --output-dir/--out/--save-dir are the run directory itself.
_EXECUTION_FLAGS = {"--device": 1, "--workers": 1, "--print-freq": 1, "--resume": 1, "--output-dir": 1,
                    "--out": 1, "--save-dir": 1, "--num-workers": 1, "--cpu": 0, "--results-path": 1,
                    "--no-progress": 0}


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def _num(x: float) -> str:
    """Compact, exact text for a hyper-parameter value in a run id: 0.1 -> '0.1', 2.0 -> '2'."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def _atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, sort_keys=True, allow_nan=False)


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class _BadJson(Exception):
    pass


def _read_json(path: Path) -> Optional[dict]:
    """Parsed JSON object at ``path``; None when absent; _BadJson when present but not a JSON object."""
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadJson(f"{path.name} is not valid JSON ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise _BadJson(f"{path.name} holds a {type(obj).__name__}, not a JSON object")
    return obj


def _fingerprint(run_dir: Path) -> Optional[str]:
    """Identity of one *execution* of a run: the hash of its result.json bytes (they include the
    run's wall time, so a re-executed dependency gets a new fingerprint and its dependents re-run)."""
    path = run_dir / RESULT
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _default_fashion_mnist_dir() -> str:
    # Documented default location of the Debian package dataset-fashion-mnist.
    return os.environ.get("LSKD_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


# ------------------------------------------------------------------------------------------------
# configuration
# ------------------------------------------------------------------------------------------------
@dataclass
class StudyConfig:
    """Everything that defines a study. Presets (``lskd_core/presets/*.json``), config files
    (JSON/TOML) and command-line flags all set these fields; later sources override earlier ones.

    TOML/JSON tables are flattened with an underscore: ``[teacher] model = "x"`` is ``teacher_model``.
    """

    name: str = "study"
    task: str = "vision"  # "vision" (vision_plugin) or "translation" (fairseq + fairseq_plugin)
    out: Optional[str] = None
    # --- data (vision) ---
    dataset: str = "fashion-mnist"
    data_path: Optional[str] = None  # None: the Debian package's location for fashion-mnist
    train_samples: Optional[int] = None  # stratified, seeded caps (None or 0: all)
    val_samples: Optional[int] = None
    # --- models and optimisation ---
    teacher_model: str = "resnet18"
    student_model: str = "resnet18"
    teacher_epochs: int = 10
    student_epochs: int = 10
    teacher_batch_size: int = 128
    student_batch_size: int = 128
    teacher_lr: float = 0.1
    student_lr: float = 0.1
    teacher_args: list = field(default_factory=list)  # extra trainer flags, verbatim
    student_args: list = field(default_factory=list)
    export_args: list = field(default_factory=list)
    # --- the grid ---
    alphas: list = field(default_factory=lambda: [0.0, 0.1])
    temperatures: list = field(default_factory=lambda: [1.0, 2.0, 3.0, 64.0])
    seeds: Any = 1  # n (seeds 0..n-1) or an explicit list of seeds for the students
    teacher_seed: int = 0  # one teacher per alpha, as in the paper
    data_seed: int = 0  # seed of the stratified sample caps: every run (and export) sees the same subset
    kd_beta: float = 1.0  # the paper's setting: pure KD term
    # --- analyses ---
    analysis: bool = True
    analysis_seed: Optional[int] = None  # whose students' features are analysed (default: first seed)
    analysis_train_samples: Optional[int] = None  # caps for the feature exports
    analysis_val_samples: Optional[int] = None
    target_classes: list = field(default_factory=list)  # eta / Table I targets (default: all classes)
    projection_classes: list = field(default_factory=list)  # Fig. 1: two similar classes + one dissimilar
    profile_class: Optional[int] = None  # Fig. 2 class (default: the first projection class)
    profile_temperatures: list = field(default_factory=lambda: [1.0, 2.0])
    entropy_temperatures: list = field(default_factory=list)  # extra T for Table H.1
    hierarchy: str = "fashion-mnist"  # "fashion-mnist", "wordnet" (class names are wnids) or a parent-map JSON
    num_similar: int = 4  # |S1| (paper: 4)
    num_dissimilar: int = 20  # |S2| (paper: 20)
    feature_sets: Optional[list] = None  # [closest %, farthest %] (App. G method 2); None: sized like the hierarchy sets
    projection_per_class: Optional[int] = 150  # the paper plots 150 samples per class
    # --- translation (task = "translation") ---
    pair: str = "en-de"
    data_dir: Optional[str] = None  # binarised fairseq data; None: prepared offline by the study
    arch: str = "transformer_iwslt_de_en"
    teacher_arch: Optional[str] = None
    student_arch: Optional[str] = None
    max_tokens: int = 4096
    beam: int = 5
    generate_args: list = field(default_factory=list)
    prepare_args: list = field(default_factory=list)  # e.g. ["--max-pairs", "20000"]
    # --- execution (not part of any run's hash, except nproc for training) ---
    device: str = "cpu"
    nproc: int = 1
    workers: int = 0
    jobs: int = 1  # independent runs executed at the same time
    python: Optional[str] = None  # interpreter for the runs (default: this one)

    # ---------------------------------------------------------------- derived values
    @property
    def seed_list(self) -> list:
        if isinstance(self.seeds, (list, tuple)):
            return [int(s) for s in self.seeds]
        return list(range(int(self.seeds)))

    @property
    def first_seed(self) -> int:
        return self.analysis_seed if self.analysis_seed is not None else self.seed_list[0]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # ---------------------------------------------------------------- validation
    def validate(self) -> "StudyConfig":
        """Normalise types and raise ValueError naming the field and the value on bad input."""
        if self.task not in ("vision", "translation"):
            raise ValueError(f"task must be 'vision' or 'translation', got {self.task!r}")
        self.alphas = [check_alpha(a, "alphas") for a in _as_list(self.alphas, "alphas")]
        self.temperatures = [check_temperature(t, "temperatures") for t in _as_list(self.temperatures, "temperatures")]
        for name in ("alphas", "temperatures"):
            vals = getattr(self, name)
            if not vals:
                raise ValueError(f"{name} must not be empty")
            if len(set(vals)) != len(vals):
                raise ValueError(f"{name} has duplicates: {vals}")
        self.alphas = sorted(self.alphas)
        self.temperatures = sorted(self.temperatures)
        self.profile_temperatures = [check_temperature(t, "profile_temperatures")
                                     for t in _as_list(self.profile_temperatures, "profile_temperatures")]
        self.entropy_temperatures = [check_temperature(t, "entropy_temperatures")
                                     for t in _as_list(self.entropy_temperatures, "entropy_temperatures")]
        if isinstance(self.seeds, bool):
            raise ValueError(f"seeds must be a count or a list of integers, got {self.seeds!r}")
        if isinstance(self.seeds, (list, tuple)):
            seeds = [_int(s, "seeds") for s in self.seeds]
            if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
                raise ValueError(f"seeds must be distinct non-negative integers, got {self.seeds!r}")
            self.seeds = seeds
        else:
            self.seeds = _int(self.seeds, "seeds")
            if self.seeds < 1:
                raise ValueError(f"seeds must be >= 1, got {self.seeds!r}")
        self.kd_beta = check_beta(self.kd_beta, "kd_beta")
        for name in ("teacher_epochs", "student_epochs", "teacher_batch_size", "student_batch_size",
                     "nproc", "jobs", "max_tokens", "beam", "num_similar", "num_dissimilar"):
            v = _int(getattr(self, name), name)
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v!r}")
            setattr(self, name, v)
        for name in ("workers", "teacher_seed", "data_seed"):
            v = _int(getattr(self, name), name)
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v!r}")
            setattr(self, name, v)
        for name in ("train_samples", "val_samples", "analysis_train_samples", "analysis_val_samples",
                     "projection_per_class"):
            v = getattr(self, name)
            if v is not None:
                v = _int(v, name)
                if v < 0:
                    raise ValueError(f"{name} must be >= 0 (0 or null: no cap), got {v!r}")
                # 0 means "no cap": TOML has no null to override a preset's cap with
                setattr(self, name, v or None)
        for name in ("teacher_lr", "student_lr"):
            v = getattr(self, name)
            try:
                v = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a positive number, got {v!r}") from None
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
            setattr(self, name, v)
        for name in ("teacher_args", "student_args", "export_args", "generate_args", "prepare_args"):
            v = getattr(self, name)
            if isinstance(v, str):
                v = shlex.split(v)
            if not isinstance(v, (list, tuple)) or not all(isinstance(a, (str, int, float)) for a in v):
                raise ValueError(f"{name} must be a list of command-line arguments, got {v!r}")
            setattr(self, name, [str(a) for a in v])
        self.target_classes = [_int(c, "target_classes") for c in _as_list(self.target_classes, "target_classes")]
        if any(c < 0 for c in self.target_classes) or len(set(self.target_classes)) != len(self.target_classes):
            raise ValueError(f"target_classes must be distinct non-negative class ids, got {self.target_classes}")
        self.projection_classes = [_int(c, "projection_classes")
                                   for c in _as_list(self.projection_classes, "projection_classes")]
        if self.projection_classes and (len(self.projection_classes) != 3 or len(set(self.projection_classes)) != 3
                                        or min(self.projection_classes) < 0):
            raise ValueError("projection_classes must be 3 distinct class ids (two similar, one dissimilar), "
                             f"got {self.projection_classes}")
        if self.profile_class is not None:
            self.profile_class = _int(self.profile_class, "profile_class")
        if self.analysis_seed is not None:
            self.analysis_seed = _int(self.analysis_seed, "analysis_seed")
            if self.analysis_seed not in self.seed_list:
                raise ValueError(f"analysis_seed {self.analysis_seed} is not one of the seeds {self.seed_list}")
        if self.feature_sets is not None:
            fs = _as_list(self.feature_sets, "feature_sets")
            if len(fs) != 2:
                raise ValueError(f"feature_sets must be [closest_pct, farthest_pct], got {self.feature_sets!r}")
            try:
                fs = [float(x) for x in fs]
            except (TypeError, ValueError):
                raise ValueError(f"feature_sets must be two percentages, got {self.feature_sets!r}") from None
            if not (0 < fs[0] <= 100 and 0 < fs[1] <= 100):
                raise ValueError(f"feature_sets percentages must be in (0, 100], got {fs}")
            self.feature_sets = fs
        if self.task == "vision" and self.dataset not in ("fashion-mnist", "imagefolder", "cub"):
            raise ValueError(f"dataset must be fashion-mnist, imagefolder or cub, got {self.dataset!r}")
        if self.task == "vision" and self.dataset != "fashion-mnist" and not self.data_path:
            raise ValueError(f"data_path is required for dataset {self.dataset!r}")
        if self.task == "translation" and self.pair not in ("en-de", "en-ru"):
            raise ValueError(f"pair must be en-de or en-ru, got {self.pair!r}")
        return self


def _as_list(v: Any, name: str) -> list:
    if v is None:
        return []
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return [v]
    if isinstance(v, str):
        return [x for x in v.replace(",", " ").split()]
    if isinstance(v, (list, tuple)):
        return list(v)
    raise ValueError(f"{name} must be a list, got {v!r}")


def _int(v: Any, name: str) -> int:
    if isinstance(v, bool):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {v!r}") from None
    if not f.is_integer():
        raise ValueError(f"{name} must be an integer, got {v!r}")
    return int(f)


def _flatten(mapping: Mapping, prefix: str = "") -> dict:
    """Flatten tables: ``[teacher] epochs`` -> ``teacher_epochs``. A table whose name is not a field
    prefix only groups settings (``[grid] alphas`` -> ``alphas``, ``[analysis] target_classes``)."""
    known = {f.name for f in dataclasses.fields(StudyConfig)}
    out = {}
    for k, v in mapping.items():
        k = str(k).replace("-", "_")
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "_"))
        elif key not in known and prefix and k in known:
            out[k] = v
        else:
            out[key] = v
    return out


def read_config_file(path: os.PathLike | str) -> dict:
    """Read a study config (``.json`` or ``.toml``) into a flat dict of StudyConfig fields."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {str(p)!r} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python < 3.11
                try:
                    import tomli as tomllib  # type: ignore[no-redef]
                except ModuleNotFoundError:
                    raise ValueError(f"reading {p} needs Python >= 3.11 (tomllib) or `pip install tomli`; "
                                     "or write the config as JSON") from None
            data = tomllib.loads(text)
        elif p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"config file must end in .json or .toml, got {str(p)!r}")
    except ValueError as exc:
        if "config" in str(exc) or "tomllib" in str(exc):
            raise
        raise ValueError(f"config file {str(p)!r} cannot be parsed: {exc}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"config file {str(p)!r} must hold a table/object of settings")
    return _flatten(data)


def available_presets() -> list:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def read_preset(name: str) -> dict:
    path = PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"preset must be one of {available_presets()}, got {name!r}")
    data = _flatten(json.loads(path.read_text(encoding="utf-8")))
    data.pop("description", None)
    return data


def load_config(preset: Optional[str] = None, config_file: Optional[str] = None,
                overrides: Optional[Mapping] = None) -> StudyConfig:
    """Preset (default ``demo``, or the file's ``preset`` key) < config file < ``overrides``."""
    file_values = read_config_file(config_file) if config_file else {}
    base = preset or file_values.pop("preset", None) or "demo"
    file_values.pop("preset", None)
    file_values.pop("description", None)
    values = read_preset(base)
    values.update(file_values)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in dataclasses.fields(StudyConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown study setting(s) {unknown}; known settings: {sorted(known)}")
    cfg = StudyConfig(**values)
    if cfg.name == "study":
        cfg.name = base
    return cfg.validate()


# ------------------------------------------------------------------------------------------------
# the plan
# ------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One process of the study.

    ``program``: ``("module", "vision_plugin.train")`` runs ``python -m ...``; ``("exe", "fairseq-train")``
    runs a console script. ``args`` may contain ``{study}`` (the study root) and ``{run}`` (this
    run's directory); they are substituted when the command is built, and kept symbolic in the hash.
    ``outputs``: files (relative to the run dir) that must exist once the run is done.
    ``self_reporting``: the program writes result.json itself (the vision trainer); otherwise the
    study writes it after a zero exit status and a check of ``outputs``.
    """

    run_id: str
    kind: str  # teacher | student | export | prepare | generate
    program: tuple
    args: list
    deps: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)
    self_reporting: bool = False
    distributed: bool = False  # launched through torch.distributed.run when nproc > 1
    resume_flag: Optional[str] = "--resume"  # how to resume from {run}/checkpoint.pth (None: program resumes itself)
    hash: str = ""

    def defining(self, nproc: int) -> dict:
        """The hashed description: program + args without execution-only flags."""
        args = []
        skip = 0
        for a in self.args:
            if skip:
                skip -= 1
                continue
            if a in _EXECUTION_FLAGS:
                skip = _EXECUTION_FLAGS[a]
                continue
            args.append(a)
        d = {"program": list(self.program), "args": args}
        if self.distributed and nproc > 1:
            d["nproc"] = nproc  # world size changes the global batch: a different experiment
        return d


def _run_dir(study: Path, run_id: str) -> Path:
    return study / "runs" / run_id


def teacher_id(alpha: float) -> str:
    return f"teacher_a{_num(alpha)}"


def student_id(alpha: float, temperature: float, seed: int) -> str:
    return f"student_a{_num(alpha)}_T{_num(temperature)}_s{seed}"


def export_id(model_run_id: str, split: str) -> str:
    return f"export_{model_run_id}_{split}"


def _vision_train_common(cfg: StudyConfig, role: str) -> list:
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
    args += ["--epochs", str(epochs), "--batch-size", str(bs), "--lr", _num(lr)]
    return args


def _vision_exec_args(cfg: StudyConfig) -> list:
    # --no-progress: the run's output goes to its log file, where tqdm redraws are noise
    return ["--device", cfg.device, "--workers", str(cfg.workers), "--no-progress"]


def build_vision_plan(cfg: StudyConfig) -> list:
    """Teachers (one per alpha), students (alpha x T x seed), then feature exports for the analyses."""
    runs: list = []
    train = ("module", "vision_plugin.train")
    for alpha in cfg.alphas:
        args = (["--model", cfg.teacher_model] + _vision_train_common(cfg, "teacher")
                + ["--label-smoothing", _num(alpha), "--seed", str(cfg.teacher_seed)]
                + list(cfg.teacher_args) + _vision_exec_args(cfg) + ["--output-dir", "{run}"])
        runs.append(Run(teacher_id(alpha), "teacher", train, args, info={"alpha": alpha, "seed": cfg.teacher_seed},
                        outputs=["checkpoint.pth"], self_reporting=True, distributed=True))
    for alpha in cfg.alphas:
        for temperature in cfg.temperatures:
            for seed in cfg.seed_list:
                t_id = teacher_id(alpha)
                args = (["--model", cfg.student_model] + _vision_train_common(cfg, "student")
                        + ["--label-smoothing", "0", "--seed", str(seed),
                           "--teacher", cfg.teacher_model, "--teacher-ckpt", f"{{study}}/runs/{t_id}/checkpoint.pth",
                           "--kd-temperature", _num(temperature), "--kd-beta", _num(cfg.kd_beta)]
                        + list(cfg.student_args) + _vision_exec_args(cfg) + ["--output-dir", "{run}"])
                runs.append(Run(student_id(alpha, temperature, seed), "student", train, args, deps=[t_id],
                                info={"alpha": alpha, "temperature": temperature, "seed": seed},
                                outputs=["checkpoint.pth"], self_reporting=True, distributed=True))
    if cfg.analysis:
        runs += _vision_exports(cfg)
    return runs


def _vision_exports(cfg: StudyConfig) -> list:
    """Feature exports: teachers (train with logits: entropy, Fig. 2; val: Fig. 1) and the analysis
    seed's students (train + val: eta, Fig. 1, Table I)."""
    exporter = ("module", "vision_plugin.export_features")
    models = [(teacher_id(a), cfg.teacher_model, {"role": "teacher", "alpha": a}) for a in cfg.alphas]
    models += [(student_id(a, t, cfg.first_seed), cfg.student_model,
                {"role": "student", "alpha": a, "temperature": t, "seed": cfg.first_seed})
               for a in cfg.alphas for t in cfg.temperatures]
    runs = []
    for model_run, model, info in models:
        for split in ("train", "val"):
            args = ["--model", model, "--ckpt", f"{{study}}/runs/{model_run}/checkpoint.pth",
                    "--dataset", cfg.dataset]
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
            if info["role"] == "teacher":
                args += ["--save-logits"]
            args += list(cfg.export_args) + ["--device", cfg.device, "--out", "{run}/features.npz"]
            runs.append(Run(export_id(model_run, split), "export", exporter, args, deps=[model_run],
                            info=dict(info, model_run=model_run, split=split), outputs=["features.npz"],
                            resume_flag=None))
    return runs


def build_translation_plan(cfg: StudyConfig) -> list:
    """Offline corpus -> LS teachers (fairseq's label_smoothed_cross_entropy) -> ls_kd students -> BLEU.

    Against fairseq_plugin's CLI (issue 4): ``python -m fairseq_plugin.prepare_offline --pair P --out
    DIR`` (binarised data in ``DIR/bin``), ``--user-dir <fairseq_plugin>`` (also on teachers and
    ``fairseq-generate``: importing the plugin allow-lists fairseq checkpoint contents for torch's
    weights-only loader, which resuming and decoding need on torch >= 2.6), ``--criterion ls_kd
    --teacher-path --kd-temperature --kd-beta``. fairseq-train resumes from ``checkpoint_last.pt`` in
    its save dir by itself, so an interrupted run is restarted in place.
    """
    runs: list = []
    deps_data: list = []
    if cfg.data_dir:
        data = str(cfg.data_dir)
    else:
        prep = f"prepare_{cfg.pair}"
        runs.append(Run(prep, "prepare", ("module", "fairseq_plugin.prepare_offline"),
                        ["--pair", cfg.pair, "--out", "{run}/data"] + list(cfg.prepare_args), info={"pair": cfg.pair},
                        outputs=["data/prepare.json"], resume_flag=None))
        deps_data = [prep]
        data = f"{{study}}/runs/{prep}/data/bin"
    train = ("exe", "fairseq-train")
    plugin = ["--user-dir", "{fairseq_plugin}"]
    for alpha in cfg.alphas:
        args = ([data] + plugin + ["--arch", cfg.teacher_arch or cfg.arch, "--criterion", "label_smoothed_cross_entropy",
                                   "--label-smoothing", _num(alpha), "--max-epoch", str(cfg.teacher_epochs),
                                   "--lr", _num(cfg.teacher_lr), "--max-tokens", str(cfg.max_tokens),
                                   "--seed", str(cfg.teacher_seed)]
                + list(cfg.teacher_args) + _fairseq_exec_args(cfg) + ["--save-dir", "{run}"])
        runs.append(Run(teacher_id(alpha), "teacher", train, args, deps=list(deps_data),
                        info={"alpha": alpha, "seed": cfg.teacher_seed}, outputs=["checkpoint_best.pt"],
                        resume_flag=None))
    for alpha in cfg.alphas:
        for temperature in cfg.temperatures:
            for seed in cfg.seed_list:
                t_id = teacher_id(alpha)
                args = ([data] + plugin + ["--arch", cfg.student_arch or cfg.arch,
                                           "--criterion", "ls_kd", "--teacher-path",
                                           f"{{study}}/runs/{t_id}/checkpoint_best.pt",
                                           "--kd-temperature", _num(temperature), "--kd-beta", _num(cfg.kd_beta),
                                           "--label-smoothing", "0", "--max-epoch", str(cfg.student_epochs),
                                           "--lr", _num(cfg.student_lr), "--max-tokens", str(cfg.max_tokens),
                                           "--seed", str(seed)]
                        + list(cfg.student_args) + _fairseq_exec_args(cfg) + ["--save-dir", "{run}"])
                runs.append(Run(student_id(alpha, temperature, seed), "student", train, args,
                                deps=list(deps_data) + [t_id],
                                info={"alpha": alpha, "temperature": temperature, "seed": seed},
                                outputs=["checkpoint_best.pt"], resume_flag=None))
    # BLEU of every trained model (teachers too: the grid's teacher row), tokenised IWSLT-style BLEU4.
    for r in [r for r in runs if r.kind in ("teacher", "student")]:
        args = ([data] + plugin + ["--path", f"{{study}}/runs/{r.run_id}/checkpoint_best.pt", "--beam", str(cfg.beam),
                                   "--remove-bpe", "--gen-subset", "test", "--batch-size", "64",
                                   # fairseq 0.12 drops a last batch smaller than this multiple (issue #5036)
                                   "--required-batch-size-multiple", "1"]
                + list(cfg.generate_args) + _fairseq_exec_args(cfg) + ["--results-path", "{run}"])
        runs.append(Run(f"bleu_{r.run_id}", "generate", ("exe", "fairseq-generate"), args,
                        deps=list(deps_data) + [r.run_id], info=dict(r.info, model_run=r.run_id, role=r.kind),
                        outputs=["generate-test.txt"], resume_flag=None))
    return runs


def _fairseq_exec_args(cfg: StudyConfig) -> list:
    args = ["--num-workers", str(cfg.workers)]
    if cfg.device == "cpu":
        # --data-buffer-size 0: no batch-prefetch thread; short CPU runs can otherwise exit while
        # that daemon thread is inside torch, and the process aborts ("terminate called ...")
        args += ["--cpu", "--data-buffer-size", "0"]
    return args


def build_plan(cfg: StudyConfig) -> list:
    """All runs of the study in dependency order, with their hashes filled in."""
    runs = build_vision_plan(cfg) if cfg.task == "vision" else build_translation_plan(cfg)
    by_id: dict = {}
    for r in runs:
        if r.run_id in by_id:
            raise ValueError(f"duplicate run id {r.run_id!r} in the plan")
        for d in r.deps:
            if d not in by_id:
                raise AssertionError(f"run {r.run_id} depends on {d}, which is not planned before it")
        r.hash = _sha256_json({"run": r.defining(cfg.nproc), "deps": {d: by_id[d].hash for d in r.deps}})
        by_id[r.run_id] = r
    return runs


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------
def _plugin_root() -> Optional[Path]:
    """The source checkout holding lskd_core (so ``python -m vision_plugin.train`` also works from a
    clone that was not pip-installed). Found by path, without importing any plugin."""
    root = Path(__file__).resolve().parent.parent
    if (root / "vision_plugin").is_dir() or (root / "fairseq_plugin").is_dir():
        return root
    return None


def _fairseq_plugin_dir() -> str:
    """``--user-dir`` wants the plugin's folder: find it without importing it (importlib's spec)."""
    root = _plugin_root()
    if root is not None and (root / "fairseq_plugin").is_dir():
        return str(root / "fairseq_plugin")
    import importlib.util

    spec = importlib.util.find_spec("fairseq_plugin")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the translation task needs fairseq_plugin (pip install 'lskd[fairseq]')")
    return str(list(spec.submodule_search_locations)[0])


def _executable(name: str, python: str) -> str:
    """A console script of the runs' environment: next to its interpreter, else on PATH."""
    cand = Path(python).parent / name
    if cand.exists():
        return str(cand)
    import shutil

    found = shutil.which(name)
    return found or name


def run_command(run: Run, study: Path, cfg: StudyConfig, resume: bool = False) -> list:
    """The exact argv of ``run`` (paths substituted, launcher prefix added)."""
    python = cfg.python or sys.executable
    run_dir = _run_dir(study, run.run_id)
    subs = {"{study}": str(study), "{run}": str(run_dir)}
    if any("{fairseq_plugin}" in a for a in run.args):
        subs["{fairseq_plugin}"] = _fairseq_plugin_dir()

    def sub(a: str) -> str:
        for k, v in subs.items():
            a = a.replace(k, v)
        return a

    args = [sub(a) for a in run.args]
    if resume and run.resume_flag:
        args += [run.resume_flag, str(run_dir / "checkpoint.pth")]
    kind, target = run.program
    if kind == "module":
        if run.distributed and cfg.nproc > 1:
            # torchrun's -m runs the plugin as an installed module on every rank.
            prefix = [python, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(cfg.nproc),
                      "-m", target]
        else:
            # One process: plain `python -m` saves torchrun's start-up (rendezvous, agent) on CPU.
            prefix = [python, "-m", target]
    else:
        prefix = [_executable(target, python)]
    return prefix + args


def plan_commands(plan: Sequence[Run], study: Path, cfg: StudyConfig) -> list:
    """Every run's command, shell-quoted, one string per run, in dependency order."""
    return [shlex.join(run_command(r, study, cfg)) for r in plan]


# ------------------------------------------------------------------------------------------------
# run state
# ------------------------------------------------------------------------------------------------
@dataclass
class RunState:
    """What the study should do with a run: ``done`` (skip), ``new``, ``resume`` (checkpoint of the
    same config), ``restart`` (same config, nothing to resume from), ``stale`` (made by another
    config, or from dependencies that have since been re-run) or ``corrupt`` (cannot be trusted).
    Stale and corrupt dirs are moved aside before the run starts again."""

    status: str
    reason: str = ""


def _outputs_ok(run: Run, run_dir: Path) -> Optional[str]:
    for rel in run.outputs:
        p = run_dir / rel
        if not p.exists():
            return f"{rel} is missing"
        if p.is_file() and p.stat().st_size == 0:
            return f"{rel} is empty"
        if p.suffix == ".npz" and not zipfile.is_zipfile(p):
            return f"{rel} is not a valid .npz"
    return None


def inspect_run(run: Run, study: Path, dep_fingerprints: Mapping[str, Optional[str]],
                strict: bool = True) -> RunState:
    """Classify a run directory (see :class:`RunState`).

    ``dep_fingerprints``: the current fingerprint of each dependency's result. ``strict=False``
    (report-only) accepts runs dispatched by an external scheduler: no recorded inputs, and
    export-like runs without a study-written result.json.
    """
    run_dir = _run_dir(study, run.run_id)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return RunState("new")
    try:
        rc = _read_json(run_dir / RUN_CONFIG)
    except _BadJson as exc:
        return RunState("corrupt", str(exc))
    try:
        result = _read_json(run_dir / RESULT)
    except _BadJson as exc:
        return RunState("corrupt", str(exc))
    if rc is None:
        if result is not None or (run_dir / "checkpoint.pth").exists():
            return RunState("corrupt", f"{RUN_CONFIG} is missing, so the config that produced this run is unknown")
        return RunState("restart", f"{RUN_CONFIG} is missing and nothing finished")
    if rc.get("hash") != run.hash:
        return RunState("stale", "made by a different config (hash "
                        f"{str(rc.get('hash'))[:12]} != {run.hash[:12]})")
    inputs = rc.get("inputs")
    if isinstance(inputs, Mapping) and inputs:
        changed = [d for d in run.deps if inputs.get(d) != dep_fingerprints.get(d)]
        if changed:
            return RunState("stale", f"its input run(s) {changed} were re-run since it started")
    elif strict and run.deps and result is not None and rc.get("launched_by") == "study":
        return RunState("corrupt", f"{RUN_CONFIG} has no record of its inputs")
    if result is not None and result.get("status") == "done":
        missing = _outputs_ok(run, run_dir)
        if missing:
            return RunState("corrupt", f"{RESULT} says done but {missing}")
        return RunState("done")
    if result is not None and result.get("status") not in (None, "done", "running", "failed"):
        return RunState("corrupt", f"{RESULT} has unknown status {result.get('status')!r}")
    if not run.self_reporting and result is None and _outputs_ok(run, run_dir) is None \
            and rc.get("launched_by") != "study":
        # An export dispatched by an external scheduler: its output is written atomically, so its
        # presence means it finished.
        return RunState("done", "outputs present (externally dispatched)")
    if run.resume_flag and (run_dir / "checkpoint.pth").exists():
        return RunState("resume", "checkpoint.pth of the same config")
    return RunState("restart", "unfinished")


def _move_aside(run_dir: Path, tag: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = run_dir.with_name(f"{run_dir.name}.{tag}-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = run_dir.with_name(f"{run_dir.name}.{tag}-{stamp}-{n}")
    os.replace(run_dir, dest)
    return dest


def _write_run_config(run: Run, study: Path, cfg: StudyConfig, argv: list, inputs: Optional[dict],
                      launched_by: str) -> None:
    _atomic_write_json(_run_dir(study, run.run_id) / RUN_CONFIG, {
        "run_id": run.run_id,
        "kind": run.kind,
        "info": run.info,
        "defining": run.defining(cfg.nproc),
        "deps": list(run.deps),
        "hash": run.hash,
        "argv": argv,
        "inputs": inputs or {},
        "launched_by": launched_by,
        "lskd_version": __version__,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })


# ------------------------------------------------------------------------------------------------
# launching
# ------------------------------------------------------------------------------------------------
class SubprocessLauncher:
    """Starts one run as a child process (its own process group, output to ``log_path``).

    Subclass and override :meth:`start` to dispatch elsewhere (tests count launches this way);
    the returned object needs ``poll()``, ``wait()`` and ``returncode`` like ``subprocess.Popen``.
    """

    def start(self, argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Optional[Path] = None):
        log = open(log_path, "ab")
        try:
            return subprocess.Popen(list(argv), env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True)
        finally:
            log.close()  # the child holds its own descriptor

    @staticmethod
    def stop(handle) -> None:
        """Terminate a started run and its children (its process group), then reap it."""
        try:
            os.killpg(handle.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError, AttributeError):
            try:
                handle.terminate()
            except Exception:
                pass
        try:
            handle.wait(timeout=20)
        except Exception:
            try:
                os.killpg(handle.pid, signal.SIGKILL)
            except Exception:
                pass


def _child_env(cfg: StudyConfig) -> dict:
    env = dict(os.environ)
    root = _plugin_root()
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if cfg.jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        # Share the cores between concurrent runs instead of oversubscribing them.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cfg.jobs))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _append_jsonl(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj, sort_keys=True) + "\n")


def _epoch_progress(run_dir: Path) -> Optional[int]:
    """Epochs finished so far by a running trainer (lines of its metrics.jsonl with an "epoch")."""
    try:
        with open(run_dir / "metrics.jsonl", encoding="utf-8") as fh:
            return sum(1 for line in fh if '"epoch"' in line and '"event"' not in line)
    except OSError:
        return None


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _finish_run(run: Run, study: Path, rc: int, wall: float) -> Optional[str]:
    """Check a finished process's outputs; write result.json for programs that do not. Returns an
    error message, or None when the run is done."""
    run_dir = _run_dir(study, run.run_id)
    if rc != 0:
        return f"exit status {rc}"
    if run.self_reporting:
        try:
            result = _read_json(run_dir / RESULT)
        except _BadJson as exc:
            return str(exc)
        if result is None or result.get("status") != "done":
            return f"{RESULT} missing or not done after a zero exit status"
        missing = _outputs_ok(run, run_dir)
        return missing
    missing = _outputs_ok(run, run_dir)
    if missing:
        return missing
    result = {"status": "done", "run_id": run.run_id, "kind": run.kind, "wall_time_s": round(wall, 3),
              "outputs": list(run.outputs), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if run.kind == "generate":
        from lskd_core.report import parse_bleu  # report owns the parsing of fairseq-generate output

        bleu = parse_bleu(run_dir / "generate-test.txt")
        if bleu is None:
            return "no BLEU score found in generate-test.txt"
        result.update(bleu)
    _atomic_write_json(run_dir / RESULT, result)
    return None


# ------------------------------------------------------------------------------------------------
# the study
# ------------------------------------------------------------------------------------------------
@dataclass
class StudyOutcome:
    study_dir: Path
    report_dir: Optional[Path]
    launched: list  # run ids started by this invocation
    skipped: list  # run ids found done
    failed: dict  # run id -> reason
    blocked: list  # run ids not run because a dependency failed
    problems: list  # corrupt / stale dirs found, with where they were moved
    wall_time_s: float

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


def _log_event(study: Path, event: str, **kw: Any) -> dict:
    obj = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "event": event, **kw}
    _append_jsonl(study / EVENT_LOG, obj)
    return obj


def _write_manifest(study: Path, cfg: StudyConfig, plan: Sequence[Run]) -> None:
    _atomic_write_json(study / MANIFEST, {
        "lskd_version": __version__,
        "config": cfg.to_dict(),
        "runs": [{"run_id": r.run_id, "kind": r.kind, "deps": r.deps, "info": r.info, "hash": r.hash,
                  "dir": f"runs/{r.run_id}"} for r in plan],
    })


def run_study(cfg: StudyConfig, study_dir: os.PathLike | str, launcher: Optional[SubprocessLauncher] = None,
              report: bool = True, report_only: bool = False, progress: bool = True,
              echo: Optional[Callable[[str], None]] = None) -> StudyOutcome:
    """Run (or resume) every run of the plan that is not already done, then write the report.

    ``report_only``: launch nothing; classify the run dirs leniently (runs dispatched by an external
    scheduler are accepted) and write the report from whatever is finished.
    """
    t0 = time.time()
    study = Path(study_dir).resolve()
    study.mkdir(parents=True, exist_ok=True)
    launcher = launcher or SubprocessLauncher()
    plan = build_plan(cfg)
    by_id = {r.run_id: r for r in plan}
    _write_manifest(study, cfg, plan)
    launched: list = []
    skipped: list = []
    failed: dict = {}
    blocked: list = []
    problems: list = []
    done: set = set()

    def deps_fp(run: Run) -> dict:
        return {d: _fingerprint(_run_dir(study, d)) for d in run.deps}

    if report_only:
        for run in plan:
            state = inspect_run(run, study, deps_fp(run), strict=False)
            if state.status == "done":
                done.add(run.run_id)
                skipped.append(run.run_id)
            else:
                reason = state.reason or state.status
                if state.status in ("corrupt", "stale"):
                    problems.append(_log_event(study, state.status, run_id=run.run_id, reason=reason,
                                               action="not used (report-only)"))
                failed[run.run_id] = f"not done: {reason}"
        report_dir = _maybe_report(study, report, problems, t0, done)
        return StudyOutcome(study, report_dir, launched, skipped, failed, blocked, problems, time.time() - t0)

    env = _child_env(cfg)
    pending = list(plan)
    running: dict = {}  # run_id -> (handle, start time, resume flag)
    bar = _progress_bar(len(plan), progress)
    if echo is None:  # messages above the progress bar, not through it
        echo = bar.write if progress else (lambda msg: print(msg, file=sys.stderr))
    interrupted = False
    prev_handlers = _install_signal_handlers()
    try:
        while pending or running:
            # start every ready run, up to cfg.jobs at a time
            progressed = False
            for run in list(pending):
                if len(running) >= cfg.jobs:
                    break
                if any(d in failed or d in blocked for d in run.deps):
                    pending.remove(run)
                    blocked.append(run.run_id)
                    _log_event(study, "blocked", run_id=run.run_id, deps=run.deps)
                    bar.update(1)
                    progressed = True
                    continue
                if not all(d in done for d in run.deps):
                    continue
                pending.remove(run)
                progressed = True
                state = inspect_run(run, study, deps_fp(run))
                if state.status == "done":
                    done.add(run.run_id)
                    skipped.append(run.run_id)
                    bar.update(1)
                    continue
                run_dir = _run_dir(study, run.run_id)
                if state.status in ("corrupt", "stale"):
                    moved = _move_aside(run_dir, state.status)
                    ev = _log_event(study, state.status, run_id=run.run_id, reason=state.reason,
                                    action=f"moved to {moved.name} and re-run")
                    problems.append(ev)
                    echo(f"[study] {run.run_id}: {state.status} ({state.reason}); moved to {moved} and re-running")
                resume = state.status == "resume"
                argv = run_command(run, study, cfg, resume=resume)
                run_dir.mkdir(parents=True, exist_ok=True)
                if not resume and (run_dir / RESULT).exists():
                    os.replace(run_dir / RESULT, run_dir / (RESULT + ".previous"))
                _write_run_config(run, study, cfg, argv, deps_fp(run), launched_by="study")
                log_path = run_dir / "stdout.log"
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(f"\n# {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(argv)}\n")
                _append_jsonl(study / LAUNCH_LOG, {"time": time.time(), "run_id": run.run_id, "resume": resume,
                                                   "argv": argv})
                handle = launcher.start(argv, env, log_path)
                running[run.run_id] = (handle, time.time(), resume)
                launched.append(run.run_id)
            # reap finished runs
            for run_id, (handle, started, resume) in list(running.items()):
                rc = handle.poll()
                if rc is None:
                    continue
                del running[run_id]
                progressed = True
                err = _finish_run(by_id[run_id], study, rc, time.time() - started)
                bar.update(1)
                if err is None:
                    done.add(run_id)
                    _log_event(study, "done", run_id=run_id, wall_time_s=round(time.time() - started, 2),
                               resumed=resume)
                else:
                    failed[run_id] = err
                    log_path = _run_dir(study, run_id) / "stdout.log"
                    _log_event(study, "failed", run_id=run_id, reason=err, log=str(log_path))
                    echo(f"[study] {run_id} failed ({err}); last lines of {log_path}:\n{_tail(log_path)}")
            _set_postfix(bar, running, study, by_id, cfg)
            if not progressed:
                time.sleep(0.2)
    except KeyboardInterrupt:
        interrupted = True
        for run_id, (handle, _, _) in running.items():
            launcher.stop(handle)
            _log_event(study, "interrupted", run_id=run_id)
        echo("[study] interrupted: finished runs are kept and unfinished training runs resume from their "
             "last checkpoint on the next invocation")
    finally:
        _restore_signal_handlers(prev_handlers)
        bar.close()
    if interrupted:
        raise KeyboardInterrupt
    report_dir = _maybe_report(study, report, problems, t0, done)
    return StudyOutcome(study, report_dir, launched, skipped, failed, blocked, problems, time.time() - t0)


def _maybe_report(study: Path, report: bool, problems: list, t0: float, done: set) -> Optional[Path]:
    if not report:
        return None
    from lskd_core.report import write_report

    return write_report(study, problems=problems, study_wall_time_s=time.time() - t0, usable=set(done))


class _NoBar:
    @staticmethod
    def write(msg: str) -> None:
        print(msg, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="study", unit="run", dynamic_ncols=True)


def _set_postfix(bar, running: dict, study: Path, by_id: dict, cfg: StudyConfig) -> None:
    parts = []
    for run_id in running:
        run = by_id[run_id]
        ep = _epoch_progress(_run_dir(study, run_id)) if run.self_reporting else None
        total = cfg.teacher_epochs if run.kind == "teacher" else cfg.student_epochs
        parts.append(f"{run_id} ep {ep}/{total}" if ep is not None else run_id)
    bar.set_postfix_str(", ".join(parts), refresh=False)


def _install_signal_handlers():
    # SIGTERM (e.g. from a batch scheduler) behaves like Ctrl-C: stop children, keep checkpoints.
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _restore_signal_handlers(prev) -> None:
    if prev is not None:
        try:
            signal.signal(signal.SIGTERM, prev)
        except ValueError:
            pass


def prepare_for_dispatch(cfg: StudyConfig, study_dir: os.PathLike | str) -> list:
    """Write the manifest and each run's run_config.json (so ``--report-only`` can later verify the
    collected results) and return the commands, in dependency order."""
    study = Path(study_dir).resolve()
    plan = build_plan(cfg)
    study.mkdir(parents=True, exist_ok=True)
    _write_manifest(study, cfg, plan)
    cmds = []
    for run in plan:
        argv = run_command(run, study, cfg)
        run_dir = _run_dir(study, run.run_id)
        state = inspect_run(run, study, {d: _fingerprint(_run_dir(study, d)) for d in run.deps}, strict=False)
        if state.status in ("new", "restart") and not (run_dir / RUN_CONFIG).exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_run_config(run, study, cfg, argv, None, launched_by="external")
        cmds.append(shlex.join(argv))
    return cmds


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lskd_core.study",
        description="Run the label-smoothing x KD-temperature study (teachers per alpha, students per "
                    "alpha x T x seed, analyses) and write a report. Settings: preset < --config file < flags.")
    p.add_argument("--preset", help=f"base settings (default demo); one of: {', '.join(available_presets())}")
    p.add_argument("--config", help="study config file (.json or .toml) with StudyConfig settings")
    p.add_argument("--out", help="study directory (default runs/<preset>)")
    p.add_argument("--print-commands", action="store_true",
                   help="print every run's command (one per line, dependency order) and exit; also writes "
                        "each run dir's run_config.json so --report-only can verify the collected results")
    p.add_argument("--report-only", action="store_true",
                   help="launch nothing: write the report from the run dirs that are finished")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = p.add_argument_group("settings (override the preset and the config file)")
    g.add_argument("--task", choices=["vision", "translation"])
    g.add_argument("--dataset")
    g.add_argument("--data-path")
    g.add_argument("--teacher-model")
    g.add_argument("--student-model")
    g.add_argument("--alphas", type=float, nargs="+")
    g.add_argument("--temperatures", type=float, nargs="+")
    g.add_argument("--seeds", type=int, help="number of student seeds (0..n-1)")
    g.add_argument("--teacher-seed", type=int)
    g.add_argument("--epochs", type=int, help="teacher and student epochs")
    g.add_argument("--teacher-epochs", type=int)
    g.add_argument("--student-epochs", type=int)
    g.add_argument("--batch-size", type=int, help="teacher and student batch size")
    g.add_argument("--lr", type=float, help="teacher and student learning rate")
    g.add_argument("--teacher-lr", type=float)
    g.add_argument("--student-lr", type=float)
    g.add_argument("--train-samples", type=int)
    g.add_argument("--val-samples", type=int)
    g.add_argument("--target-classes", type=int, nargs="+")
    g.add_argument("--projection-classes", type=int, nargs=3)
    g.add_argument("--kd-beta", type=float)
    g.add_argument("--device")
    g.add_argument("--nproc", type=int, help="processes per run (torch.distributed.run when > 1)")
    g.add_argument("--workers", type=int)
    g.add_argument("--jobs", type=int, help="runs executed at the same time (default 1)")
    g.add_argument("--no-analysis", action="store_true", help="train only; skip feature exports and analyses")
    return p


def _overrides(ns: argparse.Namespace) -> dict:
    o = {}
    direct = ["task", "dataset", "data_path", "teacher_model", "student_model", "alphas", "temperatures", "seeds",
              "teacher_seed", "teacher_epochs", "student_epochs", "teacher_lr", "student_lr", "train_samples",
              "val_samples", "target_classes", "projection_classes", "kd_beta", "device", "nproc", "workers",
              "jobs", "out"]
    for k in direct:
        v = getattr(ns, k, None)
        if v is not None:
            o[k] = v
    if ns.epochs is not None:
        o.setdefault("teacher_epochs", ns.epochs)
        o.setdefault("student_epochs", ns.epochs)
    if ns.batch_size is not None:
        o["teacher_batch_size"] = o["student_batch_size"] = ns.batch_size
    if ns.lr is not None:
        o.setdefault("teacher_lr", ns.lr)
        o.setdefault("student_lr", ns.lr)
    if ns.no_analysis:
        o["analysis"] = False
    return o


def main(argv: Optional[Sequence[str]] = None) -> int:
    ns = _parser().parse_args(argv)
    try:
        cfg = load_config(ns.preset, ns.config, _overrides(ns))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    study_dir = Path(cfg.out or os.path.join("runs", cfg.name))
    if ns.print_commands:
        try:
            lines = prepare_for_dispatch(cfg, study_dir)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            for line in lines:
                print(line)
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    try:
        outcome = run_study(cfg, study_dir, report_only=ns.report_only, progress=not ns.no_progress)
    except KeyboardInterrupt:
        print(f"interrupted; re-run the same command to resume ({study_dir})", file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = len(outcome.launched)
    print(f"study '{cfg.name}': {n} run(s) launched, {len(outcome.skipped)} already done, "
          f"{len(outcome.failed)} failed/missing, {len(outcome.blocked)} blocked")
    for run_id, why in outcome.failed.items():
        print(f"  {run_id}: {why}")
    if outcome.report_dir is not None:
        print(f"report: {outcome.report_dir / 'report.md'}")
    print(f"wall time: {outcome.wall_time_s:.1f} s ({outcome.wall_time_s / 60:.1f} min)")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
