"""Same inputs, same bytes; and what that buys through the real `dvc` CLI: the run-cache,
metrics/params diffs across commits, experiments and queued sweeps. Tiny params; each test
works on a copy of one fully run, committed repository (tests/dvc_helpers.py:
fully_run_project), the experiment and run-cache tests on the same copy, in that order.

The last test is cheap: every knob of params.yaml is tracked by some stage, so
`dvc exp run -S key=value` changes a run for every key (running them all would take minutes).
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import yaml

from scripts.dvc_deps import DVC_FILES
from tests.conftest import ROOT, repo_params_dict
from tests.dvc_helpers import (STAGES, dvc, fully_run_project, git, param_leaves, ran,
                               reset_to_head, resolved_stages, restored, set_params)


def gate() -> set[str]:
    """Stages that depend on the params.yaml file itself: any edit of it reruns them."""
    return {name for name, s in resolved_stages().items()
            if name in STAGES and "params.yaml" in s["deps"]}


def lock_outs(text: str) -> dict[str, str]:
    """{output path: md5} for every output recorded in a dvc.lock."""
    return {out["path"]: out.get("md5") for stage in yaml.safe_load(text)["stages"].values()
            for out in stage.get("outs", [])}


def experiments(repo) -> list[dict]:
    """Every experiment row of `dvc exp show --json`: {"name", "params", "metrics"}."""
    rows = []
    for baseline in json.loads(dvc(repo, "exp", "show", "--json")):
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev.get("data") or {}
                params = data.get("params", {}).get("params.yaml", {}).get("data", {})
                rows.append({"name": rev.get("name"), "params": params,
                             "metrics": {path: m.get("data", {})
                                         for path, m in data.get("metrics", {}).items()}})
    return rows


def features_accuracy(row: dict):
    return row["metrics"].get("metrics/evaluate.json", {}).get("features", {}).get("accuracy")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """Shared by the experiment test and the run-cache test after it (which reverts its commit)."""
    return fully_run_project(tmp_path_factory.mktemp("determinism"))


@pytest.fixture
def fresh(tmp_path_factory):
    return fully_run_project(tmp_path_factory.mktemp("fresh"))


@pytest.mark.slow
def test_force_rerun_writes_identical_bytes(fresh):
    """`dvc repro --force` after the full run: every output hash in dvc.lock, every metric, plot
    and report (git-tracked) comes out byte-identical."""
    repo = fresh
    before = (repo / "dvc.lock").read_text()
    output = dvc(repo, "repro", "--force")
    assert sorted(ran(output)) == sorted(STAGES)
    after = (repo / "dvc.lock").read_text()
    changed = {path for path, md5 in lock_outs(after).items() if lock_outs(before).get(path) != md5}
    assert not changed, f"outputs with other bytes on a rerun: {sorted(changed)}"
    assert after == before
    assert git(repo, "status", "--porcelain") == "", "metrics/plots/reports differ on a rerun"


@pytest.mark.slow
def test_exp_run_then_commit_then_diff_against_the_previous_commit(repo):
    """An experiment on one knob is listed with its metrics; adopted and committed, it shows in
    `dvc params diff` / `dvc metrics diff` against the commit before (and in the --md the CI
    posts), and no metric of another strategy moves."""
    output = dvc(repo, "exp", "run", "-S", "transfer.features.C=0.5")
    assert set(ran(output)) == gate() | {"transfer@features", "evaluate", "export",
                                         "report"}, output
    [row] = [r for r in experiments(repo) if r["params"]["transfer"]["features"]["C"] == 0.5]
    assert features_accuracy(row) is not None, row
    assert set(row["metrics"]) >= {"metrics/evaluate.json", "metrics/transfer/features.json"}
    name = re.search(r"Ran experiment\(s\): (\S+)", output).group(1)
    assert name in dvc(repo, "exp", "show", "--md")

    git(repo, "add", "-A")  # `dvc exp run` left the experiment's results in the workspace
    git(repo, "commit", "-qm", "transfer.features.C=0.5")
    params = json.loads(dvc(repo, "params", "diff", "HEAD~1", "--json"))
    assert params == {"params.yaml": {"transfer.features.C": {"old": 1.0, "new": 0.5,
                                                              "diff": -0.5}}}
    metrics = json.loads(dvc(repo, "metrics", "diff", "HEAD~1", "--json"))
    assert "features.accuracy" in metrics.get("metrics/evaluate.json", {}), metrics
    others = [f"{path}: {key}" for path, changes in metrics.items() for key in changes
              if path != "metrics/transfer/features.json" and not key.startswith("features.")
              # export holds the validation-best strategy: a features edit may change it
              and path != "metrics/export.json"]
    assert not others, f"metrics of other strategies changed: {others}"

    markdown = dvc(repo, "metrics", "diff", "HEAD~1", "--md")
    assert re.search(r"^\| Path .*\| HEAD~1 .*\|", markdown, re.M), markdown
    assert "features.accuracy" in markdown
    assert "transfer.features.C" in dvc(repo, "params", "diff", "HEAD~1", "--md")


@pytest.mark.slow
def test_reverting_a_param_restores_from_the_run_cache(repo):
    """Back to the previous commit's params, which were run before: DVC restores the stages
    they touch from its run-cache ("Stage '...' is cached - skipping run, checking out
    outputs"), nothing trains, and every output is the previous commit's, byte for byte."""
    reset_to_head(repo)
    if (git(repo, "rev-list", "--count", "HEAD").strip() == "1"  # run alone: make that commit
            or git(repo, "diff", "HEAD~1", "--", "params.yaml") == ""):
        set_params(repo, {"transfer.features.C": 0.5})
        dvc(repo, "repro")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "transfer.features.C=0.5")
    locks = [yaml.safe_load(git(repo, "show", f"{rev}:dvc.lock"))["stages"]
             for rev in ("HEAD~1", "HEAD")]
    differ = [s for s in STAGES if locks[0].get(s) != locks[1].get(s)]  # what the commit reran
    git(repo, "checkout", "HEAD~1", "--", "params.yaml")
    output = dvc(repo, "repro")
    stages = resolved_stages()
    why = {s: stages[s]["uncached_outs"] for s in ran(output) if stages[s]["uncached_outs"]}
    assert ran(output) == [], (
        f"reverting transfer.features.C reran {ran(output)} instead of restoring them from the "
        f"run-cache. DVC keeps no run-cache for a stage with an `outs:` entry that has "
        f"`cache: false` and is neither a metric nor a plot: {why}\n{output}")
    assert sorted(restored(output)) == sorted(differ), output  # DVC picks the order
    assert git(repo, "diff", "--stat", "HEAD~1") == "", "restored outputs differ from HEAD~1's"


