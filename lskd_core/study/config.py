"""Study configuration: :class:`StudyConfig`, its validation (group by group), presets and files.

Presets (``lskd_core/presets/*.json``), config files (JSON/TOML) and command-line flags all set
the same fields; later sources override earlier ones. Every field is validated exactly once, in
the group it belongs to; a task's own settings are validated by its backend.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from lskd_core.checks import check_alpha, check_beta, check_temperature
from lskd_core.study.registry import get_task, launcher_class, launcher_spec

__all__ = ["StudyConfig", "load_config", "check_models", "read_config_file", "read_preset", "available_presets", "PRESET_DIR"]

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


#: The variant arms a study can add beside its grid: name -> (kd_variant, logit_standardization, id tag).
#: teacher_only_T: TTM (Zheng & Yang, ICLR 2024); logit_standardization: Sun et al. (CVPR 2024).
VARIANT_ARMS: Dict[str, Tuple[str, bool, str]] = {
    "standard": ("standard", False, "std"),
    "teacher_only_T": ("teacher_only_T", False, "ttm"),
    "logit_standardization": ("standard", True, "lstd"),
    "teacher_only_T+logit_standardization": ("teacher_only_T", True, "ttm_lstd"),
}


def arm_setting(arm: str) -> Tuple[str, bool]:
    """``(kd_variant, logit_standardization)`` of a variant arm's students."""
    variant, standardize, _ = VARIANT_ARMS[arm]
    return variant, standardize


@dataclass
class StudyConfig:
    """Everything that defines a study.

    TOML/JSON tables are flattened with an underscore: ``[teacher] model = "x"`` is ``teacher_model``.
    """

    name: str = "study"
    task: str = "vision"  # a task backend: "vision" (vision_plugin) or "translation" (fairseq + fairseq_plugin)
    out: Optional[str] = None
    # --- data (vision task) ---
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
    teacher_seeds: int = 1  # teachers per alpha (seeds teacher_seed + k); student seed index i -> teacher i mod N
    # --- teacher cache (one teacher pass serves every T and student seed; docs/study.md) ---
    cache: bool = True  # False: every student runs its teacher live
    cache_dtype: str = "float32"  # stored logit dtype: float32 (exact), bfloat16 or float16
    cache_topk: Optional[int] = None  # None or 0: all logits; K: top-K + exact tail mass at the grid's T
    cache_topk_mode: str = "top"  # translation: "sample" = K tokens drawn per token (Anshumann et al., ACL 2025)
    cache_aug_seed: int = 0  # the recorded augmentation stream, shared by every student seed
    # --- temperature variants (vision; docs/study.md "Temperature variants") ---
    kd_variant: str = "standard"  # the grid's KD term: "standard" or "teacher_only_T" (TTM, Zheng & Yang 2024)
    logit_standardization: bool = False  # z-score logits before T (Sun et al., CVPR 2024)
    variant_arms: list = field(default_factory=list)  # extra student grids, e.g. ["teacher_only_T"]
    variant_seeds: Optional[int] = None  # the arms' students use the grid's first N seeds (None: all)
    # --- entropy-matched students (App. H, Tables H.2-H.4) ---
    matched_temperatures: list = field(default_factory=list)  # LS-teacher T whose entropy the plain teacher matches
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
    # every T > T_min student logs eta against its (alpha, seed)'s T_min student after each epoch
    # (vision task; the student then waits for that student's val export): "Diffusion during training"
    eta_during_training: bool = False
    # vision: evaluate students after every epoch (per-epoch val curves in metrics.jsonl); false:
    # only after their last epoch, which is all the report reads (--eval-every 0)
    eval_each_epoch: bool = False
    # --- feature distillation + KD (vision; the paper's Table B.5): "overhaul" (Heo et al. 2019)
    # trains every student with that feature loss added to KD; its students run the teacher live ---
    feature_kd: Optional[str] = None
    feature_kd_weight: Optional[float] = None  # None: the trainer's default (1e-4, Heo et al.'s ImageNet scale)
    # --- translation task ---
    pair: str = "en-de"
    data_dir: Optional[str] = None  # binarised fairseq data; None: prepared offline by the study
    arch: str = "transformer_iwslt_de_en"
    teacher_arch: Optional[str] = None
    student_arch: Optional[str] = None
    max_tokens: int = 4096
    beam: int = 5
    generate_args: list = field(default_factory=list)
    prepare_args: list = field(default_factory=list)  # e.g. ["--max-pairs", "20000"]
    # --- translation analyses (teacher entropy per T, eta on decoder states: an extension; docs/study.md) ---
    translation_export_split: str = "test"  # the binarised split the exports read
    translation_export_sentences: Optional[int] = 500  # seeded subset of that many sentences (0 or null: all)
    translation_eta_classes: int = 50  # eta's classes: the N most frequent target tokens ...
    translation_eta_min_count: int = 20  # ... that occur at least C times in the exported sentences
    # --- execution (not part of any run's hash, except nproc for training) ---
    device: str = "cpu"
    nproc: int = 1
    workers: int = 0
    jobs: int = 1  # independent runs executed at the same time
    python: Optional[str] = None  # interpreter for the runs (default: this one)
    # how runs are started: a name of lskd_core.study.registry.LAUNCHERS, or a [launcher] table
    # with kind = "<name>" and that launcher's settings (the SLURM launcher's resources per run kind)
    launcher: Any = "local"
    # what besides its command defines a run's hash (lskd_core.study.provenance): "code" (lskd's and
    # the frameworks' versions + a digest of the source the run executes) or "version" (versions only:
    # the documented escape hatch to keep results across source edits that the user vouches for)
    provenance: str = "code"

    # ---------------------------------------------------------------- derived values
    @property
    def seed_list(self) -> List[int]:
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
        if not isinstance(self.task, str):
            raise ValueError(f"task must be a task name, got {self.task!r}")
        backend = get_task(self.task)
        _validate_grid(self)
        _validate_training(self)
        _validate_data(self)
        backend.validate(self)
        _validate_analysis(self)
        _validate_teachers_and_cache(self)
        _validate_feature_kd(self)
        _validate_kd_variants(self)
        _validate_execution(self)
        _validate_against_task(self, backend)
        return self


