"""Data that cannot make a scenario: degenerate datasets, splits and classes, source/target
overlap, folders of images, the image reader, the framing premises of prepare.

Through the real entry points (`download`, `prepare`, `pretrain`, `extract` as
`python stages/x.py` runs them) on the tiny prepared pipeline or on small image folders, and on
`read_image`, the one reader `download` and `transferlab-predict` share. The promise: data that
cannot be used stops the stage with exit code 2 and one line "error: ..." naming the params key
and the class or path at fault, with a fix that works, no traceback, earlier outputs
byte-identical and no temporary left; data that can be used is read by a documented
conversion, and the same picture, however it was saved, is one image to the overlap check.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.bad_input_helpers import (EXTRACT, OUTPUT_DIRS, PREPARE, PRETRAIN,
                                     assert_one_line_error, assert_untouched, image_folder,
                                     prepared_base, run_entry, set_params, snapshot,
                                     work)  # noqa: F401
from tests.conftest import merge, stage_commands, tiny_params_dict
from transferlab.errors import UserError
from transferlab.images import read_image
from transferlab.io import load_arrays, read_metadata, save_state_dict


# ---- small image folders ---------------------------------------------------------------------

# Ink on a blank page, as the default alignment expects: a bright blob off-centre on black.
SIZE = 12


def digit(seed: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size), np.uint8)
    top, left = rng.integers(1, size // 3, 2)
    h, w = rng.integers(size // 3, size // 2, 2)
    image[top:top + h, left:left + w] = rng.integers(60, 256, (h, w))
    return image


def save(path: Path, image: np.ndarray | Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **kwargs)
    return path


def digit_folder(root: Path, classes: dict[str, int], seed: int = 0) -> Path:
    """<root>/<class>/<i>.png, grey digits, distinct."""
    for k, (name, count) in enumerate(classes.items()):
        for i in range(count):
            save(root / name / f"{i:03d}.png", digit(seed * 1000 + k * 100 + i))
    return root


def run_stages(work: Path, params: dict, capsys, stages=("download", "prepare")):
    """(exit code, stderr, summary or None) of download then prepare on `params` in `work`."""
    work.mkdir(exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(merge(tiny_params_dict(), params)))
    argvs = {"download": ("download", "data/raw"), "prepare": PREPARE}
    for stage in stages:
        code, _, err = run_entry(work, *argvs[stage], capsys=capsys)
        if code:
            return code, err, None
    if "prepare" not in stages:
        return 0, "", None
    return 0, "", json.loads((work / "metrics/scenario.json").read_text())


def folders(source: Path, target: Path, **prepare) -> dict:
    return {"data": {"source": {"name": "folder", "root": str(source)},
                     "target": {"name": "folder", "root": str(target)}},
            "prepare": {"target_val_per_class": 1, "shots": 1, "source_val_fraction": 0.25,
                        **prepare}}


def write_png(path: Path, value: int = 200) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (12, 12), value).save(path)


def folder_fault(work: Path, tmp_path: Path, fault: str) -> tuple[Path, Path]:
    """An image folder <root>/{a,b}/ with one fault; params pointing the target at it."""
    root = tmp_path / "images"
    write_png(root / "a" / "1.png")
    write_png(root / "a" / "2.png", 90)
    (root / "b").mkdir(parents=True)
    if fault == "empty":
        bad = root / "b"
    elif fault == "not-an-image":
        write_png(root / "b" / "1.png")
        bad = root / "b" / "2.png"
        bad.write_text("not an image, just text with a .png name\n")
    elif fault == "missing-root":
        bad = tmp_path / "no-such-folder"
        root = bad
    set_params(work, {"data": {"source": {"name": "mnist_5k"},
                               "target": {"name": "folder", "root": str(root)}}})
    return root, bad


# ---- a stage's input file missing, truncated or garbage: named by its path -------------------

def test_a_truncated_raw_file_stops_prepare_naming_it(work, capsys):
    raw = work / "data/raw/source.safetensors"
    blob = raw.read_bytes()
    raw.write_bytes(blob[:len(blob) // 2])
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *PREPARE, capsys=capsys)
    assert_one_line_error(code, err, "data/raw/source.safetensors", fragments=["is corrupt"])
    assert_untouched(work, before)


def test_a_missing_prepared_file_stops_pretrain_naming_it(work, capsys):
    (work / "data/prepared/source.safetensors").unlink()
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *PRETRAIN, capsys=capsys)
    assert_one_line_error(code, err, "data/prepared/source.safetensors", fragments=["is missing"])
    assert_untouched(work, before)


def test_a_garbage_model_file_stops_extract_naming_it(work, capsys):
    # the sentinel models/source.safetensors is text, not safetensors
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *EXTRACT, capsys=capsys)
    assert_one_line_error(code, err, "models/source.safetensors", fragments=["is corrupt"])
    assert_untouched(work, before)


# ---- more than the data holds: splits, shots and classes sized before training ---------------

def test_more_shots_than_the_target_pool_has_stops_prepare(work, capsys):
    set_params(work, {"prepare": {"shots": 500}})
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *PREPARE, capsys=capsys)
    assert_one_line_error(code, err, "prepare.shots", fragments=["prepare.shots=500 but class"])
    assert_untouched(work, before)


def test_more_validation_images_than_a_class_has_stops_prepare(work, capsys):
    set_params(work, {"prepare": {"target_val_per_class": 100}})
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *PREPARE, capsys=capsys)
    assert_one_line_error(code, err, "prepare.target_val_per_class")
    assert_untouched(work, before)


def test_a_class_id_the_dataset_lacks_stops_prepare(work, capsys):
    set_params(work, {"data": {"target": {"classes": [0, 11]}}})
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *PREPARE, capsys=capsys)
    assert_one_line_error(code, err, "data.target.classes", fragments=["has no class 11"])
    assert_untouched(work, before)


@pytest.mark.parametrize("override, key, fragments", [
    ({"prepare": {"source_val_fraction": 0.0001}}, "prepare.source_val_fraction",
     ["source validation split empty"]),
    ({"prepare": {"source_val_fraction": 0.9999}}, "data.source", ["none left for training"]),
    ({"prepare": {"target_test_fraction": 0.001}}, "prepare.target_test_fraction",
     ["without test images"]),
    ({"prepare": {"target_test_fraction": 0.99}}, "prepare.target_val_per_class",
     ["after its test share"]),
    ({"prepare": {"shots": 90}}, "prepare.shots", ["in the target train pool", "test", "validation"]),
    ({"prepare": {"target_val_per_class": 150, "target_test_fraction": 0.2}},
     "prepare.target_val_per_class", ["class '0' has only"]),
])
def test_splits_that_cannot_be_cut_stop_prepare_naming_key_and_class(override, key, fragments,
                                                                     work, capsys):
    set_params(work, override)
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *PREPARE, capsys=capsys)
    assert_one_line_error(code, err, key, fragments=fragments)
    assert_untouched(work, before)


def test_one_image_per_class_says_add_images_not_raise_the_fraction(tmp_path, capsys):
    """One image per target class at target_test_fraction 0.5 once said "raise it to 0.5"."""
    source = digit_folder(tmp_path / "src", {"a": 4, "b": 4})
    target = digit_folder(tmp_path / "tgt", {"a": 1, "b": 1}, seed=3)
    code, err, _ = run_stages(tmp_path / "work", folders(source, target, target_test_fraction=0.5),
                              capsys)
    line = assert_one_line_error(code, err, "prepare.target_val_per_class", "prepare.shots",
                                 fragments=["has only 1 image(s)", "the 3 it needs", "add images"])
    assert "raise" not in line


def test_a_suggested_fraction_actually_fixes_it(tmp_path, capsys):
    """The value a message suggests is checked by running with it: Python rounds half to even,
    so 0.5 / n (what the message once said) is not enough."""
    source = digit_folder(tmp_path / "src", {"a": 3, "b": 3})
    target = digit_folder(tmp_path / "tgt", {"a": 4, "b": 4}, seed=3)
    code, err, _ = run_stages(tmp_path / "work", folders(source, target, target_test_fraction=0.1,
                                                         source_val_fraction=0.1), capsys)
    line = assert_one_line_error(code, err, "prepare.source_val_fraction")
    source_fix = float(re.search(r"at least ([0-9.]+)", line).group(1))
    code, err, _ = run_stages(tmp_path / "work", folders(source, target, target_test_fraction=0.1,
                                                         source_val_fraction=source_fix),
                              capsys, stages=("prepare",))
    line = assert_one_line_error(code, err, "prepare.target_test_fraction")
    target_fix = float(re.search(r"at least ([0-9.]+)", line).group(1))
    code, err, _ = run_stages(tmp_path / "work", folders(
        source, target, target_test_fraction=target_fix, source_val_fraction=source_fix),
        capsys, stages=("prepare",))
    assert code == 0, err


def test_a_class_emptied_by_duplicates_says_of_what(tmp_path, capsys):
    """Every image of class b is a copy (in another mode) of an image of class a: "class 'b' has
    no images" alone sent users looking for a missing folder."""
    source = digit_folder(tmp_path / "src", {"a": 4, "b": 4})
    target = digit_folder(tmp_path / "tgt", {"a": 6, "c": 4}, seed=3)
    (target / "b").mkdir()
    for i in range(4):
        resave(target / "a" / f"{i:03d}.png", target / "b" / f"{i}", "rgb")
    code, err, _ = run_stages(tmp_path / "work", folders(source, target), capsys)
    assert_one_line_error(code, err, "data.target", fragments=[
        "class 'b' has no images", "4 of its images were dropped as copies of images of class 'a'"])


