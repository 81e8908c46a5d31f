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
from transferlab.strategies import METHODS
from transferlab.validators import NAMES

HARM = 0.01  # a recommendation more than 1 point below the source model counts as harm


ROW_KEYS = ("step", "val_accuracy", "test_accuracy", *NAMES)


def runs_of(cells: Mapping[str, Mapping]) -> list[dict]:
    """[{method, seed, draw, rows}] of the checkpoint rows of every k = 0 cell ({file name:
    cell}; draw: the selection study's hyper-parameter draw, 0 in the study's cells),
    each row checked: ValueError naming the file, method and row otherwise."""
    runs = []
    for where, cell in cells.items():
        if cell.get("shots") != 0:
            continue
        for method, rows in sorted(cell.get("checkpoints", {}).items()):
            if method not in METHODS:
                raise ValueError(f"{where}: checkpoints.{method}: no such method in "
                                 "transferlab/strategies/")
            for i, row in enumerate(rows):
                for key in ROW_KEYS:
                    value = row.get(key) if isinstance(row, Mapping) else None
                    if not _finite_number(value):
                        raise ValueError(f"{where}: checkpoints.{method}[{i}] has no '{key}' "
                                         f"number (got {value!r})")
            if not rows or rows[0]["step"] != 0:
                raise ValueError(f"{where}: checkpoints.{method} does not start with the source "
                                 "model (step 0)")
            runs.append({"method": method, "seed": cell["seed"], "draw": cell.get("draw", 0),
                         "classes": cell.get("classes"), "rows": rows, "where": where})
    return runs


def floor_of(run: Mapping, source_free_floor: float | None) -> float | None:
    """The run's source-accuracy floor (selection.source_floor): its method's family and its
    cell's class count decide; ValueError naming the cell where that count is missing."""
    source_free = METHODS[run["method"]].family == selection.SOURCE_FREE
    if not source_free or source_free_floor is None:
        return None
    return selection.source_floor(source_free, _classes(run), source_free_floor)


def _classes(run: Mapping) -> int:
    """The run's cell's class count; ValueError naming the cell where it is not one."""
    k = run.get("classes")
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"{run.get('where', 'a cell')} records classes={k!r}, not a number of "
                         "classes")
    return k


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


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


def validator_table(runs: Sequence[Mapping], max_source_drop: float,
                    source_free_floor: float | None = None) -> list[dict]:
    """Per validator (and the oracle): mean test accuracy of its pick over runs, its gap to the
    oracle's pick and its gain over the source model, paired by run, with 95 % t intervals, and
    the mean Spearman rho between its score and test accuracy over a run's candidates."""
    table = []
    source = [r["rows"][0]["test_accuracy"] for r in runs]
    oracle = [_oracle(r["rows"])["test_accuracy"] for r in runs]
    for name in NAMES:
        picked = [r["rows"][selection.pick(r["rows"], name, max_source_drop,
                                           floor_of(r, source_free_floor))]["test_accuracy"]
                  for r in runs]
        rhos = [rho for r in runs if (rho := _spearman([c[name] for c in r["rows"]],
                                                       [c["test_accuracy"] for c in r["rows"]]))
                is not None]
        table.append({"validator": name, "accuracy": _ci(picked),
                      "gap_to_oracle": _ci([p - o for p, o in zip(picked, oracle)]),
                      "gain_over_source": _ci([p - s for p, s in zip(picked, source)]),
                      "spearman": round(math.fsum(rhos) / len(rhos), 3) if rhos else None,
                      "runs": len(runs)})
    # the oracle's own uncertainty: the candidates it cannot tell apart (the same, best
    # target-val accuracy) and how far apart their test accuracies lie
    spread = []
    for r in runs:
        top = max(c["val_accuracy"] for c in r["rows"])
        tied = [c["test_accuracy"] for c in r["rows"] if c["val_accuracy"] == top]
        spread.append(max(tied) - min(tied))
    table.append({"validator": "oracle (target val)", "accuracy": _ci(oracle),
                  "gap_to_oracle": _ci([0.0] * len(runs)),
                  "gain_over_source": _ci([o - s for o, s in zip(oracle, source)]),
                  "spearman": None, "runs": len(runs),
                  "tie_spread": round(math.fsum(spread) / len(spread), 4),
                  "tied_runs": sum(x > 0 for x in spread)})
    return table


def _shipped(run: Mapping, rule: Mapping, max_source_drop: float,
             source_free_floor: float | None) -> Mapping:
    rows = run["rows"]
    index, _, _ = selection.decide(rows, rule["validator"], max_source_drop, rule["guard"],
                                   rule["margin"], floor_of(run, source_free_floor))
    return rows[index]


