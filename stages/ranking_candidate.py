"""Stage ranking candidate@<name>: build and pretrain one candidate source, score it on each
seed's target shots + validation set, and transfer it for real (finetune, features).

Writes the scores and target-validation outcomes (deterministic) and, apart, the wall times
of scoring and transfer (they differ from run to run). Never reads the target test set.
"""

import argparse
from pathlib import Path

from transferlab.candidates import candidate_source, evaluate_candidate, train_candidate
from transferlab.rawdata import load_raw
from transferlab.errors import UserError
from transferlab.io import load_arrays, read_metadata, write_json
from transferlab import compute
from transferlab.launcher import run_stage
from transferlab.models import read_backdrop
from transferlab.params import load_params
from transferlab.records import PREPROCESS_KEYS, model_record
from transferlab.study import require_target_val
from transferlab.train import make_deterministic, pick_device, to_device

POOL = ("x_pool", "y_pool", "x_val", "y_val")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("name", help="a key of ranking.candidates in params.yaml")
    ap.add_argument("--raw", type=Path, required=True,
                    help="directory of downloaded datasets (source, target, official splits)")
    ap.add_argument("--pool", type=Path, required=True, help="prepared target pool + validation")
    ap.add_argument("--out", type=Path, required=True, help="output: scores and outcomes, JSON")
    ap.add_argument("--timing", type=Path, required=True, help="output: wall times, JSON")
    args = ap.parse_args(argv)
    params = load_params()
    # compute.threads (auto: cores / stages at once, e.g. transferlab-fanout --jobs): two cells
    # at once with every core each spin-wait on each other's cores (4x slower, measured)
    compute.set_threads(params.compute)
    if args.name not in params.ranking.candidates:
        raise UserError(f"ranking.candidates has no '{args.name}': use one of "
                        f"{', '.join(params.ranking.candidates)}")
    cand = params.ranking.candidates[args.name]

    # the framing prepare chose for the target (prepare.* auto resolved), from the pool's record
    pool_meta = read_metadata(args.pool)
    framing = model_record(args.pool, pool_meta).preprocess
    backdrop = read_backdrop(pool_meta, args.pool)  # model.norm auto: as the pipeline's model
    if framing is None:
        raise UserError(f"{args.pool} records no preprocessing: run `dvc repro prepare`")
    params = params.model_copy(update={"prepare": params.prepare.model_copy(
        update={k: getattr(framing, k) for k in PREPROCESS_KEYS})})
    make_deterministic(params.pretrain.seed)
    device = pick_device()
    official = {split: load_raw(path) for split in ("test", "val")
                if (path := args.raw / f"target_{split}.safetensors").is_file()}
    source = candidate_source(load_raw(args.raw / "source.safetensors"),
                              load_raw(args.raw / "target.safetensors"), args.name, cand, params,
                              official)  # the target's images never become source images
    source = to_device(source, device)
    pool = to_device(load_arrays(args.pool, required=POOL, lazy=True), device)
    require_target_val(pool, "the ranking")  # before the candidate's training, not after
    model = train_candidate(source, cand, params, backdrop)
    results, timings = evaluate_candidate(model, pool, params, backdrop)
    write_json(args.out, {"candidate": args.name, "source_train_images": len(source["y_train"]),
                          "source_classes": int(source["y_train"].max()) + 1, "seeds": results})
    write_json(args.timing, {"candidate": args.name, "seeds": timings})
    for r in results:
        print(f"{args.name} seed {r['seed']}: {r['scores']} -> {r['val_accuracy']}")


if __name__ == "__main__":
    run_stage(main)
