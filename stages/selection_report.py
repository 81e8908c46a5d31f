"""Stage selection report: every validator and guard rule replayed on every task's candidates.

Per task (transferlab/selection_stats.py, as the study's k = 0 replay): each validator's pick
within a run (one method, one draw, one seed) against the oracle's (target-val selection) and
the source model, with 95 % intervals over runs and its rank correlation with test accuracy;
then each rule's recommendation across the candidates of a seed (every method and draw: what
`export` would ship) against the source model, how often it harms, and the share of the best
oracle gain it keeps. Once with the params' own options (draw 0) and once with every draw.
Writes the metrics JSON (a few numbers per task, for `dvc metrics diff`), the markdown report
and the plot CSV (each validator's gap to the oracle, per task).
"""

import argparse
from pathlib import Path

from transferlab import selection_stats
from transferlab.errors import UserError
from transferlab.io import atomic_path, read_json, write_csv, write_json
from transferlab.launcher import run_stage
from transferlab.params import load_params


def _cell(path: Path) -> Path:
    if not path.is_file():
        raise UserError(f"{path} is missing: run `make selection` (it writes every cell of "
                        "params.yaml's selection_study.tasks x seeds x draws)")
    return path


def task_summary(runs: list[dict], params_selection) -> dict:
    """The replay of one task's runs: validators, every rule with every draw, and the params'
    own rule with draw 0 only (what the default options alone would have given)."""
    drop, floor = params_selection.max_source_drop, params_selection.source_free_floor
    rules = selection_stats.default_rules(params_selection)
    draw0 = [r for r in runs if r["draw"] == 0]
    return {"validators": selection_stats.validator_table(runs, drop, floor),
            "guards": selection_stats.guard_table(runs, rules, drop, floor),
            "own_rule_draw0": selection_stats.guard_table(draw0, rules[:1], drop, floor)[0],
            "drops": selection_stats.drop_table(runs, rules[0], floor),
            "floors": selection_stats.floor_table(runs, rules[0], drop),
            "methods": selection_stats.method_table(
                runs, rules[:1] + selection_stats.extra_guard_rules(rules[0]), drop, floor),
            "health": selection_stats.detector_counts(runs),
            "health_with_source": selection_stats.detector_counts(runs, source_check=True),
            "source_accuracy": round(sum(r["rows"][0]["test_accuracy"] for r in runs)
                                     / len(runs), 4),
            "runs": len(runs), "draws": sorted({r["draw"] for r in runs})}


def metrics_of(summary: dict) -> dict:
    """The few numbers per task `dvc metrics diff` compares: the params' rule with and without
    the draws, and the validator closest to the oracle."""
    own, own0 = summary["guards"][0], summary["own_rule_draw0"]
    ranked = [v for v in summary["validators"] if v["validator"] in selection_stats.NAMES]
    best = max(ranked, key=lambda v: v["gap_to_oracle"]["mean"])
    oracle = summary["validators"][-1]
    return {"source_accuracy": summary["source_accuracy"],
            "recommended_gain": own["recommended_gain"]["mean"],
            "recommended_gain_ci_low": own["recommended_gain"]["ci_low"],
            "seeds_harmed": own["recommended_harmed"],
            "share_of_best_gain": own["share_of_best_gain"],
            "recommended_gain_draw0": own0["recommended_gain"]["mean"],
            "oracle_gain_per_run": oracle["gain_over_source"]["mean"],
            "best_validator": best["validator"],
            "best_validator_gap": best["gap_to_oracle"]["mean"],
            "health_check_misses": summary["health"]["misses"],
            "health_check_false_alarms": summary["health"]["false_alarms"]}


