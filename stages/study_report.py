"""Stage study report: statistics over seeds of every cell and of the layer grid.

Per (strategy, k): mean, std and a 95 % Student-t interval of target-test accuracy; the gains
over scratch and over source-only paired by seed, with their own intervals; a cell whose gain
over the best baseline using no more target labels lies entirely below zero is flagged as
negative transfer. At k = 0 the adaptation methods are selected label-free; their
'(oracle)' rows show what target-validation selection would have picked. Writes the metrics JSON, the markdown report and
the plot data (accuracy and gain against k, accuracy against copied blocks n).
"""

import argparse
from pathlib import Path

from transferlab import health, selection_stats
from transferlab.errors import UserError
from transferlab.io import atomic_path, read_json, write_csv, write_json
from transferlab.launcher import run_stage
from transferlab.params import load_params
from transferlab.stats import cell_records, layer_markdown, layer_table, study_markdown, study_table


def _cell(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"{path} is missing: run `dvc repro study/dvc.yaml` (it writes every "
                        "cell of params.yaml's study.shots x study.seeds)")
    return path


def detector_rows(cells: list[dict]) -> list[dict]:
    """One row per model scored in a cell that also ran the health check on it: its test
    accuracy, the best test accuracy of its cell, and what the check read (label-free)."""
    rows = []
    for c in cells:
        checked = {n: h for n, h in c.get("health", {}).items() if n in c["test"]}
        if not checked:
            continue
        best = max(c["test"][n]["accuracy"] for n in checked)
        rows += [{"name": n, "shots": c["shots"], "seed": c["seed"], "classes": c["classes"],
                  "accuracy": c["test"][n]["accuracy"], "best": best, **h}
                 for n, h in checked.items()]
    return rows


