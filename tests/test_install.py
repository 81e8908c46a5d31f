"""Installs where people are: the Pythons the project admits, the interpreter the Makefile picks,
and the offline `dvc plots show` page that every install route has.

The Makefile's choice is checked with stand-in interpreters on PATH: a pyenv shim of a version
that is not installed (on PATH, exits 127), a Python that says it is 3.10, and ones that say
3.12 or 3.13 (a real Python told another `sys.version_info`)."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from tests.conftest import ROOT

SUPPORTED = ["3.11", "3.12", "3.13"]  # torch 2.14.1 publishes wheels for these
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAKEFILE = (ROOT / "Makefile").read_text()


def make_variable(name: str) -> str:
    [value] = re.findall(rf"^{name}\s*:?=\s*(.*)$", MAKEFILE, re.M)
    return value.strip()


def test_requires_python_admits_exactly_the_supported_versions():
    spec = SpecifierSet(PYPROJECT["project"]["requires-python"])
    admitted = [f"3.{minor}" for minor in range(8, 16) if f"3.{minor}.0" in spec]
    assert admitted == SUPPORTED
    classifiers = [c.rsplit(" :: ", 1)[1] for c in PYPROJECT["project"].get("classifiers", [])
                   if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)]
    assert classifiers == SUPPORTED


def test_the_makefile_tries_each_supported_version_and_checks_the_same_range():
    candidates = make_variable("PYTHONS").split()
    assert candidates[:len(SUPPORTED)] == [f"python{v}" for v in SUPPORTED]
    low, high = re.search(r"\((\d+, \d+)\) <= sys\.version_info\[:2\] <= \((\d+, \d+)\)",
                          make_variable("SUPPORTED")).groups()
    assert [low.replace(", ", "."), high.replace(", ", ".")] == [SUPPORTED[0], SUPPORTED[-1]]


def test_the_workflow_runs_the_fast_suite_on_each_supported_version():
    workflow = yaml.safe_load((ROOT / ".github/workflows/tests.yml").read_text())
    [job] = workflow["jobs"].values()
    assert [str(v) for v in job["strategy"]["matrix"]["python-version"]] == SUPPORTED
    runs = "\n".join(step.get("run", "") for step in job["steps"])
    assert re.search(r"^make test-fast PYTHON=\"?python\$\{\{ matrix.python-version }}",
                     runs, re.M), runs
    setup = [s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
    assert setup and setup[0]["with"]["python-version"] == "${{ matrix.python-version }}"


def test_ci_runs_the_full_suite_on_one_python_and_the_fast_suite_on_another():
    script = (ROOT / ".ci/run").read_text()
    commands = [line.strip() for line in script.splitlines()
                if re.match(r"\s*make\b", line) and not line.strip().startswith("#")]
    full = [c for c in commands if re.match(r"make test(\s|$)", c)]
    fast = [c for c in commands if c.startswith("make test-fast")]
    assert full and fast, commands
    assert "PYTHON=" in fast[0] and "VENV=" in fast[0], "a second venv beside .venv"


# --- the interpreter the Makefile picks ---------------------------------------------------

def fake_python(folder: Path, name: str, version: tuple[int, int] | None) -> None:
    """`name` on PATH: a pyenv shim of a missing version (None), else a real Python that
    reports `version`."""
    path = folder / name
    if version is None:
        path.write_text(f"#!/bin/sh\necho 'pyenv: {name}: command not found' >&2\nexit 127\n")
    else:
        preamble = f"import sys; sys.version_info = ({version[0]}, {version[1]}, 0, 'final', 0)"
        path.write_text(f'#!/bin/sh\n[ "$1" = -c ] && {{ shift; code="$1"; shift; '
                        f'exec {shlex.quote(sys.executable)} -c "{preamble}; $code" "$@"; }}\n'
                        f'exec {shlex.quote(sys.executable)} "$@"\n')
    path.chmod(0o755)


@pytest.fixture
def fakes(tmp_path) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    fake_python(folder, "shim3.11", None)
    fake_python(folder, "old3.10", (3, 10))
    fake_python(folder, "new3.12", (3, 12))
    fake_python(folder, "new3.13", (3, 13))
    fake_python(folder, "future3.14", (3, 14))
    return folder


def make_python(fakes: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{fakes}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHON", None)
    env.pop("MAKEFLAGS", None)
    return subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), "python", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def own_lines(stderr: str) -> list[str]:
    """stderr without make's own `make: *** [...] Error 1` line."""
    return [line for line in stderr.splitlines() if line and not line.startswith("make")]


def test_the_makefile_takes_the_first_candidate_that_runs_as_a_supported_version(fakes):
    proc = make_python(fakes, "PYTHONS=shim3.11 old3.10 future3.14 new3.13 new3.12")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "new3.13"


def test_no_supported_python_is_one_line_naming_what_was_tried(fakes):
    proc = make_python(fakes, "PYTHONS=shim3.11 old3.10 future3.14")
    assert proc.returncode != 0 and proc.stdout == ""
    [line] = own_lines(proc.stderr)
    assert "no Python 3.11, 3.12 or 3.13" in line and "shim3.11 old3.10 future3.14" in line
    assert "PYTHON=" in line, "the line should say how to name one"


def test_a_python_the_user_names_wins_or_is_refused_in_one_line(fakes):
    proc = make_python(fakes, "PYTHON=new3.12", "PYTHONS=new3.13")
    assert proc.returncode == 0 and proc.stdout.split()[0] == "new3.12"
    for bad in ("old3.10", "shim3.11", "no-such-python"):
        proc = make_python(fakes, f"PYTHON={bad}", "PYTHONS=new3.13")
        assert proc.returncode != 0
        [line] = own_lines(proc.stderr)
        assert line.startswith(f"PYTHON={bad} is not a Python 3.11, 3.12 or 3.13"), line


# --- offline `dvc plots show` on every install route --------------------------------------

def configured_template() -> Path:
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    return ROOT / ".dvc" / config["plots"]["html_template"]


def test_the_offline_plots_template_is_committed_where_dvc_config_points():
    template = configured_template()
    assert template.is_file(), (f"{template.relative_to(ROOT)} is missing: `git checkout -- "
                                f"{template.relative_to(ROOT)}` or `make plots-template`")
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(template)], cwd=ROOT,
                             capture_output=True, text=True)
    if tracked.returncode != 0 and "not a git repository" in tracked.stderr:
        pytest.skip("not a git checkout")
    assert tracked.returncode == 0, "the template must be committed: `pip install -e .` has no make step"


def test_the_committed_template_is_what_the_script_writes_from_the_pinned_vl_convert():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import plots_template
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    pinned = [r for r in PYPROJECT["project"]["optional-dependencies"]["test"]
              if r.startswith("vl-convert-python")]
    assert pinned and "==" in pinned[0], "pin vl-convert-python: the page depends on its version"
    assert configured_template().read_text(encoding="utf-8") == plots_template.template_html(), \
        "the committed page is stale: `make plots-template` rewrites it"
    assert plots_template.DEFAULT_OUT == configured_template()


def test_dvc_plots_show_writes_a_page_with_vega_inline_and_nothing_from_a_cdn(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dvc", "plots", "show", "-o", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "vegaEmbed(" in html and "<script src" not in html and "cdn." not in html
    assert "offline: Vega" in html, "the page is not the committed offline template"
