"""Bad input, round two: one section per class of fault, each closed at its root.

Every case goes through a real entry point (a stage's `run_stage(main)` as `python stages/x.py`
runs it, or the real `dvc` CLI for the slow ones) and checks the promise: exit code 2, one line
"error: ..." naming the key or path at fault and no traceback, earlier outputs byte-identical,
no temporary left; or, where the input is legal, that it runs and gives the right result.

1. params.yaml is read as DVC reads it (YAML 1.2, ruamel); any key YAML allows, any nesting or
   alias expansion gets one bounded line.
2. degenerate data: empty splits, classes too small, one class, two classes, diverged training.
3. source/target overlap is found by image content, not by name.
4. special files (FIFOs) and odd paths (a file where a folder belongs, newlines in names).
5. model files are validated: format, metadata, tensors.
6. evaluate reads exactly the models dvc.yaml lists.
7. outputs are not published once the launching `dvc` is gone; unwritable outputs are one line.
8. every count has a ceiling, with its reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml

from tests.conftest import ROOT, merge, stage_commands, tiny_params_dict
from tests.test_bad_input import (EXTRACT, OUTPUT_DIRS, PREPARE, PRETRAIN, assert_one_line_error,
                                  assert_untouched, checked, prepared_base, run_entry, set_params,
                                  snapshot, tiny_yaml_with_line, work, write_png)  # noqa: F401
from transferlab.io import load_arrays, save_state_dict
from transferlab.params import MAX_DEPTH, MAX_VALUES, load_params, parse_params

TINY_YAML = yaml.safe_dump(tiny_params_dict(), sort_keys=False)


def with_line(key: str, replacement: str) -> bytes:
    return tiny_yaml_with_line(key, replacement)[0]


def prepended(text: str) -> bytes:
    return (text + TINY_YAML).encode()


# ---- 1. params.yaml as DVC reads it ---------------------------------------------------------

@pytest.mark.parametrize("line, key, expected", [
    ("  shots: 010", "shots", 10),        # YAML 1.1 (PyYAML) read eight
    ("  shots: 0o3", "shots", 3),
    ("  shots: 0x2", "shots", 2),
    ("  lr: 1e-3", "lr", 0.001),          # YAML 1.1 read a string
    ("  lr: 3E-3", "lr", 0.003),
])
def test_numbers_mean_what_dvc_records(line, key, expected, tmp_path):
    from ruamel.yaml import YAML

    text = with_line(key, line)
    (tmp_path / "params.yaml").write_bytes(text)
    params = load_params(tmp_path / "params.yaml")
    section = "prepare" if key == "shots" else "pretrain"
    ours = getattr(getattr(params, section), key)
    dvc_reads = YAML(typ="safe").load(text)[section][key]  # what dvc.lock records
    assert ours == dvc_reads == expected


PARAMS_CASES = [
    # -- keys YAML allows that are no params keys: named, never an IndexError/TypeError ----------
    pytest.param(with_line("crop", "  crop-mode: bbox"), "prepare.crop-mode",
                 ["did you mean 'prepare.crop'?"], id="key-hyphen"),
    pytest.param(with_line("crop", "  crop mode: bbox"), "params.yaml", ["unknown key 'prepare.crop mode'"],
                 id="key-with-space"),
    pytest.param(prepended("1: 0\n"), "params.yaml", ["key 1 in the top level is not a name"],
                 id="key-int"),
    pytest.param(prepended("? [1, 2]\n: 0\n"), "params.yaml", ["key (1, 2)", "is not a name"],
                 id="key-sequence"),
    pytest.param(prepended("null: 0\n"), "params.yaml", ["key None"], id="key-null"),
    pytest.param(prepended("true: 0\n"), "params.yaml", ["key True"], id="key-bool"),
    pytest.param(prepended("2024-01-01: 0\n"), "params.yaml", ["key datetime.date(2024, 1, 1)"],
                 id="key-date"),
    pytest.param(with_line("crop", "  3.5: bbox"), "params.yaml", ["key 3.5 in prepare"],
                 id="key-float-nested"),
    pytest.param(with_line("crop", '  "cr\\nop": bbox'), "params.yaml", ["unknown key 'prepare.cr\\nop'"],
                 id="key-with-newline"),
    pytest.param(prepended("base: &b {shots: 3}\n"), "base", ["did you mean"], id="merge-anchor-extra-key"),
    pytest.param(TINY_YAML.replace("  scratch:\n", "  scratch:\n    <<: {typo: 1}\n", 1).encode(),
                 "transfer.scratch.typo", ["unknown key"], id="merge-key-brings-a-typo"),
    # -- values: bounded echo, one line -----------------------------------------------------------
    pytest.param(with_line("seed", "seed: " + "x" * 100_000), "seed", ["..."], id="value-huge-string"),
    pytest.param(with_line("seed", "seed: [" + ", ".join(["1"] * 5000) + "]"), "seed", ["..."],
                 id="value-long-list"),
    pytest.param(with_line("crop", "  crop: no"), "prepare.crop", ["'no'"], id="value-no-is-text"),
    pytest.param(with_line("seed", "seed: 2024-01-01"), "seed", ["datetime.date"], id="value-date"),
    pytest.param(with_line("seed", "seed: !!binary aGVsbG8="), "seed", ["valid integer"], id="value-binary"),
    pytest.param(with_line("seed", "seed: !!python/object:os.system x"), "params.yaml",
                 ["not valid YAML"], id="value-python-tag"),
    # -- nesting and alias expansion: bounded, no RecursionError -----------------------------------
    pytest.param(with_line("seed", "seed: " + "[" * 5000 + "]" * 5000), "params.yaml",
                 [f"nests deeper than {MAX_DEPTH}"], id="deep-brackets"),
    pytest.param(with_line("seed", "seed: " + "{a: " * 20 + "1" + "}" * 20), "params.yaml",
                 [f"nests deeper than {MAX_DEPTH}"], id="deep-mappings"),
    pytest.param(prepended("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))),
        "params.yaml", [f"more than {MAX_VALUES} values"], id="alias-bomb"),
]


@pytest.mark.parametrize("text, name, fragments", PARAMS_CASES)
def test_any_yaml_gets_one_bounded_line(text, name, fragments, checked, tmp_path):
    code, out, err = checked(text)
    line = assert_one_line_error(code, err, name, fragments=["error: ", *fragments])
    assert len(line) < 700 and out == ""
    assert (tmp_path / "data/params.ok").read_bytes().startswith(b"earlier")


def test_a_valid_merge_key_is_read_as_dvc_reads_it(tmp_path):
    """`<<: *anchor` (a YAML merge key) is legal: the merged mapping is what DVC and we see."""
    lines = TINY_YAML.splitlines()
    start = lines.index("  structure:")
    end = next(i for i in range(start + 1, len(lines)) if not lines[i].startswith("    "))
    lines[start:end] = ["  structure:", "    <<: *scratch", "    copied_blocks: 1",
                        "    freeze_copied: true"]
    text = "\n".join(lines).replace("  scratch:", "  scratch: &scratch", 1) + "\n"
    (tmp_path / "params.yaml").write_text(text)
    structure = load_params(tmp_path / "params.yaml").transfer.structure
    assert (structure.steps, structure.batch_size, structure.copied_blocks) == (4, 16, 1)


def test_a_params_path_that_is_a_folder_is_one_line(tmp_path):
    (tmp_path / "params.yaml").mkdir()
    with pytest.raises(Exception, match="is a folder, not a params file"):
        load_params(tmp_path / "params.yaml")


# ---- 8. every count has a ceiling, with its reason ------------------------------------------

@pytest.mark.parametrize("override, key", [
    ({"transfer": {"scratch": {"steps": 10 ** 30}}}, "transfer.scratch.steps"),
    ({"transfer": {"joint": {"steps": 10 ** 7}}}, "transfer.joint.steps"),
    ({"pretrain": {"epochs": 10 ** 9}}, "pretrain.epochs"),
    ({"pretrain": {"batch_size": 10 ** 9}}, "pretrain.batch_size"),
    ({"extract": {"batch_size": 2 ** 40}}, "extract.batch_size"),
    ({"prepare": {"shots": 10 ** 12}}, "prepare.shots"),
    ({"prepare": {"target_val_per_class": 10 ** 9}}, "prepare.target_val_per_class"),
    ({"transfer": {"finetune": {"frozen_blocks": 10 ** 6}}}, "transfer.finetune.frozen_blocks"),
    ({"transfer": {"features": {"C": 1e300}}}, "transfer.features.C"),
    ({"transfer": {"joint": {"target_weight": 1e9}}}, "transfer.joint.target_weight"),
    ({"transfer": {"finetune": {"l2sp_weight": 1e9}}}, "transfer.finetune.l2sp_weight"),
    ({"transfer": {"finetune": {"backbone_lr_mult": 1e6}}}, "transfer.finetune.backbone_lr_mult"),
    ({"pretrain": {"weight_decay": 1e6}}, "pretrain.weight_decay"),
    ({"study": {"seeds": list(range(101))}}, "study.seeds"),
    ({"study": {"layer_shots": 10 ** 9}}, "study.layer_shots"),
])
def test_every_count_has_a_ceiling_with_its_reason(override, key, checked):
    text = yaml.safe_dump(merge(tiny_params_dict(), override), sort_keys=False).encode()
    code, _, err = checked(text)
    line = assert_one_line_error(code, err, key)
    assert line.endswith(")") and " (" in line, f"no reason given: {line}"


def test_widths_have_a_ceiling(checked):
    text = yaml.safe_dump(tiny_params_dict(model={"widths": [4, 10 ** 6, 8]})).encode()
    code, _, err = checked(text)
    assert_one_line_error(code, err, "model.widths", fragments=["1..4096"])


# ---- 2. degenerate data: sized before training ----------------------------------------------

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


def image_folder(root: Path, classes: dict[str, int], seed: int = 0, size: int = 12) -> Path:
    """<root>/<class>/<i>.png: `classes` maps a name to its image count; distinct random images,
    ink on a blank 2-pixel border (the default framing's premise, which prepare checks)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
            pixels[:2], pixels[-2:], pixels[:, :2], pixels[:, -2:] = 0, 0, 0, 0
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


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


# ---- 3. overlap by content -------------------------------------------------------------------

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


def test_the_same_folder_spelt_twice_is_the_same_dataset(tmp_path, checked):
    root = image_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    spec = {"name": "folder", "root": str(root)}
    text = yaml.safe_dump(merge(tiny_params_dict(), {"data": {
        "source": spec, "target": dict(spec, root=str(root) + "/")}})).encode()
    code, _, err = checked(text)
    assert_one_line_error(code, err, "data.source", fragments=["same dataset"])


# ---- 4. special files and odd paths ---------------------------------------------------------

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


# ---- 5. model files are validated -----------------------------------------------------------

def source_state() -> tuple[dict, dict]:
    from transferlab.models import Architecture, Classifier, model_metadata

    architecture = Architecture("small_cnn", 1, (4, 8, 8))
    return Classifier(architecture.build(), 10).state_dict(), model_metadata(architecture, "0123456789")


def write_model(path: Path, fault: str) -> None:
    from safetensors.torch import save_file

    state, meta = source_state()
    if fault == "text":
        path.write_text("just some text\n")
        return
    if fault == "foreign-state-dict":
        state = {"fc.weight": torch.zeros(3, 3)}
    elif fault == "no-metadata":
        meta = None
    elif fault == "metadata-mismatch":
        meta = dict(meta, widths="[4, 16, 8]")
    elif fault == "metadata-garbage":
        meta = dict(meta, classes="{not json")
    elif fault == "foreign-arch":
        meta = dict(meta, arch="vgg11")
    elif fault == "nan-weights":
        state = dict(state, **{"head.weight": torch.full_like(state["head.weight"], float("nan"))})
    elif fault == "wrong-dtype":
        state = dict(state, **{"head.bias": state["head.bias"].double()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)


@pytest.mark.parametrize("fault", ["text", "foreign-state-dict", "no-metadata", "metadata-mismatch",
                                   "metadata-garbage", "foreign-arch", "nan-weights", "wrong-dtype"])
def test_a_bad_model_file_stops_extract_naming_it(fault, work, capsys):
    write_model(work / "models/source.safetensors", fault)
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *EXTRACT, capsys=capsys)
    expected = "is corrupt" if fault == "text" else "is not a model file of this pipeline"
    assert_one_line_error(code, err, "models/source.safetensors", fragments=[expected])
    assert_untouched(work, before)


@pytest.mark.parametrize("fault, fragment", [
    ("pickled-object", "holds Python objects"), ("text", "is not a torch weights file"),
    ("empty", "is not a torch weights file"), ("nested-non-tensor", "no state dict of named tensors"),
    ("nan", "NaN or infinity"),
])
def test_a_bad_weights_file_stops_pretrain_with_our_own_message(fault, fragment, work, tmp_path, capsys):
    path = tmp_path / "weights.pth"
    if fault == "pickled-object":
        torch.save({"conv1.weight": torch.zeros(1), "opt": psutil.Process}, path)
    elif fault == "text":
        path.write_text("hello\n")
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "nested-non-tensor":
        torch.save({"conv1.weight": [1, 2, 3]}, path)
    else:
        torch.save({"conv1.weight": torch.full((64, 3, 3, 3), float("inf"))}, path)
    set_params(work, {"model": {"arch": "resnet18", "small_input_stem": True, "weights": str(path)}})
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *PRETRAIN, capsys=capsys)
    assert_one_line_error(code, err, "model.weights", fragments=[fragment])
    assert "weights_only" not in err.replace("weights_only=True", "")  # never torch's advice
    assert_untouched(work, before)


