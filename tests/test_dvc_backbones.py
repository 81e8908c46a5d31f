"""A folder of the user's images as the source and a resnet18 from a local weights file, through
the real `dvc repro`."""

import pytest
import torch
from PIL import Image

from tests.conftest import tiny_params_dict
from tests.dvc_helpers import STAGES, copy_project, dvc, ran

pytestmark = pytest.mark.slow


def write_image_folder(root, per_class=8):
    """10 class folders '0'..'9' of PNGs: class c has a bright bar at row 2c (20x20, gray)."""
    g = torch.Generator().manual_seed(0)
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(20, 20, generator=g) * 60).byte()
            pixels[2 * c, :] = 255
            Image.fromarray(pixels.numpy(), mode="L").save(root / str(c) / f"{i}.png")


def test_folder_source_and_resnet18_with_local_weights(tmp_path):
    from torchvision.models import resnet18

    write_image_folder(tmp_path / "images")
    torch.manual_seed(0)
    torch.save(resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    params = tiny_params_dict(
        data={"source": {"name": "folder", "root": str(tmp_path / "images")}},
        model={"arch": "resnet18", "small_input_stem": True,
               "weights": str(tmp_path / "resnet18.pth")},
        prepare={"image_size": 8, "bottleneck_size": 0, "crop": "none"},
        pretrain={"batch_size": 32})
    repo = copy_project(tmp_path / "repo", params)
    out = dvc(repo, "repro")
    assert sorted(ran(out)) == sorted(STAGES)
    # 1 channel: the 3-channel 3x3 stem cannot take conv1; every other tensor is copied
    assert "copied 119 tensors; skipped 3: conv1.weight (shape (64, 3, 7, 7), here (64, 1, 3, 3))" in out
    assert "finetune" in (repo / "metrics/evaluate.json").read_text()
    assert "source_only" in (repo / "metrics/evaluate.json").read_text()
    assert "up to date" in dvc(repo, "status", "dvc.yaml")
