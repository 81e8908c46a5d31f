"""What the bad-input tests share: a stage run as `python stages/<stage>.py` runs it, the check
of the promise every refusal keeps, and the tiny pipelines those tests damage.

The promise (transferlab/launcher.py `run_stage`, transferlab/io.py): exit code 2, exactly one
line on stderr starting with "error: " that names the dotted params key or the file path at
fault, no traceback, and nothing written: outputs of an earlier run stay byte-for-byte as they
were and no temporary (`.*.tmp`) is left. Used by test_bad_params, test_bad_data,
test_corrupt_files, test_corrupt_records, test_output_paths and test_environment (and a few
other test modules for `run_entry`); fixtures are imported by name where they are used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import ROOT, merge, tiny_params_dict
from tests.test_stages import cwd, load_stage, run_main
from transferlab.launcher import run_stage


EARLIER = b"earlier content: not what check_params writes\n"  # a pre-existing data/params.ok


# ---- a stage run as a user runs it, and the promise it keeps ---------------------------------

@contextlib.contextmanager
def stage_process_state():
    """What run_stage and the stages change in this (pytest's) process, restored afterwards:
    the SIGTERM/SIGINT handlers run_stage installs and torch's global determinism switches."""
    handler, interrupt = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    deterministic = torch.are_deterministic_algorithms_enabled()
    benchmark = torch.backends.cudnn.benchmark
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, interrupt)
        torch.use_deterministic_algorithms(deterministic)
        torch.backends.cudnn.benchmark = benchmark
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def run_entry(work: Path, stage: str, *args, capsys) -> tuple[int, str, str]:
    """`python stages/<stage>.py args...` in-process, in `work`: (exit code, stdout, stderr).
    A clean return is exit code 0; any other exception propagates (a traceback for a user)."""
    module = load_stage(stage)
    capsys.readouterr()
    code = 0
    with cwd(work), stage_process_state(), \
            mock.patch.object(sys, "argv", [f"stages/{stage}.py", *map(str, args)]):
        try:
            run_stage(module.main)
        except SystemExit as exc:
            code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err: str, *names: str, fragments=()) -> str:
    """Exit code 2; stderr is one line "error: ..." naming every one of `names` as a whole
    dotted key or path (not a prefix of a longer one); no traceback. Returns the line."""
    assert "Traceback" not in err, err
    assert code == 2, f"exit code {code}, stderr: {err}"
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {err}"
    line = lines[0]
    assert line.startswith("error: "), line
    for name in names:
        assert re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.\[])", line), \
            f"the message does not name {name!r}: {line}"
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in: {line}"
    return line


def snapshot(root: Path, *dirs: str) -> dict[str, str]:
    """{relative path: sha256} of every file under the given folders of `root`."""
    out = {}
    for d in dirs:
        for path in sorted((root / d).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def temporaries(root: Path) -> list[str]:
    """Every `.<name>.<random>.tmp` atomic_path temporary under `root`."""
    return [str(p.relative_to(root)) for p in root.rglob(".*.tmp")]


# ---- check_params on given params.yaml bytes -------------------------------------------------

def params_text(edit) -> bytes:
    """params.yaml bytes: tiny params with `edit` (a dict merged in, a function of the dict, or
    the raw file bytes themselves)."""
    if isinstance(edit, bytes):
        return edit
    params = tiny_params_dict()
    params = edit(params) if callable(edit) else merge(params, edit)
    return yaml.safe_dump(params, sort_keys=False).encode()


def assert_nothing_written(work: Path):
    assert (work / "data/params.ok").read_bytes() == EARLIER
    assert sorted(p.name for p in (work / "data").iterdir()) == ["params.ok"]
    assert temporaries(work) == []


def check_params_process(work: Path, text: bytes, **env) -> subprocess.CompletedProcess:
    (work / "params.yaml").write_bytes(text)
    (work / "stages").mkdir(exist_ok=True)
    shutil.copy2(ROOT / "stages/check_params.py", work / "stages/check_params.py")
    (work / "data").mkdir(exist_ok=True)
    (work / "data/params.ok").write_bytes(EARLIER)
    environ = {k: v for k, v in os.environ.items() if k != "TRANSFERLAB_DEBUG"}
    environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "stages/check_params.py", "params.yaml", "data/params.ok"],
                          cwd=work, env={**environ, **env}, capture_output=True, text=True)


# ---- a prepared tiny pipeline with sentinel later outputs (`work`) ---------------------------

PREPARE = ("prepare", "data/raw", "data/prepared", "--summary", "metrics/scenario.json")


PRETRAIN = ("pretrain", "data/prepared/source.safetensors", "models/source.safetensors",
            "--metrics", "metrics/pretrain.json", "--curve", "plots/curves/pretrain.csv")


EXTRACT = ("extract", "models/source.safetensors", "data/prepared/target.safetensors",
           "data/features/target.safetensors", "--metrics", "metrics/extract.json")


OUTPUT_DIRS = ("data", "models", "metrics", "plots")


@pytest.fixture(scope="module")
def prepared_base(tmp_path_factory):
    """download + prepare on tiny params (about 3 s), plus sentinel later outputs."""
    work = tmp_path_factory.mktemp("prepared")
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict()))
    run_main(work, "download", "data/raw")
    run_main(work, *PREPARE)
    for path in ("models/source.safetensors", "metrics/pretrain.json", "plots/curves/pretrain.csv",
                 "data/features/target.safetensors", "metrics/extract.json"):
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_bytes(f"earlier {path}\n".encode())
    return work


@pytest.fixture
def work(prepared_base, tmp_path, monkeypatch):
    monkeypatch.delenv("TRANSFERLAB_DEBUG", raising=False)
    dst = tmp_path / "work"
    shutil.copytree(prepared_base, dst)
    return dst


def set_params(work: Path, override: dict) -> None:
    (work / "params.yaml").write_text(yaml.safe_dump(merge(tiny_params_dict(), override)))


def assert_untouched(work: Path, before: dict, *except_inputs: str):
    after = snapshot(work, *OUTPUT_DIRS)
    for path in except_inputs:  # the damaged input itself
        before.pop(path, None), after.pop(path, None)
    assert after == before
    assert temporaries(work) == []


# ---- the same pipeline pretrained: `pretrained_work` is a `work` holding its files -----------

@pytest.fixture(scope="module")
def pipeline_files(prepared_base, tmp_path_factory):  # noqa: F811
    """prepare's arrays and pretrain's model, as the pipeline wrote them (tiny params)."""
    work = tmp_path_factory.mktemp("untrusted")
    shutil.copytree(prepared_base, work, dirs_exist_ok=True)
    run_main(work, *PRETRAIN)
    return work


@pytest.fixture(name="work")
def pretrained_work(pipeline_files, tmp_path, monkeypatch):  # noqa: F811
    """`work` where the tests read back what pretrain wrote: a copy of pipeline_files."""
    monkeypatch.delenv("TRANSFERLAB_DEBUG", raising=False)
    dst = tmp_path / "work"
    shutil.copytree(pipeline_files, dst)
    return dst


# ---- image folders ---------------------------------------------------------------------------

def image_folder(root: Path, classes: dict[str, int], seed: int = 0, size: int = 12) -> Path:
    """<root>/<class>/<i>.png: `classes` maps a name to its image count; distinct random images,
    ink on a blank 2-pixel border (the default framing's premise, which prepare checks)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
            pixels[:2], pixels[-2:], pixels[:, :2], pixels[:, -2:] = 0, 0, 0, 0
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root
