"""The real `dvc` CLI on the real dvc.yaml, in a temporary git repository, on tiny params."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, tiny_params_dict

pytestmark = pytest.mark.slow

STAGES = ["download", "prepare", "pretrain", "extract", "transfer@scratch", "transfer@finetune",
          "transfer@features", "transfer@structure", "transfer@joint", "evaluate"]
PROJECT_FILES = ["dvc.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore", "data/.gitignore",
                 "stages", "transferlab"]


def copy_project(dst: Path) -> None:
    for name in PROJECT_FILES:
        src = ROOT / name
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst / name)


def dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("pipeline")
    copy_project(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    return repo


def ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_repro_runs_every_stage_then_nothing(repo):
    assert ran(dvc(repo, "repro")) == STAGES
    assert "up to date" in dvc(repo, "status")
    assert ran(dvc(repo, "repro")) == []
    metrics = dvc(repo, "metrics", "show", "--json")
    for name in ["scratch", "finetune", "features", "structure", "joint", "source_only"]:
        assert f'"{name}"' in metrics


def test_a_strategy_knob_reruns_only_its_stage_and_evaluate(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["transfer"]["finetune"]["l2sp_weight"] = 0.5
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran(dvc(repo, "repro")) == ["transfer@finetune", "evaluate"]
