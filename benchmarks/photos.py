"""Photo training throughput at 224 px, resnet18: this project's loop vs the PyTorch
transfer-learning tutorial's loop, same model, batch size, optimiser and number of steps.

The photos: `--photos N` JPEGs (default 2,000, quality 90, 4 classes) made reproducibly from a
seed: smooth random colour fields with a class-dependent shape, each 320-512 px wide and
240-384 px high, like camera pictures shrunk for the web (no real photos can be downloaded
here). Written once to a temporary folder `<root>/train/<class>/`.

  tutorial: torchvision.datasets.ImageFolder, per-item RandomResizedCrop(224),
            RandomHorizontalFlip, ToTensor, Normalize (ImageNet mean/std), DataLoader
            (shuffle, num_workers=2), as https://pytorch.org/tutorials/beginner/transfer_learning_tutorial.html
  ours:     the photos decoded once (datasets.load_folder: shorter side 256, centre square,
            as the download stage does; DVC caches the result) and resized to 224 by the
            prepare stage's code, kept as uint8; each step gathers a batch by index, moves it to
            the device as uint8, crops and flips it there, still uint8 (augment.mode: photo,
            train.photo_batch), then converts to float and normalises inside the model, in
            transferlab.train.fit.

Both train torchvision's resnet18 (random init: no weights download) for --steps steps after
--warmup steps (the tutorial with SGD, lr 0.001, momentum 0.9, as it is written; ours with its
AdamW); the figure is training images per second and the ratio ours / tutorial, measured in the
same run. Each loop runs in fp32 and, with --precision fp32,bf16 (the default), again with bf16
autocast (ours: `compute.precision: bf16`; the tutorial: its forward pass and loss inside
torch.autocast, the PyTorch AMP recipe), so the table separates what the input pipeline gains
from what the precision gains. The one-time decode of `ours` is printed apart (DVC does it once
per dataset, not per epoch). On a CPU the model's own compute dominates both loops in fp32; the
input pipeline's share, and so its ratio, grows as the compute gets faster (bf16 on a CPU with
AMX, a GPU). So the input pipelines are also timed alone, each delivering --input-batches
normalised float batches on the device with no model: the ceiling of each loop.

Usage:  python benchmarks/photos.py                      (about 4 minutes on 2 CPU cores)
        python benchmarks/photos.py --steps 20 --batch-size 64   (e.g. on a GPU)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = ("disc", "square", "stripes", "ring")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_photos(root: Path, n: int, seed: int | tuple = 0, split: str = "train",
                width: tuple[int, int] = (320, 513), height: tuple[int, int] = (240, 385),
                first: int = 0) -> None:
    """n photos <root>/<split>/<class>/<first + i>.jpg, classes in turn, sizes drawn from the
    half-open `width` and `height` ranges; the same arguments write the same bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(first, first + n):
        label = i % len(CLASSES)
        w, h = int(rng.integers(*width)), int(rng.integers(*height))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = rng.uniform(0, 255, 3)
        slope = rng.uniform(-0.3, 0.3, (2, 3))
        img = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
        cx, cy, r = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, rng.uniform(0.15, 0.3) * h
        d = np.hypot(xx - cx, yy - cy)
        mask = {0: d < r, 1: (abs(xx - cx) < r) & (abs(yy - cy) < r),
                2: (np.sin(xx / rng.uniform(6, 14)) > 0), 3: (abs(d - r) < r / 4)}[label]
        img[mask] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 8, img.shape)
        folder = root / split / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg",
                                                                     quality=90)


def resnet18(num_classes: int):
    import torchvision

    return torchvision.models.resnet18(num_classes=num_classes)


def autocast(precision: str, device):
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def tutorial_loader(root: Path, batch_size: int):
    """The tutorial's data: ImageFolder with per-item transforms, DataLoader with 2 workers."""
    import torch
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    data = datasets.ImageFolder(root / "train", transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(MEAN, STD)]))
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True,
                                       num_workers=2, drop_last=True)


