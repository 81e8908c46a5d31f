"""Tiny datasets written in the real on-disk formats torchvision reads, and the md5 patch that
makes torchvision (and transferlab.datasets.expected_files) accept them.

Each writer puts its files where torchvision looks under `cache` and returns the arrays it wrote,
in RawDataset layout, so a test can compare what `fetch` loads with what went in.
"""

from __future__ import annotations

import bz2
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck"]


def random_images(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images and labels 0..9 with every class present (n >= 10). Grey ones (N, H, W) are
    noise on a blank border of H // 8 pixels, as the digit sets are ink on a blank page: the
    default prepare.crop: bbox checks that premise on the data (colour ones are noise to the
    edge, as photos are)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    if len(shape) == 2 and (edge := max(1, shape[0] // 8)):
        images[:, :edge], images[:, -edge:], images[:, :, :edge], images[:, :, -edge:] = 0, 0, 0, 0
    labels = np.arange(n, dtype=np.int64) % 10
    return images, rng.permutation(labels)


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """IDX (LeCun's MNIST format), gzipped: magic 2051 for (N, H, W) images, 2049 for labels;
    big-endian int32 sizes, then the uint8 values. mtime=0: the same bytes every run."""
    magic = {3: 2051, 1: 2049}[array.ndim]
    header = struct.pack(f">{1 + array.ndim}I", magic, *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0))


def write_mnist(cache: Path, folder: str = "MNIST", n: int = 30, seed: int = 0):
    """<cache>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz."""
    raw = cache / folder / "raw"
    train_x, train_y = random_images(n, (28, 28), seed)
    test_x, test_y = random_images(10, (28, 28), seed + 1)
    write_idx_gz(raw / "train-images-idx3-ubyte.gz", train_x)
    write_idx_gz(raw / "train-labels-idx1-ubyte.gz", train_y)
    write_idx_gz(raw / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx_gz(raw / "t10k-labels-idx1-ubyte.gz", test_y)
    return train_x, train_y


def write_cifar10(cache: Path, per_batch: int = 6, seed: int = 0):
    """<cache>/cifar-10-batches-py/: data_batch_1..5, test_batch and batches.meta, pickled dicts
    as in the official archive; each image row is 1024 red, 1024 green, 1024 blue values."""
    folder = cache / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = random_images(5 * per_batch, (32, 32, 3), seed)
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    for b in range(5):
        part = slice(b * per_batch, (b + 1) * per_batch)
        batch = {"batch_label": f"training batch {b + 1} of 5", "labels": labels[part].tolist(),
                 "data": rows[part], "filenames": [f"img{i}.png" for i in range(per_batch)]}
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch, protocol=2))
    test_images, test_labels = random_images(20, (32, 32, 3), seed + 1)  # every class twice
    test = {"batch_label": "testing batch 1 of 1", "labels": test_labels.tolist(),
            "data": test_images.transpose(0, 3, 1, 2).reshape(20, 3072),
            "filenames": [f"t{i}.png" for i in range(20)]}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {"label_names": CIFAR_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return images, labels


def write_usps(cache: Path, images: np.ndarray, labels: np.ndarray, file: str = "usps.bz2") -> None:
    """<cache>/usps.bz2 (usps.t.bz2: the test split) in libsvm text: "label 1:v1 ... 256:v256", label = digit + 1 (1..10),
    values in [-1, 1]. `images` are given as floats in [-1, 1], shape (N, 16, 16)."""
    lines = []
    for image, label in zip(images, labels):
        values = " ".join(f"{i + 1}:{v:.6f}" for i, v in enumerate(image.ravel()))
        lines.append(f"{label + 1} {values}\n")
    (cache / file).write_bytes(bz2.compress("".join(lines).encode()))


def write_svhn(cache: Path, n: int = 20, seed: int = 0, split: str = "train"):
    """<cache>/train_32x32.mat (test_32x32.mat): X (32, 32, 3, N) uint8, y (N, 1) with 10 for the digit 0."""
    from scipy.io import savemat

    images, labels = random_images(n, (32, 32, 3), seed)
    y = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(-1, 1)
    cache.mkdir(parents=True, exist_ok=True)
    savemat(cache / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": y})
    return images, labels


def trust_fixture_md5s(monkeypatch, name: str, cache: Path) -> None:
    """Point torchvision's md5 table (class attributes, read by datasets.expected_files) at the
    md5s of the fixture files in `cache`: every check still runs, against these files."""
    import torchvision.datasets as tv
    from torchvision.datasets.utils import calculate_md5

    if name in ("mnist", "fashion_mnist"):
        cls = tv.MNIST if name == "mnist" else tv.FashionMNIST
        raw = cache / cls.__name__ / "raw"
        monkeypatch.setattr(cls, "resources", [(f, calculate_md5(raw / f)) for f, _ in cls.resources])
    elif name in ("usps", "svhn"):
        cls = tv.USPS if name == "usps" else tv.SVHN
        table = dict(cls.split_list)
        for split, (url, file, _) in cls.split_list.items():
            if (cache / file).is_file():  # the fixture's files: train, and test where written
                table[split] = [url, file, calculate_md5(cache / file)]
        monkeypatch.setattr(cls, "split_list", table)
    elif name == "cifar10":
        cls, folder = tv.CIFAR10, cache / tv.CIFAR10.base_folder
        for attr in ("train_list", "test_list"):
            listed = [[f, calculate_md5(folder / f)] for f, _ in getattr(cls, attr)]
            monkeypatch.setattr(cls, attr, listed)
        meta_md5 = calculate_md5(folder / cls.meta["filename"])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_md5})
    else:
        raise ValueError(f"no md5 table for {name}")
