"""The environment a stage runs in, given nonsense: variables the package reads, the machine's
cores, and the `dvc` process that launched the stage.

Each variable given a value it cannot use is one line naming it (`$NAME='value' is ...`; from a
stage: exit code 2, "error: ..." and no traceback, nothing written); TRANSFERLAB_DEBUG=1 alone
shows the traceback. A stage whose `dvc` is gone, or that no `dvc` launched although
$DVC_STAGE says so, stops and publishes nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.bad_input_helpers import (assert_nothing_written, assert_one_line_error,
                                     check_params_process, params_text)
from tests.conftest import ROOT, tiny_params_dict
from transferlab import compute
from transferlab.errors import UserError
from transferlab.io import resident_limit


# ---- TRANSFERLAB_DEBUG -----------------------------------------------------------------------

def test_transferlab_debug_shows_the_traceback(tmp_path):
    proc = check_params_process(tmp_path, params_text({"prepare": {"image_size": 7}}),
                                TRANSFERLAB_DEBUG="1")
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith(
        "transferlab.errors.UserError: params.yaml: prepare.image_size=7 is invalid")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("value, code", [("yes please", 2), ("2", 2), ("0", 2), ("", 2)])
def test_transferlab_debug_takes_1_or_0(tmp_path, value, code):
    """A stage run with TRANSFERLAB_DEBUG set to something else than 1/0 says so in one line;
    0 and empty mean one-line errors (0 showed tracebacks: any non-empty value did)."""
    (tmp_path / "params.yaml").write_text("not: [valid")
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFERLAB_DEBUG": value}
    proc = subprocess.run([sys.executable, str(ROOT / "stages/check_params.py"), "params.yaml",
                           "params.ok"], cwd=tmp_path, env=environ, capture_output=True, text=True,
                          timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr,
                          *(["TRANSFERLAB_DEBUG"] if value.strip() not in ("", "0") else []))
    assert not (tmp_path / "params.ok").exists()


# ---- numbers from the environment ------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "-1", "1e400", "0x40", "lots",
                                   "64MiB", "1,5", "\u0666\u0664", "2e6"])
def test_resident_mib_out_of_range_is_one_line(monkeypatch, value):
    monkeypatch.setenv("TRANSFERLAB_RESIDENT_MIB", value)
    with pytest.raises(UserError, match=r"^TRANSFERLAB_RESIDENT_MIB='.*' is (not a number|out "
                                        r"of range)"):
        resident_limit()


@pytest.mark.parametrize("value, limit", [("", 64 << 20), (" 12 ", 12 << 20), ("0", 0),
                                          ("0.5", 1 << 19), ("1e3", 1000 << 20)])
def test_resident_mib_in_range(monkeypatch, value, limit):
    monkeypatch.setenv("TRANSFERLAB_RESIDENT_MIB", value)
    assert resident_limit() == limit


@pytest.mark.parametrize("name, value", [
    ("TRANSFERLAB_JOBS", "0"), ("TRANSFERLAB_JOBS", "-2"), ("TRANSFERLAB_JOBS", "1.5"),
    ("TRANSFERLAB_JOBS", "\u0663"), ("TRANSFERLAB_JOBS", "99999999999999999999"),
    ("TRANSFERLAB_JOBS", "nan"), ("WORLD_SIZE", "two"), ("WORLD_SIZE", "0"),
    ("LOCAL_WORLD_SIZE", "-1"), ("LOCAL_RANK", "x"), ("LOCAL_RANK", "1e3")])
def test_every_numeric_variable_is_checked_naming_it(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=rf"^\${name}='.*' is not a whole number from"):
        compute.parallel_stages() if name == "TRANSFERLAB_JOBS" else compute.torchrun_env()


def test_torchrun_variables_must_agree(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(UserError, match=r"\$LOCAL_WORLD_SIZE=4 is more than \$WORLD_SIZE=2"):
        compute.torchrun_env()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UserError, match=r"\$LOCAL_RANK=2 is not below"):
        compute.torchrun_env()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert compute.torchrun_env() == {"WORLD_SIZE": 2, "LOCAL_WORLD_SIZE": 2, "LOCAL_RANK": 1}


def test_a_queue_root_that_cannot_be_listed_counts_no_workers(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for root in (str(loop), "x" * 300, str(tmp_path / "missing")):
        assert compute.parallel_stages({"DVC_EXP_NAME": "e", "DVC_ROOT": root}) == 1


def test_threads_above_the_cores_are_capped_and_said(monkeypatch, capsys):
    from transferlab.params import Compute

    monkeypatch.setattr(compute, "usable_cores", lambda: 2)
    monkeypatch.delenv("TRANSFERLAB_JOBS", raising=False)
    import torch

    before = torch.get_num_threads()
    try:
        assert compute.set_threads(Compute(nproc=1, threads=200, precision="fp32")) == 2
    finally:
        torch.set_num_threads(before)
    assert "compute.threads=200 capped at the 2 usable cores" in capsys.readouterr().out


# ---- the launcher: known from the stage's first instruction, and gone with its `dvc` ---------

FAKE_DVC = """import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(child.pid, flush=True)
time.sleep(60)
"""


CHILD = """import sys, time
import transferlab
print(transferlab.ORPHANED, len(transferlab.LAUNCHERS), flush=True)
from transferlab import launcher
print(launcher.launcher_gone(), flush=True)
time.sleep(60)
"""


def launched(tmp_path: Path, launcher_name: str):
    """CHILD run by a python script named `launcher_name` (a stand-in for `dvc`), $DVC_STAGE
    set: (the launcher's Popen, the child's pid, the child's first two lines)."""
    script = tmp_path / launcher_name
    script.write_text(FAKE_DVC)
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_STAGE": "pretrain"}
    proc = subprocess.Popen([sys.executable, str(script), CHILD], env=environ,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(proc.stdout.readline())
    lines = [proc.stdout.readline().strip() for _ in range(2)]
    return proc, child, lines


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"])
def test_a_stage_dies_with_the_dvc_that_launched_it(tmp_path, signum):
    """The parent-death signal asked for at import: `dvc` killed, its stage gets SIGTERM at
    once, whatever it is doing (here: sleeping before any run_stage, as during `import torch`)."""
    proc, child, lines = launched(tmp_path, "dvc")
    try:
        assert lines == ["False 1", "False"]  # dvc found, not gone
        proc.send_signal(signum)
        deadline = time.monotonic() + 5
        while alive(child):
            assert time.monotonic() < deadline, "the stage outlived its dvc"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_stage_with_no_dvc_above_it_never_publishes(tmp_path):
    """$DVC_STAGE set but no `dvc` in the chain (it died before the stage's first instruction,
    or the variable was set by hand): orphaned from the start, launcher_gone() from then on."""
    proc, child, lines = launched(tmp_path, "not-dvc")
    try:
        assert lines == ["True 0", "True"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_stage_run_by_hand_with_dvc_stage_set_runs_nothing(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_STAGE": "check_params"}
    environ.pop("TRANSFERLAB_DEBUG", None)
    proc = subprocess.run([sys.executable, str(ROOT / "stages/check_params.py"), "params.yaml",
                           "params.ok"], cwd=tmp_path, env=environ, capture_output=True,
                          text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "DVC_STAGE",
                          fragments=["no dvc process launched this stage"])
    assert not (tmp_path / "params.ok").exists()


def test_importing_the_package_outside_dvc_does_nothing(monkeypatch):
    import transferlab

    monkeypatch.delenv("DVC_STAGE", raising=False)
    transferlab.take_launchers()
    assert transferlab.LAUNCHERS == [] and transferlab.ORPHANED is False


@pytest.mark.slow
def test_sigterm_to_dvc_alone_stops_its_stage_without_publishing(tmp_path):
    """`timeout`, CI cancellation and process managers signal the `dvc` process only. The stage
    it ran must not live on and write its outputs, unrecorded in dvc.lock."""
    from tests.dvc_helpers import copy_project, dvc, env, git

    repo = copy_project(tmp_path / "repo", tiny_params_dict())
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "init")
    dvc(repo, "repro", "prepare")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"]["epochs"] = 300  # far longer than the test waits
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "pretrain"], cwd=repo,
                            env={**env(repo), "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, stage = time.monotonic() + 120, None
        while stage is None:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
            stage = next((p for p in psutil.Process(proc.pid).children(recursive=True)
                          if "stages/pretrain.py" in " ".join(p.cmdline())), None)
            time.sleep(0.2)
        time.sleep(3)  # into training
        proc.send_signal(signal.SIGTERM)  # dvc alone, not its process group
        proc.wait(timeout=30)
        stage.wait(timeout=20)  # psutil: raises TimeoutExpired if the orphan lives on
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    assert not (repo / "models/source.safetensors").exists()
    assert not (repo / "metrics/pretrain.json").exists()
    assert list(repo.rglob(".*.tmp")) == []
    # and the next run completes normally
    params["pretrain"]["epochs"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    dvc(repo, "repro", "pretrain")
    assert (repo / "models/source.safetensors").is_file()
