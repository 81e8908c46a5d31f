"""Stage evaluate: every strategy's target classifier (and the source model as is, the
source-only baseline) on the held-out target test set: metrics, confusions, comparison."""

import argparse
from pathlib import Path

import torch

from transferlab.evaluation import compare, predict, results_markdown
from transferlab.io import (UserError, atomic_path, load_arrays, read_classes, run_stage,
                            write_csv, write_json)
from transferlab.models import load_classifier
from transferlab.train import make_deterministic, pick_device


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("models", type=Path, nargs="+",
                    help="the target classifiers to score, <strategy>.safetensors each: exactly the "
                         "files dvc.yaml lists, never whatever else lies in their folder")
    ap.add_argument("--source-model", type=Path, required=True)
    ap.add_argument("--test", type=Path, required=True, help="prepared target test arrays")
    ap.add_argument("--metrics", type=Path, required=True, help="output: summary JSON")
    ap.add_argument("--per-class", type=Path, required=True, help="output: per-class JSON")
    ap.add_argument("--comparison", type=Path, required=True, help="output: comparison CSV")
    ap.add_argument("--confusion", type=Path, required=True, help="output: directory of CSVs")
    args = ap.parse_args(argv)

    make_deterministic(0)
    device = pick_device()
    test = load_arrays(args.test, required=("x_test", "y_test"))
    x_test, y_test = torch.from_numpy(test["x_test"]).to(device), test["y_test"]
    target_classes = read_classes(args.test)
    num_classes = len(target_classes)
    models = {p.name.removesuffix(".safetensors"): p for p in args.models}
    if len(models) < len(args.models) or "source_only" in models:
        raise UserError(f"evaluate: model files must have distinct names other than source_only, "
                        f"got {[str(p) for p in args.models]}: fix the evaluate command in dvc.yaml")
    models["source_only"] = args.source_model
    predictions = {}
    for name, path in models.items():
        model, classes = load_classifier(path, device)
        if classes == target_classes:  # source-only needs the very same classes, in order
            predictions[name] = predict(model, x_test)
    scores = compare(predictions, y_test, num_classes)

    write_json(args.metrics, {name: {k: v for k, v in s.items() if k != "per_class_accuracy"}
                              for name, s in scores.items()})
    write_json(args.per_class, {name: s["per_class_accuracy"] for name, s in scores.items()})
    write_csv(args.comparison, ["strategy", "accuracy", "macro_f1", "gain_over_scratch"],
              [[n, s["accuracy"], s["macro_f1"], s.get("gain_over_scratch", "")]
               for n, s in scores.items()])
    with atomic_path(args.confusion) as tmp:
        tmp.mkdir()
        for name, pred in predictions.items():
            write_csv(tmp / f"{name}.csv", ["actual", "predicted"], zip(y_test.tolist(), pred.tolist()))
    print(results_markdown(scores), end="")  # the README's table: scripts/sync_readme.py


if __name__ == "__main__":
    run_stage(main)
