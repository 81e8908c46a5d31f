"""params.yaml given nonsense: its YAML, its keys, its values and the rules across keys.

Every case runs a real entry point: `check_params` as `python stages/check_params.py` runs it
(in-process with sys.argv patched; a handful as real processes, one through the real `dvc` CLI),
or the stage that alone can check a value. The promise: exit code 2, exactly one line
"error: params.yaml: ..." naming the dotted key at fault (or the file), no traceback, the
earlier data/params.ok byte-identical and no temporary left; a legal file is read as DVC reads
it (YAML 1.2) and passes. Cases that once failed (inf/nan values, huge seeds, duplicate keys,
non-UTF-8 files, bool/float channels, union-typed class lists) are kept as regressions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest
import yaml

from tests.bad_input_helpers import (EARLIER, OUTPUT_DIRS, PRETRAIN, assert_nothing_written,
                                     assert_one_line_error, assert_untouched, check_params_process,
                                     image_folder, params_text, prepared_base, run_entry,
                                     set_params, snapshot, work)  # noqa: F401
from tests.conftest import merge, tiny_params_dict
from tests.test_stages import load_stage
from transferlab.params import MAX_DEPTH, MAX_VALUES, load_params


# ---- params edits ----------------------------------------------------------------------------

def without(dotted: str) -> Callable[[dict], dict]:
    """A params edit that deletes one dotted key (a leaf or a whole section)."""
    def edit(params: dict) -> dict:
        *parents, leaf = dotted.split(".")
        section = params
        for name in parents:
            section = section[name]
        del section[leaf]
        return params
    return edit


def renamed(dotted: str, new: str) -> Callable[[dict], dict]:
    """A params edit that misspells one key (its value kept), as a typo does."""
    def edit(params: dict) -> dict:
        *parents, leaf = dotted.split(".")
        section = params
        for name in parents:
            section = section[name]
        section[new] = section.pop(leaf)
        return params
    return edit


def tiny_yaml_with_line(key: str, replacement: str) -> tuple[bytes, int]:
    """The tiny params.yaml with the line of `key:` (first match) replaced; its 1-based number."""
    lines = yaml.safe_dump(tiny_params_dict(), sort_keys=False).splitlines()
    number = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:")) + 1
    lines[number - 1] = replacement
    return ("\n".join(lines) + "\n").encode(), number


TINY_YAML = yaml.safe_dump(tiny_params_dict(), sort_keys=False)


def with_line(key: str, replacement: str) -> bytes:
    return tiny_yaml_with_line(key, replacement)[0]


def prepended(text: str) -> bytes:
    return (text + TINY_YAML).encode()


@pytest.fixture
def checked(tmp_path, monkeypatch, capsys):
    """Run check_params on given params.yaml bytes in a tmp dir with an earlier data/params.ok."""
    monkeypatch.delenv("TRANSFERLAB_DEBUG", raising=False)

    def run(text: bytes):
        (tmp_path / "params.yaml").write_bytes(text)
        (tmp_path / "data").mkdir(exist_ok=True)
        (tmp_path / "data/params.ok").write_bytes(EARLIER)
        code, out, err = run_entry(tmp_path, "check_params", "params.yaml", "data/params.ok",
                                   capsys=capsys)
        return code, out, err
    return run


# ---- every bad value stops check_params with one line ----------------------------------------

CASES = [
    # -- unknown keys at every level: reported as unknown, with the nearest allowed key ----------
    pytest.param(renamed("seed", "seeds"), "seeds", ["did you mean 'seed'?"], id="unknown-top-seeds"),
    pytest.param(renamed("pretrain", "pretrian"), "pretrian", ["did you mean 'pretrain'?"],
                 id="unknown-section-pretrian"),
    pytest.param(renamed("data.source", "sorce"), "data.sorce", ["did you mean 'data.source'?"],
                 id="unknown-data-sorce"),
    pytest.param(renamed("data.source.classes", "clases"), "data.source.clases",
                 ["did you mean 'data.source.classes'?"], id="unknown-data.source-clases"),
    pytest.param(renamed("data.target.root", "roots"), "data.target.roots",
                 ["did you mean 'data.target.root'?"], id="unknown-data.target-roots"),
    pytest.param(renamed("data.cache_dir", "cachedir"), "data.cachedir",
                 ["did you mean 'data.cache_dir'?"], id="unknown-data-cachedir"),
    pytest.param(renamed("prepare.shots", "shot"), "prepare.shot", ["did you mean 'prepare.shots'?"],
                 id="unknown-prepare-shot"),
    pytest.param(renamed("model.widths", "width"), "model.width", ["did you mean 'model.widths'?"],
                 id="unknown-model-width"),
    pytest.param(renamed("pretrain.epochs", "epoch"), "pretrain.epoch",
                 ["did you mean 'pretrain.epochs'?"], id="unknown-pretrain-epoch"),
    pytest.param(renamed("extract.batch_size", "batchsize"), "extract.batchsize",
                 ["did you mean 'extract.batch_size'?"], id="unknown-extract-batchsize"),
    pytest.param(renamed("transfer.finetune", "fine_tune"), "transfer.fine_tune",
                 ["did you mean 'transfer.finetune'?"], id="unknown-transfer-fine_tune"),
    pytest.param(renamed("transfer.finetune.frozen_blocks", "frozen_block"),
                 "transfer.finetune.frozen_block", ["did you mean 'transfer.finetune.frozen_blocks'?"],
                 id="unknown-finetune-frozen_block"),
    pytest.param(renamed("transfer.structure.copied_blocks", "copy_blocks"),
                 "transfer.structure.copy_blocks", ["did you mean 'transfer.structure.copied_blocks'?"],
                 id="unknown-structure-copy_blocks"),
    pytest.param(renamed("transfer.joint.target_weight", "target_weigth"),
                 "transfer.joint.target_weigth", ["did you mean 'transfer.joint.target_weight'?"],
                 id="unknown-joint-target_weigth"),
    pytest.param(renamed("study.seeds", "seed"), "study.seed", ["did you mean 'study.seeds'?"],
                 id="unknown-study-seed"),
    pytest.param({"transfer": {"scratch": {"frozen_blocks": 1}}}, "transfer.scratch.frozen_blocks",
                 ["allowed here: "], id="unknown-scratch-extra-knob"),
    pytest.param(renamed("transfer.features.C", "c"), "transfer.features.c",
                 ["did you mean 'transfer.features.C'?"], id="unknown-features-c-lowercase"),
    # -- wrong types -------------------------------------------------------------------------------
    pytest.param({"prepare": {"shots": "5"}}, "prepare.shots", ["valid integer"], id="type-str-for-int"),
    pytest.param({"prepare": {"shots": 2.5}}, "prepare.shots", ["valid integer"], id="type-float-for-int"),
    pytest.param({"prepare": {"image_size": 16.0}}, "prepare.image_size", ["valid integer"],
                 id="type-integral-float-for-int"),
    pytest.param({"prepare": {"shots": True}}, "prepare.shots", ["valid integer"], id="type-bool-for-int"),
    pytest.param({"transfer": {"structure": {"freeze_copied": 1}}}, "transfer.structure.freeze_copied",
                 ["valid boolean"], id="type-int-for-bool"),
    pytest.param({"model": {"small_input_stem": "yes"}}, "model.small_input_stem", ["valid boolean"],
                 id="type-str-for-bool"),
    pytest.param({"model": {"weights": ["none"]}}, "model.weights", ["valid string"],
                 id="type-list-for-str"),
    pytest.param({"data": {"cache_dir": None}}, "data.cache_dir", ["valid string"],
                 id="type-null-for-str"),
    pytest.param(tiny_yaml_with_line("lr", "  lr: '1e-3'")[0], "pretrain.lr", ["valid number"],
                 id="type-quoted-1e-3-is-a-string"),
    pytest.param({"model": {"widths": "32,64"}}, "model.widths", ["valid list"], id="type-str-for-list"),
    pytest.param({"model": {"widths": [4, "8", 8]}}, "model.widths.1", ["valid integer"],
                 id="type-str-list-entry"),
    pytest.param({"prepare": None}, "prepare", ["valid dictionary"], id="type-null-section"),
    pytest.param({"transfer": {"finetune": [1, 2]}}, "transfer.finetune", ["valid dictionary"],
                 id="type-list-for-section"),
    pytest.param({"data": {"target": "usps"}}, "data.target", ["valid dictionary"],
                 id="type-str-for-dataset-section"),
    pytest.param({"data": {"target": {"classes": "some"}}}, "data.target.classes", [],
                 id="type-classes-str"),
    pytest.param({"data": {"target": {"classes": [0, 1.5]}}}, "data.target.classes", [],
                 id="type-classes-float-entry"),
    # -- out of range, every numeric knob family ---------------------------------------------------
    pytest.param({"seed": -1}, "seed", ["greater than or equal to 0"], id="range-seed"),
    pytest.param({"prepare": {"image_size": 7}}, "prepare.image_size", ["greater than or equal to 8"],
                 id="range-image_size-low"),
    pytest.param({"prepare": {"image_size": 513}}, "prepare.image_size", ["less than or equal to 512"],
                 id="range-image_size-high"),
    pytest.param({"prepare": {"bottleneck_size": 513}}, "prepare.bottleneck_size",
                 ["use auto, 0 (off) or a size of 1..512"], id="range-bottleneck_size"),
    # auto-or-int knobs: one message whatever the branch that failed (not "should be 'auto'")
    pytest.param({"prepare": {"bottleneck_size": "Auto"}}, "prepare.bottleneck_size",
                 ["use auto, 0 (off) or a size of 1..512"], id="auto-bottleneck_size-case"),
    pytest.param({"prepare": {"channels": "3"}}, "prepare.channels",
                 ["use auto, 1 or 3", "quoted text"], id="auto-channels-quoted"),
    pytest.param({"prepare": {"channels": True}}, "prepare.channels", ["use auto, 1 or 3"],
                 id="auto-channels-bool"),
    pytest.param({"transfer": {"adabn": {"batch_size": 1}}}, "transfer.adabn.batch_size",
                 ["greater than or equal to 2"], id="range-adabn-batch"),
    pytest.param({"prepare": {"source_val_fraction": 1.0}}, "prepare.source_val_fraction",
                 ["less than 1"], id="range-fraction-1"),
    pytest.param({"prepare": {"target_test_fraction": 0}}, "prepare.target_test_fraction",
                 ["greater than 0"], id="range-fraction-0"),
    pytest.param({"prepare": {"target_val_per_class": -1}}, "prepare.target_val_per_class",
                 ["greater than or equal to 0"], id="range-val_per_class"),
    pytest.param({"prepare": {"target_val_per_class": 0}}, "prepare.target_val_per_class=0",
                 ["prepare.shots: 0"], id="val_per_class-0-with-shots"),
    pytest.param({"prepare": {"shots": -1}}, "prepare.shots", ["greater than or equal to 0"],
                 id="range-shots"),
    pytest.param({"prepare": {"split_seed": -3}}, "prepare.split_seed", ["greater than or equal to 0"],
                 id="range-split_seed"),
    pytest.param({"pretrain": {"epochs": 0}}, "pretrain.epochs", ["greater than or equal to 1"],
                 id="range-epochs"),
    pytest.param({"transfer": {"scratch": {"steps": 0}}}, "transfer.scratch.steps",
                 ["greater than or equal to 1"], id="range-steps"),
    pytest.param({"pretrain": {"lr": 0}}, "pretrain.lr", ["greater than 0"], id="range-lr-zero"),
    pytest.param({"transfer": {"joint": {"lr": 11}}}, "transfer.joint.lr", ["less than or equal to 10"],
                 id="range-lr-high"),
    pytest.param({"pretrain": {"lr": math.nan}}, "pretrain.lr", [], id="range-lr-nan"),
    pytest.param({"transfer": {"finetune": {"weight_decay": -0.1}}}, "transfer.finetune.weight_decay",
                 ["greater than or equal to 0"], id="range-weight_decay"),
    pytest.param({"pretrain": {"shift_px": -1}}, "pretrain.shift_px", ["greater than or equal to 0"],
                 id="range-shift_px-low"),
    pytest.param({"transfer": {"structure": {"shift_px": 9}}}, "transfer.structure.shift_px",
                 ["less than or equal to 8"], id="range-shift_px-high"),
    pytest.param({"pretrain": {"batch_size": 0}}, "pretrain.batch_size", ["greater than or equal to 1"],
                 id="range-pretrain-batch_size"),
    pytest.param({"extract": {"batch_size": -5}}, "extract.batch_size", ["greater than or equal to 1"],
                 id="range-extract-batch_size"),
    pytest.param({"transfer": {"joint": {"batch_size": 0}}}, "transfer.joint.batch_size",
                 ["greater than or equal to 1"], id="range-transfer-batch_size"),
    pytest.param({"transfer": {"features": {"C": 0}}}, "transfer.features.C", ["greater than 0"],
                 id="range-C"),
    pytest.param({"transfer": {"joint": {"target_weight": 0}}}, "transfer.joint.target_weight",
                 ["greater than 0"], id="range-target_weight"),
    pytest.param({"transfer": {"finetune": {"backbone_lr_mult": -1}}}, "transfer.finetune.backbone_lr_mult",
                 ["greater than or equal to 0"], id="range-backbone_lr_mult"),
    pytest.param({"transfer": {"finetune": {"l2sp_weight": -0.01}}}, "transfer.finetune.l2sp_weight",
                 ["greater than or equal to 0"], id="range-l2sp_weight"),
    pytest.param({"transfer": {"finetune": {"frozen_blocks": -1}}}, "transfer.finetune.frozen_blocks",
                 ["greater than or equal to 0"], id="range-frozen_blocks-negative"),
    pytest.param({"model": {"widths": []}}, "model.widths", ["at least 1 item"], id="range-widths-empty"),
    pytest.param({"model": {"widths": [4] * 7}}, "model.widths", ["at most 6 items"],
                 id="range-widths-too-many"),
    pytest.param({"model": {"widths": [0, 8, 8]}}, "model.widths", ["must all be in 1..4096"],
                 id="range-widths-entry-zero"),
    pytest.param({"study": {"layer_shots": 0}}, "study.layer_shots", ["greater than or equal to 1"],
                 id="range-study-layer_shots"),
    pytest.param({"study": {"shots": [-1, 1]}}, "study.shots", ["distinct integers in [0, "],
                 id="range-study-shots-negative"),
    pytest.param({"pretrain": {"weight_decay": math.inf}}, "pretrain.weight_decay", [],
                 id="range-weight_decay-inf"),
    pytest.param({"transfer": {"finetune": {"backbone_lr_mult": math.inf}}},
                 "transfer.finetune.backbone_lr_mult", [], id="range-backbone_lr_mult-inf"),
    pytest.param({"transfer": {"features": {"C": math.inf}}}, "transfer.features.C", [],
                 id="range-C-inf"),
    pytest.param({"transfer": {"joint": {"target_weight": math.inf}}}, "transfer.joint.target_weight",
                 [], id="range-target_weight-inf"),
    pytest.param({"pretrain": {"seed": 2 ** 64}}, "pretrain.seed", [], id="range-pretrain.seed-2**64"),
    pytest.param({"seed": 2 ** 64}, "seed", [], id="range-seed-2**64"),
    # -- bad enum values ---------------------------------------------------------------------------
    pytest.param({"prepare": {"crop": "box"}}, "prepare.crop", ["'bbox' or 'none'"], id="enum-crop"),
    pytest.param({"prepare": {"scale": "min"}}, "prepare.scale", ["'max' or 'none'"], id="enum-scale"),
    pytest.param({"prepare": {"scale": False}}, "prepare.scale", ["'max' or 'none'"],
                 id="enum-scale-yaml11-no-is-false"),
    pytest.param({"prepare": {"channels": 2}}, "prepare.channels", ["1 or 3"], id="enum-channels"),
    pytest.param({"prepare": {"channels": True}}, "prepare.channels", [], id="enum-channels-true"),
    pytest.param({"prepare": {"channels": 3.0}}, "prepare.channels", [], id="enum-channels-float"),
    pytest.param({"data": {"source": {"name": "mnist5k"}}}, "data.source.name", ["'mnist_5k'"],
                 id="enum-source-name"),
    pytest.param({"data": {"target": {"name": "MNIST"}}}, "data.target.name", ["'folder'"],
                 id="enum-target-name"),
    pytest.param({"model": {"arch": "vgg16"}}, "model.arch", ["'small_cnn'", "'vit_b_16'"],
                 id="enum-arch"),
    # -- missing keys and sections -----------------------------------------------------------------
    pytest.param(without("transfer.features.C"), "transfer.features.C", ["is missing"], id="missing-C"),
    pytest.param(without("prepare.crop"), "prepare.crop", ["is missing"], id="missing-crop"),
    pytest.param(without("seed"), "seed", ["is missing"], id="missing-seed"),
    pytest.param(without("study"), "study", ["is missing"], id="missing-section-study"),
    pytest.param(without("data.target"), "data.target", ["is missing"], id="missing-section-data.target"),
    pytest.param(without("transfer.joint"), "transfer.joint", ["is missing"],
                 id="missing-section-transfer.joint"),
    # -- cross-field checks ------------------------------------------------------------------------
    pytest.param({"transfer": {"finetune": {"frozen_blocks": 4}}}, "transfer.finetune.frozen_blocks",
                 ["the encoder has 3 blocks; use 0..3"], id="cross-frozen_blocks-above-blocks"),
    pytest.param({"transfer": {"structure": {"copied_blocks": 4}}}, "transfer.structure.copied_blocks",
                 ["the encoder has 3 blocks"], id="cross-copied_blocks-above-blocks"),
    pytest.param({"model": {"arch": "resnet18", "small_input_stem": True},
                  "transfer": {"structure": {"copied_blocks": 6}}}, "transfer.structure.copied_blocks",
                 ["the encoder has 5 blocks"], id="cross-copied_blocks-above-resnet18-blocks"),
    pytest.param({"model": {"widths": [4, 4, 4, 4, 4]}}, "prepare.image_size", ["use >= 16"],
                 id="cross-image-too-small-for-small_cnn"),
    pytest.param({"model": {"arch": "resnet18"}, "prepare": {"image_size": 16}}, "prepare.image_size",
                 ["use >= 32"], id="cross-image-too-small-for-resnet18"),
    pytest.param({"model": {"weights": "imagenet"}}, "model.weights", ["needs a model.arch with published weights"],
                 id="cross-weights-with-small_cnn"),
    pytest.param({"model": {"weights": "/tmp/backbone.pth"}}, "model.weights", ["use none"],
                 id="cross-weights-path-with-small_cnn"),
    pytest.param({"model": {"arch": "resnet18", "small_input_stem": True, "weights": "imagenet"},
                  "prepare": {"channels": 1}},
                 "prepare.channels", ["set prepare.channels=3"], id="cross-imagenet-with-channels-1"),
    pytest.param({"data": {"target": {"name": "folder"}}}, "data.target.root", ["must be set"],
                 id="cross-folder-without-root"),
    pytest.param({"data": {"source": {"root": "/tmp/images"}}}, "data.source.root",
                 ["name=mnist_5k"], id="cross-root-without-folder"),
    pytest.param({"data": {"target": {"name": "mnist_5k"}}}, "data.target", ["same dataset"],
                 id="cross-same-dataset-all-classes"),
    pytest.param({"data": {"source": {"classes": [0, 1, 2]}, "target": {"name": "mnist_5k",
                                                                        "classes": [2, 3]}}},
                 "data.target", ["same dataset", "disjoint"], id="cross-same-dataset-overlapping"),
    pytest.param({"data": {"source": {"classes": [0, 1]}, "target": {"name": "mnist_5k"}}},
                 "data.source", ["same dataset"], id="cross-same-dataset-one-all"),
    pytest.param({"data": {"target": {"classes": [3]}}}, "data.target.classes", ["at least two"],
                 id="cross-classes-single"),
    pytest.param({"data": {"target": {"classes": [3, 3]}}}, "data.target.classes", ["distinct"],
                 id="cross-classes-duplicate"),
    pytest.param({"data": {"source": {"classes": [-1, 2]}}}, "data.source.classes", [">= 0"],
                 id="cross-classes-negative"),
    pytest.param({"study": {"shots": [1, 2, 2]}}, "study.shots", ["distinct"], id="cross-study-shots-dup"),
    pytest.param({"study": {"seeds": []}}, "study.seeds", ["at least 1 item"], id="cross-study-seeds-empty"),
    pytest.param({"study": {"seeds": [0, -1]}}, "study.seeds", ["in [0, "], id="cross-study-seeds-negative"),
    # -- the file itself ---------------------------------------------------------------------------
    pytest.param(b"- seed\n- data\n", "params.yaml", ["must be a mapping"], id="file-is-a-list"),
    pytest.param(b"just a string\n", "params.yaml", ["must be a mapping"], id="file-is-a-scalar"),
    pytest.param(b"", "seed", ["is missing"], id="file-empty"),
    pytest.param(b"# only a comment\n", "seed", ["is missing"], id="file-only-comments"),
    pytest.param(b"seed: 0\nseed: 1\n" + params_text(without("seed")), "seed", [],
                 id="file-duplicate-key"),
    pytest.param(b"seed: 0\n\xff\xfe\n", "params.yaml", [], id="file-not-utf8"),
]


@pytest.mark.parametrize("edit, key, fragments", CASES)
def test_bad_params_stop_check_params_with_one_line(edit, key, fragments, checked, tmp_path):
    code, out, err = checked(params_text(edit))
    assert_one_line_error(code, err, key, fragments=["error: params.yaml", *fragments])
    assert out == ""
    assert_nothing_written(tmp_path)


def test_the_tiny_params_pass(checked, tmp_path):
    """The control: the same harness on the unedited tiny params writes the verdict."""
    code, out, err = checked(params_text({}))
    assert (code, err) == (0, "") and out.startswith("params.yaml passed")
    assert (tmp_path / "data/params.ok").read_text() == load_stage("check_params").VERDICT


@pytest.mark.parametrize("replacement", ["\tshots: 2", "  shots: 2: 3"], ids=["tab", "colon"])
def test_a_yaml_syntax_error_names_its_line(replacement, checked, tmp_path):
    text, line_number = tiny_yaml_with_line("shots", replacement)
    code, out, err = checked(text)
    assert_one_line_error(code, err, "params.yaml",
                          fragments=[f"not valid YAML at line {line_number}"])
    assert_nothing_written(tmp_path)


def test_a_missing_params_file_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRANSFERLAB_DEBUG", raising=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data/params.ok").write_bytes(EARLIER)
    code, _, err = run_entry(tmp_path, "check_params", "params.yaml", "data/params.ok", capsys=capsys)
    assert_one_line_error(code, err, "params.yaml", fragments=["not found"])
    assert_nothing_written(tmp_path)


# ---- the same through real processes: the shape a user and `dvc repro` see -------------------

SUBPROCESS_CASES = {
    "unknown-finetune-frozen_block": (renamed("transfer.finetune.frozen_blocks", "frozen_block"),
                                      "transfer.finetune.frozen_block"),
    "range-image_size-low": ({"prepare": {"image_size": 7}}, "prepare.image_size"),
    "cross-frozen_blocks-above-blocks": ({"transfer": {"finetune": {"frozen_blocks": 4}}},
                                         "transfer.finetune.frozen_blocks"),
    "missing-section-study": (without("study"), "study"),
    "file-is-a-list": (b"- seed\n- data\n", "params.yaml"),
}


@pytest.mark.parametrize("case", list(SUBPROCESS_CASES))
def test_bad_params_in_a_real_process(case, tmp_path):
    edit, key = SUBPROCESS_CASES[case]
    proc = check_params_process(tmp_path, params_text(edit))
    assert_one_line_error(proc.returncode, proc.stderr, key)
    assert proc.stdout == ""
    assert_nothing_written(tmp_path)


# ---- params.yaml as DVC reads it: any key YAML allows, nesting, aliases: one line ------------

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


# ---- every count has a ceiling, with its reason ----------------------------------------------

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


@pytest.mark.parametrize("threads", [1000, 257, 0, -1, True, 2.0, "8"])
def test_compute_threads_has_a_fixed_ceiling(threads):
    from pydantic import ValidationError

    from transferlab.params import Compute

    with pytest.raises(ValidationError, match="whole number of threads from 1 to 256"):
        Compute(nproc=1, threads=threads, precision="fp32")
    assert Compute(nproc=1, threads=256, precision="fp32").threads == 256


# ---- rules across keys, and the ones only a stage can check ----------------------------------

def test_the_same_folder_spelt_twice_is_the_same_dataset(tmp_path, checked):
    root = image_folder(tmp_path / "imgs", {"a": 3, "b": 3})
    spec = {"name": "folder", "root": str(root)}
    text = yaml.safe_dump(merge(tiny_params_dict(), {"data": {
        "source": spec, "target": dict(spec, root=str(root) + "/")}})).encode()
    code, _, err = checked(text)
    assert_one_line_error(code, err, "data.source", fragments=["same dataset"])


def test_a_huge_pretrain_seed_stops_pretrain_with_one_line(work, capsys):
    set_params(work, {"pretrain": {"seed": 2 ** 64}})
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *PRETRAIN, capsys=capsys)  # ValueError: Overflow ... (traceback)
    assert_one_line_error(code, err, "pretrain.seed")
    assert_untouched(work, before)
