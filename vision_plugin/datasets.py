"""Datasets for the vision trainer: Fashion-MNIST (offline IDX files), ImageFolder, CUB-200-2011.

* ``fashion-mnist``: the Debian package ``dataset-fashion-mnist`` (IDX files, gzip), read without
  torchvision; grayscale replicated to 3 channels so any torchvision model runs on it, at native 28x28
  or a ``crop_size``. ``train`` = the 60k training files, ``val`` = the 10k ``t10k`` files.
* ``imagefolder``: ``{root}/train`` and ``{root}/val``, one folder per class (ImageNet layout).
* ``cub``: CUB-200-2011 (``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
  ``classes.txt``, ``images/``); ``val`` = its test split, as in the paper's Sec. 5.

``stratified_indices`` caps a split at N samples with the class proportions kept (seeded), for
quick CPU runs. Every dataset returned by ``build_dataset`` exposes ``classes`` (names) and
``targets`` (int labels), in sample order.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lskd_core.fashion_mnist import (  # noqa: F401  (re-exported: the plugin's public names)
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ENV,
    fashion_mnist_dir,
)

DATASETS = ("imagefolder", "cub", "fashion-mnist")
SPLITS = ("train", "val")

# Training-set pixel statistics of Fashion-MNIST (0..1 scale).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DatasetError(ValueError):
    """A dataset is missing or malformed; the message names the path and the fix."""


# --------------------------------------------------------------------------- IDX / Fashion-MNIST


def read_idx(path: os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array (LeCun's MNIST format)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated (IDX header)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
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


# --------------------------------------------------------------------------- CUB-200-2011


def _cub_root(data_path: Path) -> Path:
    for candidate in (data_path, data_path / "CUB_200_2011"):
        if (candidate / "images.txt").is_file():
            return candidate
    raise DatasetError(
        f"CUB-200-2011 layout not found at {data_path}: expected images.txt, image_class_labels.txt, "
        f"train_test_split.txt, classes.txt and images/ there (or in {data_path / 'CUB_200_2011'})"
    )


def _read_pairs(path: Path) -> List[Tuple[str, str]]:
    if not path.is_file():
        raise DatasetError(f"CUB-200-2011 file {path} is missing")
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise DatasetError(f"{path}:{lineno}: expected '<id> <value>', got {line!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def read_cub_split(data_path: os.PathLike, split: str) -> Tuple[List[Tuple[Path, int]], List[str]]:
    """``([(image_path, label0), ...], class_names)`` of a CUB-200-2011 split (val = test split)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = _cub_root(Path(data_path))
    images = dict(_read_pairs(root / "images.txt"))
    labels = dict(_read_pairs(root / "image_class_labels.txt"))
    is_train = dict(_read_pairs(root / "train_test_split.txt"))
    class_rows = _read_pairs(root / "classes.txt")
    class_ids = [int(cid) for cid, _ in class_rows]
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise DatasetError(f"{root / 'classes.txt'}: class ids must be 1..K in order")
    # "001.Black_footed_Albatross" -> "Black_footed_Albatross"
    class_names = [name.split(".", 1)[1] if "." in name else name for _, name in class_rows]
    want = "1" if split == "train" else "0"
    samples = []
    for image_id in sorted(images, key=lambda s: int(s) if s.isdigit() else s):
        if image_id not in labels or image_id not in is_train:
            raise DatasetError(f"CUB image id {image_id} lacks a label or a train/test flag in {root}")
        if is_train[image_id] != want:
            continue
        label = int(labels[image_id]) - 1
        if not 0 <= label < len(class_names):
            raise DatasetError(f"CUB image id {image_id}: label {label + 1} outside classes.txt")
        samples.append((root / "images" / images[image_id], label))
    if not samples:
        raise DatasetError(f"CUB-200-2011 {split} split at {root} is empty")
    return samples, class_names


class BadSample(NamedTuple):
    """An image that could not be read or decoded; the trainer stops (naming it) or skips it."""

    path: str
    reason: str


