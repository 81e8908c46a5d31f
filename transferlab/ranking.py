"""The ranking study's statistics: do transferability scores order the candidate sources as
their real transfer outcomes do, and what would trusting a score have cost?

Per candidate, scores and outcomes are means over seeds. Agreement is Kendall's τ-b and
Spearman's ρ across candidates (scipy.stats), each with a 95 % percentile bootstrap interval
that resamples candidates with replacement (few candidates: the interval is wide, and says so).
No training code here: the report stage imports numpy and scipy only.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from transferlab.metrics import DIGITS
from transferlab.transferability import SCORES

OUTCOMES = ("finetune", "features")
LEVEL = 0.95


def candidate_row(name: str, result: dict) -> dict:
    """One candidate's JSON -> its mean score and mean outcome over seeds."""
    seeds = result["seeds"]
    return {"candidate": name, "seeds": len(seeds),
            **{s: round(float(np.mean([r["scores"][s] for r in seeds])), DIGITS) for s in SCORES},
            **{o: round(float(np.mean([r["val_accuracy"][o] for r in seeds])), DIGITS)
               for o in OUTCOMES}}


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), DIGITS)


def rank_agreement(scores, outcomes, bootstrap: int, seed: int = 0) -> dict:
    """Kendall τ-b and Spearman ρ of scores vs outcomes, with bootstrap intervals over the
    candidates. A statistic that is undefined (a constant column, or a resample holding one
    candidate) is None, and such resamples are left out of the interval."""
    from scipy.stats import ConstantInputWarning, kendalltau, spearmanr

    x, y = np.asarray(scores, float), np.asarray(outcomes, float)
    out = {}
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, x.size, size=(bootstrap, x.size))
    for name, statistic in (("kendall_tau", kendalltau), ("spearman_rho", spearmanr)):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantInputWarning)  # -> None, as documented
            value = statistic(x, y).statistic
            boot = np.array([statistic(x[d], y[d]).statistic for d in draws])
        boot = boot[np.isfinite(boot)]
        low, high = (np.quantile(boot, [(1 - LEVEL) / 2, (1 + LEVEL) / 2]) if boot.size
                     else (None, None))
        out[name] = {"value": _finite(value), "ci_low": _finite(low), "ci_high": _finite(high),
                     "resamples": int(boot.size)}
    return out


def agreement_table(rows: list[dict], bootstrap: int) -> dict:
    """{outcome: {score: rank_agreement}} for every score and outcome."""
    return {o: {s: rank_agreement([r[s] for r in rows], [r[o] for r in rows], bootstrap)
                for s in SCORES} for o in OUTCOMES}


def best_score(agreement: dict, outcome: str = "finetune") -> str | None:
    """The score with the highest Kendall τ against `outcome` (None if none is defined)."""
    taus = {s: a["kendall_tau"]["value"] for s, a in agreement[outcome].items()
            if a["kendall_tau"]["value"] is not None}
    return max(taus, key=lambda s: (taus[s], -SCORES.index(s))) if taus else None


def recommend(rows: list[dict], score: str, outcome: str = "finetune") -> dict:
    """The candidate `score` ranks first, its real outcome, and how far (in accuracy points x
    0.01) it falls short of the candidate that really was best."""
    chosen = max(rows, key=lambda r: (r[score], r["candidate"]))
    best = max(rows, key=lambda r: (r[outcome], r["candidate"]))
    return {"score": score, "outcome": outcome, "recommended": chosen["candidate"],
            "recommended_outcome": chosen[outcome], "best": best["candidate"],
            "best_outcome": best[outcome],
            "shortfall": round(best[outcome] - chosen[outcome], DIGITS)}


