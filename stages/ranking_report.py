"""Stage ranking report: how well each transferability score ranks the candidate sources
against their real transfer outcomes, which source a score would pick, and what scoring costs
next to fine-tuning.

Reads the candidates that params.yaml lists (a removed candidate's old file is ignored).
Writes the metrics JSON (rank correlations with bootstrap intervals, recommendations), the
cost JSON (wall times: they differ from run to run), the markdown report and one plot CSV per
score (score against outcome, one point per candidate).
"""

import argparse
from pathlib import Path

from transferlab.errors import UserError
from transferlab.io import atomic_path, read_json, write_csv, write_json
from transferlab.launcher import run_stage
from transferlab.params import load_params
from transferlab.ranking import (agreement_table, best_score, candidate_row, cost_summary,
                                 ranking_markdown, recommend)
from transferlab.transferability import SCORES


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("candidates", type=Path, help="directory of candidate JSONs")
    ap.add_argument("timings", type=Path, help="directory of candidate wall-time JSONs")
    ap.add_argument("--metrics", type=Path, required=True)
    ap.add_argument("--cost", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--plots", type=Path, required=True, help="output: directory of plot CSVs")
    args = ap.parse_args(argv)
    cfg = load_params().ranking

    paths = {n: (args.candidates / f"{n}.json", args.timings / f"{n}.json") for n in cfg.candidates}
    missing = [str(p) for pair in paths.values() for p in pair if not p.is_file()]
    if missing:
        raise UserError(f"{missing[0]} is missing: run `dvc repro ranking/dvc.yaml`")
    try:
        rows = [candidate_row(n, read_json(out)) for n, (out, _) in paths.items()]
    except KeyError as err:
        raise UserError(f"a candidate file lacks {err} (written by an older version): run "
                        "`dvc repro ranking/dvc.yaml`") from None
    agreement = agreement_table(rows, cfg.bootstrap)
    recommendations = [recommend(rows, s) for s in SCORES]
    cost = cost_summary({n: read_json(t)["seeds"] for n, (_, t) in paths.items()})
    best = best_score(agreement)
    write_json(args.metrics, {"candidates": {r["candidate"]: r for r in rows},
                              "agreement": agreement, "best_score": best,
                              "recommendation": recommend(rows, cfg.recommend_by),
                              "recommendation_by_score": recommendations})
    write_json(args.cost, cost)
    report = ranking_markdown(rows, agreement, recommendations, cfg.recommend_by, cost, cfg.shots)
    with atomic_path(args.report) as tmp:
        tmp.write_text(report)
    with atomic_path(args.plots) as tmp:
        tmp.mkdir()
        for s in SCORES:
            write_csv(tmp / f"{s}.csv", ["candidate", s, "finetune", "features"],
                      [[r["candidate"], r[s], r["finetune"], r["features"]] for r in rows])
    print(report)


if __name__ == "__main__":
    run_stage(main)