# ------------------------------------------------------------------------------------------------
# validation, one group at a time
# ------------------------------------------------------------------------------------------------
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


def _ints_at_least(cfg: StudyConfig, names: tuple, low: int) -> None:
    for name in names:
        v = _int(getattr(cfg, name), name)
        if v < low:
            raise ValueError(f"{name} must be >= {low}, got {v!r}")
        setattr(cfg, name, v)


def _caps(cfg: StudyConfig, names: tuple) -> None:
    for name in names:
        v = getattr(cfg, name)
        if v is not None:
            v = _int(v, name)
            if v < 0:
                raise ValueError(f"{name} must be >= 0 (0 or null: no cap), got {v!r}")
            # 0 means "no cap": TOML has no null to override a preset's cap with
            setattr(cfg, name, v or None)


def _temperature_list(v: Any, name: str) -> List[float]:
    return [check_temperature(t, name) for t in _as_list(v, name)]


def _validate_seeds(cfg: StudyConfig) -> None:
    if isinstance(cfg.seeds, bool):
        raise ValueError(f"seeds must be a count or a list of integers, got {cfg.seeds!r}")
    if isinstance(cfg.seeds, (list, tuple)):
        seeds = [_int(s, "seeds") for s in cfg.seeds]
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {cfg.seeds!r}")
        cfg.seeds = seeds
    else:
        cfg.seeds = _int(cfg.seeds, "seeds")
        if cfg.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {cfg.seeds!r}")


def _validate_grid(cfg: StudyConfig) -> None:
    """alpha x T x seeds, the teacher's seed, the data subset's seed and the KD weight."""
    cfg.alphas = [check_alpha(a, "alphas") for a in _as_list(cfg.alphas, "alphas")]
    cfg.temperatures = _temperature_list(cfg.temperatures, "temperatures")
    for name in ("alphas", "temperatures"):
        vals = getattr(cfg, name)
        if not vals:
            raise ValueError(f"{name} must not be empty")
        if len(set(vals)) != len(vals):
            raise ValueError(f"{name} has duplicates: {vals}")
        setattr(cfg, name, sorted(vals))
    _validate_seeds(cfg)
    _ints_at_least(cfg, ("teacher_seed", "data_seed"), 0)
    cfg.kd_beta = check_beta(cfg.kd_beta, "kd_beta")


