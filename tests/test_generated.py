"""Declarations that follow from code are generated, and the committed ones are what the
generator writes: the library dependencies of every stage in every dvc.yaml, and every list of
the default strategies (one list: dvc.yaml's transfer foreach)."""

import subprocess
import sys

import pytest

from scripts import dvc_deps
from tests.conftest import ROOT
from transferlab import strategies


@pytest.mark.parametrize("dvc_file", dvc_deps.DVC_FILES)
def test_every_stage_lists_exactly_the_library_files_it_imports(dvc_file):
    path = ROOT / dvc_file
    text = path.read_text()
    assert dvc_deps.rewrite(text, dvc_deps.expected(path)) == text, \
        f"{dvc_file}: library deps differ from the import graph: run python scripts/dvc_deps.py"


@pytest.mark.parametrize("dvc_file", dvc_deps.DVC_FILES)
def test_every_list_of_the_default_strategies_is_the_transfer_foreach(dvc_file):
    text = (ROOT / dvc_file).read_text()
    assert dvc_deps.rewrite_strategy_lists(text, dvc_deps.default_strategies(),
                                           list(strategies.NAMES)) == text


def test_a_strategy_added_to_the_foreach_reaches_every_list():
    """Adding `dan` to the default pipeline: one foreach entry; the generator names its model,
    metrics and curve in evaluate, export and report, commands and deps alike."""
    text = (ROOT / "dvc.yaml").read_text()
    keys = [*dvc_deps.default_strategies(), "dan"]
    new = dvc_deps.rewrite_strategy_lists(text, keys, list(strategies.NAMES))
    for template, times in (("models/transfer/{}.safetensors", 4), ("metrics/transfer/{}.json", 2),
                            ("plots/curves/{}.csv", 2)):
        assert new.count(template.format("dan")) == text.count(template.format("mcc")) == times
    assert dvc_deps.rewrite_strategy_lists(new, keys, list(strategies.NAMES)) == new


def test_a_dropped_or_stray_entry_is_restored_and_hand_written_ones_are_kept():
    path = ROOT / "dvc.yaml"
    text = path.read_text()
    edited = text.replace("      - transferlab/train.py\n", "", 1)  # pretrain's, dropped
    edited = edited.replace("      - transferlab/io.py\n",
                            "      - transferlab/io.py\n      - transferlab/ranking.py\n", 1)
    assert edited != text
    assert dvc_deps.rewrite(edited, dvc_deps.expected(path)) == text
    assert "transferlab/strategies/${key}.py" in text  # by name: the registry imports it
    assert "      - transferlab/strategies  # every method" in text


def test_an_import_added_to_a_module_reaches_every_stage_that_imports_it(tmp_path, monkeypatch):
    """The graph is followed through modules: a new import in io.py (imported by every stage)
    would add its file to every stage's list."""
    real = dvc_deps.imports_of
    io_py, extra = ROOT / "transferlab/io.py", ROOT / "transferlab/ranking.py"
    monkeypatch.setattr(dvc_deps, "imports_of",
                        lambda path: real(path) | ({extra} if path == io_py else set()))
    lists = dvc_deps.expected(ROOT / "dvc.yaml")
    assert all("transferlab/ranking.py" in entries for entries in lists)


def test_the_check_mode_is_what_ci_can_run():
    done = subprocess.run([sys.executable, "scripts/dvc_deps.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
