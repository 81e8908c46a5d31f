"""The study: cells draw their own shots, never hand the test set to training, and aggregate."""

import json

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import make_images, tiny_params_dict
from tests.test_stages import run_main
from transferlab import strategies, study
from transferlab.errors import UserError
from transferlab.transfer import make_inputs
from transferlab.models import Classifier, architecture_from
from transferlab.params import parse_params

WIDTHS = [4, 8, 8]
CLASSES = ["0", "1", "2", "3"]


@pytest.fixture
def params():
    return parse_params(tiny_params_dict(model={"widths": WIDTHS}))


@pytest.fixture
def pool():
    x_pool, y_pool = make_images(6, seed=5)
    x_val, y_val = make_images(3, seed=6)
    return {"x_pool": x_pool, "y_pool": y_pool, "x_val": x_val, "y_val": y_val}


@pytest.fixture
def source_model(params):
    torch.manual_seed(9)  # the architecture the params build (model.norm/head auto)
    return Classifier(architecture_from(params.model, 1).build(), num_classes=4).eval()


def test_cell_draws_nested_shots_from_the_pool(pool):
    (one, _), (three, rest) = study.cell_target(pool, 1, seed=0), study.cell_target(pool, 3, seed=0)
    assert torch.bincount(three["y_train"]).tolist() == [3, 3, 3, 3]
    rows = {tuple(x.flatten().tolist()) for x in three["x_train"]}
    assert {tuple(x.flatten().tolist()) for x in one["x_train"]} <= rows
    assert three["x_val"] is pool["x_val"]
    # the unlabelled rest: every pool image that is not a shot, images only
    assert len(rest) + len(three["x_train"]) == len(pool["x_pool"]) and rest.dtype == torch.uint8
    assert not rows & {tuple(x.flatten().tolist()) for x in rest}
    zero, everything = study.cell_target(pool, 0, seed=0)
    assert len(zero["y_train"]) == 0 and len(everything) == len(pool["x_pool"])


@pytest.mark.parametrize("shots", [0, 2])
def test_training_never_receives_test_images(pool, params, source_model, monkeypatch, shots):
    from transferlab import train

    x_test = torch.full((5, 1, 8, 8), 7, dtype=torch.uint8)  # a marker no other image has
    seen = []
    original = train.fit

    def spy(model, groups, streams, val, *args, **kwargs):
        adapt = kwargs.get("adapt")
        seen.extend([s.x for s in streams] + [val[0]] + ([adapt.x] if adapt else []))
        return original(model, groups, streams, val, *args, **kwargs)

    monkeypatch.setattr("transferlab.train.fit", spy)
    monkeypatch.setattr("transferlab.transfer.fit", spy)
    source = {"x_train": make_images(5, seed=7)[0], "y_train": make_images(5, seed=7)[1],
              "x_val": make_images(2, seed=8)[0], "y_val": make_images(2, seed=8)[1]}
    target, unlabelled = study.cell_target(pool, shots, seed=0)
    outcomes = study.train_cell(target, unlabelled, params, 0, source_model, source, CLASSES,
                                CLASSES)
    expected = {n for n, m in strategies.METHODS.items() if shots or not m.needs_labels}
    assert set(outcomes) == expected
    assert seen and not any((x == 7).all(dim=(1, 2, 3)).any() for x in seen)
    models = study.selected_models(outcomes)
    scores = study.score(models, x_test, np.arange(5) % 4)
    oracles = {n for n in scores if n.endswith(study.ORACLE)}
    assert set(scores) == expected | oracles
    assert bool(oracles) == (shots == 0)  # label-free selection reports its oracle apart


@pytest.mark.parametrize("shots", [0, 1])
def test_the_study_skips_exactly_what_the_pipeline_skips(pool, params, source_model,
                                                         monkeypatch, shots):
    """Equal-size but different class sets (the cifar10-split preset: source classes 0-4,
    target 5-9): the pipeline's transfer stage skips the adaptation methods, so must the study.
    It used to compare class counts and ran them."""
    from transferlab.transfer import why_skipped

    ran = []
    monkeypatch.setattr(strategies, "run", lambda name, inputs, cfg: ran.append(name))
    source_classes, target_classes = ["cat", "dog", "frog", "horse"], CLASSES
    target, unlabelled = study.cell_target(pool, shots, seed=0)
    study.train_cell(target, unlabelled, params, 0, source_model, {}, source_classes,
                     target_classes)
    pipeline = [name for name, method in strategies.METHODS.items()  # as stages/transfer.py
                if not why_skipped(method, shots, source_classes if "source_model" in method.reads
                                   else None, target_classes)]
    assert ran == pipeline
    assert not any("unlabelled" in strategies.METHODS[name].reads for name in ran)
    assert (ran == []) == (shots == 0)


