"""Bad input as a user meets it: through the real stage entry points, never a traceback.

Every case runs `run_stage(main)` of a stage script, as `python stages/<stage>.py ...` does
(sys.argv patched; a handful also as real subprocesses), and checks the promise of
transferlab/io.py: exit code 2, exactly one line on stderr starting with "error: " that names
the dotted params key (or the file path) at fault, no traceback, and nothing written: outputs
from an earlier run stay byte-for-byte as they were and no temporary (`.*.tmp`) is left.

Cases that once failed (inf/nan values, huge seeds, duplicate keys, non-UTF-8 files, bool/float
channels, union-typed class lists) are kept here as regressions.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml

from tests.conftest import ROOT, merge, tiny_params_dict
from tests.test_stages import cwd, load_stage, run_main
from transferlab.launcher import run_stage

EARLIER = b"earlier content: not what check_params writes\n"  # a pre-existing data/params.ok


# ---- helpers ---------------------------------------------------------------------------------

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


def params_text(edit) -> bytes:
    """params.yaml bytes: tiny params with `edit` (a dict merged in, a function of the dict, or
    the raw file bytes themselves)."""
    if isinstance(edit, bytes):
        return edit
    params = tiny_params_dict()
    params = edit(params) if callable(edit) else merge(params, edit)
    return yaml.safe_dump(params, sort_keys=False).encode()


def tiny_yaml_with_line(key: str, replacement: str) -> tuple[bytes, int]:
    """The tiny params.yaml with the line of `key:` (first match) replaced; its 1-based number."""
    lines = yaml.safe_dump(tiny_params_dict(), sort_keys=False).splitlines()
    number = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:")) + 1
    lines[number - 1] = replacement
    return ("\n".join(lines) + "\n").encode(), number


@contextlib.contextmanager
def stage_process_state():
    """What run_stage and the stages change in this (pytest's) process, restored afterwards:
    the SIGTERM/SIGINT handlers run_stage installs and torch's global determinism switches."""
    handler, interrupt = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    deterministic = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, interrupt)
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = benchmark
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def run_entry(work: Path, stage: str, *args, capsys) -> tuple[int, str, str]:
    """`python stages/<stage>.py args...` in-process, in `work`: (exit code, stdout, stderr).
    A clean return is exit code 0; any other exception propagates (a traceback for a user)."""
    module = load_stage(stage)
    capsys.readouterr()
    code = 0
    with cwd(work), stage_process_state(), \
            mock.patch.object(sys, "argv", [f"stages/{stage}.py", *map(str, args)]):
        try:
            run_stage(module.main)
        except SystemExit as exc:
            code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err: str, *names: str, fragments=()) -> str:
    """Exit code 2; stderr is one line "error: ..." naming every one of `names` as a whole
    dotted key or path (not a prefix of a longer one); no traceback. Returns the line."""
    assert "Traceback" not in err, err
    assert code == 2, f"exit code {code}, stderr: {err}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err}"
    line = lines[0]
    assert line.startswith("error: "), line
    for name in names:
        assert re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.\[])", line), \
            f"the message does not name {name!r}: {line}"
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in: {line}"
    return line


def snapshot(root: Path, *dirs: str) -> dict[str, str]:
    """{relative path: sha256} of every file under the given folders of `root`."""
    out = {}
    for d in dirs:
        for path in sorted((root / d).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def temporaries(root: Path) -> list[str]:
    """Every `.<name>.<random>.tmp` atomic_path temporary under `root`."""
    return [str(p.relative_to(root)) for p in root.rglob(".*.tmp")]


# ---- 1a. params.yaml: every bad value stops check_params with one line ---------------------

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


def assert_nothing_written(work: Path):
    assert (work / "data/params.ok").read_bytes() == EARLIER
    assert sorted(p.name for p in (work / "data").iterdir()) == ["params.ok"]
    assert temporaries(work) == []


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


# -- the same through real processes: the shape a user and `dvc repro` see -------------------

SUBPROCESS_CASES = {
    "unknown-finetune-frozen_block": (renamed("transfer.finetune.frozen_blocks", "frozen_block"),
                                      "transfer.finetune.frozen_block"),
    "range-image_size-low": ({"prepare": {"image_size": 7}}, "prepare.image_size"),
    "cross-frozen_blocks-above-blocks": ({"transfer": {"finetune": {"frozen_blocks": 4}}},
                                         "transfer.finetune.frozen_blocks"),
    "missing-section-study": (without("study"), "study"),
    "file-is-a-list": (b"- seed\n- data\n", "params.yaml"),
}


def check_params_process(work: Path, text: bytes, **env) -> subprocess.CompletedProcess:
    (work / "params.yaml").write_bytes(text)
    (work / "stages").mkdir(exist_ok=True)
    shutil.copy2(ROOT / "stages/check_params.py", work / "stages/check_params.py")
    (work / "data").mkdir(exist_ok=True)
    (work / "data/params.ok").write_bytes(EARLIER)
    environ = {k: v for k, v in os.environ.items() if k != "TRANSFERLAB_DEBUG"}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "stages/check_params.py", "params.yaml", "data/params.ok"],
                          cwd=work, env={**environ, **env}, capture_output=True, text=True)