def test_a_class_emptied_by_copies_of_official_test_images_says_so(tmp_path, capsys):
    root = tmp_path / "tgt"
    digit_folder(root / "train", {"a": 4, "c": 4}, seed=2)
    digit_folder(root / "test", {"a": 2, "b": 2, "c": 2}, seed=7)
    for i in range(2):
        resave(root / "test" / "b" / f"{i:03d}.png", root / "train" / "b" / f"{i}", "rgba")
    source = digit_folder(tmp_path / "src", {"a": 4, "b": 4}, seed=5)
    code, err, _ = run_stages(tmp_path / "work", folders(source, root), capsys)
    assert_one_line_error(code, err, "data.target", fragments=[
        "class 'b' has no images", "the target's official test split"])


def test_a_one_class_folder_stops_download(work, tmp_path, capsys):
    root = image_folder(tmp_path / "one", {"only": 30})
    set_params(work, {"data": {"target": {"name": "folder", "root": str(root)}}})
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, "download", "data/raw", capsys=capsys)
    assert_one_line_error(code, err, str(root), fragments=["one class folder", "at least two"])
    assert_untouched(work, before)


def test_a_two_class_target_runs_every_strategy(tmp_path, capsys):
    """Two classes where the feature strategy once needed three (a binary logistic regression
    has one row of weights): every stage, then evaluate, on a two-class folder target."""
    root = image_folder(tmp_path / "two", {"cat": 20, "dog": 20})
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(merge(tiny_params_dict(), {
        "data": {"target": {"name": "folder", "root": str(root)}},
        "prepare": {"target_val_per_class": 2},
        # 4 val images cannot show a model clearly above chance (export's gate: test_health.py)
        "health": {"allow_degenerate": True}})))
    for script, argv in stage_commands():
        code, _, err = run_entry(work, script, *argv, capsys=capsys)
        assert code == 0, f"{script}: {err}"
    scores = json.loads((work / "metrics/evaluate.json").read_text())
    assert {"scratch", "finetune", "features", "structure", "joint"} <= set(scores)
    assert "source_only" not in scores  # digits source, cat/dog target: no shared classes


