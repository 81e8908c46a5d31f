"""Apply a trained model to new images: `transferlab-predict MODEL IMAGES_OR_FOLDERS...`.

The founding tutorial's last step, "apply the adjusted model to the new task". Any image file
Pillow reads, of any size and mode, goes through the preprocessing recorded in the model file
(the `prepare` alignment the model was trained on: channels, bounding-box crop, bottleneck,
size, scaling), so a file exported from the target dataset gives the very tensor it gave in
training. One CSV row per image: the top-k classes by name with their probabilities. A file
that cannot be read gets one line on stderr and the rest are still predicted (exit code 2 then,
0 when every file was predicted).

    transferlab-predict models/transfer/finetune.safetensors photos/ extra.png --out predictions.csv --top-k 3
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferlab.io import UserError, run_stage, show_path, write_csv

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


def preprocessing(metadata: dict[str, str], path: Path):
    """(the `prepare` params a model was trained with, the folder decode size or 0), as
    recorded in its file by the prepare stage."""
    from transferlab.params import Prepare

    if "preprocess" not in metadata:
        raise UserError(f"{show_path(path)} records no preprocessing (written by an older "
                        "version): run `dvc repro` to rebuild it")
    fields = json.loads(metadata["preprocess"])
    decode_size = fields.pop("decode_size")
    # the split knobs play no part in preprocessing one image: any valid value will do
    return Prepare.model_validate({**fields, "source_val_fraction": 0.5, "target_test_fraction": 0.5,
                                   "target_val_per_class": 1, "split_seed": 0,
                                   "shots": 1}), decode_size


def collect_images(inputs: Sequence[Path]) -> list[Path]:
    """Files as given; folders searched recursively for image files, each folder sorted."""
    found = []
    for path in inputs:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                            and p.is_file() and not any(part.startswith(".") for part in
                                                        p.relative_to(path).parts))
        else:
            found.append(path)
    return found


def preprocess_file(path: Path, prep, decode_size: int) -> np.ndarray:
    """One file -> (C, S, S) uint8, the very steps training data took: a folder dataset's
    images were decoded by `read_image` (centre square at decode_size), a torchvision or embedded
    dataset's arrive at their own size; then `align` with the recorded prepare params."""
    from transferlab.datasets import RawDataset, read_image
    from transferlab.scenario import align

    if not path.is_file():
        raise UserError(f"{show_path(path)}: {'not found' if not path.exists() else 'not a regular file'}")
    mode = "L" if prep.channels == 1 else "RGB"
    image = read_image(path, mode, decode_size or None)  # UserError for an unreadable file
    return align(RawDataset(image[None], np.zeros(1, np.int64), 255, ("?",)), prep)[0]


def predict_files(model_path: Path, files: Sequence[Path], top_k: int, batch_size: int = 256
                  ) -> tuple[list[list], list[str]]:
    """CSV rows (path, then top-k class and probability pairs) for the readable files, and one
    message per file that could not be read."""
    import torch

    from transferlab.io import load_state_dict
    from transferlab.models import load_classifier
    from transferlab.train import predict_logits

    try:
        model, classes = load_classifier(model_path)
        metadata = load_state_dict(model_path)[1]
    except UserError as err:  # the loaders advise a stage's rerun: here a wrong file was given
        why = re.sub(r":? (delete it and )?run (the stage that writes it )?\(?`dvc repro`.*$", "",
                     str(err).removeprefix(show_path(model_path)).strip(" :")
                     ).replace("is corrupt", "is not a safetensors file", 1)
        raise UserError(f"model {show_path(model_path)} {why}: give a model file the pipeline "
                        "wrote, e.g. models/transfer/finetune.safetensors") from None
    prep, decode_size = preprocessing(metadata, model_path)
    top_k = min(top_k, len(classes))
    aligned, kept, problems = [], [], []
    for path in files:
        try:
            aligned.append(preprocess_file(path, prep, decode_size))
        except UserError as err:
            problems.append(str(err))
            continue
        kept.append(path)
    if not kept:
        return [], problems
    model.eval()
    x = torch.from_numpy(np.stack(aligned))
    probs = torch.softmax(predict_logits(model, x, batch_size), dim=1)
    values, indices = probs.topk(top_k, dim=1)
    rows = [[str(path)] + [item for v, i in zip(vs.tolist(), ix.tolist())
                           for item in (classes[i], round(v, 6))]
            for path, vs, ix in zip(kept, values, indices)]
    return rows, problems


def main(argv=None):
    ap = argparse.ArgumentParser(prog="transferlab-predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a model file the pipeline wrote (.safetensors)")
    ap.add_argument("images", type=Path, nargs="+", help="image files and/or folders")
    ap.add_argument("--out", type=Path, default=Path("predictions.csv"), help="output CSV")
    ap.add_argument("--top-k", type=int, default=3, help="classes per image (default 3)")
    args = ap.parse_args(argv)
    if args.top_k < 1:
        raise UserError(f"--top-k={args.top_k}: give 1 or more")
    if args.out.is_dir():
        raise UserError(f"--out {show_path(args.out)} is a folder: give a file path for the CSV, "
                        f"e.g. {show_path(args.out / 'predictions.csv')}")
    files = collect_images(args.images)
    if not files:
        raise UserError(f"no image files in {', '.join(show_path(p) for p in args.images)}")
    read = {f.resolve() for f in [args.model, *files]}
    if args.out.resolve() in read:
        raise UserError(f"--out {show_path(args.out)} is a file this command reads (the model or "
                        "an image): give another path for the CSV")
    rows, problems = predict_files(args.model, files, args.top_k)
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    if not rows:
        raise UserError(f"none of the {len(files)} files could be read: no predictions written")
    header = ["path"] + [f"{kind}_{k}" for k in range(1, len(rows[0]) // 2 + 1)
                         for kind in ("class", "probability")]
    write_csv(args.out, header, rows)
    print(f"{len(rows)} images predicted -> {show_path(args.out)}"
          + (f"; {len(problems)} skipped" if problems else ""))
    if problems:
        sys.exit(2)


def cli() -> None:
    """The console script's entry point (pyproject.toml [project.scripts])."""
    run_stage(main)