def tutorial_rate(root: Path, steps: int, warmup: int, batch_size: int, device,
                  precision: str = "fp32") -> float:
    import torch

    loader = tutorial_loader(root, batch_size)
    model = resnet18(len(loader.dataset.classes)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    done, start = 0, None
    while done < warmup + steps:
        for inputs, labels in loader:
            if done == warmup:
                sync(device)
                start = time.perf_counter()
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            with autocast(precision, device):
                loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            done += 1
            if done == warmup + steps:
                break
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def tutorial_input_rate(root: Path, batches: int, batch_size: int, device) -> float:
    """Images/s of the tutorial's input pipeline alone: its DataLoader's batches moved to the
    device, no model (the ceiling of its loop when the model's compute costs nothing)."""
    loader = tutorial_loader(root, batch_size)
    done, start = 0, None
    while done <= batches:
        for inputs, _ in loader:
            if done == 1:  # after the first batch: the workers have started
                sync(device)
                start = time.perf_counter()
            inputs.to(device)
            done += 1
            if done > batches:
                break
    sync(device)
    return batches * batch_size / (time.perf_counter() - start)


def ours_rate(root: Path, steps: int, warmup: int, batch_size: int, device,
              precisions: list[str], input_batches: int) -> tuple[dict[str, float], float, float]:
    """Training images/s of transferlab.train.fit per precision, the images/s of its input
    pipeline alone, and the one-time decode + resize seconds."""
    import torch

    from transferlab import compute

    from transferlab.images import load_folder
    from transferlab.models import Classifier, architecture_from, set_input_normalisation
    from transferlab.params import Model, load_params
    from transferlab.scenario import align
    from transferlab.train import PhotoAugment, Stream, fit

    # the photo preset's prepare settings, applied by prepare's own code
    prepare = load_params(ROOT / "params.yaml").prepare.model_copy(update={
        "image_size": 224, "crop": "none", "bottleneck_size": 0, "scale": "none", "channels": 3})
    start = time.perf_counter()
    raw = load_folder(root, size=256)  # the download stage: decoded once
    x = torch.from_numpy(align(raw, prepare))  # the prepare stage: uint8 at 224 px
    decode_s = time.perf_counter() - start
    y = torch.from_numpy(raw.labels)
    torch.manual_seed(0)
    arch = architecture_from(Model(arch="resnet18", widths=[1], small_input_stem=False,
                                   weights="none"), 3)
    model = Classifier(arch.build(), len(raw.classes))
    set_input_normalisation(model.encoder, MEAN, STD)
    model.to(device)
    x, y = x.to(device), y.to(device)
    val = (x[:batch_size], y[:batch_size], model)

    def run(n: int) -> float:
        sync(device)
        t = time.perf_counter()
        fit(model, [{"params": list(model.parameters()), "lr": 0.001}], [Stream(x, y, model)],
            val, steps=n, batch_size=batch_size, weight_decay=0.0, shift_px=0, seed=0,
            eval_every=n, photo=PhotoAugment(0.08, True), desc="ours")
        sync(device)
        return time.perf_counter() - t

    from transferlab.train import IndexSampler, augment_batch

    gen = torch.Generator().manual_seed(0)
    sampler, photo = IndexSampler(len(x), batch_size, gen), PhotoAugment(0.08, True)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

    def input_pipeline(n: int) -> float:
        """fit's batch preparation alone, as in its step: gather, crop/flip (uint8), to float;
        and the normalisation the model's first layer does."""
        sync(device)
        t = time.perf_counter()
        for _ in range(n):
            (augment_batch(x[sampler.next().to(device)], 0, photo, gen) - mean) / std
        sync(device)
        return time.perf_counter() - t

    input_pipeline(1)
    input_rate = input_batches * batch_size / input_pipeline(input_batches)
    rates = {}
    for precision in precisions:
        compute.configure(compute.Setup(precision=precision))  # what compute.precision sets
        if warmup:
            run(warmup)
        rates[precision] = steps * batch_size / run(steps)
    compute.configure(compute.Setup())
    return rates, input_rate, decode_s


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--photos", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--input-batches", type=int, default=20,
                    help="batches timed for the input pipelines alone (no model)")
    ap.add_argument("--precision", default="fp32,bf16",
                    help="comma-separated: fp32, bf16 (autocast; on a CPU fast with AMX)")
    args = ap.parse_args()
    for name in ("photos", "steps", "batch_size", "input_batches"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.warmup < 0:
        ap.error(f"--warmup {args.warmup}: must be 0 or more")
    if args.photos < args.batch_size:
        ap.error(f"--photos {args.photos} is fewer than one batch (--batch-size "
                 f"{args.batch_size}): the tutorial's loader drops incomplete batches")
    precisions = args.precision.split(",")
    if not precisions or set(precisions) - {"fp32", "bf16"}:
        ap.error(f"--precision {args.precision}: use fp32, bf16 or fp32,bf16")
    import torch

    from transferlab.train import pick_device

    device = pick_device()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        make_photos(root, args.photos)
        print(f"{args.photos} JPEG photos written in {time.perf_counter() - start:.0f} s")
        tutorial = {p: tutorial_rate(root, args.steps, args.warmup, args.batch_size, device, p)
                    for p in precisions}
        tutorial_input = tutorial_input_rate(root, args.input_batches, args.batch_size, device)
        ours, ours_input, decode_s = ours_rate(root, args.steps, args.warmup, args.batch_size,
                                               device, precisions, args.input_batches)
    print(f"resnet18, 224 px, batch {args.batch_size}, {args.steps} steps after {args.warmup} "
          "warm-up steps, images/s:")
    print(f"  {'precision':9s} {'tutorial':>9s} {'ours':>7s} {'ours/tutorial':>14s}")
    for p in precisions:
        print(f"  {p:9s} {tutorial[p]:9.1f} {ours[p]:7.1f} {ours[p] / tutorial[p]:13.2f}x")
    print("  tutorial: ImageFolder, per-item transforms, 2 workers; ours: decoded once, batch "
          "crop/flip on the device")
    if {"fp32", "bf16"} <= set(precisions):
        print(f"  ours in bf16 / the tutorial as written (fp32): "
              f"{ours['bf16'] / tutorial['fp32']:.2f}x   (target >= 2x)")
    print(f"input pipeline alone (batches on the device, no model), images/s: tutorial "
          f"{tutorial_input:.0f}, ours {ours_input:.0f}, ours/tutorial "
          f"{ours_input / tutorial_input:.1f}x")
    print("  the ceiling of each loop when the model's compute costs nothing; where the model "
          "is fast (a GPU) the slower pipeline bounds the loop")
    print(f"  ours, one-time decode + resize of {args.photos} photos: {decode_s:.1f} s "
          "(the download and prepare stages; DVC caches it)")


if __name__ == "__main__":
    main()
