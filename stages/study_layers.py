"""Stage study layers@<seed>: the layer-transfer grid of the structure strategy at one label
budget: n = 0..L source blocks copied and frozen (AnB), copied and fine-tuned (AnB+), and a
control with n blocks frozen at a random initialisation. Test scores after selection."""

import transferlab  # noqa: F401  first: notes the dvc process that launched this stage
import argparse
from pathlib import Path

import numpy as np

from transferlab.io import load_arrays, read_metadata, write_json
from transferlab import compute
from transferlab.launcher import run_stage
from transferlab.models import load_classifier, read_backdrop
from transferlab.params import load_params
from transferlab.strategies import METHODS
from transferlab.study import cell_target, require_target_val, score, train_layer_grid
from transferlab.train import make_deterministic, pick_device, to_device
from transferlab.transfer import make_inputs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--prepared", type=Path, required=True, help="directory of prepared arrays")
    ap.add_argument("--source-model", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="output: the grid's scores, JSON")
    args = ap.parse_args(argv)
    params = load_params()
    # compute.threads (auto: cores / stages at once, e.g. transferlab-fanout --jobs): two cells
    # at once with every core each spin-wait on each other's cores (4x slower, measured)
    compute.set_threads(params.compute)
    shots = params.study.layer_shots

    make_deterministic(args.seed)
    device = pick_device()
    pool = to_device(load_arrays(args.prepared / "target_pool.safetensors", lazy=True), device)
    require_target_val(pool, "the study's layer grid")
    source = load_classifier(args.source_model, device)[0]
    backdrop = read_backdrop(read_metadata(args.prepared / "target_pool.safetensors"),
                             args.prepared / "target_pool.safetensors")
    inputs = make_inputs(METHODS["structure"], cell_target(pool, shots, args.seed)[0], params,
                         args.seed, source_model=source, backdrop=backdrop)
    outcomes = train_layer_grid(inputs, params)

    test = load_arrays(args.prepared / "target_test.safetensors", lazy=True)  # models are chosen: score
    models = {f"{v}:{n}": o.model for (v, n), o in outcomes.items()}
    scores = score(models, to_device({"x": test["x_test"]}, device)["x"], np.asarray(test["y_test"]))
    rows = [{"variant": v, "blocks": n, "val_accuracy": round(o.fit.best_val_accuracy, 4),
             **scores[f"{v}:{n}"]} for (v, n), o in outcomes.items()]
    write_json(args.out, {"shots": shots, "seed": args.seed, "grid": rows})
    print(f"seed={args.seed}: " + ", ".join(f"{r['variant']}:{r['blocks']} "
                                           f"{100 * r['accuracy']:.1f}" for r in rows))


if __name__ == "__main__":
    run_stage(main)
