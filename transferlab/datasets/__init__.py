"""The registry of datasets: one module per family in this package, found by itself.

Each module declares `DATASETS = (Dataset(...), ...)`, the facts the params schema and the
stages need without loading anything (does it need a folder root, a download cache, does it
ship an official test split), and a `load(name, split, where)` that returns a
`rawdata.RawDataset` (uint8 images, int64 labels, class names).

    embedded          mnist_5k, uci_digits: inside installed wheels, no network
    folder            your own images: <root>/<class>/<image> or <root>/{train,val,test}/...
    torchvision_sets  mnist, fashion_mnist, usps, svhn, cifar10: through torchvision into a
                      cache, md5-verified on every load

This package imports neither numpy nor torch at import time: params.py reads it to build its
schema (`check_params` must not pay their start-up), so each module imports them inside `load`.
Adding a dataset is one module here (docs/extending.md); tests/test_datasets.py checks every
registered one through the schema.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from transferlab.registry import discover

# Every image file is decoded once, as torchvision's weight transforms frame a photo: shorter
# side resized to data.decode_size (aspect ratio kept), then the centre square cropped; so the
# raw dataset is one array and `prepare` resizes the square to prepare.image_size. 256 (the
# Resize of torchvision's ImageNet weights) is 192 KiB per colour image.
DECODE_SIZE = 256


@dataclass(frozen=True)
class Dataset:
    """What the rest of the pipeline may know of a dataset without loading it."""
    name: str
    summary: str                            # one line: what it is, how many images, how large
    official_splits: tuple[str, ...] = ()   # splits it ships besides "train" ("test", "val")
    needs_root: bool = False    # read from data.<role>.root (splits: the folders found there)
    downloads: bool = False     # files cached under data.cache_dir
    decoded: bool = False       # image files decoded to data.decode_size (predict repeats it)
    # datasets whose images this one contains, changed past recognition (a blend) or not: as a
    # source/target pair they would leak test images into training, which prepare's content
    # check cannot always see, so the params check refuses the pair
    made_from: tuple[str, ...] = ()
    family: str = ""            # filled in from the module name


@dataclass(frozen=True)
class Where:
    """Where a dataset's files are and how to read them (what `fetch` hands each module)."""
    cache_dir: Path | None = None  # downloads (default_cache_dir() when None)
    root: Path | None = None       # a folder dataset's root
    download: bool = True          # False: never touch the network
    size: int = DECODE_SIZE        # what image files are decoded to (shorter side, centre crop)
    lazy: bool = False             # image files decoded when read, not at load
    root_key: str = "folder dataset root"  # the param that names `root`, for messages


DATASETS: dict[str, Dataset] = discover(__name__, __path__, "DATASETS", "dataset")
NAMES = tuple(DATASETS)  # discovery order: by module name, then as each module lists them


def list_datasets() -> list[Dataset]:
    return list(DATASETS.values())


def get(name: str) -> Dataset:
    if name not in DATASETS:
        from transferlab.errors import UserError

        raise UserError(f"unknown dataset '{name}': choose one of {', '.join(NAMES)}")
    return DATASETS[name]


def family_module(name: str):
    """The module that loads dataset `name`."""
    return importlib.import_module(f"{__name__}.{get(name).family}")


def has_official_split(name: str, root: Path | None, split: str) -> bool:
    """Whether dataset `name` ships a `split` ("test" or "val") of its own: declared, or for a
    dataset read from a root, found on disk there (the module's `has_split(root, split)`)."""
    dataset = get(name)
    if dataset.needs_root:
        return root is not None and family_module(name).has_split(Path(root), split)
    return split in dataset.official_splits


def target_test_source(mode: str, name: str, root: Path | None) -> str:
    """data.target_test resolved: "official" (the dataset's own test split is the target test
    set) or "split" (carved from its training images). auto = official where there is one."""
    if mode == "auto":
        return "official" if has_official_split(name, root, "test") else "split"
    return mode


def decode_size(name: str, size: int) -> int:
    """The size a dataset's files were decoded to (a folder's: shorter side and centre square,
    `size`), 0 for datasets that arrive as arrays: what prediction on new files repeats."""
    return size if get(name).decoded else 0


def fetch(name: str, split: str = "train", **where):
    """The `split` ("train", or an official "test" / "val") of dataset `name`, a RawDataset;
    `where`: the fields of `Where` (cache_dir, root, download, size, lazy, root_key)."""
    from transferlab.errors import UserError

    dataset, where = get(name), Where(**where)
    if split != "train" and not has_official_split(name, where.root, split):
        raise UserError(f"dataset '{name}' has no official {split} split: set data.target_test: "
                        "split (the test set is then carved from its training images)")
    if dataset.needs_root and where.root is None:
        raise UserError(f"dataset '{name}' needs a root: set {where.root_key}")
    return family_module(name).load(name, split, where)
