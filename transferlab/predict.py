"""Apply a trained model to new images: `transferlab-predict MODEL IMAGES_OR_FOLDERS...`.

The founding tutorial's last step, "apply the adjusted model to the new task". Any image file
Pillow reads, of any size and mode, goes through the preprocessing recorded in the model file
(the `prepare` alignment the model was trained on: channels, bounding-box crop, bottleneck,
size, scaling), so a file exported from the target dataset gives the very tensor it gave in
training. One CSV row per image: the top-k classes by name with their probabilities. A file
that cannot be read gets its own line on stderr ("skipped: <file>: <why>") and the rest are still
predicted: the CSV holds the readable ones, and the exit code is 2 when any file was skipped (a
script must not take a partial CSV for a whole one), 0 when every file was predicted. None
readable: one "error:" line and no CSV. The model's metadata (preprocessing, classes) is checked
before any image is read (transferlab.records); the ONNX export and the placeholder of a skipped
strategy are named as such.

    transferlab-predict models/transfer/finetune.safetensors photos/ extra.png --out predictions.csv --top-k 3

`--adapt` adapts the model to the images it is given before predicting them (test-time
adaptation, no label, the source data not needed; the model file is not changed):
  bn_adapt  every BatchNorm layer's running mean and variance := those of the given images
            (AdaBN, Li et al. 2017);
  tent      bn_adapt, then only the BatchNorm scale and shift trained for --adapt-steps Adam
            steps (lr --adapt-lr) to minimise the mean entropy of the predictions on batches of
            the given images (TENT, Wang et al. 2021, with the statistics of all the images
            rather than of each batch, so a prediction does not depend on its batch).
Either way a prediction then depends on which images were given together: the output says so.
A model without BatchNorm has nothing to adapt: refused, as is a run with fewer than 2 images.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferlab.errors import UserError, one_line, show_path
from transferlab.io import check_output, write_csv
from transferlab.launcher import run_stage

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


GIVE_MODEL = "give a model file the pipeline wrote, e.g. models/transfer/finetune.safetensors"


def preprocessing(metadata: dict[str, str], path: Path):
    """(the `prepare` params a model was trained with, the folder decode size or 0), as
    recorded in its file by the prepare stage, checked (records.Preprocess): a malformed
    record is one line naming the file and the key."""
    from transferlab.records import model_record

    record = model_record(path, metadata, fix=GIVE_MODEL).preprocess
    if record is None:
        raise UserError(f"model {show_path(path)} records no preprocessing (written by an older "
                        "version): run `dvc repro` to rebuild it, or " + GIVE_MODEL)
    return record.prepare(), record.decode_size


def is_onnx(path: Path) -> bool:
    """An ONNX file (the export stage's): named so, or a protobuf starting with ir_version
    (field 1, tag 0x08) where a safetensors file has its 8-byte header length and then '{'."""
    if path.suffix.lower() == ".onnx":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False  # the loader names what is wrong with it
    return head[:1] == b"\x08" and head[8:9] != b"{"


def _given_as_model(path: Path, err: UserError) -> UserError:
    """A loader's fault, phrased for a file given as MODEL: the loaders advise a stage's rerun
    ("delete it and run dvc repro"), which here would delete whatever was given by mistake."""
    why = re.sub(r":? (delete it and )?run (the stage that writes it )?\(?`dvc repro`.*$", "",
                 str(err).removeprefix(show_path(path)).strip(" :")
                 ).replace("is corrupt", "is not a safetensors file", 1)
    return UserError(f"model {show_path(path)} {why}: {GIVE_MODEL}")


def load_model(path: Path):
    """(Classifier, class names, prepare params, decode size) of a model file given to predict;
    one line for anything else: the ONNX export, the placeholder of a skipped strategy, a file
    whose metadata does not fit the schema, a data file, an image."""
    from transferlab.io import read_metadata
    from transferlab.models import load_classifier

    if path.is_file() and is_onnx(path):
        raise UserError(f"model {show_path(path)} is an ONNX file (the export stage writes "
                        "models/export/model.onnx): predict reads the .safetensors model, e.g. "
                        "models/transfer/finetune.safetensors, or run the ONNX file with "
                        "onnxruntime (its metadata records the classes and the preprocessing)")
    try:
        metadata = read_metadata(path)
    except UserError as err:
        raise _given_as_model(path, err) from None
    from transferlab.records import model_record

    record = model_record(path, metadata, fix=GIVE_MODEL)
    if record.skipped is not None:
        raise UserError(f"model {show_path(path)} holds no weights: the transfer stage skipped "
                        f"this strategy ({one_line(record.skipped).removeprefix('skipped: ')[:300]}): give the model of a "
                        "strategy that ran (metrics/evaluate.json lists them)")
    try:
        model, classes = load_classifier(path)
    except UserError as err:
        raise _given_as_model(path, err) from None
    prep, decode_size = preprocessing(metadata, path)
    if str(prep.channels) != metadata.get("in_channels", str(prep.channels)):
        raise UserError(f"model {show_path(path)}: metadata key 'preprocess.channels'="
                        f"{prep.channels} disagrees with the model's in_channels="
                        f"{metadata['in_channels']}: {GIVE_MODEL}")
    return model, classes, prep, decode_size


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Files as given; folders searched recursively for image files, each folder sorted."""
    found = []
    for path in inputs:
        if os.path.isdir(path):  # False, not an OSError, for an over-long name or a loop
            # a broken link, a FIFO or a link loop named .png is listed: reported, not ignored
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                            and not p.is_dir() and not any(part.startswith(".") for part in
                                                           p.relative_to(path).parts))
        else:
            found.append(path)
    return found


