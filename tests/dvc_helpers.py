"""Run the real `dvc` CLI on a copy of this project in a temporary git repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

def _stage_names() -> list[str]:
    """dvc.yaml's stages as `dvc repro` names them, in order (the transfer foreach expanded)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return [name if key is None else f"{name}@{key}" for name, stage in stages.items()
            for key in (stage.get("foreach") or [None])]


STAGES = _stage_names()
PROJECT_FILES = ["dvc.yaml", "study/dvc.yaml", "ranking/dvc.yaml", "selection/dvc.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore",
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


# ---- Added for the tests of the DVC promises (test_dvc_reruns, _determinism, _remote). ----

import copy  # noqa: E402  (kept with the helpers below that use them)
import functools  # noqa: E402

_FULL_RUN: dict[str, object] = {}  # the session's one fully run repository (or its failure)


def fully_run_project(dst: Path) -> Path:
    """In `dst` (empty): a copy of the project after one full `dvc repro` on tiny params, all
    committed. The run happens once per session (about a minute on 2 cores); every caller gets
    its own copy of the result (working tree, git history, DVC cache and run-cache)."""
    from tests.conftest import tiny_params_dict

    if "repo" not in _FULL_RUN:
        assert "error" not in _FULL_RUN, f"the session's full run failed:\n{_FULL_RUN['error']}"
        try:
            template = copy_project(dst.parent / "fully-run-template", tiny_params_dict())
            (template / ".gitignore").write_text("__pycache__/\n")
            output = dvc(template, "repro")
            assert sorted(ran(output)) == sorted(STAGES), output  # DVC picks the order
            git(template, "add", "-A")
            git(template, "commit", "-qm", "Full run on tiny params")
        except Exception as err:  # every later caller fails at once with the same message
            _FULL_RUN["error"] = f"{type(err).__name__}: {err}"[-4000:]
            raise
        _FULL_RUN["repo"] = template
    shutil.copytree(_FULL_RUN["repo"], dst, symlinks=True, dirs_exist_ok=True)
    return dst


def restored(output: str) -> list[str]:
    """Stage names that `dvc repro` output says it restored from the run-cache instead of running
    (not with --dry: there DVC looks stages up by their old dep hashes, then says 'Running')."""
    return [line.split("'")[1] for line in output.splitlines()
            if "is cached - skipping run" in line]


def reset_to_head(repo: Path) -> None:
    """Working tree, params and every output back to the last commit (cached outputs from the
    DVC cache), without running anything."""
    git(repo, "reset", "-q", "--hard")
    git(repo, "clean", "-qfd")
    dvc(repo, "checkout", "--force", "--relink", "--quiet")  # no trust in stale file stats
    assert git(repo, "status", "--porcelain") == ""


def set_params(repo: Path, values: dict) -> None:
    """Set dotted keys of params.yaml, e.g. {"prepare.shots": 1}; each key must exist."""
    params = read_params(repo)
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        section = params
        for name in parents:
            section = section[name]
        assert leaf in section, f"no key {dotted} in params.yaml"
        section[leaf] = value
    write_params(repo, params)


def param_leaves(params: dict, prefix: str = "") -> dict:
    """{dotted key: value} for every leaf of a params mapping (a list is a leaf, and so is an
    empty mapping: `selection_study.task_params.default: {}` is a key a stage can list)."""
    leaves = {}
    for name, value in params.items():
        if isinstance(value, dict) and value:
            leaves.update(param_leaves(value, f"{prefix}{name}."))
        else:
            leaves[f"{prefix}{name}"] = value
    return leaves


def resolved_stages(root: Path = ROOT) -> dict[str, dict]:
    """Every stage of every dvc.yaml under `root`, as DVC itself resolves it (matrix, foreach,
    vars), named as `dvc repro` names it ("transfer@joint", "study/dvc.yaml:cell@1-0"):
    {name: {"dvcfile", "cmd", "wdir", "deps", "params", "uncached_outs"}}, paths relative to
    `root`; "params" maps a params file to its keys ([] = the whole file); "uncached_outs" are
    `outs:` with `cache: false` that are neither metrics nor plots. Read from a scratch copy of
    the YAML files, so `root`'s own .dvc/ is never touched; cached per `root` (about 3 s)."""
    return copy.deepcopy(_resolved_stages(root))


@functools.lru_cache
def _resolved_stages(root: Path) -> dict[str, dict]:
    import tempfile

    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    skip = {".git", ".dvc", ".venv", ".github", "node_modules", "__pycache__"}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp).resolve()
        for folder, subfolders, files in os.walk(root):
            subfolders[:] = [d for d in subfolders if d not in skip and not d.startswith(".venv")]
            for name in files:
                if name.endswith(".yaml") and name != "dvc.lock":
                    rel = Path(folder, name).relative_to(root)
                    (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(root / rel, scratch / rel)
        (scratch / ".dvc").mkdir()
        (scratch / ".dvc" / "config").write_text("[core]\n    no_scm = true\n")

        def rel(path: str) -> str:
            return os.path.relpath(path, scratch)

        stages = {}
        with Repo(str(scratch)) as repo:
            for stage in repo.index.stages:
                dvcfile = rel(stage.dvcfile.path)
                name = stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"
                stages[name] = {
                    "dvcfile": dvcfile, "cmd": stage.cmd, "wdir": rel(stage.wdir),
                    "params": {rel(d.fs_path): list(d.params) for d in stage.deps
                               if isinstance(d, ParamsDependency)},
                    "deps": [rel(d.fs_path) for d in stage.deps
                             if not isinstance(d, ParamsDependency)],
                    "uncached_outs": [rel(o.fs_path) for o in stage.outs
                                      if not o.use_cache and not (o.is_metric or o.is_plot)]}
    return stages
