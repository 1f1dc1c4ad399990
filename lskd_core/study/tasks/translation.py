"""The translation task: fairseq + ``fairseq_plugin`` (Table 5: BLEU grid; no feature analyses).

Offline corpus -> LS teachers (fairseq's label_smoothed_cross_entropy) -> with ``cache`` one teacher
cache per teacher (``python -m fairseq_plugin.teacher_cache build``) -> ls_kd students
(``--teacher-cache``, or ``--teacher-path`` live) -> ``fairseq-generate`` -> BLEU by :mod:`lskd_core.bleu` (``python -m fairseq_plugin.bleu``'s functions).

Against fairseq_plugin's CLI (issue 4): ``python -m fairseq_plugin.prepare_offline --pair P --out
DIR`` (binarised data in ``DIR/bin``), ``--user-dir <fairseq_plugin>`` (also on teachers and
``fairseq-generate``: importing the plugin allow-lists fairseq checkpoint contents for torch's
weights-only loader, which resuming and decoding need on torch >= 2.6), ``--criterion ls_kd
--teacher-path --kd-temperature --kd-beta``. fairseq-train resumes from ``checkpoint_last.pt`` in
its save dir by itself, so an interrupted run is restarted in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Tuple

from lskd_core.jsonio import num
from lskd_core.study.plan import (
    STUDY_TOKEN,
    Run,
    cache_id,
    paired_teacher_seed,
    plugin_root,
    student_id,
    teacher_run_id,
    teacher_seed_list,
)
from lskd_core.study.tasks.base import TOKEN_ANALYSES, TaskBackend
from lskd_core.study.tasks.translation_exports import add_export_runs

if TYPE_CHECKING:
    from lskd_core.study.config import StudyConfig

__all__ = ["TranslationTask", "PAIRS", "score_bleu", "bleu_id"]

PAIRS = ("en-de", "en-ru")


def bleu_id(model_run_id: str) -> str:
    """Run id of the ``fairseq-generate`` run scoring a trained model."""
    return f"bleu_{model_run_id}"


def _target_lang(pair: str) -> str:
    return pair.split("-")[1]


def score_bleu(generate_output: Path, lang: str, ref: Optional[Path]) -> Tuple[Dict[str, object], Optional[str]]:
    """The one BLEU path: :func:`lskd_core.bleu.score` (what ``python -m fairseq_plugin.bleu``
    prints) on a ``fairseq-generate`` log, in this process. ``bleu`` = detokenised, lower-cased
    sacreBLEU (the grid's score; the IWSLT'14 recipe and ``prepare_offline`` lower-case the data),
    against ``ref`` when given (``prepare_offline``'s ``raw/test.<lang>``), else the detokenised
    ``T-`` lines; ``bleu_tok`` = the tokenised IWSLT-style BLEU4 (Table 5's convention), a secondary
    number. A log or reference that cannot be scored is the run's error, in one line."""
    from lskd_core.bleu import score  # sacreBLEU + sacremoses: imported only by translation studies

    try:
        lines = generate_output.read_text(encoding="utf-8").splitlines()
        refs = ref.read_text(encoding="utf-8").splitlines() if ref is not None and ref.is_file() else None
        got = score(lines, lang, refs, lowercase=True)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return {}, f"BLEU scoring of {generate_output.name} failed: {e}"
    return {"bleu": got["bleu_detok"], "bleu_tok": got["bleu_tok"], "chrf": got.get("chrf"),
            "bleu_sentences": got["sentences"], "sacrebleu_signature": got["sacrebleu_signature"],
            "chrf_signature": got.get("chrf_signature"),
            "bleu_note": "bleu: detokenised lower-cased sacreBLEU (the grid); chrf: sacreBLEU chrF of the same "
                         "text; bleu_tok: tokenised BLEU4 (IWSLT-style)"}, None


def fairseq_plugin_dir() -> str:
    """``--user-dir`` wants the plugin's folder: find it without importing it (importlib's spec)."""
    root = plugin_root()
    if root is not None and (root / "fairseq_plugin").is_dir():
        return str(root / "fairseq_plugin")
    import importlib.util

    spec = importlib.util.find_spec("fairseq_plugin")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the translation task needs fairseq_plugin (pip install 'lskd[fairseq]')")
    return str(list(spec.submodule_search_locations)[0])


def _exec_args(cfg: "StudyConfig") -> List[str]:
    args = ["--num-workers", str(cfg.workers)]
    if cfg.device == "cpu":
        # --data-buffer-size 0: no batch-prefetch thread; short CPU runs can otherwise exit while
        # that daemon thread is inside torch, and the process aborts ("terminate called ...")
        args += ["--cpu", "--data-buffer-size", "0"]
    return args


_PLUGIN = ["--user-dir", "{fairseq_plugin}"]


def _teacher_args(cfg: "StudyConfig", data: str, alpha: float, teacher_seed: int) -> List[str]:
    return ([data] + _PLUGIN + ["--arch", cfg.teacher_arch or cfg.arch, "--criterion", "label_smoothed_cross_entropy",
                                "--label-smoothing", num(alpha), "--max-epoch", str(cfg.teacher_epochs),
                                "--lr", num(cfg.teacher_lr), "--max-tokens", str(cfg.max_tokens),
                                "--seed", str(teacher_seed)]
            + list(cfg.teacher_args) + _exec_args(cfg) + ["--save-dir", "{run}"])


def _cache_args(cfg: "StudyConfig", data: str, t_id: str) -> List[str]:
    """The teacher's outputs on every target token of the training set (eval mode: no epochs)."""
    flag = "--sample" if cfg.cache_topk_mode == "sample" else "--topk"
    kind = ([flag, str(cfg.cache_topk), "--cache-temperatures"] + [num(t) for t in cfg.temperatures]
            if cfg.cache_topk else ["--full"])
    return ["build", data, "--teacher-path", f"{{study}}/runs/{t_id}/checkpoint_best.pt"] + kind + [
        "--dtype", cfg.cache_dtype, "--max-tokens", str(cfg.max_tokens),
        "--device", "cpu" if cfg.device == "cpu" else "cuda", "--out", "{run}/cache"]


def _kd_source(cfg: "StudyConfig", t_id: str) -> List[str]:
    """The student's teacher: its cache (with --kd-topk K for a top-K cache, and --kd-topk-mode sample
    for a sampled one) or the live checkpoint (drawing K tokens each step in sample mode)."""
    sample = ["--kd-topk", str(cfg.cache_topk), "--kd-topk-mode", "sample"] if cfg.cache_topk_mode == "sample" else []
    if not cfg.cache:
        return ["--teacher-path", f"{{study}}/runs/{t_id}/checkpoint_best.pt"] + sample
    topk = sample or (["--kd-topk", str(cfg.cache_topk)] if cfg.cache_topk else [])
    return ["--teacher-cache", f"{{study}}/runs/{cache_id(t_id)}/cache"] + topk


def _student_args(cfg: "StudyConfig", data: str, t_id: str, temperature: float, seed: int) -> List[str]:
    return ([data] + _PLUGIN + ["--arch", cfg.student_arch or cfg.arch, "--criterion", "ls_kd"] + _kd_source(cfg, t_id)
            + ["--kd-temperature", num(temperature), "--kd-beta", num(cfg.kd_beta),
               "--label-smoothing", "0", "--max-epoch", str(cfg.student_epochs),
               "--lr", num(cfg.student_lr), "--max-tokens", str(cfg.max_tokens),
               "--seed", str(seed)]
            + list(cfg.student_args) + _exec_args(cfg) + ["--save-dir", "{run}"])


def _generate_args(cfg: "StudyConfig", data: str, model_run: str) -> List[str]:
    # tokenised IWSLT-style BLEU4 on the test split
    return ([data] + _PLUGIN + ["--path", f"{{study}}/runs/{model_run}/checkpoint_best.pt", "--beam", str(cfg.beam),
                                "--remove-bpe", "--gen-subset", "test", "--batch-size", "64",
                                # fairseq 0.12 drops a last batch smaller than this multiple (issue #5036)
                                "--required-batch-size-multiple", "1"]
            + list(cfg.generate_args) + _exec_args(cfg) + ["--results-path", "{run}"])


class TranslationTask(TaskBackend):
    name = "translation"
    settings = ("pair", "data_dir", "arch", "teacher_arch", "student_arch", "max_tokens", "beam", "generate_args",
                "prepare_args")
    score_key = "bleu"
    second_score_key = "chrf"  # the grid shows BLEU / chrF per cell
    teacher_fields = {"bleu": "bleu", "chrf": "chrf"}
    teacher_main_field = "bleu"
    grid_metric = "bleu"
    grid_title = "## 1. BLEU grid (Table 5)\n"
    grid_caption = "Test BLEU / chrF (detokenised sacreBLEU)"
    axis_label = "test BLEU"
    score_unit = "BLEU"
    analyses = frozenset(TOKEN_ANALYSES)  # teacher entropy per T and eta on decoder states (report)
    rule_of_thumb = False
    cache_rows_per_epoch = False  # one row per target token, read again every epoch

    def validate(self, cfg: "StudyConfig") -> None:
        if cfg.pair not in PAIRS:
            raise ValueError(f"pair must be en-de or en-ru, got {cfg.pair!r}")
        if cfg.matched_temperatures:
            raise ValueError("matched_temperatures (App. H's entropy-matched students) applies to the vision task "
                             "only: translation teachers export no logits to match; set matched_temperatures = []")

    def build_runs(self, cfg: "StudyConfig") -> List[Run]:
        runs: List[Run] = []
        deps_data: List[str] = []
        if cfg.data_dir:
            data = str(cfg.data_dir)
        else:
            prep = f"prepare_{cfg.pair}"
            runs.append(Run(prep, "prepare", ("module", "fairseq_plugin.prepare_offline"),
                            ["--pair", cfg.pair, "--out", "{run}/data"] + list(cfg.prepare_args),
                            info={"pair": cfg.pair}, outputs=["data/prepare.json"], resume_flag=None))
            deps_data = [prep]
            data = f"{{study}}/runs/{prep}/data/bin"
        train = ("exe", "fairseq-train")
        for alpha in cfg.alphas:
            for tseed in teacher_seed_list(cfg):
                runs.append(Run(teacher_run_id(cfg, alpha, tseed), "teacher", train,
                                _teacher_args(cfg, data, alpha, tseed), deps=list(deps_data),
                                info={"alpha": alpha, "seed": tseed, "teacher_seed": tseed},
                                outputs=["checkpoint_best.pt"], resume_flag=None))
        if cfg.cache:
            for t in [r for r in runs if r.kind == "teacher"]:
                runs.append(Run(cache_id(t.run_id), "cache", ("module", "fairseq_plugin.teacher_cache"),
                                _cache_args(cfg, data, t.run_id), deps=list(deps_data) + [t.run_id],
                                info=dict(alpha=t.info["alpha"], teacher_seed=t.info["teacher_seed"],
                                          teacher_run=t.run_id),
                                outputs=["cache/header.json"], resume_flag=None))
        for alpha in cfg.alphas:
            for temperature in cfg.temperatures:
                for seed in cfg.seed_list:
                    tseed = paired_teacher_seed(cfg, seed)
                    t_id = teacher_run_id(cfg, alpha, tseed)
                    runs.append(Run(student_id(alpha, temperature, seed), "student", train,
                                    _student_args(cfg, data, t_id, temperature, seed),
                                    deps=list(deps_data) + [cache_id(t_id) if cfg.cache else t_id],
                                    info={"alpha": alpha, "temperature": temperature, "seed": seed,
                                          "teacher_seed": tseed, "teacher_run": t_id, "cached": cfg.cache},
                                    outputs=["checkpoint_best.pt"], resume_flag=None))
        # BLEU of every trained model (teachers too: the grid's teacher row), scored by
        # lskd_core.bleu against prepare_offline's detokenised references when the study made the data
        ref = f"{{study}}/runs/{deps_data[0]}/data/raw/test.{_target_lang(cfg.pair)}" if deps_data else None
        for r in [r for r in runs if r.kind in ("teacher", "student")]:
            runs.append(Run(bleu_id(r.run_id), "generate", ("exe", "fairseq-generate"),
                            _generate_args(cfg, data, r.run_id), deps=list(deps_data) + [r.run_id],
                            info=dict(r.info, model_run=r.run_id, role=r.kind, pair=cfg.pair, bleu_ref=ref),
                            outputs=["generate-test.txt"], resume_flag=None))
        add_export_runs(cfg, runs)  # the report's token-level analyses (translation_exports.py)
        return runs

    def placeholders(self, args: List[str]) -> Dict[str, str]:
        if any("{fairseq_plugin}" in a for a in args):
            return {"{fairseq_plugin}": fairseq_plugin_dir()}
        return {}

    def complete_result(self, run: Run, run_dir: Path) -> Tuple[Dict[str, object], Optional[str]]:
        if run.kind != "generate":
            return super().complete_result(run, run_dir)
        ref = run.info.get("bleu_ref")
        ref_path = Path(str(ref).replace(STUDY_TOKEN, str(run_dir.parent.parent))) if ref else None
        return score_bleu(run_dir / "generate-test.txt", _target_lang(str(run.info.get("pair", "en-de"))), ref_path)

    def metric_run(self, model_run_id: str) -> str:
        return bleu_id(model_run_id)

    def setup_line(self, cfg: Mapping) -> str:
        return (f"Task: translation {cfg.get('pair')} (fairseq), arch `{cfg.get('teacher_arch') or cfg.get('arch')}` "
                f"teacher -> `{cfg.get('student_arch') or cfg.get('arch')}` student")

    def not_applicable_note(self) -> str:
        return ("## Analyses of the vision task only\n\nProjections (Fig. 1), soft outputs (Fig. 2) and "
                "class-wise accuracy (App. I) are computed for the vision task only; the teacher entropy and the "
                "diffusion index are computed per target token (sections below).\n")
