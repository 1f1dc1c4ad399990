"""fairseq criterion ``ls_kd``: label smoothing x temperature knowledge distillation (paper Sec. 2).

Per target token (padding masked), with student logits ``s``, teacher target ``p_t(T)`` and the
fairseq label-smoothing convention (alpha spread over the V - 1 wrong tokens)::

    loss = (1 - beta) * H(y_ls, softmax(s)) + beta * T^2 * KL(p_t(T) || softmax(s / T))

summed over tokens; fairseq's trainer divides the gradient by ``sample_size`` (target tokens, or
sentences with ``--sentence-avg``). ``beta = 1`` (the default) is the paper's setting (Sec. 2,
following Mueller et al. and Shen et al.); ``beta = 0`` is exactly fairseq's
``label_smoothed_cross_entropy`` with the same ``--label-smoothing``. The math comes from
``lskd_core.losses`` (``ls_kd_loss_terms``): this file only adapts fairseq's batch layout.

Table 5 / Table B.2 of the paper are the grid alpha (teacher's ``--label-smoothing`` when it was
trained with ``label_smoothed_cross_entropy``) x T (``--kd-temperature`` here) in {1, 2, 3, 64}.

Logged (base 2, like fairseq): ``loss``, ``nll_loss`` (per target token; ``ppl`` derived),
``ce_loss`` (the label-smoothed hard-label term) and ``kd_loss`` (the T^2-scaled KL term), both
unweighted by beta.
"""

# No `from __future__ import annotations` here: fairseq reads the config dataclass field types
# at runtime (string annotations make it fail with "field should be a type").
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from lskd_core.checks import check_alpha, check_beta, check_temperature
from lskd_core.losses import ls_cross_entropy, ls_kd_loss_terms

from ..teacher import TeacherEnsemble, get_teacher, split_teacher_paths

CRITERION_NAME = "ls_kd"
_NLL_CHUNK_ELEMENTS = 1 << 22  # rows x vocab per chunk for the logged NLL (no autograd graph)


@dataclass
class LskdCriterionConfig(FairseqDataclass):
    teacher_path: str = field(
        default="",
        metadata={
            "help": "teacher checkpoint (fairseq, trained with label_smoothed_cross_entropy); several "
            "paths separated by ':' form an ensemble whose probabilities at T are averaged. Required "
            "unless --kd-beta 0"
        },
    )
    kd_temperature: float = field(
        default=1.0, metadata={"help": "KD temperature T (> 0); the KD term is scaled by T^2"}
    )
    kd_beta: float = field(
        default=1.0,
        metadata={"help": "weight of the KD term in [0, 1]; 1 = pure KD (the paper), 0 = label-smoothed CE"},
    )
    label_smoothing: float = field(
        default=0.0,
        metadata={"help": "alpha of the hard-label term (fairseq convention: alpha over V-1 wrong tokens)"},
    )
    kd_topk: int = field(
        default=0,
        metadata={
            "help": "0 = full vocabulary; K > 0 = keep the teacher's top-K probabilities at T and "
            "spread the remaining mass uniformly over the other V-K tokens (K >= V equals full)"
        },
    )
    kd_chunk_rows: int = field(
        default=0,
        metadata={"help": "rows per chunk of the float32 KD computation (0 = automatic, ~4M elements)"},
    )
    teacher_unsafe_load: bool = field(
        default=False,
        metadata={
            "help": "load teacher checkpoints with torch.load(weights_only=False): EXECUTES ARBITRARY "
            "CODE from the file; only for trusted files that need globals outside the allow-list"
        },
    )
    report_accuracy: bool = field(default=False, metadata={"help": "report accuracy metric"})
    ignore_prefix_size: int = field(default=0, metadata={"help": "Ignore first N tokens"})
    sentence_avg: bool = II("optimization.sentence_avg")


