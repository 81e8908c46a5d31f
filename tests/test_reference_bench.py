"""benchmarks/reference.py: the plain yardstick stays independent of transferlab, reads every
image layout the pipeline writes, and gives the same accuracy for the same seed (about 3 s)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reference.py"


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("reference_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imports_no_transferlab():
    code = (f"import runpy, sys; runpy.run_path({str(SCRIPT)!r}, run_name='x'); "
            "sys.exit(any(m.split('.')[0] == 'transferlab' for m in sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=SCRIPT.parent)


@pytest.mark.parametrize("shape", [(4, 28, 28), (4, 28, 28, 3), (4, 1, 16, 16), (4, 3, 8, 8)])
def test_inputs_are_rgb_32_in_minus_one_one(reference, shape):
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    images.flat[:2] = [0, 255]
    x = reference.to_inputs(images, 255.0)
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.99 and torch.isfinite(x).all()


def test_same_seed_same_model(reference):
    rng = np.random.default_rng(0)
    x = reference.to_inputs(rng.integers(0, 256, (100, 28, 28), dtype=np.uint8), 255.0)
    y = torch.from_numpy(rng.integers(0, 3, 100))
    runs = [reference.train_reference(x, y, 3, epochs=1, seed=s) for s in (0, 0, 1)]
    outs = [m.eval()(x) for m in runs]
    assert outs[0].shape == (100, 3) and torch.isfinite(outs[0]).all()
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    assert 0 <= reference.accuracy(runs[0], x, y) <= 1