def _validate_data(cfg: StudyConfig) -> None:
    """Sample caps of training and of the feature exports (the dataset itself: the task backend)."""
    _caps(cfg, ("train_samples", "val_samples", "analysis_train_samples", "analysis_val_samples"))


def _validate_training(cfg: StudyConfig) -> None:
    """Epochs, batch sizes, learning rates, the pass-through argument lists, translation sizes."""
    _ints_at_least(cfg, ("teacher_epochs", "student_epochs", "teacher_batch_size", "student_batch_size",
                         "max_tokens", "beam"), 1)
    for name in ("teacher_lr", "student_lr"):
        v = getattr(cfg, name)
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a positive number, got {v!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v!r}")
        setattr(cfg, name, v)
    for name in ("teacher_args", "student_args", "export_args", "generate_args", "prepare_args"):
        v = getattr(cfg, name)
        if isinstance(v, str):
            v = shlex.split(v)
        if not isinstance(v, (list, tuple)) or not all(isinstance(a, (str, int, float)) for a in v):
            raise ValueError(f"{name} must be a list of command-line arguments, got {v!r}")
        setattr(cfg, name, [str(a) for a in v])


def _validate_class_ids(cfg: StudyConfig) -> None:
    cfg.target_classes = [_int(c, "target_classes") for c in _as_list(cfg.target_classes, "target_classes")]
    if any(c < 0 for c in cfg.target_classes) or len(set(cfg.target_classes)) != len(cfg.target_classes):
        raise ValueError(f"target_classes must be distinct non-negative class ids, got {cfg.target_classes}")
    proj = [_int(c, "projection_classes") for c in _as_list(cfg.projection_classes, "projection_classes")]
    if proj and (len(proj) != 3 or len(set(proj)) != 3 or min(proj) < 0):
        raise ValueError(f"projection_classes must be 3 distinct class ids (two similar, one dissimilar), got {proj}")
    cfg.projection_classes = proj
    if cfg.profile_class is not None:
        cfg.profile_class = _int(cfg.profile_class, "profile_class")


def _validate_feature_sets(cfg: StudyConfig) -> None:
    if cfg.feature_sets is None:
        return
    fs = _as_list(cfg.feature_sets, "feature_sets")
    if len(fs) != 2:
        raise ValueError(f"feature_sets must be [closest_pct, farthest_pct], got {cfg.feature_sets!r}")
    try:
        pct = [float(x) for x in fs]
    except (TypeError, ValueError):
        raise ValueError(f"feature_sets must be two percentages, got {cfg.feature_sets!r}") from None
    if not (0 < pct[0] <= 100 and 0 < pct[1] <= 100):
        raise ValueError(f"feature_sets percentages must be in (0, 100], got {pct}")
    cfg.feature_sets = pct


def _validate_analysis(cfg: StudyConfig) -> None:
    """Which classes, temperatures, seed and set sizes the report's analyses use."""
    cfg.profile_temperatures = _temperature_list(cfg.profile_temperatures, "profile_temperatures")
    cfg.entropy_temperatures = _temperature_list(cfg.entropy_temperatures, "entropy_temperatures")
    _validate_class_ids(cfg)
    _ints_at_least(cfg, ("num_similar", "num_dissimilar"), 1)
    _caps(cfg, ("projection_per_class",))
    if cfg.analysis_seed is not None:
        cfg.analysis_seed = _int(cfg.analysis_seed, "analysis_seed")
        if cfg.analysis_seed not in cfg.seed_list:
            raise ValueError(f"analysis_seed {cfg.analysis_seed} is not one of the seeds {cfg.seed_list}")
    _validate_feature_sets(cfg)
    _validate_translation_analyses(cfg)
    _validate_eta_during_training(cfg)
    cfg.eval_each_epoch = _bool(cfg.eval_each_epoch, "eval_each_epoch")


