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
1-shot draw.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from transferlab.datasets import RawDataset
from transferlab.io import UserError
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
    """(N, C, H, W) with C in {1, 3} -> (N, channels, H, W)."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    return (x * torch.tensor(LUMINANCE).view(1, 3, 1, 1)).sum(1, keepdim=True)


def align(raw: RawDataset, p: Prepare) -> np.ndarray:
    """Raw images -> (N, channels, image_size, image_size) uint8, the same framing in both
    domains."""
    first_size = p.bottleneck_size or p.image_size
    x = torch.from_numpy(raw.images.astype(np.float32) / raw.max_value)
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
    return RawDataset(raw.images[keep], relabel[raw.labels[keep]], raw.max_value,
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


def check_sizes(source: RawDataset, target: RawDataset, p: Prepare) -> None:
    """Every split the scenario cuts, sized per class before any image is aligned or any model
    trained: an empty split or a class too small for it stops here naming the key, the class
    and its count, not three stages later as a shape error."""
    for role, raw in (("source", source), ("target", target)):
        present = np.unique(raw.labels)
        if present.size < 2:
            names = ", ".join(repr(raw.classes[c]) for c in present) or "none"
            raise UserError(f"data.{role}: {present.size} class with images ({names}): a "
                            "classifier needs at least two: add class folders or widen "
                            f"data.{role}.classes")
        if absent := [raw.classes[c] for c in range(len(raw.classes)) if c not in present]:
            raise UserError(f"data.{role}: class {absent[0]!r} has no images: add some or leave "
                            f"it out with data.{role}.classes")
    counts = np.bincount(source.labels)
    for c, n in enumerate(counts):
        if n - _take(p.source_val_fraction, n) < 1:
            raise UserError(f"data.source: class {source.classes[c]!r} has only {n} image(s), none "
                            f"left for training after prepare.source_val_fraction="
                            f"{p.source_val_fraction}: lower the fraction or add images")
    if sum(_take(p.source_val_fraction, n) for n in counts) == 0:
        raise UserError(f"prepare.source_val_fraction={p.source_val_fraction} leaves the source "
                        f"validation split empty (the largest class has {counts.max()} images): "
                        f"raise it to at least {1 / counts.max():.3g}")
    for c, n in enumerate(np.bincount(target.labels)):
        name, test = repr(target.classes[c]), _take(p.target_test_fraction, n)
        if test < 1:
            raise UserError(f"prepare.target_test_fraction={p.target_test_fraction} leaves target "
                            f"class {name} ({n} images) without test images: raise it to at least "
                            f"{0.5 / n + 1e-9:.3g}, or add images")
        if n - test < p.target_val_per_class:
            raise UserError(f"prepare.target_val_per_class={p.target_val_per_class} but target "
                            f"class {name} has only {n - test} images after its test share "
                            f"({n} - {test}): lower it or prepare.target_test_fraction")
        pool = n - test - p.target_val_per_class
        if pool < p.shots:
            raise UserError(f"prepare.shots={p.shots} but class {name} has only {pool} images in "
                            f"the target train pool ({n} - {test} test - {p.target_val_per_class} "
                            "validation): lower prepare.shots or prepare.target_test_fraction / "
                            "prepare.target_val_per_class")


def image_digests(raw: RawDataset) -> list[bytes]:
    """One digest per decoded image (pixels and shape): equal digests are the same image."""
    return [hashlib.blake2b(image.tobytes() + str(image.shape).encode(), digest_size=16).digest()
            for image in raw.images]


def subset(raw: RawDataset, keep: np.ndarray) -> RawDataset:
    return RawDataset(raw.images[keep], raw.labels[keep], raw.max_value, raw.classes)


def separate_by_content(source: RawDataset, target: RawDataset
                        ) -> tuple[RawDataset, RawDataset, dict[str, int]]:
    """No image may be in both domains, nor twice in the target, whatever the names say: a
    folder and its subfolder, MNIST-5k inside MNIST, a file copied into two classes. The
    target keeps the first copy of a repeated image (it could otherwise sit in both test and
    train pool); the source loses every image the target has (a target test image must never
    be a source training image). Returns both and how many images each lost."""
    target_digests = image_digests(target)
    first_of: dict[bytes, int] = {}
    for i, digest in enumerate(target_digests):
        first_of.setdefault(digest, i)
    keep_target = np.zeros(len(target_digests), dtype=bool)
    keep_target[list(first_of.values())] = True
    keep_source = np.array([d not in first_of for d in image_digests(source)], dtype=bool)
    dropped = {"source_images_also_in_target": int((~keep_source).sum()),
               "target_duplicates_dropped": int((~keep_target).sum())}
    if dropped["source_images_also_in_target"] == 0 and dropped["target_duplicates_dropped"] == 0:
        return source, target, dropped
    return subset(source, keep_source), subset(target, keep_target), dropped


def draw_shots(labels: np.ndarray, pool: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """`shots` pool indices per class; nested in `shots` for a fixed seed."""
    drawn = []
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
    target_pool: dict[str, np.ndarray]  # x_pool, y_pool (all unlabelled-so-far images), x_val, y_val
    target_test: dict[str, np.ndarray]  # x_test, y_test: read by evaluate only
    summary: dict[str, int]
    source_classes: tuple[str, ...]
    target_classes: tuple[str, ...]


def build_scenario(source: RawDataset, target: RawDataset, p: Prepare, seed: int,
                   source_spec: DatasetSpec | None = None,
                   target_spec: DatasetSpec | None = None) -> Scenario:
    if source_spec is not None:
        source = select_classes(source, source_spec.classes, "data.source.classes")
    if target_spec is not None:
        target = select_classes(target, target_spec.classes, "data.target.classes")
    source, target, dropped = separate_by_content(source, target)
    if dropped["source_images_also_in_target"]:
        print(f"warning: {dropped['source_images_also_in_target']} source images are also target "
              "images (same pixels): dropped from the source")
    check_sizes(source, target, p)
    xs, xt = align(source, p), align(target, p)
    s = split_stratified(source.labels, p.split_seed, val=p.source_val_fraction)
    t = split_stratified(target.labels, p.split_seed, test=p.target_test_fraction,
                         val=p.target_val_per_class)
    shots = draw_shots(target.labels, t["rest"], p.shots, seed)
    summary = {"source_train": s["rest"].size, "source_val": s["val"].size,
               "target_pool": t["rest"].size, "target_train": shots.size,
               "target_val": t["val"].size, "target_test": t["test"].size,
               "classes": int(np.unique(target.labels).size), "shots": p.shots, **dropped}
    return Scenario(
        source={"x_train": xs[s["rest"]], "y_train": source.labels[s["rest"]],
                "x_val": xs[s["val"]], "y_val": source.labels[s["val"]]},
        target={"x_train": xt[shots], "y_train": target.labels[shots],
                "x_val": xt[t["val"]], "y_val": target.labels[t["val"]]},
        target_pool={"x_pool": xt[t["rest"]], "y_pool": target.labels[t["rest"]],
                     "x_val": xt[t["val"]], "y_val": target.labels[t["val"]]},
        target_test={"x_test": xt[t["test"]], "y_test": target.labels[t["test"]]},
        summary={k: int(v) for k, v in summary.items()},
        source_classes=tuple(source.classes), target_classes=tuple(target.classes),
    )