# ---- 6. evaluate reads exactly what dvc.yaml lists ------------------------------------------

def test_evaluate_lists_exactly_the_models_the_transfer_stage_writes():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    written = [stages["transfer"]["do"]["outs"][0].replace("${key}", s)
               for s in stages["transfer"]["foreach"]]
    argv = dict(stage_commands())["evaluate"]
    assert [a for a in argv if a.startswith("models/transfer/")] == written
    assert [d for d in stages["evaluate"]["deps"] if d.startswith("models/transfer")] == written


# ---- 7. outputs and the process that launched the stage -------------------------------------

def test_an_output_that_cannot_be_written_is_one_line(work, capsys):
    (work / "metrics").rename(work / "metrics.old")
    (work / "metrics").write_text("a file where the metrics folder belongs")
    code, _, err = run_entry(work, *PREPARE, capsys=capsys)
    assert_one_line_error(code, err, "metrics/scenario.json", fragments=["cannot write"])


def test_a_permission_error_on_rename_is_one_line(work, capsys, monkeypatch):
    real = os.replace

    def refuse(src, dst):
        if str(dst).endswith("scenario.json"):
            raise PermissionError(13, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    before = snapshot(work, "metrics")
    code, _, err = run_entry(work, *PREPARE, capsys=capsys)
    assert_one_line_error(code, err, "metrics/scenario.json", fragments=["Permission denied"])
    assert snapshot(work, "metrics") == before


@pytest.mark.slow
def test_sigterm_to_dvc_alone_stops_its_stage_without_publishing(tmp_path):
    """`timeout`, CI cancellation and process managers signal the `dvc` process only. The stage
    it ran must not live on and write its outputs, unrecorded in dvc.lock."""
    from tests.dvc_helpers import copy_project, dvc, env, git

    repo = copy_project(tmp_path / "repo", tiny_params_dict())
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    dvc(repo, "repro", "prepare")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"]["epochs"] = 300  # far longer than the test waits
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "pretrain"], cwd=repo,
                            env={**env(repo), "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, stage = time.monotonic() + 120, None
        while stage is None:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
            stage = next((p for p in psutil.Process(proc.pid).children(recursive=True)
                          if "stages/pretrain.py" in " ".join(p.cmdline())), None)
            time.sleep(0.2)
        time.sleep(3)  # into training
        proc.send_signal(signal.SIGTERM)  # dvc alone, not its process group
        proc.wait(timeout=30)
        stage.wait(timeout=20)  # psutil: raises TimeoutExpired if the orphan lives on
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    assert not (repo / "models/source.safetensors").exists()
    assert not (repo / "metrics/pretrain.json").exists()
    assert list(repo.rglob(".*.tmp")) == []
    # and the next run completes normally
    params["pretrain"]["epochs"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    dvc(repo, "repro", "pretrain")
    assert (repo / "models/source.safetensors").is_file()


@pytest.mark.slow
def test_what_dvc_records_is_what_runs_or_is_refused(tmp_path):
    """`shots: 010` typed in params.yaml: dvc.lock records 10, and 10 shots are drawn (PyYAML's
    YAML 1.1 drew eight). `dvc exp run -S prepare.shots=010` writes the text '010' (Hydra's
    override grammar): refused in one line that says how to write it, never run as another
    number."""
    from tests.dvc_helpers import copy_project, dvc, git

    repo = copy_project(tmp_path / "repo", tiny_params_dict())
    text = (repo / "params.yaml").read_text().replace("  shots: 2\n", "  shots: 010\n", 1)
    (repo / "params.yaml").write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    dvc(repo, "repro", "prepare")
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["prepare"]
    recorded = lock["params"]["params.yaml"]["prepare.shots"]
    drawn = json.loads((repo / "metrics/scenario.json").read_text())["shots"]
    assert recorded == drawn == 10

    proc = dvc(repo, "exp", "run", "-S", "prepare.shots=010", "prepare", check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: params.yaml: prepare.shots='010' is invalid: Input should be a valid "
                      "integer (the value is quoted text: write the number unquoted, without "
                      "leading zeros)"], proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
