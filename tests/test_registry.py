"""The method registry, params.yaml and dvc.yaml agree: a method is one module, one params
section and (optionally) one entry of the transfer stage, with the deps its inputs need."""

import importlib

import pytest
import yaml

from tests.conftest import ROOT, repo_params_dict
from transferlab import strategies
from transferlab.strategies import METHODS

SLOTS = {"model": ("source_model", "models/source.safetensors"),
         "source": ("source_data", "data/prepared/source.safetensors"),
         "features": ("features", "data/features/target.safetensors"),
         "pool": ("unlabelled", "data/prepared/target_unlabelled.safetensors")}
UNUSED = "data/params.ok"


def pipeline_entries() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["transfer"]["foreach"]


def test_every_module_of_the_package_is_a_registered_method():
    files = sorted(p.stem for p in (ROOT / "transferlab/strategies").glob("*.py")
                   if p.stem != "__init__")
    assert sorted(METHODS) == files


def test_params_yaml_has_one_section_per_method():
    assert sorted(repo_params_dict()["transfer"]) == sorted(METHODS)


@pytest.mark.parametrize("name", sorted(pipeline_entries()))
def test_a_pipeline_entry_depends_on_exactly_what_its_method_reads(name):
    assert name in METHODS, f"dvc.yaml runs {name}, which no module of strategies/ registers"
    entry, reads = pipeline_entries()[name], METHODS[name].reads
    assert set(entry) == set(SLOTS)
    for slot, (what, path) in SLOTS.items():
        assert entry[slot] == (path if what in reads else UNUSED), (name, slot)


def test_the_pipeline_runs_the_baselines_and_at_least_one_label_free_method():
    entries = pipeline_entries()
    assert "scratch" in entries
    assert any(not METHODS[n].needs_labels for n in entries)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_module_states_its_objective_and_keeps_torch_out_of_its_import(name):
    module = importlib.import_module(f"transferlab.strategies.{name}")
    doc = module.__doc__ or ""
    assert "min" in doc, f"{name}: the docstring states no objective"
    if METHODS[name].family not in ("none (the control)",):
        assert any(str(year) in doc for year in range(1990, 2030)), f"{name}: cite the paper"
    source = (ROOT / f"transferlab/strategies/{name}.py").read_text()
    top_level = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not [line for line in top_level if "torch" in line or "transferlab.transfer" in line]


def test_a_new_options_field_is_validated_through_the_schema():
    raw = repo_params_dict()
    raw["transfer"]["mcc"]["temperature"] = 0
    from transferlab.errors import UserError
    from transferlab.params import parse_params
    with pytest.raises(UserError, match="transfer.mcc.temperature"):
        parse_params(raw)


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown strategy 'finetuning'"):
        strategies.run("finetuning", None, None)


def test_evaluate_scores_exactly_the_models_the_transfer_stage_writes():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    listed = [w for w in stages["evaluate"]["cmd"].split() if w.startswith("models/transfer/")]
    assert listed == [f"models/transfer/{name}.safetensors" for name in pipeline_entries()]


def test_the_picture_shows_every_adaptation_method_of_the_pipeline():
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    files = {f for p in plots for spec in p.values() for f in spec["y"]}
    adapted = [n for n in pipeline_entries() if "unlabelled" in METHODS[n].reads]
    assert files == {f"plots/embedding/{n}_{d}.csv" for n in ["before", *adapted]
                     for d in ("source", "target")}
