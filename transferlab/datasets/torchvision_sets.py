"""Datasets through torchvision: downloaded once into data.cache_dir, md5-verified on each load.

Every file is checked against the md5 torchvision lists before anything is loaded: the same
params must give the same bytes, and a truncated download must not become a dataset.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from urllib.error import URLError

from transferlab.datasets import Dataset, Where
from transferlab.errors import UserError, error_line

DATASETS = (
    Dataset("mnist", "60,000 digits, 28x28", ("test",), downloads=True),
    Dataset("fashion_mnist", "60,000 clothing photos, 28x28, classes \"T-shirt/top\", "
            "\"Trouser\", ...", ("test",), downloads=True),
    Dataset("usps", "7,291 digits, 16x16", ("test",), downloads=True),
    Dataset("svhn", "73,257 house-number digits, 32x32 colour", ("test",), downloads=True),
    Dataset("cifar10", "50,000 objects, 32x32 colour, classes \"airplane\", \"automobile\", "
            "...", ("test",), downloads=True),
)


# name -> (torchvision.datasets class, the keyword that selects its training split). Every one
# of them also has an official test split (train=False / split="test").
TORCHVISION = {
    "mnist": ("MNIST", {"train": True}),
    "fashion_mnist": ("FashionMNIST", {"train": True}),
    "usps": ("USPS", {"train": True}),
    "svhn": ("SVHN", {"split": "train"}),
    "cifar10": ("CIFAR10", {"train": True}),
}


def split_kwargs(name: str, split: str) -> dict:
    """torchvision's keyword for `split` of dataset `name`: {"train": False}, {"split": "test"}."""
    (key, _), = TORCHVISION[name][1].items()
    return {key: split == "train"} if key == "train" else {key: split}
# Class names come from torchvision's `.classes` for these; the digit sets all use DIGITS, so
# that a digit source and a digit target name their classes alike (MNIST's own are "0 - zero").
NAMED_CLASSES = ("fashion_mnist", "cifar10")
# torchvision's urlopen has no timeout: a silent network would hang on the OS's TCP timeout
# (~2 min per attempt, several attempts per file); 30 s without a byte is a dead connection.
DOWNLOAD_TIMEOUT_S = 30


class ExpectedFile(NamedTuple):
    path: Path  # where torchvision looks for it
    md5: str    # torchvision's checksum of the official file
    url: str    # where it comes from (for cifar10: the archive that holds it)


def _torchvision_class(name: str) -> type:
    import torchvision.datasets

    return getattr(torchvision.datasets, TORCHVISION[name][0])


def expected_files(name: str, cache_dir: Path, split: str = "train") -> list[ExpectedFile]:
    """Every file torchvision needs for `split` ("train" or "test") of `name`, with md5 and URL.

    Read from the torchvision class attributes (MNIST.mirrors/resources, USPS/SVHN.split_list,
    CIFAR10.url/train_list/test_list/meta), the one md5 table: torchvision re-checks some of
    these md5s itself, so a test that uses fixture files patches those attributes, not this.
    """
    cls = _torchvision_class(name)
    if name in ("mnist", "fashion_mnist"):
        raw = cache_dir / cls.__name__ / "raw"  # MNIST.raw_folder
        # All four archives: torchvision's MNIST won't load the training split without the test one.
        return [ExpectedFile(raw / file, md5, cls.mirrors[0] + file) for file, md5 in cls.resources]
    if name in ("usps", "svhn"):
        url, file, md5 = cls.split_list[split]
        return [ExpectedFile(cache_dir / file, md5, url)]
    # cifar10: torchvision md5s all six batches on every load, and the meta file with the names.
    listed = [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]
    return [ExpectedFile(cache_dir / cls.base_folder / file, md5, cls.url) for file, md5 in listed]


def check_md5s(files: list[ExpectedFile]) -> None:
    """Fail on the first file that is present but not the official one (missing ones pass)."""
    from torchvision.datasets.utils import calculate_md5

    for f in files:
        if f.path.is_file() and (actual := calculate_md5(f.path)) != f.md5:
            raise UserError(f"{f.path} has md5 {actual}, expected {f.md5}: it is corrupt or not the "
                            f"official file: delete it and run again to download it, or put the "
                            f"official file from {f.url} there")


