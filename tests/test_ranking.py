"""The ranking study: candidate sources, rank statistics, its stages, and its DVC promise that
adding a candidate runs only that candidate's stage (and the report)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import tiny_params_dict
from tests.dvc_helpers import copy_project, dvc, ran, set_params
from tests.test_stages import run_main
from transferlab import candidates, ranking
from transferlab.rawdata import RawDataset
from transferlab.params import parse_params
from transferlab.scenario import build_scenario
from transferlab.transferability import SCORES

TINY_RANKING = {"shots": 1, "seeds": [0, 1], "bootstrap": 200, "recommend_by": "logme",
                "candidates": {
                    "full": {"classes": "all", "fraction": 0.2, "epochs": 1, "align": True},
                    "half": {"classes": [0, 1, 2, 3, 4], "fraction": 0.2, "epochs": 1,
                             "align": True},
                    "random": {"classes": "all", "fraction": 1.0, "epochs": 0, "align": True}}}


def tiny_ranking_params(**candidates_update) -> dict:
    params = tiny_params_dict()
    params["ranking"] = json.loads(json.dumps(TINY_RANKING))
    params["ranking"]["candidates"].update(candidates_update)
    return params


def raw_digits(n_per_class=20, size=12, seed=0, offset=0) -> RawDataset:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    images = np.zeros((labels.size, size, size), dtype=np.uint8)
    for i, c in enumerate(labels):  # a bar per class, off-centre so the bbox crop matters
        images[i, 2 + c % 8, 1:size // 2 + rng.integers(0, 3)] = 200 + rng.integers(0, 55)
    images[:, -1, -1] = offset  # a pixel that tells datasets apart
    return RawDataset(images, labels, 255)


TARGET = raw_digits(seed=2, offset=99)  # shares no image with any raw_digits(offset=0)
# candidate_source takes the framing prepare chose (the stage reads it from the pool's record)
FRAMED = {"crop": "bbox", "scale": "max", "bottleneck_size": 8, "channels": 1}


def framed_params():
    params = tiny_ranking_params()
    params["prepare"].update(FRAMED)
    return parse_params(params)


# ---- rank statistics ------------------------------------------------------------------------

def test_rank_agreement_by_hand():
    # one swapped pair of 6: τ = (5 - 1) / 6; ρ = 1 - 6 Σd² / (n(n² - 1)) = 1 - 12/60
    out = ranking.rank_agreement([1, 2, 3, 4], [1, 3, 2, 4], bootstrap=500)
    assert out["kendall_tau"]["value"] == pytest.approx(4 / 6, abs=1e-4)
    assert out["spearman_rho"]["value"] == pytest.approx(0.8, abs=1e-4)
    assert -1 <= out["kendall_tau"]["ci_low"] <= 4 / 6 <= out["kendall_tau"]["ci_high"] <= 1
    perfect = ranking.rank_agreement([1, 2, 3, 4, 5], [0.1, 0.5, 0.6, 0.7, 0.9], bootstrap=500)
    assert perfect["kendall_tau"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0,
                                      "resamples": perfect["kendall_tau"]["resamples"]}
    assert ranking.rank_agreement([5, 4, 3], [1, 2, 3], 200)["spearman_rho"]["value"] == -1.0


def test_a_constant_score_has_no_rank_correlation():
    out = ranking.rank_agreement([2.0, 2.0, 2.0, 2.0], [0.1, 0.2, 0.3, 0.4], bootstrap=200)
    assert out["kendall_tau"] == {"value": None, "ci_low": None, "ci_high": None, "resamples": 0}
    json.dumps(out, allow_nan=False)  # no NaN reaches the metrics file


def rows():
    values = {"a": (3.0, 0.95), "b": (2.0, 0.97), "c": (1.0, 0.90)}
    return [{"candidate": n, "seeds": 3, **{s: v for s in SCORES}, "finetune": o, "features": o}
            for n, (v, o) in values.items()]


def test_recommendation_names_the_top_scored_source_and_its_shortfall():
    rec = ranking.recommend(rows(), "logme")
    assert (rec["recommended"], rec["best"]) == ("a", "b")
    assert rec["shortfall"] == pytest.approx(0.02)
    agreement = ranking.agreement_table(rows(), bootstrap=200)
    assert agreement["finetune"]["leep"]["kendall_tau"]["value"] == pytest.approx(1 / 3, abs=1e-4)
    assert ranking.best_score(agreement) == "logme"  # all tie: the first in SCORES order


def test_cost_summary_takes_the_worst_ratio():
    seed = {"score_s": 0.1, "score_cpu_s": 0.2, "finetune_s": 4.0, "finetune_cpu_s": 8.0,
            "features_s": 1.0, "features_cpu_s": 1.0, "seed": 0}
    slow = dict(seed, score_s=0.4)
    cost = ranking.cost_summary({"a": [seed, seed], "b": [slow]})
    assert cost["candidates"]["a"]["score_s"] == pytest.approx(0.2)
    assert cost["worst_ratio"] == pytest.approx(0.1) and cost["worst_ratio_cpu"] == 0.025


# ---- candidate sources ----------------------------------------------------------------------

def cand(**kw):
    spec = {"classes": "all", "fraction": 1.0, "epochs": 1, "align": True, **kw}
    return parse_params(tiny_ranking_params(x=spec)).ranking.candidates["x"]


def test_the_full_candidate_is_the_default_pipelines_source(tiny_params):
    raw, params = raw_digits(), framed_params()
    source = candidates.candidate_source(raw, TARGET, "x", cand(), params)
    target = raw_digits(seed=1)
    overlap = candidates.candidate_source(raw, target, "x", cand(), params)
    scenario = build_scenario(raw, target, params.prepare, params.seed)
    for key in ("x_train", "y_train", "x_val", "y_val"):  # both drop the images they share
        np.testing.assert_array_equal(overlap[key], scenario.source[key])
    scenario = build_scenario(raw, TARGET, params.prepare, params.seed)
    for key in ("x_train", "y_train", "x_val", "y_val"):
        np.testing.assert_array_equal(source[key], scenario.source[key])


def test_a_source_image_in_the_targets_official_test_split_is_dropped():
    raw, params = raw_digits(), framed_params()
    full = candidates.candidate_source(raw, TARGET, "x", cand(), params)
    test = RawDataset(raw.images[:15], raw.labels[:15], 255)  # 15 source images, class 0
    held = candidates.candidate_source(raw, TARGET, "x", cand(), params, {"test": test})
    in_test = {image.tobytes() for image in test.images}
    copies = sum(image.tobytes() in in_test for image in raw.images)  # >= 15: repeats too
    assert copies >= 15
    assert len(held["y_train"]) + len(held["y_val"]) == len(raw.labels) - copies
    assert len(full["y_train"]) + len(full["y_val"]) == len(raw.labels)


def test_candidates_take_their_classes_share_and_alignment():
    raw, params = raw_digits(), framed_params()
    full = candidates.candidate_source(raw, TARGET, "x", cand(), params)
    subset = candidates.candidate_source(raw, TARGET, "x", cand(classes=[3, 7]), params)
    assert sorted(np.unique(subset["y_train"])) == [0, 1]  # renumbered
    assert len(subset["y_train"]) == 2 * len(full["y_train"]) // 10
    few = candidates.candidate_source(raw, TARGET, "x", cand(fraction=0.5), params)
    assert np.bincount(few["y_train"]).tolist() == [9] * 10  # half of 18 train images a class
    np.testing.assert_array_equal(few["y_val"], full["y_val"])  # same source validation
    unaligned = candidates.candidate_source(raw, TARGET, "x", cand(align=False), params)
    assert unaligned["x_train"].shape == full["x_train"].shape
    assert not np.array_equal(unaligned["x_train"], full["x_train"])
    with pytest.raises(Exception, match="fraction=0.01 leaves class"):
        candidates.candidate_source(raw, TARGET, "x", cand(fraction=0.01), params)


def test_an_untrained_candidate_is_the_seeded_random_model():
    params = framed_params()
    source = {k: torch.from_numpy(v) for k, v in
              candidates.candidate_source(raw_digits(), TARGET, "x", cand(), params).items()}
    one, two = (candidates.train_candidate(source, cand(epochs=0), params) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(),
                                                 two.state_dict().values()))
    trained = candidates.train_candidate(source, cand(epochs=1), params)
    assert not torch.equal(trained.head.weight, one.head.weight)


# ---- the stages, on tiny data ---------------------------------------------------------------

@pytest.fixture(scope="module")
def ranked(tmp_path_factory):
    import yaml

    work = tmp_path_factory.mktemp("ranking")
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_ranking_params()))
    run_main(work, "download", "data/raw")
    run_main(work, "prepare", "data/raw", "data/prepared", "--summary", "metrics/scenario.json")
    for name in TINY_RANKING["candidates"]:
        run_main(work, "ranking_candidate", name, "--raw", "data/raw",
                 "--pool", "data/prepared/target_pool.safetensors",
                 "--out", f"ranking/candidates/{name}.json",
                 "--timing", f"ranking/timings/{name}.json")
    run_main(work, "ranking_report", "ranking/candidates", "ranking/timings",
             "--metrics", "ranking/metrics.json", "--cost", "ranking/cost.json",
             "--report", "ranking/report.md", "--plots", "ranking/plots")
    return work


def test_candidate_stage_scores_and_transfers_every_seed(ranked):
    out = json.loads((ranked / "ranking/candidates/half.json").read_text())
    assert out["source_classes"] == 5 and [s["seed"] for s in out["seeds"]] == [0, 1]
    for s in out["seeds"]:
        assert set(s["scores"]) == set(SCORES) and set(s["val_accuracy"]) == {"finetune",
                                                                               "features"}
    timing = json.loads((ranked / "ranking/timings/half.json").read_text())
    assert all(t["score_s"] > 0 and t["finetune_s"] > 0 for t in timing["seeds"])


def test_report_stage_writes_correlations_recommendation_cost_and_plots(ranked):
    metrics = json.loads((ranked / "ranking/metrics.json").read_text())
    assert set(metrics["candidates"]) == set(TINY_RANKING["candidates"])
    assert set(metrics["agreement"]["finetune"]) == set(SCORES)
    assert metrics["recommendation"]["score"] == "logme"
    assert metrics["recommendation"]["recommended"] in TINY_RANKING["candidates"]
    cost = json.loads((ranked / "ranking/cost.json").read_text())
    assert 0 < cost["worst_ratio"]
    assert (ranked / "ranking/plots/leep.csv").read_text().startswith("candidate,leep,finetune")
    assert "Kendall τ" in (ranked / "ranking/report.md").read_text()


def test_a_candidate_not_in_params_is_refused(ranked):
    from tests.test_stages import load_stage, cwd
    from transferlab.errors import UserError

    with cwd(ranked), pytest.raises(UserError, match="ranking.candidates has no 'nope'"):
        load_stage("ranking_candidate").main(["nope", "--raw", "x",
                                              "--pool", "y",
                                              "--out", "z", "--timing", "t"])


def test_more_shots_than_the_pool_has_names_ranking_shots(ranked):
    from tests.test_stages import cwd, load_stage
    from transferlab.errors import UserError

    import yaml

    params = tiny_ranking_params()
    params["ranking"]["shots"] = 10_000
    (ranked / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        with cwd(ranked), pytest.raises(UserError, match="ranking.shots=10000 but"):
            load_stage("ranking_candidate").main([
                "random", "--raw", "data/raw", "--pool",
                "data/prepared/target_pool.safetensors", "--out", "x.json", "--timing", "t.json"])
        assert not (ranked / "x.json").exists()
    finally:
        (ranked / "params.yaml").write_text(yaml.safe_dump(tiny_ranking_params()))


# ---- through the real dvc CLI ---------------------------------------------------------------

@pytest.mark.slow
def test_adding_a_candidate_runs_only_its_stage_and_the_report(tmp_path):
    repo = copy_project(tmp_path, tiny_ranking_params())
    first = ran(dvc(repo, "repro", "ranking/dvc.yaml"))
    assert {f"ranking/dvc.yaml:candidate@{n}" for n in TINY_RANKING["candidates"]} <= set(first)
    assert first[-1] == "ranking/dvc.yaml:report"

    params = tiny_ranking_params(fewer={"classes": "all", "fraction": 0.1, "epochs": 1,
                                        "align": False})
    set_params(repo, {"ranking.candidates": params["ranking"]["candidates"]})
    # check_params reads the whole params.yaml (any edit reruns it, with a constant output)
    assert ran(dvc(repo, "repro", "ranking/dvc.yaml")) == [
        "check_params", "ranking/dvc.yaml:candidate@fewer", "ranking/dvc.yaml:report"]
    set_params(repo, {"ranking.candidates": {**params["ranking"]["candidates"],
                                             "half": {**TINY_RANKING["candidates"]["half"],
                                                      "epochs": 2}}})
    assert ran(dvc(repo, "repro", "ranking/dvc.yaml")) == [
        "check_params", "ranking/dvc.yaml:candidate@half", "ranking/dvc.yaml:report"]
    metrics = json.loads((repo / "ranking/metrics.json").read_text())
    assert set(metrics["candidates"]) == {"full", "half", "random", "fewer"}
