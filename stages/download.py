"""Stage download: fetch the raw datasets named in params (data.source, data.target).

Reads only the dataset names, so scenario edits never re-download. The embedded default
datasets ship inside installed wheels: no network.
"""

import argparse
from pathlib import Path

from transferlab.datasets import fetch, save_raw
from transferlab.io import atomic_path, run_stage
from transferlab.params import load_params


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path, help="directory of raw datasets, one file per name")
    args = ap.parse_args(argv)
    data = load_params().data

    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        for name in sorted({data.source, data.target}):
            raw = fetch(name)
            save_raw(tmp / f"{name}.safetensors", raw)
            print(f"{name}: {len(raw.labels)} images {raw.images.shape[1:]}")


if __name__ == "__main__":
    run_stage(main)