def _gunzipped_md5(path: Path) -> str:
    digest = hashlib.md5()
    with gzip.open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_unpacked(files: list[ExpectedFile]) -> None:
    """torchvision's MNIST reads the unpacked copy of each .gz and only checks that it exists, so
    the md5 of the archive guarantees nothing unless the copy matches it (~0.4 s for 47 MB of
    MNIST training images on this 2-core VM)."""
    from torchvision.datasets.utils import calculate_md5

    for f in files:
        unpacked = f.path.with_suffix("")
        if f.path.suffix == ".gz" and f.path.is_file() and unpacked.is_file() \
                and _gunzipped_md5(f.path) != calculate_md5(unpacked):
            raise UserError(f"{unpacked} differs from the verified {f.path.name} next to it: delete "
                            f"{unpacked.name} and run again (torchvision unpacks it again)")



def missing_message(name: str, missing: list[ExpectedFile], cache_dir: Path, why: str) -> str:
    """One line: the first missing file, where to put it, where it comes from, the others."""
    first = missing[0]
    if first.url.rsplit("/", 1)[-1] == first.path.name:
        fix = f"download {first.url} into {first.path.parent}/"
    else:
        fix = f"download {first.url} and extract it in {cache_dir}/"
    also = f" (also missing: {', '.join(f.path.name for f in missing[1:])})" if missing[1:] else ""
    return f"{name}: {first.path} is missing ({why}): {fix}{also}"


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def to_raw(name: str, dataset):
    """torchvision's in-memory training split in our layout: (N, H, W) or (N, H, W, 3) uint8."""
    import numpy as np

    from transferlab.rawdata import DIGITS, RawDataset

    images = np.asarray(dataset.data)  # MNIST: a torch uint8 tensor; USPS: uint8 0..255 already
    if name == "svhn":
        images = images.transpose(0, 2, 3, 1)  # (N, 3, 32, 32) -> (N, 32, 32, 3)
    labels = dataset.labels if name == "svhn" else dataset.targets  # SVHN's '10' is 0 already
    classes = tuple(dataset.classes) if name in NAMED_CLASSES else DIGITS
    return RawDataset(np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64), 255, classes)


def load_torchvision(name: str, cache_dir: Path, download: bool, split: str = "train"):
    """Verify what is in the cache, let torchvision download what is missing, then load.

    Once every file is in place and verified, torchvision's download=True only unpacks MNIST's
    .gz files: nothing touches the network. (A cifar-10-python.tar.gz put in the cache by hand
    is found by its md5 and extracted, also offline.)
    """
    files = expected_files(name, cache_dir, split)
    check_md5s(files)
    check_unpacked(files)
    missing = [f for f in files if not f.path.is_file()]
    if missing and not download:
        raise UserError(missing_message(name, missing, cache_dir, "downloads are off"))
    cls = _torchvision_class(name)
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            dataset = cls(cache_dir, download=True, **split_kwargs(name, split))
    # torchvision's MNIST wraps URLError in RuntimeError; a partial download is an OSError.
    except (URLError, OSError, RuntimeError) as err:
        if still_missing := [f for f in files if not f.path.is_file()]:
            raise UserError(missing_message(name, still_missing, cache_dir,
                                            f"download failed: {error_line(err)}")) from None
        check_md5s(files)  # an interrupted or wrong download
        raise
    if missing:  # just downloaded: torchvision checked some of it, this checks all of it
        check_md5s(files)
        if still_missing := [f for f in files if not f.path.is_file()]:
            raise UserError(missing_message(name, still_missing, cache_dir, "not downloaded"))
    return to_raw(name, dataset)




def default_cache_dir() -> Path:
    """Where torchvision's files live: $TRANSFERLAB_DATA, else ~/.cache/transferlab."""
    given = os.environ.get("TRANSFERLAB_DATA") or "~/.cache/transferlab"
    try:
        return Path(given).expanduser().absolute()
    except RuntimeError:  # ~nosuchuser/..., or no home directory to expand ~ to
        raise UserError(f"TRANSFERLAB_DATA={given!r}: its ~ names no home directory: give a "
                        "folder path (or unset it for ~/.cache/transferlab)") from None


def load(name: str, split: str, where: Where):
    from transferlab.images import check_folder

    cache = check_folder("data.cache_dir", default_cache_dir() if where.cache_dir is None
                         else where.cache_dir, must_exist=False,
                         fix="a folder (or $TRANSFERLAB_DATA)")
    return load_torchvision(name, cache, where.download, split)
