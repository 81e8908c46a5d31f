"""The transfer scenario: both domains aligned to one input format, then split and sampled.

Alignment matters more than any method here. Measured once (3-conv net, 16x16, 8 epochs on the
5,000 MNIST digits): source-only accuracy on the UCI digits is 10 % with a plain resize (MNIST
digits sit inside a 4-pixel empty border, UCI digits fill their frame), 63 % with each digit
centred on its square bounding box, 78 % when both domains also pass through the target's 8x8
resolution and each image is scaled to a maximum of 1.

Colour and gray datasets meet at `prepare.channels` (gray -> 3 repeats the channel, colour ->
1 takes the luminance). A class subset (data.*.classes) is renumbered 0..K-1 in sorted order.

Splits: the target is split once by `split_seed` into train pool / validation / test (so the
test set is the same for every seed and every k); the k shots per class are drawn from the
pool by `seed`, as a prefix of one per-class permutation, so the 5-shot draw contains the
1-shot draw. The rest of the pool, without its labels, is the unlabelled target set that
domain-adaptation methods train on; with `prepare.shots: 0` it is the whole pool.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from transferlab.rawdata import RawDataset
from transferlab.errors import UserError, show_path
from transferlab.io import DiskArray, array_writer, load_arrays, resident_limit, row_chunks
from transferlab.params import DatasetSpec, Prepare

LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 1, H, W) float -> (N, 1, size, size); antialiased so downscaling averages ink."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def crop_to_bbox(image: np.ndarray) -> np.ndarray:
    """(C, H, W): the smallest square around the inked pixels (any channel > 0), centred on
    them, zero-padded where needed."""
    rows, cols = np.nonzero(image.max(axis=0))
    if rows.size == 0:
        return image
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = max(bottom - top, right - left)
    out = np.zeros((image.shape[0], side, side), dtype=image.dtype)
    dy, dx = (side - (bottom - top)) // 2, (side - (right - left)) // 2
    out[:, dy:dy + bottom - top, dx:dx + right - left] = image[:, top:bottom, left:right]
    return out


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) with C in {1, 3} -> (N, channels, H, W). A grey image stored as RGB (R = G = B)
    gives its channel exactly: the float sum of the weights is not exactly 1, and a copy of a
    grey image re-saved as RGB must align to the same bytes as the original (overlap check)."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    grey = (x == x[:, :1]).flatten(1).all(1).view(-1, 1, 1, 1)
    luminance = (x * torch.tensor(LUMINANCE).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return torch.where(grey, x[:, :1], luminance)


ALIGN_CHUNK = 1024  # images aligned at once, at most; and at most ALIGN_BYTES of float32 work
ALIGN_BYTES = 64 << 20
_scratch_names = itertools.count()


def align(raw: RawDataset, p: Prepare, scratch: Path | None = None) -> np.ndarray | DiskArray:
    """Raw images -> (N, channels, image_size, image_size) uint8, the same framing in both
    domains. Works through the images in chunks (each image is aligned on its own, so the
    result does not depend on the chunking). With a `scratch` folder, a result larger than
    io.resident_limit() is written there and returned as a DiskArray: memory stays bounded."""
    if "auto" in (p.crop, p.scale, p.bottleneck_size, p.channels):
        raise ValueError("align takes a resolved framing: resolve_framing(prepare, stats) first")
    n = len(raw.images)
    shape = (n, p.channels, p.image_size, p.image_size)
    pixels = max(int(np.prod(raw.images.shape[1:])) if n else 1, int(np.prod(shape[1:])))
    step = max(1, min(ALIGN_CHUNK, ALIGN_BYTES // (4 * 3 * pixels)))
    chunks = (_align_chunk(np.asarray(raw.images[start:start + step]), raw.max_value, p)
              for start in range(0, n, step))
    if scratch is None or int(np.prod(shape)) <= resident_limit():
        out = np.empty(shape, np.uint8)
        for start, chunk in zip(range(0, n, step), chunks):
            out[start:start + len(chunk)] = chunk
        return out
    path = Path(scratch) / f"aligned-{next(_scratch_names)}.safetensors"
    with array_writer(path, {"x": (np.uint8, shape)}) as write:
        for chunk in chunks:
            write("x", chunk)
    return load_arrays(path, lazy=True)["x"]


def take_rows(images: np.ndarray | DiskArray, index: np.ndarray) -> np.ndarray | DiskArray:
    """images[index] (an index or boolean array); images on disk stay there (a lazy selection)."""
    return images.take(index) if isinstance(images, DiskArray) else images[index]


def _align_chunk(images: np.ndarray, max_value: int, p: Prepare) -> np.ndarray:
    first_size = p.bottleneck_size or p.image_size
    x = torch.from_numpy(images.astype(np.float32) / max_value)
    x = to_channels(x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2), p.channels)
    if p.crop == "bbox":
        x = torch.cat([_resize(torch.from_numpy(crop_to_bbox(img.numpy()))[None], first_size)
                       for img in x])
    else:
        x = _resize(x, first_size)
    x = _resize(x, p.image_size).clamp_(0, 1)
    if p.scale == "max":
        x = x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    return (x * 255).round_().to(torch.uint8).numpy()


# The premises of prepare.crop: bbox and prepare.scale: max, measured per domain. MNIST-5k:
# 0 % of its images have ink up to all four edges, border level 0; UCI digits: 0.2 %, 0. Digits
# blended onto photo patches, natural images, noise: ~100 % and 0.3-0.6 of the image's maximum.
FULL_FRAME_LIMIT = 0.1  # above: bbox keeps most images whole while others get cropped, enlarged
BACKGROUND_LIMIT = 0.25  # above: not a dark background, the ink is not what `max` scales to 1


def framing_stats(raw: RawDataset) -> dict[str, float]:
    """How a domain's images are framed, on its raw images (a block of rows at a time):
    full_frame_share: the share whose content box (pixels above 0 in any channel: what
    crop_to_bbox sees) is the whole frame, so bbox leaves them as they are; background_level:
    the median over images of their border's median level, as a share of the image's own
    maximum (0: a dark background, 1: as bright as the brightest pixel); mean_level: the mean
    pixel as a share of full intensity; colour_share: the share of images whose channels
    differ somewhere (0 for grey data); size: the raw images' shorter side."""
    full, levels, means, colour = 0, [], 0.0, 0
    for chunk in row_chunks(raw.images):
        if chunk.ndim == 4:
            colour += int((chunk != chunk[..., :1]).reshape(len(chunk), -1).any(1).sum())
        means += float(chunk.mean(dtype=np.float64)) * len(chunk)
        x = chunk.max(axis=3) if chunk.ndim == 4 else chunk
        ink = x > 0
        full += int((ink[:, 0].any(1) & ink[:, -1].any(1) & ink[:, :, 0].any(1)
                     & ink[:, :, -1].any(1)).sum())
        border = np.concatenate([x[:, 0], x[:, -1], x[:, 1:-1, 0], x[:, 1:-1, -1]], axis=1)
        peak = x.reshape(len(x), -1).max(1).astype(np.float64)
        levels.append(np.median(border, axis=1) / np.maximum(peak, 1))
    n = len(raw.labels)
    level = float(np.median(np.concatenate(levels))) if n else 0.0
    return {"full_frame_share": round(full / n, 4) if n else 0.0,
            "background_level": round(level, 4),
            "mean_level": round(means / max(n, 1) / raw.max_value, 4),
            "colour_share": round(colour / n, 4) if n else 0.0,
            "size": int(min(raw.images.shape[1:3]))}


