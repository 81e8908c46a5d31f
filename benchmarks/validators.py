"""What scoring one checkpoint without target labels costs (transferlab/validators/): every
registered validator on a large unlabelled pool, with the pool subsampled to
`selection.pool_size` anchors (the pipeline) against the whole pool (what SND cost before:
quadratic in the pool), on one CPU thread.

Prints seconds per checkpoint (median of --repeats) and the ratio. Issue 25's target: under a
second on a 10,000-image pool on one CPU core.

Usage:  python benchmarks/validators.py [--pool 10000] [--anchors 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from transferlab.models import Classifier, architecture_from  # noqa: E402
from transferlab.options import Selection  # noqa: E402
from transferlab.params import load_params  # noqa: E402
from transferlab import train  # noqa: E402
from transferlab.train import LabelFree  # noqa: E402
from transferlab.validators import VALIDATORS  # noqa: E402


def seconds(label_free: LabelFree, repeats: int) -> float:
    label_free.scores()  # the anchors are drawn once per run: not a checkpoint's cost
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        label_free.scores()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pool", type=int, default=10_000)
    ap.add_argument("--anchors", type=int, default=load_params().selection.pool_size)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = load_params()
    size = params.prepare.image_size
    torch.manual_seed(0)
    model = Classifier(architecture_from(params.model, 1).build(), 10).eval()
    pool = torch.randint(0, 256, (args.pool, 1, size, size), dtype=torch.uint8)
    source_x = torch.randint(0, 256, (500, 1, size, size), dtype=torch.uint8)
    source_y = torch.randint(0, 10, (500,))
    figures = {}
    for name, limit in (("anchors", args.anchors), ("whole pool", args.pool)):
        cfg = Selection(**{**params.selection.model_dump(), "pool_size": limit})
        figures[name] = seconds(LabelFree(source_x, source_y, pool, model, cfg), args.repeats)
        print(f"{name:>10}: {min(limit, args.pool):>6} target images + 500 source val, "
              f"{params.model.arch} {size}x{size}, 1 thread: {figures[name]:.3f} s per checkpoint")
    print(f"whole pool / anchors: {figures['whole pool'] / figures['anchors']:.1f}x")

    # each validator alone on the anchors' outputs (the forward pass is the rest of the total)
    seen = []
    cfg = Selection(**{**params.selection.model_dump(), "pool_size": args.anchors})
    train.score_all, score_all = (lambda view: seen.append(view) or {}), train.score_all
    LabelFree(source_x, source_y, pool, model, cfg).scores()
    train.score_all = score_all
    for name, validator in VALIDATORS.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            validator.score(seen[0])
            times.append(time.perf_counter() - start)
        print(f"{name:>16}: {statistics.median(times):.3f} s ({validator.cost})")


if __name__ == "__main__":
    main()
