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
import math
import os
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

from lskd_core.atomic import atomic_open

__all__ = ["FeatureFile", "FeaturesFileError", "load_features", "save_features", "REQUIRED_KEYS",
           "OPTIONAL_KEYS", "MAX_INFERRED_CLASSES"]

REQUIRED_KEYS = ("features", "labels")
OPTIONAL_KEYS = ("class_names", "weight", "bias", "meta", "logits")

# Without class_names / weight / bias / logits the class count is inferred as max(label) + 1, and
# every consumer allocates [K, D] float64 statistics. A K above the number of samples is normal
# (a small val subset of ImageNet), but one above max(N, this cap) is a damaged or mis-written
# label: refusing it keeps a single bad label (10**12) from becoming a MemoryError or a silent
# multi-gigabyte allocation. 2**16 leaves room for ImageNet-21k (21,841 classes).
MAX_INFERRED_CLASSES = 1 << 16

# CRC-32 of memory-mapped members is checked in blocks of this many bytes.
_CRC_BLOCK = 16 << 20


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
    k = _declared_classes(n, d, class_names, weight, bias, logits, where)
    _validate_labels(labels, n, k, where)


def _declared_classes(n: int, d: int, class_names: Optional[Sequence[str]],
                      weight: Optional[np.ndarray], bias: Optional[np.ndarray],
                      logits: Optional[np.ndarray], where: str) -> Optional[int]:
    """K as stated by class_names / weight / bias / logits (all must agree), else None."""
    k = None if class_names is None else len(class_names)
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
        k = logits.shape[1]
    return k


def _validate_labels(labels: np.ndarray, n: int, k: Optional[int], where: str) -> None:
    """Labels must be >= 0 and < K (declared), or below max(N, MAX_INFERRED_CLASSES) (inferred)."""
    if n == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        row = int(np.flatnonzero(labels < 0)[0])
        raise FeaturesFileError(f"{where}: label {lo} (row {row}) is negative; class labels are "
                                f"0..K-1: fix the labels")
    if k is not None:
        if hi >= k:
            row = int(np.flatnonzero(labels >= k)[0])
            raise FeaturesFileError(f"{where}: label {int(labels[row])} (row {row}) is out of range "
                                    f"for the file's {k} classes (0..{k - 1}): fix the labels")
        return
    bound = max(n, MAX_INFERRED_CLASSES)
    if hi >= bound:
        row = int(np.flatnonzero(labels >= bound)[0])
        raise FeaturesFileError(
            f"{where}: label {hi} (row {row}) would make {hi + 1} classes for {n} samples; without "
            f"class_names the class count is max(label) + 1 and must stay below "
            f"max(N, {MAX_INFERRED_CLASSES}): store class_names (or weight/bias) with the real "
            f"class count, or fix the labels")


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
        savez: Callable[..., None] = np.savez_compressed if compress else np.savez
        savez(fh, **arrays)


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
    _check_member_crc(path, info, start)  # before trusting a byte of the .npy header
    with open(path, "rb") as fh:
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
    size = math.prod(int(x) for x in shape)
    if size == 0:
        return None  # np.memmap refuses empty maps
    if offset + size * dtype.itemsize != start + info.compress_size:
        raise FeaturesFileError(f"features file {path}: member {member} is shorter than its "
                                f"header says; the file is damaged")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


def _check_member_crc(path: str, info: zipfile.ZipInfo, start: int) -> None:
    """Raise FeaturesFileError unless the stored bytes of ``info`` match its zip CRC-32.

    A memory map bypasses zipfile, and with it the CRC check that every other read gets, so a
    damaged byte would silently change the numbers. One sequential read of the member (page cache,
    ~GB/s) is the price of never measuring corrupt data.
    """
    crc = 0
    left = int(info.compress_size)
    with open(path, "rb") as fh:
        fh.seek(start)
        while left > 0:
            block = fh.read(min(left, _CRC_BLOCK))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            left -= len(block)
    if left > 0 or crc != info.CRC:
        raise FeaturesFileError(
            f"features file {path} is damaged: member {info.filename} fails its CRC-32 check "
            f"(re-export or re-copy the file)")


