"""Stage export: the strategy with the best target-validation accuracy (0 shots: the best
label-free score), as ONNX; a model the health check flags is passed over for the next one.

Reads the strategies' validation metrics (never the test set), exports the chosen model with
its class names and preprocessing in the ONNX metadata, and checks onnxruntime against torch on
the target validation images before writing anything. A model the label-free health check
flags on those images (transferlab/health.py: one class for most of them), or whose target
validation accuracy is not clearly above chance, is refused with one line and nothing is
written, unless `health.allow_degenerate: true` (then it ships with a warning).
"""

import transferlab  # noqa: F401  first: notes the dvc process that launched this stage
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from transferlab.export import export_metadata, onnx_bytes, ranked, ship_verdict
from transferlab.errors import UserError
from transferlab.health import check_health
from transferlab.io import atomic_path, load_arrays, read_metadata, write_json
from transferlab.launcher import run_stage
from transferlab.models import load_classifier
from transferlab.params import load_params
from transferlab.records import RERUN, model_record, read_transfer_metrics
from transferlab.train import make_deterministic, predict_logits, to_device

TOLERANCE = 1e-4  # max |logit difference| between onnxruntime and torch


def load_candidate(path: Path, metrics_path: Path):
    """(model, classes, preprocess record) of a strategy's model file, checked."""
    record = model_record(path, read_metadata(path))
    if record.skipped is not None:
        raise UserError(f"{path} is the placeholder of a skipped strategy ({record.skipped}) but "
                        f"{metrics_path} records a trained one: run `dvc repro` to rewrite both")
    if record.preprocess is None:  # the ONNX file would not say how to prepare an image
        raise UserError(f"{path} records no preprocessing (written by an older version): {RERUN}")
    model, classes = load_classifier(path)
    return model, classes, record.preprocess


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("models", type=Path, nargs="+", help="<strategy>.safetensors, dvc.yaml's list")
    ap.add_argument("--val-metrics", type=Path, nargs="+", required=True,
                    help="<strategy>.json with val_accuracy, in the order of the models")
    ap.add_argument("--val", type=Path, required=True, help="prepared target train/val arrays")
    ap.add_argument("--pool", type=Path, help="prepared unlabelled target images: the health "
                    "check and the ONNX comparison run on them where there is no val image")
    ap.add_argument("--out", type=Path, required=True, help="output: the ONNX file")
    ap.add_argument("--summary", type=Path, required=True, help="output: what was exported, JSON")
    args = ap.parse_args(argv)
    params = load_params()
    allow_degenerate = params.health.allow_degenerate
    names = [p.name.removesuffix(".safetensors") for p in args.models]
    if names != [p.stem for p in args.val_metrics]:
        raise UserError(f"export: models {names} and --val-metrics {[p.stem for p in args.val_metrics]}"
                        " differ: fix the export command in dvc.yaml")

    make_deterministic(0)
    # each file checked: a NaN, a string or a missing val_accuracy is one line naming it
    val_metrics = {n: read_transfer_metrics(p) for n, p in zip(names, args.val_metrics)}
    # skipped strategies (prepare.shots: 0) have no model; with 0 shots no target label
    # chooses among the label-free methods (export.choose)
    candidates = {n: m for n, m in val_metrics.items() if not m.get("skipped")}
    if not candidates:
        raise UserError("export: every strategy was skipped (prepare.shots=0 and none of them "
                        "is label-free): add a label-free method (e.g. mcc) to dvc.yaml's "
                        "transfer stage or set prepare.shots >= 1")
    order, chosen_by = ranked(candidates, params.selection.validator)
    val_accuracy = {n: m.get("val_accuracy") for n, m in candidates.items()}  # None: no val image
    val = load_arrays(args.val, ("x_val",), lazy=True)
    where = "target val images"
    if len(val["x_val"]) == 0:  # prepare.shots and target_val_per_class 0: no target label
        if args.pool is None:
            raise UserError(f"export: {args.val} holds no target val image: give --pool "
                            "data/prepared/target_unlabelled.safetensors (dvc.yaml's export)")
        val, where = {"x_val": load_arrays(args.pool, ("x_unlabelled",), lazy=True)["x_unlabelled"],
                      "y_val": None}, "unlabelled target images"
    x_val = to_device({"x_val": val["x_val"]}, torch.device("cpu"))["x_val"]
    # the best-ranked model the label-free health check passes on the `where` images (labels
    # unused); when none does, the best-ranked, for ship_verdict to refuse or warn
    picks, passed_over = [], []
    for name in order:
        model, classes, preprocess = load_candidate(args.models[names.index(name)],
                                                    args.val_metrics[names.index(name)])
        predicted = predict_logits(model.eval(), x_val).argmax(1).numpy()
        picks.append((name, model, classes, preprocess, predicted))
        health = check_health(predicted, len(classes))
        if not health.degenerate:
            for line in passed_over:  # said only when another one ships: else the refusal says it
                print(line, file=sys.stderr)
            break
        passed_over.append(f"export: passing over {name}: {health.describe(classes)} on the "
                           f"{where}")
    else:
        picks = picks[:1]
    chosen, model, classes, preprocess, predicted = picks[-1]
    if chosen != order[0]:
        chosen_by += f", {order[0]} degenerate"
    guard = candidates[chosen].get("guard")
    if guard and guard != "accepted":  # label-free: the method holds the source model
        chosen_by += f"; its guard {guard}"
    # refused (one line naming health.allow_degenerate) before anything is converted or written
    health, warning = ship_verdict(f"{chosen} (chosen by {chosen_by})", predicted,
                                   val.get("y_val"), classes, allow_degenerate, where)
    if warning:
        print(warning, file=sys.stderr)
    blob = onnx_bytes(model, tuple(x_val.shape[1:]),
                      export_metadata(chosen, val_accuracy[chosen], classes, preprocess.record(),
                                      warning or "ok"))

    import onnxruntime
    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    ours = predict_logits(model, x_val).numpy()
    # the same batches as torch (predict_logits bounds them by image size), the same input
    theirs = predict_logits(
        lambda x: torch.from_numpy(session.run(None, {"image": x.contiguous().numpy()})[0]),
        x_val).numpy()
    gap = float(np.abs(ours - theirs).max())
    if gap > TOLERANCE:
        raise UserError(f"export: onnxruntime differs from torch by {gap:.2e} > {TOLERANCE} on "
                        f"the {where}: {chosen} was not exported")
    with atomic_path(args.out) as tmp:
        tmp.write_bytes(blob)
    write_json(args.summary, {"strategy": chosen, "chosen_by": chosen_by,
                              "target_val_accuracy": val_accuracy[chosen],
                              "onnx_max_abs_logit_diff": float(f"{gap:.2e}"), **health,
                              **({"guard": guard} if guard else {})})
    said = ("none: no target val image" if val_accuracy[chosen] is None
            else f"{val_accuracy[chosen]:.4f}")
    print(f"exported {chosen} (chosen by {chosen_by}; target val accuracy {said}) -> {args.out}; "
          f"onnxruntime vs torch: max |logit diff| {gap:.1e}")


if __name__ == "__main__":
    run_stage(main)
