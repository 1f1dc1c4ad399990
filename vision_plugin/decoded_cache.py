"""Decoded copies of compressed dataset files, so that every run does not decompress them again.

Decompressing Fashion-MNIST's gzip files took ~0.3 CPU s per process, in each of the ~300
processes of the demo grid. :func:`cached_decode` keeps the decoded array as ``<sha256>.npy``,
keyed by the sha256 of the *compressed bytes*: a replaced or modified file has another key, so a
stale copy can never be served. Files are written atomically (temporary name, then rename) and
loaded with ``allow_pickle=False``; a copy that cannot be loaded, or that does not hold the array
the decoder would give (dtype/shape), is decoded again and replaced. Caching is best effort: an
unwritable cache directory only means decoding every time.

Location: ``$LSKD_DATA_CACHE`` (``off`` turns the cache off), else ``$XDG_CACHE_HOME/lskd/decoded``,
else ``~/.cache/lskd/decoded``. Fashion-MNIST takes 55 MB there.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np

__all__ = ["CACHE_ENV", "cache_dir", "cached_decode"]

CACHE_ENV = "LSKD_DATA_CACHE"


def cache_dir() -> Optional[Path]:
    """Where decoded copies live, or None when the cache is turned off."""
    setting = os.environ.get(CACHE_ENV, "")
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lskd" / "decoded"


def _load(path: Path) -> Optional[np.ndarray]:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # missing, truncated or not an .npy: decode again


def _store(path: Path, array: np.ndarray) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # read-only or full: the caller still has its decoded array


def cached_decode(raw: bytes, decode: Callable[[], np.ndarray], dtype: Optional[np.dtype] = None,
                  shape: Optional[tuple] = None) -> np.ndarray:
    """``decode()``'s array for the compressed bytes ``raw``, from the cache when it holds it.

    ``dtype``/``shape``, when known from a header without decoding, must match the cached copy.
    """
    root = cache_dir()
    if root is None:
        return decode()
    path = root / (hashlib.sha256(raw).hexdigest() + ".npy")
    cached = _load(path)
    if cached is not None and (dtype is None or cached.dtype == dtype) and (shape is None or cached.shape == shape):
        return cached
    array = decode()
    _store(path, array)
    return array
