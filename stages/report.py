"""Stage report: one self-contained HTML page of the run (results, curves, confusion matrices,
misclassified target test images; the study's intervals with --study), from the metrics and
plot files the pipeline wrote. Opens offline: nothing is fetched."""

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from transferlab.io import UserError, atomic_path, load_arrays, read_json, read_metadata, run_stage
from transferlab.report import render_report


def read_csvs(folder: Path) -> dict[str, list[dict]]:
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise UserError(f"{folder} has no CSV files: run the stages that write it (`dvc repro`)")
    return {p.stem: list(csv.DictReader(p.open(newline=""))) for p in files}


def read_existing(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path} is missing: run the stage that writes it (`dvc repro`)")
    return read_json(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--evaluate", type=Path, required=True, help="metrics/evaluate.json")
    ap.add_argument("--scenario", type=Path, required=True, help="metrics/scenario.json")
    ap.add_argument("--curves", type=Path, required=True, help="directory of curve CSVs")
    ap.add_argument("--confusion", type=Path, required=True, help="directory of confusion CSVs")
    ap.add_argument("--test", type=Path, required=True, help="prepared target test arrays")
    ap.add_argument("--study", type=Path, help="study/metrics.json (adds the study's intervals)")
    ap.add_argument("--out", type=Path, required=True, help="output: the HTML page")
    args = ap.parse_args(argv)

    test = load_arrays(args.test, ("x_test", "y_test"), lazy=True)  # images: only the tiles are read
    classes = json.loads(read_metadata(args.test)["classes"])
    confusions = {}
    for name, rows in read_csvs(args.confusion).items():
        if len(rows) != len(test["y_test"]):
            raise UserError(f"{args.confusion / name}.csv has {len(rows)} rows for "
                            f"{len(test['y_test'])} test images: run `dvc repro`")
        confusions[name] = tuple(np.array([int(r[c]) for r in rows])
                                 for c in ("actual", "predicted"))
    page = render_report(read_existing(args.evaluate), read_existing(args.scenario),
                         read_csvs(args.curves), confusions, test["x_test"], classes,
                         read_existing(args.study) if args.study else None)
    with atomic_path(args.out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    print(f"{args.out}: {len(page) / 1e3:.0f} kB")


if __name__ == "__main__":
    run_stage(main)
