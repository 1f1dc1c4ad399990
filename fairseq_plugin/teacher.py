"""The KD teacher(s) of the ``ls_kd`` criterion: safe loading, dictionary checks, inference.

Teachers live in a module-level cache keyed by their paths, never as attributes of the criterion:
a module held by the criterion would become part of its module tree, so fairseq's trainer would
cast it, wrap the criterion in DDP, save it into every student checkpoint and reload it strictly
(docs/fairseq.md, "Teacher loading"). Each worker process therefore loads a teacher exactly once, on the
criterion's first forward, and moves it to the student's device and dtype (fp16/bf16 when the
trainer uses them). Teachers stay in eval mode with ``requires_grad=False`` and run under
``torch.no_grad()``.

Ensembles: several checkpoints (``--teacher-path a.pt:b.pt``) are combined by averaging their
probabilities at temperature T: ``p_t = mean_i softmax(z_i / T)``.

Top-K (``--kd-topk K``): the target keeps the teacher's K most probable tokens at T with their
probabilities, and spreads the remaining mass ``1 - sum(top-K)`` uniformly over the other V - K
tokens, so the target is still a distribution over the whole vocabulary and the KL stays finite
wherever the student puts mass. With K >= V this is exactly the full distribution.

All teacher inference goes through :meth:`TeacherEnsemble.kd_logits` (via the criterion's
``teacher_kd_logits``), so a cache of top-K teacher outputs can replace it: such a cache stores
``(values, indices)`` per target token and densifies them with :func:`expand_topk`.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .errors import TeacherMismatchError
from .safe_load import load_checkpoint_state

logger = logging.getLogger(__name__)

# Smallest normal float32: log() of it is finite (-87.3), so a zero probability in a densified
# target gives a finite logit instead of -inf (whose 0 * inf would turn the KL into NaN).
_TINY = torch.finfo(torch.float32).tiny

# (paths, unsafe) -> loaded ensemble. One per worker process.
_TEACHERS: Dict[Tuple[Tuple[str, ...], bool], "TeacherEnsemble"] = {}


def split_teacher_paths(teacher_path: str) -> List[str]:
    """``a.pt:b.pt`` -> ``["a.pt", "b.pt"]`` (fairseq's ``--path`` convention for ensembles)."""
    paths = [p for p in str(teacher_path or "").split(":") if p.strip()]
    return [os.path.expanduser(p.strip()) for p in paths]


def first_difference(a, b) -> Optional[Tuple[int, str, str]]:
    """First index where two fairseq ``Dictionary`` objects differ: (index, symbol_a, symbol_b)."""
    for index in range(max(len(a), len(b))):
        sym_a = a.symbols[index] if index < len(a) else "<none>"
        sym_b = b.symbols[index] if index < len(b) else "<none>"
        if sym_a != sym_b:
            return index, sym_a, sym_b
    return None


def check_dictionaries(teacher_dicts: Dict[str, object], student_dicts: Dict[str, object], path: str) -> None:
    """Raise ValueError unless the teacher's source/target dictionaries equal the student task's.

    KD compares distributions token by token, so the vocabularies must be the same list of
    symbols in the same order (same BPE, same ``fairseq-preprocess`` dictionary).
    """
    for side in ("source", "target"):
        teacher, student = teacher_dicts.get(side), student_dicts.get(side)
        if teacher is None or student is None:
            continue
        diff = first_difference(teacher, student)
        if diff is not None:
            index, sym_t, sym_s = diff
            raise TeacherMismatchError(
                f"teacher {path}: its {side} dictionary ({len(teacher)} symbols) differs from the "
                f"student task's {side} dictionary ({len(student)} symbols); first difference at "
                f"index {index}: teacher {sym_t!r} vs student {sym_s!r}. Train the teacher on the "
                f"same binarised data (same BPE codes and dict.*.txt) as the student."
            )


def _embedding_rows(model_state: Dict[str, torch.Tensor], prefix: str) -> Optional[int]:
    for key in (f"{prefix}.embed_tokens.weight", f"{prefix}.output_projection.weight"):
        tensor = model_state.get(key)
        if tensor is not None and tensor.dim() == 2:
            return int(tensor.shape[0])
    return None


def _check_embedding_sizes(model_state, student_dicts, path: str) -> None:
    """Size check from the weights alone, for teachers whose training data dir is not reachable."""
    for side, prefix in (("source", "encoder"), ("target", "decoder")):
        rows, student = _embedding_rows(model_state, prefix), student_dicts.get(side)
        if rows is not None and student is not None and rows != len(student):
            raise TeacherMismatchError(
                f"teacher {path}: its {side} embedding has {rows} rows but the student task's "
                f"{side} dictionary has {len(student)} symbols; the teacher was trained on a "
                f"different dictionary (its own data directory is not reachable, so the first "
                f"differing symbol cannot be shown)."
            )


def _dictionaries_beside(path: str, teacher_data, student_task) -> Dict[str, object]:
    """The teacher's ``dict.{lang}.txt`` files from its checkpoint's folder, for teachers whose
    training data directory is gone; a clear error when they are not there."""
    from fairseq.data import Dictionary

    folder = os.path.dirname(os.path.abspath(path))
    found, missing = {}, []
    for side, key in (("source", "source_lang"), ("target", "target_lang")):
        lang = getattr(student_task.cfg, key, None)
        if lang is None:
            continue
        name = os.path.join(folder, f"dict.{lang}.txt")
        if os.path.isfile(name):
            found[side] = Dictionary.load(name)
        else:
            missing.append(f"dict.{lang}.txt")
    if missing:
        raise TeacherMismatchError(
            f"teacher {path}: its data directory {teacher_data!r} is not reachable, so its "
            f"dictionaries cannot be compared with the student's symbol by symbol (equal sizes do "
            f"not prove equal vocabularies). Copy the teacher's {' and '.join(missing)} next to the "
            f"checkpoint (into {folder}) or restore its data directory."
        )
    return found


def _task_dictionaries(task) -> Dict[str, object]:
    return {
        "source": getattr(task, "source_dictionary", None),
        "target": getattr(task, "target_dictionary", None),
    }


def _data_dir_exists(data) -> bool:
    first = str(data or "").split(":")[0]
    return bool(first) and os.path.isdir(first)


def _teacher_task(cfg, student_task, path: str, model_state):
    """The teacher's own task (its own dictionaries), built from its checkpoint config.

    Never the student's task: ``TranslationTask.build_model`` with ``--eval-bleu`` would replace
    the student's validation generator with the teacher. When the teacher's data directory is
    gone, its task is built on the student's data instead, after an embedding-size check.
    """
    from fairseq import tasks
    from omegaconf import open_dict

    task_cfg = copy.deepcopy(cfg.task)
    student_dicts = _task_dictionaries(student_task)
    own_data = _data_dir_exists(task_cfg.get("data", None))
    with open_dict(task_cfg):
        if "eval_bleu" in task_cfg:
            task_cfg.eval_bleu = False  # the teacher needs no generator/BLEU scorer
        if not own_data:
            _check_embedding_sizes(model_state, student_dicts, path)
            # Equal sizes prove nothing (fairseq pads dictionaries to a multiple of 8): compare
            # symbols with the teacher's dict.*.txt kept beside its checkpoint.
            check_dictionaries(_dictionaries_beside(path, task_cfg.get("data"), student_task),
                               student_dicts, path)
            logger.info(
                "teacher %s: its data directory %r is not reachable; its dictionaries beside the "
                "checkpoint equal the student's, so it is built on the student's data",
                path, task_cfg.get("data"),
            )
            task_cfg.data = student_task.cfg.data
            for key in ("source_lang", "target_lang"):
                if key in task_cfg and key in student_task.cfg:
                    task_cfg[key] = student_task.cfg[key]
    teacher_task = tasks.setup_task(task_cfg)
    check_dictionaries(_task_dictionaries(teacher_task), student_dicts, path)
    return teacher_task


def load_teacher_model(path: str, student_task, unsafe: bool = False) -> torch.nn.Module:
    """Load one teacher with fairseq's checkpoint utilities (safe unpickling), on CPU, eval mode."""
    from fairseq import checkpoint_utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    state = load_checkpoint_state(path, unsafe=unsafe)
    cfg = state.get("cfg")
    if state.get("args") is not None:
        cfg = convert_namespace_to_omegaconf(state["args"])
    # Building a model draws random initial weights; keep the student's RNG stream untouched so
    # that the teacher's lazy load cannot change the student's dropout masks.
    with torch.random.fork_rng(devices=[]):
        teacher_task = _teacher_task(cfg, student_task, path, state["model"])
        models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task(
            [path], task=teacher_task, state=state
        )
    model = models[0]
    model.eval()
    model.requires_grad_(False)
    return model


@dataclass
class TeacherEnsemble:
    """One or more frozen teachers sharing the student's vocabulary."""

    models: List[torch.nn.Module]
    paths: Tuple[str, ...]
    device: Optional[torch.device] = None
    dtype: Optional[torch.dtype] = None

    def to(self, device: torch.device, dtype: torch.dtype) -> "TeacherEnsemble":
        """Move (in place) to the student's device/dtype; a no-op once there."""
        if self.device == torch.device(device) and self.dtype == dtype:
            return self
        for model in self.models:
            model.to(device=device, dtype=dtype)
            model.eval()
        self.device, self.dtype = torch.device(device), dtype
        return self

    @torch.no_grad()
    def kd_logits(self, net_input: Dict, temperature: float, topk: int = 0) -> torch.Tensor:
        """Logits ``z`` such that ``softmax(z / T)`` is the KD target distribution [B, L, V].

        Single teacher, full vocabulary: the teacher's own logits (no extra copy, exact).
        Ensemble and/or top-K: ``T * log(p_target)`` in float32, with ``p_target`` the averaged
        probabilities at T, top-K truncated as described in the module docstring.
        """
        for model in self.models:
            if model.training:  # belt and braces: nothing may switch a teacher to train mode
                model.eval()
        outputs = [model(**net_input)[0] for model in self.models]
        vocab = outputs[0].shape[-1]
        if len(self.models) == 1 and topk <= 0:
            return outputs[0]
        probs = None
        for logits in outputs:
            p = F.softmax(logits.float() / temperature, dim=-1)
            probs = p if probs is None else probs.add_(p)
        probs = probs.div_(len(outputs))
        if 0 < topk:
            values, indices = probs.topk(min(int(topk), vocab), dim=-1)
            probs = expand_topk(values, indices, vocab)
        return probs.clamp_min_(_TINY).log_().mul_(temperature)


def expand_topk(values: torch.Tensor, indices: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Dense target distribution from top-K probabilities [..., K] and their token ids.

    The K listed tokens keep their probabilities; the remaining mass ``1 - sum(values)`` is spread
    uniformly over the ``vocab_size - K`` other tokens (nothing to spread when K == V).
    """
    k = values.shape[-1]
    if k > vocab_size:
        raise ValueError(f"top-K size {k} exceeds the vocabulary size {vocab_size}")
    values = values.float()
    rest = (1.0 - values.sum(dim=-1, keepdim=True)).clamp_min(0.0)
    fill = rest / (vocab_size - k) if k < vocab_size else torch.zeros_like(rest)
    dense = fill.expand(*values.shape[:-1], vocab_size).clone()
    return dense.scatter_(-1, indices.long(), values)


def get_teacher(paths: Sequence[str], student_task, unsafe: bool = False) -> TeacherEnsemble:
    """The process-wide teacher ensemble for ``paths`` (loaded and checked on first use)."""
    key = (tuple(paths), bool(unsafe))
    ensemble = _TEACHERS.get(key)
    if ensemble is None:
        models = [load_teacher_model(path, student_task, unsafe=unsafe) for path in paths]
        ensemble = TeacherEnsemble(models=models, paths=tuple(paths))
        _TEACHERS[key] = ensemble
        logger.info(
            "loaded KD teacher(s) %s: %d parameters (not part of the student or its checkpoints)",
            ":".join(paths), sum(p.numel() for m in models for p in m.parameters()),
        )
    return ensemble


def clear_teacher_cache() -> None:
    """Forget loaded teachers (tests; long-lived processes switching teachers)."""
    _TEACHERS.clear()