def preprocess_file(path: Path, prep, decode_size: int) -> np.ndarray:
    """One file -> (C, S, S) uint8, the very steps training data took: a folder dataset's
    images were decoded by `read_image` (centre square at decode_size), a torchvision or embedded
    dataset's arrive at their own size; then `align` with the recorded prepare params."""
    from transferlab.images import read_image
    from transferlab.rawdata import RawDataset
    from transferlab.scenario import align

    if not os.path.isfile(path):  # os.path: False, not an OSError, for an over-long name
        try:
            os.stat(path)
        except FileNotFoundError:
            raise UserError(f"{show_path(path)}: " + ("a symbolic link to nothing"
                            if os.path.islink(path) else "not found")) from None
        except OSError as err:  # the system's reason: a loop of links, a name too long
            raise UserError(f"{show_path(path)}: {err.strerror}") from None
        raise UserError(f"{show_path(path)}: not a regular file")
    mode = "L" if prep.channels == 1 else "RGB"
    image = read_image(path, mode, decode_size or None)  # UserError for an unreadable file
    return align(RawDataset(image[None], np.zeros(1, np.int64), 255, ("?",)), prep)[0]


ADAPT = ("none", "bn_adapt", "tent")


def adapt(model, x, how: str, steps: int, lr: float, batch_size: int = 256) -> str:
    """Adapt `model` in place to the uint8 images `x` (N x C x H x W) by `how` (ADAPT); returns
    what changed, for the output. Only BatchNorm statistics (bn_adapt), and with tent the
    BatchNorm scale and shift, change; the model is left in eval mode."""
    import torch

    from transferlab.strategies.adabn import recalibrate
    from transferlab.strategies.tent import batch_norm_affine, entropy
    from transferlab.train import to_float

    if how == "none":
        return ""
    affine = batch_norm_affine(model)
    if not affine:
        raise UserError(f"--adapt {how} adapts BatchNorm layers and this model has none "
                        "(model.norm other than batch): predict without --adapt")
    if len(x) < 2:
        raise UserError(f"--adapt {how} estimates statistics of the images given and there is "
                        f"{len(x)}: give 2 or more images, or predict without --adapt")
    layers = recalibrate(model, x, batch_size)
    what = f"BatchNorm statistics of {layers} layers from these {len(x)} images"
    if how == "tent":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in affine:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(affine, lr=lr)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        model.eval()  # the statistics just estimated normalise every batch
        for step in range(steps):
            start = step * batch_size % len(x)
            batch = x[order[start:start + batch_size]]
            optimizer.zero_grad(set_to_none=True)
            entropy(model(to_float(batch))).backward()
            optimizer.step()
        for p in model.parameters():
            p.requires_grad_(False)
        what += f", BatchNorm scale and shift by {steps} entropy steps"
    return what


