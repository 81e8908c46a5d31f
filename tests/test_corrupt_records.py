"""A finished pipeline's records read back as untrusted: the metadata in its model files, its
metrics files, the files predict is given, and exactly the files dvc.yaml names.

Every case goes through a real entry point (`transferlab-predict`'s main under run_stage, the
stage scripts as `python stages/x.py` runs them) on one tiny finished pipeline (the `pipeline`
of test_predict_export), and checks the promise: exit code 2, one line "error: ..." naming the
file and the key, no traceback, earlier outputs byte-identical; for predict, each unreadable
image is one "skipped: ..." line and the rest are predicted. A transfer stage rerun there whose
training diverges names the knob that caused it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file, save_file

from tests.bad_input_helpers import (OUTPUT_DIRS, assert_one_line_error, assert_untouched,
                                     run_entry, snapshot)
from tests.conftest import ROOT, merge, stage_commands, tiny_params_dict
from tests.test_predict_export import pipeline  # noqa: F401  (the module-scoped fixture)
from transferlab.io import read_metadata


MODEL = "models/transfer/finetune.safetensors"


def predict(argv: list, capsys) -> tuple[int, str, str]:
    """`transferlab-predict argv...` through its console entry point, in this process."""
    from transferlab.predict import cli

    capsys.readouterr()
    with mock.patch.object(sys, "argv", ["transferlab-predict", *map(str, argv)]):
        try:
            cli()
            code = 0
        except SystemExit as exc:
            code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def model_with(pipeline: Path, dst: Path, **changes) -> Path:  # noqa: F811
    """The finetune model with metadata keys replaced (None: removed)."""
    meta = {**read_metadata(pipeline / MODEL), **changes}
    save_file(load_file(str(pipeline / MODEL)), str(dst),
              {k: v for k, v in meta.items() if v is not None})
    return dst


def good_image(pipeline: Path) -> Path:  # noqa: F811
    return sorted((pipeline / "digits/test/3").glob("*.png"))[0]


# ---- a model's preprocess metadata, read by predict ------------------------------------------

PRE = {"bottleneck_size": 8, "channels": 1, "crop": "bbox", "decode_size": 256, "image_size": 8,
       "scale": "max"}


METADATA_CASES = [  # (metadata changes, what the one line names)
    ({"preprocess": "{not json"}, ["'preprocess' is not JSON"]),
    ({"preprocess": "[1, 2]"}, ["'preprocess' is invalid"]),
    ({"preprocess": "null"}, ["'preprocess' is null"]),
    ({"preprocess": "7"}, ["'preprocess'=7 is invalid"]),
    ({"preprocess": json.dumps({**PRE, "image_size": "8"})}, ["'preprocess.image_size'='8'"]),
    ({"preprocess": json.dumps({**PRE, "image_size": 8.0})}, ["'preprocess.image_size'=8.0"]),
    ({"preprocess": json.dumps({k: v for k, v in PRE.items() if k != "crop"})},
     ["'preprocess.crop' is missing"]),
    ({"preprocess": json.dumps({k: v for k, v in PRE.items() if k != "decode_size"})},
     ["'preprocess.decode_size' is missing"]),
    ({"preprocess": json.dumps({**PRE, "zoom": 2})}, ["'preprocess.zoom' is not one"]),
    ({"preprocess": json.dumps({**PRE, "image_size": 0})}, ["'preprocess.image_size'=0"]),
    ({"preprocess": json.dumps({**PRE, "image_size": 10 ** 9})}, ["'preprocess.image_size'=1000000000"]),
    ({"preprocess": json.dumps({**PRE, "channels": 7})}, ["'preprocess.channels'=7"]),
    ({"preprocess": json.dumps({**PRE, "channels": 3})},
     ["'preprocess.channels'=3 disagrees with the model's in_channels=1"]),
    ({"preprocess": json.dumps({**PRE, "crop": "circle"})}, ["'preprocess.crop'='circle'"]),
    ({"preprocess": json.dumps({**PRE, "bottleneck_size": -1})}, ["'preprocess.bottleneck_size'=-1"]),
    ({"preprocess": json.dumps({**PRE, "decode_size": -5})}, ["'preprocess.decode_size'=-5"]),
    ({"preprocess": json.dumps({**PRE, "decode_size": 3})}, ["decode_size=3"]),
    ({"preprocess": json.dumps({**PRE, "decode_size": 10 ** 9})}, ["'preprocess.decode_size'"]),
    ({"preprocess": json.dumps({**PRE, "decode_size": 2.5})}, ["'preprocess.decode_size'=2.5"]),
    ({"preprocess": json.dumps({**PRE, "decode_size": True})}, ["'preprocess.decode_size'=True"]),
    ({"preprocess": json.dumps({**PRE, "image_size": float("nan")})}, ["'preprocess.image_size'=nan"]),
    ({"preprocess": '{"image_size": 1' + "0" * 5000 + "}"}, ["'preprocess' is not JSON"]),
    ({"preprocess": "[" * 100_000}, ["'preprocess' is 100000 bytes long"]),
    ({"preprocess": "[" * 5_000}, ["'preprocess' is nested too deeply"]),
    ({"preprocess": None}, ["records no preprocessing"]),
    ({"target_labels": "many"}, ["'target_labels'='many'"]),
    ({"selection": "best <b>ever</b>"}, ["'selection'"]),
]


@pytest.mark.parametrize("changes, named", METADATA_CASES,
                         ids=[f"meta-{i}" for i in range(len(METADATA_CASES))])
def test_predict_on_malformed_model_metadata_is_one_line(pipeline, tmp_path, capsys,  # noqa: F811
                                                         changes, named):
    model = model_with(pipeline, tmp_path / "model.safetensors", **changes)
    out = tmp_path / "predictions.csv"
    out.write_text("earlier\n")
    code, _, err = predict([model, good_image(pipeline), "--out", out], capsys)
    assert_one_line_error(code, err, str(model), fragments=named)
    assert "delete" not in err  # the file was given by the user: never advise deleting it
    assert out.read_text() == "earlier\n"


def test_predict_given_the_onnx_export_says_so(pipeline, tmp_path, capsys):  # noqa: F811
    onnx = pipeline / "models/export/model.onnx"
    renamed = tmp_path / "model.bin"  # found by content too, not only by its name
    renamed.write_bytes(onnx.read_bytes())
    for model in (onnx, renamed):
        code, _, err = predict([model, good_image(pipeline), "--out", tmp_path / "p.csv"], capsys)
        assert_one_line_error(code, err, str(model), fragments=[
            "is an ONNX file", "predict reads the .safetensors model", "onnxruntime"])
        assert "header too large" not in err and not (tmp_path / "p.csv").exists()


def test_predict_given_a_skipped_strategys_placeholder_says_why(pipeline, tmp_path,  # noqa: F811
                                                                 capsys):
    """At prepare.shots: 0 the transfer stage writes, for a strategy that needs labels, a model
    file without tensors whose metadata says why: predict repeats it."""
    placeholder = tmp_path / "finetune.safetensors"
    save_file({}, str(placeholder), {"skipped": "skipped: finetune needs target labels and "
                                                "prepare.shots=0", "classes": json.dumps(list("0123456789"))})
    code, _, err = predict([placeholder, good_image(pipeline), "--out", tmp_path / "p.csv"], capsys)
    line = assert_one_line_error(code, err, str(placeholder), fragments=[
        "holds no weights", "skipped this strategy", "finetune needs target labels and "
        "prepare.shots=0", "give the model of a strategy that ran"])
    assert "not written by this pipeline" not in line


# ---- every unreadable image on its own line, the rest predicted ------------------------------

def hostile_images(folder: Path, good: Path) -> dict[str, str]:
    """Unreadable files beside good ones: {name: what its line must say}."""
    from PIL import Image

    folder.mkdir()
    grey = Image.open(good)
    for i in range(3):
        shutil.copy(good, folder / f"good{i}.png")
    grey.convert("RGB").convert("LAB").save(folder / "lab.tif")
    Image.fromarray(np.asarray(grey, np.float32) / 255).save(folder / "float.tif")
    blob = good.read_bytes()
    (folder / "truncated.png").write_bytes(blob[:len(blob) // 2])
    (folder / "text.png").write_text("this is not an image")
    (folder / "empty.png").write_bytes(b"")
    os.mkfifo(folder / "fifo.png")
    os.symlink("nowhere.png", folder / "dangling.png")
    os.symlink("loop.png", folder / "loop.png")
    (folder / "folder.png").mkdir()  # a folder named like an image: not a file to predict
    return {"lab.tif": "CIELab", "float.tif": "floating-point", "truncated.png": "truncated",
            "text.png": "not a readable image", "empty.png": "not a readable image",
            "fifo.png": "not a regular file", "dangling.png": "symbolic link",
            "loop.png": "symbolic link"}


def test_each_unreadable_image_is_one_line_and_the_rest_are_predicted(pipeline, tmp_path,  # noqa: F811
                                                                       capsys):
    folder = tmp_path / "photos"
    bad = hostile_images(folder, good_image(pipeline))
    out = tmp_path / "predictions.csv"
    code, stdout, err = predict([pipeline / MODEL, folder, "--out", out], capsys)
    assert code == 2 and "Traceback" not in err, err  # some file was not predicted
    lines = err.splitlines()
    assert len(lines) == len(bad), err
    for name, why in bad.items():
        line = next((ln for ln in lines if f"{folder / name}" in ln), None)
        assert line is not None and line.startswith("skipped: ") and why in line, (name, err)
    rows = list(csv.reader(out.open()))
    assert sorted(Path(r[0]).name for r in rows[1:]) == ["good0.png", "good1.png", "good2.png"]
    assert "3 images predicted" in stdout and f"{len(bad)} skipped" in stdout


def test_no_readable_image_writes_no_csv(pipeline, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "photos"
    hostile_images(folder, good_image(pipeline))
    for good in folder.glob("good*.png"):
        good.unlink()
    out = tmp_path / "predictions.csv"
    out.write_text("earlier\n")
    code, _, err = predict([pipeline / MODEL, folder, "--out", out], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: none of the 8 files could be read")
    assert out.read_text() == "earlier\n"


def test_an_image_argument_with_an_over_long_name_is_one_line_not_a_traceback():
    """Path.is_dir / is_file raise ENAMETOOLONG on Python 3.11: predict asks os.path instead."""
    from transferlab.errors import UserError
    from transferlab.predict import collect_images, preprocess_file

    long = Path("y" * 300 + ".png")
    assert collect_images([long]) == [long]  # listed as given, then refused by name
    with pytest.raises(UserError, match="File name too long"):
        preprocess_file(long, None, 0)


# ---- the metrics and metadata export and evaluate read ---------------------------------------

@pytest.fixture
def work(pipeline, tmp_path):  # noqa: F811
    dst = tmp_path / "work"
    shutil.copytree(pipeline, dst, symlinks=True)
    return dst


def command(stage: str) -> list[str]:
    return dict(stage_commands())[stage]


EXPORT_METRICS = [  # (what finetune.json holds, what the line names)
    ('{"val_accuracy": NaN, "selection": "target-val"}', "key 'val_accuracy'=nan"),
    ('{"val_accuracy": Infinity, "selection": "target-val"}', "key 'val_accuracy'=inf"),
    ('{"val_accuracy": -Infinity, "selection": "target-val"}', "key 'val_accuracy'=-inf"),
    ('{"val_accuracy": "0.9", "selection": "target-val"}', "key 'val_accuracy'='0.9'"),
    ('{"val_accuracy": [0.9], "selection": "target-val"}', "key 'val_accuracy'"),
    ('{"val_accuracy": true, "selection": "target-val"}', "key 'val_accuracy'=True"),
    ('{"val_accuracy": 1.5, "selection": "target-val"}', "key 'val_accuracy'=1.5"),
    ('{"selection": "target-val"}', "selection target-val records val_accuracy"),
    ('{"val_accuracy": 0.5}', "records its selection"),
    ('{"val_accuracy": 0.5, "selection": "source-val+SND"}', "records snd"),
    # NaN is a validator that could not score (a pool of one image); infinity is damage
    ('{"val_accuracy": 0.5, "selection": "source-val+SND", "snd": Infinity}', "key 'snd'=inf"),
    ('{"val_accuracy": 0.5, "selection": 3}', "key 'selection'=3"),
    ('{"skipped": "yes"}', "key 'skipped'='yes'"),
    ('[0.5]', "Input should be a valid dictionary"),
    ('{"val_accuracy": 0.5', "is not JSON"),
    ("", "is not JSON"),
    (b"\xff\xfe{}", "is not JSON"),
]


@pytest.mark.parametrize("content, named", EXPORT_METRICS,
                         ids=[f"metrics-{i}" for i in range(len(EXPORT_METRICS))])
def test_export_on_a_malformed_metrics_file_is_one_line(work, capsys, content, named):
    path = work / "metrics/transfer/finetune.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, "export", *command("export"), capsys=capsys)
    assert_one_line_error(code, err, "metrics/transfer/finetune.json", fragments=[named])
    assert_untouched(work, before)


def test_export_checks_the_chosen_models_preprocess(work, capsys):
    """The ONNX file carries the preprocessing: a malformed record is not copied into it."""
    chosen = json.loads((work / "metrics/export.json").read_text())["strategy"]
    path = work / f"models/transfer/{chosen}.safetensors"
    meta = read_metadata(path)
    save_file(load_file(str(path)), str(path),
              {**meta, "preprocess": json.dumps({**PRE, "scale": 2})})
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, "export", *command("export"), capsys=capsys)
    assert_one_line_error(code, err, f"models/transfer/{chosen}.safetensors",
                          fragments=["'preprocess.scale'=2"])
    assert_untouched(work, before)


@pytest.mark.parametrize("changes, named", [
    ({"target_labels": "-3"}, "'target_labels'='-3'"),
    ({"target_labels": "1e3"}, "'target_labels'='1e3'"),
    ({"selection": ""}, "'selection'=''"),
    ({"skipped": ""}, "'skipped'=''"),
    ({"preprocess": "{}"}, "is missing"),
], ids=["labels-negative", "labels-float", "selection-empty", "skipped-empty", "preprocess-empty"])
def test_evaluate_on_malformed_model_metadata_is_one_line(work, capsys, changes, named):
    path = work / MODEL
    save_file(load_file(str(path)), str(path), {**read_metadata(path), **changes})
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, "evaluate", *command("evaluate"), capsys=capsys)
    assert_one_line_error(code, err, MODEL, fragments=[named])
    assert_untouched(work, before)


def test_evaluate_refuses_a_strategy_model_of_other_classes(work, capsys):
    """A stale model of other classes was silently left out of evaluate.json."""
    path = work / MODEL
    meta = read_metadata(path)
    save_file(load_file(str(path)), str(path),
              {**meta, "classes": json.dumps([f"c{i}" for i in range(10)])})
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, "evaluate", *command("evaluate"), capsys=capsys)
    assert_one_line_error(code, err, MODEL, fragments=["classifies 10 classes", "run `dvc repro`"])
    assert_untouched(work, before)


def test_a_metrics_file_with_an_over_long_name_or_a_loop_is_one_line(tmp_path):
    from transferlab.errors import UserError
    from transferlab.records import _read_bytes

    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    for path, why in ((tmp_path / ("m" * 300 + ".json"), "File name too long"),
                      (loop, "Too many levels of symbolic links"),
                      (tmp_path / "absent.json", "is missing")):
        with pytest.raises(UserError, match=why):
            _read_bytes(path, 1 << 20, "fix")


# ---- each stage reads exactly what dvc.yaml gives it -----------------------------------------

def test_evaluate_lists_exactly_the_models_the_transfer_stage_writes():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    written = [stages["transfer"]["do"]["outs"][0].replace("${key}", s)
               for s in stages["transfer"]["foreach"]]
    argv = dict(stage_commands())["evaluate"]
    assert [a for a in argv if a.startswith("models/transfer/")] == written
    assert [d for d in stages["evaluate"]["deps"] if d.startswith("models/transfer")] == written


def test_report_reads_exactly_the_curves_of_the_pipelines_stages():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    curves = ["plots/curves/pretrain.csv"] + [f"plots/curves/{k}.csv"
                                              for k in stages["transfer"]["foreach"]]
    argv = command("report")
    listed = argv[argv.index("--curves") + 1:argv.index("--confusion")]
    assert listed == curves
    assert [d for d in stages["report"]["deps"] if d.startswith("plots/curves")] == curves


def test_the_report_stage_skips_a_stray_curve_and_a_removed_strategy(work, capsys):
    """In a real run's folder: a stray CSV, and the curve of a strategy that dvc.yaml no longer
    runs (evaluate no longer scores it), lie in plots/curves/ and are not drawn."""
    shutil.copy(work / "plots/curves/finetune.csv", work / "plots/curves/stray_notes.csv")
    shutil.copy(work / "plots/curves/finetune.csv", work / "plots/curves/dann.csv")
    code, _, err = run_entry(work, "report", *command("report"), capsys=capsys)
    assert code == 0, err
    page = (work / "report.html").read_text()
    assert "finetune" in page and "stray_notes" not in page and "dann" not in page


# ---- training that diverges: the message names the knob that caused it -----------------------

def test_a_tiny_mcc_temperature_is_named_when_training_diverges(work, capsys):
    params = yaml.safe_load((work / "params.yaml").read_text())
    (work / "params.yaml").write_text(yaml.safe_dump(merge(params, {
        "transfer": {"mcc": {"temperature": 1e-6}}})))
    before = snapshot(work, *OUTPUT_DIRS)
    argv = next(a for s, a in stage_commands() if s == "transfer" and a[0] == "mcc")
    code, _, err = run_entry(work, "transfer", *argv, capsys=capsys)
    line = assert_one_line_error(code, err, "transfer.mcc.temperature",
                                 fragments=["training diverged", "raise it"])
    assert "transfer.mcc.lr" not in line and "weight_decay" not in line
    assert_untouched(work, before)


def test_divergence_advice_names_the_step_knobs_a_method_has():
    from transferlab.params import parse_params
    from transferlab.strategies import divergence_advice

    transfer = parse_params(tiny_params_dict()).transfer
    assert "transfer.finetune.lr" in divergence_advice("finetune", transfer.finetune)
    assert "transfer.joint.target_weight" in divergence_advice("joint", transfer.joint)
    mcc = divergence_advice("mcc", transfer.mcc)  # the default temperature: not the cause
    assert "transfer.mcc.loss_weight" in mcc and "temperature" not in mcc