class LskdCriterion(FairseqCriterion):
    """Label-smoothed CE + temperature KD from frozen fairseq teacher(s); see the module docstring."""

    def __init__(
        self,
        task,
        sentence_avg: bool,
        teacher_path: str = "",
        kd_temperature: float = 1.0,
        kd_beta: float = 1.0,
        label_smoothing: float = 0.0,
        kd_topk: int = 0,
        kd_chunk_rows: int = 0,
        teacher_unsafe_load: bool = False,
        report_accuracy: bool = False,
        ignore_prefix_size: int = 0,
    ):
        super().__init__(task)
        self.sentence_avg = sentence_avg
        self.kd_temperature = check_temperature(kd_temperature, "kd_temperature")
        self.beta = check_beta(kd_beta, "kd_beta")
        self.eps = check_alpha(label_smoothing, "label_smoothing")
        if int(kd_topk) < 0:
            raise ValueError(f"kd_topk must be >= 0 (0 = full vocabulary), got {kd_topk!r}")
        self.topk = int(kd_topk)
        if int(kd_chunk_rows) < 0:
            raise ValueError(f"kd_chunk_rows must be >= 0 (0 = automatic), got {kd_chunk_rows!r}")
        self.chunk_rows = int(kd_chunk_rows) or None
        if int(ignore_prefix_size) < 0:
            raise ValueError(f"ignore_prefix_size must be >= 0, got {ignore_prefix_size!r}")
        self.ignore_prefix_size = int(ignore_prefix_size)
        self.report_accuracy = report_accuracy
        self.unsafe_load = bool(teacher_unsafe_load)
        # Plain strings only: the teacher itself lives in fairseq_plugin.teacher's cache, outside
        # this module's tree (not saved, not DDP-wrapped, not counted as parameters).
        self.teacher_paths: Tuple[str, ...] = tuple(split_teacher_paths(teacher_path))
        if not self.teacher_paths and self.beta > 0:
            raise ValueError(
                f"teacher_path is required when kd_beta > 0 (got kd_beta={self.beta}); pass "
                f"--teacher-path CKPT[:CKPT...], or --kd-beta 0 for plain label-smoothed CE"
            )
        for path in self.teacher_paths:  # fail at start-up, not at the first batch
            if not os.path.isfile(path):
                raise FileNotFoundError(f"teacher checkpoint not found: {path} (from --teacher-path)")

    # -- teacher ---------------------------------------------------------------------------
    def teacher(self, model) -> TeacherEnsemble:
        """The frozen teacher ensemble on the student's device/dtype (loaded once per process)."""
        param = next(model.parameters())
        ensemble = get_teacher(self.teacher_paths, self.task, unsafe=self.unsafe_load)
        return ensemble.to(param.device, param.dtype)

    def teacher_kd_logits(self, model, sample) -> torch.Tensor:
        """The one entry point for teacher inference: logits z with softmax(z / T) = KD target.

        Override (or replace) this to read cached top-K teacher outputs instead of running the
        teacher (``fairseq_plugin.teacher.expand_topk`` densifies such a cache entry).
        """
        return self.teacher(model).kd_logits(sample["net_input"], self.kd_temperature, self.topk)

    # -- loss ----------------------------------------------------------------------------------
    def _strip_prefix(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.ignore_prefix_size > 0:
            return tensor[:, self.ignore_prefix_size:].contiguous()
        return tensor

    def forward(self, model, sample, reduce=True):
        """Loss, sample size and logging outputs for one batch (fairseq criterion API)."""
        if not reduce:
            raise ValueError("the ls_kd criterion supports reduce=True only")
        net_output = model(**sample["net_input"])
        if getattr(getattr(model, "decoder", None), "adaptive_softmax", None) is not None:
            raise ValueError("the ls_kd criterion needs full-vocabulary logits; adaptive softmax is not supported")
        logits = self._strip_prefix(net_output[0])
        target = self._strip_prefix(model.get_targets(sample, net_output))
        mask = target.ne(self.padding_idx)

        kd_value: Optional[torch.Tensor] = None
        if self.teacher_paths:
            teacher_logits = self._strip_prefix(self.teacher_kd_logits(model, sample))
            terms = ls_kd_loss_terms(
                logits, teacher_logits, target, self.kd_temperature, beta=self.beta,
                label_smoothing=self.eps, mask=mask, reduction="sum", exclude_true_class=True,
                chunk_size=self.chunk_rows,
            )
            loss, ce_value, kd_value = terms.loss, terms.ce_loss, terms.kd_loss
        else:  # kd_beta == 0 without a teacher: fairseq's label-smoothed CE
            loss = ls_cross_entropy(
                logits, target, self.eps, mask=mask, reduction="sum", exclude_true_class=True
            )
            ce_value = loss.detach()
        nll = masked_nll_sum(logits, target, mask)

        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": nll.data,
            "ce_loss": ce_value.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if kd_value is not None:
            logging_output["kd_loss"] = kd_value.data
        if self.report_accuracy:
            with torch.no_grad():
                correct = logits.argmax(-1).eq(target) & mask
            logging_output["n_correct"] = utils.item(correct.sum())
            logging_output["total"] = utils.item(mask.sum())
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs: List[Dict]) -> None:
        """Aggregate logging outputs (fairseq conventions: base-2 values, ppl from nll_loss)."""

        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        sample_size = total("sample_size")
        ntokens = total("ntokens")
        metrics.log_scalar("loss", total("loss") / sample_size / math.log(2), sample_size, round=3)
        metrics.log_scalar("nll_loss", total("nll_loss") / ntokens / math.log(2), ntokens, round=3)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))
        for key in ("ce_loss", "kd_loss"):
            if any(key in log for log in logging_outputs):
                metrics.log_scalar(key, total(key) / sample_size / math.log(2), sample_size, round=3)
        count = utils.item(total("total"))
        if count > 0:
            metrics.log_scalar("total", count)
            metrics.log_scalar("n_correct", utils.item(total("n_correct")))
            metrics.log_derived(
                "accuracy",
                lambda meters: round(meters["n_correct"].sum * 100.0 / meters["total"].sum, 3)
                if meters["total"].sum > 0
                else float("nan"),
            )

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@torch.no_grad()
def masked_nll_sum(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed token NLL (float32) over unmasked positions, row chunk by row chunk, for logging.

    Same values as fairseq's ``-log_softmax(x.float()).gather(target)``, without a full float32
    copy of the logits alive at once.
    """
    rows = logits.reshape(-1, logits.shape[-1])
    tgt = target.reshape(-1, 1)
    keep = mask.reshape(-1)
    step = max(1, _NLL_CHUNK_ELEMENTS // rows.shape[1])
    total = torch.zeros((), dtype=torch.float32, device=rows.device)
    for start in range(0, rows.shape[0], step):
        chunk = F.log_softmax(rows[start:start + step].float(), dim=-1)
        nll = -chunk.gather(1, tgt[start:start + step]).squeeze(1)
        total += nll.masked_fill(~keep[start:start + step], 0.0).sum()
    return total


def _register(cls):
    """Register ``ls_kd`` once, even if this plugin is imported under a second module name.

    fairseq's registry refuses a second registration of the same name; a second import of this
    file (e.g. as ``fairseq_plugin.criterions.ls_kd`` and as ``criterions.ls_kd``) keeps the first
    class. A different class already holding the name is a real conflict and is reported.
    """
    from fairseq.criterions import CRITERION_REGISTRY

    existing = CRITERION_REGISTRY.get(CRITERION_NAME)
    if existing is None:
        return register_criterion(CRITERION_NAME, dataclass=LskdCriterionConfig)(cls)
    if existing.__qualname__ == cls.__qualname__ and existing.__module__.split(".")[-1] == __name__.split(".")[-1]:
        return existing
    raise ImportError(
        f"fairseq criterion name {CRITERION_NAME!r} is already registered by "
        f"{existing.__module__}.{existing.__qualname__}; cannot register lskd's criterion"
    )


LskdCriterion = _register(LskdCriterion)
