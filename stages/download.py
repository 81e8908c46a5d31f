"""Stage download: fetch the raw source and target datasets named in params.

Reads only the dataset names, folder roots and the cache directory, so scenario edits (class
subsets, shots, sizes) never re-download. The embedded default datasets ship inside installed
wheels: no network. Others come through torchvision into data.cache_dir (checksums verified).
"""

import argparse
from pathlib import Path

from transferlab.datasets import fetch, save_raw
from transferlab.io import atomic_path, run_stage
from transferlab.params import load_params


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path, help="output: source.safetensors and target.safetensors")
    args = ap.parse_args(argv)
    data = load_params().data
    cache_dir = Path(data.cache_dir) if data.cache_dir else None

    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        for role, spec in (("source", data.source), ("target", data.target)):
            raw = fetch(spec.name, cache_dir=cache_dir, root=Path(spec.root) if spec.root else None)
            save_raw(tmp / f"{role}.safetensors", raw)
            print(f"{role}: {spec.name}, {len(raw.labels)} images {raw.images.shape[1:]}, "
                  f"{len(raw.classes)} classes")


if __name__ == "__main__":
    run_stage(main)
