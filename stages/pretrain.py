"""Stage pretrain: train the source model on the source train split (selection: source val)."""

import argparse
from pathlib import Path

from transferlab import compute
from transferlab.io import (TRAIN_VAL, load_arrays, read_classes, read_metadata, save_state_dict,
                            write_history, write_json)
from transferlab.launcher import run_stage
from transferlab.models import architecture_from, model_metadata, read_backdrop
from transferlab.params import load_params
from transferlab.source import pretrain
from transferlab.train import make_deterministic, pick_device, to_device


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("source", type=Path, help="prepared source arrays")
    ap.add_argument("model", type=Path, help="output: source model (safetensors)")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--curve", type=Path, required=True, help="output: training curve CSV")
    args = ap.parse_args(argv)
    params = load_params()
    compute.launch(params.compute)  # compute.nproc > 1: this stage again under torchrun

    make_deterministic(params.pretrain.seed)
    source = to_device(load_arrays(args.source, required=TRAIN_VAL, lazy=True), pick_device())
    architecture = architecture_from(params.model, source["x_train"].shape[1],
                                     source["x_train"].shape[-1],
                                     read_backdrop(read_metadata(args.source), args.source))
    model, result = pretrain(source, architecture, params.pretrain, params.model.weights,
                             params.augment.photo())

    if not compute.publishes():  # after every rank finished: rank 0 alone writes
        return
    classes = read_classes(args.source)
    preprocess = read_metadata(args.source).get("preprocess")
    save_state_dict(args.model, model.state_dict(),
                    model_metadata(architecture, classes, preprocess))
    write_json(args.metrics, {"source_val_accuracy": round(result.best_val_accuracy, 4),
                              "best_step": result.best_step})
    write_history(args.curve, result.history)
    print(f"source val accuracy {result.best_val_accuracy:.4f} at step {result.best_step}")


if __name__ == "__main__":
    run_stage(main)