def guard_table(runs: Sequence[Mapping], rules: Sequence[Mapping], max_source_drop: float,
                source_free_floor: float | None = None) -> list[dict]:
    """Per rule {validator, guard, margin}: within runs, the shipped model's gain over the
    source model and how often it is more than HARM below it; across the methods of each seed,
    the recommendation (export's: the shipped model with the best validator score, the source
    model where a method kept it) and the share of the best method's oracle gain it keeps (the
    oracle picks with 10 validation labels per class: a weak reference, which a validator can
    beat, so the share can pass 100 %)."""
    seeds = sorted({r["seed"] for r in runs})
    table = []
    for rule in rules:
        gains, harmed = [], 0
        recommended, best_gain = [], []
        for seed in seeds:
            mine = [r for r in runs if r["seed"] == seed]
            source = mine[0]["rows"][0]
            shipped = [_shipped(r, rule, max_source_drop, source_free_floor) for r in mine]
            for s in shipped:
                gains.append(s["test_accuracy"] - source["test_accuracy"])
                harmed += s["test_accuracy"] < source["test_accuracy"] - HARM
            # export's rule: the shipped model with the best score (a method that kept the
            # source model offers the source model); ties: the first method
            pick = max(shipped, key=lambda r: r[rule["validator"]])
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


HEALTH_KEYS = ("top_share", "marginal_entropy")


def detector_counts(runs: Sequence[Mapping], source_check: bool = False) -> dict[str, int]:
    """The health check (transferlab/health.py) scored on every candidate of `runs`:
    health.score_detector's hits, misses and false alarms, where a candidate's "best" is the
    best test accuracy of its cell (one seed and draw: every method's candidates). Each run
    needs its cell's `classes` and each row the check's two numbers (study.checkpoint_rows):
    ValueError naming what is missing otherwise. `source_check`: the check also fires where
    the candidate's source-validation accuracy is below chance + health.COLLAPSE_MARGIN (a
    model that permuted its classes keeps a healthy marginal; the source split sees it)."""
    from transferlab import health

    best: dict[tuple, float] = {}
    for r in runs:
        key = (r["seed"], r["draw"])
        best[key] = max(best.get(key, 0.0), *(c["test_accuracy"] for c in r["rows"]))
    total = health.score_detector([], 2)  # every count at zero
    for r in runs:
        _classes(r)
    for k in sorted({r["classes"] for r in runs}):
        rows = []
        for r in (r for r in runs if r["classes"] == k):
            for i, c in enumerate(r["rows"]):
                if not all(_finite_number(c.get(key)) for key in HEALTH_KEYS):
                    where = r.get("where", f"seed {r['seed']} draw {r['draw']}")
                    raise ValueError(f"{where}: checkpoints."
                                     f"{r['method']}[{i}] has no health numbers "
                                     f"({', '.join(HEALTH_KEYS)})")
                rows.append({"accuracy": c["test_accuracy"], "best": best[(r["seed"], r["draw"])],
                             "source_accuracy": c["source_accuracy"],
                             **{key: c[key] for key in HEALTH_KEYS}})
        fires = None
        if source_check:
            def fires(r, k=k):
                return bool(health.problems(r["top_share"], r["marginal_entropy"], k)) \
                    or r["source_accuracy"] < 1 / k + health.COLLAPSE_MARGIN
        counts = health.score_detector(rows, k, fires)
        total = {key: total[key] + counts[key] for key in total}
    return total


DROPS = (0.0, 0.005, 0.01, 0.02, 0.05)  # the eligibility sweep of the selection study


def drop_table(runs: Sequence[Mapping], rule: Mapping, source_free_floor: float | None,
               drops: Sequence[float] = DROPS) -> list[dict]:
    """`rule` replayed at each `selection.max_source_drop` of `drops`: how far an adapted
    checkpoint may fall below the source model on source validation and still be chosen."""
    return [{"max_source_drop": drop, **guard_table(runs, [rule], drop, source_free_floor)[0]}
            for drop in drops]


# the source-free floor sweep: None holds shot and tent to max_source_drop like the rest
FLOORS = (None, 0.0, 0.1, 0.2, 0.3, 0.5)


def floor_table(runs: Sequence[Mapping], rule: Mapping, max_source_drop: float,
                floors: Sequence[float | None] = FLOORS) -> list[dict]:
    """`rule` replayed at each `selection.source_free_floor` of `floors`, with info_max's and
    bnm's gaps to the oracle's pick beside it (the two best rankers measured)."""
    table = []
    for floor in floors:
        gaps = {v["validator"]: v["gap_to_oracle"]
                for v in validator_table(runs, max_source_drop, floor)}
        table.append({"source_free_floor": floor, "info_max_gap": gaps["info_max"],
                      "bnm_gap": gaps["bnm"],
                      **guard_table(runs, [rule], max_source_drop, floor)[0]})
    return table


def describe(rule: Mapping) -> str:
    guard = "+".join(rule["guard"]) or "no guard"
    margin = f", margin {rule['margin']:g}" if rule["guard"] and rule["margin"] else ""
    return f"{rule['validator']}; guard {guard}{margin}"


