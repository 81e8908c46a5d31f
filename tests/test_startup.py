"""Stages that run no torch code import none: torch's import is ~2 s of every stage process
that loads it (docs/performance.md), and these run on every params edit or report."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

TORCH_FREE = ["check_params", "download", "report", "study_report", "ranking_report"]


@pytest.mark.parametrize("stage", TORCH_FREE)
def test_a_stage_that_runs_no_torch_code_imports_no_torch(stage):
    code = (f"import runpy, sys; runpy.run_path('stages/{stage}.py', run_name='probe'); "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]", f"stages/{stage}.py imports {done.stdout.strip()}"
