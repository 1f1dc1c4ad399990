"""fairseq criterion ``ls_kd``: label smoothing x temperature knowledge distillation (paper Sec. 2).

Per target token (padding masked), with student logits ``s``, teacher target ``p_t(T)`` and the
fairseq label-smoothing convention (alpha spread over the V - 1 wrong tokens)::

    loss = (1 - beta) * H(y_ls, softmax(s)) + beta * T^2 * KL(p_t(T) || softmax(s / T))

summed over tokens; fairseq's trainer divides the gradient by ``sample_size`` (target tokens, or
sentences with ``--sentence-avg``). ``beta = 1`` (the default) is the paper's setting (Sec. 2,
following Mueller et al. and Shen et al.); ``beta = 0`` is exactly fairseq's
``label_smoothed_cross_entropy`` with the same ``--label-smoothing``. The math comes from
``lskd_core.losses`` (``ls_kd_loss_terms``): this file only adapts fairseq's batch layout.

Shaped like fairseq's ``label_smoothed_cross_entropy``: ``forward`` runs the model and delegates to
``compute_loss``, which takes the student's logits and targets from ``get_logits_and_target`` and
the teacher's from ``get_teacher_logits``; a subclass overrides either. Metrics are reduced in
``reduce_metrics`` only.

Where the teacher's logits come from (``get_teacher_logits``):

* ``--teacher-cache DIR`` (built by ``python -m fairseq_plugin.teacher_cache build``): during
  training steps, read by sample id from the cache; the teacher is never run.
* ``--teacher-path CKPT[:CKPT...]``: the live teacher(s), loaded lazily on the first batch.
* Validation batches of a cache-only run (their sample ids are not the cache's): the live teacher
  the cache was built from, when that file is still where the build recorded it and its sha256 is
  the cache's, so validation loss (and ``checkpoint_best``) equal a live-teacher run's.
* Evaluation without a usable teacher (``fairseq-validate`` on a student whose teacher file has
  been moved, or a cache-only run whose teacher is gone):
  the KD term is skipped and logged once; ``loss`` is then the label-smoothed CE term while
  ``nll_loss``/``ppl`` are unchanged. A training step without its teacher is an error.

Sampled-K KD (``--kd-topk K --kd-topk-mode sample``; Anshumann et al., ACL 2025): instead of the
top-K target (biased: the tail is spread uniformly), each training step uses K tokens drawn from the
teacher at T (live, with a generator seeded by ``--seed``; or fixed draws from a ``build --sample K``
cache), ``T^2 * mean_k (log p_t(x_k) - log softmax(s/T)(x_k))``, whose expectation and gradient are
those of full-vocabulary KD (:mod:`lskd_core.sampled_kd`). Validation uses the exact full KD. The
live generator restarts with the process (a resumed run draws a new stream).

Table 5 / Table B.2 of the paper are the grid alpha (teacher's ``--label-smoothing`` when it was
trained with ``label_smoothed_cross_entropy``) x T (``--kd-temperature`` here) in {1, 2, 3, 64}.

Logged (base 2, like fairseq): ``loss``, ``nll_loss`` (per target token; ``ppl`` derived),
``ce_loss`` (the label-smoothed hard-label term) and ``kd_loss`` (the T^2-scaled KL term), both
unweighted by beta.
"""

# No `from __future__ import annotations` here: fairseq reads the config dataclass field types
# at runtime (string annotations make it fail with "field should be a type").
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from lskd_core.checks import check_alpha, check_beta, check_temperature
from lskd_core.losses import kd_loss, ls_cross_entropy, ls_kd_loss_terms
from lskd_core.sampled_kd import KDSamples, draw_kd_samples, sampled_kd_loss

from ..errors import CriterionConfigError, TeacherNotFoundError
from ..teacher import TeacherEnsemble, get_teacher, split_teacher_paths

logger = logging.getLogger(__name__)

CRITERION_NAME = "ls_kd"
_NLL_CHUNK_ELEMENTS = 1 << 22  # rows x vocab per chunk for the logged NLL (no autograd graph)