# ---- training that diverges writes no model --------------------------------------------------

def test_a_diverging_pretrain_writes_no_model(work, capsys):
    set_params(work, {"pretrain": {"lr": 10.0, "weight_decay": 1.0, "epochs": 3}})
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *PRETRAIN, capsys=capsys)
    assert_one_line_error(code, err, "pretrain.lr", fragments=["training diverged"])
    assert_untouched(work, before)


def test_non_finite_weights_are_never_written(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"earlier")
    with pytest.raises(Exception, match="NaN or infinity"):
        save_state_dict(path, {"w": torch.tensor([1.0, float("nan")])}, {})
    assert path.read_bytes() == b"earlier" and list(tmp_path.glob(".*.tmp")) == []


# ---- overlap by content: what the model sees -------------------------------------------------

def test_a_target_inside_the_source_folder_never_trains_the_source_on_target_images(tmp_path, capsys):
    """Source = a folder, target = a copy of some of its images: by name they differ, by
    content the target's test images would be source training images. They are dropped from
    the source, and counted."""
    import shutil

    source = image_folder(tmp_path / "src", {"a": 30, "b": 30, "c": 30})
    target = tmp_path / "tgt"
    for name in ("a", "b", "c"):
        (target / name).mkdir(parents=True)
        for i in range(0, 30, 2):  # half of each class
            shutil.copy(source / name / f"{i:03d}.png", target / name / f"{i:03d}.png")
    shutil.copy(source / "a" / "000.png", target / "b" / "dup.png")  # twice in the target
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(merge(tiny_params_dict(), {
        "data": {"source": {"name": "folder", "root": str(source)},
                 "target": {"name": "folder", "root": str(target)}},
        "prepare": {"target_val_per_class": 2, "crop": "none", "bottleneck_size": 0}})))
    for argv in (("download", "data/raw"), PREPARE):
        code, out, err = run_entry(work, *argv, capsys=capsys)
        assert code == 0, err
    summary = json.loads((work / "metrics/scenario.json").read_text())
    assert summary["source_images_also_in_target"] == 45
    assert summary["target_duplicates_dropped"] == 1
    prepared = work / "data/prepared"
    src = load_arrays(prepared / "source.safetensors")
    test = load_arrays(prepared / "target_test.safetensors")
    source_images = {x.tobytes() for x in np.concatenate([src["x_train"], src["x_val"]])}
    assert not any(x.tobytes() in source_images for x in test["x_test"])


def resave(src: Path, dst: Path, how: str) -> None:
    """The same picture in another mode or format."""
    grey = np.asarray(Image.open(src))
    if how == "rgb":
        save(dst.with_suffix(".png"), np.stack([grey] * 3, -1))
    elif how == "rgba":
        save(dst.with_suffix(".png"), np.stack([grey] * 3 + [np.full_like(grey, 128)], -1))
    elif how == "palette":
        save(dst.with_suffix(".png"), Image.fromarray(np.stack([grey] * 3, -1)).quantize(256))
    elif how == "grey16":
        save(dst.with_suffix(".png"), grey.astype(np.uint16) * 257)
    elif how == "la":
        save(dst.with_suffix(".png"), Image.fromarray(np.stack([grey, grey], -1), "LA"))
    elif how in ("bmp", "tif", "webp"):
        save(dst.with_suffix(f".{how}"), np.stack([grey] * 3, -1), **({"lossless": True}
                                                                    if how == "webp" else {}))
    else:
        raise ValueError(how)


COPIES = ["rgb", "rgba", "palette", "grey16", "la", "bmp", "tif", "webp"]


@pytest.mark.parametrize("how", COPIES)
def test_target_images_resaved_as_the_source_are_never_source_training_images(how, tmp_path, capsys):
    """The issue's case and its kin: the target's own images in another mode or format as the
    source (plus one genuinely colour image, which turns the whole source folder RGB)."""
    target = digit_folder(tmp_path / "tgt", {"a": 6, "b": 6})
    source = tmp_path / "src"
    for k, name in enumerate(("a", "b")):
        for path in sorted((target / name).iterdir()):
            resave(path, source / name / path.stem, how)
        for i in range(5):  # the source's own images, one of them in colour
            own = digit(500 + 10 * k + i)
            save(source / name / f"own{i}.png", np.stack([own, digit(600 + i), own], -1)
                 if i == 0 else own)
    code, err, summary = run_stages(tmp_path / "work", folders(source, target), capsys)
    assert code == 0, err
    assert summary["source_images_also_in_target"] == 12
    prepared = tmp_path / "work/data/prepared"
    src = load_arrays(prepared / "source.safetensors")
    seen = {x.tobytes() for x in np.concatenate([src["x_train"], src["x_val"]])}
    test = load_arrays(prepared / "target_test.safetensors")["x_test"]
    assert test.size and not any(x.tobytes() in seen for x in test)


@pytest.mark.parametrize("channels", [1, 3])
def test_copies_are_found_whatever_the_channels(channels, tmp_path, capsys):
    target = digit_folder(tmp_path / "tgt", {"a": 4, "b": 4})
    source = digit_folder(tmp_path / "src", {"a": 4, "b": 4}, seed=5)
    for name in ("a", "b"):
        resave(target / name / "000.png", source / name / "copy", "rgb")
    code, err, summary = run_stages(tmp_path / "work", folders(
        source, target, channels=channels, crop="none", scale="none"), capsys)
    assert code == 0, err
    assert summary["source_images_also_in_target"] == 2


