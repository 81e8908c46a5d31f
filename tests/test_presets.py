"""The dataset presets of docs/datasets.md: valid params, and each one end to end on fixtures in
the real file formats, through every stage's main() as dvc.yaml calls it (in-process, so the fixtures'
md5s can stand in for the official ones)."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest
import yaml

from tests.conftest import ROOT, merge, stage_commands, tiny_params_dict
from tests.fixtures_formats import (random_images, trust_fixture_md5s, write_cifar10, write_mnist,
                                    write_svhn, write_usps)
from tests.test_stages import run_main
from transferlab.io import load_arrays, read_metadata
from transferlab.params import parse_params
from transferlab.strategies import METHODS


def readme_presets() -> dict[str, dict]:
    """name -> params overrides, from the `dvc exp run -n NAME -S key=value ...` lines."""
    readme = (ROOT / "docs/datasets.md").read_text()
    block = readme.split("<!-- presets:start -->")[1].split("<!-- presets:end -->")[0]
    presets = {}
    for line in block.splitlines():
        if not line.startswith("dvc exp run"):
            continue
        words = shlex.split(line)
        name = words[words.index("-n") + 1]
        override: dict = {}
        for i, word in enumerate(words):
            if word == "-S":
                key, value = words[i + 1].split("=", 1)
                *parents, leaf = key.split(".")
                node = override
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = yaml.safe_load(value)
        presets[name] = override
    return presets


PRESETS = readme_presets()


def test_the_readme_lists_the_presets_of_the_issue():
    assert set(PRESETS) == {"mnist-to-usps", "svhn-to-mnist", "cifar10-split",
                            "cifar10-split-resnet18", "usps-official", "my-photos-resnet18",
                            "mnist-blend", "mnist-blend-reverse", "digits-ink",
                            "my-photos-dinov2", "my-photos-clip", "digits-noise"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_params(name):
    parse_params(merge(yaml.safe_load((ROOT / "params.yaml").read_text()), PRESETS[name]))


def write_fixtures(name: str, cache, monkeypatch) -> None:
    if name in ("mnist", "fashion_mnist"):
        write_mnist(cache, "MNIST" if name == "mnist" else "FashionMNIST", n=300)
    elif name == "usps":
        for file, n, seed in (("usps.bz2", 300, 3), ("usps.t.bz2", 40, 4)):
            images, labels = random_images(n, (16, 16), seed=seed)
            write_usps(cache, images / 127.5 - 1, labels, file)
    elif name == "svhn":
        write_svhn(cache, n=300)
        write_svhn(cache, n=40, seed=1, split="test")
    elif name == "cifar10":
        write_cifar10(cache, per_batch=120)
    trust_fixture_md5s(monkeypatch, name, cache)


def write_photos(photos) -> None:
    """A colour photo folder with train/ and test/: red, green and blue noise of any size."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for name, colour in (("red", (200, 30, 30)), ("green", (30, 200, 30)), ("blue", (30, 30, 200))):
            (photos / split / name).mkdir(parents=True)
            for i in range(count):
                size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)))  # any size
                pixels = np.clip(np.array(colour) + rng.integers(-40, 41, (size[1], size[0], 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(photos / split / name / f"{i}.jpg")


TINY_RUN = {"pretrain": {"epochs": 1}, "prepare": {"shots": 2, "target_val_per_class": 3},
            "model": {"widths": [4, 8]},
            "transfer": {n: {"steps": 3} for n, m in METHODS.items()
                         if "steps" in m.options.model_fields},
            # 3 steps on fixtures: near chance, which export's gate refuses (test_health.py)
            "health": {"allow_degenerate": True}}


@pytest.mark.parametrize("name", ["mnist-to-usps", "svhn-to-mnist", "cifar10-split"])
def test_preset_runs_every_stage_on_real_format_fixtures(name, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    params = merge(merge(tiny_params_dict(), PRESETS[name]), TINY_RUN)
    params["data"]["cache_dir"] = str(cache)
    for role in ("source", "target"):
        write_fixtures(params["data"][role]["name"], cache, monkeypatch)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for script, argv in stage_commands():
        run_main(tmp_path, script, *argv)
    scores = json.loads((tmp_path / "metrics/evaluate.json").read_text())
    expected = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["transfer"]["foreach"])
    same_classes = name != "cifar10-split"
    assert set(scores) == expected | ({"source_only"} if same_classes else set())
    adapted = [n for n in expected if not METHODS[n].needs_labels]
    # svhn and cifar10 are textured backdrops: model.norm auto builds group norm, and the
    # BatchNorm methods are skipped there too (stages/transfer.py's why_skipped)
    batch = read_metadata(tmp_path / "models/source.safetensors")["norm"] == "batch"
    assert batch == (name == "mnist-to-usps")
    assert all(scores[n].get("skipped", False) == (not same_classes or (METHODS[n].needs_batchnorm
                                                                         and not batch))
               for n in adapted)
    classes = json.loads(read_metadata(tmp_path / "data/prepared/target_test.safetensors")["classes"])
    if name == "cifar10-split":
        assert classes == ["dog", "frog", "horse", "ship", "truck"]
    x = load_arrays(tmp_path / "data/prepared/target.safetensors")["x_train"]
    size = params["prepare"]["image_size"]  # channels auto: 3 where either domain has colour
    assert x.shape[1:] == ((1 if name == "mnist-to-usps" else 3), size, size)


@pytest.mark.slow
def test_the_blend_preset_frames_both_domains_for_photos_and_checks_every_model(tmp_path):
    """`mnist-blend`, the offline hard shift, end to end with no prepare edit: auto drops the
    ink steps for both domains (no crop, no max scale, colour), the official test split is the
    target test set, and every model carries its health verdict."""
    params = merge(merge(tiny_params_dict(), PRESETS["mnist-blend"]), TINY_RUN)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for script, argv in stage_commands():
        run_main(tmp_path, script, *argv)
    scenario = json.loads((tmp_path / "metrics/scenario.json").read_text())
    assert (scenario["framing_crop_bbox"], scenario["framing_scale_max"],
            scenario["framing_channels"], scenario["official_test_split"]) == (0, 0, 3, 1)
    assert scenario["target_colour_share"] == 1 and scenario["target_full_frame_share"] > 0.5
    assert scenario["target_test"] == 1000 and scenario["framing_backdrop_textured"] == 1
    # model.norm and model.input auto on a textured backdrop: small_cnn with group norm on
    # centred input, source and target alike; export checked the ONNX copy against it
    for model in ("source", "transfer/finetune", "transfer/scratch"):
        metadata = read_metadata(tmp_path / f"models/{model}.safetensors")
        assert (metadata["norm"], metadata["input"]) == ("group", "centred")
    scores = json.loads((tmp_path / "metrics/evaluate.json").read_text())
    assert all("degenerate" in s for s in scores.values() if not s.get("skipped"))
    assert "Prepared images" in (tmp_path / "report.html").read_text()


@pytest.mark.slow
def test_the_photo_preset_runs_with_official_splits_and_imagenet_weights(tmp_path, monkeypatch):
    """`my-photos-resnet18` on a colour photo folder with train/ and test/, the CIFAR-10 source
    in its real format, and resnet18 weights in torchvision's format placed where torchvision's
    cache looks for DEFAULT (no network): every stage, export included."""
    from pathlib import Path

    import torch
    from torchvision.models import ResNet18_Weights, resnet18

    from transferlab.io import load_state_dict

    cache, photos = tmp_path / "cache", tmp_path / "photos"
    write_fixtures("cifar10", cache, monkeypatch)
    write_photos(photos)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights_file = tmp_path / "torch/hub/checkpoints" / Path(ResNet18_Weights.DEFAULT.url).name
    weights_file.parent.mkdir(parents=True)
    torch.save(resnet18(weights=None).state_dict(), weights_file)

    params = merge(merge(tiny_params_dict(), PRESETS["my-photos-resnet18"]), TINY_RUN)
    params["data"]["cache_dir"], params["data"]["target"]["root"] = str(cache), str(photos)
    params["model"]["widths"] = [32, 64, 128]  # unused by resnet18
    params["prepare"]["target_val_per_class"] = 2
    params["prepare"]["image_size"] = 64  # the preset's 224, smaller for a CPU test's time
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for script, argv in stage_commands():
        run_main(tmp_path, script, *argv)
    summary = json.loads((tmp_path / "metrics/scenario.json").read_text())
    assert summary["official_test_split"] == 1 and summary["target_test"] == 12
    state, _ = load_state_dict(tmp_path / "models/source.safetensors")
    assert torch.allclose(state["encoder.input_mean"].flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert (tmp_path / "models/export/model.onnx").is_file()


@pytest.mark.slow
def test_the_dinov2_preset_runs_from_a_timm_checkpoint_file(tmp_path, monkeypatch):
    """`my-photos-dinov2` on a colour photo folder, the CIFAR-10 source in its real format and a
    timm-format DINOv2 checkpoint (random tensors under timm's names, 37 x 37 positions as
    published at 518 px) at a path with a space: every stage, export included, offline."""
    import timm
    import torch
    from safetensors.torch import save_file

    from transferlab.io import load_state_dict

    cache, photos = tmp_path / "cache", tmp_path / "photos"
    write_fixtures("cifar10", cache, monkeypatch)
    write_photos(photos)
    torch.manual_seed(0)
    published = timm.create_model("vit_small_patch14_dinov2", pretrained=False)
    weights = tmp_path / "dinov2 weights/model.safetensors"
    weights.parent.mkdir()
    save_file({k: v.contiguous() for k, v in published.state_dict().items()}, str(weights))

    params = merge(merge(tiny_params_dict(), PRESETS["my-photos-dinov2"]), TINY_RUN)
    params["data"]["cache_dir"], params["data"]["target"]["root"] = str(cache), str(photos)
    params["model"]["weights"] = str(weights)
    params["model"]["widths"] = [32, 64, 128]  # unused by a ViT
    params["prepare"]["target_val_per_class"] = 2
    params["prepare"]["image_size"] = 28  # the preset's 224, smaller for a CPU test's time
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    for script, argv in stage_commands():
        run_main(tmp_path, script, *argv)
    state, metadata = load_state_dict(tmp_path / "models/source.safetensors")
    assert metadata["arch"] == "timm/vit_small_patch14_dinov2" and metadata["image_size"] == "28"
    assert torch.allclose(state["encoder.input_mean"].flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert state["encoder.blocks.embed.net.pos_embed"].shape == (1, 1 + 2 * 2, 384)
    summary = json.loads((tmp_path / "metrics/export.json").read_text())
    assert summary["onnx_max_abs_logit_diff"] <= 1e-4