def _verify_member(zf: zipfile.ZipFile, member: str, path: str) -> None:
    """Check a member before numpy reads it: its .npy header must agree with the member's size.

    numpy allocates the array from the header's shape before reading a byte, and zipfile checks
    the CRC only at the end of the member, so a damaged (or hostile) header could otherwise ask
    for terabytes. The CRC itself is then checked by zipfile when numpy reads the member to its
    end (BadZipFile "Bad CRC-32"), which numpy always does.
    """
    info = zf.getinfo(member)
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise FeaturesFileError(f"features file {path}: member {member} has an unknown .npy "
                                    f"format version {version}")
        header_len = fh.tell()
    if not dtype.hasobject:  # object arrays are refused by np.load(allow_pickle=False)
        want = math.prod(int(x) for x in shape) * dtype.itemsize
        if header_len + want != info.file_size:
            raise FeaturesFileError(
                f"features file {path} is damaged: member {member} says shape {shape} "
                f"({want} bytes) but holds {info.file_size - header_len} bytes (re-export or "
                f"re-copy the file)")


def _end_record_entries(path: str) -> Optional[int]:
    """Member count stated by the zip's end-of-central-directory record (None if not found/zip64)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - (22 + 0xFFFF)))  # the record plus the longest possible comment
        tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    total = struct.unpack("<H", tail[at + 10:at + 12])[0]
    return None if total == 0xFFFF else int(total)


def _check_directory(path: str, zf: zipfile.ZipFile) -> None:
    """Damage in the central directory can drop or rename a member without any CRC noticing (an
    optional key such as ``bias`` would silently vanish): the directory must list as many members
    as the end record states, and each entry must point at a local header of the same name."""
    infos = zf.infolist()
    stated = _end_record_entries(path)
    if stated is not None and stated != len(infos):
        raise FeaturesFileError(f"features file {path} is damaged: its zip directory lists "
                                f"{len(infos)} of {stated} members (re-export or re-copy the file)")
    with open(path, "rb") as fh:
        for info in infos:
            fh.seek(info.header_offset)
            local = fh.read(30)
            if len(local) != 30 or local[:4] != b"PK\x03\x04":
                raise FeaturesFileError(f"features file {path} is damaged: member {info.filename} "
                                        f"has no local header (re-export or re-copy the file)")
            name = fh.read(struct.unpack("<H", local[26:28])[0])
            if name != info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"):
                raise FeaturesFileError(f"features file {path} is damaged: directory entry "
                                        f"{info.filename!r} points at member {name!r} (re-export "
                                        f"or re-copy the file)")


def _read_members(path: str, mmap_mode: Optional[str]) -> Dict[str, Optional[np.ndarray]]:
    """Every known key of the archive (None when absent), each member checked before use."""
    try:
        with np.load(path, allow_pickle=False) as npz, zipfile.ZipFile(path) as zf:
            _check_directory(path, zf)
            keys = set(npz.files)
            members = set(zf.namelist())
            missing = [k for k in REQUIRED_KEYS if k not in keys]
            if missing:
                raise FeaturesFileError(
                    f"features file {path} lacks required key(s) {missing}; found {sorted(keys)}")

            def get(key: str, mappable: bool = False) -> Optional[np.ndarray]:
                if key not in keys:
                    return None
                # np.load lists member "x.npy" (and a bare "x") as key "x"
                member = key + ".npy" if key + ".npy" in members else key
                if mappable and mmap_mode == "r":
                    mapped = _memmap_member(path, zf, member)
                    if mapped is not None:
                        return mapped
                _verify_member(zf, member, path)
                return npz[key]

            return {key: get(key, mappable=key in ("features", "logits"))
                    for key in REQUIRED_KEYS + OPTIONAL_KEYS}
    except FeaturesFileError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, struct.error, zlib.error,
            NotImplementedError, RuntimeError, OverflowError, SyntaxError, tokenize.TokenError) as exc:
        # NotImplementedError: unknown compression method; RuntimeError: "encrypted" flag set;
        # SyntaxError / TokenError: numpy parsing a garbled .npy header dict
        # numpy says "pickled data" for object arrays; a CRC error means a damaged archive
        raise FeaturesFileError(f"cannot read features file {path}: {exc}") from None


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
    arrays = _read_members(path, mmap_mode)
    features, labels = arrays["features"], arrays["labels"]
    if features is None or labels is None:  # pragma: no cover - REQUIRED_KEYS checked on read
        raise FeaturesFileError(f"features file {path} lacks features or labels")
    names_arr, meta_arr = arrays["class_names"], arrays["meta"]
    weight, bias, logits = arrays["weight"], arrays["bias"], arrays["logits"]
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
