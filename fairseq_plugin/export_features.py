"""Decoder features of target tokens and teacher entropy per T, for the report's translation analyses.

    python -m fairseq_plugin.export_features DATA/bin --path CKPT --split test --out FEATS.npz \\
        [--max-sentences 500] [--max-classes 50 --min-count 20] \\
        [--entropy-temperatures 1 2 64 --entropy-out ENTROPY.json]

One teacher-forced pass over (a seeded subset of) a split:

* **features** (the project's features .npz, :mod:`lskd_core.features_io`): for every target token
  whose id is one of the *classes*, the decoder's penultimate state, i.e. the input of the output
  projection (fairseq's ``extract_features``: after the final layer norm when the architecture has
  one). Classes = the ``--max-classes`` most frequent target tokens of the exported sentences that
  occur at least ``--min-count`` times, special symbols (BOS, pad, EOS, unk) excluded; ties go to
  the lower token id. ``labels`` index the classes, ``class_names`` are the token strings,
  ``weight`` (``bias`` when the projection has one) are the output-projection rows of the classes,
  and ``meta`` holds the token ids, counts and what was exported (docs/formats.md). The classes
  depend on the data only, so every model exported with the same flags gets the same classes.
* **entropy** (``--entropy-out``, JSON): per temperature, the entropy of ``softmax(z / T)`` over the
  whole vocabulary at every target token of the exported sentences (EOS included, padding not),
  summed per sentence, with the token count per sentence: the report's mean per-token entropy and
  its interval over sentences come from these sums. Computed in float64.

The checkpoint is read with the plugin's safe loader (``torch.load(weights_only=True)`` with an
allow-list of fairseq's data types) and its dictionaries are checked symbol by symbol against
``DATA``'s (:func:`fairseq_plugin.teacher.load_teacher_model`). Errors a user can fix (missing or
corrupt checkpoint, a split that ``DATA`` lacks, another dictionary, bad flags) are one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

# fairseq at the top: the study's warm server (lskd_core.study.warm_start) pays these imports once
# for every export it forks (importing them starts no thread)
from fairseq import tasks, utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from omegaconf import open_dict
from tqdm import tqdm

from lskd_core.atomic import atomic_write_json
from lskd_core.features_io import save_features

from .errors import MissingInputError, UsageError, run_cli
from .safe_load import load_checkpoint_state
from .teacher import load_teacher_model
from .teacher_cache import _batches, split_files

__all__ = ["choose_classes", "sentence_subset", "token_entropy", "export", "main"]

# Rows of float64 logits per entropy chunk: 512 x V=32k x 8 bytes = 128 MiB at most.
_ENTROPY_ROWS = 512


# ------------------------------------------------------------------------------ pure parts ---
def sentence_subset(num_sentences: int, max_sentences: Optional[int], seed: int) -> np.ndarray:
    """Sorted sample ids to export: all, or a seeded uniform subset of ``max_sentences``."""
    if not max_sentences or max_sentences >= num_sentences:
        return np.arange(num_sentences, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_sentences, size=int(max_sentences), replace=False)).astype(np.int64)


def choose_classes(token_counts: np.ndarray, max_classes: int, min_count: int,
                   nspecial: int) -> List[int]:
    """Token ids of the ``max_classes`` most frequent tokens with at least ``min_count``
    occurrences, ids below ``nspecial`` (BOS, pad, EOS, unk) excluded; ties go to the lower id.
    Returned by decreasing count."""
    counts = np.asarray(token_counts, dtype=np.int64).copy()
    counts[:nspecial] = 0
    ids = np.arange(len(counts))
    order = np.lexsort((ids, -counts))  # by count (descending), then id
    return [int(i) for i in order[:max_classes] if counts[i] >= min_count and counts[i] > 0]


def token_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy (nats, float64) of ``softmax(logits / T)`` per row of ``logits`` [N, V]."""
    out = []
    for start in range(0, logits.shape[0], _ENTROPY_ROWS):
        z = logits[start:start + _ENTROPY_ROWS].double() / temperature
        logp = torch.log_softmax(z, dim=-1)
        out.append(-(logp.exp() * logp).sum(dim=-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


# ----------------------------------------------------------------------------------- setup ---
def _load(data: str, path: str, split: str, unsafe: bool):
    """The task over ``data`` (the checkpoint's task settings), its ``split`` and the model."""
    if not os.path.isfile(path):
        raise MissingInputError(f"checkpoint not found: {path} (from --path)")
    if not os.path.isdir(data):
        raise MissingInputError(f"data directory {data} not found: pass fairseq-preprocess's --destdir")
    state = load_checkpoint_state(path, unsafe=unsafe)
    cfg: Any = state.get("cfg")
    if state.get("args") is not None:
        cfg = convert_namespace_to_omegaconf(state["args"])
    task_cfg = cfg.task
    with open_dict(task_cfg):
        task_cfg.data = data
        if "eval_bleu" in task_cfg:
            task_cfg.eval_bleu = False
    task = tasks.setup_task(task_cfg)  # infers the languages from DATA when the checkpoint has none
    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    try:
        split_files(data, split, src, tgt)
    except MissingInputError:
        have = sorted({p.name.split(".")[0] for p in Path(data).glob(f"*.{src}-{tgt}.{tgt}.idx")})
        raise MissingInputError(f"split {split!r} not found in {data} (binarised splits there: "
                                f"{', '.join(have) or 'none'}): pass --split with one of them") from None
    del state
    model = load_teacher_model(path, task, unsafe=unsafe)
    task.load_dataset(split)
    return task, model, cfg


def _output_projection(model) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    proj = getattr(model.decoder, "output_projection", None)
    if not isinstance(proj, torch.nn.Linear):
        raise UsageError(f"the model's decoder ({type(model.decoder).__name__}) has no linear output "
                         f"projection (adaptive softmax?): its penultimate states have no class rows")
    return proj.weight.detach(), None if proj.bias is None else proj.bias.detach()


# ---------------------------------------------------------------------------------- export ---
@torch.no_grad()
def _forward(model, sample) -> Tuple[torch.Tensor, torch.Tensor]:
    """Decoder penultimate states [B, L, D] and logits [B, L, V] of a teacher-forced batch."""
    net = sample["net_input"]
    feats, _ = model.extract_features(net["src_tokens"], net["src_lengths"], net["prev_output_tokens"])
    return feats, model.decoder.output_layer(feats)


def _check_flags(out: Optional[str], entropy_out: Optional[str], entropy_temperatures: Sequence[float],
                 max_tokens: int, max_classes: int, min_count: int) -> None:
    if out is None and entropy_out is None:
        raise UsageError("nothing to write: pass --out and/or --entropy-out")
    if int(max_tokens) < 1 or int(max_classes) < 1 or int(min_count) < 1:
        raise UsageError("--max-tokens, --max-classes and --min-count must be >= 1")
    if entropy_out is not None and not entropy_temperatures:
        raise UsageError("--entropy-out needs --entropy-temperatures T [T ...]")
    for t in entropy_temperatures:
        if not (math.isfinite(t) and t > 0):
            raise UsageError(f"--entropy-temperatures must be positive, got {t}")


def _token_counts(dataset, ids: np.ndarray, vocab: int) -> np.ndarray:
    counts = np.zeros(vocab, dtype=np.int64)
    for i in ids.tolist():
        counts += np.bincount(dataset.tgt[i].numpy(), minlength=vocab)[:vocab]
    return counts


def _one_pass(model, dataset, ids: np.ndarray, lookup: torch.Tensor, pad: int, temperatures: Sequence[float],
              want_features: bool, max_tokens: int, device: torch.device) -> Dict[str, Any]:
    """Class rows per sentence id and per-sentence entropy sums (and token counts) per T."""
    rows_of: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}  # sentence id -> its class rows, labels
    ent_sums = {float(t): np.zeros(len(ids)) for t in temperatures}
    ent_tokens = np.zeros(len(ids), dtype=np.int64)
    position = {int(i): k for k, i in enumerate(ids.tolist())}
    sizes = np.maximum(dataset.src_sizes, dataset.tgt_sizes)
    batches = list(_batches(ids, sizes, int(max_tokens)))
    # disable=None: a bar on a terminal only (a study run's log gets none)
    for batch_ids in tqdm(batches, desc="export_features", unit="batch", disable=None):
        sample = dataset.collater([dataset[i] for i in batch_ids])
        if device.type == "cuda":
            sample = utils.move_to_cuda(sample, device)
        feats, logits = _forward(model, sample)
        target = sample["target"].cpu()
        mask = target.ne(pad)
        feats, logits = feats.float().cpu(), logits.float().cpu()
        sample_ids = sample["id"].tolist()
        if want_features:
            for b, sample_id in enumerate(sample_ids):
                keep = lookup[target[b][mask[b]]]
                chosen = keep >= 0
                rows_of[int(sample_id)] = (feats[b][mask[b]][chosen].numpy(), keep[chosen].numpy())
        if ent_sums:
            rows = logits[mask]
            owner = torch.tensor([position[int(s)] for s in sample_ids])  # row -> its sentence's position
            owner_rows = owner[:, None].expand_as(mask)[mask].numpy()
            ent_tokens += np.bincount(owner_rows, minlength=len(ids))
            for t in ent_sums:
                ent_sums[t] += np.bincount(owner_rows, weights=token_entropy(rows, t).numpy(), minlength=len(ids))
    return {"rows_of": rows_of, "ent_sums": ent_sums, "ent_tokens": ent_tokens}


def _write_features(out: str, model, ids: np.ndarray, rows_of: Dict[int, Tuple[np.ndarray, np.ndarray]],
                    classes: List[int], names: List[str], meta: Dict[str, Any]) -> Dict[str, int]:
    weight, bias = _output_projection(model)
    # rows in sentence-id order, tokens in sentence order: independent of the batching
    parts = [rows_of[int(i)] for i in ids.tolist()]
    features = np.concatenate([f for f, _ in parts]) if parts else np.zeros((0, weight.shape[1]), np.float32)
    labels = np.concatenate([lab for _, lab in parts]) if parts else np.zeros(0, np.int64)
    save_features(out, features.astype(np.float32), labels.astype(np.int64), class_names=names,
                  weight=weight[classes].float().cpu().numpy(),
                  bias=None if bias is None else bias[classes].float().cpu().numpy(), meta=meta)
    return {"rows": int(features.shape[0]), "dim": int(features.shape[1])}


def _write_entropy(path: str, ent_sums: Dict[float, np.ndarray], ent_tokens: np.ndarray, vocab: int,
                   meta: Dict[str, Any]) -> None:
    total = max(1, int(ent_tokens.sum()))
    atomic_write_json(Path(path), {
        "temperatures": sorted(ent_sums), "vocab_size": vocab, "max_entropy": math.log(vocab),
        "sentences": int(len(ent_tokens)), "tokens": int(ent_tokens.sum()),
        "tokens_per_sentence": ent_tokens.tolist(),
        "entropy_sum_per_sentence": {repr(t): v.tolist() for t, v in sorted(ent_sums.items())},
        "mean_entropy": {repr(t): float(v.sum() / total) for t, v in sorted(ent_sums.items())},
        "scope": "every target token of the exported sentences (EOS included, padding excluded), "
                 "teacher forcing, softmax(z / T) over the whole vocabulary, float64",
        "meta": {k: meta[k] for k in ("checkpoint", "data", "split", "sentences", "sentences_in_split",
                                      "subset_seed", "max_sentences", "arch")}})


def _meta(path: str, data: str, split: str, task, cfg, ids: np.ndarray, dataset, counts: np.ndarray,
          classes: List[int], settings: Dict[str, Any]) -> Dict[str, Any]:
    meta = {"task": "translation", "checkpoint": os.path.abspath(path), "data": os.path.abspath(data),
            "split": split, "sentences": int(len(ids)), "sentences_in_split": int(len(dataset)), **settings,
            "token_ids": classes, "token_counts": [int(counts[c]) for c in classes],
            "target_tokens": int(counts.sum()), "source_lang": task.cfg.source_lang,
            "target_lang": task.cfg.target_lang, "arch": str(getattr(cfg.model, "arch", "?") or "?"),
            "features": "decoder output before the output projection (extract_features), target tokens "
                        "of the classes, teacher forcing; rows by sentence id, then position"}
    kd_t = getattr(cfg.criterion, "kd_temperature", None) if cfg.get("criterion") is not None else None
    if kd_t is not None:
        meta["kd_temperature"] = float(kd_t)
    return meta


def export(data: str, path: str, out: Optional[str], *, split: str = "test",
           max_sentences: Optional[int] = 500, subset_seed: int = 0, max_classes: int = 50,
           min_count: int = 20, entropy_temperatures: Sequence[float] = (), entropy_out: Optional[str] = None,
           max_tokens: int = 4096, device: Optional[str] = None, unsafe: bool = False) -> Dict[str, Any]:
    """Export features (``out``) and/or the entropy sums (``entropy_out``); returns a summary."""
    _check_flags(out, entropy_out, entropy_temperatures, max_tokens, max_classes, min_count)
    started = time.process_time()
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    task, model, cfg = _load(data, path, split, unsafe)
    model.to(torch_device)
    dataset = task.dataset(split)
    tdict = task.target_dictionary
    ids = sentence_subset(len(dataset), max_sentences, subset_seed)
    counts = _token_counts(dataset, ids, len(tdict))
    classes = choose_classes(counts, int(max_classes), int(min_count), tdict.nspecial)
    if out is not None and len(classes) < 3:
        raise UsageError(f"only {len(classes)} target token(s) occur >= {min_count} times in the {len(ids)} "
                         f"exported sentences of {split!r}: lower --min-count or raise --max-sentences")
    lookup = np.full(len(tdict), -1, dtype=np.int64)
    lookup[classes] = np.arange(len(classes))
    got = _one_pass(model, dataset, ids, torch.from_numpy(lookup), tdict.pad(),
                    list(entropy_temperatures) if entropy_out else [], out is not None, max_tokens, torch_device)
    meta = _meta(path, data, split, task, cfg, ids, dataset, counts, classes,
                 {"subset_seed": int(subset_seed), "max_sentences": max_sentences,
                  "max_classes": int(max_classes), "min_count": int(min_count)})
    summary: Dict[str, Any] = {"sentences": int(len(ids)), "classes": len(classes)}
    if out is not None:
        summary.update(_write_features(out, model, ids, got["rows_of"], classes, [tdict[c] for c in classes], meta))
    if entropy_out is not None:
        _write_entropy(entropy_out, got["ent_sums"], got["ent_tokens"], len(tdict), meta)
        summary["tokens"] = int(got["ent_tokens"].sum())
    summary["cpu_s"] = round(time.process_time() - started, 3)
    return summary


# ------------------------------------------------------------------------------------- CLI ---
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fairseq_plugin.export_features",
                                description="Decoder features of target tokens (features .npz) and teacher "
                                            "entropy per T (JSON) of a fairseq translation model.")
    p.add_argument("data", help="fairseq data directory (fairseq-preprocess --destdir)")
    p.add_argument("--path", required=True, help="one fairseq checkpoint")
    p.add_argument("--split", default="test", help="binarised split to read (default: test)")
    p.add_argument("--out", default=None, help="features .npz to write")
    p.add_argument("--max-sentences", type=int, default=500,
                   help="export a seeded random subset of this many sentences (0: all; default 500)")
    p.add_argument("--subset-seed", type=int, default=0, help="seed of that subset (default 0)")
    p.add_argument("--max-classes", type=int, default=50, help="most frequent target tokens kept as classes")
    p.add_argument("--min-count", type=int, default=20, help="occurrences a class token needs (default 20)")
    p.add_argument("--entropy-temperatures", type=float, nargs="+", default=[],
                   help="temperatures at which to sum the per-token entropy of softmax(z / T)")
    p.add_argument("--entropy-out", default=None, help="entropy JSON to write")
    p.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per batch")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--teacher-unsafe-load", action="store_true",
                   help="torch.load(weights_only=False): EXECUTES CODE from the file; trusted files only")
    return p


def _main(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    _main.out = args.out or args.entropy_out  # type: ignore[attr-defined]
    if args.max_sentences is not None and args.max_sentences < 0:
        raise UsageError(f"--max-sentences must be >= 0, got {args.max_sentences}")
    if args.device not in (None, "cpu", "cuda") and not str(args.device).startswith("cuda:"):
        raise UsageError(f"--device must be cpu or cuda, got {args.device!r}")
    summary = export(args.data, args.path, args.out, split=args.split, max_sentences=args.max_sentences or None,
                     subset_seed=args.subset_seed, max_classes=args.max_classes, min_count=args.min_count,
                     entropy_temperatures=args.entropy_temperatures, entropy_out=args.entropy_out,
                     max_tokens=args.max_tokens, device=args.device, unsafe=args.teacher_unsafe_load)
    print(json.dumps(summary))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI; bad flags, missing inputs, other dictionaries and OS errors -> one line, exit status 2."""
    _main.out = None  # type: ignore[attr-defined]
    return run_cli(_main, argv, prog="export_features", fallback_path=lambda: getattr(_main, "out", None))


if __name__ == "__main__":
    sys.exit(main())