def test_a_colour_target_saved_as_grey_is_the_same_picture_in_a_grey_scenario(tmp_path, capsys):
    """prepare.channels: 1 turns the colour target grey by luma: the target's colour images
    converted to grey by Pillow (as an image editor does) are the same picture. (Only where the
    folder decode does not resize them, here data.decode_size = their size: resizing in colour
    then taking luma differs by rounding from resizing the grey copy.)"""
    target = tmp_path / "tgt"
    for k, name in enumerate(("a", "b")):
        for i in range(5):
            save(target / name / f"{i}.png", np.stack([digit(10 * k + i), digit(40 + 10 * k + i),
                                                      digit(80 + 10 * k + i)], -1))
    source = digit_folder(tmp_path / "src", {"a": 4, "b": 4}, seed=5)
    for path in sorted(target.glob("*/*.png"))[::2]:
        save(source / path.parent.name / f"grey-{path.name}", Image.open(path).convert("L"))
    params = merge(folders(source, target, channels=1), {"data": {"decode_size": SIZE}})
    code, err, summary = run_stages(tmp_path / "work", params, capsys)
    assert code == 0, err
    assert summary["source_images_also_in_target"] == 5


def test_repeats_inside_the_source_are_counted_whatever_their_mode(tmp_path, capsys):
    """A source image twice (once as RGB, once as TIFF in another class): counted in the summary
    (source_repeats), not dropped: it can only flatter the source validation score."""
    target = digit_folder(tmp_path / "tgt", {"a": 4, "b": 4})
    source = digit_folder(tmp_path / "src", {"a": 6, "b": 6}, seed=5)
    resave(source / "a" / "000.png", source / "a" / "zz-copy", "rgb")
    resave(source / "a" / "001.png", source / "b" / "zz-copy", "tif")
    code, err, summary = run_stages(tmp_path / "work", folders(source, target), capsys)
    assert code == 0, err
    assert summary["source_repeats"] == 2 and summary["source_train"] + summary["source_val"] == 14


def test_a_test_image_resaved_in_the_train_split_never_joins_the_pool(tmp_path, capsys):
    """<root>/test/ grey, <root>/train/ holding a colour copy of a test image: train/ is then
    decoded in colour, and by its mode the copy differed from the test image."""
    root = tmp_path / "tgt"
    digit_folder(root / "train", {"a": 5, "b": 5})
    digit_folder(root / "test", {"a": 2, "b": 2}, seed=7)
    resave(root / "test" / "a" / "000.png", root / "train" / "a" / "copy", "rgb")
    resave(root / "test" / "b" / "001.png", root / "train" / "a" / "copy2", "palette")  # other class
    source = digit_folder(tmp_path / "src", {"a": 4, "b": 4}, seed=5)
    code, err, summary = run_stages(tmp_path / "work", folders(source, root), capsys)
    assert code == 0, err
    assert summary["official_test_split"] == 1 and summary["target_duplicates_dropped"] == 2
    prepared = tmp_path / "work/data/prepared"
    pool = load_arrays(prepared / "target_pool.safetensors")["x_pool"]
    test = load_arrays(prepared / "target_test.safetensors")["x_test"]
    assert not {x.tobytes() for x in pool} & {x.tobytes() for x in test}


# ---- image folders and folder params: empty, missing, loops, long names, special files -------

@pytest.mark.parametrize("fault, fragment", [
    ("empty", "is empty"), ("not-an-image", "is not a readable image"), ("missing-root", "does not exist"),
])
def test_a_bad_image_folder_stops_download_naming_the_path(fault, fragment, work, tmp_path, capsys):
    _, bad = folder_fault(work, tmp_path, fault)
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, "download", "data/raw", capsys=capsys)
    assert_one_line_error(code, err, str(bad), fragments=["folder dataset", fragment])
    assert_untouched(work, before)


def test_a_fifo_in_a_class_folder_is_skipped_not_waited_on(tmp_path, work, capsys):
    root = image_folder(tmp_path / "imgs", {"a": 25, "b": 25})
    os.mkfifo(root / "a" / "zz.png")  # reading it would block until a writer comes: forever
    set_params(work, {"data": {"target": {"name": "folder", "root": str(root)}}})
    code, out, err = run_entry(work, "download", "data/raw", capsys=capsys)
    assert code == 0, err
    assert "skipped 1 entries" in out and "zz.png" not in out


@pytest.mark.parametrize("fault", ["cache-is-a-file", "weights-is-a-folder", "root-is-a-file",
                                   "newline-in-a-file-name"])
def test_odd_paths_get_one_line_naming_the_real_cause(fault, tmp_path, work, capsys):
    stage, fragments = ("download", "data/raw"), []
    if fault == "cache-is-a-file":
        (tmp_path / "cache").write_text("a file")
        set_params(work, {"data": {"target": {"name": "usps"}, "cache_dir": str(tmp_path / "cache")}})
        name, fragments = str(tmp_path / "cache"), ["is a file, not a folder"]
    elif fault == "weights-is-a-folder":
        (tmp_path / "w.pth").mkdir()
        set_params(work, {"model": {"arch": "resnet18", "small_input_stem": True,
                                    "weights": str(tmp_path / "w.pth")}})
        stage, name, fragments = PRETRAIN, str(tmp_path / "w.pth"), ["is a folder"]
    elif fault == "root-is-a-file":
        (tmp_path / "root.png").write_text("x")
        set_params(work, {"data": {"target": {"name": "folder", "root": str(tmp_path / "root.png")}}})
        name, fragments = str(tmp_path / "root.png"), ["is a file, not a folder"]
    else:
        root = image_folder(tmp_path / "imgs", {"a": 3, "b": 3})
        (root / "b" / "bad\nname.png").write_text("not an image")
        set_params(work, {"data": {"target": {"name": "folder", "root": str(root)}}})
        name, fragments = "bad\\nname.png", ["is not a readable image"]
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *stage, capsys=capsys)
    assert_one_line_error(code, err, fragments=fragments)
    assert name in err
    assert_untouched(work, before)