def overview(summaries: dict[str, dict]) -> list[str]:
    """Every task in two tables: what the params' rule gained, and each validator's gap to the
    oracle (which validator to trust on which kind of task); the sections below hold the rest."""
    interval = selection_stats._interval
    lines = ["## Every task", "",
             "| task | source model % | oracle's pick: gain per run | params' rule: recommended "
             "gain, every draw | draw 0 alone | seeds harmed | share of best oracle gain |",
             "|---|---|---|---|---|---|---|"]
    for task, s in summaries.items():
        own, own0, oracle = s["guards"][0], s["own_rule_draw0"], s["validators"][-1]
        share = own["share_of_best_gain"]  # None: no method gained with the oracle's pick
        share = "—" if share is None else f"{100 * share:.0f} %"
        lines.append(f"| {task} | {100 * s['source_accuracy']:.1f} | "
                     f"{interval(oracle['gain_over_source'])} | "
                     f"{interval(own['recommended_gain'])} | {interval(own0['recommended_gain'])} "
                     f"| {own['recommended_harmed']} | {share} |")
    names = [v["validator"] for v in next(iter(summaries.values()))["validators"][:-1]]
    lines += ["", "Each validator's pick within a run, against the oracle's (points; Spearman "
              "rho of its score with test accuracy over a run's candidates):", "",
              "| validator | " + " | ".join(f"{t}: gap | rho" for t in summaries) + " |",
              "|---|" + "---|---|" * len(summaries)]
    for i, name in enumerate(names):
        cells = []
        for s in summaries.values():
            v = s["validators"][i]
            rho = "" if v["spearman"] is None else f"{v['spearman']:+.2f}"
            cells.append(f"{interval(v['gap_to_oracle'])} | {rho}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    from transferlab.health import COLLAPSE_MARGIN, NEAR_BEST
    lines += ["", "The label-free health check (docs/troubleshooting.md) on every candidate: a "
              f"candidate below chance + {100 * COLLAPSE_MARGIN:.0f} points on the test set has "
              "collapsed (the check should fire), one within "
              f"{100 * NEAR_BEST:.0f} points of the best candidate of its cell (seed and draw) "
              "is healthy (it should not):", "",
              "| task | candidates | collapsed | flagged (hits) | missed | near the best | "
              "false alarms | with the source check: hits | missed | false alarms |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for task, s in summaries.items():
        h, w = s["health"], s["health_with_source"]
        lines.append(f"| {task} | {h['models']} | {h['collapsed']} | {h['hits']} | "
                     f"{h['misses']} | {h['near_best']} | {h['false_alarms']} | {w['hits']} | "
                     f"{w['misses']} | {w['false_alarms']} |")
    lines += ["", "The check reads the predicted-class marginal only; \"with the source check\" "
              "it also fires where a candidate's source-validation accuracy is below chance + "
              f"{100 * COLLAPSE_MARGIN:.0f} points (a replay: the pipeline's check does not read "
              "it, and label-free selection never picks such a candidate: "
              "`selection.max_source_drop`)."]
    return lines + [""]


def markdown(summaries: dict[str, dict], params) -> str:
    study = params.selection_study
    own = selection_stats.describe(selection_stats.default_rules(params.selection)[0])
    lines = ["# The selection study", "",
             f"Tasks {', '.join(summaries)}; seeds {study.seeds}; hyper-parameter draws "
             f"{study.draws} (0: params.yaml's options). No rule reads a target label: the "
             "target test accuracy of every candidate is the yardstick only. The params' rule: "
             f"{own}.", ""]
    lines += overview(summaries)
    for task, s in summaries.items():
        values = study.task_params[task]
        own_rule, own0 = s["guards"][0], s["own_rule_draw0"]
        lines += [f"## {task}", "",
                  f"Params: {values or 'params.yaml as it is'}. {s['runs']} runs (method x "
                  f"draw x seed); the source model scores {100 * s['source_accuracy']:.1f} % on "
                  "the target test set.", "",
                  f"The params' rule recommends {selection_stats._interval(own_rule['recommended_gain'])} "
                  f"points over the source model with every draw ({own_rule['recommended_harmed']} "
                  f"seeds harmed), {selection_stats._interval(own0['recommended_gain'])} with "
                  f"draw 0 alone ({own0['recommended_harmed']} harmed).", "",
                  "The params' rule at other `selection.max_source_drop` values (how far below "
                  "the source model's source-validation accuracy a candidate may fall):", "",
                  selection_stats.drop_markdown(s["drops"]), "",
                  "The params' rule at other `selection.source_free_floor` values (how far "
                  "above chance a source-free method's candidate must stay on source "
                  "validation; null: held to `max_source_drop` like the rest), with the two best "
                  "validators' gaps to the oracle's pick:", "",
                  selection_stats.floor_markdown(s["floors"]), "",
                  "Within each method, the params' rule and the same rule with one more "
                  "validator in its guard: runs that shipped a model more than 1 point below the "
                  "source model, and the mean gain over it (points):", "",
                  selection_stats.method_markdown(s["methods"]), "",
                  selection_stats.markdown(s["validators"], s["guards"]), ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("cells", type=Path, help="directory of cell JSONs")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--plots", type=Path, required=True, help="output: directory of plot CSVs")
    args = ap.parse_args(argv)

    # exactly the cells params.yaml asks for: a file of an earlier, larger study is not read
    params = load_params()
    study = params.selection_study
    summaries = {}
    for task in study.tasks:
        cells = {str(p): read_json(_cell(p)) for p in (
            args.cells / f"{task}-s{s}-d{d}.json" for s in study.seeds for d in study.draws)}
        try:
            runs = selection_stats.runs_of(cells)
            if not runs:
                raise UserError(f"selection task {task}: its cells hold no label-free run (no "
                                "method ran at 0 labels): check its task_params")
            summaries[task] = task_summary(runs, params.selection)
        except ValueError as err:
            raise UserError(f"selection task {task}: {err}: rerun `make selection`") from None

    write_json(args.metrics, {task: metrics_of(s) for task, s in summaries.items()})
    with atomic_path(args.report) as tmp:
        tmp.write_text(markdown(summaries, params) + "\n")
    with atomic_path(args.plots) as tmp:
        tmp.mkdir()
        write_csv(tmp / "gap.csv", ["validator", "gap_to_oracle"],
                  [[f"{task}: {v['validator']}", v["gap_to_oracle"]["mean"]]
                   for task, s in summaries.items() for v in s["validators"][:-1]])
    for task, s in summaries.items():
        m = metrics_of(s)
        print(f"{task}: the params' rule {100 * m['recommended_gain']:+.1f} points over the "
              f"source model ({m['seeds_harmed']} seeds harmed); best validator "
              f"{m['best_validator']} ({100 * m['best_validator_gap']:+.1f} to the oracle)")


if __name__ == "__main__":
    run_stage(main)