# What PIL raises for missing, truncated or undecodable files (DecompressionBombError is neither).
def _decode_errors() -> Tuple[type, ...]:
    from PIL import Image

    return (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def open_rgb(path: os.PathLike):
    """The image at ``path`` as a fully decoded RGB PIL image, or a ``BadSample`` naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")  # convert() forces the decode: truncation shows up here
    except _decode_errors() as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return BadSample(str(path), reason)


class RandomResizedCropFlip:
    """torchvision's ``RandomResizedCrop(size) + RandomHorizontalFlip()`` (the training view of
    image-file datasets) with its parameters exposed: (top, left, height, width, flip).

    ``draw_params`` follows RandomResizedCrop's documented sampling (area scale uniform, log
    aspect ratio uniform, 10 tries, then a centre crop clamped to the ratio range) with an explicit
    generator; ``apply_params`` applies the same resized crop (bilinear, antialias) and flip.
    """

    def __init__(self, size: int, scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)):
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))

    def spec(self) -> dict:
        return {"kind": "random_resized_crop_flip", "size": self.size, "scale": list(self.scale),
                "ratio": list(self.ratio), "interpolation": "bilinear", "antialias": True,
                "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}

    def draw_params(self, img, generator: Optional[torch.Generator] = None) -> List[float]:
        import math

        width, height = img.size
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(self.scale[0], self.scale[1], generator=generator).item()
            aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
                left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
                break
        else:  # fallback: whole-image centre crop within the ratio range
            in_ratio = width / height
            if in_ratio < min(self.ratio):
                w, h = width, int(round(width / min(self.ratio)))
            elif in_ratio > max(self.ratio):
                h, w = height, int(round(height * max(self.ratio)))
            else:
                w, h = width, height
            top, left = (height - h) // 2, (width - w) // 2
        flip = bool(torch.rand(1, generator=generator).item() < 0.5)
        return [float(top), float(left), float(h), float(w), float(flip)]

    def apply_params(self, img, params) -> torch.Tensor:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        top, left, h, w, flip = (int(round(float(v))) for v in params[:5])
        img = TF.resized_crop(img, top, left, h, w, [self.size, self.size],
                              interpolation=InterpolationMode.BILINEAR, antialias=True)
        if flip:
            img = TF.hflip(img)
        tensor = TF.convert_image_dtype(TF.pil_to_tensor(img), torch.float32)
        return TF.normalize(tensor, IMAGENET_MEAN, IMAGENET_STD)


class ImageListDataset(Dataset):
    """(path, label) list -> PIL RGB image -> transform.

    An unreadable image yields a ``BadSample`` instead of raising inside a DataLoader worker
    (where the error would lose its file name under a long traceback); the trainer's collate step
    turns it into one clear error, or skips and counts it with ``--skip-bad-images``.
    """

    AUG_PARAMS = 5

    def __init__(self, samples: Sequence[Tuple[Path, int]], classes: Sequence[str], transform: Callable,
                 view: Optional[RandomResizedCropFlip] = None, extra_augment: bool = False):
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.classes = list(classes)
        self.transform = transform
        self.view = view  # the replayable training view (None for validation)
        self.extra_augment = extra_augment

    def __len__(self) -> int:
        return len(self.samples)

    def transform_spec(self) -> dict:
        if self.view is None:
            raise ValueError("this split has no training augmentation to replay")
        return {**self.view.spec(), "extra_augment": self.extra_augment}

    def load_raw(self, index: int):
        return open_rgb(self.samples[index][0])

    def draw_params(self, raw, generator: Optional[torch.Generator] = None) -> List[float]:
        assert self.view is not None
        return self.view.draw_params(raw, generator)

    def apply_params(self, raw, params) -> torch.Tensor:
        assert self.view is not None
        return self.view.apply_params(raw, params)

    def __getitem__(self, index: int):
        img = self.load_raw(index)
        if isinstance(img, BadSample):
            return img
        return self.transform(img), self.targets[index]


# --------------------------------------------------------------------------- subsets


def _allocate(counts: np.ndarray, cap: int) -> np.ndarray:
    """Per-class sample counts summing to ``cap``, proportional to ``counts`` (largest remainder);
    every non-empty class keeps at least one sample when ``cap`` allows it."""
    quota = counts * (cap / counts.sum())
    alloc = np.floor(quota).astype(np.int64)
    if cap >= np.count_nonzero(counts):
        alloc = np.maximum(alloc, np.minimum(counts, 1))
    alloc = np.minimum(alloc, counts)
    while alloc.sum() < cap:  # hand out the remainder by largest fractional quota (ties: lower class id)
        room = np.where(alloc < counts, quota - alloc, -np.inf)
        alloc[int(np.argmax(room))] += 1
    while alloc.sum() > cap:  # only after the at-least-one rule: take from the most over-served class
        excess = np.where(alloc > 1, alloc - quota, -np.inf)
        alloc[int(np.argmax(excess))] -= 1
    return alloc


def stratified_indices(labels: Sequence[int], cap: Optional[int], seed: int) -> np.ndarray:
    """Sorted indices of a seeded, class-stratified subset of at most ``cap`` samples.

    ``cap`` None (or >= len) keeps everything. Same labels + cap + seed -> same subset, so a
    trainer and the feature exporter select identical samples.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if cap is None or cap >= labels.size:
        return np.arange(labels.size)
    if cap <= 0:
        raise ValueError(f"sample cap must be a positive integer, got {cap!r}")
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse, minlength=classes.size)
    alloc = _allocate(counts, int(cap))
    rng = np.random.default_rng(seed)
    chosen = []
    for k in range(classes.size):
        members = np.flatnonzero(inverse == k)
        chosen.append(rng.permutation(members)[: alloc[k]])
    return np.sort(np.concatenate(chosen))