@pytest.mark.parametrize("fault", ["root-symlink-loop", "root-300-character-name", "root-fifo",
                                   "root-device", "root-under-a-file", "root-loop-below",
                                   "cache-symlink-loop", "cache-300-character-name", "cache-fifo",
                                   "source-root-symlink-loop"])
def test_a_folder_param_that_is_no_folder_is_one_line_naming_it(fault, tmp_path, work, capsys):
    key = "data.cache_dir" if fault.startswith("cache") else (
        "data.source.root" if fault.startswith("source") else "data.target.root")
    place = tmp_path / "place"
    if "loop" in fault:
        os.symlink(place, place)  # a link to itself: ELOOP
        bad = place / "below" if fault.endswith("below") else place
    elif "300" in fault:
        bad = tmp_path / ("x" * 300)  # ext4 and most filesystems: 255 bytes a name
    elif "fifo" in fault:
        os.mkfifo(place)
        bad = place
    elif fault == "root-device":
        bad = Path("/dev/null")
    else:
        place.write_text("a file")
        bad = place / "images"
    if key == "data.cache_dir":
        params = {"data": {"target": {"name": "usps"}, "cache_dir": str(bad)}}
    else:
        params = {"data": {key.split(".")[1]: {"name": "folder", "root": str(bad)}}}
    (work / "params.yaml").write_text(yaml.safe_dump(merge(tiny_params_dict(), params)))
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, "download", "data/raw", capsys=capsys)
    assert_one_line_error(code, err, key, fragments=[f"point {key} at"])
    assert str(bad)[:200] in err
    assert_untouched(work, before)


@pytest.mark.parametrize("key", ["data.target.root", "data.source.root", "data.cache_dir"])
def test_a_folder_param_holding_a_nul_character_is_one_line(key, work, capsys):
    """YAML's "\\0" escape puts a NUL in a path: os.stat raises ValueError for it, not OSError."""
    if key == "data.cache_dir":
        params = {"data": {"target": {"name": "usps"}, "cache_dir": "cache\0here"}}
    else:
        params = {"data": {key.split(".")[1]: {"name": "folder", "root": "images\0here"}}}
    (work / "params.yaml").write_text(yaml.safe_dump(merge(tiny_params_dict(), params)))
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, "download", "data/raw", capsys=capsys)
    assert_one_line_error(code, err, key, fragments=["NUL character", f"point {key} at"])
    assert_untouched(work, before)


def test_a_root_that_cannot_be_listed_is_one_line(tmp_path, work, capsys, monkeypatch):
    """chmod 000 stops no root user (these tests run as root in CI): the listing is refused the
    way the kernel refuses it to anyone else."""
    root = digit_folder(tmp_path / "locked", {"a": 3, "b": 3})
    scandir = os.scandir

    def refuse(path="."):
        if Path(path) == root:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)
    monkeypatch.setattr(os, "scandir", refuse)
    (work / "params.yaml").write_text(yaml.safe_dump(merge(tiny_params_dict(), {
        "data": {"target": {"name": "folder", "root": str(root)}}})))
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, "download", "data/raw", capsys=capsys)
    assert_one_line_error(code, err, "data.target.root", str(root),
                          fragments=["cannot be listed", "Permission denied"])
    assert_untouched(work, before)


def test_a_symlinked_root_is_followed(tmp_path, capsys):
    """Links are legal: a root that is a link to a folder of class folders reads that folder."""
    real = digit_folder(tmp_path / "real", {"a": 4, "b": 4})
    os.symlink(real, tmp_path / "link")
    source = digit_folder(tmp_path / "src", {"a": 4, "b": 4}, seed=5)
    code, err, summary = run_stages(tmp_path / "work", folders(source, tmp_path / "link"), capsys)
    assert code == 0, err
    assert summary["classes"] == 2


# ---- hand-made files Pillow will not write ---------------------------------------------------

def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG from its raw scanlines (each prefixed by filter byte 0): the header says anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def rgb16_png(path: Path) -> np.ndarray:
    """A 16-bit RGB PNG (Pillow reads it as 8-bit RGB): returns the expected 8-bit pixels."""
    pixels = (np.arange(4 * 4 * 3, dtype=np.uint16).reshape(4, 4, 3) * 1300)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    path.write_bytes(png_bytes(4, 4, 16, 2, rows))
    return (pixels >> 8).astype(np.uint8)


# ---- the image reader: every Pillow mode, frames, sizes, bombs, truncation, formats ----------

def _tiff_with_a_cut_strip_table(path: Path) -> None:
    """A TIFF whose StripByteCounts tag points past the end of the file (Pillow warns and reads
    what it can: pixels that are not what the file meant)."""
    save(path, digit(1))
    blob = bytearray(path.read_bytes())
    offset = struct.unpack("<I", blob[4:8])[0]
    for i in range(struct.unpack("<H", blob[offset:offset + 2])[0]):
        entry = offset + 2 + 12 * i
        tag, kind = struct.unpack("<HH", blob[entry:entry + 4])
        if tag == 279:  # StripByteCounts: one LONG, made an array of 40 beyond the file's end
            blob[entry + 2:entry + 12] = struct.pack("<HII", 4, 40, len(blob) + 1000)
    path.write_bytes(bytes(blob))


