"""timm backbones (issue 26): the registry's timm ViTs compute timm's own features, read
timm-format checkpoint files built here (no download), and refuse what they cannot read in one
line."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import tiny_params_dict
from transferlab import backbones
from transferlab.backbones import timm_vit
from transferlab.errors import UserError
from transferlab.io import save_state_dict
from transferlab.models import (Architecture, Classifier, build_encoder, load_classifier,
                                model_metadata)
from transferlab.params import Pretrain, parse_params
from transferlab.source import pretrain

TIMM = [n for n, b in backbones.BACKBONES.items() if b.weights == "timm"]
TINY = "timm/vit_tiny_patch16_224"


def timm_model(arch: str, size: int, in_channels: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    return timm_vit.create(arch, in_channels, size).eval()


def copied_from(reference, arch: str, size: int, in_channels: int = 3):
    encoder = build_encoder(arch, in_channels, image_size=size).eval()
    own = encoder.state_dict()
    for name, tensor in reference.state_dict().items():
        if (ours := timm_vit.block_name(arch, name)) is not None:
            own[ours] = tensor
    encoder.load_state_dict(own)
    return encoder


@pytest.mark.parametrize("arch", [TINY, "timm/vit_small_patch14_dinov2"])
@pytest.mark.parametrize("size", [16, 45])  # a whole patch grid, and one timm pads
def test_features_equal_timms_own(arch, size):
    reference = timm_model(arch, size)
    encoder = copied_from(reference, arch, size)
    x = torch.rand(3, 3, size, size)
    with torch.no_grad():
        ours = encoder(x)
        theirs = reference.forward_head(reference.forward_features(x), pre_logits=True)
    assert ours.shape == (3, reference.num_features)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_every_timm_tensor_has_a_place_and_only_the_head_is_dropped():
    for arch in TIMM:
        torch.manual_seed(0)
        import timm

        full = timm.create_model(timm_vit.timm_name(arch), pretrained=False, num_classes=1000)
        own = set(build_encoder(arch, 3, image_size=224).state_dict())
        mapped = {timm_vit.block_name(arch, k) for k in full.state_dict()}
        assert mapped - {None} == own - {"input_mean", "input_std"}, arch
        assert {k for k in full.state_dict() if timm_vit.block_name(arch, k) is None} == {
            "head.weight", "head.bias"}


def tiny_source(channels: int):
    g = torch.Generator().manual_seed(0)
    images = lambda n: torch.randint(0, 256, (n, channels, 32, 32), dtype=torch.uint8, generator=g)
    return {"x_train": images(8), "y_train": torch.tensor([0, 1] * 4),
            "x_val": images(4), "y_val": torch.tensor([0, 1] * 2)}


@pytest.mark.parametrize("form", ["model.safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("channels", [3, 1])
def test_pretrain_starts_from_a_timm_checkpoint_file(tmp_path, form, channels):
    """The file holds timm's names and its classifier head (as published); every other tensor is
    copied (a grey input sums the patch kernel over RGB) and the published normalisation set."""
    import timm

    torch.manual_seed(1)
    published = timm.create_model(timm_vit.timm_name(TINY), pretrained=False, num_classes=1000)
    path = tmp_path / "my weights" / form
    path.parent.mkdir()
    state = {k: v.contiguous() for k, v in published.state_dict().items()}
    save_file(state, str(path)) if form.endswith(".safetensors") else torch.save(state, path)
    cfg = Pretrain(batch_size=8, lr=1e-12, weight_decay=0.0, shift_px=0, epochs=1, seed=0)
    model, _ = pretrain(tiny_source(channels), Architecture(TINY, channels, image_size=32), cfg,
                        str(path))
    got = model.encoder.state_dict()
    block = state["blocks.5.mlp.fc1.weight"]
    torch.testing.assert_close(got["blocks.block5.mlp.fc1.weight"], block, atol=1e-9, rtol=0)
    patch = state["patch_embed.proj.weight"]
    expected = patch if channels == 3 else patch.sum(dim=1, keepdim=True)
    torch.testing.assert_close(got["blocks.embed.net.patch_embed.proj.weight"], expected,
                               atol=1e-9, rtol=0)
    # the published 14 x 14 position grid, resampled as timm resamples it, to 32 px's 2 x 2
    from timm.layers import resample_abs_pos_embed

    torch.testing.assert_close(got["blocks.embed.net.pos_embed"], resample_abs_pos_embed(
        state["pos_embed"], new_size=[2, 2], num_prefix_tokens=1), atol=1e-9, rtol=0)
    mean, std = timm_vit.normalisation(TINY)
    assert got["input_mean"].flatten().tolist() == pytest.approx(
        list(mean) if channels == 3 else [sum(mean) / 3])


def test_a_timm_model_file_reloads_with_the_same_logits(tmp_path):
    encoder = copied_from(timm_model(TINY, 32), TINY, 32)
    model = Classifier(encoder, 4).eval()
    path = tmp_path / "timm model.safetensors"
    save_state_dict(path, model.state_dict(),
                    model_metadata(Architecture(TINY, 3, image_size=32), list("abcd")))
    reloaded = load_classifier(path)[0].eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))


@pytest.mark.parametrize("weights, fragment", [
    ("missing", "not found: place model.safetensors from https://huggingface.co/timm/"),
    ("corrupt", "place model.safetensors from https://huggingface.co/timm/"),
    ("folder", "is a folder"),
])
def test_an_unreadable_checkpoint_is_one_line(tmp_path, weights, fragment):
    path = {"missing": tmp_path / "model.safetensors", "corrupt": tmp_path / "bad.safetensors",
            "folder": tmp_path}[weights]
    if weights == "corrupt":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    cfg = Pretrain(batch_size=8, lr=1e-3, weight_decay=0.0, shift_px=0, epochs=1, seed=0)
    with pytest.raises(UserError) as err:
        pretrain(tiny_source(3), Architecture(TINY, 3, image_size=32), cfg, str(path))
    message = str(err.value)
    assert "\n" not in message and fragment in message and "dvc repro" not in message, message


def test_a_weights_name_for_a_timm_backbone_is_refused_by_the_params_check():
    raw = tiny_params_dict(model={"arch": TINY, "weights": "DEFAULT"},
                           prepare={"image_size": 32, "channels": 3})
    with pytest.raises(Exception, match="reads its weights from a checkpoint file"):
        parse_params(raw)


def test_a_timm_classifier_exports_to_onnx_with_torchs_logits():
    import onnxruntime

    from transferlab.export import onnx_bytes

    model = Classifier(copied_from(timm_model(TINY, 40), TINY, 40), 3).eval()
    session = onnxruntime.InferenceSession(onnx_bytes(model, (3, 40, 40), {}))
    x = torch.rand(2, 3, 40, 40)
    theirs = session.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        assert abs(theirs - model(x).numpy()).max() <= 1e-4


def test_a_model_file_with_a_bad_image_size_is_refused(tmp_path):
    model = Classifier(copied_from(timm_model(TINY, 32), TINY, 32), 4)
    metadata = model_metadata(Architecture(TINY, 3, image_size=32), list("abcd"))
    path = tmp_path / "m.safetensors"
    for bad in ("", "-3", "1e9", "99999"):
        save_state_dict(path, model.state_dict(), {**metadata, "image_size": bad})
        with pytest.raises(UserError, match="no valid image_size"):
            load_classifier(path)