def resolve_framing(p: Prepare, stats: dict[str, dict[str, float]],
                    needs_colour: bool = False) -> Prepare:
    """prepare.* auto -> one framing for both domains, from their framing statistics:
        crop             bbox where every domain keeps content off its edges
                         (full_frame_share <= FULL_FRAME_LIMIT: ink on a blank page), else none
        scale            max where every domain has a dark background
                         (background_level <= BACKGROUND_LIMIT), else none
        bottleneck_size  the smaller domain's resolution when it is below image_size (both
                         domains then lose the same detail: MNIST meets 8x8 UCI digits), else 0
        channels         3 when any domain has colour (or the model's weights expect it), else 1
    Explicit settings are kept (check_framing refuses those whose premise fails)."""
    domains = stats.values()
    update = {}
    if p.crop == "auto":
        update["crop"] = ("bbox" if all(s["full_frame_share"] <= FULL_FRAME_LIMIT for s in domains)
                          else "none")
    if p.scale == "auto":
        update["scale"] = ("max" if all(s["background_level"] <= BACKGROUND_LIMIT for s in domains)
                           else "none")
    if p.bottleneck_size == "auto":
        smallest = min(int(s["size"]) for s in domains)
        update["bottleneck_size"] = smallest if smallest < p.image_size else 0
    if p.channels == "auto":
        update["channels"] = 3 if needs_colour or any(s["colour_share"] > 0 for s in domains) else 1
    return p.model_copy(update=update)