def refused_file(kind: str, folder: Path) -> tuple[Path, str]:
    """A file the reader must refuse, and a fragment its message must hold."""
    if kind == "cielab-tiff":
        return save(folder / "lab.tif", Image.new("LAB", (8, 8), (50, 10, 10))), "CIELab"
    if kind == "float-tiff":
        return save(folder / "f.tif", np.full((8, 8), 0.5, np.float32)), "floating-point"
    if kind == "negative-int32-tiff":
        return save(folder / "i.tif", Image.new("I", (8, 8), -5)), "outside 16 bits"
    if kind == "huge-int32-tiff":
        return save(folder / "i.tif", Image.new("I", (8, 8), 1 << 20)), "outside 16 bits"
    if kind == "multi-page-tiff":
        frames = [Image.fromarray(digit(i)) for i in range(3)]
        return save(folder / "m.tif", frames[0], save_all=True, append_images=frames[1:]), "3 frames"
    if kind == "animated-gif":
        frames = [Image.fromarray(digit(i)) for i in range(2)]
        return save(folder / "m.gif", frames[0], save_all=True, append_images=frames[1:]), "2 frames"
    if kind == "truncated-png":
        path = save(folder / "t.png", np.random.default_rng(0).integers(0, 256, (50, 50), np.uint8))
        path.write_bytes(path.read_bytes()[:200])
        return path, "is not a readable image"
    if kind == "truncated-jpeg":
        path = save(folder / "t.jpg", np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8))
        path.write_bytes(path.read_bytes()[:300])
        return path, "is not a readable image"
    if kind == "zero-width-png":
        path = folder / "z.png"
        path.write_bytes(png_bytes(0, 4, 8, 0, b""))
        return path, "is not a readable image"
    if kind == "bomb-declared-png":  # 100,000 x 100,000 declared, a few bytes of data
        path = folder / "bomb.png"
        path.write_bytes(png_bytes(100_000, 100_000, 8, 0, b"\x00" * 10))
        return path, "pixels"
    if kind == "bomb-just-over-the-limit":  # Pillow itself only warns here (stderr) and decodes
        path = folder / "bomb.png"
        path.write_bytes(png_bytes(10_000, 9_000, 1, 0, b"\x00" * 10))
        return path, "more than 89,478,485"
    if kind == "text-named-png":
        path = folder / "x.png"
        path.write_text("not an image\n")
        return path, "not a PNG, JPEG, BMP"
    if kind == "ico-named-png":  # a format Pillow opens but nobody means by .png
        path = folder / "x.png"
        save(path, Image.fromarray(digit(2)).resize((16, 16)), format="ICO")
        return path, "not a PNG, JPEG, BMP"
    if kind == "eps-named-jpg":  # Pillow would hand EPS to Ghostscript
        path = folder / "x.jpg"
        path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
        return path, "not a PNG, JPEG, BMP"
    if kind == "tiff-strip-table-past-the-end":
        path = folder / "s.tif"
        _tiff_with_a_cut_strip_table(path)
        return path, "is not a readable image"
    if kind == "empty-file":
        path = folder / "e.png"
        path.write_bytes(b"")
        return path, "is not a readable image"
    raise ValueError(kind)


REFUSED = ["cielab-tiff", "float-tiff", "negative-int32-tiff", "huge-int32-tiff", "multi-page-tiff",
           "animated-gif", "truncated-png", "truncated-jpeg", "zero-width-png", "bomb-declared-png",
           "bomb-just-over-the-limit", "text-named-png", "ico-named-png", "eps-named-jpg",
           "tiff-strip-table-past-the-end", "empty-file"]


@pytest.mark.parametrize("kind", REFUSED)
def test_a_file_the_reader_cannot_read_faithfully_is_one_line_naming_it(kind, tmp_path):
    """What transferlab-predict calls per file: a UserError (one line, the file named), never
    another exception, never a wrong array."""
    bad, fragment = refused_file(kind, tmp_path)
    for mode in ("L", "RGB"):
        with pytest.raises(UserError) as caught:
            read_image(bad, mode, 16)
        message = str(caught.value)
        assert message.startswith(str(bad)) and "\n" not in message and fragment in message, message


@pytest.mark.parametrize("kind", ["cielab-tiff", "float-tiff", "multi-page-tiff",
                                  "bomb-just-over-the-limit", "tiff-strip-table-past-the-end"])
def test_a_refused_file_in_a_folder_dataset_stops_download_naming_it(kind, tmp_path, capsys):
    source = digit_folder(tmp_path / "src", {"a": 3, "b": 3})
    target = digit_folder(tmp_path / "tgt", {"a": 3, "b": 3}, seed=1)
    bad, fragment = refused_file(kind, target / "b")
    work = tmp_path / "work"
    code, err, _ = run_stages(work, folders(source, target), capsys, stages=("download",))
    assert_one_line_error(code, err, str(bad), fragments=["folder dataset", fragment])
    assert not (work / "data/raw").exists()


