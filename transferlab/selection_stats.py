"""The selection replay of the study: how each label-free validator and each guard would have
chosen, measured on the target test accuracy of every candidate (study k = 0 cells).

A *run* is one method at one seed: its candidates are the starting (source) model, step 0, and
each evaluation, each with every validator's score, its target-val accuracy and its test
accuracy (study.checkpoint_rows). Replaying transferlab/selection.py on those rows tells, for
each validator, the test accuracy of what it would pick against the oracle (target-val
selection, the choice a labelled validation set makes) and against the source model, and how
well its scores rank the candidates (Spearman's rho with test accuracy, over a run's
candidates). A guard rule is replayed at both levels the pipeline decides at: within a run
(does the method ship an adapted checkpoint or keep the source model) and across the methods
of a seed (what export recommends: the best-scoring shipped model, the source model among
them). Target labels appear here only as the yardstick: no rule reads them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from transferlab import selection
from transferlab.stats import summarize
from transferlab.validators import NAMES

HARM = 0.01  # a recommendation more than 1 point below the source model counts as harm


def runs_of(cells: Sequence[Mapping]) -> list[dict]:
    """[{method, seed, rows}] of every k = 0 cell's checkpoint rows."""
    return [{"method": method, "seed": cell["seed"], "rows": rows}
            for cell in cells if cell.get("shots") == 0
            for method, rows in sorted(cell.get("checkpoints", {}).items())]


def _oracle(rows: Sequence[Mapping]) -> Mapping:
    """Target-val selection: the best val accuracy (ties: the earlier candidate)."""
    return max(rows, key=lambda r: (r["val_accuracy"], -r["step"]))


def _spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None  # a constant score ranks nothing
    return float(spearmanr(xs, ys).statistic)


def _ci(values: Sequence[float]) -> dict:
    s = summarize(values)
    return {k: (None if s[k] is None else round(s[k], 4)) for k in ("mean", "ci_low", "ci_high")}


def validator_table(runs: Sequence[Mapping], max_source_drop: float) -> list[dict]:
    """Per validator (and the oracle): mean test accuracy of its pick over runs, its gap to the
    oracle's pick and its gain over the source model, paired by run, with 95 % t intervals, and
    the mean Spearman rho between its score and test accuracy over a run's candidates."""
    table = []
    source = [r["rows"][0]["test_accuracy"] for r in runs]
    oracle = [_oracle(r["rows"])["test_accuracy"] for r in runs]
    for name in NAMES:
        picked = [r["rows"][selection.pick(r["rows"], name, max_source_drop)]["test_accuracy"]
                  for r in runs]
        rhos = [rho for r in runs if (rho := _spearman([c[name] for c in r["rows"]],
                                                       [c["test_accuracy"] for c in r["rows"]]))
                is not None]
        table.append({"validator": name, "accuracy": _ci(picked),
                      "gap_to_oracle": _ci([p - o for p, o in zip(picked, oracle)]),
                      "gain_over_source": _ci([p - s for p, s in zip(picked, source)]),
                      "spearman": round(math.fsum(rhos) / len(rhos), 3) if rhos else None,
                      "runs": len(runs)})
    table.append({"validator": "oracle (target val)", "accuracy": _ci(oracle),
                  "gap_to_oracle": _ci([0.0] * len(runs)),
                  "gain_over_source": _ci([o - s for o, s in zip(oracle, source)]),
                  "spearman": None, "runs": len(runs)})
    return table


def _shipped(rows: Sequence[Mapping], rule: Mapping, max_source_drop: float) -> Mapping:
    index, _, _ = selection.decide(rows, rule["validator"], max_source_drop, rule["guard"],
                                   rule["margin"])
    return rows[index]


def guard_table(runs: Sequence[Mapping], rules: Sequence[Mapping], max_source_drop: float
                ) -> list[dict]:
    """Per rule {validator, guard, margin}: within runs, the shipped model's gain over the
    source model and how often it is more than HARM below it; across the methods of each seed,
    the recommendation (the shipped model with the best validator score; the source model when
    every method kept it) and the share of the best method's oracle gain it keeps."""
    seeds = sorted({r["seed"] for r in runs})
    table = []
    for rule in rules:
        gains, harmed = [], 0
        recommended, best_gain = [], []
        for seed in seeds:
            mine = [r for r in runs if r["seed"] == seed]
            source = mine[0]["rows"][0]
            shipped = [_shipped(r["rows"], rule, max_source_drop) for r in mine]
            for s in shipped:
                gains.append(s["test_accuracy"] - source["test_accuracy"])
                harmed += s["test_accuracy"] < source["test_accuracy"] - HARM
            pick = max([source, *shipped], key=lambda r: r[rule["validator"]])  # ties: source
            recommended.append(pick["test_accuracy"] - source["test_accuracy"])
            best_gain.append(max(0.0, max(_oracle(r["rows"])["test_accuracy"] for r in mine)
                                 - source["test_accuracy"]))
        table.append({"rule": describe(rule), "method_gain": _ci(gains),
                      "methods_harmed": f"{harmed}/{len(gains)}",
                      "recommended_gain": _ci(recommended),
                      "recommended_harmed": sum(g < -HARM for g in recommended),
                      "share_of_best_gain": round(math.fsum(recommended) / math.fsum(best_gain), 3)
                      if math.fsum(best_gain) > 0 else None})
    return table


def describe(rule: Mapping) -> str:
    guard = "+".join(rule["guard"]) or "no guard"
    margin = f", margin {rule['margin']:g}" if rule["guard"] and rule["margin"] else ""
    return f"{rule['validator']}; guard {guard}{margin}"


def default_rules(params_selection) -> list[dict]:
    """The rules the study replays: params.selection's own first, then each validator without
    a guard and with itself as guard, and the pairs with SND and IM, at margins 0 and 0.02."""
    own = {"validator": params_selection.validator, "guard": list(params_selection.guard),
           "margin": params_selection.guard_margin}
    rules = [own]
    for name in NAMES:
        for guard in ([], [name], sorted({name, "snd", "info_max"})):
            for margin in ((0.0,) if not guard else (0.0, 0.02)):
                rule = {"validator": name, "guard": guard, "margin": margin}
                if rule not in rules:
                    rules.append(rule)
    return rules


def _interval(s: Mapping, signed: bool = True) -> str:
    fmt = (lambda v: f"{100 * v:+.1f}") if signed else (lambda v: f"{100 * v:.1f}")
    if s["ci_low"] is None:
        return fmt(s["mean"])
    return f"{fmt(s['mean'])} [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]"


def markdown(validators: list[dict], guards: list[dict]) -> str:
    lines = ["| validator | test accuracy | gap to oracle | gain over source | Spearman rho |",
             "|---|---|---|---|---|"]
    for r in validators:
        rho = "" if r["spearman"] is None else f"{r['spearman']:+.2f}"
        lines.append(f"| {r['validator']} | {_interval(r['accuracy'], False)} | "
                     f"{_interval(r['gap_to_oracle'])} | {_interval(r['gain_over_source'])} | "
                     f"{rho} |")
    lines += ["", "| rule (validator; guard) | method gain over source | methods > 1 pt below "
              "source | recommended gain | seeds harmed | share of best oracle gain |",
              "|---|---|---|---|---|---|"]
    for r in guards:
        share = "" if r["share_of_best_gain"] is None else f"{100 * r['share_of_best_gain']:.0f} %"
        lines.append(f"| {r['rule']} | {_interval(r['method_gain'])} | {r['methods_harmed']} | "
                     f"{_interval(r['recommended_gain'])} | {r['recommended_harmed']} | {share} |")
    return "\n".join(lines)
