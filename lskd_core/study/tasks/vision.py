"""The vision task: image classification with ``vision_plugin`` (Table 2 and the feature analyses).

Runs: ``teacher_seeds`` teachers per alpha (``python -m vision_plugin.train --label-smoothing
alpha``), with ``cache`` one teacher cache per teacher (``python -m vision_plugin.teacher_cache
build``), a KD student per (alpha, T, seed) reading the cache (or running its teacher live), feature
exports (``python -m vision_plugin.export_features``) for the report's analyses and, with
``matched_temperatures``, App. H's entropy matching (``python -m lskd_core.study.match``) and the
entropy-matched students. Commands are built
as text; the core never imports the plugin.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, List, Mapping, Optional, Sequence, Tuple

from lskd_core.fashion_mnist import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES, fashion_mnist_dir
from lskd_core.jsonio import num
from lskd_core.study.plan import (
    Run,
    arm_setting,
    cache_id,
    eta_reference_id,
    export_id,
    match_id,
    matched_id,
    matched_key,
    paired_teacher_seed,
    student_id,
    teacher_run_id,
    teacher_seed_list,
    variant_student_id,
)
from lskd_core.study.tasks.base import ALL_ANALYSES, TaskBackend

if TYPE_CHECKING:
    from lskd_core.study.config import StudyConfig

__all__ = ["VisionTask", "DATASETS", "DEFAULT_FASHION_MNIST_DIR", "default_fashion_mnist_dir",
           "FASHION_MNIST_CLASSES"]

DATASETS = ("fashion-mnist", "imagefolder", "cub")


def default_fashion_mnist_dir() -> str:
    """``$LSKD_FASHION_MNIST_DIR``, else the Debian package's location (the vision plugin's rule)."""
    return str(fashion_mnist_dir())


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
    if role != "teacher" and not cfg.eval_each_epoch:
        # the report reads a student's final accuracy only (teachers keep their curves: there are
        # few of them, and the advisor reuses them with its own per-epoch students)
        args += ["--eval-every", "0"]
    return args


def _exec_args(cfg: "StudyConfig") -> List[str]:
    # --no-progress: the run's output goes to its log file, where tqdm redraws are noise
    return ["--device", cfg.device, "--workers", str(cfg.workers), "--no-progress"]


# Trainer flags that change the training views: the cache builder must record the same views.
_TRANSFORM_FLAGS = {"--crop-size": 1, "--val-resize-size": 1, "--extra-augment": 0, "--skip-bad-images": 0}


def _transform_args(args: List[str]) -> List[str]:
    out: List[str] = []
    for i, a in enumerate(args):
        if a in _TRANSFORM_FLAGS:
            out += args[i:i + 1 + _TRANSFORM_FLAGS[a]]
    return out


def _teacher_runs(cfg: "StudyConfig") -> List[Run]:
    train = ("module", "vision_plugin.train")
    runs = []
    for alpha in cfg.alphas:
        for tseed in teacher_seed_list(cfg):
            args = (["--model", cfg.teacher_model] + _train_common(cfg, "teacher")
                    + ["--label-smoothing", num(alpha), "--seed", str(tseed)]
                    + list(cfg.teacher_args) + _exec_args(cfg) + ["--output-dir", "{run}"])
            runs.append(Run(teacher_run_id(cfg, alpha, tseed), "teacher", train, args,
                            info={"alpha": alpha, "seed": tseed, "teacher_seed": tseed},
                            outputs=["checkpoint.pth"], self_reporting=True, distributed=True))
    return runs


def _cache_run(cfg: "StudyConfig", t_id: str, info: dict) -> Run:
    """One teacher pass over every (epoch, sample) view the students will see (issue 10)."""
    args = ["--dataset", cfg.dataset]
    if cfg.data_path:
        args += ["--data-path", str(cfg.data_path)]
    if cfg.train_samples:
        args += ["--train-samples", str(cfg.train_samples), "--subset-seed", str(cfg.data_seed)]
    args += _transform_args(list(cfg.student_args))
    args += ["--batch-size", str(cfg.student_batch_size), "--teacher", cfg.teacher_model,
             "--teacher-ckpt", f"{{study}}/runs/{t_id}/checkpoint.pth",
             "--epochs", str(cfg.student_epochs), "--seed", str(cfg.cache_aug_seed), "--dtype", cfg.cache_dtype]
    if cfg.cache_topk:
        args += ["--topk", str(cfg.cache_topk), "--cache-temperatures"] + [num(t) for t in cfg.temperatures]
    args += _exec_args(cfg) + ["--out", "{run}/cache"]
    return Run(cache_id(t_id), "cache", ("module", "vision_plugin.teacher_cache"), ["build"] + args, deps=[t_id],
               info=dict(info, teacher_run=t_id, epochs=cfg.student_epochs, aug_seed=cfg.cache_aug_seed),
               outputs=["cache/header.json"], resume_flag=None)


def _kd_source(cfg: "StudyConfig", t_id: str, cached: bool) -> Tuple[List[str], str]:
    """The KD teacher flags of a student and the run it depends on: the cache or the teacher."""
    if cached:
        return ["--teacher-cache", f"{{study}}/runs/{cache_id(t_id)}/cache"], cache_id(t_id)
    return ["--teacher", cfg.teacher_model, "--teacher-ckpt", f"{{study}}/runs/{t_id}/checkpoint.pth"], t_id


def _feature_kd_args(cfg: "StudyConfig") -> List[str]:
    """``--feature-kd`` flags of a student (Table B.5); such a student runs its teacher live."""
    if not cfg.feature_kd:
        return []
    weight = ["--feature-kd-weight", num(cfg.feature_kd_weight)] if cfg.feature_kd_weight is not None else []
    return ["--feature-kd", cfg.feature_kd] + weight


def _uses_cache(cfg: "StudyConfig") -> bool:
    """Students read a teacher cache: ``cache`` and no feature KD (the cache stores logits only,
    feature KD needs the teacher's feature maps of every batch, so its students run the teacher live)."""
    return bool(cfg.cache) and not cfg.feature_kd


def _variant_flags(kd_variant: str, standardize: bool) -> List[str]:
    """Trainer flags of a temperature variant; none for the standard one (its runs keep their hashes)."""
    return ((["--kd-variant", kd_variant] if kd_variant != "standard" else [])
            + (["--logit-standardization"] if standardize else []))


def _student_run(cfg: "StudyConfig", run_id: str, t_id: str, seed: int, temperature_args: List[str],
                 cached: bool, info: dict, extra_deps: Sequence[str] = (),
                 variant: Optional[Tuple[str, bool]] = None) -> Run:
    kd, dep = _kd_source(cfg, t_id, cached)
    kd_variant, standardize = variant if variant is not None else (cfg.kd_variant, cfg.logit_standardization)
    args = (["--model", cfg.student_model] + _train_common(cfg, "student")
            + ["--label-smoothing", "0", "--seed", str(seed)] + kd
            + temperature_args + ["--kd-beta", num(cfg.kd_beta)] + _feature_kd_args(cfg)
            + _variant_flags(kd_variant, standardize)
            + list(cfg.student_args) + _exec_args(cfg) + ["--output-dir", "{run}"])
    return Run(run_id, "student", ("module", "vision_plugin.train"), args, deps=[dep] + list(extra_deps),
               info=dict(info, seed=seed, teacher_run=t_id, cached=cached), outputs=["checkpoint.pth"],
               self_reporting=True, distributed=True)


def _training_runs(cfg: "StudyConfig") -> List[Run]:
    """Teachers (alpha x teacher seed), their caches, then the students (alpha x T x seed); the
    i-th student seed distils from the (i mod teacher_seeds)-th teacher of its alpha."""
    runs = _teacher_runs(cfg)
    if _uses_cache(cfg):
        runs += [_cache_run(cfg, r.run_id, {"alpha": r.info["alpha"], "teacher_seed": r.info["teacher_seed"]})
                 for r in list(runs)]
    for alpha in cfg.alphas:
        for temperature in cfg.temperatures:
            for seed in cfg.seed_list:
                tseed = paired_teacher_seed(cfg, seed)
                runs.append(_student_run(cfg, student_id(alpha, temperature, seed), teacher_run_id(cfg, alpha, tseed),
                                         seed, ["--kd-temperature", num(temperature)], _uses_cache(cfg),
                                         {"alpha": alpha, "temperature": temperature, "teacher_seed": tseed}))
    runs += _arm_runs(cfg)
    return runs


def _arm_seeds(cfg: "StudyConfig") -> List[int]:
    """The variant arms' student seeds: the grid's first ``variant_seeds`` (all by default), so each
    arm student pairs with the grid student of the same seed."""
    return list(cfg.seed_list[:cfg.variant_seeds] if cfg.variant_seeds else cfg.seed_list)


def _arm_runs(cfg: "StudyConfig") -> List[Run]:
    """``variant_arms``: per arm, a student per (alpha, T, seed) like the grid's, with the arm's KD variant."""
    runs = []
    for arm in cfg.variant_arms:
        for alpha in cfg.alphas:
            for temperature in cfg.temperatures:
                for seed in _arm_seeds(cfg):
                    tseed = paired_teacher_seed(cfg, seed)
                    info = {"alpha": alpha, "temperature": temperature, "teacher_seed": tseed, "arm": arm}
                    runs.append(_student_run(cfg, variant_student_id(alpha, temperature, seed, arm),
                                             teacher_run_id(cfg, alpha, tseed), seed,
                                             ["--kd-temperature", num(temperature)], cfg.cache, info,
                                             variant=arm_setting(arm)))
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
    """Feature exports: every teacher (train with logits: entropy, Fig. 2, App. H matching; val:
    Fig. 1) and, with ``analysis``, every seed's students (train + val: eta over seeds; the analysis
    seed's also Fig. 1, Table I). Without ``analysis`` only the teachers' train exports that the
    entropy matching reads."""
    exporter = ("module", "vision_plugin.export_features")
    models = [(teacher_run_id(cfg, a, k), cfg.teacher_model, {"role": "teacher", "alpha": a, "teacher_seed": k})
              for a in cfg.alphas for k in teacher_seed_list(cfg)]
    if cfg.analysis:
        models += [(student_id(a, t, s), cfg.student_model,
                    {"role": "student", "alpha": a, "temperature": t, "seed": s})
                   for a in cfg.alphas for t in cfg.temperatures for s in cfg.seed_list]
    splits = ("train", "val") if cfg.analysis else ("train",)
    runs = []
    # the variant arms' students: val only (calibration and logit scale; eta is the grid's analysis)
    arm_models = [(variant_student_id(a, t, s, arm), cfg.student_model,
                   {"role": "student", "alpha": a, "temperature": t, "seed": s, "arm": arm})
                  for arm in cfg.variant_arms for a in cfg.alphas for t in cfg.temperatures
                  for s in _arm_seeds(cfg)] if cfg.analysis else []
    for model_run, model, info in models + arm_models:
        for split in (("val",) if "arm" in info else splits):
            args = _export_args(cfg, model_run, model, split, str(info["role"]))
            runs.append(Run(export_id(model_run, split), "export", exporter, args, deps=[model_run],
                            info=dict(info, model_run=model_run, split=split), outputs=["features.npz"],
                            resume_flag=None))
    return runs


def _matched_runs(cfg: "StudyConfig") -> List[Run]:
    """App. H: per teacher seed, one ``match`` run finds the plain teacher's T' whose mean entropy
    on the training exports equals each LS teacher's at each of ``matched_temperatures``; the
    ``matched`` students (seeds as the grid) read T' from its matched.json when they start."""
    plain = 0.0
    ls_alphas = [a for a in cfg.alphas if a != plain]
    runs: List[Run] = []
    for tseed in teacher_seed_list(cfg):
        m_id = match_id(tseed if cfg.teacher_seeds > 1 else None)
        plain_export = export_id(teacher_run_id(cfg, plain, tseed), "train")
        args = ["--plain", f"{{study}}/runs/{plain_export}/features.npz"]
        deps = [plain_export]
        for a in ls_alphas:
            ls_export = export_id(teacher_run_id(cfg, a, tseed), "train")
            args += ["--ls", num(a), f"{{study}}/runs/{ls_export}/features.npz"]
            deps.append(ls_export)
        args += ["--at"] + [num(t) for t in cfg.matched_temperatures] + ["--out", "{run}/matched.json"]
        runs.append(Run(m_id, "match", ("module", "lskd_core.study.match"), args, deps=deps,
                        info={"teacher_seed": tseed, "plain_alpha": plain, "ls_alphas": ls_alphas},
                        outputs=["matched.json"], resume_flag=None))
    # a top-K cache serves only the temperatures it was built for; T' is known only at run time
    cached = _uses_cache(cfg) and not cfg.cache_topk
    for a in ls_alphas:
        for t in cfg.matched_temperatures:
            for seed in cfg.seed_list:
                tseed = paired_teacher_seed(cfg, seed)
                m_id = match_id(tseed if cfg.teacher_seeds > 1 else None)
                key = matched_key(a, t)
                temp = ["--kd-temperature-file", f"{{study}}/runs/{m_id}/matched.json", "--kd-temperature-key", key]
                info = {"alpha": plain, "matched_to_alpha": a, "matched_to_temperature": t, "matched_key": key,
                        "match_run": m_id, "teacher_seed": tseed}
                runs.append(_student_run(cfg, matched_id(plain, a, t, seed), teacher_run_id(cfg, plain, tseed), seed,
                                         temp, cached, info, extra_deps=[m_id]))
    return runs


def _eta_set_flags(cfg: "StudyConfig") -> List[str]:
    """The trainer's class sets for eta during training: the report's (hierarchy, sizes, targets);
    on another dataset with the default hierarchy the trainer's own default (feature-space sets)."""
    flags: List[str] = []
    if cfg.target_classes:
        flags += ["--eta-targets"] + [str(c) for c in cfg.target_classes]
    if cfg.dataset == "fashion-mnist" or cfg.hierarchy != "fashion-mnist":
        flags += ["--eta-hierarchy", cfg.hierarchy, "--eta-num-similar", str(cfg.num_similar),
                  "--eta-num-dissimilar", str(cfg.num_dissimilar)]
    return flags


def _in_dependency_order(runs: List[Run]) -> List[Run]:
    """Stable topological order: each run as early as in ``runs`` unless a dependency comes later."""
    done: set = set()
    out: List[Run] = []
    pending = list(runs)
    while pending:
        rest = []
        for r in pending:
            if all(d in done for d in r.deps):
                out.append(r)
                done.add(r.run_id)
            else:
                rest.append(r)
        if len(rest) == len(pending):
            raise AssertionError(f"runs {[r.run_id for r in rest][:3]} depend on runs that are not planned")
        pending = rest
    return out


def _with_eta_references(cfg: "StudyConfig", runs: List[Run]) -> List[Run]:
    """``eta_during_training``: each T > T_min student of an (alpha, seed) logs eta against the T_min
    student's val export (``--eta-reference``) and so depends on that export (planned if the
    analyses did not plan it)."""
    t_min = min(cfg.temperatures)
    ids = {r.run_id for r in runs}
    # the reference must hold the student's own val samples: the analysis export does unless
    # analysis_val_samples caps it otherwise
    same = not cfg.analysis_val_samples or cfg.analysis_val_samples == cfg.val_samples
    extra: List[Run] = []
    for alpha in cfg.alphas:
        for seed in cfg.seed_list:
            ref_model = student_id(alpha, t_min, seed)
            ref = export_id(ref_model, "val") if same else eta_reference_id(ref_model)
            if ref not in ids:
                own = dataclasses.replace(cfg, analysis_val_samples=None)
                args = _export_args(own, ref_model, cfg.student_model, "val", "student")
                extra.append(Run(ref, "export", ("module", "vision_plugin.export_features"), args, deps=[ref_model],
                                 info={"role": "eta_reference", "alpha": alpha, "temperature": t_min,
                                       "seed": seed, "model_run": ref_model, "split": "val"},
                                 outputs=["features.npz"], resume_flag=None))
            for t in cfg.temperatures:
                if t == t_min:
                    continue
                run = next(r for r in runs if r.run_id == student_id(alpha, t, seed))
                at = run.args.index("--output-dir")
                run.args[at:at] = (["--eta-reference", f"{{study}}/runs/{ref}/features.npz"] + _eta_set_flags(cfg))
                run.deps.append(ref)
                run.info["eta_reference"] = ref
    return _in_dependency_order(runs + extra)


class VisionTask(TaskBackend):
    name = "vision"
    settings = ("dataset", "data_path", "train_samples", "val_samples", "teacher_model", "student_model",
                "teacher_batch_size", "student_batch_size", "export_args", "feature_kd", "feature_kd_weight")
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
        if cfg.cache_topk_mode != "top":
            raise ValueError("cache_topk_mode = 'sample' (sampled-K KD) is for translation vocabularies; a vision "
                             "study uses full or top-K caches: set cache_topk_mode = 'top'")

    def num_classes(self, cfg: "StudyConfig") -> Optional[int]:
        from lskd_core.study.tasks.vision_checks import dataset_class_count

        return dataset_class_count(cfg)

    def model_problem(self, cfg: "StudyConfig") -> Optional[str]:
        from lskd_core.study.tasks.vision_checks import model_name_problem

        return model_name_problem(cfg)

    def build_runs(self, cfg: "StudyConfig") -> List[Run]:
        """Teachers (one per alpha), students (alpha x T x seed), then feature exports for the analyses."""
        runs = _training_runs(cfg)
        if cfg.analysis or cfg.matched_temperatures:
            runs += _export_runs(cfg)
        if cfg.matched_temperatures:
            runs += _matched_runs(cfg)
        if cfg.eta_during_training:
            runs = _with_eta_references(cfg, runs)
        return runs

    def setup_line(self, cfg: Mapping) -> str:
        return (f"Task: {cfg.get('dataset')}, teacher `{cfg.get('teacher_model')}` "
                f"({cfg.get('teacher_epochs')} epochs) -> student `{cfg.get('student_model')}` "
                f"({cfg.get('student_epochs')} epochs), train/val samples: "
                f"{cfg.get('train_samples') or 'all'} / {cfg.get('val_samples') or 'all'}")