def test_every_pillow_mode_is_read_by_its_documented_conversion(tmp_path):
    """Grey 8/16-bit, 1-bit, grey+alpha, palette with transparency, RGBA, CMYK, 16-bit RGB,
    a 1x1 image, PGM: each gives the array the module docstring of datasets promises."""
    grey = digit(3, 8)
    cases = {
        "L.png": (grey, grey),
        "I16.png": (Image.fromarray(grey.astype(np.uint16) * 257), grey),  # 8-bit saved as 16
        "I16.tif": (Image.fromarray(grey.astype(np.uint16) * 257), grey),
        "one-bit.png": (Image.fromarray(grey > 100), np.where(grey > 100, 255, 0)),
        "LA.png": (Image.fromarray(np.stack([grey, np.full_like(grey, 7)], -1), "LA"), grey),
        "RGBA.png": (Image.fromarray(np.stack([grey] * 3 + [np.zeros_like(grey)], -1)), grey),
        "L.pgm": (grey, grey),
        "L.bmp": (grey, grey),
        "1x1.png": (np.full((1, 1), 99, np.uint8), np.full((1, 1), 99)),
    }
    for name, (image, want) in cases.items():
        path = save(tmp_path / name, image)
        got = read_image(path, "L", None)
        assert got.dtype == np.uint8 and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        np.testing.assert_array_equal(read_image(path, "RGB", None), np.stack([want] * 3, -1),
                                      err_msg=name)
    palette = Image.new("P", (6, 6), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.info["transparency"] = 1  # the transparent entry keeps its colour: alpha dropped
    got = read_image(save(tmp_path / "P.png", palette), "RGB", None)
    assert got.shape == (6, 6, 3) and (got == (200, 10, 10)).all()
    cmyk = read_image(save(tmp_path / "cmyk.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0))),
                      "RGB", None)
    assert cmyk[..., 0].min() > 200 and cmyk[..., 1:].max() < 40  # red
    want16 = rgb16_png(tmp_path / "rgb16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb16.png", "RGB", None), want16)
    assert read_image(tmp_path / "1x1.png", "L", 16).shape == (16, 16)  # enlarged, not refused


def test_exif_rotation_is_applied(tmp_path):
    """A phone's portrait photo: pixels stored landscape, EXIF orientation 6 (rotate 90 deg)."""
    stored = np.zeros((10, 20), np.uint8)
    stored[:, :5] = 255  # the stored left band becomes the top band once rotated
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path / "phone.jpg", stored, exif=exif, quality=100)
    got = read_image(path, "L", None)
    assert got.shape == (20, 10) and got[:5].mean() > 200 and got[-5:].mean() < 50


def test_the_reader_reads_what_predict_gives_it_the_same_way(tmp_path):
    """read_image(path, mode, None) (predict on array datasets) and with a size (folder
    datasets, predict on folder-trained models) refuse the same files and read the same pixels."""
    path = save(tmp_path / "x.png", np.stack([digit(9)] * 3 + [np.full((SIZE, SIZE), 9, np.uint8)], -1))
    whole = read_image(path, "L", None)
    np.testing.assert_array_equal(whole, digit(9))
    assert read_image(path, "L", SIZE).shape == (SIZE, SIZE)
    np.testing.assert_array_equal(read_image(path, "L", SIZE), whole)  # same size: unchanged
    bad = save(tmp_path / "f.tif", np.zeros((4, 4), np.float32))
    for size in (None, 16):
        with pytest.raises(UserError, match="floating-point"):
            read_image(bad, "RGB", size)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_palette_png_with_transparency_is_read_with_its_colours(tmp_path, mode):
    """PNG-8 with alpha (a palette with a tRNS chunk), the commonest small PNG: Pillow warns on
    a direct conversion; it is read as its RGBA picture with the alpha dropped."""
    from PIL import Image

    from transferlab.images import decode_image

    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    alpha = bytes([0] * 3 + [255] * 13)
    Image.fromarray(rgb).quantize(16).save(tmp_path / "p8.png", transparency=alpha)
    with Image.open(tmp_path / "p8.png") as img:
        assert img.mode == "P" and "transparency" in img.info
        expected = np.asarray(img.convert("RGBA").convert(mode))
    assert np.array_equal(decode_image(tmp_path / "p8.png", mode), expected)


# ---- the framing premises of crop: bbox and scale: max, measured per domain ------------------

def textured(seed: int, size: int = SIZE) -> np.ndarray:
    """A digit on a photo-like background: nothing is 0, the content reaches every edge."""
    rng = np.random.default_rng(seed)
    background = rng.integers(60, 140, (size, size))
    return np.maximum(background, digit(seed, size)).astype(np.uint8)


def textured_folder(root: Path, classes: dict[str, int], seed: int = 0) -> Path:
    for k, (name, count) in enumerate(classes.items()):
        for i in range(count):
            save(root / name / f"{i:03d}.png", textured(seed * 1000 + k * 100 + i))
    return root


@pytest.mark.parametrize("case, params, names", [
    ("textured-target", {}, ["prepare.crop", "prepare.scale", "data.target"]),
    ("textured-target", {"scale": "none"}, ["prepare.crop", "data.target"]),
    ("textured-target", {"crop": "none"}, ["prepare.scale", "data.target"]),
    ("textured-source", {}, ["prepare.crop", "data.source"]),
    ("white-page-target", {"crop": "none"}, ["prepare.scale", "data.target"]),
    ("colour-noise-target", {"channels": 3}, ["prepare.crop", "data.target"]),
])
def test_a_domain_that_breaks_the_framing_premise_stops_prepare(case, params, names, tmp_path,
                                                                capsys):
    digits = digit_folder(tmp_path / "digits", {"a": 8, "b": 8})
    other = tmp_path / "other"
    if case.startswith("textured"):
        textured_folder(other, {"a": 8, "b": 8})
    elif case == "white-page-target":  # black ink on white paper: bbox of > 0 is the frame
        for name in ("a", "b"):
            for i in range(8):
                save(other / name / f"{i}.png", 255 - digit(300 + i + 10 * ord(name)))
    else:
        rng = np.random.default_rng(0)
        for name in ("a", "b"):
            for i in range(8):
                save(other / name / f"{i}.png", rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8))
    source, target = (other, digits) if case == "textured-source" else (digits, other)
    work = tmp_path / "work"
    code, err, _ = run_stages(work, folders(source, target), capsys, stages=("download",))
    assert code == 0, err
    explicit = {"crop": "bbox", "scale": "max", **params}  # auto would pick none: see below
    (work / "params.yaml").write_text(yaml.safe_dump(merge(tiny_params_dict(),
                                                           folders(source, target, **explicit))))
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *PREPARE, capsys=capsys)
    fixes = [f"set {key}: auto (or none)" if key.startswith("prepare") else key
             for key in names[:1]]
    line = assert_one_line_error(code, err, *names, fragments=fixes)
    assert "auto (or none)" in line.split(": set ")[-1]
    assert_untouched(work, before)