def predict_files(model_path: Path, files: Sequence[Path], top_k: int, batch_size: int = 256,
                  adapt_how: str = "none", adapt_steps: int = 10, adapt_lr: float = 1e-3
                  ) -> tuple[list[list], list[str], str]:
    """CSV rows (path, then top-k class and probability pairs) for the readable files, one
    message per file that could not be read, and what --adapt changed ("" for none)."""
    import torch

    from transferlab.train import predict_logits

    model, classes, prep, decode_size = load_model(model_path)
    top_k = min(top_k, len(classes))
    aligned, kept, problems = [], [], []
    for path in files:
        try:
            aligned.append(preprocess_file(path, prep, decode_size))
        except UserError as err:  # one line per file; the others are still predicted
            why = one_line(str(err))
            problems.append(why if show_path(path) in why else f"{show_path(path)}: {why}")
            continue
        kept.append(path)
    if not kept:
        return [], problems, ""
    model.eval()
    x = torch.from_numpy(np.stack(aligned))
    try:
        adapted = adapt(model, x, adapt_how, adapt_steps, adapt_lr, batch_size)
    except UserError as err:  # e.g. too few readable images: say which files were not
        for problem in problems:
            print(f"skipped: {problem}", file=sys.stderr)
        raise UserError(f"{err}" + (f" ({len(problems)} of the {len(files)} files could not be "
                                    "read: see the skipped lines above)" if problems else "")
                        ) from None
    probs = torch.softmax(predict_logits(model, x, batch_size), dim=1)
    values, indices = probs.topk(top_k, dim=1)
    rows = [[str(path)] + [item for v, i in zip(vs.tolist(), ix.tolist())
                           for item in (classes[i], round(v, 6))]
            for path, vs, ix in zip(kept, values, indices)]
    return rows, problems, adapted


def main(argv=None):
    ap = argparse.ArgumentParser(prog="transferlab-predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a model file the pipeline wrote (.safetensors)")
    ap.add_argument("images", type=Path, nargs="+", help="image files and/or folders")
    ap.add_argument("--out", type=Path, default=Path("predictions.csv"), help="output CSV")
    ap.add_argument("--top-k", type=int, default=3, help="classes per image (default 3)")
    ap.add_argument("--adapt", choices=ADAPT, default="none",
                    help="adapt the model to the given images first (see above; default none)")
    ap.add_argument("--adapt-steps", type=int, default=10, help="tent: Adam steps (default 10)")
    ap.add_argument("--adapt-lr", type=float, default=1e-3, help="tent: Adam lr (default 0.001)")
    args = ap.parse_args(argv)
    if args.top_k < 1:
        raise UserError(f"--top-k={args.top_k}: give 1 or more")
    if not 1 <= args.adapt_steps <= 100_000:
        raise UserError(f"--adapt-steps={args.adapt_steps}: give 1 to 100000")
    if not 0 < args.adapt_lr <= 10:  # NaN fails both comparisons
        raise UserError(f"--adapt-lr={args.adapt_lr}: give a rate above 0 and at most 10")
    check_output(args.out)  # a link, device, FIFO, loop or over-long name: one line, before work
    if args.out.is_dir():
        raise UserError(f"--out {show_path(args.out)} is a folder: give a file path for the CSV, "
                        f"e.g. {show_path(args.out / 'predictions.csv')}")
    files = collect_images(args.images)
    if not files:
        raise UserError(f"no image files in {', '.join(show_path(p) for p in args.images)}")
    read = {os.path.realpath(f) for f in [args.model, *files]}  # a symlink loop: no error here
    if os.path.realpath(args.out) in read:
        raise UserError(f"--out {show_path(args.out)} is a file this command reads (the model or "
                        "an image): give another path for the CSV")
    rows, problems, adapted = predict_files(args.model, files, args.top_k, adapt_how=args.adapt,
                                            adapt_steps=args.adapt_steps, adapt_lr=args.adapt_lr)
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    if not rows:
        raise UserError(f"none of the {len(files)} files could be read: no predictions written")
    header = ["path"] + [f"{kind}_{k}" for k in range(1, len(rows[0]) // 2 + 1)
                         for kind in ("class", "probability")]
    write_csv(args.out, header, rows)
    if adapted:
        print(f"--adapt {args.adapt}: the model was adapted to these images before predicting "
              f"({adapted}); each prediction depends on which images were given together; the "
              f"model file is unchanged")
    print(f"{len(rows)} images predicted -> {show_path(args.out)}"
          + (f" (after --adapt {args.adapt})" if adapted else "")
          + (f"; {len(problems)} skipped" if problems else ""))
    if problems:
        sys.exit(2)


def cli() -> None:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    run_stage(main)
