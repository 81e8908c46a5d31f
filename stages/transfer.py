"""Stage transfer@<strategy>: move the source knowledge to the target with one strategy.

Reads the target shots and validation set, never the target test set. Writes the resulting
target classifier, its validation metrics and its training curve.
"""

import argparse
from functools import partial
from pathlib import Path

from transferlab import strategies
from transferlab.io import (TRAIN_VAL, load_arrays, read_classes, read_metadata, run_stage,
                            save_state_dict, write_history, write_json)
from transferlab.models import load_classifier, model_metadata
from transferlab.params import load_params
from transferlab.train import make_deterministic, pick_device, to_device



def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("strategy", choices=strategies.NAMES)
    ap.add_argument("--prepared", type=Path, required=True, help="directory of prepared arrays")
    ap.add_argument("--source-model", type=Path, required=True)
    ap.add_argument("--features", type=Path, required=True, help="target features from extract")
    ap.add_argument("--model", type=Path, required=True, help="output: target classifier")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--curve", type=Path, required=True, help="output: training curve CSV")
    args = ap.parse_args(argv)
    params = load_params()
    cfg = getattr(params.transfer, args.strategy)

    make_deterministic(params.seed)
    device = pick_device()
    target = to_device(load_arrays(args.prepared / "target.safetensors", required=TRAIN_VAL), device)
    inputs = strategies.make_inputs(
        target, params, params.seed, lambda: load_classifier(args.source_model, device)[0],
        lambda: to_device(load_arrays(args.prepared / "source.safetensors", required=TRAIN_VAL), device),
        partial(load_arrays, args.features))
    outcome = strategies.run(args.strategy, inputs, cfg)

    classes = read_classes(args.prepared / "target.safetensors")
    preprocess = read_metadata(args.prepared / "target.safetensors").get("preprocess")
    save_state_dict(args.model, outcome.model.state_dict(),
                    model_metadata(inputs.architecture, classes, preprocess))
    fit = outcome.fit
    metrics = {"val_accuracy": round(fit.best_val_accuracy if fit else outcome.info["val_accuracy"], 4)}
    if fit:
        metrics["best_step"] = fit.best_step
    write_json(args.metrics, {**outcome.info, **metrics})
    history = fit.history if fit else [{"step": 0, "val_accuracy": metrics["val_accuracy"]}]
    write_history(args.curve, history)
    print(f"{args.strategy}: target val accuracy {metrics['val_accuracy']:.4f}")


if __name__ == "__main__":
    run_stage(main)
