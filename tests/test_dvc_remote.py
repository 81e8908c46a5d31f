"""The project's default DVC remote, `local` (.dvc/config): push a full run, clone, pull, and
the clone is up to date without running a stage. The remote is pointed at a temporary folder
with `dvc remote modify --local` (git-ignored .dvc/config.local), as a user would point it at
their own storage (a folder, s3://..., ssh://...)."""

from __future__ import annotations

from pathlib import Path

import pytest
from configobj import ConfigObj

from tests.conftest import ROOT
from tests.dvc_helpers import dvc, fully_run_project, git, ran


def test_the_default_remote_is_a_folder_beside_the_repository():
    config = ConfigObj(str(ROOT / ".dvc" / "config"))
    assert config["core"]["remote"] == "local"
    url = config['remote "local"']["url"]
    assert "://" not in url and not Path(url).is_absolute(), url
    folder = (ROOT / ".dvc" / url).resolve()  # DVC reads a relative url from the config's folder
    assert ROOT.resolve() not in folder.parents, f"{folder}: a remote inside the repository"


@pytest.mark.slow
def test_push_clone_pull_leaves_nothing_to_run(tmp_path_factory):
    repo = fully_run_project(tmp_path_factory.mktemp("pushed"))
    storage = tmp_path_factory.mktemp("storage")
    assert dvc(repo, "remote", "default").strip() == "local"
    dvc(repo, "remote", "modify", "--local", "local", "url", str(storage))
    pushed = dvc(repo, "push")
    assert "pushed" in pushed and any(p.is_file() for p in storage.rglob("*")), pushed

    clone = tmp_path_factory.mktemp("clone") / "transferlab"
    git(clone.parent, "clone", "-q", str(repo), str(clone))
    assert not (clone / "models" / "source.safetensors").exists(), "outputs come from the remote"
    dvc(clone, "remote", "modify", "--local", "local", "url", str(storage))
    dvc(clone, "pull")

    assert (clone / "models" / "source.safetensors").is_file()
    status = dvc(clone, "status", "dvc.yaml")  # the default pipeline (study/dvc.yaml never ran)
    assert "up to date" in status, status
    output = dvc(clone, "repro")
    assert ran(output) == [], output
    assert git(clone, "status", "--porcelain") == ""
