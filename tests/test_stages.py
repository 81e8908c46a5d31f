"""Each stage's main() on tiny params in a temporary directory, in pipeline order."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
import yaml

from tests.conftest import ROOT, stage_commands, tiny_params_dict
from transferlab.io import load_arrays, load_state_dict
from transferlab import strategies
from transferlab.strategies import NAMES
from transferlab.errors import UserError
from transferlab.params import parse_params
from transferlab.validators import VALIDATORS


def load_stage(name):
    spec = importlib.util.spec_from_file_location(f"stage_{name}", ROOT / "stages" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def cwd(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_main(work, stage, *args):
    with cwd(work):
        load_stage(stage).main([str(a) for a in args])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("stages")
    (d / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict()))
    return d


@pytest.fixture(scope="module")
def downloaded(work):
    run_main(work, "download", "data/raw")
    return work


@pytest.fixture(scope="module")
def prepared(downloaded):
    run_main(downloaded, "prepare", "data/raw", "data/prepared", "--summary", "metrics/scenario.json")
    return downloaded


@pytest.fixture(scope="module")
def pretrained(prepared):
    run_main(prepared, "pretrain", "data/prepared/source.safetensors", "models/source.safetensors",
             "--metrics", "metrics/pretrain.json", "--curve", "plots/curves/pretrain.csv")
    return prepared


@pytest.fixture(scope="module")
def extracted(pretrained):
    run_main(pretrained, "extract", "models/source.safetensors",
             "data/prepared/target.safetensors", "data/features/target.safetensors",
             "--metrics", "metrics/extract.json")
    return pretrained


@pytest.fixture(scope="module")
def transferred(extracted):
    for name in NAMES:
        run_main(extracted, "transfer", name, "--prepared", "data/prepared",
                 "--source-model", "models/source.safetensors",
                 "--features", "data/features/target.safetensors",
                 "--model", f"models/transfer/{name}.safetensors",
                 "--metrics", f"metrics/transfer/{name}.json", "--curve", f"plots/curves/{name}.csv")
    return extracted


def test_download_writes_both_embedded_datasets(downloaded):
    mnist = load_arrays(downloaded / "data/raw/source.safetensors")
    uci = load_arrays(downloaded / "data/raw/target.safetensors")
    assert mnist["images"].shape == (5000, 28, 28) and uci["images"].shape == (1797, 8, 8)
    assert (mnist["labels"].min(), mnist["labels"].max()) == (0, 9)


def test_prepare_writes_aligned_splits_and_keeps_test_apart(prepared):
    target = load_arrays(prepared / "data/prepared/target.safetensors")
    test = load_arrays(prepared / "data/prepared/target_test.safetensors")
    assert set(target) == {"x_train", "y_train", "x_val", "y_val"}
    assert target["x_train"].shape == (20, 1, 8, 8) and target["x_train"].dtype.name == "uint8"
    summary = json.loads((prepared / "metrics/scenario.json").read_text())
    assert summary["target_test"] == len(test["y_test"]) and summary["shots"] == 2


def test_pretrain_writes_model_metrics_and_curve(pretrained):
    state, meta = load_state_dict(pretrained / "models/source.safetensors")
    assert meta["widths"] == "[4, 8, 8]" and meta["arch"] == "small_cnn" and "head.weight" in state
    assert json.loads(meta["classes"]) == [str(d) for d in range(10)]
    metrics = json.loads((pretrained / "metrics/pretrain.json").read_text())
    assert 0.1 < metrics["source_val_accuracy"] <= 1.0
    assert (pretrained / "plots/curves/pretrain.csv").read_text().startswith("step,train_loss")


def test_extract_writes_features_and_diagnostics(extracted):
    features = load_arrays(extracted / "data/features/target.safetensors")
    # small_cnn's default (model.head auto) flattens the last map pooled to 4x4: 8 channels x 16
    assert features["train_features"].shape == (20, 8 * 16)
    metrics = json.loads((extracted / "metrics/extract.json").read_text())
    assert set(metrics) == {"nearest_centroid_val_accuracy", "fisher_ratio", "transferability"}
    assert set(metrics["transferability"]) == {"logme", "leep", "nce", "hscore", "hscore_shrunk"}
    assert all(math.isfinite(v) for v in metrics["transferability"].values())


def test_transfer_writes_one_model_per_strategy(transferred):
    for name in NAMES:
        assert (transferred / f"models/transfer/{name}.safetensors").is_file()
        assert "val_accuracy" in json.loads((transferred / f"metrics/transfer/{name}.json").read_text())


def test_evaluate_scores_every_strategy_and_the_source_only_baseline(transferred, capsys):
    from transferlab.health import problems

    (transferred / "models/transfer/stale.safetensors").write_bytes(b"a strategy removed from dvc.yaml")
    capsys.readouterr()
    run_main(transferred, "evaluate", *dict(stage_commands())["evaluate"])  # stale is not read
    out, err = capsys.readouterr()
    scores = json.loads((transferred / "metrics/evaluate.json").read_text())
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["transfer"]["foreach"]
    assert set(scores) == {*pipeline, "source_only"}
    assert scores["scratch"]["gain_over_scratch"] == 0.0
    assert scores["source_only"]["gain_over_source_only"] == 0.0
    for name, s in scores.items():
        assert 0 <= s["accuracy"] <= 1 and 0 <= s["macro_f1"] <= 1
        assert "per_class_accuracy" not in s  # kept out of the metrics DVC lists
        # the health check on the unlabelled target, in the metrics DVC lists: the flag is the
        # verdict of the recorded numbers, and a flagged model is marked and named in a warning
        assert isinstance(s["degenerate"], bool) and 0.1 <= s["top_share"] <= 1
        assert 0 <= s["marginal_entropy"] <= 1 and s["kl_to_source_prior"] >= 0
        assert s["degenerate"] == bool(problems(s["top_share"], s["marginal_entropy"], 10))
        row = next(line for line in out.splitlines() if line.split(" | ")[0].endswith(f" {name}"))
        assert row.startswith("| ⚠ ") == s["degenerate"] == ("⚠ **degenerate**" in row)
        assert (f"warning: {name} is degenerate on the " in err) == s["degenerate"]
        if name not in ("scratch", "source_only"):  # judged against the best fair baseline
            best = max(scores[b]["accuracy"] for b in ("scratch", "source_only"))
            assert s["negative_transfer"] == (s["accuracy"] < best)
    assert len(err.splitlines()) == sum(s["degenerate"] for s in scores.values())
    assert scores["finetune"]["selection"] == "target-val"
    assert scores["source_only"]["selection"] == "source-val"
    embedded = sorted(p.name for p in (transferred / "plots/embedding").iterdir())
    adapted = [n for n in pipeline if "unlabelled" in strategies.METHODS[n].reads]
    assert embedded == sorted(f"{n}_{d}.csv" for n in ["before", *adapted]
                              for d in ("source", "target"))
    points = (transferred / "plots/embedding/before_target.csv").read_text().splitlines()
    assert points[0] == "pc1,pc2" and len(points) > 10
    per_class = (transferred / "plots/per_class.csv").read_text().splitlines()
    assert per_class[0] == "strategy,class,accuracy"
    assert len(per_class) == 1 + 10 * len(scores)
    confusion = (transferred / "plots/confusion/finetune.csv").read_text().splitlines()
    n_test = len(load_arrays(transferred / "data/prepared/target_test.safetensors")["y_test"])
    assert confusion[0] == "actual,predicted" and len(confusion) == n_test + 1


def test_bad_params_stop_a_stage_with_one_line_and_exit_2(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(prepare={"shots": -1})))
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "data/prepared/keep.txt").write_text("earlier output")
    proc = subprocess.run([sys.executable, ROOT / "stages/prepare.py", "data/raw", "data/prepared",
                           "--summary", "metrics/scenario.json"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml: prepare.shots=-1 is invalid: Input should be greater than or equal to 0"]
    assert (tmp_path / "data/prepared/keep.txt").read_text() == "earlier output"


def test_zero_shots_skip_label_needing_strategies_and_run_adaptation(extracted, tmp_path):
    """prepare.shots: 0 in a copy of the worked project: no labelled target image, the whole
    pool unlabelled (no label written), scratch skipped with a note, mcc label-free."""
    import shutil

    work = tmp_path / "zero"
    shutil.copytree(extracted, work)
    # export's health gate is not what this test is about: at 4 training steps, 0 shots, mcc
    # predicts one class (test_export_refuses_a_collapsed_model tests the gate)
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(
        prepare={"shots": 0}, health={"allow_degenerate": True})))
    run_main(work, "prepare", "data/raw", "data/prepared", "--summary", "metrics/scenario.json")
    unlabelled = load_arrays(work / "data/prepared/target_unlabelled.safetensors")
    assert set(unlabelled) == {"x_unlabelled"}  # images only: no pool label leaves prepare
    summary = json.loads((work / "metrics/scenario.json").read_text())
    assert summary["target_train"] == 0 and summary["target_unlabelled"] == summary["target_pool"]
    commands = dict(stage_commands())
    transfers = {args[0]: args for stage, args in stage_commands() if stage == "transfer"}
    for name in ("scratch", "mcc"):
        run_main(work, "transfer", *transfers[name])
    assert json.loads((work / "metrics/transfer/scratch.json").read_text()) == {"skipped": True}
    mcc = json.loads((work / "metrics/transfer/mcc.json").read_text())
    label_free = f"source-val+{VALIDATORS[parse_params(tiny_params_dict()).selection.validator].label}"
    assert mcc["selection"] == label_free and "oracle_val_accuracy" in mcc
    models = ["models/transfer/scratch.safetensors", "models/transfer/mcc.safetensors"]
    tail = commands["evaluate"][commands["evaluate"].index("--source-model"):]
    run_main(work, "evaluate", *models, *tail)
    scores = json.loads((work / "metrics/evaluate.json").read_text())
    assert scores["scratch"] == {"skipped": True, "reason": "scratch needs target labels and "
                                 "prepare.shots=0"} and scores["mcc"]["selection"] == label_free
    assert "gain_over_scratch" not in scores["mcc"]
    assert scores["mcc"]["best_baseline"] == "source_only"
    # only label-needing strategies at 0 shots: one line, exit 2
    proc = subprocess.run([sys.executable, ROOT / "stages/evaluate.py", models[0], *tail],
                          cwd=work, capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "prepare.shots=0" in proc.stderr
    # export: the label-free method, chosen without a target label
    run_main(work, "export", *models, "--val-metrics", "metrics/transfer/scratch.json",
             "metrics/transfer/mcc.json", "--val", "data/prepared/target.safetensors",
             "--out", "models/export/model.onnx", "--summary", "metrics/export.json")
    exported = json.loads((work / "metrics/export.json").read_text())
    # ... and carrying its guard's verdict (on the tiny task, often: keep the source model)
    assert exported["strategy"] == "mcc" and exported["chosen_by"].startswith(label_free)
    assert exported["guard"] == mcc["guard"]
    assert (exported["chosen_by"] == label_free) == (mcc["guard"] == "accepted")


def test_zero_target_labels_run_every_stage_with_no_target_label_at_all(extracted, tmp_path):
    """prepare.shots: 0 and target_val_per_class: 0: not one labelled target image outside the
    test set (which only evaluate reads). Nothing reports a target-val accuracy or an oracle it
    cannot have; the label-free choice alone picks checkpoints and what export ships."""
    import shutil

    work = tmp_path / "no labels"
    shutil.copytree(extracted, work)
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(
        prepare={"shots": 0, "target_val_per_class": 0}, health={"allow_degenerate": True})))
    commands = dict(stage_commands())
    run_main(work, "prepare", "data/raw", "data/prepared", "--summary", "metrics/scenario.json")
    summary = json.loads((work / "metrics/scenario.json").read_text())
    assert summary["target_train"] == 0 and summary["target_val"] == 0
    for name in ("target", "target_pool"):
        arrays = load_arrays(work / f"data/prepared/{name}.safetensors")
        assert len(arrays["y_val"]) == 0 and arrays["x_val"].shape[1:] == arrays[
            "x_train" if name == "target" else "x_pool"].shape[1:]
    run_main(work, "extract", *commands["extract"])
    transfers = {args[0]: args for stage, args in stage_commands() if stage == "transfer"}
    ran = [n for n in transfers if n in ("scratch", "mcc", "adabn")]
    for name in ran:
        run_main(work, "transfer", *transfers[name])
    mcc = json.loads((work / "metrics/transfer/mcc.json").read_text())
    assert mcc["val_accuracy"] is None and "oracle_val_accuracy" not in mcc
    assert mcc["selection"].startswith("source-val+")
    models = [f"models/transfer/{n}.safetensors" for n in ran]
    tail = commands["evaluate"][commands["evaluate"].index("--source-model"):]
    run_main(work, "evaluate", *models, *tail)
    scores = json.loads((work / "metrics/evaluate.json").read_text())
    assert scores["mcc"]["selection"] == mcc["selection"] and "accuracy" in scores["mcc"]
    run_main(work, "export", *models, "--val-metrics",
             *[f"metrics/transfer/{n}.json" for n in ran], "--val",
             "data/prepared/target.safetensors", "--pool",
             "data/prepared/target_unlabelled.safetensors", "--out", "models/export/model.onnx",
             "--summary", "metrics/export.json")
    exported = json.loads((work / "metrics/export.json").read_text())
    assert exported["target_val_accuracy"] is None and "above_chance" not in exported
    assert (work / "models/export/model.onnx").is_file()


def test_zero_validation_labels_with_shots_is_refused_in_one_line():
    with pytest.raises(UserError, match="prepare.target_val_per_class=0.*prepare.shots"):
        parse_params(tiny_params_dict(prepare={"shots": 2, "target_val_per_class": 0}))


def test_export_refuses_a_collapsed_model_unless_allowed(transferred, tmp_path, capsys):
    """finetune made to answer one class for every image: export stops with one line naming
    health.allow_degenerate and leaves the earlier export as it was; with the override it ships
    the model, says so on stderr and records it in metrics/export.json and the ONNX file."""
    import shutil

    import onnx

    from tests.bad_input_helpers import assert_one_line_error, run_entry
    from transferlab.io import save_state_dict

    work = tmp_path / "collapsed"
    shutil.copytree(transferred, work)
    path = work / "models/transfer/finetune.safetensors"
    state, meta = load_state_dict(path)
    bias = [k for k in state if k.startswith("head") and k.endswith("bias")][-1]  # the logits'
    state[bias][3] += 1e4  # class '3' outscores every other class on every image
    save_state_dict(path, state, meta)
    argv = ["models/transfer/finetune.safetensors", "--val-metrics",
            "metrics/transfer/finetune.json", "--val", "data/prepared/target.safetensors",
            "--out", "models/export/model.onnx", "--summary", "metrics/export.json"]
    earlier = {work / "models/export/model.onnx": b"an earlier export",
               work / "metrics/export.json": b'{"strategy": "features"}\n'}
    for file, blob in earlier.items():
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(blob)

    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(
        health={"allow_degenerate": False})))  # the default, whatever the tiny params say
    code, _, err = run_entry(work, "export", *argv, capsys=capsys)
    assert_one_line_error(code, err, "health.allow_degenerate", fragments=(
        "refusing to ship finetune (chosen by target-val) on the 30 target val images: predicts "
        "one class ('3') for 100 % of the images", "nothing was exported"))
    assert {file: file.read_bytes() for file in earlier} == earlier

    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(
        health={"allow_degenerate": True})))
    code, out, err = run_entry(work, "export", *argv, capsys=capsys)
    assert code == 0 and "exported finetune" in out
    assert err.splitlines() == [line for line in err.splitlines() if line.startswith(
        "warning: exporting finetune (chosen by target-val) on the 30 target val images: "
        "predicts one class ('3')") and line.endswith("health.allow_degenerate is true")] != []
    summary = json.loads((work / "metrics/export.json").read_text())
    assert (summary["degenerate"], summary["top_share"], summary["above_chance"]) == (
        True, 1.0, False)
    meta = {p.key: p.value for p in onnx.load(str(work / "models/export/model.onnx")).metadata_props}
    assert meta["health"].startswith("warning: exporting finetune")
