"""Load fairseq checkpoints on torch >= 2.6 with ``weights_only=True``, without an unsafe opt-out.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True`` and refuses any pickled global
that is not allow-listed. fairseq-fixed 0.12.3.1 calls ``torch.load(f, map_location=cpu)``
without ``weights_only`` (``fairseq/checkpoint_utils.py::load_checkpoint_to_cpu``), so every
``fairseq-train --restore-file``, ``fairseq-generate`` and hub load of a fairseq checkpoint fails
with ``Unsupported global: GLOBAL argparse.Namespace``.

This module allow-lists exactly the data-only types fairseq checkpoints contain (found by trial on
checkpoints written by fairseq-train 0.12 and on a checkpoint holding a pickled OmegaConf config,
the format older fairseq versions used) and registers them with
``torch.serialization.add_safe_globals``. The plugin does that on import, so any fairseq command
run with ``--user-dir fairseq_plugin`` (or with the autoload hook installed) reads fairseq
checkpoints again, still through the weights-only unpickler: no code from a checkpoint runs.

``load_checkpoint_state`` is the teacher's loader: a static scan of the pickle first (so that a
file needing anything else is rejected with the file and *every* offending global named, before
anything is unpickled), then fairseq's own ``load_checkpoint_to_cpu`` (which also upgrades old
checkpoint layouts). ``unsafe=True`` (``--teacher-unsafe-load``) skips both protections and
unpickles with ``weights_only=False``: that executes whatever code the file contains.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import contextlib
import os
import pickle
import re
import struct
import typing
import zipfile
from typing import Any, Dict, Iterator, List

import torch

from .errors import LskdPluginError

UNSAFE_FLAG = "--teacher-unsafe-load"


class CheckpointLoadError(LskdPluginError, RuntimeError):
    """A checkpoint file exists but cannot be read (corrupt, not a torch file, or not safe)."""


def fairseq_safe_globals() -> List[Any]:
    """The allow-list: data-only types found in fairseq checkpoints.

    * ``argparse.Namespace``: ``cfg["model"]`` of every argparse-built architecture (e.g.
      ``--arch transformer``) in 0.12 checkpoints, and ``state["args"]`` of pre-0.10 checkpoints.
      It is the only global a 0.12 fairseq-train checkpoint needs.
    * OmegaConf containers/nodes and the type references in their metadata (``typing.Any``,
      ``collections.defaultdict``, ``dict``, ``list``, ``int``, ``float``, ``str``, ``bool``):
      checkpoints that pickled the config object itself instead of a plain dict.

    * ``fairseq.distributed.utils._TensorPlaceholder`` (a frozen dataclass holding one int): when
      distributed training resumes, rank 0 reads the checkpoint and broadcasts it to the other
      ranks as a pickle whose tensors are replaced by these placeholders; the other ranks unpickle
      it with ``torch.load`` too.

    * numpy arrays of numeric/bool/string dtypes (``numpy.ndarray``, ``numpy.dtype``, numpy's
      array reconstructor and the ``numpy.dtypes`` classes except ``ObjectDType``): fairseq-train
      with ``--eval-bleu`` keeps the best BLEU's n-gram counts as numpy arrays in the checkpoint.
      The reconstructor only rebuilds an array from its dtype and raw bytes; object arrays stay
      refused.

    Enums are not needed: fairseq stores its config with ``enum_to_str=True`` (its dynamic
    ``ChoiceEnum`` classes could not even be pickled by reference).
    """
    import numpy as np
    from fairseq.distributed.utils import _TensorPlaceholder
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

    return [
        argparse.Namespace,
        DictConfig, ListConfig, ContainerMetadata, Metadata,
        AnyNode, StringNode, IntegerNode, FloatNode, BooleanNode,
        _TensorPlaceholder,
        typing.Any, collections.defaultdict,
        np.ndarray, np.dtype, _numpy_reconstruct(), *_numpy_dtype_classes(),
        builtins.dict, builtins.list, builtins.int, builtins.float, builtins.str, builtins.bool,
    ]


def _numpy_reconstruct() -> Any:
    """numpy's ndarray pickle reconstructor (``numpy._core`` since numpy 2, ``numpy.core`` before)."""
    try:
        from numpy._core.multiarray import _reconstruct  # type: ignore[attr-defined]
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _numpy_dtype_classes() -> List[Any]:
    """numpy >= 1.25's per-dtype classes (``numpy.dtypes.Int64DType`` ...), object dtype excluded."""
    import numpy as np

    dtypes = getattr(np, "dtypes", None)
    if dtypes is None:
        return []
    return [getattr(dtypes, name) for name in sorted(dir(dtypes))
            if name.endswith("DType") and name != "ObjectDType" and isinstance(getattr(dtypes, name), type)]