def cost_summary(timings: dict[str, list[dict]]) -> dict:
    """Per candidate: wall and CPU seconds of scoring and transfer summed over its seeds, and
    the scoring/fine-tuning ratios; `worst_ratio(_cpu)` is the largest of any candidate."""
    per = {}
    for name, seeds in sorted(timings.items()):
        total = {key: sum(t[key] for t in seeds) for key in seeds[0] if key.endswith("_s")}
        per[name] = {**{k: round(v, 3) for k, v in sorted(total.items())},
                     "score_over_finetune": round(total["score_s"] / total["finetune_s"], 4),
                     "score_over_finetune_cpu": round(total["score_cpu_s"]
                                                      / total["finetune_cpu_s"], 4)}
    return {"candidates": per,
            "worst_ratio": max((c["score_over_finetune"] for c in per.values()), default=None),
            "worst_ratio_cpu": max((c["score_over_finetune_cpu"] for c in per.values()),
                                   default=None)}


def _interval(a: dict) -> str:
    if a["value"] is None:
        return "undefined"
    ci = (f" [{a['ci_low']:+.2f}, {a['ci_high']:+.2f}]" if a["ci_low"] is not None else "")
    return f"{a['value']:+.2f}{ci}"


def ranking_markdown(rows: list[dict], agreement: dict, recommendations: list[dict],
                     chosen_by: str, cost: dict, shots: int) -> str:
    """The report: candidates, score-outcome agreement, recommendations, cost."""
    seeds = rows[0]["seeds"] if rows else 0
    lines = [f"Candidates: {len(rows)}; target: {shots} shots per class + the validation set; "
             f"outcomes: target-validation accuracy over {seeds} seeds (mean).", "",
             "| candidate | " + " | ".join(SCORES) + " | finetune % | features % |",
             "|---|" + "---:|" * (len(SCORES) + 2)]
    for r in sorted(rows, key=lambda r: -r["finetune"]):
        lines.append(f"| {r['candidate']} | " + " | ".join(f"{r[s]:.3f}" for s in SCORES)
                     + f" | {100 * r['finetune']:.1f} | {100 * r['features']:.1f} |")
    lines += ["", "Rank agreement with the real outcome across candidates (95 % bootstrap "
              "interval over candidates):", "",
              "| score | Kendall τ vs finetune | Spearman ρ vs finetune | Kendall τ vs features "
              "| Spearman ρ vs features |", "|---|---:|---:|---:|---:|"]
    for s in SCORES:
        lines.append(f"| {s} | " + " | ".join(_interval(agreement[o][s][stat])
                                              for o in OUTCOMES
                                              for stat in ("kendall_tau", "spearman_rho")) + " |")
    lines += ["", "If each score had picked the source (fine-tune outcome):", "",
              "| score | recommends | its finetune % | best candidate | best finetune % "
              "| shortfall (points) |", "|---|---|---:|---|---:|---:|"]
    for rec in recommendations:
        mark = " (ranking.recommend_by)" if rec["score"] == chosen_by else ""
        lines.append(f"| {rec['score']}{mark} | {rec['recommended']} | "
                     f"{100 * rec['recommended_outcome']:.1f} | {rec['best']} | "
                     f"{100 * rec['best_outcome']:.1f} | {100 * rec['shortfall']:.1f} |")
    worst, worst_cpu = cost["worst_ratio"], cost["worst_ratio_cpu"]
    lines += ["", "Cost per candidate, seconds summed over seeds (scoring = forward pass + the "
              f"scores): worst scoring/fine-tuning ratio {worst:.4f} wall "
              f"(1/{1 / worst:.0f}), {worst_cpu:.4f} CPU (1/{1 / worst_cpu:.0f}).", "",
              "| candidate | scoring s (wall / CPU) | finetune s (wall / CPU) | features s (wall) "
              "| scoring / finetune (wall / CPU) |", "|---|---:|---:|---:|---:|"]
    for name, c in cost["candidates"].items():
        lines.append(f"| {name} | {c['score_s']:.3f} / {c['score_cpu_s']:.3f} | "
                     f"{c['finetune_s']:.2f} / {c['finetune_cpu_s']:.2f} | {c['features_s']:.2f} "
                     f"| {c['score_over_finetune']:.4f} / {c['score_over_finetune_cpu']:.4f} |")
    return "\n".join(lines) + "\n"
