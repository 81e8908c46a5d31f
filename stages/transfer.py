"""Stage transfer@<strategy>: move the source knowledge to the target with one strategy.

Reads the target shots and validation set, never the target test set, and only the inputs the
strategy's registry entry says it reads (source model, source data, frozen features, the
unlabelled target pool). Writes the target classifier, its validation metrics (and how its
checkpoint was selected) and its training curve. With `prepare.shots: 0` a strategy that needs
target labels (or, across different classes, one that adapts a shared classifier) writes a
model file without tensors that says why (evaluate lists it as skipped):
DVC's outputs exist either way, so the pipeline's shape does not depend on a param.
"""

import argparse
import json
from pathlib import Path

from transferlab import compute, strategies
from transferlab.io import (TRAIN_VAL, load_arrays, read_classes, read_metadata, save_state_dict,
                            write_history, write_json)
from transferlab.launcher import run_stage
from transferlab.models import load_classifier, model_metadata, read_backdrop
from transferlab.params import load_params
from transferlab.train import make_deterministic, pick_device, to_device
from transferlab.transfer import make_inputs, selection_metrics, why_skipped


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
    method, cfg = strategies.METHODS[args.strategy], getattr(params.transfer, args.strategy)
    classes = read_classes(args.prepared / "target.safetensors")
    # only a method that reads the source model may open it: dvc.yaml runs the others before
    # (or without) pretrain
    source_classes = read_classes(args.source_model) if "source_model" in method.reads else None
    source_norm = (read_metadata(args.source_model).get("norm", "batch")
                   if "source_model" in method.reads else None)
    why = why_skipped(method, params.prepare.shots, source_classes, classes, source_norm)
    if why:
        note = f"skipped: {why}"
        save_state_dict(args.model, {}, {"skipped": note, "classes": json.dumps(classes)})
        write_json(args.metrics, {"skipped": True})
        write_history(args.curve, [{"step": 0, "val_accuracy": ""}])
        print(note)
        return
    compute.launch(params.compute, trains=args.strategy != "features")  # nproc > 1: torchrun

    make_deterministic(params.seed)
    device = pick_device()
    arrays = lambda name, need=TRAIN_VAL: to_device(  # noqa: E731
        load_arrays(args.prepared / f"{name}.safetensors", required=need, lazy=True), device)
    reads = method.reads
    target_meta = read_metadata(args.prepared / "target.safetensors")
    inputs = make_inputs(
        method, arrays("target"), params, params.seed,
        source_model=load_classifier(args.source_model, device)[0] if "source_model" in reads else None,
        source=arrays("source") if "source_data" in reads else None,
        features=load_arrays(args.features) if "features" in reads else None,
        unlabelled=arrays("target_unlabelled", ("x_unlabelled",))["x_unlabelled"] if "unlabelled" in reads else None,
        backdrop=read_backdrop(target_meta, args.prepared / "target.safetensors"),
        num_classes=len(classes))
    outcome = strategies.run(args.strategy, inputs, cfg)
    if not compute.publishes():  # after every rank finished: rank 0 alone writes
        return

    metrics = {**outcome.info, **selection_metrics(outcome)}
    preprocess = target_meta.get("preprocess")
    save_state_dict(args.model, outcome.model.state_dict(),
                    {**model_metadata(inputs.architecture, classes, preprocess),
                     "selection": metrics["selection"],
                     **({"guard": metrics["guard"]} if "guard" in metrics else {}),
                     "target_labels": str(len(inputs.target["y_train"]))})
    write_json(args.metrics, metrics)
    history = outcome.fit.history if outcome.fit else [{"step": 0, "val_accuracy": metrics["val_accuracy"]}]
    write_history(args.curve, history)
    label_free = metrics["selection"].startswith("source-val+")
    said = ("none (no target validation image)" if metrics["val_accuracy"] is None
            else f"{metrics['val_accuracy']:.4f}")
    print(f"{args.strategy}: target val accuracy {said} "
          + ("(oracle only, not used to choose; " if label_free else "(")
          + f"selection: {metrics['selection']})"
          + (f"; guard: {metrics['guard']}" if "guard" in metrics else ""))


if __name__ == "__main__":
    run_stage(main)
