"""Official test (and validation) splits: a folder's test/ and val/, torchvision's test split.

Through the download and prepare stages' mains, on image-folder fixtures whose classes are told
apart by their pixel value, so a test can check which images ended up where.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.bad_input_helpers import PREPARE, assert_one_line_error, run_entry
from tests.conftest import merge, tiny_params_dict
from transferlab.io import load_arrays

VALUES = {"ant": 40, "bee": 120, "cat": 200}  # each class's images: this grey level, plus noise


def write_split(root: Path, split: str, counts: dict[str, int], seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = VALUES[name] + rng.integers(-10, 11, (12, 12))
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{split}{i:03d}.png")


def run_prepare(tmp_path: Path, root: Path, capsys, **data) -> tuple[int, str, dict]:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "params.yaml").write_text(yaml.safe_dump(merge(tiny_params_dict(), {
        "data": {"target": {"name": "folder", "root": str(root)}, **data},
        "prepare": {"crop": "none", "bottleneck_size": 0, "scale": "none",
                    "target_val_per_class": 2}})))
    for argv in (("download", "data/raw"), PREPARE):
        code, out, err = run_entry(work, *argv, capsys=capsys)
        if code:
            return code, err, {}
    return 0, "", json.loads((work / "metrics/scenario.json").read_text())


def class_of(x: np.ndarray) -> list[str]:
    """The class name each aligned image came from, by its mean grey level (8-bit, 8x8)."""
    means = x.reshape(len(x), -1).mean(1)
    names = list(VALUES)
    return [names[int(np.argmin([abs(m - v) for v in VALUES.values()]))] for m in means]


def test_a_folder_with_train_test_and_val_uses_them_all(tmp_path, capsys):
    root = tmp_path / "photos"
    write_split(root, "train", {"ant": 20, "bee": 20, "cat": 20}, seed=0)
    write_split(root, "test", {"ant": 5, "bee": 6, "cat": 7}, seed=1)
    write_split(root, "val", {"ant": 3, "bee": 3, "cat": 3}, seed=2)
    code, err, summary = run_prepare(tmp_path, root, capsys, target_test="auto")
    assert code == 0, err
    assert summary["official_test_split"] == 1 and summary["official_val_split"] == 1
    assert (summary["target_test"], summary["target_val"]) == (18, 9)
    assert summary["target_pool"] == 60  # all of train/: nothing carved off for test or val
    prepared = tmp_path / "work/data/prepared"
    test = load_arrays(prepared / "target_test.safetensors")
    names = ["ant", "bee", "cat"]
    assert class_of(test["x_test"]) == [names[y] for y in test["y_test"]]  # labels follow images
    assert np.bincount(test["y_test"]).tolist() == [5, 6, 7]


def test_a_test_folder_with_fewer_classes_keeps_the_training_numbering(tmp_path, capsys):
    root = tmp_path / "photos"
    write_split(root, "train", {"ant": 20, "bee": 20, "cat": 20}, seed=0)
    write_split(root, "test", {"ant": 4, "bee": 4, "cat": 4}, seed=1)
    shutil.rmtree(root / "test" / "ant")  # test/ numbering would give bee 0, cat 1
    code, err, _ = run_prepare(tmp_path, root, capsys, target_test="official")
    # every training class needs test images, so this stops -- after naming by name, not index
    assert_one_line_error(code, err, "data.target", fragments=["no image of class 'ant'"])


def test_a_test_class_unknown_to_train_is_named(tmp_path, capsys):
    root = tmp_path / "photos"
    write_split(root, "train", {"ant": 20, "bee": 20}, seed=0)
    write_split(root, "test", {"ant": 4, "bee": 4, "cat": 4}, seed=1)
    code, err, _ = run_prepare(tmp_path, root, capsys, target_test="official")
    assert_one_line_error(code, err, "data.target", fragments=["class 'cat' of the test split"])


def test_split_mode_ignores_the_official_test_folder(tmp_path, capsys):
    root = tmp_path / "photos"
    write_split(root, "train", {"ant": 20, "bee": 20, "cat": 20}, seed=0)
    write_split(root, "test", {"ant": 5, "bee": 5, "cat": 5}, seed=1)
    code, err, summary = run_prepare(tmp_path, root, capsys, target_test="split")
    assert code == 0, err
    assert summary["official_test_split"] == 0 and summary["target_test"] == 30  # half of 60


def test_official_on_a_dataset_without_one_is_one_line(tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(merge(tiny_params_dict(), {
        "data": {"target_test": "official"}})))
    code, _, err = run_entry(work, "download", "data/raw", capsys=capsys)
    assert_one_line_error(code, err, "data.target_test", fragments=["'uci_digits' has no official test"])
    assert not (work / "data/raw").exists()


def test_an_image_in_both_train_and_test_never_reaches_the_pool(tmp_path, capsys):
    root = tmp_path / "photos"
    write_split(root, "train", {"ant": 20, "bee": 20, "cat": 20}, seed=0)
    write_split(root, "test", {"ant": 5, "bee": 5, "cat": 5}, seed=1)
    shutil.copy(root / "test/bee/test000.png", root / "train/bee/copy.png")
    code, err, summary = run_prepare(tmp_path, root, capsys, target_test="official")
    assert code == 0, err
    assert summary["target_duplicates_dropped"] == 1
    assert summary["target_pool"] == 60 - 3 * 2  # val carved from train: 2 per class
    prepared = tmp_path / "work/data/prepared"
    pool = load_arrays(prepared / "target_pool.safetensors")["x_pool"]
    test = load_arrays(prepared / "target_test.safetensors")["x_test"]
    assert not {x.tobytes() for x in pool} & {x.tobytes() for x in test}


@pytest.mark.parametrize("mode, official", [("auto", 1), ("split", 0)])
def test_torchvision_targets_use_their_test_split(mode, official, tmp_path, capsys, monkeypatch):
    from tests.fixtures_formats import random_images, trust_fixture_md5s, write_usps

    cache = tmp_path / "cache"
    cache.mkdir()
    for file, n, seed in (("usps.bz2", 200, 3), ("usps.t.bz2", 30, 4)):
        images, labels = random_images(n, (16, 16), seed=seed)
        write_usps(cache, images / 127.5 - 1, labels, file)
    trust_fixture_md5s(monkeypatch, "usps", cache)
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(merge(tiny_params_dict(), {
        "data": {"target": {"name": "usps"}, "cache_dir": str(cache), "target_test": mode}})))
    for argv in (("download", "data/raw"), PREPARE):
        code, _, err = run_entry(work, *argv, capsys=capsys)
        assert code == 0, err
    summary = json.loads((work / "metrics/scenario.json").read_text())
    assert summary["official_test_split"] == official
    assert summary["target_test"] == (30 if official else 100)