def backdrop(stats: dict[str, dict[str, float]]) -> str:
    """'textured' where any domain's content fills its frame or sits on a bright background
    (a premise of bbox or of max fails there: photos, digits blended onto photo patches),
    else 'blank' (ink on a blank page in every domain). Recorded in the prepared files'
    metadata (models.read_backdrop): on a textured backdrop model.norm and model.input auto
    build a backbone's `textured_norm` and `textured_input`, where BatchNorm's source
    statistics mislead it on the target (docs/datasets.md, The encoder)."""
    textured = any(s["full_frame_share"] > FULL_FRAME_LIMIT or s["background_level"] > BACKGROUND_LIMIT
                   for s in stats.values())
    return "textured" if textured else "blank"


def framing_summary(p: Prepare) -> dict[str, int]:
    """The framing in use, as numbers for metrics/scenario.json (dvc metrics diff shows a
    change of auto's choice)."""
    return {"framing_crop_bbox": int(p.crop == "bbox"), "framing_scale_max": int(p.scale == "max"),
            "framing_bottleneck_size": int(p.bottleneck_size), "framing_channels": int(p.channels)}


def describe_framing(p: Prepare, given: Prepare) -> str:
    """One line: the framing in use, and which of it auto chose."""
    parts = [f"{k} {getattr(p, k)}{' (auto)' if getattr(given, k) == 'auto' else ''}"
             for k in ("crop", "scale", "bottleneck_size", "channels")]
    return f"framing: {', '.join(parts)}, image_size {p.image_size}"


def check_framing(stats: dict[str, dict[str, float]], p: Prepare) -> None:
    """Stop when a domain breaks the premise of the alignment chosen, naming the knob and what
    to set: bbox on images with content up to their edges keeps them whole while the other
    domain is cropped and enlarged (the domains end up at different scales, silently); `max`
    on a bright background scales the background, not the ink."""
    for role, s in stats.items():
        fixes, why = [], []
        if p.crop == "bbox" and s["full_frame_share"] > FULL_FRAME_LIMIT:
            fixes.append("prepare.crop: auto (or none)")
            why.append(f"prepare.crop: bbox assumes a zero background around each image's "
                       f"content, but {s['full_frame_share']:.0%} of its images have content up "
                       "to all four edges (bbox keeps those whole and crops and enlarges the rest)")
        if p.scale == "max" and s["background_level"] > BACKGROUND_LIMIT:
            fixes.append("prepare.scale: auto (or none)")
            why.append("prepare.scale: max assumes a dark background, but its median border "
                       f"level is {s['background_level']:.2f} of each image's maximum")
        if fixes:
            raise UserError(f"data.{role}: {'; '.join(why)}: set {' and '.join(fixes)} (both "
                            "domains are then framed alike), or give it images on a blank "
                            "background")


def preprocess_record(p: Prepare, decode_size: int) -> str:
    """What turns one image file into a model input here, as JSON for the metadata of prepared
    and model files: the alignment knobs, and the size a folder's files were first decoded to
    (0: the dataset came as arrays). `transferlab-predict` and the ONNX export repeat it."""
    fields = {k: getattr(p, k) for k in ("image_size", "crop", "bottleneck_size", "scale",
                                         "channels")}
    return json.dumps({**fields, "decode_size": decode_size}, sort_keys=True)