@dataclass
class LsKdConfig(FairseqDataclass):
    teacher_path: str = field(
        default="",
        metadata={
            "help": "teacher checkpoint (fairseq, trained with label_smoothed_cross_entropy); several "
            "paths separated by ':' form an ensemble whose probabilities at T are averaged. Required "
            "unless --kd-beta 0 or --teacher-cache"
        },
    )
    teacher_cache: str = field(
        default="",
        metadata={
            "help": "teacher-output cache directory (python -m fairseq_plugin.teacher_cache build): "
            "training steps read the teacher's logits by sample id instead of running the teacher. "
            "With --teacher-path too, the cache must have been built from that checkpoint"
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
    kd_topk_mode: ChoiceEnum(["top", "sample"]) = field(  # type: ignore[valid-type]
        default="top",
        metadata={
            "help": "with --kd-topk K: 'top' keeps the teacher's K most probable tokens (biased against "
            "full KD); 'sample' draws K tokens from the teacher at T each step (or reads a --sample "
            "cache) with importance weights, an unbiased estimate of full-vocabulary KD (Anshumann et "
            "al., ACL 2025). Validation always uses full KD in 'sample' mode"
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
    seed: int = II("common.seed")


LskdCriterionConfig = LsKdConfig  # the name before fairseq's naming convention was adopted


class LossParts(NamedTuple):
    """What ``compute_loss`` returns besides the loss (all detached, float32 sums)."""

    nll_loss: torch.Tensor
    ce_loss: torch.Tensor
    kd_loss: Optional[torch.Tensor]  # None when no teacher output was used for this batch


def register_once(name: str, dataclass=None):
    """fairseq's ``register_criterion`` decorator, safe against a second import of this file.

    fairseq's registry refuses a second registration of the same name. This file can be imported
    twice under different module names (e.g. ``fairseq_plugin.criterions.ls_kd`` through the
    autoload and ``criterions.ls_kd`` through a ``--user-dir`` spelling): the second import keeps
    the first class. A different class already holding the name is a real conflict, reported.
    """

    def decorate(cls):
        from fairseq.criterions import CRITERION_REGISTRY

        existing = CRITERION_REGISTRY.get(name)
        if existing is None:
            return register_criterion(name, dataclass=dataclass)(cls)
        if (existing.__qualname__ == cls.__qualname__
                and existing.__module__.split(".")[-1] == cls.__module__.split(".")[-1]):
            return existing
        raise ImportError(
            f"fairseq criterion name {name!r} is already registered by "
            f"{existing.__module__}.{existing.__qualname__}; cannot register lskd's criterion"
        )

    return decorate


def _checked(check, value, name):
    try:
        return check(value, name)
    except ValueError as error:
        raise CriterionConfigError(str(error)) from None


@register_once(CRITERION_NAME, dataclass=LsKdConfig)
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
        teacher_cache: str = "",
        kd_topk_mode: str = "top",
        seed: int = 1,
    ):
        super().__init__(task)
        self.sentence_avg = sentence_avg
        self.kd_temperature = _checked(check_temperature, kd_temperature, "kd_temperature")
        self.beta = _checked(check_beta, kd_beta, "kd_beta")
        self.eps = _checked(check_alpha, label_smoothing, "label_smoothing")
        for name, value, meaning in (("kd_topk", kd_topk, "0 = full vocabulary"),
                                     ("kd_chunk_rows", kd_chunk_rows, "0 = automatic"),
                                     ("ignore_prefix_size", ignore_prefix_size, "0 = none")):
            if int(value) < 0:
                raise CriterionConfigError(f"{name} must be >= 0 ({meaning}), got {value!r}")
        self.topk = int(kd_topk)
        self.topk_mode = str(kd_topk_mode)
        if self.topk_mode not in ("top", "sample"):
            raise CriterionConfigError(f"kd_topk_mode must be 'top' or 'sample', got {kd_topk_mode!r}")
        if self.topk_mode == "sample" and self.topk == 0:
            raise CriterionConfigError("--kd-topk-mode sample needs --kd-topk K > 0 (the tokens drawn per target "
                                       "position); --kd-topk 0 is full KD, which needs no sampling")
        self._seed = int(seed)
        self._generator: Optional[torch.Generator] = None  # sample mode, live teacher: made on first use
        self.chunk_rows = int(kd_chunk_rows) or None
        self.ignore_prefix_size = int(ignore_prefix_size)
        self.report_accuracy = report_accuracy
        self.unsafe_load = bool(teacher_unsafe_load)
        # Plain strings only: the teacher itself lives in fairseq_plugin.teacher's cache, outside
        # this module's tree (not saved, not DDP-wrapped, not counted as parameters).
        self.teacher_paths: Tuple[str, ...] = tuple(split_teacher_paths(teacher_path))
        self.cache_dir = os.path.expanduser(str(teacher_cache or "").strip())
        self._cache = None  # opened on the first training step (evaluation never needs it)
        self._skip_logged = False
        self._eval_teacher: Optional[str] = None  # cache only: the checkpoint it was built from
        if not self.teacher_paths and not self.cache_dir and self.beta > 0:
            raise CriterionConfigError(
                f"teacher_path is required when kd_beta > 0 (got kd_beta={self.beta}); pass "
                f"--teacher-path CKPT[:CKPT...] or --teacher-cache DIR, or --kd-beta 0 for plain "
                f"label-smoothed CE"
            )
        if self.cache_dir and len(self.teacher_paths) > 1:
            raise CriterionConfigError(
                "--teacher-cache holds one teacher's logits; an ensemble (--teacher-path a:b) has no "
                "raw logits to cache: drop --teacher-cache or pass a single --teacher-path"
            )
        if self.cache_dir:  # a top-K cache built for other temperatures: say so before training
            from ..teacher_cache import check_served_temperature

            check_served_temperature(self.cache_dir, self.kd_temperature)
        # A missing teacher is an error only when a training step needs it: evaluating a student
        # (fairseq-validate) must not need the teacher whose path its checkpoint remembers.
        self.missing_teachers = [p for p in self.teacher_paths if not os.path.isfile(p)]
        if self.missing_teachers:
            logger.warning("teacher checkpoint not found: %s; training steps will fail, evaluation "
                           "skips the KD term", ":".join(self.missing_teachers))

    # -- teacher ---------------------------------------------------------------------------
    def teacher(self, model) -> TeacherEnsemble:
        """The frozen teacher ensemble on the student's device/dtype (loaded once per process)."""
        param = next(model.parameters())
        ensemble = get_teacher(self.teacher_paths, self.task, unsafe=self.unsafe_load)
        return ensemble.to(param.device, param.dtype)

    def _live_topk(self) -> int:
        """K of the live teacher's dense target: sample mode validates with full KD (its expectation)."""
        return 0 if self.topk_mode == "sample" else self.topk

    def teacher_kd_logits(self, model, sample) -> torch.Tensor:
        """The live teacher's logits z with softmax(z / T) = KD target, [B, L, V] (unstripped)."""
        return self.teacher(model).kd_logits(sample["net_input"], self.kd_temperature, self._live_topk())

    def get_teacher_samples(self, model, sample) -> KDSamples:
        """Sample mode, training step: K tokens per target position drawn from the teacher at T (from
        a ``--sample`` cache, or from the live teacher with a generator seeded by ``--seed``), prefix
        stripped. Override to draw from elsewhere."""
        param = next(model.parameters())
        if self.cache_dir:
            drawn = self.teacher_cache().samples_for_sample(sample, self.kd_temperature, param.device)
        else:
            if self.missing_teachers:
                raise TeacherNotFoundError(
                    f"teacher checkpoint not found: {self.missing_teachers[0]} (from --teacher-path); "
                    f"restore it, pass the right path, or train from --teacher-cache DIR")
            if self._generator is None or self._generator.device != param.device:
                self._generator = torch.Generator(device=param.device)
                self._generator.manual_seed(self._seed * 7919 + 17)  # not the student's own stream
            z = self.teacher(model).kd_logits(sample["net_input"], self.kd_temperature, 0)
            drawn = draw_kd_samples(z, self.kd_temperature, self.topk, generator=self._generator)
        return KDSamples(*(self._strip_prefix(part) for part in drawn))

    def teacher_cache(self):
        """The opened, fingerprint-checked teacher-output cache (``--teacher-cache``)."""
        if self._cache is None:
            from ..teacher_cache import open_for_task

            teacher = self.teacher_paths[0] if self.teacher_paths else None
            self._cache = open_for_task(self.cache_dir, self.task, teacher_path=teacher,
                                        topk=self.topk, temperature=self.kd_temperature, mode=self.topk_mode)
        return self._cache

    def _skip_kd(self, reason: str) -> None:
        if not self._skip_logged:
            logger.warning("ls_kd: %s; evaluation reports loss without the KD term (nll_loss and "
                           "ppl are unaffected)", reason)
            self._skip_logged = True

    def get_teacher_logits(self, model, sample) -> Optional[torch.Tensor]:
        """Teacher logits [B, L', V] aligned with ``get_logits_and_target`` (prefix stripped), or
        None when this batch has no teacher term (see the module docstring). Override to read
        teacher outputs from elsewhere."""
        if not self.teacher_paths and not self.cache_dir:
            return None
        if self.cache_dir and self.training:
            param = next(model.parameters())
            logits = self.teacher_cache().logits_for_sample(sample, self.kd_temperature, param.device)
            return self._strip_prefix(logits)
        if self.missing_teachers:
            if self.training:
                raise TeacherNotFoundError(
                    f"teacher checkpoint not found: {self.missing_teachers[0]} (from --teacher-path); "
                    f"restore it, pass the right path, or train from --teacher-cache DIR"
                )
            self._skip_kd(f"teacher {self.missing_teachers[0]} not found")
            return None
        if not self.teacher_paths:  # cache only, evaluation: valid sample ids are not the cache's
            if self._eval_teacher is None:
                from ..teacher_cache import recorded_teacher

                self._eval_teacher = recorded_teacher(self.cache_dir) or ""
            if not self._eval_teacher:
                self._skip_kd("the teacher cache covers the training set only and the teacher it was "
                              "built from is not available (pass --teacher-path to validate with it)")
                return None
            # The cache's own teacher (same sha256): validation loss, and so checkpoint_best, are
            # those of a live-teacher run.
            ensemble = get_teacher((self._eval_teacher,), self.task, unsafe=self.unsafe_load)
            param = next(model.parameters())
            logits = ensemble.to(param.device, param.dtype).kd_logits(
                sample["net_input"], self.kd_temperature, self._live_topk())
            return self._strip_prefix(logits)
        return self._strip_prefix(self.teacher_kd_logits(model, sample))

    # -- loss ----------------------------------------------------------------------------------
    def _strip_prefix(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.ignore_prefix_size > 0:
            return tensor[:, self.ignore_prefix_size:].contiguous()
        return tensor

    def get_logits_and_target(self, model, net_output, sample) -> Tuple[torch.Tensor, torch.Tensor]:
        """Student logits [B, L', V] (unnormalised) and targets [B, L'], prefix stripped."""
        if getattr(getattr(model, "decoder", None), "adaptive_softmax", None) is not None:
            raise CriterionConfigError(
                "the ls_kd criterion needs full-vocabulary logits; adaptive softmax is not supported")
        logits = self._strip_prefix(net_output[0])
        target = self._strip_prefix(model.get_targets(sample, net_output))
        return logits, target

    def compute_loss(self, model, net_output, sample, reduce=True) -> Tuple[torch.Tensor, LossParts]:
        """Summed loss over the batch's target tokens and its logged parts."""
        if not reduce:
            raise CriterionConfigError("the ls_kd criterion supports reduce=True only")
        logits, target = self.get_logits_and_target(model, net_output, sample)
        mask = target.ne(self.padding_idx)
        if self.topk_mode == "sample" and self.training and self.beta > 0:
            return self.compute_sampled_loss(model, sample, logits, target, mask)
        teacher_logits = self.get_teacher_logits(model, sample)
        kd_value: Optional[torch.Tensor] = None
        if teacher_logits is not None and self.beta == 1.0:
            # The paper's setting: only the KD term has a gradient; the logged CE and NLL come
            # from one no-grad log-softmax pass instead of two.
            loss = kd_loss(logits, teacher_logits, self.kd_temperature, mask=mask, reduction="sum",
                           chunk_size=self.chunk_rows)
            ce_value, nll = logged_ce_and_nll(logits, target, mask, self.eps)
            return loss, LossParts(nll, ce_value, loss.detach())
        if teacher_logits is not None:
            terms = ls_kd_loss_terms(
                logits, teacher_logits, target, self.kd_temperature, beta=self.beta,
                label_smoothing=self.eps, mask=mask, reduction="sum", exclude_true_class=True,
                chunk_size=self.chunk_rows,
            )
            loss, ce_value, kd_value = terms.loss, terms.ce_loss, terms.kd_loss
        else:  # no teacher term: fairseq's label-smoothed CE
            loss = ls_cross_entropy(
                logits, target, self.eps, mask=mask, reduction="sum", exclude_true_class=True
            )
            ce_value = loss.detach()
        return loss, LossParts(masked_nll_sum(logits, target, mask), ce_value, kd_value)

    def compute_sampled_loss(self, model, sample, logits: torch.Tensor, target: torch.Tensor,
                             mask: torch.Tensor) -> Tuple[torch.Tensor, LossParts]:
        """Sample mode: ``(1 - beta) * LS-CE + beta * sampled-K KD`` (lskd_core.sampled_kd), summed."""
        kd_value = sampled_kd_loss(logits, self.get_teacher_samples(model, sample), self.kd_temperature,
                                   mask=mask, reduction="sum")
        ce_value, nll = logged_ce_and_nll(logits, target, mask, self.eps)
        loss = kd_value
        if self.beta < 1.0:
            ce = ls_cross_entropy(logits, target, self.eps, mask=mask, reduction="sum", exclude_true_class=True)
            loss = (1.0 - self.beta) * ce + self.beta * kd_value
        return loss, LossParts(nll, ce_value, kd_value.detach())

    @torch.no_grad()
    def compute_accuracy(self, model, net_output, sample) -> Tuple[torch.Tensor, torch.Tensor]:
        logits, target = self.get_logits_and_target(model, net_output, sample)
        mask = target.ne(self.padding_idx)
        return (logits.argmax(-1).eq(target) & mask).sum(), mask.sum()

    def forward(self, model, sample, reduce=True):
        """Loss, sample size and logging outputs for one batch (fairseq criterion API)."""
        net_output = model(**sample["net_input"])
        loss, parts = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "nll_loss": parts.nll_loss.data,
            "ce_loss": parts.ce_loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if parts.kd_loss is not None:
            logging_output["kd_loss"] = parts.kd_loss.data
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"] = utils.item(n_correct)
            logging_output["total"] = utils.item(total)
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
def logged_ce_and_nll(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                      eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Summed label-smoothed CE (fairseq convention) and NLL over unmasked tokens, float32, from
    one log-softmax pass per row chunk: ``ce = (1 - eps - eps_i) * nll + eps_i * sum_j -lp_j``
    with ``eps_i = eps / (V - 1)``, fairseq's ``label_smoothed_nll_loss``."""
    rows = logits.reshape(-1, logits.shape[-1])
    tgt = target.reshape(-1, 1)
    keep = mask.reshape(-1)
    step = max(1, _NLL_CHUNK_ELEMENTS // rows.shape[1])
    nll_total = torch.zeros((), dtype=torch.float32, device=rows.device)
    smooth_total = torch.zeros((), dtype=torch.float32, device=rows.device)
    for start in range(0, rows.shape[0], step):
        lp = F.log_softmax(rows[start:start + step].float(), dim=-1)
        drop = ~keep[start:start + step]
        nll_total += (-lp.gather(1, tgt[start:start + step]).squeeze(1)).masked_fill(drop, 0.0).sum()
        smooth_total += (-lp.sum(dim=-1)).masked_fill(drop, 0.0).sum()
    eps_i = eps / (rows.shape[1] - 1)
    return (1.0 - eps - eps_i) * nll_total + eps_i * smooth_total, nll_total


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


_register = register_once(CRITERION_NAME, dataclass=LsKdConfig)  # kept for the conflict test
