"""Stage prepare: align both domains, split them, draw the target shots.

Writes source (train/val), target (shots/val), target pool (the train pool and val, from
which the study draws its own shots), the unlabelled target images (the pool minus the shots,
images only: no label is written) and target test as separate files: only the evaluation
stages depend on the test file, and the pool does not change with `seed` or `prepare.shots`.
"""

import argparse
import json
from pathlib import Path

from transferlab.rawdata import load_raw
from transferlab.io import atomic_path, read_metadata, save_arrays, write_json
from transferlab.launcher import run_stage
from transferlab.params import is_weights_name, load_params
from transferlab.scenario import build_scenario, preprocess_record


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("raw", type=Path, help="directory written by the download stage")
    ap.add_argument("out", type=Path, help="directory of prepared arrays")
    ap.add_argument("--summary", type=Path, required=True, help="scenario sizes, JSON")
    args = ap.parse_args(argv)
    params = load_params()

    official = {split: load_raw(path, lazy=True) for split in ("test", "val")
                if (path := args.raw / f"target_{split}.safetensors").is_file()}
    decoded = {role: int(read_metadata(args.raw / f"{role}.safetensors").get("decode_size", 0))
               for role in ("source", "target")}
    with atomic_path(args.out) as tmp:
        # images too large for memory are aligned into files in atomic_path's own temporary
        # folder (removed with it) and written out from there a block at a time
        scenario = build_scenario(load_raw(args.raw / "source.safetensors", lazy=True),
                                  load_raw(args.raw / "target.safetensors", lazy=True),
                                  params.prepare, params.seed, params.data.source,
                                  params.data.target, official.get("test"), official.get("val"),
                                  scratch=tmp.parent,
                                  needs_colour=is_weights_name(params.model.weights))
        source_meta = {"classes": json.dumps(scenario.source_classes),
                       "preprocess": preprocess_record(scenario.prepare, decoded["source"]),
                       "backdrop": scenario.backdrop}
        target_meta = {"classes": json.dumps(scenario.target_classes),
                       "preprocess": preprocess_record(scenario.prepare, decoded["target"]),
                       "backdrop": scenario.backdrop}
        tmp.mkdir()
        save_arrays(tmp / "source.safetensors", scenario.source, source_meta)
        save_arrays(tmp / "target.safetensors", scenario.target, target_meta)
        save_arrays(tmp / "target_pool.safetensors", scenario.target_pool, target_meta)
        save_arrays(tmp / "target_unlabelled.safetensors", scenario.target_unlabelled)
        save_arrays(tmp / "target_test.safetensors", scenario.target_test, target_meta)
    write_json(args.summary, scenario.summary)
    print(", ".join(f"{k}={v}" for k, v in scenario.summary.items()))


if __name__ == "__main__":
    run_stage(main)
