"""Stage study cell@<k>-<seed>: every strategy on its own k-shot draw; then test scores.

Training and model selection see the draw and the target validation set only; the target
test set is read after every model has been chosen.
"""

import transferlab  # noqa: F401  first: notes the dvc process that launched this stage
import argparse
from pathlib import Path

import numpy as np

from transferlab.io import load_arrays, read_classes, read_metadata, write_json
from transferlab import compute
from transferlab.launcher import run_stage
from transferlab.models import load_classifier, read_backdrop
from transferlab.params import load_params
from transferlab.health import class_prior
from transferlab.study import (cell_target, checkpoint_rows, health_rows, require_target_val,
                               score, selected_models, train_cell)
from transferlab.train import make_deterministic, pick_device, to_device
from transferlab.transfer import selection_metrics


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shots", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--prepared", type=Path, required=True, help="directory of prepared arrays")
    ap.add_argument("--source-model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="output: the cell's scores, JSON")
    args = ap.parse_args(argv)
    params = load_params()
    # compute.threads (auto: cores / stages at once, e.g. transferlab-fanout --jobs): two cells
    # at once with every core each spin-wait on each other's cores (4x slower, measured)
    compute.set_threads(params.compute)

    make_deterministic(args.seed)
    device = pick_device()
    pool = to_device(load_arrays(args.prepared / "target_pool.safetensors", lazy=True), device)
    require_target_val(pool, "the study")
    source_model, source_classes = load_classifier(args.source_model, device)
    target_classes = read_classes(args.prepared / "target_pool.safetensors")
    backdrop = read_backdrop(read_metadata(args.prepared / "target_pool.safetensors"),
                             args.prepared / "target_pool.safetensors")
    target, unlabelled = cell_target(pool, args.shots, args.seed)
    source = to_device(load_arrays(args.prepared / "source.safetensors", lazy=True), device)
    outcomes = train_cell(target, unlabelled, params, args.seed, source_model, source,
                          source_classes, target_classes, backdrop,
                          read_metadata(args.source_model).get("norm", "batch"))

    test = load_arrays(args.prepared / "target_test.safetensors", lazy=True)  # models are chosen: score
    models = selected_models(outcomes)
    if source_classes == target_classes:
        models["source_only"] = source_model  # only where source and target share classes
    x_test, y_test = to_device({"x": test["x_test"]}, device)["x"], np.asarray(test["y_test"])
    scores = score(models, x_test, y_test)
    selection = {name: selection_metrics(o) for name, o in outcomes.items()}
    checkpoints = checkpoint_rows(outcomes, x_test, y_test)  # k = 0: the selection replay's rows
    prior = (class_prior(source["y_train"].cpu().numpy(), len(target_classes))
             if source_classes == target_classes else None)
    health = health_rows(models, unlabelled, len(target_classes), prior)  # label-free
    write_json(args.out, {"shots": args.shots, "seed": args.seed, "selection": selection,
                          "classes": len(target_classes), "test": scores, "health": health,
                          **({"checkpoints": checkpoints} if checkpoints else {})})
    print(f"k={args.shots} seed={args.seed}: " + ", ".join(
        f"{n} {100 * s['accuracy']:.1f}" for n, s in scores.items()))


if __name__ == "__main__":
    run_stage(main)
