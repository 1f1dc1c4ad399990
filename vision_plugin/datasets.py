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

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from lskd_core.fashion_mnist import (  # noqa: F401  (re-exported: the plugin's public names)
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_ENV,
    fashion_mnist_dir,
)
from vision_plugin.data_errors import BadSample, DatasetError  # noqa: F401  (re-exported)
from vision_plugin.fashion_mnist_data import (  # noqa: F401  (re-exported)
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    SPLITS,
    GrayscaleTensorDataset,
    load_fashion_mnist,
    read_idx,
)

DATASETS = ("imagefolder", "cub", "fashion-mnist")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

    def __getitems__(self, indices: Sequence[int]) -> list:
        mapped = [self.indices[i] for i in indices]
        batched = getattr(self.dataset, "__getitems__", None)
        return batched(mapped) if batched is not None else [self.dataset[i] for i in mapped]


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
