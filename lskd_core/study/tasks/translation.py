"""The translation task: fairseq + ``fairseq_plugin`` (Table 5: BLEU grid; no feature analyses).

Offline corpus -> LS teachers (fairseq's label_smoothed_cross_entropy) -> ls_kd students -> BLEU.

Against fairseq_plugin's CLI (issue 4): ``python -m fairseq_plugin.prepare_offline --pair P --out
DIR`` (binarised data in ``DIR/bin``), ``--user-dir <fairseq_plugin>`` (also on teachers and
``fairseq-generate``: importing the plugin allow-lists fairseq checkpoint contents for torch's
weights-only loader, which resuming and decoding need on torch >= 2.6), ``--criterion ls_kd
--teacher-path --kd-temperature --kd-beta``. fairseq-train resumes from ``checkpoint_last.pt`` in
its save dir by itself, so an interrupted run is restarted in place.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Tuple

from lskd_core.jsonio import num
from lskd_core.study.plan import Run, plugin_root, student_id, teacher_id
from lskd_core.study.tasks.base import TaskBackend

if TYPE_CHECKING:
    from lskd_core.study.config import StudyConfig

__all__ = ["TranslationTask", "PAIRS", "parse_bleu", "bleu_id"]

PAIRS = ("en-de", "en-ru")


def bleu_id(model_run_id: str) -> str:
    """Run id of the ``fairseq-generate`` run scoring a trained model."""
    return f"bleu_{model_run_id}"


def parse_bleu(path: "os.PathLike[str] | str") -> Optional[dict]:
    """BLEU from ``fairseq-generate`` output: the last ``BLEU4 = x`` (or sacrebleu ``BLEU = x``) line."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = re.findall(r"BLEU4?\s*=\s*([0-9]+(?:\.[0-9]+)?)", text)
    if not found:
        return None
    return {"bleu": float(found[-1])}


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


def _teacher_args(cfg: "StudyConfig", data: str, alpha: float) -> List[str]:
    return ([data] + _PLUGIN + ["--arch", cfg.teacher_arch or cfg.arch, "--criterion", "label_smoothed_cross_entropy",
                                "--label-smoothing", num(alpha), "--max-epoch", str(cfg.teacher_epochs),
                                "--lr", num(cfg.teacher_lr), "--max-tokens", str(cfg.max_tokens),
                                "--seed", str(cfg.teacher_seed)]
            + list(cfg.teacher_args) + _exec_args(cfg) + ["--save-dir", "{run}"])


def _student_args(cfg: "StudyConfig", data: str, t_id: str, temperature: float, seed: int) -> List[str]:
    return ([data] + _PLUGIN + ["--arch", cfg.student_arch or cfg.arch,
                                "--criterion", "ls_kd", "--teacher-path", f"{{study}}/runs/{t_id}/checkpoint_best.pt",
                                "--kd-temperature", num(temperature), "--kd-beta", num(cfg.kd_beta),
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
    second_score_key = None
    teacher_fields = {"bleu": "bleu"}
    teacher_main_field = "bleu"
    grid_metric = "bleu"
    grid_title = "## 1. BLEU grid (Table 5)\n"
    grid_caption = "Test BLEU"
    axis_label = "test BLEU"
    score_unit = "BLEU"
    analyses = frozenset()
    rule_of_thumb = False

    def validate(self, cfg: "StudyConfig") -> None:
        if cfg.pair not in PAIRS:
            raise ValueError(f"pair must be en-de or en-ru, got {cfg.pair!r}")

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
            runs.append(Run(teacher_id(alpha), "teacher", train, _teacher_args(cfg, data, alpha), deps=list(deps_data),
                            info={"alpha": alpha, "seed": cfg.teacher_seed}, outputs=["checkpoint_best.pt"],
                            resume_flag=None))
        for alpha in cfg.alphas:
            for temperature in cfg.temperatures:
                for seed in cfg.seed_list:
                    t_id = teacher_id(alpha)
                    runs.append(Run(student_id(alpha, temperature, seed), "student", train,
                                    _student_args(cfg, data, t_id, temperature, seed), deps=list(deps_data) + [t_id],
                                    info={"alpha": alpha, "temperature": temperature, "seed": seed},
                                    outputs=["checkpoint_best.pt"], resume_flag=None))
        # BLEU of every trained model (teachers too: the grid's teacher row)
        for r in [r for r in runs if r.kind in ("teacher", "student")]:
            runs.append(Run(bleu_id(r.run_id), "generate", ("exe", "fairseq-generate"),
                            _generate_args(cfg, data, r.run_id), deps=list(deps_data) + [r.run_id],
                            info=dict(r.info, model_run=r.run_id, role=r.kind),
                            outputs=["generate-test.txt"], resume_flag=None))
        return runs

    def placeholders(self, args: List[str]) -> Dict[str, str]:
        if any("{fairseq_plugin}" in a for a in args):
            return {"{fairseq_plugin}": fairseq_plugin_dir()}
        return {}

    def complete_result(self, run: Run, run_dir: Path) -> Tuple[Dict[str, object], Optional[str]]:
        if run.kind != "generate":
            return {}, None
        bleu = parse_bleu(run_dir / "generate-test.txt")
        if bleu is None:
            return {}, "no BLEU score found in generate-test.txt"
        return dict(bleu), None

    def metric_run(self, model_run_id: str) -> str:
        return bleu_id(model_run_id)

    def setup_line(self, cfg: Mapping) -> str:
        return (f"Task: translation {cfg.get('pair')} (fairseq), arch `{cfg.get('teacher_arch') or cfg.get('arch')}` "
                f"teacher -> `{cfg.get('student_arch') or cfg.get('arch')}` student")

    def not_applicable_note(self) -> str:
        return ("## 2.-6. Feature analyses\n\nThe diffusion index, entropy, projections, soft outputs and "
                "class-wise accuracy are computed for the vision task only.\n")
