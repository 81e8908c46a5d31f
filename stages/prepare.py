"""Stage prepare: align both domains, split them, draw the target shots.

Writes source (train/val), target (shots/val), target pool (the train pool and val, from
which the study draws its own shots) and target test as separate files: only the evaluation
stages depend on the test file, and the pool does not change with `seed` or `prepare.shots`.
"""

import argparse
from pathlib import Path

from transferlab.datasets import load_raw
from transferlab.io import atomic_path, run_stage, save_arrays, write_json
from transferlab.params import load_params
from transferlab.scenario import build_scenario


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("raw", type=Path, help="directory written by the download stage")
    ap.add_argument("out", type=Path, help="directory of prepared arrays")
    ap.add_argument("--summary", type=Path, required=True, help="scenario sizes, JSON")
    args = ap.parse_args(argv)
    params = load_params()

    scenario = build_scenario(load_raw(args.raw / f"{params.data.source}.safetensors"),
                              load_raw(args.raw / f"{params.data.target}.safetensors"),
                              params.prepare, params.seed)
    with atomic_path(args.out) as tmp:
        tmp.mkdir()
        save_arrays(tmp / "source.safetensors", scenario.source)
        save_arrays(tmp / "target.safetensors", scenario.target)
        save_arrays(tmp / "target_pool.safetensors", scenario.target_pool)  # for the study
        save_arrays(tmp / "target_test.safetensors", scenario.target_test)
    write_json(args.summary, scenario.summary)
    print(", ".join(f"{k}={v}" for k, v in scenario.summary.items()))


if __name__ == "__main__":
    run_stage(main)
