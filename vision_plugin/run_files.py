"""Files of a training run: output-directory check, checkpoints, resume, metrics, TensorBoard."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from torch import nn

from lskd_core.atomic import atomic_write_json, atomic_write_text
from vision_plugin.checkpoint import (
    CheckpointError,
    check_fits,
    checkpoint_num_classes,
    extract_state_dict,
    load_checkpoint,
    save_atomic,
)
from vision_plugin.eta_monitor import eta_scalars


def prepare_output_dir(path: os.PathLike) -> Path:
    """Create ``path`` and prove it writable before any compute is spent: a file in the way, a
    dangling symlink, a read-only file system or missing permission raise the OSError (with the
    path) here, not after the first epoch."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
        pass
    return path


def write_json_atomic(obj: Any, path: os.PathLike) -> None:
    atomic_write_json(path, obj)


def append_jsonl(obj: Dict[str, Any], path: os.PathLike) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(obj) + "\n")
        fh.flush()


def plain_args(args: argparse.Namespace) -> Dict[str, Any]:
    """Args as a dict of plain types (checkpoints must load with ``weights_only=True``)."""
    return {k: (v if v is None or isinstance(v, (bool, int, float, str)) else
                list(v) if isinstance(v, (list, tuple)) else str(v)) for k, v in vars(args).items()}


def save_checkpoint(state: Dict[str, Any], output_dir: os.PathLike, epoch: int) -> None:
    """``model_{epoch}.pth`` then ``checkpoint.pth``, each written atomically (tmp + os.replace).
    A kill between the two leaves ``checkpoint.pth`` one epoch behind: the resume repeats it."""
    output_dir = Path(output_dir)
    save_atomic(state, output_dir / f"model_{epoch}.pth")
    save_atomic(state, output_dir / "checkpoint.pth")


def load_resume_checkpoint(path: os.PathLike, model: nn.Module, model_name: str, num_classes: int
                           ) -> Dict[str, Any]:
    """Load ``path`` (safe) into ``model`` after class-count and architecture checks; return the
    checkpoint dict (optimizer, lr_scheduler, epoch, history, ...)."""
    ckpt = load_checkpoint(path)
    state = extract_state_dict(ckpt, path)
    found = checkpoint_num_classes(ckpt, state, model)
    if found is not None and found != num_classes:
        raise CheckpointError(f"--resume {path} predicts {found} classes but the dataset has {num_classes}")
    check_fits(model, state, model_name, path, what="--resume")
    model.load_state_dict(state)
    return ckpt if isinstance(ckpt, dict) else {"model": state}


def rewrite_metrics_for_resume(path: Path, args_dict: Dict[str, Any], history: List[Dict[str, Any]],
                               start_epoch: int) -> None:
    """metrics.jsonl after a resume = original start line + the checkpoint's epoch history + a
    resume event; epochs logged after the checkpoint (the lost, repeated epoch) are dropped."""
    start_line = None
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
        try:
            obj = json.loads(first)
            if obj.get("event") == "start":
                start_line = obj
        except (json.JSONDecodeError, AttributeError):
            pass
    lines = [start_line or {"event": "start", "args": args_dict}] + list(history)
    lines.append({"event": "resume", "epoch": start_epoch, "args": args_dict})
    atomic_write_text(path, "".join(json.dumps(line) + "\n" for line in lines))


def start_metrics(path: Path, args_dict: Dict[str, Any], resumed: bool, history: List[Dict[str, Any]],
                  start_epoch: int) -> None:
    """Start (or, resuming, rewrite) metrics.jsonl; a finished marker (result.json) from an earlier
    run must not outlive this one, so it is removed first."""
    stale = path.parent / "result.json"
    if stale.exists():
        stale.unlink()
    if resumed:
        rewrite_metrics_for_resume(path, args_dict, history, start_epoch)
    else:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"event": "start", "args": args_dict}) + "\n")


def tensorboard(output_dir: Path) -> Optional[Any]:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: events are optional
        return None
    return SummaryWriter(log_dir=str(output_dir / "tensorboard"))


def log_scalars(writer: Optional[Any], record: Dict[str, Any], epoch: int) -> None:
    if writer is None:
        return
    for key, value in record.items():
        if isinstance(value, (int, float)) and key != "epoch":
            writer.add_scalar(key, value, epoch)
    if isinstance(record.get("eta"), dict):  # --eta-reference: eta/S1, eta/S2, eta/share
        for name, value in eta_scalars(record["eta"]).items():
            writer.add_scalar(name, value, epoch)
    writer.flush()
