"""Fashion-MNIST facts shared by the core, the study and the vision plugin: the class names and
where the offline copy lives (Debian package ``dataset-fashion-mnist``), defined once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_ENV", "DEFAULT_FASHION_MNIST_DIR", "fashion_mnist_dir"]

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
#: environment variable naming another directory with the four IDX files
FASHION_MNIST_ENV = "LSKD_FASHION_MNIST_DIR"
#: where ``apt-get install dataset-fashion-mnist`` puts them
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def fashion_mnist_dir(data_path: Optional[str] = None) -> Path:
    """``data_path`` if given, else ``$LSKD_FASHION_MNIST_DIR`` (an empty value counts as unset),
    else the Debian package's directory."""
    return Path(data_path or os.environ.get(FASHION_MNIST_ENV) or DEFAULT_FASHION_MNIST_DIR)