def select_classes(raw: RawDataset, classes: str | list[int], key: str) -> RawDataset:
    """The images of the chosen class ids, relabelled 0..K-1 in sorted id order."""
    if classes == "all":
        return raw
    missing = sorted(set(classes) - set(range(len(raw.classes))))
    if missing:
        raise UserError(f"{key}={classes}: the dataset has no class {missing[0]} (its ids are "
                        f"0..{len(raw.classes) - 1}: {', '.join(raw.classes)})")
    chosen = sorted(classes)
    keep = np.isin(raw.labels, chosen)
    relabel = np.full(len(raw.classes), -1, dtype=np.int64)
    relabel[chosen] = np.arange(len(chosen))
    return RawDataset(take_rows(raw.images, keep), relabel[raw.labels[keep]], raw.max_value,
                      tuple(raw.classes[c] for c in chosen))


def _take(amount: float | int, n: int) -> int:
    """How many of a class's n images a split takes: a fraction (rounded) or a count."""
    return round(amount * n) if isinstance(amount, float) else amount


def split_stratified(labels: np.ndarray, seed: int, **take: float | int) -> dict[str, np.ndarray]:
    """Per class, a seeded permutation cut into named parts; the part named `rest` gets the rest.

    A float takes that fraction of the class (rounded), an int that many images per class.
    """
    parts: dict[str, list[np.ndarray]] = {name: [] for name in [*take, "rest"]}
    for c in np.unique(labels):
        idx = np.random.default_rng([seed, int(c)]).permutation(np.flatnonzero(labels == c))
        start = 0
        for name, amount in take.items():
            n = _take(amount, idx.size)
            parts[name].append(idx[start:start + n])
            start += n
        parts["rest"].append(idx[start:])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def least_fraction(n: int) -> float:
    """The smallest fraction, in as few significant digits as it takes, of which _take gives at
    least one of n images. Python's round() rounds half to even: round(0.5 * 1) == 0, so 0.5 is
    not enough for a class of one image (0.51 is)."""
    x = 0.5 / n
    for digits in range(1, 17):
        step = 10.0 ** (math.floor(math.log10(x)) - digits + 1)
        f = round(math.ceil(x / step) * step, 15)
        f = f if f > x else round(f + step, 15)
        if _take(f, n) >= 1:
            return f
    return math.nextafter(x, 1.0)