def test_layer_grid_covers_every_variant_and_copies_only_from_the_source(pool, params,
                                                                        source_model):
    assert study.layer_variants(3)[:4] == [("none", 0), ("frozen", 1), ("fine-tuned", 1),
                                          ("random-frozen", 1)]
    inputs = make_inputs(strategies.METHODS["structure"], study.cell_target(pool, 2, seed=0)[0],
                         params, 0, source_model=source_model)
    grid = study.train_layer_grid(inputs, params)
    assert len(grid) == 10
    src = source_model.encoder.block("block1")[0].weight
    assert torch.equal(grid["frozen", 2].model.encoder.block("block1")[0].weight, src)
    assert not torch.equal(grid["random-frozen", 2].model.encoder.block("block1")[0].weight, src)
    assert inputs.source_model is source_model  # the control got its own inputs


def test_report_stage_aggregates_cells_and_flags_negative_transfer(tmp_path):
    accuracy = {0: {"scratch": 0.80, "finetune": 0.75}, 1: {"scratch": 0.82, "finetune": 0.76},
                2: {"scratch": 0.84, "finetune": 0.79}}
    for seed, accs in accuracy.items():
        cell = {"shots": 5, "seed": seed, "val_accuracy": {},
                "test": {n: {"accuracy": a, "macro_f1": a} for n, a in accs.items()}}
        (tmp_path / "cells").mkdir(exist_ok=True)
        (tmp_path / "cells" / f"k5-s{seed}.json").write_text(json.dumps(cell))
        grid = {"shots": 5, "seed": seed, "grid": [
            {"variant": "none", "blocks": 0, "val_accuracy": 0.8, "accuracy": 0.8 + seed / 100}]}
        (tmp_path / "layers").mkdir(exist_ok=True)
        (tmp_path / "layers" / f"s{seed}.json").write_text(json.dumps(grid))
    # a cell of an earlier, larger study (k = 20 since removed from params): never counted
    stale = {"shots": 20, "seed": 0, "val_accuracy": {},
             "test": {"scratch": {"accuracy": 0.1, "macro_f1": 0.1}}}
    (tmp_path / "cells" / "k20-s0.json").write_text(json.dumps(stale))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(
        study={"shots": [5], "seeds": [0, 1, 2]})))
    run_main(tmp_path, "study_report", "cells", "layers", "--metrics", "metrics.json",
             "--report", "report.md", "--plots", "plots", "--selection", "selection.json")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # gains -0.05, -0.06, -0.05: mean -0.0533, std 0.00577, t(2)=4.3027 -> half-width 0.0143
    assert metrics["cells"]["finetune@k5"]["gain"] == pytest.approx(-0.0533, abs=1e-4)
    assert metrics["cells"]["finetune@k5"]["gain_ci_high"] == pytest.approx(-0.0390, abs=1e-4)
    assert metrics["cells"]["finetune@k5"]["negative_transfer"] is True
    assert metrics["layers"]["none@n0"]["accuracy"] == pytest.approx(0.81)
    report = (tmp_path / "report.md").read_text()
    assert "finetune at k=5 (vs scratch)." in report
    assert (tmp_path / "plots/accuracy_vs_k.csv").read_text().startswith(
        "strategy,shots,accuracy,ci_low,ci_high\nscratch,5,0.82,")
    assert "scratch@k20" not in metrics["cells"]


def test_report_stage_names_a_missing_cell(tmp_path):
    (tmp_path / "cells").mkdir()
    (tmp_path / "layers").mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(
        study={"shots": [5], "seeds": [0]})))
    with pytest.raises(UserError, match=r"k5-s0.json is missing: run `dvc repro study/dvc.yaml`"):
        run_main(tmp_path, "study_report", "cells", "layers", "--metrics", "metrics.json",
                 "--report", "report.md", "--plots", "plots", "--selection", "selection.json")
    assert not (tmp_path / "metrics.json").exists()


