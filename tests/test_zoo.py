"""The torchvision zoo as encoders with named blocks: weights in torchvision's own format load
by name, give torchvision's own features, carry their normalisation, and fail offline with the
file to place. No weights can be downloaded here: every weights file is built in the test from
torchvision's architecture (seeded), saved as torchvision's files are.
"""

from __future__ import annotations

import pytest
import torch

from transferlab.backbones import BACKBONES
from transferlab.errors import UserError
from transferlab.models import build_encoder, load_pretrained, set_input_normalisation
from transferlab.source import read_weights

ZOO = [name for name, b in BACKBONES.items() if b.weights == "torchvision"]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def torchvision_reference(arch: str):
    """torchvision's model (seeded random weights) with its classifier cut off, so its output
    is the feature vector our encoder must reproduce."""
    from torch import nn
    from torchvision.models import get_model

    torch.manual_seed(0)
    net = get_model(arch, weights=None).eval()
    if arch.startswith("resnet"):
        net.fc = nn.Identity()
    elif arch == "vit_b_16":
        net.heads = nn.Identity()
    elif arch.startswith("convnext"):
        net.classifier[2] = nn.Identity()  # keep its LayerNorm2d and Flatten
    else:
        net.classifier = nn.Identity()
    return net


def size_of(arch: str) -> int:
    return BACKBONES[arch].fixed_size or 64


@pytest.mark.parametrize("arch", ZOO)
def test_torchvision_weights_load_by_name_and_give_torchvisions_features(arch, tmp_path):
    reference = torchvision_reference(arch)
    path = tmp_path / f"{arch}.pth"
    torch.save(reference.state_dict(), path)  # the format of torchvision's weights files
    encoder = build_encoder(arch, 3).eval()
    assert len(encoder.block_names) == BACKBONES[arch].blocks
    state, normalisation = read_weights(arch, str(path))
    copied, skipped = load_pretrained(encoder, state)
    assert not [s for s in skipped if "head" not in s], skipped  # only the classifier is left
    assert len(copied) + len(skipped) == len(state)
    x = torch.rand(2, 3, size_of(arch), size_of(arch))
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), reference(x), rtol=1e-4, atol=1e-5)
    assert encoder(x).shape == (2, encoder.out_features)
    assert normalisation == IMAGENET  # a local file: the arch's DEFAULT weights' transforms


@pytest.mark.parametrize("arch", ["resnet50", "convnext_tiny"])
def test_block_names_cover_every_parameter(arch):
    encoder = build_encoder(arch, 3)
    names = {n for n, _ in encoder.named_parameters()}
    in_blocks = {n for n in names if n.startswith("blocks.")}
    assert names - in_blocks <= {"pool_norm.weight", "pool_norm.bias"}  # convnext's final norm
    for block in encoder.block_names:
        assert any(n.startswith(f"blocks.{block}.") for n in in_blocks)


def test_the_input_is_normalised_inside_the_model_as_the_weights_expect():
    encoder = build_encoder("mobilenet_v3_small", 3).eval()
    set_input_normalisation(encoder, *IMAGENET)
    seen = []
    encoder.blocks.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.full((1, 3, 32, 32), 0.5)
    encoder(x)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    torch.testing.assert_close(seen[0], (x - mean) / std)
    # and it is part of the state: a model file carries it to prediction and export
    assert torch.equal(encoder.state_dict()["input_mean"], mean)


def test_grey_input_sums_the_colour_filters_of_the_first_convolution(tmp_path):
    reference = torchvision_reference("resnet18")
    encoder = build_encoder("resnet18", 1).eval()
    copied, _ = load_pretrained(encoder, reference.state_dict())
    assert "conv1.weight (summed over RGB for grey input)" in copied
    grey = torch.rand(2, 1, 64, 64)
    with torch.no_grad():  # grey = R = G = B: the same response as the colour model
        torch.testing.assert_close(encoder(grey), reference(grey.expand(-1, 3, -1, -1)),
                                   rtol=1e-4, atol=1e-5)


def test_named_weights_offline_name_the_file_to_place_then_load_from_it(tmp_path, monkeypatch):
    from pathlib import Path
    from urllib.error import URLError

    from torchvision.models import MobileNet_V3_Small_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    spec = MobileNet_V3_Small_Weights.DEFAULT
    expected = tmp_path / "torch" / "hub" / "checkpoints" / Path(spec.url).name
    with pytest.raises(UserError) as err:
        read_weights("mobilenet_v3_small", "DEFAULT")
    assert str(expected) in str(err.value) and spec.url in str(err.value)
    expected.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision_reference("mobilenet_v3_small").state_dict(), expected)
    state, normalisation = read_weights("mobilenet_v3_small", "IMAGENET1K_V1")
    assert "features.0.0.weight" in state and normalisation == IMAGENET
    with pytest.raises(UserError, match="has no such weights: use one of DEFAULT, IMAGENET1K_V1"):
        read_weights("mobilenet_v3_small", "IMAGENET1K_V9")


def test_a_zoo_model_round_trips_through_a_model_file(tmp_path):
    from transferlab.io import save_state_dict
    from transferlab.models import Architecture, Classifier, load_classifier, model_metadata

    architecture = Architecture("efficientnet_b0", 3)
    model = Classifier(architecture.build(), 4).eval()
    set_input_normalisation(model.encoder, *IMAGENET)
    save_state_dict(tmp_path / "m.safetensors", model.state_dict(),
                    model_metadata(architecture, ["a", "b", "c", "d"]))
    loaded, classes = load_classifier(tmp_path / "m.safetensors")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x))
    assert classes == ["a", "b", "c", "d"]
