"""Stage download: fetch the raw source and target datasets named in params.

Reads only the dataset names, folder roots, the cache directory and data.target_test, so scenario
edits (class subsets, shots, sizes) never re-download. With an official target test split it
also writes target_test (and a folder's val/ as target_val). The embedded default datasets ship inside installed
wheels: no network. Others come through torchvision into data.cache_dir (checksums verified).
"""

import argparse
from pathlib import Path

from transferlab import datasets
from transferlab.datasets import decode_size, fetch, has_official_split, target_test_source
from transferlab.images import check_folder
from transferlab.io import atomic_path
from transferlab.launcher import run_stage
from transferlab.params import load_params
from transferlab.rawdata import save_raw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("out", type=Path, help="output: source.safetensors and target.safetensors")
    args = ap.parse_args(argv)
    data = load_params().data
    cache_dir = Path(data.cache_dir) if data.cache_dir else None
    # every folder param checked before anything reads below it: a symlink loop, a 300-character
    # name or a FIFO there is one line naming the param, not an OSError from deep inside
    if any(datasets.get(spec.name).downloads for spec in (data.source, data.target)):
        from transferlab.datasets.torchvision_sets import default_cache_dir

        check_folder("data.cache_dir", cache_dir or default_cache_dir(), must_exist=False,
                     fix="a folder (or $TRANSFERLAB_DATA)")
    for role, spec in (("source", data.source), ("target", data.target)):
        if datasets.get(spec.name).needs_root and spec.root:
            check_folder(f"data.{role}.root", spec.root, what="folder dataset ",
                         fix="a folder of class folders (<root>/<class>/<image>)")

    target_root = Path(data.target.root) if data.target.root else None
    test = target_test_source(data.target_test, data.target.name, target_root)
    files = [("source", data.source, "train"), ("target", data.target, "train")]
    if test == "official":  # the official test split, and a folder's own val/ where present
        files += [(f"target_{split}", data.target, split) for split in ("test", "val")
                  if split == "test" or has_official_split(data.target.name, target_root, split)]
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        for name, spec, split in files:
            raw = fetch(spec.name, split, cache_dir=cache_dir,
                        root=Path(spec.root) if spec.root else None, size=data.decode_size,
                        lazy=True,
                        root_key="data.source.root" if name == "source" else "data.target.root")
            save_raw(tmp / f"{name}.safetensors", raw, decode_size(spec.name, data.decode_size))
            print(f"{name}: {spec.name} ({split}), {len(raw.labels)} images "
                  f"{raw.images.shape[1:]}, {len(raw.classes)} classes")
    if test == "split":
        print(f"target test set: carved from {data.target.name}'s training images "
              f"(it has no official test split{'' if data.target_test == 'auto' else ' in use'})")


if __name__ == "__main__":
    run_stage(main)
