"""The translation task's export runs: what the report's token-level analyses read (issue 18, item 3).

``python -m fairseq_plugin.export_features`` (docs/fairseq.md) on the ``translation_export_split``
(default ``test``, capped at ``translation_export_sentences`` seeded sentences), one run per model:

* every teacher (alpha x teacher seed): decoder features of the class tokens + its output-projection
  rows (the S1/S2 neighbours of the diffusion index come from them) and the per-sentence entropy
  sums of ``softmax(z / T)`` at the grid's temperatures and ``entropy_temperatures`` (Table H.1's
  translation analogue);
* every student (alpha x T x seed): decoder features of the class tokens (the diffusion index
  between the lowest-T and each higher-T student of an alpha and seed).

Classes = the ``translation_eta_classes`` most frequent target tokens of the exported sentences with
at least ``translation_eta_min_count`` occurrences: a function of the data and these settings only,
so every export of a study has the same classes. Planned only with ``analysis`` (as the vision
exports are). Commands are built as text; the core never imports the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List

from lskd_core.jsonio import num
from lskd_core.study.plan import Run, export_id

if TYPE_CHECKING:
    from lskd_core.study.config import StudyConfig

__all__ = ["add_export_runs", "ENTROPY_FILE"]

#: the teacher export's entropy sums, beside its features.npz
ENTROPY_FILE = "entropy.json"


def _export_args(cfg: "StudyConfig", data: str, model_run: str, teacher: bool) -> List[str]:
    args = [data, "--path", f"{{study}}/runs/{model_run}/checkpoint_best.pt",
            "--split", cfg.translation_export_split,
            "--max-sentences", str(cfg.translation_export_sentences or 0),
            "--max-classes", str(cfg.translation_eta_classes), "--min-count", str(cfg.translation_eta_min_count),
            "--max-tokens", str(cfg.max_tokens)]
    if teacher:
        temps = sorted(set(cfg.temperatures) | set(cfg.entropy_temperatures))
        args += ["--entropy-temperatures"] + [num(t) for t in temps] + ["--entropy-out", f"{{run}}/{ENTROPY_FILE}"]
    return args + ["--device", "cpu" if cfg.device == "cpu" else "cuda", "--out", "{run}/features.npz"]


def add_export_runs(cfg: "StudyConfig", runs: List[Run]) -> None:
    """Append an export run per teacher and per student of ``runs`` (nothing without ``analysis``).

    The data directory and the run preparing it are read off each model's own training run (its
    first argument and its dependencies), so this follows however the task plans its data.
    """
    if not cfg.analysis:
        return
    exporter = ("module", "fairseq_plugin.export_features")
    split = cfg.translation_export_split
    for model in [r for r in runs if r.kind in ("teacher", "student")]:
        teacher = model.kind == "teacher"
        info = {k: model.info[k] for k in ("alpha", "temperature", "seed", "teacher_seed") if k in model.info}
        info.update(role=model.kind, model_run=model.run_id, split=split)
        data_deps = [d for d in model.deps if any(r.run_id == d and r.kind == "prepare" for r in runs)]
        runs.append(Run(export_id(model.run_id, split), "export", exporter,
                        _export_args(cfg, model.args[0], model.run_id, teacher), deps=data_deps + [model.run_id],
                        info=info, outputs=["features.npz"] + ([ENTROPY_FILE] if teacher else []),
                        resume_flag=None))
