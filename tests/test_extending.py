"""The worked examples of docs/extending.md, proven: a backbone, a dataset and a method are each
one new module, found by their registry and checked by the schema, with no other library file edited.

Each test copies the package into a temporary folder, adds the example's module there (the
text of docs/extending.md's example, so the docs cannot drift from what works) and runs a
fresh Python on that copy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOC = (ROOT / "docs/extending.md").read_text()


def example(name: str) -> str:
    """The code block of docs/extending.md that follows `<!-- example: name -->`."""
    match = re.search(rf"<!-- example: {re.escape(name)} -->\s*```\w*\n(.*?)```", DOC, re.S)
    assert match, f"docs/extending.md has no example {name!r}"
    return match[1]


def copy_package(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "transferlab", tmp_path / "transferlab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", tmp_path / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def run_python(root: Path, code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=root,
                          capture_output=True, text=True, env={"PYTHONPATH": str(root),
                                                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_backbone_is_one_module(tmp_path):
    root = copy_package(tmp_path)
    (root / "transferlab/backbones/tiny_convnet.py").write_text(example("backbone"))
    out = run_python(root, """
        import torch
        from tests.conftest import tiny_params_dict
        from transferlab.errors import UserError
        from transferlab.models import Classifier, architecture_from, copy_blocks
        from transferlab.params import parse_params

        params = parse_params(tiny_params_dict(model={"arch": "tiny_convnet"},
                                               prepare={"image_size": 16}))
        encoder = architecture_from(params.model, 1).build()
        model = Classifier(encoder, 4)
        print(encoder.block_names, tuple(model(torch.rand(3, 1, 16, 16)).shape))
        copy_blocks(architecture_from(params.model, 1).build(), encoder, ["conv1"])
        for edit in ({"model": {"arch": "tiny_convnet"},
                      "transfer": {"finetune": {"frozen_blocks": 3}}},
                     {"model": {"arch": "tiny_convnet", "weights": "DEFAULT"},
                      "prepare": {"channels": 3}}):
            try:
                parse_params(tiny_params_dict(**edit))
            except UserError as err:
                print(err)
    """)
    lines = out.splitlines()
    assert lines[0] == "['conv1', 'conv2'] (3, 4)"
    assert "transfer.finetune.frozen_blocks=3 but the encoder has 2 blocks; use 0..2" in lines[1]
    assert "needs a model.arch with published weights" in lines[2]
    assert "tiny_convnet has none" in lines[2]


def test_a_method_is_one_module_and_a_params_section(tmp_path):
    root = copy_package(tmp_path)
    (root / "transferlab/strategies/entropy_min.py").write_text(example("method"))
    params = (root / "params.yaml").read_text()
    section = example("method params")
    (root / "params.yaml").write_text(params.replace("\ntransfer:\n", "\ntransfer:\n" + section, 1))
    out = run_python(root, """
        import torch
        from tests.conftest import make_images, tiny_params_dict
        from transferlab import strategies
        from transferlab.models import Architecture, Classifier, SmallCNN
        from transferlab.params import load_params, parse_params

        load_params("params.yaml")  # the section is part of the schema now
        cfg = parse_params(tiny_params_dict(model={"widths": [4, 8]})).transfer.entropy_min
        torch.manual_seed(0)
        source = Classifier(SmallCNN(1, [4, 8]), 4).eval()
        x, y = make_images(3, seed=1)
        xv, yv = make_images(2, seed=2)
        inputs = strategies.Inputs(
            target={"x_train": x, "y_train": y, "x_val": xv, "y_val": yv},
            architecture=Architecture("small_cnn", 1, (4, 8)), num_classes=4, seed=0,
            source_model=source, source={"x_train": x, "y_train": y, "x_val": xv, "y_val": yv},
            unlabelled=make_images(5, seed=3)[0])
        outcome = strategies.run("entropy_min", inputs, cfg)
        method = strategies.METHODS["entropy_min"]
        print(method.family, sorted(method.reads), type(outcome.model).__name__)
    """)
    assert out.split() == ["domain", "adaptation", "['source_data',", "'source_model',",
                           "'unlabelled']", "Classifier"]


def test_a_dataset_is_one_module(tmp_path):
    root = copy_package(tmp_path)
    (root / "transferlab/datasets/uci_inverted.py").write_text(example("dataset"))
    out = run_python(root, """
        from tests.conftest import tiny_params_dict
        from transferlab import datasets
        from transferlab.errors import UserError
        from transferlab.params import parse_params

        parse_params(tiny_params_dict(data={"target": {"name": "uci_inverted"}}))
        raw = datasets.fetch("uci_inverted")
        plain = datasets.fetch("uci_digits")
        print(raw.images.shape, raw.classes[:2], bool(((raw.images + plain.images) == 16).all()))
        print(datasets.target_test_source("auto", "uci_inverted", None))
        try:
            datasets.fetch("uci_inverted", "test")
        except UserError as err:
            print(err)
    """)
    lines = out.splitlines()
    assert lines[0] == "(1797, 8, 8) ('0', '1') True"
    assert lines[1] == "split"
    assert "dataset 'uci_inverted' has no official test split" in lines[2]


@pytest.mark.parametrize("name", ["backbone", "dataset", "method", "method params"])
def test_every_example_is_in_the_docs(name):
    assert example(name).strip()