def _validate_translation_analyses(cfg: StudyConfig) -> None:
    """The translation exports' split, sentence cap and eta's token classes."""
    split = cfg.translation_export_split
    if not isinstance(split, str) or not split or not split.replace("_", "").isalnum():
        raise ValueError(f"translation_export_split must be a binarised split name such as \"test\" or "
                         f"\"valid\", got {split!r}")
    _caps(cfg, ("translation_export_sentences",))
    _ints_at_least(cfg, ("translation_eta_min_count",), 1)
    _ints_at_least(cfg, ("translation_eta_classes",), 3)  # feature-space S1/S2 need >= 2 other classes


def _validate_eta_during_training(cfg: StudyConfig) -> None:
    """A T > T_min student's eta reference is the T_min student of its (alpha, seed)."""
    cfg.eta_during_training = _bool(cfg.eta_during_training, "eta_during_training")
    if not cfg.eta_during_training:
        return
    if cfg.task != "vision":
        raise ValueError(f"eta_during_training applies to the vision task only, not {cfg.task!r}; "
                         f"set eta_during_training = false")
    if len(cfg.temperatures) < 2:
        raise ValueError(f"eta_during_training needs at least two temperatures (eta compares each T with the "
                         f"lowest), got {cfg.temperatures}")


_CACHE_DTYPES = ("float32", "bfloat16", "float16")


def _bool(v: Any, name: str) -> bool:
    if isinstance(v, bool):
        return v
    raise ValueError(f"{name} must be true or false, got {v!r}")


def _validate_teachers_and_cache(cfg: StudyConfig) -> None:
    """Teachers per alpha, the teacher cache's settings and the entropy-matched temperatures."""
    _ints_at_least(cfg, ("teacher_seeds",), 1)
    _ints_at_least(cfg, ("cache_aug_seed",), 0)
    cfg.cache = _bool(cfg.cache, "cache")
    if cfg.cache_dtype not in _CACHE_DTYPES:
        raise ValueError(f"cache_dtype must be one of {list(_CACHE_DTYPES)}, got {cfg.cache_dtype!r}")
    _caps(cfg, ("cache_topk",))
    if cfg.cache_topk_mode not in ("top", "sample"):
        raise ValueError(f"cache_topk_mode must be 'top' or 'sample', got {cfg.cache_topk_mode!r}")
    if cfg.cache_topk_mode == "sample" and not cfg.cache_topk:
        raise ValueError("cache_topk_mode = 'sample' draws cache_topk tokens per target token: set cache_topk = K "
                         "(e.g. 64)")
    cfg.matched_temperatures = _temperature_list(cfg.matched_temperatures, "matched_temperatures")
    if len(set(cfg.matched_temperatures)) != len(cfg.matched_temperatures):
        raise ValueError(f"matched_temperatures has duplicates: {cfg.matched_temperatures}")
    cfg.matched_temperatures = sorted(cfg.matched_temperatures)
    if cfg.matched_temperatures:
        if 0.0 not in cfg.alphas or len(cfg.alphas) < 2:
            raise ValueError(f"matched_temperatures needs alpha 0 (the plain teacher) and at least one LS alpha "
                             f"in alphas, got alphas = {cfg.alphas}; or set matched_temperatures = []")


FEATURE_KD_METHODS = ("overhaul",)


def _validate_feature_kd(cfg: StudyConfig) -> None:
    """``feature_kd`` (None, or "none" since TOML has no null) and its weight; vision only."""
    if cfg.feature_kd in (None, "", "none"):
        cfg.feature_kd = None
    elif cfg.feature_kd not in FEATURE_KD_METHODS:
        raise ValueError(f"feature_kd must be one of {list(FEATURE_KD_METHODS)} or \"none\", got {cfg.feature_kd!r}")
    elif cfg.task != "vision":
        raise ValueError(f"feature_kd applies to the vision task only, not {cfg.task!r}; set feature_kd = \"none\"")
    if cfg.feature_kd_weight is None:
        return
    if cfg.feature_kd is None:
        raise ValueError("feature_kd_weight has no effect without feature_kd = \"overhaul\"; set both or neither")
    w = cfg.feature_kd_weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w > 0):
        raise ValueError(f"feature_kd_weight must be a finite number > 0, got {w!r}")
    cfg.feature_kd_weight = float(w)
