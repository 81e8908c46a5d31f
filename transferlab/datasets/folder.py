"""Your own images: <root>/<class>/<image>, or <root>/{train,val,test}/<class>/<image> with
official splits. Every image is decoded once, in download, by `images.read_image` (also what
`transferlab-predict` reads new files with): shorter side resized to data.decode_size (default
256), centre square cropped; PNG, JPEG, BMP, GIF, TIFF, WebP, PPM/PGM, each Pillow mode converted
by a stated rule (images.GREY_MODES) or the file refused with one line naming it.
"""

from __future__ import annotations

from pathlib import Path

from transferlab.datasets import Dataset, Where

DATASETS = (
    Dataset("folder", "your images: <root>/<class>/*.png|jpg (or <root>/{train,val,test}/...)",
            needs_root=True, decoded=True),
)


def has_split(root: Path, split: str) -> bool:
    """<root>/<split>/ beside <root>/train/: the folder's own test or val split."""
    root = Path(root).expanduser().absolute()
    return (root / "train").is_dir() and (root / split).is_dir()


def load(name: str, split: str, where: Where):
    from transferlab.images import load_folder

    return load_folder(Path(where.root).expanduser().absolute(), split, where.size, where.lazy,
                       where.root_key)
