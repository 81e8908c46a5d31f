"""Multi-seed statistics of a transfer study: means with t intervals, gains paired by seed.

Seeds are few (3-5), so intervals use Student's t, not 1.96: with n=3 the two-sided 95 %
quantile is 4.30, more than twice the normal 1.96. Gains over scratch are paired by seed
because a seed fixes the k-shot draw, and the draw moves every strategy together: pairing
removes that shared noise, so a gain can be certain while both raw intervals overlap.
"""

from __future__ import annotations

import math

from transferlab.metrics import DIGITS
from transferlab.strategies import NAMES
LEVEL = 0.95  # the interval level of study_table, and the "95 % CI" study_markdown prints
CONTROL = "scratch"
SOURCE_ONLY = "source_only"
STRATEGY_ORDER = (SOURCE_ONLY, *NAMES)  # the registry's order, the baseline first


def t_quantile(df: int, level: float = LEVEL) -> float:
    """Two-sided Student t quantile: mean ± t·std/√n covers the true mean with prob. `level`."""
    from scipy.stats import t  # scipy arrives with scikit-learn; only this function needs it

    if df < 1:
        raise ValueError(f"a t interval needs df >= 1 (at least 2 values), got df={df}")
    return float(t.ppf(0.5 + level / 2, df))  # df=2 -> 4.3027, df=4 -> 2.7764


def summarize(values, level: float = LEVEL) -> dict:
    """Mean, sample std (ddof=1), n and the t interval of the mean.

    With one value there is no spread to estimate: std, ci_low and ci_high are None (not NaN,
    which json.dumps writes as the invalid token NaN), so a 1-seed run still gives a row.
    """
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("cannot summarize an empty list of values")
    mean = math.fsum(xs) / n
    if n == 1:
        return {"mean": mean, "std": None, "n": 1, "ci_low": None, "ci_high": None}
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1, level) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def paired_gain(strategy_values_by_seed: dict, scratch_values_by_seed: dict,
                level: float = LEVEL) -> dict:
    """summarize() of strategy − scratch, seed by seed, plus two verdicts on the interval.

    negative_transfer: the whole interval is below zero (ci_high < 0), i.e. the source hurt.
    positive: the whole interval is above zero (ci_low > 0). Both are False with one seed.
    Seeds must match exactly: a gain over a different set of draws is not a paired gain.
    """
    mine, theirs = set(strategy_values_by_seed), set(scratch_values_by_seed)
    if mine != theirs:
        raise ValueError(f"seeds differ: missing from scratch {sorted(mine - theirs)}, "
                         f"missing from the strategy {sorted(theirs - mine)}")
    seeds = sorted(mine)
    gain = summarize([strategy_values_by_seed[s] - scratch_values_by_seed[s] for s in seeds],
                     level)
    has_ci = gain["ci_low"] is not None
    gain["positive"] = has_ci and gain["ci_low"] > 0
    gain["negative_transfer"] = has_ci and gain["ci_high"] < 0
    return gain


def _rounded(summary: dict) -> dict:
    return {k: round(v, DIGITS) if isinstance(v, float) else v for k, v in summary.items()}


def _strategy_rank(strategy: str) -> tuple:
    """Known strategies in pipeline order (a method's '(oracle)' row after it), then others."""
    base = strategy.split(" (")[0]
    if base in STRATEGY_ORDER:
        return (STRATEGY_ORDER.index(base), strategy)
    return (len(STRATEGY_ORDER), strategy)


