"""The real `dvc` CLI on the real dvc.yaml, in a temporary git repository, on tiny params."""

import pytest

from tests.conftest import tiny_params_dict
from tests.dvc_helpers import STAGES, copy_project, dvc, ran, read_params, write_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_project(tmp_path_factory.mktemp("pipeline"), tiny_params_dict())


def test_repro_runs_every_stage_then_nothing(repo):
    assert sorted(ran(dvc(repo, "repro"))) == sorted(STAGES)
    assert "up to date" in dvc(repo, "status", "dvc.yaml")
    assert ran(dvc(repo, "repro")) == []
    metrics = dvc(repo, "metrics", "show", "--json")
    for name in ["scratch", "finetune", "features", "structure", "joint", "source_only"]:
        assert f'"{name}"' in metrics


def test_a_strategy_knob_reruns_only_its_stage_and_those_reading_its_model(repo):
    params = read_params(repo)
    params["transfer"]["finetune"]["l2sp_weight"] = 0.5
    write_params(repo, params)
    assert sorted(ran(dvc(repo, "repro"))) == sorted(
        ["check_params", "transfer@finetune", "evaluate", "export", "report"])


def test_study_adding_a_seed_runs_only_its_cells(repo):
    study = "study/dvc.yaml:"
    assert sorted(ran(dvc(repo, "repro", "study/dvc.yaml"))) == sorted([
        f"{study}cell@0-0", f"{study}cell@2-0", f"{study}layers@0", f"{study}report",
        f"{study}html"])
    params = read_params(repo)
    params["study"]["seeds"] = [0, 1]
    write_params(repo, params)
    assert sorted(ran(dvc(repo, "repro", "study/dvc.yaml"))) == sorted([
        "check_params", f"{study}cell@0-1", f"{study}cell@2-1", f"{study}layers@1",
        f"{study}report", f"{study}html"])
    assert "seeds [0, 1]" in (repo / "study/report.md").read_text()
    assert "k = 2" in (repo / "study/report.html").read_text()  # the study's interval table