def register_safe_globals() -> None:
    """Allow-list fairseq's checkpoint types for every ``weights_only`` load in this process.

    Idempotent (torch keeps a set). Deliberately global rather than a ``safe_globals`` context:
    the context manager removes its entries on exit, which would also undo an earlier global
    registration of the same types.
    """
    torch.serialization.add_safe_globals(fairseq_safe_globals())


def _safe_names() -> set:
    from torch import _weights_only_unpickler as wou

    return set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())


def unsafe_globals(path: str) -> List[str]:
    """Globals in the checkpoint's pickle that the weights-only unpickler would refuse.

    A static disassembly: nothing in the file is executed. Only for zip-format files (torch >= 1.6);
    legacy files return [] here and are vetted by the weights-only load itself.
    """
    if not zipfile.is_zipfile(path):
        return []
    register_safe_globals()
    return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))


def _unsafe_message(path: str, names: List[str]) -> str:
    return (
        f"teacher checkpoint {path} cannot be loaded safely: it needs the global(s) "
        f"{', '.join(names)}, which are not in lskd's allow-list of fairseq checkpoint types "
        f"(fairseq_plugin.safe_load.fairseq_safe_globals). Unpickling them could execute arbitrary "
        f"code. If you trust the file, pass {UNSAFE_FLAG} (loads with torch.load(weights_only=False), "
        f"which executes whatever code the file contains), or re-save it from a trusted environment."
    )


@contextlib.contextmanager
def _weights_only_disabled() -> Iterator[None]:
    """Make torch.load calls without an explicit ``weights_only`` unpickle fully, in this scope only.

    Uses torch's documented switch (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``, read at each call) so that
    fairseq's loader is used unchanged; the previous value is restored on exit.
    """
    key = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
    previous = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def load_checkpoint_state(path: str, unsafe: bool = False) -> Dict[str, Any]:
    """fairseq's ``load_checkpoint_to_cpu(path)`` with safe loading and clear errors.

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointLoadError` for a file
    that is corrupt / not a torch checkpoint, or that needs globals outside the allow-list
    (naming the file and the globals, and the ``--teacher-unsafe-load`` opt-in).
    """
    from fairseq import checkpoint_utils

    if not os.path.isfile(path):
        raise FileNotFoundError(f"teacher checkpoint not found: {path}")
    register_safe_globals()
    if not unsafe:
        try:
            names = unsafe_globals(path)
        except Exception as error:  # a zip that torch cannot parse
            raise CheckpointLoadError(
                f"teacher checkpoint {path} is corrupt or not a torch/fairseq checkpoint ({error})"
            ) from error
        if names:
            raise CheckpointLoadError(_unsafe_message(path, names))
    scope = _weights_only_disabled() if unsafe else contextlib.nullcontext()
    try:
        with scope:
            state = checkpoint_utils.load_checkpoint_to_cpu(path)
    except pickle.UnpicklingError as error:
        found = re.findall(r"GLOBAL (\S+) was not an allowed global", str(error))
        found += re.findall(r"whose module (\S+) is blocked", str(error))
        if found:
            raise CheckpointLoadError(_unsafe_message(path, sorted(set(found)))) from error
        raise CheckpointLoadError(
            f"teacher checkpoint {path} is corrupt or not a torch/fairseq checkpoint ({error})"
        ) from error
    except (KeyError, AttributeError, TypeError) as error:  # unpickled, but not fairseq's layout
        raise CheckpointLoadError(
            f"teacher checkpoint {path} is not a fairseq checkpoint (fairseq's loader failed on it: "
            f"{type(error).__name__}: {error})"
        ) from error
    except (RuntimeError, EOFError, ValueError, OSError, IndexError, struct.error, OverflowError,
            MemoryError) as error:  # what unpickling garbage raises (random bytes hit each of these)
        raise CheckpointLoadError(
            f"teacher checkpoint {path} is corrupt or not a torch/fairseq checkpoint "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from error
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointLoadError(
            f"teacher checkpoint {path} is not a fairseq checkpoint (no 'model' entry; keys: "
            f"{sorted(state) if isinstance(state, dict) else type(state).__name__})"
        )
    if state.get("cfg") is None and state.get("args") is None:
        raise CheckpointLoadError(
            f"teacher checkpoint {path} is not a fairseq checkpoint (neither 'cfg' nor 'args')"
        )
    return state
