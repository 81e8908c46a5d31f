"""Run the real `dvc` CLI on a copy of this project in a temporary git repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

STAGES = ["check_params", "download", "prepare", "pretrain", "extract", "transfer@scratch", "transfer@finetune",
          "transfer@features", "transfer@structure", "transfer@joint", "evaluate"]
PROJECT_FILES = ["dvc.yaml", "study/dvc.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore",
                 ".dvc/plots", "data/.gitignore", "stages", "transferlab"]


def copy_project(dst: Path, params: dict) -> Path:
    """The pipeline's files (no dvc.lock, no outputs) + `params` as params.yaml, in a git repo."""
    for name in PROJECT_FILES:
        src = ROOT / name
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst / name)
    write_params(dst, params)
    git(dst, "init", "-q")
    git(dst, "config", "user.email", "test@example.com")
    git(dst, "config", "user.name", "test")
    return dst


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def read_params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def env(repo: Path) -> dict:
    """`python` in stage commands is this interpreter; the copied package is the one imported."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1"}


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess | str:
    """stdout of `dvc args...` (asserting success), or the whole result with check=False."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env(repo),
                          capture_output=True, text=True)
    if not check:
        return proc
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def ran(output: str) -> list[str]:
    """Stage names that `dvc repro` output says it ran."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]