def check_sizes(source: RawDataset, target: RawDataset, p: Prepare,
                test: RawDataset | None = None, val: RawDataset | None = None,
                dropped: dict[tuple[str, int], str] | None = None) -> None:
    """Every split the scenario cuts, sized per class before any model is trained: an empty
    split or a class too small for it stops here naming the key, the class and its count, and
    what actually fixes it, not three stages later as a shape error. `test` / `val`: official
    splits, which replace the ones carved from the target's training images. `dropped`: (role,
    class) -> why some of its images were dropped as copies (separate_by_content), said in the
    message of that class."""
    def why(role: str, c: int) -> str:
        return f" ({note})" if (note := (dropped or {}).get((role, c))) else ""

    for role, raw in (("source", source), ("target", target)):
        present = np.unique(raw.labels)
        if present.size < 2:
            names = ", ".join(repr(raw.classes[c]) for c in present) or "none"
            notes = "".join(why(role, c) for c in range(len(raw.classes)))
            raise UserError(f"data.{role}: {present.size} class with images ({names}){notes}: a "
                            "classifier needs at least two: add class folders or widen "
                            f"data.{role}.classes")
        if absent := [c for c in range(len(raw.classes)) if c not in present]:
            raise UserError(f"data.{role}: class {raw.classes[absent[0]]!r} has no images"
                            f"{why(role, absent[0])}: add some or leave it out with "
                            f"data.{role}.classes")
    counts = np.bincount(source.labels, minlength=len(source.classes))
    for c, n in enumerate(counts):
        if n - _take(p.source_val_fraction, n) < 1:
            raise UserError(f"data.source: class {source.classes[c]!r} has only {n} image(s)"
                            f"{why('source', c)}, none left for training after "
                            f"prepare.source_val_fraction={p.source_val_fraction}: lower the "
                            "fraction or add images")
    if sum(_take(p.source_val_fraction, n) for n in counts) == 0:
        f = least_fraction(int(counts.max()))
        if counts.max() < 2 or any(n - _take(f, n) < 1 for n in counts):
            raise UserError(f"prepare.source_val_fraction={p.source_val_fraction} leaves the source "
                            f"validation split empty and no fraction can fill it while every class "
                            f"keeps a training image (the largest class has {counts.max()} "
                            "image(s)): add source images")
        raise UserError(f"prepare.source_val_fraction={p.source_val_fraction} leaves the source "
                        f"validation split empty (the largest class has {counts.max()} images): "
                        f"raise it to at least {f:g}")
    test_counts = np.bincount(test.labels, minlength=len(target.classes)) if test else None
    val_counts = np.bincount(val.labels, minlength=len(target.classes)) if val else None
    target_counts = np.bincount(target.labels, minlength=len(target.classes))
    for c, n in enumerate(target_counts):
        name = repr(target.classes[c])
        if test_counts is not None and test_counts[c] < 1:
            raise UserError(f"data.target: the official test split has no image of class "
                            f"{name}{why('test', c)}: add some, or set data.target_test: split")
        if val_counts is not None and val_counts[c] < 1:
            raise UserError(f"data.target: the val/ split has no image of class {name}"
                            f"{why('val', c)}: add some, or remove val/ to draw "
                            "prepare.target_val_per_class")
        # what the class must hold at the least: one carved test image, the carved validation
        # images, the shots; no fraction can make a smaller class fit
        needs = []  # (images, what they are for, the knob, its value)
        if test_counts is None:
            needs.append((1, "test image", "prepare.target_test_fraction", p.target_test_fraction))
        if val_counts is None and p.target_val_per_class:
            needs.append((p.target_val_per_class, "validation (prepare.target_val_per_class)",
                          "prepare.target_val_per_class", p.target_val_per_class))
        if p.shots:
            needs.append((p.shots, "shots (prepare.shots)", "prepare.shots", p.shots))
        if n < (least := sum(need[0] for need in needs)):
            _, _, key, value = max(needs, key=lambda need: need[0])
            lowerable = [need[2] for need in needs if need[2] != "prepare.target_test_fraction"]
            lower = f", or lower {' or '.join(lowerable)}" if lowerable else ""
            parts = " + ".join(f"{k} {what}" for k, what, _, _ in needs)
            raise UserError(f"{key}={value} but class {name} has only {n} image(s)"
                            f"{why('target', c)}, fewer than the {least} it needs ({parts}): no "
                            f"fraction makes it fit: add images{lower}")
        held = 0
        if test_counts is None:
            held = _take(p.target_test_fraction, n)
            if held < 1:
                raise UserError(f"prepare.target_test_fraction={p.target_test_fraction} leaves "
                                f"target class {name} ({n} images) without test images: raise it "
                                # the smallest class's least fraction: enough for every class
                                f"to at least {least_fraction(int(target_counts.min())):g}")
        val_take = 0
        if val_counts is None:
            val_take = p.target_val_per_class
            if n - held < val_take:
                raise UserError(f"prepare.target_val_per_class={val_take} but target class {name} "
                                f"has only {n - held} images after its test share ({n} - {held}):"
                                " lower it or prepare.target_test_fraction")
        pool = n - held - val_take
        if pool < p.shots:
            raise UserError(f"prepare.shots={p.shots} but class {name} has only {pool} images in "
                            f"the target train pool ({n} - {held} test - {val_take} validation): "
                            "lower prepare.shots or prepare.target_test_fraction / "
                            "prepare.target_val_per_class")


def _digest(image: np.ndarray, max_value: int) -> bytes:
    return hashlib.blake2b(image.tobytes() + f"{image.shape} {max_value}".encode(),
                           digest_size=16).digest()


