"""The CI workflows (.github/workflows/): each valid for GitHub Actions (the schema is vendored in
check-jsonschema: no network); pipeline.yml really reproduces the pipeline and posts the metrics
and params diffs against the base branch on the pull request. tests.yml (the fast suite on each
supported Python) is checked against pyproject.toml in tests/test_install.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "pipeline.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


@pytest.fixture(scope="module")
def steps(workflow) -> list[dict]:
    [job] = [j for j in workflow["jobs"].values() if any(
        re.search(r"^\s*dvc repro\s*$", s.get("run", ""), re.M) for s in j["steps"])]
    return job["steps"]


def index(steps: list[dict], pattern: str) -> int:
    """The position of the first step whose `run` or `uses` matches `pattern` (a regex)."""
    found = [i for i, s in enumerate(steps)
             if re.search(pattern, s.get("run", "") + s.get("uses", ""), re.M)]
    assert found, f"no step matches {pattern!r}"
    return found[0]


@pytest.mark.parametrize("path", sorted((ROOT / ".github" / "workflows").glob("*.y*ml")),
                         ids=lambda path: path.name)
def test_each_workflow_passes_the_github_workflow_schema(path):
    checker = Path(sys.executable).parent / "check-jsonschema"
    proc = subprocess.run([str(checker), "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_it_runs_on_pull_requests_and_may_comment(workflow):
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in (triggers if isinstance(triggers, (dict, list)) else [triggers])
    jobs = workflow["jobs"].values()
    assert workflow.get("permissions", {}).get("pull-requests") == "write" or all(
        j.get("permissions", {}).get("pull-requests") == "write" for j in jobs)


def test_it_installs_pulls_and_reproduces_in_that_order(steps):
    checkout = steps[index(steps, r"^actions/checkout@")]
    assert checkout.get("with", {}).get("fetch-depth") == 0, "the diffs need the base branch"
    python = steps[index(steps, r"^actions/setup-python@")]
    assert str(python.get("with", {}).get("python-version")) == "3.11"
    install, pull, repro = (index(steps, r"^\s*make install\s*$"), index(steps, r"^\s*dvc pull\b"),
                            index(steps, r"^\s*dvc repro\s*$"))
    assert install < pull < repro
    assert steps[pull].get("continue-on-error") is True, "no reachable remote must not fail CI"
    assert not steps[repro].get("continue-on-error"), "a failing stage must fail CI"


def test_it_posts_both_markdown_diffs_against_the_base_branch(steps):
    repro = index(steps, r"^\s*dvc repro\s*$")
    metrics = index(steps, r"^\s*dvc metrics diff \S+ --md\b")
    params = index(steps, r"^\s*dvc params diff \S+ --md\b")
    assert repro < metrics and repro < params
    report = re.search(r">\s*(\S+\.md)\s*$", steps[metrics]["run"], re.M)
    assert report, "the diffs should be written to a markdown file"
    comment = index(steps, r"gh pr comment|^actions/github-script@")
    assert comment > max(metrics, params)
    assert report.group(1) in str(steps[comment]), "the comment should post the diffs' file"
    env = {**steps[comment].get("env", {}), **steps[comment].get("with", {})}
    assert "github.token" in str(env) or "GITHUB_TOKEN" in str(env)
