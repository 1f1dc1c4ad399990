"""Fashion-MNIST from its offline IDX files (Debian ``dataset-fashion-mnist``), without torchvision.

``load_fashion_mnist`` reads a split's images and labels; ``GrayscaleTensorDataset`` serves them
normalised, grayscale replicated to 3 channels (so any torchvision model runs on it), at native
28x28 or a ``crop_size``, with the replayable pad-crop + flip augmentation of
:mod:`vision_plugin.aug_stream` and batched fetching.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lskd_core.fashion_mnist import DEFAULT_FASHION_MNIST_DIR, FASHION_MNIST_CLASSES
from vision_plugin.data_errors import DatasetError
from vision_plugin.decoded_cache import cached_decode

__all__ = ["FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "read_idx", "load_fashion_mnist", "GrayscaleTensorDataset"]

# Training-set pixel statistics of Fashion-MNIST (0..1 scale).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
SPLITS = ("train", "val")

_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array (LeCun's MNIST format).

    A gzip file is decompressed once per content: the decoded array is kept in the decoded-data
    cache (:mod:`vision_plugin.decoded_cache`, keyed by the sha256 of the file's bytes), since
    decompressing Fashion-MNIST's training images took ~0.3 CPU s in every run.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc}") from exc
    if path.suffix != ".gz":
        return _parse_idx(data, path)
    header = _idx_header(_gunzip_prefix(data, 4 + 4 * 255))
    dtype, shape = (header[0], header[1]) if header else (None, None)
    return cached_decode(data, lambda: _parse_idx(_gunzip(data, path), path), dtype=dtype, shape=shape)


def _gunzip_prefix(data: bytes, size: int) -> bytes:
    """The first ``size`` decompressed bytes (an IDX header) without decompressing the rest."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, size)
    except zlib.error:
        return b""  # _gunzip will report the damage


def _idx_magic_ok(head: bytes) -> bool:
    return len(head) >= 4 and head[0] == 0 and head[1] == 0 and head[2] in _IDX_DTYPES


def _idx_header(head: bytes) -> Optional[Tuple[np.dtype, tuple, int]]:
    """(dtype, dims, header length) from an IDX file's first bytes; None when they are not one."""
    if not _idx_magic_ok(head) or len(head) < 4 + 4 * head[3]:
        return None
    end = 4 + 4 * head[3]
    return np.dtype(_IDX_DTYPES[head[2]]), tuple(struct.unpack(f">{head[3]}I", head[4:end])), end


def _gunzip(data: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc}") from exc


def _parse_idx(data: bytes, path: Path) -> np.ndarray:
    parsed = _idx_header(data)
    if parsed is None:
        if not _idx_magic_ok(data):
            raise DatasetError(f"{path} is not an IDX file (bad magic number)")
        raise DatasetError(f"{path} is truncated (IDX header)")
    dtype, dims, header = parsed
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(f"{path} is truncated or corrupt: {len(data) - header} data bytes, expected {expected}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DatasetError(
        f"Fashion-MNIST file {root / (stem + '.gz')} not found. Install the offline copy with "
        f"`apt-get install dataset-fashion-mnist` (files land in {DEFAULT_FASHION_MNIST_DIR}) or point "
        f"--data-path at a directory holding {stem}.gz"
    )


def load_fashion_mnist(root: os.PathLike, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, 28, 28]`` and labels ``int64 [N]`` of a Fashion-MNIST split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"Fashion-MNIST directory {root} does not exist. Install it with "
            f"`apt-get install dataset-fashion-mnist` or pass --data-path DIR"
        )
    image_stem, label_stem = _FMNIST_FILES[split]
    images = read_idx(_find_idx(root, image_stem))
    labels = read_idx(_find_idx(root, label_stem)).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"Fashion-MNIST {split} files in {root} disagree: images {images.shape}, labels {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
        raise DatasetError(f"Fashion-MNIST {split} labels in {root} out of range [0, 10)")
    return images, labels