def image_digests(raw: RawDataset, channels: int = 1) -> list[bytes]:
    """One digest per image, of the picture rather than of how its file stored it: converted to
    the scenario's `channels` in uint8 (grey from RGB by Pillow's integer luma, (19595 R + 38470 G
    + 7471 B + 2^15) >> 16, exact for R = G = B; grey to RGB by repeating it), with its shape and
    full-intensity value. So a grey image and its RGB, RGBA, LA, palette, 16-bit, BMP, TIFF or
    lossless WebP copy (the reader decodes them all to the same uint8 pixels) are one image,
    whichever mode their folder split was decoded in. Compared before alignment, on purpose:
    alignment makes distinct pictures equal (bbox crop: translations; scale max: ink
    intensities; 8x8 bottleneck: small differences), and dropping those would empty classes of
    legitimate images; copies at another size or after lossy compression are not found."""
    out = []
    for chunk in row_chunks(raw.images):
        if chunk.ndim == 4 and channels == 1:  # (N, H, W, 3) -> (N, H, W)
            weights = np.array([19595, 38470, 7471], np.uint32)
            chunk = ((chunk.astype(np.uint32) @ weights + (1 << 15)) >> 16).astype(np.uint8)
        elif chunk.ndim == 3 and channels == 3:
            chunk = np.repeat(chunk[..., None], 3, axis=3)
        out += [_digest(np.ascontiguousarray(image), raw.max_value) for image in chunk]
    return out


WHERE = {"test": "the target's official test split", "val": "the target's val/ split",
         "train": "the target's training images"}


def find_copies(source: tuple[list[bytes], np.ndarray],
                parts: list[tuple[str, list[bytes], np.ndarray]], target_classes: tuple[str, ...]):
    """Which images to keep, from their digests: `parts` are the target's (name, digests,
    labels) in priority order (official test, official val, train): a part keeps only images
    no earlier part has and the first copy of its own repeats (a repeat could otherwise sit in
    both test and train pool). The source loses every image the target has (a target test
    image must never be a source training image); its own repeats are counted, not dropped
    (`source_repeats`: one may sit in both source train and source val, which only flatters the
    source validation score). Returns (source keep mask, {part: keep mask}, counts,
    {(role, class): why its images were dropped}), role being "source" or a part's name."""
    seen: dict[bytes, tuple[str, int]] = {}  # digest -> (part, class) of its first copy
    origins: dict[tuple[str, int], Counter] = {}
    keeps = {}
    for role, digests, labels in parts:
        keep = keeps[role] = np.ones(len(digests), dtype=bool)
        for i, (digest, label) in enumerate(zip(digests, labels)):
            if digest in seen:
                keep[i] = False
                origins.setdefault((role, int(label)), Counter())[seen[digest]] += 1
            else:
                seen[digest] = (role, int(label))
    keep_source = np.array([digest not in seen for digest in source[0]], dtype=bool)
    for digest, label in zip(source[0], source[1]):
        if digest in seen:
            origins.setdefault(("source", int(label)), Counter())[seen[digest]] += 1
    counts = {"source_images_also_in_target": int((~keep_source).sum()),
              "source_repeats": len(source[0]) - len(set(source[0])),
              "target_duplicates_dropped": int(sum((~k).sum() for k in keeps.values()))}
    notes = {}
    for (role, c), where in origins.items():
        (first_role, first_class), _ = where.most_common(1)[0]
        others = " and elsewhere" if len(where) > 1 else ""
        notes[(role, c)] = (f"{sum(where.values())} of its images were dropped as copies of images "
                            f"of class {target_classes[first_class]!r} in "
                            f"{WHERE.get(first_role, 'the target')}{others}: the same picture, "
                            "however saved")
    return keep_source, keeps, counts, notes


def subset(raw: RawDataset, keep: np.ndarray) -> RawDataset:
    return RawDataset(take_rows(raw.images, keep), raw.labels[keep], raw.max_value, raw.classes)