def _candidate(step, test, val, snd, info_max, source_accuracy=0.95):
    """A checkpoint row as study.checkpoint_rows writes it."""
    return {"step": step, "val_accuracy": val, "test_accuracy": test, "snd": snd,
            "info_max": info_max, "entropy": -0.1, "bnm": 0.3, "source_accuracy": source_accuracy,
            "cluster": 0.5, "dev": -1.0, "iwv": 0.9, "circular": 0.8, "mixval": 0.7,
            "agreement": 0.6, "top_share": 0.2, "marginal_entropy": 0.9}


def test_report_stage_replays_label_free_selection(tmp_path):
    """k = 0 cells with their candidates: each validator's pick, its gap to the oracle and its
    rank correlation; each guard rule's verdict against the source model (step 0)."""
    (tmp_path / "cells").mkdir()
    (tmp_path / "layers").mkdir()
    for seed in (0, 1):
        rows = [_candidate(0, 0.80, 0.8, 1.0, 0.50),
                _candidate(10, 0.90, 0.9, 0.9, 0.70),   # the best: IM ranks it first
                _candidate(20, 0.60, 0.5, 2.0, 0.20),   # SND's favourite: far worse
                _candidate(30, 0.99, 1.0, 9.0, 0.99, source_accuracy=0.5)]  # forgot the source
        cell = {"shots": 0, "seed": seed, "test": {"source_only": {"accuracy": 0.8, "macro_f1": 0.8}},
                "checkpoints": {"coral": rows}}
        (tmp_path / "cells" / f"k0-s{seed}.json").write_text(json.dumps(cell))
        (tmp_path / "layers" / f"s{seed}.json").write_text(json.dumps({"shots": 5, "seed": seed,
                                                                      "grid": []}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(
        study={"shots": [0], "seeds": [0, 1]},
        selection={"validator": "snd", "guard": ["snd", "info_max"], "guard_margin": 0.0})))
    run_main(tmp_path, "study_report", "cells", "layers", "--metrics", "metrics.json",
             "--report", "report.md", "--plots", "plots", "--selection", "selection.json")
    replay = json.loads((tmp_path / "selection.json").read_text())
    by = {r["validator"]: r for r in replay["validators"]}
    # step 30 is ineligible (source accuracy 0.5 < 0.95 - 0.02): SND picks step 20, IM step 10
    assert by["snd"]["accuracy"]["mean"] == pytest.approx(0.60)
    assert by["snd"]["gap_to_oracle"]["mean"] == pytest.approx(-0.39)  # oracle: step 30, 0.99
    assert by["info_max"]["gain_over_source"]["mean"] == pytest.approx(0.10)
    assert by["info_max"]["spearman"] == pytest.approx(1.0)
    rules = {r["rule"]: r for r in replay["guards"]}
    # the params' rule: SND picks step 20, IM disagrees (0.20 < 0.50): the source model is kept
    assert replay["guards"][0]["rule"] == "snd; guard info_max+snd"  # params first
    assert rules["snd; guard info_max+snd"]["method_gain"]["mean"] == pytest.approx(0.0)
    assert rules["snd; guard no guard"]["methods_harmed"] == "2/2"
    assert rules["info_max; guard info_max"]["recommended_gain"]["mean"] == pytest.approx(0.10)
    assert "Selection without target labels" in (tmp_path / "report.md").read_text()


def test_report_stage_names_a_malformed_checkpoint_row(tmp_path):
    (tmp_path / "cells").mkdir()
    (tmp_path / "layers").mkdir()
    bad = {k: v for k, v in _candidate(0, 0.8, 0.8, 1.0, 0.5).items() if k != "snd"}
    cell = {"shots": 0, "seed": 0, "test": {}, "checkpoints": {"coral": [bad]}}
    (tmp_path / "cells" / "k0-s0.json").write_text(json.dumps(cell))
    (tmp_path / "layers" / "s0.json").write_text(json.dumps({"shots": 5, "seed": 0, "grid": []}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(
        study={"shots": [0], "seeds": [0]})))
    with pytest.raises(UserError, match=r"k0-s0.json: checkpoints.coral\[0\] has no 'snd'"):
        run_main(tmp_path, "study_report", "cells", "layers", "--metrics", "metrics.json",
                 "--report", "report.md", "--plots", "plots", "--selection", "selection.json")
    assert not (tmp_path / "selection.json").exists()