class LabelledSubset(Dataset):
    """``torch.utils.data.Subset`` that keeps ``classes`` and ``targets``."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        base_targets = dataset.targets
        self.targets = [int(base_targets[i]) for i in self.indices]
        self.classes = list(dataset.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


# --------------------------------------------------------------------------- builders


def _image_transforms(train: bool, crop_size: int, resize_size: int, extra_augment: bool = False):
    from torchvision import transforms as T

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        steps = [T.RandomResizedCrop(crop_size, antialias=True), T.RandomHorizontalFlip()]
        if extra_augment:  # the paper's CUB recipe: + random rotation and colour jitter (App. training details)
            steps += [T.RandomRotation(15), T.ColorJitter(0.4, 0.4, 0.4)]
        return T.Compose(steps + [T.PILToTensor(), T.ConvertImageDtype(torch.float32), normalize])
    return T.Compose([T.Resize(resize_size, antialias=True), T.CenterCrop(crop_size),
                      T.PILToTensor(), T.ConvertImageDtype(torch.float32), normalize])


def build_dataset(name: str, data_path: Optional[str], split: str, augment: bool,
                  crop_size: Optional[int] = None, val_resize_size: Optional[int] = None,
                  max_samples: Optional[int] = None, subset_seed: int = 0,
                  extra_augment: bool = False) -> Dataset:
    """One split of a dataset, optionally capped to a stratified subset.

    ``augment`` turns on training augmentation (off for validation and for feature export).
    ``crop_size`` defaults to 28 for fashion-mnist (native) and 224 otherwise. ``extra_augment``
    adds random rotation and colour jitter to image-file training sets (the paper's CUB recipe).
    """
    if name not in DATASETS:
        raise ValueError(f"--dataset must be one of {DATASETS}, got {name!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name == "fashion-mnist":
        images, labels = load_fashion_mnist(fashion_mnist_dir(data_path), split)
        dataset: Dataset = GrayscaleTensorDataset(images, labels, FASHION_MNIST_CLASSES, augment, crop_size)
    else:
        if not data_path:
            raise DatasetError(f"--data-path is required for --dataset {name}")
        crop = int(crop_size or 224)
        resize = int(val_resize_size or round(crop * 256 / 224))
        transform = _image_transforms(augment, crop, resize, extra_augment and augment)
        view = RandomResizedCropFlip(crop) if augment else None
        if name == "cub":
            samples, classes = read_cub_split(data_path, split)
        else:
            from torchvision.datasets import ImageFolder

            folder = Path(data_path) / split
            if not folder.is_dir():
                raise DatasetError(
                    f"image folder {folder} does not exist: --dataset imagefolder expects "
                    f"{Path(data_path) / 'train'} and {Path(data_path) / 'val'}, one sub-folder per class"
                )
            try:  # ImageFolder only lists the files here; decoding happens per sample (open_rgb)
                listing = ImageFolder(str(folder))
            except (FileNotFoundError, OSError) as exc:
                raise DatasetError(f"cannot read image folder {folder}: {exc}") from exc
            samples, classes = [(Path(p), int(t)) for p, t in listing.samples], list(listing.classes)
        dataset = ImageListDataset(samples, classes, transform, view, extra_augment and augment)
    if max_samples is not None:
        dataset = LabelledSubset(dataset, stratified_indices(dataset.targets, max_samples, subset_seed))
    return dataset


def filter_classes(dataset: Dataset, keep: Sequence[int]) -> Dataset:
    """Subset holding only samples whose label is in ``keep`` (labels keep their original ids)."""
    keep_set = {int(k) for k in keep}
    bad = sorted(k for k in keep_set if not 0 <= k < len(dataset.classes))
    if bad:
        raise ValueError(f"--classes {bad} outside [0, {len(dataset.classes)})")
    indices = [i for i, t in enumerate(dataset.targets) if int(t) in keep_set]
    return LabelledSubset(dataset, indices)