def _validate_kd_variants(cfg: StudyConfig) -> None:
    """The grid's KD variant and the extra variant arms (vision only; logit standardization needs full logits)."""
    from lskd_core.losses import check_kd_variant  # torch: imported only when a study is validated

    cfg.kd_variant = check_kd_variant(cfg.kd_variant, "kd_variant")
    cfg.logit_standardization = _bool(cfg.logit_standardization, "logit_standardization")
    arms = [str(a) for a in _as_list(cfg.variant_arms, "variant_arms")]
    for a in arms:
        if a not in VARIANT_ARMS:
            raise ValueError(f"variant_arms entries must be among {list(VARIANT_ARMS)}, got {a!r}")
    if len(set(arms)) != len(arms):
        raise ValueError(f"variant_arms has duplicates: {arms}")
    main = (cfg.kd_variant, cfg.logit_standardization)
    if any(arm_setting(a) == main for a in arms):
        raise ValueError(f"variant_arms repeats the grid's own variant (kd_variant = {cfg.kd_variant!r}, "
                         f"logit_standardization = {str(cfg.logit_standardization).lower()}); remove it")
    cfg.variant_arms = arms
    if cfg.variant_seeds is not None:
        n = _int(cfg.variant_seeds, "variant_seeds")
        if not 1 <= n <= len(cfg.seed_list):
            raise ValueError(f"variant_seeds must be between 1 and the number of seeds ({len(cfg.seed_list)}), got {n}")
        cfg.variant_seeds = n
    if cfg.task != "vision" and (arms or main != ("standard", False)):
        raise ValueError(f"kd_variant, logit_standardization and variant_arms apply to the vision task only, not "
                         f"{cfg.task!r}; leave them at their defaults")
    wants_std = cfg.logit_standardization or any(arm_setting(a)[1] for a in arms)
    if wants_std and cfg.cache and cfg.cache_topk:
        raise ValueError("logit standardization needs the teacher's full logits, but cache_topk is set: set "
                         "cache_topk = 0 (full cache) or cache = false")


def _validate_against_task(cfg: StudyConfig, backend: Any) -> None:
    """Settings checked against the dataset and the model registry, before any compute: class ids
    below the class count, sample caps that keep every class, model names the task can build."""
    if cfg.provenance not in ("code", "version"):
        raise ValueError(f"provenance must be \"code\" or \"version\", got {cfg.provenance!r}")
    n = backend.num_classes(cfg)
    if n is None:
        return
    where = f"dataset {cfg.dataset!r} has {n} classes (ids 0..{n - 1})"
    for name in ("target_classes", "projection_classes"):
        bad = [c for c in getattr(cfg, name) if c >= n]
        if bad:
            raise ValueError(f"{name} {bad} out of range: {where}; use ids below {n}")
    if cfg.profile_class is not None and not 0 <= cfg.profile_class < n:
        raise ValueError(f"profile_class {cfg.profile_class} out of range: {where}; use an id below {n}")
    for name in ("train_samples", "val_samples", "analysis_train_samples", "analysis_val_samples"):
        cap = getattr(cfg, name)
        if cap is not None and cap < n:
            raise ValueError(f"{name} = {cap} is below the number of classes ({where}): the stratified subset "
                             f"needs at least one sample per class; use {name} >= {n}, or 0 for all samples")


def check_models(cfg: StudyConfig) -> None:
    """ValueError naming a model setting the task cannot build. Separate from :meth:`StudyConfig.validate`
    because asking the plugin's registry imports the framework (seconds): the CLI calls it once
    before dispatching anything; it says nothing when the plugin is not installed here."""
    problem = get_task(cfg.task).model_problem(cfg)
    if problem:
        raise ValueError(problem)


def _validate_execution(cfg: StudyConfig) -> None:
    """Processes per run, runs at a time, data-loading workers and the launcher."""
    _ints_at_least(cfg, ("nproc", "jobs"), 1)
    _ints_at_least(cfg, ("workers",), 0)
    name, options = launcher_spec(cfg.launcher)
    launcher_class(name).from_options(options)  # the launcher checks its own settings (ValueError)


