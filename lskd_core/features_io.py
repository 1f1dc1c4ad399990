"""Read and write the penultimate-layer features file (.npz) described in docs/formats.md.

Keys (all arrays; no pickled objects, so files load with ``allow_pickle=False``):

* ``features`` float [N, D]: penultimate-layer activations (float16/32/64);
* ``labels`` int [N]: class index of each row;
* optional ``class_names`` str [K]; ``weight`` float [K, D] and ``bias`` float [K] of the final
  layer (the projection plot of App. F needs them); ``logits`` float [N, K];
* optional ``meta``: a JSON object stored as a 0-d string (model, checkpoint, split, temperature...).

``save_features`` writes atomically (temporary file in the same folder, then ``os.replace``) so a
reader never sees half a file. ``load_features(path, mmap_mode="r")`` memory-maps the arrays that
were stored uncompressed (``np.savez``, our default) instead of reading them, so an ImageNet-sized
train split (1.3M x 2048 float16, 5.3 GB) costs no resident memory until it is walked in chunks.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from lskd_core.atomic import atomic_open

__all__ = ["FeatureFile", "FeaturesFileError", "load_features", "save_features", "REQUIRED_KEYS",
           "OPTIONAL_KEYS"]

REQUIRED_KEYS = ("features", "labels")
OPTIONAL_KEYS = ("class_names", "weight", "bias", "meta", "logits")


class FeaturesFileError(ValueError):
    """A features file exists but is not a valid lskd features archive."""


@dataclass
class FeatureFile:
    """Contents of a features file; see the module docstring for shapes."""

    features: np.ndarray
    labels: np.ndarray
    class_names: Optional[List[str]] = None
    weight: Optional[np.ndarray] = None
    bias: Optional[np.ndarray] = None
    meta: Dict[str, Any] = field(default_factory=dict)
    logits: Optional[np.ndarray] = None

    @property
    def num_samples(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def declared_num_classes(self) -> Optional[int]:
        """K stated by the file itself (class_names, weight, bias or logits), else None."""
        if self.class_names is not None:
            return len(self.class_names)
        for arr, axis in ((self.weight, 0), (self.bias, 0), (self.logits, 1)):
            if arr is not None:
                return int(arr.shape[axis])
        return None


# ----------------------------------------------------------------------------------------------
# validation (shared by save and load so a file we write always loads)
# ----------------------------------------------------------------------------------------------

def _validate(features: np.ndarray, labels: np.ndarray, class_names: Optional[Sequence[str]],
              weight: Optional[np.ndarray], bias: Optional[np.ndarray],
              logits: Optional[np.ndarray], where: str) -> None:
    if features.ndim != 2:
        raise FeaturesFileError(f"{where}: features must be 2-D [N, D], got shape {features.shape}")
    if not (np.issubdtype(features.dtype, np.floating) or np.issubdtype(features.dtype, np.integer)):
        raise FeaturesFileError(f"{where}: features must be numeric, got dtype {features.dtype}")
    if labels.ndim != 1:
        raise FeaturesFileError(f"{where}: labels must be 1-D [N], got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise FeaturesFileError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    n, d = features.shape
    if labels.shape[0] != n:
        raise FeaturesFileError(
            f"{where}: labels has {labels.shape[0]} entries but features has {n} rows")
    k = None
    if class_names is not None:
        k = len(class_names)
    if weight is not None:
        if weight.ndim != 2:
            raise FeaturesFileError(f"{where}: weight must be 2-D [K, D], got shape {weight.shape}")
        if weight.shape[1] != d:
            raise FeaturesFileError(
                f"{where}: weight has dimension {weight.shape[1]} but features have dimension {d}")
        if k is not None and weight.shape[0] != k:
            raise FeaturesFileError(
                f"{where}: weight has {weight.shape[0]} rows but there are {k} class_names")
        k = weight.shape[0]
    if bias is not None:
        if bias.ndim != 1:
            raise FeaturesFileError(f"{where}: bias must be 1-D [K], got shape {bias.shape}")
        if k is not None and bias.shape[0] != k:
            raise FeaturesFileError(f"{where}: bias has {bias.shape[0]} entries but K = {k}")
        k = bias.shape[0]
    if logits is not None:
        if logits.ndim != 2 or logits.shape[0] != n:
            raise FeaturesFileError(
                f"{where}: logits must be [N={n}, K], got shape {logits.shape}")
        if k is not None and logits.shape[1] != k:
            raise FeaturesFileError(f"{where}: logits has {logits.shape[1]} columns but K = {k}")


# ----------------------------------------------------------------------------------------------
# save
# ----------------------------------------------------------------------------------------------

def save_features(path: "os.PathLike[str] | str", features: np.ndarray, labels: np.ndarray,
                  class_names: Optional[Sequence[str]] = None, weight: Optional[np.ndarray] = None,
                  bias: Optional[np.ndarray] = None, meta: Optional[Mapping[str, Any]] = None,
                  logits: Optional[np.ndarray] = None, compress: bool = False) -> None:
    """Write a features file atomically (docs/formats.md, "Features file").

    ``compress=False`` (default) stores arrays uncompressed so ``load_features(mmap_mode="r")``
    can memory-map them. ``meta`` must be JSON-serialisable.
    """
    features = np.asarray(features)
    labels = np.asarray(labels)
    weight = None if weight is None else np.asarray(weight)
    bias = None if bias is None else np.asarray(bias)
    logits = None if logits is None else np.asarray(logits)
    names = None if class_names is None else [str(c) for c in class_names]
    _validate(features, labels, names, weight, bias, logits, where=f"save_features({path})")
    arrays: Dict[str, np.ndarray] = {"features": features, "labels": labels}
    if names is not None:
        # fixed-width unicode, never object dtype: loads without pickle
        arrays["class_names"] = np.array(names, dtype=np.str_)
    if weight is not None:
        arrays["weight"] = weight
    if bias is not None:
        arrays["bias"] = bias
    if logits is not None:
        arrays["logits"] = logits
    try:
        meta_text = json.dumps(dict(meta or {}), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must be JSON-serialisable: {exc}") from None
    arrays["meta"] = np.array(meta_text, dtype=np.str_)

    path = os.fspath(path)
    with atomic_open(path, "wb") as fh:
        # a file object stops numpy from appending ".npz" to the temporary name
        (np.savez_compressed if compress else np.savez)(fh, **arrays)


# ----------------------------------------------------------------------------------------------
# load
# ----------------------------------------------------------------------------------------------

def _memmap_member(path: str, zf: zipfile.ZipFile, member: str) -> Optional[np.ndarray]:
    """Memory-map an uncompressed .npy member of a zip archive, or None if that is impossible."""
    info = zf.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:  # pragma: no cover - future formats: fall back to reading
            return None
        if dtype.hasobject:
            return None
        offset = fh.tell()
    if int(np.prod(shape)) == 0:
        return None  # np.memmap refuses empty maps
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


def load_features(path: "os.PathLike[str] | str", mmap_mode: Optional[str] = None) -> FeatureFile:
    """Load and validate a features file.

    Raises ``FileNotFoundError`` for a missing file and :class:`FeaturesFileError` (a ValueError)
    for a file that is not a zip/.npz, holds pickled objects, lacks ``features``/``labels`` or has
    inconsistent shapes. ``mmap_mode="r"`` memory-maps ``features`` (and ``logits``) when they were
    stored uncompressed.
    """
    path = os.fspath(path)
    if mmap_mode not in (None, "r"):
        raise ValueError(f"mmap_mode must be None or 'r', got {mmap_mode!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"features file not found: {path}")
    if os.path.isdir(path):
        raise FeaturesFileError(f"features file {path} is a directory, expected an .npz file")
    if not zipfile.is_zipfile(path):
        raise FeaturesFileError(
            f"features file {path} is not an .npz (zip) archive; it may be corrupt or truncated")
    try:
        with np.load(path, allow_pickle=False) as npz, zipfile.ZipFile(path) as zf:
            keys = set(npz.files)
            missing = [k for k in REQUIRED_KEYS if k not in keys]
            if missing:
                raise FeaturesFileError(
                    f"features file {path} lacks required key(s) {missing}; found {sorted(keys)}")

            def get(key: str, mappable: bool = False) -> Optional[np.ndarray]:
                if key not in keys:
                    return None
                if mappable and mmap_mode == "r":
                    mapped = _memmap_member(path, zf, key + ".npy")
                    if mapped is not None:
                        return mapped
                return npz[key]

            features = get("features", mappable=True)
            labels = get("labels")
            names_arr = get("class_names")
            weight = get("weight")
            bias = get("bias")
            logits = get("logits", mappable=True)
            meta_arr = get("meta")
    except FeaturesFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, struct.error) as exc:
        # numpy says "pickled data" for object arrays; a CRC error means a damaged archive
        raise FeaturesFileError(f"cannot read features file {path}: {exc}") from None

    class_names = None
    if names_arr is not None:
        if names_arr.ndim != 1 or names_arr.dtype.kind not in "US":
            raise FeaturesFileError(
                f"features file {path}: class_names must be a 1-D string array, got "
                f"dtype {names_arr.dtype} shape {names_arr.shape}")
        class_names = [x.decode() if isinstance(x, bytes) else str(x) for x in names_arr.tolist()]
    meta: Dict[str, Any] = {}
    if meta_arr is not None:
        try:
            raw = meta_arr[()] if meta_arr.ndim == 0 else meta_arr.reshape(-1)[0]
            # np.bytes_ (files written by other tools) decodes like class_names does
            meta = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise FeaturesFileError(f"features file {path}: meta is not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise FeaturesFileError(f"features file {path}: meta must be a JSON object")
    _validate(features, labels, class_names, weight, bias, logits, where=f"features file {path}")
    return FeatureFile(features=features, labels=labels, class_names=class_names, weight=weight,
                       bias=bias, meta=meta, logits=logits)