def detector_summary(rows: list[dict]) -> dict:
    """health.score_detector over every checked model of the study (K from each cell)."""
    total = health.score_detector([], 2)  # every count at zero
    for k in sorted({r["classes"] for r in rows}):
        counts = health.score_detector([r for r in rows if r["classes"] == k], k)
        total = {key: total[key] + counts[key] for key in total}
    flagged = sorted({f"{r['name']}@k{r['shots']}" for r in rows if r["degenerate"]})
    return {**total, "flagged": len([r for r in rows if r["degenerate"]]), "flagged_cells": flagged}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("cells", type=Path, help="directory of cell JSONs")
    ap.add_argument("layers", type=Path, help="directory of layer-grid JSONs")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--plots", type=Path, required=True, help="output: directory of plot CSVs")
    ap.add_argument("--selection", type=Path, required=True,
                    help="output: the k = 0 selection replay (validators and guards), JSON")
    args = ap.parse_args(argv)

    # exactly the cells params.yaml's study asks for: a file left by an earlier, larger study
    # (DVC leaves outputs of a removed matrix entry in place) is not counted
    params = load_params()
    study = params.study
    paths = [args.cells / f"k{k}-s{s}.json" for k in study.shots for s in study.seeds]
    cells = [read_json(_cell(path)) for path in paths]
    grids = [read_json(_cell(args.layers / f"s{s}.json")) for s in study.seeds]
    rows, layers = study_table(cell_records(cells)), layer_table(grids)
    detector = detector_summary(detector_rows(cells))
    seeds = sorted({c["seed"] for c in cells})
    write_json(args.metrics, {
        "cells": {f"{r['strategy']}@k{r['shots']}": {
            "accuracy": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
            **({"gain": r["gain"]["mean"], "gain_ci_low": r["gain"]["ci_low"],
                "gain_ci_high": r["gain"]["ci_high"]} if "gain" in r else {}),
            **({"gain_source_only": r["gain_source_only"]["mean"],
                "gain_source_only_ci_low": r["gain_source_only"]["ci_low"],
                "gain_source_only_ci_high": r["gain_source_only"]["ci_high"]}
               if "gain_source_only" in r else {}),
            "negative_transfer": r["negative_transfer"]} for r in rows},
        "layers": {f"{r['variant']}@n{r['blocks']}": {"accuracy": r["mean"], "ci_low": r["ci_low"],
                                                     "ci_high": r["ci_high"]} for r in layers},
        "health": {k: v for k, v in detector.items() if k != "flagged_cells"}})
    try:
        runs = selection_stats.runs_of({str(p): c for p, c in zip(paths, cells)})
    except ValueError as err:  # written by another version, or edited
        raise UserError(f"{err}: delete it and run `dvc repro study/dvc.yaml`") from None
    drop, floor = params.selection.max_source_drop, params.selection.source_free_floor
    replay = ({"validators": selection_stats.validator_table(runs, drop, floor),
               "guards": selection_stats.guard_table(
                   runs, selection_stats.default_rules(params.selection), drop, floor)}
              if runs else {"validators": [], "guards": []})
    write_json(args.selection, {"runs": len(runs), "methods": sorted({r["method"] for r in runs}),
                                **replay})
    negative = [f"{r['strategy']} at k={r['shots']} (vs {r['baseline']})"
                for r in rows if r["negative_transfer"]]
    report = "\n".join([
        f"Target-test accuracy over seeds {seeds} (each seed: another shot draw and "
        "initialisation), 95 % Student-t intervals; gains over scratch and over source-only "
        "paired by seed. At k = 0 no target label selects anything: params.yaml's selection does "
        "(a label-free validator, and a guard that keeps the source model unless the adapted one "
        "scores higher, docs/selection.md); "
        "'(oracle)' rows: what target-validation selection would have picked, for comparison only.",
        "Negative transfer (gain over the best baseline using no more target labels entirely "
        "below zero): "
        + (", ".join(negative) if negative else "none found") + ".",
        "",
        study_markdown(rows),
        f"**Health check** (label-free, on each cell's unlabelled target images; "
        "transferlab/health.py): of "
        f"{detector['models']} models, {detector['flagged']} flagged"
        + (f" ({', '.join(detector['flagged_cells'])})" if detector["flagged_cells"] else "")
        + f"; {detector['collapsed']} collapsed (test accuracy below chance + "
        f"{100 * health.COLLAPSE_MARGIN:.0f} points): {detector['hits']} caught, "
        f"{detector['misses']} missed; {detector['near_best']} within "
        f"{100 * health.NEAR_BEST:.0f} points of their cell's best: {detector['false_alarms']} "
        "false alarms.",
        "",
        f"**Layer transfer** (structure strategy, k={grids[0]['shots'] if grids else '?'}): "
        "frozen = copied source blocks kept fixed (AnB); fine-tuned = copied then trained "
        "(AnB+); random-frozen = the same blocks frozen at a random initialisation (control).",
        "",
        layer_markdown(layers),
        "",
        f"**Selection without target labels** (k = 0; {len(runs)} runs: "
        f"{', '.join(sorted({r['method'] for r in runs})) or 'none'} x seeds): each validator "
        "replayed on every candidate checkpoint, the source model (step 0) among them, against "
        "the target-val oracle; then guard rules, within each method and across methods (the "
        "recommendation). 95 % t intervals over runs (methods x seeds) or seeds; points of "
        "target-test accuracy. First rule: params.yaml's selection. docs/selection.md reads it.",
        "",
        selection_stats.markdown(replay["validators"], replay["guards"]) if runs else
        "No k = 0 cell: add 0 to study.shots."])
    with atomic_path(args.report) as tmp:
        tmp.write_text(report)
    with atomic_path(args.plots) as tmp:
        tmp.mkdir()
        write_csv(tmp / "accuracy_vs_k.csv", ["strategy", "shots", "accuracy", "ci_low", "ci_high"],
                  [[r["strategy"], r["shots"], r["mean"], r["ci_low"], r["ci_high"]] for r in rows])
        write_csv(tmp / "gain_vs_k.csv", ["strategy", "shots", "gain", "ci_low", "ci_high"],
                  [[r["strategy"], r["shots"], r["gain"]["mean"], r["gain"]["ci_low"],
                    r["gain"]["ci_high"]] for r in rows if "gain" in r])
        write_csv(tmp / "accuracy_vs_blocks.csv", ["variant", "blocks", "accuracy", "ci_low",
                                                   "ci_high"],
                  [[r["variant"], r["blocks"], r["mean"], r["ci_low"], r["ci_high"]]
                   for r in layers])
    print(report)


if __name__ == "__main__":
    run_stage(main)