def test_framing_is_measured_and_recorded_and_the_fix_runs(tmp_path, capsys):
    """With the knobs the message names, the same data prepares; the statistics are in the
    summary (metrics/scenario.json)."""
    source = digit_folder(tmp_path / "digits", {"a": 8, "b": 8})
    target = textured_folder(tmp_path / "textured", {"a": 8, "b": 8})
    code, err, summary = run_stages(tmp_path / "work", folders(source, target, crop="none",
                                                               scale="none"), capsys)
    assert code == 0, err
    assert summary["source_full_frame_share"] == 0 and summary["source_background_level"] == 0
    assert summary["target_full_frame_share"] == 1 and summary["target_background_level"] > 0.25


@pytest.mark.parametrize("case", ["textured-target", "textured-source", "white-page-target"])
def test_auto_frames_both_domains_alike_where_the_ink_premise_fails(case, tmp_path, capsys):
    """prepare.crop/scale: auto (the default) measures both domains and drops the ink-based
    steps for both when one domain breaks their premise, instead of refusing."""
    digits = digit_folder(tmp_path / "digits", {"a": 8, "b": 8})
    other = tmp_path / "other"
    if case.startswith("textured"):
        textured_folder(other, {"a": 8, "b": 8})
    else:
        for name in ("a", "b"):
            for i in range(8):
                save(other / name / f"{i}.png", 255 - digit(300 + i + 10 * ord(name)))
    source, target = (other, digits) if case == "textured-source" else (digits, other)
    code, err, summary = run_stages(tmp_path / "work", folders(source, target, crop="auto",
                                                               scale="auto"), capsys)
    assert code == 0, err
    assert summary["framing_crop_bbox"] == 0 and summary["framing_scale_max"] == 0
    # the backdrop is textured for both domains' files: model.norm auto builds group norm
    assert summary["framing_backdrop_textured"] == 1
    for name in ("source", "target", "target_pool", "target_test"):
        metadata = read_metadata(tmp_path / "work/data/prepared" / f"{name}.safetensors")
        assert metadata["backdrop"] == "textured"


def test_ink_on_a_blank_page_in_both_domains_is_a_blank_backdrop(tmp_path, capsys):
    source = digit_folder(tmp_path / "digits", {"a": 8, "b": 8})
    target = digit_folder(tmp_path / "more digits", {"a": 8, "b": 8}, seed=7)
    code, err, summary = run_stages(tmp_path / "work", folders(source, target), capsys)
    assert code == 0, err
    assert summary["framing_backdrop_textured"] == 0
    metadata = read_metadata(tmp_path / "work/data/prepared/target.safetensors")
    assert metadata["backdrop"] == "blank"


@pytest.mark.parametrize("value", ["checkered", ""])
def test_a_prepared_file_with_a_foreign_backdrop_stops_the_stage_that_reads_it(value, tmp_path,
                                                                               capsys):
    """pretrain builds the model for the backdrop its prepared source records: a value prepare
    does not write is one line naming the file and the fix, and no model is written."""
    from transferlab.io import save_arrays

    source = digit_folder(tmp_path / "digits", {"a": 8, "b": 8})
    target = digit_folder(tmp_path / "more digits", {"a": 8, "b": 8}, seed=7)
    work = tmp_path / "work"
    code, err, _ = run_stages(work, folders(source, target), capsys)
    assert code == 0, err
    path = work / "data/prepared/source.safetensors"
    save_arrays(path, load_arrays(path), {**read_metadata(path), "backdrop": value})
    code, _, err = run_entry(work, "pretrain", "data/prepared/source.safetensors",
                             "models/source.safetensors", "--metrics", "metrics/pretrain.json",
                             "--curve", "plots/pretrain.csv", capsys=capsys)
    assert_one_line_error(code, err, "source.safetensors", "backdrop", "dvc repro -f prepare")
    assert not (work / "models/source.safetensors").exists()


def test_auto_keeps_the_ink_steps_for_ink_on_a_blank_page(tmp_path, capsys):
    source = digit_folder(tmp_path / "src", {"a": 8, "b": 8})
    target = digit_folder(tmp_path / "tgt", {"a": 8, "b": 8}, seed=3)
    code, err, summary = run_stages(tmp_path / "work", folders(source, target, crop="auto",
                                                               scale="auto"), capsys)
    assert code == 0, err
    assert summary["framing_crop_bbox"] == 1 and summary["framing_scale_max"] == 1


def test_the_default_pair_passes_the_framing_check_and_records_it(prepared_base):
    """MNIST-5k and the UCI digits: ink on a blank page (measured: 0 % and 0.2 % of the images
    reach all four edges, border level 0)."""
    summary = json.loads((prepared_base / "metrics/scenario.json").read_text())
    assert summary["source_full_frame_share"] == 0.0 and summary["source_background_level"] == 0.0
    assert summary["target_full_frame_share"] < 0.01 and summary["target_background_level"] == 0.0