# ------------------------------------------------------------------------------------------------
# sources: presets, files, overrides
# ------------------------------------------------------------------------------------------------
def _flatten(mapping: Mapping, prefix: str = "") -> dict:
    """Flatten tables: ``[teacher] epochs`` -> ``teacher_epochs``. A table whose name is not a field
    prefix only groups settings (``[grid] alphas`` -> ``alphas``, ``[analysis] target_classes``)."""
    known = {f.name for f in dataclasses.fields(StudyConfig)}
    out = {}
    for k, v in mapping.items():
        k = str(k).replace("-", "_")
        key = f"{prefix}{k}"
        if key == "launcher" and isinstance(v, Mapping):
            out[key] = dict(v)  # the launcher's own settings, nested tables included: not StudyConfig fields
        elif isinstance(v, Mapping):
            out.update(_flatten(v, key + "_"))
        elif key not in known and prefix and k in known:
            out[k] = v
        else:
            out[key] = v
    return out


def _load_toml(text: str, p: Path) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ValueError(f"reading {p} needs Python >= 3.11 (tomllib) or `pip install tomli`; "
                             "or write the config as JSON") from None
    return tomllib.loads(text)


def read_config_file(path: "os.PathLike[str] | str") -> dict:
    """Read a study config (``.json`` or ``.toml``) into a flat dict of StudyConfig fields."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ValueError(f"config file must end in .json or .toml, got {str(p)!r}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"config file {str(p)!r} is not UTF-8 text; save it as UTF-8") from None
    try:
        data = _load_toml(text, p) if suffix == ".toml" else json.loads(text)
    except RecursionError:
        raise ValueError(f"config file {str(p)!r} is nested too deeply to be a study config; "
                         "settings are at most a few tables deep") from None
    except ValueError as exc:
        if "tomllib" in str(exc):
            raise
        raise ValueError(f"config file {str(p)!r} cannot be parsed: {exc}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"config file {str(p)!r} must hold a table/object of settings")
    return _flatten(data)


def available_presets() -> List[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def read_preset(name: str) -> dict:
    path = PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"preset must be one of {available_presets()}, got {name!r}")
    data = _flatten(json.loads(path.read_text(encoding="utf-8")))
    data.pop("description", None)
    return data


def add_set_argument(group: Any) -> None:
    """``--set KEY=VALUE`` on a CLI's argument parser (or group): read by :func:`parse_set_items`."""
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any study setting (docs/study.md), VALUE as in a TOML file (e.g. --set cache=false "
                            "--set matched_temperatures=[1,64]); repeatable; wins over the other flags")


def parse_set_items(items: Optional[List[str]]) -> dict:
    """``--set KEY=VALUE`` items -> settings. VALUE is read as a TOML value (``true``, ``3``,
    ``[1, 2]``, ``"text"``); anything else is taken as a bare string. ``-`` in KEY reads as ``_``.
    Keys and values are checked by :func:`load_config` like a config file's."""
    import tomllib

    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE (e.g. --set cache=false), got {item!r}")
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw
    return out


def load_config(preset: Optional[str] = None, config_file: Optional[str] = None,
                overrides: Optional[Mapping] = None) -> StudyConfig:
    """Preset (default ``demo``, or the file's ``preset`` key) < config file < ``overrides``."""
    file_values = read_config_file(config_file) if config_file else {}
    base = preset or file_values.pop("preset", None) or "demo"
    file_values.pop("preset", None)
    file_values.pop("description", None)
    values = read_preset(base)
    values.update(file_values)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if isinstance(overrides.get("launcher"), str) and isinstance(values.get("launcher"), Mapping):
        # --launcher NAME picks the launcher and keeps the file's [launcher] settings
        overrides["launcher"] = dict(values["launcher"], kind=overrides["launcher"])
    values.update(overrides)
    known = {f.name for f in dataclasses.fields(StudyConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown study setting(s) {unknown}; known settings: {sorted(known)}")
    cfg = StudyConfig(**values)
    if cfg.name == "study":
        cfg.name = base
    return cfg.validate()