@pytest.mark.parametrize("case", list(SUBPROCESS_CASES))
def test_bad_params_in_a_real_process(case, tmp_path):
    edit, key = SUBPROCESS_CASES[case]
    proc = check_params_process(tmp_path, params_text(edit))
    assert_one_line_error(proc.returncode, proc.stderr, key)
    assert proc.stdout == ""
    assert_nothing_written(tmp_path)


def test_transferlab_debug_shows_the_traceback(tmp_path):
    proc = check_params_process(tmp_path, params_text({"prepare": {"image_size": 7}}),
                                TRANSFERLAB_DEBUG="1")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith(
        "transferlab.errors.UserError: params.yaml: prepare.image_size=7 is invalid")
    assert_nothing_written(tmp_path)


# ---- 1b. data faults, by path, through the stage mains -------------------------------------

PREPARE = ("prepare", "data/raw", "data/prepared", "--summary", "metrics/scenario.json")
PRETRAIN = ("pretrain", "data/prepared/source.safetensors", "models/source.safetensors",
            "--metrics", "metrics/pretrain.json", "--curve", "plots/curves/pretrain.csv")
EXTRACT = ("extract", "models/source.safetensors", "data/prepared/target.safetensors",
           "data/features/target.safetensors", "--metrics", "metrics/extract.json")
OUTPUT_DIRS = ("data", "models", "metrics", "plots")


@pytest.fixture(scope="module")
def prepared_base(tmp_path_factory):
    """download + prepare on tiny params (about 3 s), plus sentinel later outputs."""
    work = tmp_path_factory.mktemp("prepared")
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict()))
    run_main(work, "download", "data/raw")
    run_main(work, *PREPARE)
    for path in ("models/source.safetensors", "metrics/pretrain.json", "plots/curves/pretrain.csv",
                 "data/features/target.safetensors", "metrics/extract.json"):
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_bytes(f"earlier {path}\n".encode())
    return work


@pytest.fixture
def work(prepared_base, tmp_path, monkeypatch):
    monkeypatch.delenv("TRANSFERLAB_DEBUG", raising=False)
    dst = tmp_path / "work"
    shutil.copytree(prepared_base, dst)
    return dst


def set_params(work: Path, override: dict) -> None:
    (work / "params.yaml").write_text(yaml.safe_dump(merge(tiny_params_dict(), override)))


def assert_untouched(work: Path, before: dict, *except_inputs: str):
    after = snapshot(work, *OUTPUT_DIRS)
    for path in except_inputs:  # the damaged input itself
        before.pop(path, None), after.pop(path, None)
    assert after == before
    assert temporaries(work) == []


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


@pytest.mark.parametrize("fault, fragment", [
    ("empty", "is empty"), ("not-an-image", "is not a readable image"), ("missing-root", "does not exist"),
])
def test_a_bad_image_folder_stops_download_naming_the_path(fault, fragment, work, tmp_path, capsys):
    _, bad = folder_fault(work, tmp_path, fault)
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, "download", "data/raw", capsys=capsys)
    assert_one_line_error(code, err, str(bad), fragments=["folder dataset", fragment])
    assert_untouched(work, before)


def test_a_huge_pretrain_seed_stops_pretrain_with_one_line(work, capsys):
    set_params(work, {"pretrain": {"seed": 2 ** 64}})
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *PRETRAIN, capsys=capsys)  # ValueError: Overflow ... (traceback)
    assert_one_line_error(code, err, "pretrain.seed")
    assert_untouched(work, before)