def study_table(records, metric: str = "accuracy") -> list[dict]:
    """One row per (strategy, shots): the metric's summary and its paired gains over scratch
    and over source_only, and negative transfer against the best baseline that uses no more
    target labels (source_only uses none; scratch as many as the strategy, so it counts at
    k >= 1 only; the better of the two by mean).

    Row: strategy, shots, metric, mean, std, n, ci_low, ci_high, negative_transfer, and where
    the baseline exists at the same shots: gain (over scratch), gain_source_only (both
    paired_gain dicts), baseline (the one negative transfer is judged against). Baselines are
    not judged; neither are '(oracle)' rows (target labels chose them). Flags use unrounded
    values; the numbers are rounded to 4 decimals. Sorted by shots, then STRATEGY_ORDER.
    """
    cells: dict = {}  # (strategy, shots) -> {seed: value}
    for r in records:
        by_seed = cells.setdefault((r["strategy"], int(r["shots"])), {})
        if r["seed"] in by_seed:
            raise ValueError(f"duplicate record: {r['strategy']} shots={r['shots']} "
                             f"seed={r['seed']}")
        by_seed[r["seed"]] = float(r[metric])
    rows = []
    for strategy, shots in sorted(cells, key=lambda c: (c[1], _strategy_rank(c[0]))):
        by_seed = cells[strategy, shots]
        row = {"strategy": strategy, "shots": shots, "metric": metric,
               **_rounded(summarize(by_seed.values())), "negative_transfer": False}
        control = cells.get((CONTROL, shots))
        source_only = cells.get((SOURCE_ONLY, 0)) or cells.get((SOURCE_ONLY, shots))
        if strategy != CONTROL and control is not None:
            row["gain"] = _rounded(paired_gain(by_seed, control))
        if strategy != SOURCE_ONLY and source_only is not None and set(source_only) >= set(by_seed):
            row["gain_source_only"] = _rounded(paired_gain(
                by_seed, {seed: source_only[seed] for seed in by_seed}))
        fair = {name: gain for name, gain in ((CONTROL, row.get("gain")),
                                              (SOURCE_ONLY, row.get("gain_source_only")))
                if gain is not None}
        if strategy not in (CONTROL, SOURCE_ONLY) and "(oracle)" not in strategy and fair:
            row["baseline"] = min(fair, key=lambda b: fair[b]["mean"])  # the better baseline
            row["negative_transfer"] = fair[row["baseline"]]["negative_transfer"]
        rows.append(row)
    return rows


def _signed(x: float) -> str:
    """'+2.1' / '−0.4' (a real minus sign); -0.04 prints as +0.0, not −0.0."""
    return f"{round(x, 1) + 0.0:+.1f}".replace("-", "\u2212")


def study_markdown(rows: list[dict]) -> str:
    """A markdown table of study_table rows, in percent and percentage points."""
    metric = rows[0]["metric"] if rows else "accuracy"
    lines = [f"| strategy | k | seeds | {metric} % (mean ± 95 % CI) "
             "| gain over scratch (points, 95 % CI) | gain over source-only (points, 95 % CI) "
             "| negative transfer |",
             "|---|---:|---:|---:|---:|---:|:---:|"]

    def gain_text(g):
        if g is None:
            return "—"
        text = _signed(100 * g["mean"])
        if g["ci_low"] is not None:
            text += f" [{_signed(100 * g['ci_low'])}, {_signed(100 * g['ci_high'])}]"
        return text

    for r in rows:
        value = f"{100 * r['mean']:.1f}"
        if r["ci_high"] is not None:  # half-width; None with one seed
            value += f" ± {100 * (r['ci_high'] - r['mean']):.1f}"
        marker = f"yes (vs {r['baseline']})" if r["negative_transfer"] else ""
        lines.append(f"| {r['strategy']} | {r['shots']} | {r['n']} | {value} "
                     f"| {gain_text(r.get('gain'))} | {gain_text(r.get('gain_source_only'))} "
                     f"| {marker} |")
    return "\n".join(lines) + "\n"


def cell_records(cells: list[dict]) -> list[dict]:
    """Cell JSONs -> one record per (strategy, shots, seed) for stats.study_table."""
    return [{"strategy": name, "shots": c["shots"], "seed": c["seed"], **s}
            for c in cells for name, s in c["test"].items()]


def layer_table(grids: list[dict]) -> list[dict]:
    """Per (variant, copied blocks): test accuracy over seeds with its t interval."""
    by_cell: dict[tuple[str, int], list[float]] = {}
    for g in grids:
        for r in g["grid"]:
            by_cell.setdefault((r["variant"], r["blocks"]), []).append(r["accuracy"])
    rows = []
    for (variant, blocks), values in sorted(by_cell.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        s = summarize(values)
        rows.append({"variant": variant, "blocks": blocks,
                     **{k: round(v, DIGITS) if isinstance(v, float) else v for k, v in s.items()}})
    return rows


def layer_markdown(rows: list[dict]) -> str:
    lines = ["| copied blocks n | variant | seeds | accuracy % (mean ± 95 % CI) |",
             "|---:|---|---:|---:|"]
    for r in rows:
        value = f"{100 * r['mean']:.1f}"
        if r["ci_high"] is not None:
            value += f" ± {100 * (r['ci_high'] - r['mean']):.1f}"
        lines.append(f"| {r['blocks']} | {r['variant']} | {r['n']} | {value} |")
    return "\n".join(lines) + "\n"
