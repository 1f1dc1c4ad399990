"""Safe checkpoint I/O: atomic saves, ``weights_only`` loads, state-dict extraction and checks.

Our checkpoints hold only tensors and plain Python types (``args`` is stored as a dict), so they
load with ``torch.load(weights_only=True)``. torchvision reference checkpoints store ``args`` as an
``argparse.Namespace``; that one class is allow-listed explicitly. Nothing ever falls back to
``weights_only=False``: a file that needs arbitrary unpickling is refused with a clear error.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from lskd_core.atomic import atomic_open
from vision_plugin.models import final_linear_state_keys


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, unsafe, or does not fit the model."""


# Messages of torch's zip writer when a write fails part-way (full disk, quota, I/O error).
_WRITE_FAILURE = re.compile(r"unexpected pos|PytorchStreamWriter failed|file write failed", re.IGNORECASE)


def save_atomic(obj: Any, path: os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, then ``os.replace``: a reader (or a
    resume after a kill) sees either the old complete file or the new complete file.

    torch's zip writer reports a full disk as ``RuntimeError: ... unexpected pos ...`` without the
    file name; that becomes an ``OSError(ENOSPC)`` naming ``path`` (the old file is left intact).
    """
    try:
        with atomic_open(path, "wb") as fh:
            torch.save(obj, fh)
    except RuntimeError as exc:
        if not _WRITE_FAILURE.search(str(exc)):
            raise
        raise OSError(errno.ENOSPC, "writing the checkpoint failed part-way (torch: "
                      f"{str(exc).strip().splitlines()[0][:120]}); is the disk full?", str(path)) from None


# The only non-tensor, non-builtin type a checkpoint may hold: torchvision's reference script
# stores its ``args`` as an ``argparse.Namespace``.
ALLOWED_GLOBALS = (argparse.Namespace,)


def _weights_only_load(path: Path, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` with ``ALLOWED_GLOBALS`` allowed for this call.

    torch's ``safe_globals`` context *removes* its entries on exit, even ones the caller had added
    with ``add_safe_globals`` before; so only the entries missing from the process-wide list are
    added (and later removed), and the caller's allow-list is left exactly as it was.
    """
    already = set(map(id, torch.serialization.get_safe_globals()))
    missing = [g for g in ALLOWED_GLOBALS if id(g) not in already]
    scope = torch.serialization.safe_globals(missing) if missing else contextlib.nullcontext()
    with scope:
        return torch.load(path, map_location=map_location, weights_only=True)


def _blocked_globals(path: Path) -> List[str]:
    """Globals in the file's pickle that the weights-only unpickler refuses (static scan: the
    pickle is disassembled, never run); [] when the file is not a zip checkpoint or unreadable."""
    try:
        if not zipfile.is_zipfile(path):
            return []
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a damaged archive: the load error below describes it
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in ALLOWED_GLOBALS}
    return sorted(n for n in names if n not in allowed)


def load_checkpoint(path: os.PathLike, map_location: Any = "cpu") -> Any:
    """Load ``path`` with ``weights_only=True`` (argparse.Namespace allow-listed); clear errors.

    A file that needs any other global is refused with the blocked type(s) named and a safe way
    out; nothing ever falls back to ``weights_only=False``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return _weights_only_load(path, map_location)
    except (PermissionError, IsADirectoryError):
        raise
    except Exception as exc:  # zip errors, EOF, UnpicklingError from the weights-only unpickler, ...
        blocked = _blocked_globals(path)
        if blocked:
            raise CheckpointError(
                f"checkpoint {path} cannot be loaded safely: it needs {', '.join(blocked)}, which is not "
                f"in lskd's allow-list (tensors, plain Python types, argparse.Namespace); unpickling it "
                f"could run code, so lskd refuses. If you trust the file, re-save just its weights in a "
                f"trusted environment (torch.save({{'model': model.state_dict()}}, 'weights.pth')) and pass that"
            ) from None
        text = str(exc).strip()
        reason = text.splitlines()[0][:200] if text else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} is not a readable PyTorch checkpoint (corrupt, truncated or not written "
            f"by torch.save: {reason}); re-create or re-download it"
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def extract_state_dict(obj: Any, path: os.PathLike = "<checkpoint>") -> Dict[str, torch.Tensor]:
    """The model weights inside a loaded checkpoint.

    Accepts our checkpoints and torchvision reference checkpoints (``{"model": state_dict, ...}``),
    ``{"state_dict": ...}`` files, and raw state dicts. Strips the ``module.`` prefix of
    DDP-wrapped saves and the ``_orig_mod.`` prefix of ``torch.compile`` saves.
    """
    state = None
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and _is_state_dict(obj[key]):
                state = obj[key]
                break
        if state is None and _is_state_dict(obj):
            state = obj
    if state is None:
        raise CheckpointError(
            f"{path} holds no model weights: expected a state dict or a dict with a 'model' state dict"
        )
    out = dict(state)
    for prefix in ("module.", "_orig_mod."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix):]: v for k, v in out.items()}
    return out


def checkpoint_num_classes(obj: Any, state: Mapping[str, torch.Tensor], model: nn.Module) -> Optional[int]:
    """Class count of a checkpoint: its ``num_classes`` field, else the rows of the final layer's
    weight as found in ``model``'s layout; None when neither is available."""
    if isinstance(obj, Mapping) and isinstance(obj.get("num_classes"), int):
        return int(obj["num_classes"])
    weight_key, _ = final_linear_state_keys(model)
    if weight_key in state and state[weight_key].dim() == 2:
        return int(state[weight_key].shape[0])
    return None


def check_fits(model: nn.Module, state: Mapping[str, torch.Tensor], model_name: str, path: os.PathLike,
               what: str = "model") -> None:
    """Raise CheckpointError naming missing/unexpected keys and shape mismatches, if any."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
        raise CheckpointError(
            f"{what} checkpoint {path} does not match architecture {model_name!r}: " + ", ".join(parts)
            + ". Pass the --model/--teacher the checkpoint was trained with."
        )


def load_model_weights(model: nn.Module, model_name: str, path: os.PathLike, num_classes: int,
                       what: str = "model") -> Dict[str, Any]:
    """Load ``path`` into ``model`` after checking class count and architecture.

    Returns the loaded checkpoint object's metadata (``{}`` for raw state dicts).
    """
    obj = load_checkpoint(path)
    state = extract_state_dict(obj, path)
    found = checkpoint_num_classes(obj, state, model)
    if found is not None and found != num_classes:
        raise CheckpointError(
            f"{what} checkpoint {path} predicts {found} classes but the dataset has {num_classes} "
            f"classes; the {what} must have the same class count"
        )
    check_fits(model, state, model_name, path, what)
    model.load_state_dict(state)
    if isinstance(obj, Mapping) and "model" in obj:
        return {k: v for k, v in obj.items() if k not in ("model", "optimizer", "lr_scheduler", "scaler")}
    return {}