@pytest.mark.slow
def test_a_queued_sweep_runs_every_value(fresh):
    """`dvc exp run --queue -S 'key=a,b'` queues one experiment per value; `--run-all` starts a
    queue worker per job and waits for the queue to drain (`dvc queue start` would return at
    once, leaving the workers to run in the background)."""
    repo = fresh
    queued = dvc(repo, "exp", "run", "--queue", "-S", "transfer.features.C=0.25,4.0")
    assert queued.count("Queued experiment") == 2, queued
    try:
        output = dvc(repo, "exp", "run", "--run-all", "--jobs", "2")
    finally:
        dvc(repo, "queue", "stop", check=False)  # no idle queue worker outlives the test
    assert Counter(ran(output)) == Counter(2 * [*gate(), "transfer@features", "evaluate",
                                                "export", "report"]), output
    status = dvc(repo, "queue", "status")
    assert len(re.findall(r"\bSuccess\b", status)) == 2 and "Failed" not in status, status
    swept = {r["params"]["transfer"]["features"]["C"]: features_accuracy(r)
             for r in experiments(repo)}
    assert {0.25, 4.0} <= set(swept), swept
    assert swept[0.25] is not None and swept[4.0] is not None, swept


def test_every_params_key_is_tracked_by_a_stage():
    """Each leaf of params.yaml is listed in some stage's `params:` (by itself or by a parent
    section such as `transfer.finetune`) or shapes a dvc.yaml through `${...}` (a matrix over
    `study.seeds`), so editing it, or `dvc exp run -S` on it, changes a run; and no stage lists
    a key params.yaml does not have."""
    leaves = param_leaves(repo_params_dict())
    listed = {(name, key) for name, s in resolved_stages().items()
              for key in s["params"].get("params.yaml", [])}
    whole_file = [name for name, s in resolved_stages().items()
                  if s["params"].get("params.yaml") == []]
    templated = {m for name in DVC_FILES  # not a walk: a venv beside them holds 60k files
                 for m in re.findall(r"\$\{\s*([\w.]+)\s*\}", (ROOT / name).read_text())
                 if not m.startswith("item") and m != "key"}
    tracked = {key for _, key in listed} | templated
    # a selection-study task that selection_study.tasks does not list runs nothing until it is
    # listed (that edit reruns its stages): its values are an example in waiting, not a knob
    study = repo_params_dict()["selection_study"]
    tracked |= {f"selection_study.task_params.{task}" for task in study["task_params"]
                if task not in study["tasks"]}

    untracked = [leaf for leaf in leaves if not whole_file
                 and not any(leaf == k or leaf.startswith(k + ".") for k in tracked)]
    assert not untracked, \
        f"params.yaml keys no stage tracks (editing them reruns nothing): {untracked}"
    unknown = sorted((name, key) for name, key in listed
                     if not any(leaf == key or leaf.startswith(key + ".") for leaf in leaves))
    assert not unknown, f"stages list params that params.yaml does not have: {unknown}"