def separate_by_content(source: RawDataset, *target_parts: RawDataset, channels: int = 1
                        ) -> tuple[RawDataset, list[RawDataset], dict[str, int]]:
    """find_copies on raw datasets, compared as image_digests(channels) sees them (pass
    prepare.channels: what build_scenario does); the target parts in priority order (official
    test, official val, train). Returns the source, the target parts and how many images each
    side lost."""
    names = [f"part {i}" for i in range(len(target_parts))]
    keep_source, keeps, counts, _ = find_copies(
        (image_digests(source, channels), source.labels),
        [(name, image_digests(part, channels), part.labels)
         for name, part in zip(names, target_parts)],
        target_parts[-1].classes if target_parts else source.classes)
    parts = [part if keeps[name].all() else subset(part, keeps[name])
             for name, part in zip(names, target_parts)]
    return (source if keep_source.all() else subset(source, keep_source)), parts, counts


def relabel_by_name(reference: RawDataset, other: RawDataset, where: str) -> RawDataset:
    """An official test/val split with its labels renumbered to the training split's class
    names (a folder's test/ may hold fewer classes, so its own numbering differs)."""
    if tuple(other.classes) == tuple(reference.classes):
        return other
    index = {name: i for i, name in enumerate(reference.classes)}
    if unknown := [c for c in other.classes if c not in index]:
        raise UserError(f"data.target: class {unknown[0]!r} of the {where} split has no training "
                        f"images (training classes: {', '.join(reference.classes)[:200]}): rename "
                        "or remove it")
    mapping = np.array([index[c] for c in other.classes], dtype=np.int64)
    return RawDataset(other.images, mapping[other.labels], other.max_value, reference.classes)


