"""Stage extract: features of the target shots and validation set by the frozen source encoder,
computed once for the feature-transfer strategy, plus feature-space diagnostics and the
transferability scores (LogME, LEEP, NCE, H-score) of the source model on those images."""

import argparse
from pathlib import Path

from transferlab.io import TRAIN_VAL, load_arrays, save_arrays, write_json
from transferlab.launcher import run_stage
from transferlab.models import load_classifier
from transferlab.params import load_params
from transferlab.source import feature_diagnostics, target_features
from transferlab.train import make_deterministic, pick_device, to_device
from transferlab.transferability import feature_cells, score_source


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model", type=Path, help="source model")
    ap.add_argument("target", type=Path, help="prepared target arrays (shots and validation)")
    ap.add_argument("out", type=Path, help="output: target features")
    ap.add_argument("--metrics", type=Path, required=True)
    args = ap.parse_args(argv)
    batch_size = load_params().extract.batch_size

    make_deterministic(0)
    device = pick_device()
    model = load_classifier(args.model, device)[0]
    target = to_device(load_arrays(args.target, required=TRAIN_VAL, lazy=True), device)
    features = target_features(model.encoder, target, batch_size)
    save_arrays(args.out, features)
    diagnostics = feature_diagnostics(features["train_features"], features["y_train"],
                                      features["val_features"], features["y_val"])
    head = [t.detach().cpu().numpy() for t in (model.head.weight, model.head.bias)]
    diagnostics["transferability"] = score_source(features, *head,  # shots + validation
                                                  cells=feature_cells(model.encoder))
    write_json(args.metrics, diagnostics)
    print(diagnostics)


if __name__ == "__main__":
    run_stage(main)
