"""A raw dataset as the download stage writes it: uint8 images, int64 labels, class names.

One safetensors file per dataset (`save_raw` / `load_raw`); `prepare` reads it, whatever
dataset module of `transferlab.datasets` produced it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.errors import UserError, show_path
from transferlab.io import load_arrays, read_classes, read_metadata, save_arrays

DIGITS = tuple("0123456789")  # every digit dataset names its classes so: a digit source and a
# digit target name their classes alike (torchvision's MNIST calls its own "0 - zero")


@dataclass(frozen=True)
class RawDataset:
    images: np.ndarray  # uint8, (N, H, W) grayscale or (N, H, W, 3) colour
    labels: np.ndarray  # int64 (N,), values 0..len(classes)-1
    max_value: int      # value of a full-intensity pixel (255, or 16 for uci_digits)
    classes: tuple[str, ...] = DIGITS  # class names, index = label (e.g. CIFAR-10's "airplane")

    def __post_init__(self):
        """A wrong array fails here, not three stages later as a shape error in training."""
        x, y = self.images, self.labels
        if x.dtype != np.uint8 or not (x.ndim == 3 or (x.ndim == 4 and x.shape[3] == 3)):
            raise ValueError(f"images must be uint8 (N, H, W) or (N, H, W, 3), "
                             f"got {x.dtype} {x.shape}")
        if y.dtype != np.int64 or y.shape != x.shape[:1]:
            raise ValueError(f"labels must be int64 ({len(x)},), got {y.dtype} {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= len(self.classes)):
            raise ValueError(f"labels span {y.min()}..{y.max()} "
                             f"but there are {len(self.classes)} classes")


def save_raw(path: Path, data: RawDataset, decoded_to: int = 0) -> None:
    save_arrays(path, {"images": data.images, "labels": data.labels},
                metadata={"max_value": str(data.max_value), "decode_size": str(decoded_to),
                          "classes": json.dumps(list(data.classes))})


def load_raw(path: Path, lazy: bool = False) -> RawDataset:
    """lazy: images larger than io.resident_limit() stay on disk (io.DiskArray)."""
    arrays = load_arrays(path, required=("images", "labels"), lazy=lazy)
    metadata = read_metadata(path)
    if "classes" not in metadata or "max_value" not in metadata:
        raise UserError(f"{show_path(path)} has no class names (written by an older version): run "
                        "`dvc repro download`")
    try:
        return RawDataset(arrays["images"], np.asarray(arrays["labels"]), int(metadata["max_value"]),
                          tuple(read_classes(path)))
    except ValueError as err:
        raise UserError(f"{show_path(path)} is corrupt ({err}): run `dvc repro -f download`"
                        ) from None