def draw_shots(labels: np.ndarray, pool: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """`shots` pool indices per class; nested in `shots` for a fixed seed."""
    drawn = [np.zeros(0, dtype=np.int64)]
    for c in np.unique(labels[pool]):
        members = pool[labels[pool] == c]
        if members.size < shots:
            raise UserError(f"prepare.shots={shots} but class {c} has only {members.size} images in "
                            f"the target train pool: lower prepare.shots or "
                            f"prepare.target_test_fraction / prepare.target_val_per_class")
        drawn.append(np.random.default_rng([seed, int(c)]).permutation(members)[:shots])
    return np.sort(np.concatenate(drawn))


@dataclass(frozen=True)
class Scenario:
    source: dict[str, np.ndarray]       # x_train, y_train, x_val, y_val
    target: dict[str, np.ndarray]       # x_train, y_train (the shots), x_val, y_val
    target_pool: dict[str, np.ndarray]  # x_pool, y_pool (the whole train pool), x_val, y_val
    target_unlabelled: dict[str, np.ndarray]  # x_unlabelled: the pool minus the shots, no labels
    target_test: dict[str, np.ndarray]  # x_test, y_test: read by evaluate only
    summary: dict[str, int | float]  # sizes and counts; framing statistics (shares, levels)
    source_classes: tuple[str, ...]
    target_classes: tuple[str, ...]
    prepare: Prepare  # the framing used: params' prepare section with every auto resolved
    backdrop: str = "blank"  # `backdrop` of both domains' framing statistics


def build_scenario(source: RawDataset, target: RawDataset, p: Prepare, seed: int,
                   source_spec: DatasetSpec | None = None,
                   target_spec: DatasetSpec | None = None,
                   target_test: RawDataset | None = None,
                   target_val: RawDataset | None = None, scratch: Path | None = None,
                   needs_colour: bool = False) -> Scenario:
    """target_test / target_val: the dataset's official splits; without them both are carved
    from the target's training images (prepare.target_test_fraction, target_val_per_class).
    scratch: a folder for aligned images too large for memory (see `align`); then the
    scenario's image arrays are lazy selections of those files (DiskArray), which `prepare`
    writes a block at a time. prepare.* auto is resolved here (resolve_framing; needs_colour:
    the model's weights expect RGB); the scenario's `prepare` is the framing used."""
    official = {"test": target_test, "val": target_val}
    official = {k: relabel_by_name(target, v, k) for k, v in official.items() if v is not None}
    if source_spec is not None:
        source = select_classes(source, source_spec.classes, "data.source.classes")
    if target_spec is not None:
        target = select_classes(target, target_spec.classes, "data.target.classes")
        official = {k: select_classes(v, target_spec.classes, "data.target.classes")
                    for k, v in official.items()}
    # the premises of the alignment, measured on each domain: a wrong one stops here, before
    # any image is aligned, and the numbers go into the summary either way
    framing = {"source": framing_stats(source), "target": framing_stats(target)}
    check_framing(framing, p)
    given, p = p, resolve_framing(p, framing, needs_colour)
    print(f"{describe_framing(p, given)}; backdrop {backdrop(framing)} (model.norm and model.input auto read it)")
    keep_source, keeps, dropped, notes = find_copies(
        (image_digests(source, p.channels), source.labels),
        [(k, image_digests(v, p.channels), v.labels) for k, v in official.items()]
        + [("train", image_digests(target, p.channels), target.labels)], target.classes)
    source = source if keep_source.all() else subset(source, keep_source)
    target = target if keeps["train"].all() else subset(target, keeps["train"])
    official = {k: v if keeps[k].all() else subset(v, keeps[k]) for k, v in official.items()}
    if dropped["source_images_also_in_target"]:
        print(f"warning: {dropped['source_images_also_in_target']} source images are also target "
              "images (the same picture, however saved): dropped from the source")
    if dropped["target_duplicates_dropped"] or dropped["source_repeats"]:
        print(f"warning: {dropped['target_duplicates_dropped']} target images repeat an earlier "
              f"one (each kept once); {dropped['source_repeats']} source images repeat one")
    test, val = official.get("test"), official.get("val")
    check_sizes(source, target, p, test, val, {("target" if role == "train" else role, c): note
                                               for (role, c), note in notes.items()})
    xs, xt = align(source, p, scratch), align(target, p, scratch)
    s = split_stratified(source.labels, p.split_seed, val=p.source_val_fraction)
    t = split_stratified(target.labels, p.split_seed, **({} if test else {"test": p.target_test_fraction}),
                         **({} if val else {"val": p.target_val_per_class}))
    x_test, y_test = ((align(test, p, scratch), test.labels) if test
                      else (take_rows(xt, t["test"]), target.labels[t["test"]]))
    x_val, y_val = ((align(val, p, scratch), val.labels) if val
                    else (take_rows(xt, t["val"]), target.labels[t["val"]]))
    shots = draw_shots(target.labels, t["rest"], p.shots, seed)
    unlabelled = np.setdiff1d(t["rest"], shots)
    summary = {"source_train": s["rest"].size, "source_val": s["val"].size,
               "target_pool": t["rest"].size, "target_train": shots.size,
               "target_unlabelled": unlabelled.size,
               "target_val": y_val.size, "target_test": y_test.size,
               "official_test_split": int(test is not None),
               "official_val_split": int(val is not None),
               "classes": int(np.unique(target.labels).size), "shots": p.shots, **dropped,
               **{f"{role}_{k}": v for role, stats in framing.items() for k, v in stats.items()},
               **framing_summary(p), "framing_backdrop_textured": int(backdrop(framing) == "textured")}
    return Scenario(
        source={"x_train": take_rows(xs, s["rest"]), "y_train": source.labels[s["rest"]],
                "x_val": take_rows(xs, s["val"]), "y_val": source.labels[s["val"]]},
        target={"x_train": take_rows(xt, shots), "y_train": target.labels[shots],
                "x_val": x_val, "y_val": y_val},
        target_pool={"x_pool": take_rows(xt, t["rest"]), "y_pool": target.labels[t["rest"]],
                     "x_val": x_val, "y_val": y_val},
        target_unlabelled={"x_unlabelled": take_rows(xt, unlabelled)},
        target_test={"x_test": x_test, "y_test": y_test},
        summary={k: v if isinstance(v, float) else int(v) for k, v in summary.items()},
        source_classes=tuple(source.classes), target_classes=tuple(target.classes),
        prepare=p, backdrop=backdrop(framing),
    )