def default_rules(params_selection) -> list[dict]:
    """The rules the study replays: params.selection's own first, then the own rule with one
    more validator in its guard (each one it lacks: what would stop a method that harms), then
    each validator without a guard, guarded by itself, and guarded by itself with IM and BNM
    (the two that ranked candidates best on every task measured, docs/selection.md), at
    margins 0 and 0.01."""
    own = {"validator": params_selection.validator, "guard": sorted(set(params_selection.guard)),
           "margin": params_selection.guard_margin}  # the order of a guard's names is no rule
    rules = [own] + extra_guard_rules(own)
    for name in NAMES:
        for guard in ([], [name], sorted({name, "info_max", "bnm"})):
            for margin in ((0.0,) if not guard else (0.0, 0.01)):
                rule = {"validator": name, "guard": guard, "margin": margin}
                if rule not in rules:
                    rules.append(rule)
    return rules


def extra_guard_rules(own: Mapping) -> list[dict]:
    """`own` with each validator it does not guard by added to its guard."""
    return [{**own, "guard": sorted({*own["guard"], name})} for name in NAMES
            if name not in own["guard"]]


def method_table(runs: Sequence[Mapping], rules: Sequence[Mapping], max_source_drop: float,
                 source_free_floor: float | None = None) -> list[dict]:
    """Per rule, per method: how many of its runs shipped a model more than HARM below the
    source model, and its mean gain: which guard stops which method's harm."""
    methods = sorted({r["method"] for r in runs})
    table = []
    for rule in rules:
        row = {"rule": describe(rule), "methods": {}}
        for method in methods:
            gains = [_shipped(r, rule, max_source_drop, source_free_floor)["test_accuracy"]
                     - r["rows"][0]["test_accuracy"] for r in runs if r["method"] == method]
            row["methods"][method] = {"harmed": sum(g < -HARM for g in gains), "runs": len(gains),
                                      "gain": round(math.fsum(gains) / len(gains), 4)}
        table.append(row)
    return table


def method_markdown(rows: list[dict]) -> str:
    methods = list(rows[0]["methods"]) if rows else []
    lines = ["| rule (validator; guard) | " + " | ".join(methods) + " |",
             "|---|" + "---|" * len(methods)]
    for r in rows:
        cells = [f"{m['harmed']}/{m['runs']}, {100 * m['gain']:+.1f}" for m in r["methods"].values()]
        lines.append(f"| {r['rule']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interval(s: Mapping, signed: bool = True) -> str:
    fmt = (lambda v: f"{100 * v:+.1f}") if signed else (lambda v: f"{100 * v:.1f}")
    if s["ci_low"] is None:
        return fmt(s["mean"])
    return f"{fmt(s['mean'])} [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]"


def drop_markdown(rows: list[dict]) -> str:
    lines = ["| max_source_drop | method gain over source | methods > 1 pt below source | "
             "recommended gain | seeds harmed | share of best oracle gain |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        share = "" if r["share_of_best_gain"] is None else f"{100 * r['share_of_best_gain']:.0f} %"
        lines.append(f"| {r['max_source_drop']:g} | {_interval(r['method_gain'])} | "
                     f"{r['methods_harmed']} | {_interval(r['recommended_gain'])} | "
                     f"{r['recommended_harmed']} | {share} |")
    return "\n".join(lines)


def floor_markdown(rows: list[dict]) -> str:
    lines = ["| source_free_floor | info_max: gap to oracle | bnm: gap | method gain over source "
             "| methods > 1 pt below source | recommended gain | seeds harmed | share of best "
             "oracle gain |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = "" if r["share_of_best_gain"] is None else f"{100 * r['share_of_best_gain']:.0f} %"
        floor = "null (the drop)" if r["source_free_floor"] is None else f"{r['source_free_floor']:g}"
        lines.append(f"| {floor} | {_interval(r['info_max_gap'])} | {_interval(r['bnm_gap'])} | "
                     f"{_interval(r['method_gain'])} | {r['methods_harmed']} | "
                     f"{_interval(r['recommended_gain'])} | {r['recommended_harmed']} | {share} |")
    return "\n".join(lines)


def markdown(validators: list[dict], guards: list[dict]) -> str:
    lines = ["| validator | test accuracy | gap to oracle | gain over source | Spearman rho |",
             "|---|---|---|---|---|"]
    for r in validators:
        rho = "" if r["spearman"] is None else f"{r['spearman']:+.2f}"
        lines.append(f"| {r['validator']} | {_interval(r['accuracy'], False)} | "
                     f"{_interval(r['gap_to_oracle'])} | {_interval(r['gain_over_source'])} | "
                     f"{rho} |")
    oracle = validators[-1]
    lines += ["", f"The oracle ties (same best target-val accuracy, different test accuracy) in "
              f"{oracle['tied_runs']} of {oracle['runs']} runs; the test accuracies it cannot tell "
              f"apart lie {100 * oracle['tie_spread']:.1f} points apart on average."]
    lines += ["", "| rule (validator; guard) | method gain over source | methods > 1 pt below "
              "source | recommended gain | seeds harmed | share of best oracle gain |",
              "|---|---|---|---|---|---|"]
    for r in guards:
        share = "" if r["share_of_best_gain"] is None else f"{100 * r['share_of_best_gain']:.0f} %"
        lines.append(f"| {r['rule']} | {_interval(r['method_gain'])} | {r['methods_harmed']} | "
                     f"{_interval(r['recommended_gain'])} | {r['recommended_harmed']} | {share} |")
    return "\n".join(lines)
