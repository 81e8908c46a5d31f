"""Stage study cell@<k>-<seed>: every strategy on its own k-shot draw; then test scores.

Training and model selection see the draw and the target validation set only; the target
test set is read after every model has been chosen.
"""

import argparse
from pathlib import Path

import torch

from transferlab.io import load_arrays, read_classes, run_stage, write_json
from transferlab.models import load_classifier
from transferlab.params import load_params
from transferlab.strategies import make_inputs
from transferlab.study import cell_target, score, train_cell
from transferlab.train import make_deterministic, pick_device, to_device


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shots", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--prepared", type=Path, required=True, help="directory of prepared arrays")
    ap.add_argument("--source-model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="output: the cell's scores, JSON")
    args = ap.parse_args(argv)
    params = load_params()

    make_deterministic(args.seed)
    device = pick_device()
    pool = to_device(load_arrays(args.prepared / "target_pool.safetensors"), device)
    source_model, source_classes = load_classifier(args.source_model, device)
    inputs = make_inputs(
        cell_target(pool, args.shots, args.seed), params, args.seed, lambda: source_model,
        lambda: to_device(load_arrays(args.prepared / "source.safetensors"), device))
    outcomes = train_cell(inputs, params)

    test = load_arrays(args.prepared / "target_test.safetensors")  # models are chosen: score
    models = {name: o.model for name, o in outcomes.items()}
    target_classes = read_classes(args.prepared / "target_test.safetensors")
    if source_classes == target_classes:
        models["source_only"] = source_model  # only where source and target share classes
    scores = score(models, torch.from_numpy(test["x_test"]).to(device), test["y_test"])
    val = {name: round(o.fit.best_val_accuracy if o.fit else o.info["val_accuracy"], 4)
           for name, o in outcomes.items()}
    write_json(args.out, {"shots": args.shots, "seed": args.seed, "val_accuracy": val,
                          "test": scores})
    print(f"k={args.shots} seed={args.seed}: " + ", ".join(
        f"{n} {100 * s['accuracy']:.1f}" for n, s in scores.items()))


if __name__ == "__main__":
    run_stage(main)
