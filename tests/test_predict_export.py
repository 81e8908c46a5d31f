"""Applying the model: `transferlab-predict` on image files, and the ONNX `export` stage.

One tiny pipeline on a folder target with an official test/ split (UCI digits written as PNG
files), every stage run as dvc.yaml calls it; then predictions on the test files themselves,
which must see exactly the tensors the test set holds, and on the same images in other sizes,
modes and formats.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.bad_input_helpers import run_entry
from tests.conftest import merge, stage_commands, tiny_params_dict
from transferlab.errors import UserError
from transferlab.io import load_arrays, load_state_dict
from transferlab.models import load_classifier
from transferlab.predict import predict_files, preprocess_file, preprocessing
from transferlab.train import predict_logits


def write_digits(root: Path) -> None:
    """UCI digits as 8-bit PNGs: <root>/{train,test}/<digit>/<i>.png (every 4th image is test)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        if i % 3:  # a third of the digits keeps the fixture small
            continue
        split = "test" if i % 4 == 0 else "train"
        path = root / split / str(label) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).round().astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The whole pipeline, export included, in-process on tiny params: the work folder."""

    work = tmp_path_factory.mktemp("predict")
    write_digits(work / "digits")
    (work / "params.yaml").write_text(yaml.safe_dump(merge(tiny_params_dict(), {
        "data": {"target": {"name": "folder", "root": str(work / "digits")}}})))

    class Capture:  # run_entry's capsys, for a module-scoped fixture
        def readouterr(self):
            return "", ""

    for script, argv in stage_commands():
        code, _, _ = run_entry(work, script, *argv, capsys=Capture())
        assert code == 0, f"{script} failed"
    return work


def test_predict_sees_exactly_the_tensors_the_test_set_holds(pipeline):
    model_path = pipeline / "models/transfer/finetune.safetensors"
    prep, decode_size = preprocessing(load_state_dict(model_path)[1], model_path)
    files = sorted((pipeline / "digits/test").rglob("*.png"))
    test = load_arrays(pipeline / "data/prepared/target_test.safetensors")
    held = {x.tobytes() for x in test["x_test"]}
    assert len(files) == len(test["x_test"])
    assert all(preprocess_file(f, prep, decode_size).tobytes() in held for f in files)


def test_predictions_are_the_models_own_with_class_names(pipeline, tmp_path):
    model_path = pipeline / "models/transfer/finetune.safetensors"
    files = sorted((pipeline / "digits/test").rglob("*.png"))[:40]
    rows, problems, _ = predict_files(model_path, files, top_k=3)
    assert problems == [] and [r[0] for r in rows] == [str(f) for f in files]
    model, classes = load_classifier(model_path)
    prep, decode_size = preprocessing(load_state_dict(model_path)[1], model_path)
    x = torch.from_numpy(np.stack([preprocess_file(f, prep, decode_size) for f in files]))
    expected = predict_logits(model.eval(), x).argmax(1).tolist()
    assert [r[1] for r in rows] == [classes[i] for i in expected]
    for row in rows:
        probabilities = row[2::2]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001


def test_any_size_and_mode_is_predicted_and_a_bad_file_is_skipped(pipeline, tmp_path, capsys):
    from PIL import Image

    from transferlab.launcher import run_stage
    from transferlab.predict import main

    source = sorted((pipeline / "digits/test/3").glob("*.png"))[0]
    grey = Image.open(source)
    files = {
        "big.jpg": grey.resize((100, 100)).convert("RGB"),
        "alpha.png": grey.convert("RGBA"),
        "wide.bmp": grey.resize((30, 12)),
        "palette.gif": grey.convert("P"),
        "deep.png": Image.fromarray(np.asarray(grey, np.uint16) * 257),
    }
    for name, image in files.items():
        image.save(tmp_path / name)
    (tmp_path / "broken.png").write_text("not an image")
    out = tmp_path / "predictions.csv"
    with pytest.raises(SystemExit) as exit_:
        import sys
        from unittest import mock
        with mock.patch.object(sys, "argv", ["transferlab-predict",
                                             str(pipeline / "models/transfer/finetune.safetensors"),
                                             str(tmp_path), "--out", str(out), "--top-k", "2"]):
            run_stage(main)
    assert exit_.value.code == 2  # some file was skipped
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("skipped: ")] == [
        line for line in err.splitlines() if "broken.png" in line]
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "class_1", "probability_1", "class_2", "probability_2"]
    assert sorted(Path(r[0]).name for r in rows[1:]) == sorted(files)


@pytest.mark.parametrize("out", ["folder", "image", "model"])
def test_the_csv_never_overwrites_what_the_command_reads(pipeline, tmp_path, out, capsys):
    """--out naming the image folder, an image or the model stops with one line, before
    predicting, and leaves them as they were."""
    from transferlab.launcher import run_stage
    from transferlab.predict import main

    images = tmp_path / "my photos"
    images.mkdir()
    image = images / "three.png"
    image.write_bytes(sorted((pipeline / "digits/test/3").glob("*.png"))[0].read_bytes())
    model = tmp_path / "model.safetensors"
    model.write_bytes((pipeline / "models/transfer/finetune.safetensors").read_bytes())
    before = {p: p.read_bytes() for p in (image, model)}
    target = {"folder": images, "image": image, "model": model}[out]
    with pytest.raises(SystemExit) as exit_:
        import sys
        from unittest import mock
        with mock.patch.object(sys, "argv", ["transferlab-predict", str(model), str(images),
                                             "--out", str(target)]):
            run_stage(main)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: --out ") and "give" in err
    assert {p: p.read_bytes() for p in (image, model)} == before
    assert sorted(p.name for p in images.iterdir()) == ["three.png"]


@pytest.mark.parametrize("given", ["missing", "folder", "image", "data file"])
def test_a_wrong_model_argument_is_one_line_that_deletes_nothing(pipeline, tmp_path, given,
                                                                   capsys):
    """The loaders' advice for a stage ("delete it and run dvc repro") would tell a user to
    delete the photo or the data given by mistake as the model: predict names the argument."""
    from safetensors.numpy import save_file

    from transferlab.launcher import run_stage
    from transferlab.predict import main

    image = tmp_path / "three.png"
    image.write_bytes(sorted((pipeline / "digits/test/3").glob("*.png"))[0].read_bytes())
    data = tmp_path / "data.safetensors"
    save_file({"x": np.zeros((2, 3), np.uint8)}, str(data))
    (tmp_path / "folder").mkdir()
    model = {"missing": tmp_path / "none.safetensors", "folder": tmp_path / "folder",
             "image": image, "data file": data}[given]
    with pytest.raises(SystemExit) as exit_:
        import sys
        from unittest import mock
        with mock.patch.object(sys, "argv", ["transferlab-predict", str(model), str(image),
                                             "--out", str(tmp_path / "out.csv")]):
            run_stage(main)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: model {model} ")
    assert err.endswith("give a model file the pipeline wrote, e.g. "
                        "models/transfer/finetune.safetensors") and "delete" not in err
    assert image.exists() and data.exists() and not (tmp_path / "out.csv").exists()


def test_export_writes_the_validation_choice_and_onnx_matches_torch(pipeline):
    import onnx
    import onnxruntime

    summary = json.loads((pipeline / "metrics/export.json").read_text())
    val = {p.stem: json.loads(p.read_text())["val_accuracy"]
           for p in sorted((pipeline / "metrics/transfer").glob("*.json"))}
    assert val[summary["strategy"]] == max(val.values()) and summary["chosen_by"] == "target-val"
    assert summary["onnx_max_abs_logit_diff"] <= 1e-4
    # the health gate passed it (health.allow_degenerate is false in the tiny params)
    assert (summary["degenerate"], summary["above_chance"]) == (False, True)
    proto = onnx.load(str(pipeline / "models/export/model.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["health"] == "ok"
    assert json.loads(meta["classes"]) == [str(d) for d in range(10)]
    assert json.loads(meta["preprocess"])["image_size"] == 8
    model, _ = load_classifier(pipeline / f"models/transfer/{summary['strategy']}.safetensors")
    x = torch.rand(5, 1, 8, 8)
    session = onnxruntime.InferenceSession(str(pipeline / "models/export/model.onnx"))
    theirs = session.run(None, {"image": x.numpy()})[0]
    ours = model.eval()(x).detach().numpy()
    assert np.abs(ours - theirs).max() <= 1e-4


def test_export_never_reads_the_test_set():
    argv = dict(stage_commands())["export"]
    assert not any("target_test" in a for a in argv)


def test_with_zero_shots_no_target_label_chooses_what_is_exported():
    from transferlab.export import choose

    with_labels = {"finetune": {"selection": "target-val", "val_accuracy": 0.9},
                   "mcc": {"selection": "target-val", "val_accuracy": 0.95}}
    assert choose(with_labels, "snd") == ("mcc", "target-val")
    # 0 shots: every candidate label-free; target-val accuracy would pick dann, SND picks mcc
    def scores(snd, info_max):
        return {"snd": snd, "info_max": info_max}

    label_free = {"dann": {"selection": "source-val+SND", "val_accuracy": 0.97,
                           "validators": scores(1.2, 0.9)},
                  "mcc": {"selection": "source-val+SND", "val_accuracy": 0.93,
                          "validators": scores(1.9, 0.5)}}
    assert choose(label_free, "snd") == ("mcc", "source-val+SND")
    assert choose(label_free, "info_max") == ("dann", "source-val+IM")  # selection.validator
    # adabn selects nothing and trains on no label: compared by its scores too, never by val
    with_adabn = {**label_free, "adabn": {"selection": "none", "val_accuracy": 0.99,
                                          "validators": scores(1.5, 0.1)}}
    assert choose(with_adabn, "snd") == ("mcc", "source-val+SND")
    # with shots, features (selection none, no SND) makes it a target-val choice
    features = {"selection": "none", "val_accuracy": 0.5}
    assert choose({**with_adabn, "features": features}, "snd") == ("adabn", "target-val")
    # a validator that could not score (NaN: too few unlabelled images) ranks its method last
    unscored = {**label_free, "dann": {**label_free["dann"], "validators": scores(1.2, math.nan)}}
    assert choose(unscored, "info_max") == ("mcc", "source-val+IM")


def test_a_label_free_record_may_hold_a_validator_that_could_not_score(tmp_path):
    """A pool of one image leaves DEV, ClassAMI, MixVal... at NaN: the metrics file that records
    it reads back (export reads it); an infinite score is still refused in one line."""
    from transferlab.records import TransferMetrics, read_record

    record = {"selection": "source-val+IM", "val_accuracy": None, "snd": math.nan,
              "validators": {"info_max": 0.5, "cluster": math.nan},
              "source_validators": {"info_max": 0.4, "cluster": math.nan}}
    path = tmp_path / "mcc.json"
    path.write_text(json.dumps(record))
    assert math.isnan(read_record(path, TransferMetrics).validators["cluster"])
    path.write_text(json.dumps({**record, "validators": {"info_max": math.inf}}))
    with pytest.raises(UserError, match="validators.info_max.*finite, or NaN"):
        read_record(path, TransferMetrics)


def test_export_passes_over_a_degenerate_best_model(pipeline, tmp_path, capsys):
    """The best-ranked model made to answer one class (its head's bias): export ships the next
    one the health check passes, says so, and records why in chosen_by."""
    import shutil

    from transferlab.io import save_state_dict

    work = tmp_path / "work"
    shutil.copytree(pipeline, work, symlinks=True)
    val = {p.stem: json.loads(p.read_text())["val_accuracy"]
           for p in sorted((work / "metrics/transfer").glob("*.json"))
           if "val_accuracy" in json.loads(p.read_text())}
    best = max(val, key=val.get)
    path = work / f"models/transfer/{best}.safetensors"
    state, metadata = load_state_dict(path)
    state["head.bias"] = state["head.bias"].clone()
    state["head.bias"][3] = 1e4  # class 3 for every image
    save_state_dict(path, state, metadata)
    argv = dict(stage_commands())["export"]
    code, _, err = run_entry(work, "export", *argv, capsys=capsys)
    assert code == 0, err
    assert f"passing over {best}: predicts one class ('3')" in err
    summary = json.loads((work / "metrics/export.json").read_text())
    assert summary["strategy"] != best and summary["degenerate"] is False
    assert summary["chosen_by"] == f"target-val, {best} degenerate"


def run_predict(*argv) -> int:
    import sys
    from unittest import mock

    from transferlab.launcher import run_stage
    from transferlab.predict import main

    with mock.patch.object(sys, "argv", ["transferlab-predict", *map(str, argv)]):
        try:
            run_stage(main)
        except SystemExit as exc:
            return exc.code
    return 0


def inverted_digits(pipeline, folder: Path, count: int = 30) -> list[Path]:
    """A shifted target: test digits with their grey levels inverted, as PNG files."""
    from PIL import Image, ImageOps

    folder.mkdir(exist_ok=True)
    paths = []
    for i, source in enumerate(sorted((pipeline / "digits/test").rglob("*.png"))[:count]):
        paths.append(folder / f"{i:03d}.png")
        ImageOps.invert(Image.open(source).convert("L")).save(paths[-1])
    return paths


@pytest.mark.parametrize("how", ["bn_adapt", "tent"])
def test_adapt_changes_batchnorm_only_where_it_says(pipeline, tmp_path, how):
    from transferlab.predict import adapt

    model_path = pipeline / "models/transfer/finetune.safetensors"
    model, _ = load_classifier(model_path)
    prep, decode_size = preprocessing(load_state_dict(model_path)[1], model_path)
    x = torch.from_numpy(np.stack([preprocess_file(f, prep, decode_size)
                                   for f in inverted_digits(pipeline, tmp_path)]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    said = adapt(model.eval(), x, how, steps=5, lr=0.01)
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    statistics = {f"{n}.{b}" for n in norms for b in ("running_mean", "running_var")}
    affine = {f"{n}.{p}" for n in norms for p in ("weight", "bias")}
    counters = {f"{n}.num_batches_tracked" for n in norms}
    assert statistics <= moved, "every BatchNorm layer's statistics are the images' now"
    assert moved - counters == (statistics | affine if how == "tent" else statistics)
    assert f"{len(norms)} layers" in said and ("entropy steps" in said) == (how == "tent")
    assert not model.training


def test_predict_with_adapt_says_so_and_leaves_the_model_file(pipeline, tmp_path, capsys):
    model = pipeline / "models/transfer/finetune.safetensors"
    images = tmp_path / "inverted digits"
    inverted_digits(pipeline, images)
    before = model.read_bytes()
    outputs = {}
    for how in ("none", "bn_adapt", "tent"):
        out = tmp_path / f"{how}.csv"
        assert run_predict(model, images, "--out", out, "--adapt", how, "--adapt-steps", 3) == 0
        said = capsys.readouterr().out
        assert ("adapted to these images" in said) == (how != "none"), said
        outputs[how] = out.read_text()
    assert model.read_bytes() == before
    assert outputs["bn_adapt"] != outputs["none"] and outputs["tent"] != outputs["bn_adapt"]
    # deterministic: the same images give the same bytes
    assert run_predict(model, images, "--out", tmp_path / "again.csv", "--adapt", "tent",
                       "--adapt-steps", 3) == 0
    assert (tmp_path / "again.csv").read_text() == outputs["tent"]


@pytest.mark.parametrize("argv, fragment", [
    (["--adapt", "tent", "--adapt-steps", "0"], "--adapt-steps=0"),
    (["--adapt", "tent", "--adapt-lr", "nan"], "--adapt-lr=nan"),
    (["--adapt", "bn_adapt"], "give 2 or more images"),  # one image only
])
def test_adapt_refusals_are_one_line(pipeline, tmp_path, capsys, argv, fragment):
    image = inverted_digits(pipeline, tmp_path / "one", count=1)[0]
    out = tmp_path / "out.csv"
    code = run_predict(pipeline / "models/transfer/finetune.safetensors", image, "--out", out,
                       *argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and fragment in err, err
    assert not out.exists()


def test_adapt_refuses_a_model_without_batchnorm():
    from transferlab.errors import UserError
    from transferlab.models import Classifier, SmallCNN
    from transferlab.predict import adapt

    model = Classifier(SmallCNN(1, [4, 8], "group", "pool"), 3).eval()
    with pytest.raises(UserError, match="has none.*without --adapt"):
        adapt(model, torch.zeros(4, 1, 8, 8, dtype=torch.uint8), "tent", 3, 1e-3)


def test_adapt_with_too_few_readable_images_names_the_unreadable_first(pipeline, tmp_path,
                                                                       capsys):
    """One good image and one junk file: the skipped line names the junk file, then the one
    refusal says how many could not be read; nothing is written."""
    folder = tmp_path / "a folder"
    image = inverted_digits(pipeline, folder, count=1)[0]
    (folder / "notes.png").write_text("not an image")
    out = tmp_path / "out.csv"
    code = run_predict(pipeline / "models/transfer/finetune.safetensors", folder, "--out", out,
                       "--adapt", "tent")
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and image.exists() and not out.exists()
    assert len(lines) == 2 and lines[0].startswith("skipped: ") and "notes.png" in lines[0]
    assert "give 2 or more images" in lines[1] and "1 of the 2 files could not be read" in lines[1]
