"""Image files on disk: folders of class folders, and the one reader of a single image file.

`load_folder` is what the `folder` dataset reads (download); `read_image` is also what
`transferlab-predict` reads new files with, so a file is decoded the same way in both.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from transferlab.datasets import DECODE_SIZE
from transferlab.errors import PATH_FIXES, UserError, error_line, show_path
from transferlab.rawdata import RawDataset

FOLDER_SIZE = DECODE_SIZE  # what a folder's images are decoded to unless data.decode_size says


FOLDER_SPLITS = ("train", "val", "test")  # <root>/<split>/<class>/ when <root>/train/ exists


_KINDS = ((stat.S_ISREG, "a file"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))


def check_folder(key: str, path: str | os.PathLike, must_exist: bool = True, what: str = "",
                 fix: str = "a folder") -> Path:
    """A folder param (`key`: data.target.root, data.cache_dir, ...) as an absolute path, or one
    line naming the key and the path: missing (when it must exist), a symlink loop, a name too
    long for the filesystem (ENAMETOOLONG: 255 bytes a name on ext4), a file / FIFO / device
    where the folder belongs, or a folder that cannot be listed. os.stat never opens the path:
    a FIFO is named, not waited on."""
    if "\0" in os.fspath(path):  # a YAML "\0": os.stat would raise ValueError, not OSError
        raise UserError(f"{key}: {what}{show_path(path)} holds a NUL character, which no path "
                        f"can: point {key} at {fix}")
    path = Path(path).expanduser().absolute()
    where = f"{key}: {what}{show_path(path)}"
    fix = f"point {key} at {fix}"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if must_exist:
            raise UserError(f"{where} does not exist: {fix}") from None
        return path  # created when first written (the torchvision cache)
    except OSError as err:
        why = PATH_FIXES.get(err.errno, "check the path")  # the wording every other path uses
        raise UserError(f"{where} cannot be read ({err.strerror or type(err).__name__}): {why}; "
                        f"or {fix}") from None
    if not stat.S_ISDIR(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a folder")
        raise UserError(f"{where} is {kind}, not a folder: {fix}")
    try:
        with os.scandir(path):
            pass
    except OSError as err:
        raise UserError(f"{where} cannot be listed ({err.strerror or type(err).__name__}): check "
                        "its permissions") from None
    return path


def find_class_folders(root: Path, split: str = "train", key: str = "folder dataset root"
                       ) -> list[Path]:
    """<root>/<class>/ or, when <root>/train/ exists, <root>/<split>/<class>/ (test/ and val/ are
    the official test and validation splits). Hidden folders (.git, ...) and loose files beside
    the classes are skipped. `key`: the param that names the root, for messages."""
    root = check_folder(key, root, what="folder dataset ",
                        fix="a folder of class folders (<root>/<class>/<image>)")
    base = root / split if (root / "train").is_dir() else root
    if split != "train" and not base.is_dir():
        raise UserError(f"folder dataset: {show_path(root)} has no {split}/ folder: add "
                        f"{show_path(root)}/{split}/<class>/ or set data.target_test: split")
    try:
        entries = sorted(base.iterdir(), key=lambda p: p.name)
    except OSError as err:
        raise UserError(f"folder dataset: {show_path(base)} cannot be listed ({err.strerror}): "
                        "check its permissions") from None
    classes = [p for p in entries if p.is_dir() and not p.name.startswith(".")]
    if not classes:
        raise UserError(f"folder dataset: no class folders in {show_path(base)}: put each class's "
                        f"images in {show_path(base)}/<class name>/")
    if len(classes) == 1:
        raise UserError(f"folder dataset: {show_path(base)} has one class folder "
                        f"({show_path(classes[0].name)}): a classifier needs at least two classes")
    return classes


def list_images(folder: Path) -> list[Path]:
    """The visible regular files of one class folder, sorted by name: the same order on every
    machine. Only regular files (or links to them) are read: a FIFO would block `download`
    forever, a socket or device is no image; such entries are skipped and counted."""
    try:
        entries = sorted((p for p in folder.iterdir() if not p.name.startswith(".")),
                         key=lambda p: p.name)
    except OSError as err:
        raise UserError(f"folder dataset: {show_path(folder)} cannot be listed ({err.strerror}): "
                        "check its permissions") from None
    if nested := [p for p in entries if p.is_dir()]:
        raise UserError(f"folder dataset: {show_path(nested[0])} is a folder inside class folder "
                        f"{show_path(folder)}: nested folders are not read: move its images up "
                        "one level")
    files = [p for p in entries if p.is_file()]  # is_file follows links and is False for a FIFO
    if skipped := len(entries) - len(files):
        print(f"warning: skipped {skipped} entries of {show_path(folder)} that are not regular "
              "files (FIFOs, sockets, devices, broken links)")
    if not files:
        raise UserError(f"folder dataset: class folder {show_path(folder)} is empty: add its "
                        "images or delete it")
    return files


# --- one image file: the single reader every caller uses (download, predict) -----------------

# The formats read, by Pillow's name: the ones cameras, scanners and ML datasets write. Pillow
# opens more (EPS runs Ghostscript, PSD, ICNS, ...); an untrusted file reaches none of them.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")  # JPEG opens MPO too
FORMAT_NAMES = "PNG, JPEG, BMP, GIF, TIFF, WebP or PPM/PGM"
# Pillow's own decompression-bomb limit (89.5 Mpixel, a 9,500 x 9,500 photo): refused before any
# pixel is decoded, not merely warned about on stderr as Pillow does below twice that.
MAX_PIXELS = 89_478_485
# How each Pillow mode becomes uint8 grey ("L") or colour ("RGB"): every mode not listed is
# refused with a reason (LAB/HSV: no conversion Pillow knows; F: float pixels have no range).
#   1 -> 0 / 255;  L, P (palette), RGB, YCbCr, CMYK: Pillow's convert (CMYK naively, no profile);
#   LA, PA, RGBA, RGBX, La, RGBa: alpha dropped (the colours under it kept);
#   I;16*, I (16-bit grey, 0..65535): divided by 257, rounded (65535 -> 255; 8-bit saved as 16-bit
#   comes back exactly); I with values outside 0..65535 is refused.
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"}
COLOUR_MODES = {"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr"}
PALETTE_MODES = {"P", "PA"}
REFUSED_MODES = {"F": "has floating-point pixels (mode F): save it as an 8- or 16-bit image",
                 "LAB": "is in CIELab colour: save it as RGB",
                 "HSV": "is in HSV colour: save it as RGB"}
# What Pillow's plugins raise on malformed bytes (seen on truncated, bit-flipped and hand-made
# headers: OSError for most, SyntaxError/ValueError/struct.error/EOFError/IndexError/KeyError/
# TypeError from TIFF, GIF and BMP headers), caught around decoding only.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
                 struct.error, ZeroDivisionError)


@contextlib.contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Pillow's failures on one file as one UserError naming it. Its warnings count as failures:
    "Tag data larger than file. Skipping tag 279" (a TIFF strip table) or "Corrupt EXIF data" (a
    rotation lost) come with pixels that are not what the file meant, and would print to stderr."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except Image.UnidentifiedImageError:
            raise UserError(f"{show_path(path)} is not a readable image (not a {FORMAT_NAMES} "
                            "file): delete it or replace it with a PNG, JPEG or BMP file") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UserError(f"{show_path(path)} declares more than {MAX_PIXELS:,} pixels (a "
                            "decompression bomb or a huge scan): resize it below that") from None
        except (*DECODE_ERRORS, UserWarning) as err:
            raise _unreadable(path, err) from None


def _open_checked(path: Path):
    """The opened Pillow image, its header validated (format, size, mode, frames), not decoded."""
    from PIL import Image

    with _decoding(path):
        img = Image.open(path, formats=IMAGE_FORMATS)
    try:
        with _decoding(path):
            w, h = img.size
            n_frames = 1 if img.format == "MPO" else getattr(img, "n_frames", 1)  # MPO: a phone's
            # JPEG and its previews; n_frames walks the file, so a cut multi-frame file fails here
    except UserError:
        img.close()
        raise
    why = None
    if w < 1 or h < 1:
        why = f"has no pixels ({w} x {h}): delete it"
    elif w * h > MAX_PIXELS:
        why = (f"declares {w} x {h} pixels, more than {MAX_PIXELS:,} (a decompression bomb or "
               "a huge scan): resize it below that")
    elif img.mode in REFUSED_MODES:
        why = REFUSED_MODES[img.mode]
    elif img.mode not in GREY_MODES | COLOUR_MODES | PALETTE_MODES:
        why = f"has pixel mode {img.mode!r}, which is not read: save it as 8-bit grey or RGB"
    elif n_frames > 1:
        why = (f"holds {n_frames} frames (a multi-page TIFF or an animation): save the frame "
               "to use as a file of its own")
    if why:
        img.close()
        raise UserError(f"{show_path(path)} {why}")
    return img


def _unreadable(path: Path, err: BaseException) -> UserError:
    return UserError(f"{show_path(path)} is not a readable image ({error_line(err)}): "
                     "delete it or replace it with a PNG, JPEG or BMP file")


def _has_colour(img) -> bool:
    if img.mode in PALETTE_MODES:  # palette (GIF, PNG-8): grey when every palette entry is
        palette = np.asarray(img.getpalette() or [], np.uint8).reshape(-1, 3)
        return bool((palette != palette[:, :1]).any())
    return img.mode in COLOUR_MODES


def is_colour(path: Path) -> bool:
    """Whether a file has colour, from its header only (Pillow opens lazily); UserError naming
    the file for anything read_image would refuse in its header."""
    with _open_checked(path) as img:
        return _has_colour(img)


def decode_image(path: Path, mode: str) -> np.ndarray:
    """One file, whole, as uint8 (H, W) for mode "L" or (H, W, 3) for "RGB", by the documented
    conversion of its Pillow mode (see GREY_MODES); EXIF rotation applied. Anything else (not
    one of IMAGE_FORMATS, truncated, no pixels, over MAX_PIXELS, several frames, float or CIELab
    pixels, 32-bit values) is a UserError: one line naming the file and why."""
    from PIL import Image, ImageOps

    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    with _open_checked(path) as img, _decoding(path):
        img.load()
        img = ImageOps.exif_transpose(img)  # phone photos store their rotation in EXIF
        if img.mode.startswith("I"):  # 16-bit grey: Pillow's convert("L") clips at 255 (white)
            values = np.asarray(img, np.int64)
            if values.size and (values.min() < 0 or values.max() > 65535):
                raise UserError(f"{show_path(path)} has pixel values {values.min()}..{values.max()},"
                                " outside 16 bits: save it as an 8- or 16-bit image")
            img = Image.fromarray(((values * 2 + 257) // 514).astype(np.uint8))  # round(v / 257)
        elif img.mode not in ("L", "RGB"):  # palette, alpha, CMYK, YCbCr, 1-bit: alpha dropped
            if img.mode == "P" and "transparency" in img.info:
                # PNG-8 with alpha: Pillow warns on a direct convert; through RGBA it does not,
                # and the colours are the same (the alpha is dropped below, as for RGBA files)
                img = img.convert("RGBA")
            img = img.convert("RGB" if _has_colour(img) else "L")
        image = np.asarray(img.convert(mode), dtype=np.uint8)
    want = (3,) if mode == "RGB" else ()
    if image.ndim != 2 + len(want) or image.shape[2:] != want or 0 in image.shape:
        raise UserError(f"{show_path(path)} decoded to an array of shape {image.shape}: save it "
                        "as 8-bit grey or RGB")
    return image


def read_image(path: Path, mode: str, size: int | None = FOLDER_SIZE) -> np.ndarray:
    """One file as (size, size) uint8 in mode "L", (.., 3) in "RGB" (decode_image's conversions).
    The shorter side is resized to `size` and the centre square kept (torchvision's Resize(size)
    then CenterCrop(size)). size=None keeps the image as it is (what `transferlab-predict` needs
    for array datasets). Raises UserError, one line naming the file, for a file it cannot read
    faithfully: the returned array is always valid."""
    from PIL import Image

    image = decode_image(path, mode)
    if size is None:
        return image
    out = np.asarray(shorter_side_centre_crop(Image.fromarray(image), size), dtype=np.uint8)
    assert out.shape == (size, size, *image.shape[2:]), out.shape
    return out


def _read_folder_image(path: Path, mode: str, size: int) -> np.ndarray:
    try:
        return read_image(path, mode, size)
    except UserError as err:
        raise UserError(f"folder dataset: {err}") from None


def _folder_is_colour(path: Path) -> bool:
    try:
        return is_colour(path)
    except UserError as err:
        raise UserError(f"folder dataset: {err}") from None


def shorter_side_centre_crop(img, size: int):
    """Pillow image -> size x size: the centre square of the image, resized. Pillow's bilinear
    filter widens with the shrink factor (antialiased, as torchvision's Resize on PIL images)."""
    from PIL import Image

    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.resize((size, size), Image.Resampling.BILINEAR,
                      box=(left, top, left + side, top + side))


class FolderImages:
    """A folder's images, decoded when indexed (read_image): what `download` writes a block of
    rows at a time, so a folder larger than memory never is in memory whole."""

    dtype = np.dtype(np.uint8)

    def __init__(self, paths: list[Path], mode: str, size: int):
        self.paths, self.mode, self.size = paths, mode, size
        self.shape = (len(paths), size, size, *((3,) if mode == "RGB" else ()))
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return _read_folder_image(self.paths[key], self.mode, self.size)
        chosen = self.paths[key] if isinstance(key, slice) else [self.paths[i] for i in key]
        out = np.empty((len(chosen), *self.shape[1:]), np.uint8)
        for i, path in enumerate(chosen):  # into one array: no list of every image beside it
            out[i] = _read_folder_image(path, self.mode, self.size)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def load_folder(root: Path, split: str = "train", size: int = FOLDER_SIZE,
                lazy: bool = False, key: str = "folder dataset root") -> RawDataset:
    """Every image under <root>/<class>/ (or <root>/<split>/<class>/), any size and Pillow format.

    Classes are the sorted class folder names. All images become grayscale ("L"), or all become
    RGB if any one has colour; each one's centre square, resized to `size` (read_image).
    lazy: the images are decoded only when read (FolderImages), not here.
    """
    classes = find_class_folders(root, split, key)
    files = [list_images(folder) for folder in classes]
    paths = [path for group in files for path in group]
    mode = "RGB" if any(_folder_is_colour(path) for path in paths) else "L"
    images = FolderImages(paths, mode, size)
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), [len(group) for group in files])
    return RawDataset(images if lazy else np.asarray(images), labels, 255,
                      tuple(folder.name for folder in classes))


