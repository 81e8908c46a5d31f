"""Stage evaluate: every strategy's target classifier (and the source model as is, the
source-only baseline) on the held-out target test set: metrics, confusions, comparison.

metrics/evaluate.json keeps a few numbers per strategy (accuracy, macro-F1, gains over scratch
and over source-only, negative transfer, which selection chose the model) so that
`dvc exp show --only-changed` stays readable; per-class accuracy goes to plots/per_class.csv,
which DVC lists as plot data, not as metrics. A model file that transfer wrote as skipped
(needs target labels at prepare.shots: 0) is listed as skipped. plots/embedding/ holds a 2-D
PCA of source-val and unlabelled-target features, before adaptation (the source model) and
after it (every label-free method evaluated): `dvc plots show` draws the domains aligning.
Every model (the baselines included) also passes the label-free health check
(transferlab/health.py) on the unlabelled target images: `degenerate`, `top_share`,
`marginal_entropy` and `kl_to_source_prior` join its scores, and a degenerate model is marked in
the table and named in a warning line on stderr.
"""

import transferlab  # noqa: F401  first: notes the dvc process that launched this stage
import argparse
import sys
from pathlib import Path

import numpy as np

from transferlab.evaluation import compare, embed_2d, order, predict, results_markdown
from transferlab.errors import UserError
from transferlab.health import check_models, class_prior, health_warning
from transferlab.io import (atomic_path, load_arrays, read_classes, read_metadata, write_csv,
                            write_json)
from transferlab.launcher import run_stage
from transferlab.models import load_classifier
from transferlab.records import model_record
from transferlab.strategies import METHODS
from transferlab.train import make_deterministic, pick_device, to_device


ADAPTATION = {n for n, m in METHODS.items() if "unlabelled" in m.reads}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("models", type=Path, nargs="+",
                    help="the target classifiers to score, <strategy>.safetensors each: exactly the "
                         "files dvc.yaml lists, never whatever else lies in their folder")
    ap.add_argument("--source-model", type=Path, required=True)
    ap.add_argument("--test", type=Path, required=True, help="prepared target test arrays")
    ap.add_argument("--metrics", type=Path, required=True, help="output: summary JSON")
    ap.add_argument("--per-class", type=Path, required=True, help="output: per-class CSV")
    ap.add_argument("--comparison", type=Path, required=True, help="output: comparison CSV")
    ap.add_argument("--confusion", type=Path, required=True, help="output: directory of CSVs")
    ap.add_argument("--source", type=Path, required=True, help="prepared source arrays (val)")
    ap.add_argument("--unlabelled", type=Path, required=True, help="unlabelled target images")
    ap.add_argument("--embedding", type=Path, required=True, help="output: directory of CSVs")
    args = ap.parse_args(argv)

    make_deterministic(0)
    device = pick_device()
    test = load_arrays(args.test, required=("x_test", "y_test"), lazy=True)
    x_test, y_test = to_device({"x": test["x_test"]}, device)["x"], np.asarray(test["y_test"])
    target_classes = read_classes(args.test)
    num_classes = len(target_classes)
    models = {p.name.removesuffix(".safetensors"): p for p in args.models}
    if len(models) < len(args.models) or "source_only" in models:
        raise UserError(f"evaluate: model files must have distinct names other than source_only, "
                        f"got {[str(p) for p in args.models]}: fix the evaluate command in dvc.yaml")
    models["source_only"] = args.source_model
    # the health check's images: the unlabelled target pool; the test images, labels unused,
    # when the shots took the whole pool
    target_x = to_device(load_arrays(args.unlabelled, ("x_unlabelled",), lazy=True),
                         device)["x_unlabelled"]
    health_x, where = ((target_x, f"{len(target_x)} unlabelled target images") if len(target_x)
                       else (x_test, f"{len(x_test)} target test images (labels unused)"))
    predictions, on_target, facts, skipped, encoders = {}, {}, {}, {}, {}
    for name, path in models.items():
        record = model_record(path, read_metadata(path))  # every key checked: one line if not
        if record.skipped is not None:
            skipped[name] = {"skipped": True, "reason": record.skipped.removeprefix("skipped: ")}
            continue
        model, classes = load_classifier(path, device)
        if classes != target_classes and name != "source_only":  # a stale or foreign model
            raise UserError(f"{path} classifies {len(classes)} classes {classes[:5]}, the target "
                            f"test set has {target_classes[:5]} ({len(target_classes)}): run "
                            "`dvc repro` to retrain it")
        if classes == target_classes:  # source-only needs the very same classes, in order
            predictions[name] = predict(model, x_test)
            on_target[name] = predict(model, health_x)
            facts[name] = {"target_labels": record.target_labels, "selection": record.selection,
                           "guard": record.guard}
            if name == "source_only" or name in ADAPTATION:
                encoders["before" if name == "source_only" else name] = model.encoder
    if not set(predictions) - {"source_only"}:
        raise UserError("every strategy of the transfer stage needs target labels and "
                        "prepare.shots=0: add a label-free method (e.g. mcc, dann) to dvc.yaml's "
                        "transfer stage or set prepare.shots >= 1")
    scores = compare(predictions, y_test, num_classes,
                     {n: f["target_labels"] for n, f in facts.items()})
    source = load_arrays(args.source, ("x_val", "y_train"), lazy=True)
    prior = (class_prior(np.asarray(source["y_train"]), num_classes)  # KL needs the same classes
             if read_classes(args.source) == target_classes else None)
    health = check_models(on_target, num_classes, prior, where)
    for name, s in scores.items():
        s["selection"] = facts[name]["selection"]
        if facts[name]["guard"]:
            s["guard"] = facts[name]["guard"]
        s.update(health[name].record())

    write_json(args.metrics, {**{name: {k: v for k, v in s.items() if k != "per_class_accuracy"}
                                 for name, s in scores.items()}, **skipped})
    write_csv(args.per_class, ["strategy", "class", "accuracy"],
              [[n, c, a] for n, s in scores.items() for c, a in s["per_class_accuracy"].items()])
    scores.update(skipped)
    write_csv(args.comparison, ["strategy", "accuracy", "macro_f1", "gain_over_scratch",
                                "gain_over_source_only"],
              [[n, s["accuracy"], s["macro_f1"], s.get("gain_over_scratch", ""),
                s.get("gain_over_source_only", "")] for n, s in scores.items() if "accuracy" in s])
    with atomic_path(args.confusion) as tmp:
        tmp.mkdir()
        for name, pred in predictions.items():
            write_csv(tmp / f"{name}.csv", ["actual", "predicted"], zip(y_test.tolist(), pred.tolist()))
    source_x = to_device({"x_val": source["x_val"]}, device)["x_val"]
    with atomic_path(args.embedding) as tmp:
        tmp.mkdir()
        for name, encoder in encoders.items():
            for domain, xy in zip(("source", "target"), embed_2d(encoder, source_x, target_x)):
                write_csv(tmp / f"{name}_{domain}.csv", ["pc1", "pc2"], xy.tolist())
    print(results_markdown(scores), end="")  # the README's table: scripts/sync_readme.py
    for name in [n for n in order(health) if health[n].degenerate]:
        print(health_warning(name, health[name], target_classes, where), file=sys.stderr)


if __name__ == "__main__":
    run_stage(main)
