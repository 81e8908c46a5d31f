"""How the label-free health check (transferlab/health.py) does on real runs: for every model
in the given metrics/evaluate.json files, its target-test accuracy beside what the check saw
on the unlabelled target (top-class share, class-use entropy), and the check's verdict scored
against two labelled facts it never reads:

    collapsed   accuracy below chance + 20 points (1/K + 0.20): the check should fire
    near best   within 5 points of the best model of the same run: it should not fire

Prints each model, then hits / misses / false alarms for the check's limits and for a grid of
other limits, so a change of limit is chosen on data. Runs of the pipeline to read: keep them
with `python benchmarks/reference.py --keep DIR ...` (DIR/*/metrics/evaluate.json), or any
evaluate.json the pipeline wrote.

Usage:  python benchmarks/health_thresholds.py RUN_DIR_OR_EVALUATE_JSON ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transferlab import health  # noqa: E402

COLLAPSE_MARGIN, NEAR_BEST = health.COLLAPSE_MARGIN, health.NEAR_BEST  # one definition


def models(paths: list[Path]) -> list[dict]:
    """One row per scored model: run, name, accuracy, top share, entropy, the run's best."""
    rows = []
    for path in paths:
        file = path / "metrics/evaluate.json" if path.is_dir() else path
        scores = json.loads(file.read_text())
        ran = {n: s for n, s in scores.items() if not s.get("skipped") and "top_share" in s}
        if not ran:
            continue
        best = max(s["accuracy"] for s in ran.values())
        for name, s in ran.items():
            rows.append({"run": file.parent.parent.name or str(file), "name": name,
                         "accuracy": s["accuracy"], "top_share": s["top_share"],
                         "marginal_entropy": s["marginal_entropy"], "best": best})
    return rows


def verdicts(rows: list[dict], top_limit: float, entropy_limit: float, k: int) -> dict:
    """Hits, misses and false alarms of a check with these limits (K classes)."""
    return health.score_detector(rows, k, lambda r: r["top_share"] >= top_limit
                                 or r["marginal_entropy"] < entropy_limit)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="run folders or evaluate.json files")
    ap.add_argument("--classes", type=int, default=10, help="K, the number of target classes")
    args = ap.parse_args()
    rows = models(args.runs)
    if not rows:
        sys.exit("no evaluate.json with health fields among the given paths: run the pipeline")
    k = args.classes
    print(f"{'run':34s} {'model':12s} {'acc %':>6s} {'top %':>6s} {'entropy':>7s}  verdict")
    for r in sorted(rows, key=lambda r: (r["run"], -r["accuracy"])):
        said = health.problems(r["top_share"], r["marginal_entropy"], k)
        tag = ("collapsed" if r["accuracy"] < 1 / k + COLLAPSE_MARGIN else
               "near best" if r["accuracy"] >= r["best"] - NEAR_BEST else "")
        print(f"{r['run'][:34]:34s} {r['name'][:12]:12s} {100 * r['accuracy']:6.1f} "
              f"{100 * r['top_share']:6.1f} {r['marginal_entropy']:7.3f}  "
              f"{'FLAGGED' if said else 'ok':8s} {tag}")
    current = (health.top_share_limit(k), health.MIN_MARGINAL_ENTROPY)
    print(f"\n{len(rows)} models; K = {k}; collapsed = accuracy < {1 / k + COLLAPSE_MARGIN:.2f}; "
          f"near best = within {NEAR_BEST:.2f} of the run's best")
    print(f"{'top limit':>9s} {'entropy limit':>13s} {'hits':>5s} {'misses':>6s} "
          f"{'false alarms':>12s}")
    grid = sorted({current, *((t, e) for t in (0.5, 0.6, 0.7, 0.8, 0.9)
                              for e in (0.3, 0.4, 0.5, 0.6))})
    for top, ent in grid:
        v = verdicts(rows, top, ent, k)
        mark = "  <- transferlab/health.py" if (top, ent) == current else ""
        print(f"{top:9.2f} {ent:13.2f} {v['hits']:>5d} {v['misses']:>6d} "
              f"{v['false_alarms']:>12d}   of {v['collapsed']} collapsed, "
              f"{v['near_best']} near best{mark}")


if __name__ == "__main__":
    main()