class GrayscaleTensorDataset(Dataset):
    """In-memory uint8 grayscale images -> normalised float ``[3, S, S]`` (channel replicated).

    Training augmentation: random crop with zero padding (2 px at 28x28) and horizontal flip,
    drawn from torch's global RNG, which the trainer reseeds each epoch (so resumed runs replay it).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str], train: bool,
                 crop_size: Optional[int] = None, mean: float = FASHION_MNIST_MEAN, std: float = FASHION_MNIST_STD):
        # Copies: the IDX reader returns read-only views of the decompressed bytes.
        self.images = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64, copy=True))
        self.targets: List[int] = self.labels.tolist()
        self.classes = list(classes)
        self.train = bool(train)
        native = int(self.images.shape[-1])
        self.size = int(crop_size or native)
        if self.size < 8:
            raise ValueError(f"--crop-size must be >= 8, got {self.size}")
        self.resize = self.size != native
        self.pad = max(1, round(2 * self.size / 28))
        self.mean, self.std = float(mean), float(std)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    # Replayable augmentation (vision_plugin.aug_stream): params = (top, left, flip).
    AUG_PARAMS = 3

    def transform_spec(self) -> dict:
        return {"kind": "pad_crop_flip", "size": self.size, "pad": self.pad, "resize": self.resize,
                "mean": self.mean, "std": self.std, "channels": 3}

    def load_raw(self, index: int) -> torch.Tensor:
        """The un-augmented image ``[1, S, S]`` in [0, 1] (resized to the crop size if needed)."""
        img = self.images[index].to(torch.float32).div_(255.0).unsqueeze(0)  # [1, H, W]
        if self.resize:
            img = F.interpolate(img.unsqueeze(0), size=(self.size, self.size), mode="bilinear",
                                align_corners=False, antialias=True).squeeze(0)
        return img

    def draw_params(self, raw: torch.Tensor, generator: Optional[torch.Generator] = None) -> List[float]:
        """Pad-crop offset and flip, drawn exactly as ``__getitem__`` draws them (same RNG calls)."""
        top, left = torch.randint(0, 2 * self.pad + 1, (2,), generator=generator).tolist()
        flip = bool(torch.rand((), generator=generator) < 0.5)
        return [float(top), float(left), float(flip)]

    def apply_params(self, raw: torch.Tensor, params) -> torch.Tensor:
        top, left, flip = (int(round(float(v))) for v in params[:3])
        # Zero padding = background colour of Fashion-MNIST.
        padded = F.pad(raw, (self.pad, self.pad, self.pad, self.pad))
        img = padded[:, top:top + self.size, left:left + self.size]
        if flip:
            img = img.flip(-1)
        return self._finish(img)

    def _finish(self, img: torch.Tensor) -> torch.Tensor:
        img = (img - self.mean) / self.std
        # Replicate grayscale to 3 channels: any torchvision model (3-channel stem) runs unchanged.
        return img.expand(3, -1, -1).contiguous()

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        raw = self.load_raw(index)
        if self.train:  # torch's global RNG, which the trainer reseeds each epoch
            return self.apply_params(raw, self.draw_params(raw)), int(self.targets[index])
        return self._finish(raw), int(self.targets[index])

    # Batched fetching (the DataLoader calls __getitems__ with a batch's indices). Per-sample
    # Python work was ~40 % of a small CPU run; the batch versions do the same element-wise
    # operations in the same order (and the same RNG calls), so their items are bit-identical.

    def load_raw_batch(self, indices: Sequence[int]) -> Optional[torch.Tensor]:
        """``load_raw`` of several images, ``[B, 1, S, S]``; None when resizing (kept per image)."""
        if self.resize:
            return None
        return self.images[torch.as_tensor(list(indices), dtype=torch.long)].to(torch.float32).div_(255.0).unsqueeze(1)

    def apply_params_batch(self, raws: torch.Tensor, params: Sequence[Sequence[float]]) -> torch.Tensor:
        """``apply_params`` of each ``raws[k]`` with ``params[k]``: ``[B, 3, S, S]``."""
        padded = F.pad(raws, (self.pad, self.pad, self.pad, self.pad))
        views = torch.empty_like(raws)
        for k, p in enumerate(params):
            top, left, flip = (int(round(float(v))) for v in p[:3])
            crop = padded[k, :, top:top + self.size, left:left + self.size]
            views[k] = crop.flip(-1) if flip else crop
        return self._finish_batch(views)

    def _finish_batch(self, imgs: torch.Tensor) -> torch.Tensor:
        imgs = (imgs - self.mean) / self.std
        return imgs.expand(-1, 3, -1, -1).contiguous()

    def __getitems__(self, indices: Sequence[int]) -> List[Tuple[torch.Tensor, int]]:
        raws = self.load_raw_batch(indices)
        if raws is None:
            return [self[i] for i in indices]
        if self.train:  # the draws of __getitem__, sample after sample: the same global-RNG stream
            images = self.apply_params_batch(raws, [self.draw_params(raws[k]) for k in range(len(indices))])
        else:
            images = self._finish_batch(raws)
        return [(img, int(self.targets[i])) for img, i in zip(images, indices)]