def test_report_stage_scores_the_health_check_against_test_accuracy(tmp_path):
    """Each cell carries the label-free verdict of every model; the report counts, against test
    accuracy it never showed the check, the collapsed models caught and missed and the false
    alarms among models within 5 points of their cell's best (health.score_detector)."""
    def checked(degenerate):
        return {"degenerate": degenerate, "top_share": 0.9 if degenerate else 0.3,
                "marginal_entropy": 0.2 if degenerate else 0.95}

    # 4 classes: collapsed below 0.25 + 0.20 = 0.45
    verdicts = {"scratch": (0.80, False), "finetune": (0.78, True),   # near best, flagged
                "mcc": (0.30, True), "dann": (0.40, False)}            # collapsed: hit, miss
    (tmp_path / "cells").mkdir()
    (tmp_path / "layers").mkdir()
    for seed in (0, 1):
        cell = {"shots": 5, "seed": seed, "classes": 4,
                "test": {n: {"accuracy": a, "macro_f1": a} for n, (a, _) in verdicts.items()},
                "health": {n: checked(d) for n, (_, d) in verdicts.items()}}
        (tmp_path / "cells" / f"k5-s{seed}.json").write_text(json.dumps(cell))
        grid = {"shots": 5, "seed": seed, "grid": [
            {"variant": "none", "blocks": 0, "val_accuracy": 0.8, "accuracy": 0.8}]}
        (tmp_path / "layers" / f"s{seed}.json").write_text(json.dumps(grid))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(
        study={"shots": [5], "seeds": [0, 1]})))
    run_main(tmp_path, "study_report", "cells", "layers", "--metrics", "metrics.json",
             "--report", "report.md", "--plots", "plots", "--selection", "selection.json")
    counts = json.loads((tmp_path / "metrics.json").read_text())["health"]
    assert counts == {"models": 8, "collapsed": 4, "hits": 2, "misses": 2, "near_best": 4,
                      "false_alarms": 2, "flagged": 4}
    report = (tmp_path / "report.md").read_text()
    assert "of 8 models, 4 flagged (finetune@k5, mcc@k5)" in report
    assert "2 caught, 2 missed" in report and "2 false alarms" in report


def test_health_rows_flag_a_model_that_answers_one_class(pool, source_model):
    stuck = study._copy_with_state(source_model, source_model.state_dict())
    with torch.no_grad():  # a head that ignores the features and always favours class 1
        stuck.head.weight.zero_()
        stuck.head.bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))
    rows = study.health_rows({"stuck": stuck, "source": source_model}, pool["x_pool"], 4, None)
    assert rows["stuck"] == {"degenerate": True, "top_share": 1.0, "marginal_entropy": 0.0}
    assert set(rows["source"]) == {"degenerate", "top_share", "marginal_entropy"}


@pytest.mark.parametrize("shots", [0, 2])
def test_batchnorm_methods_are_skipped_on_a_source_without_batchnorm(pool, params, source_model,
                                                                     monkeypatch, shots):
    """A group-normalised source model (model.norm auto on a textured backdrop): adabn and tent
    are skipped by the study and the pipeline alike, with the reason, instead of stopping the
    whole cell; every other method still runs."""
    from transferlab.transfer import why_skipped

    ran = []
    monkeypatch.setattr(strategies, "run", lambda name, inputs, cfg: ran.append(name))
    target, unlabelled = study.cell_target(pool, shots, seed=0)
    study.train_cell(target, unlabelled, params, 0, source_model, {}, CLASSES, CLASSES,
                     source_norm="group")
    needing = {n for n, m in strategies.METHODS.items() if m.needs_batchnorm}
    assert needing >= {"adabn", "tent"} and not needing & set(ran)
    assert set(ran) == {n for n, m in strategies.METHODS.items()
                        if not why_skipped(m, shots, CLASSES, CLASSES, "group")}
    why = why_skipped(strategies.METHODS["tent"], shots, CLASSES, CLASSES, "group")
    assert "group normalisation" in why and "model.norm: batch" in why
    assert why_skipped(strategies.METHODS["tent"], shots, CLASSES, CLASSES, "batch") is None
