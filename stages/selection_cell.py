"""Stage selection cell@<task>-<seed>-<draw>: every label-free method of one selection-study task
at 0 target labels, with one hyper-parameter draw, and every candidate it could ship scored.

A candidate is (method, draw, checkpoint): the source model (step 0) and each evaluation. Its
row holds every validator's score (label-free), its target-val accuracy (the oracle's yardstick)
and, read after training ended, its target test accuracy. Draw 0 runs each method with its
params section; draw n > 0 with options drawn from its search space (transferlab/search.py),
recorded in the cell. The selection report replays every rule on these rows.
"""

import transferlab  # noqa: F401  first: notes the dvc process that launched this stage
import argparse
from pathlib import Path

import numpy as np

from transferlab import compute, search, strategies
from transferlab.io import load_arrays, read_classes, read_json, read_metadata, write_json
from transferlab.launcher import run_stage
from transferlab.models import load_classifier, read_backdrop
from transferlab.params import load_task_params
from transferlab.study import cell_target, checkpoint_rows, require_target_val, train_cell
from transferlab.train import make_deterministic, pick_device, to_device


def drawn_params(params, draw: int):
    """(params whose label-free methods carry draw `draw`'s options, {method: those options});
    at draw > 0 a method without a search space is left out (it would repeat draw 0)."""
    options, update = {}, {}
    for name, method in strategies.METHODS.items():
        if method.needs_labels or (draw and not method.search):
            continue
        chosen = search.draw(name, method.search, getattr(params.transfer, name), draw)
        update[name] = chosen
        options[name] = chosen.model_dump()
    return params.model_copy(update={"transfer": params.transfer.model_copy(update=update)}), options


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True, help="a name of selection_study.task_params")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--draw", type=int, required=True, help="0: the params' own options")
    ap.add_argument("--data", type=Path, required=True, help="the task's folder (task@<name>)")
    ap.add_argument("--out", type=Path, required=True, help="output: the cell's rows, JSON")
    args = ap.parse_args(argv)
    if args.draw < 0:
        ap.error(f"--draw {args.draw}: draws count from 0 (the params' own options)")
    params, _ = load_task_params(args.task)
    params, options = drawn_params(params, args.draw)
    compute.set_threads(params.compute)

    make_deterministic(args.seed)
    device = pick_device()
    prepared = args.data / "prepared"
    pool = to_device(load_arrays(prepared / "target_pool.safetensors", lazy=True), device)
    require_target_val(pool, "the selection study")
    source_model, source_classes = load_classifier(args.data / "source.safetensors", device)
    target_classes = read_classes(prepared / "target_pool.safetensors")
    backdrop = read_backdrop(read_metadata(prepared / "target_pool.safetensors"),
                             prepared / "target_pool.safetensors")
    target, unlabelled = cell_target(pool, 0, args.seed)
    source = to_device(load_arrays(prepared / "source.safetensors", lazy=True), device)
    outcomes = train_cell(target, unlabelled, params, args.seed, source_model, source,
                          source_classes, target_classes, backdrop,
                          read_metadata(args.data / "source.safetensors").get("norm", "batch"),
                          only=tuple(options))

    test = load_arrays(prepared / "target_test.safetensors", lazy=True)  # every run ended
    x_test = to_device({"x": test["x_test"]}, device)["x"]
    checkpoints = checkpoint_rows(outcomes, x_test, np.asarray(test["y_test"]))
    write_json(args.out, {"task": args.task, "seed": args.seed, "draw": args.draw, "shots": 0,
                          "classes": len(target_classes),
                          "task_params": read_json(args.data / "task.json").get("params", {}),
                          "options": {n: options[n] for n in checkpoints},
                          "checkpoints": checkpoints})
    print(f"{args.task} seed={args.seed} draw={args.draw}: "
          f"{sum(map(len, checkpoints.values()))} candidates of {', '.join(checkpoints)}")


if __name__ == "__main__":
    run_stage(main)
