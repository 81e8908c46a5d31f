"""Stage report: one self-contained HTML page of the run (results, curves, confusion matrices,
misclassified target test images; the study's intervals with --study), from the metrics and
plot files the pipeline wrote. Opens offline: nothing is fetched.

Reads exactly the files its command names (dvc.yaml lists each curve file), never whatever
else lies in a folder: a stray CSV, or the curve of a strategy dvc.yaml no longer runs, is not
drawn. Every file is checked (transferlab.records): a NaN score or a malformed row is one line."""

import argparse
from pathlib import Path

import numpy as np

from transferlab.errors import UserError
from transferlab.io import atomic_path, load_arrays, read_classes
from transferlab.launcher import run_stage
from transferlab.records import index, read_csv, read_curve, read_scenario, read_scores, read_study
from transferlab.report import render_report

FIX_DVC_YAML = "fix the report command in dvc.yaml"


def read_confusion(path: Path, num_images: int, num_classes: int) -> tuple[np.ndarray, ...]:
    """(actual, predicted) class indices, one row per target test image."""
    rows = read_csv(path, ("actual", "predicted"))
    if len(rows) != num_images:
        raise UserError(f"{path} has {len(rows)} rows for {num_images} test images: run `dvc repro`")
    return tuple(np.array([index(path, line, c, r[c], num_classes) for line, r in enumerate(rows, 2)],
                          dtype=np.int64)
                 for c in ("actual", "predicted"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--evaluate", type=Path, required=True, help="metrics/evaluate.json")
    ap.add_argument("--scenario", type=Path, required=True, help="metrics/scenario.json")
    ap.add_argument("--curves", type=Path, nargs="+", required=True,
                    help="the curve CSVs: pretrain.csv and one per strategy of evaluate.json")
    ap.add_argument("--confusion", type=Path, required=True,
                    help="evaluate's folder of confusion CSVs: <strategy>.csv of each one scored")
    ap.add_argument("--test", type=Path, required=True, help="prepared target test arrays")
    ap.add_argument("--source", type=Path, help="prepared source arrays (the contact sheet)")
    ap.add_argument("--study", type=Path, help="study/metrics.json (adds the study's intervals)")
    ap.add_argument("--out", type=Path, required=True, help="output: the HTML page")
    args = ap.parse_args(argv)

    if folders := [p for p in args.curves if p.is_dir()]:
        raise UserError(f"--curves {folders[0]} is a folder: name each curve file (e.g. "
                        f"{folders[0] / 'pretrain.csv'}), as dvc.yaml's report stage does")
    scores = read_scores(args.evaluate)
    curve_names = [p.stem for p in args.curves]
    strategies = sorted(set(scores) - {"source_only"})
    if len(set(curve_names)) < len(curve_names) or sorted(set(curve_names) - {"pretrain"}) != strategies:
        raise UserError(f"report: --curves {sorted(curve_names)} are not pretrain plus the "
                        f"strategies of {args.evaluate} {strategies}: {FIX_DVC_YAML}")
    test = load_arrays(args.test, ("x_test", "y_test"), lazy=True)  # images: only the tiles are read
    classes = read_classes(args.test)
    confusions = {name: read_confusion(args.confusion / f"{name}.csv", len(test["y_test"]),
                                       len(classes))
                  for name, s in scores.items() if not s.get("skipped")}
    prepared = {"target": (test["x_test"], test["y_test"], classes)}
    if args.source:
        source = load_arrays(args.source, ("x_val", "y_val"), lazy=True)
        prepared = {"source": (source["x_val"], source["y_val"], read_classes(args.source)),
                    **prepared}
    page = render_report(scores, read_scenario(args.scenario),
                         {p.stem: read_curve(p) for p in args.curves}, confusions,
                         test["x_test"], classes, read_study(args.study) if args.study else None,
                         prepared)
    with atomic_path(args.out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    print(f"{args.out}: {len(page) / 1e3:.0f} kB")


if __name__ == "__main__":
    run_stage(main)
