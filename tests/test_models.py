import pytest
import torch

from transferlab.io import load_state_dict, save_state_dict
from transferlab.models import (Classifier, Encoder, classifier_from_state, copy_blocks,
                                model_metadata)


def test_shapes_and_block_names():
    model = Classifier(1, [4, 8, 16], num_classes=10)
    assert model.encoder.block_names == ["block1", "block2", "block3"]
    logits = model(torch.rand(5, 1, 16, 16))
    assert logits.shape == (5, 10) and torch.isfinite(logits).all()
    assert model.encoder(torch.rand(2, 1, 8, 8)).shape == (2, 16)


def test_copy_blocks_copies_bit_for_bit_and_names_every_tensor():
    torch.manual_seed(0)
    src, dst = Encoder(1, [4, 8, 8]), Encoder(1, [4, 8, 8])
    src.block("block1")[1].running_mean.add_(1.5)  # BN statistics travel too
    copied = copy_blocks(dst, src, ["block1", "block2"])
    assert copied == [k for k in src.state_dict() if k.startswith(("blocks.block1.", "blocks.block2."))]
    for key in copied:
        assert torch.equal(dst.state_dict()[key], src.state_dict()[key])
    assert not torch.equal(dst.block("block3")[0].weight, src.block("block3")[0].weight)


def test_copy_blocks_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        copy_blocks(Encoder(1, [4, 8]), Encoder(1, [6, 8]), ["block1"])


def test_saved_model_gives_the_same_outputs_and_the_same_bytes(tmp_path):
    torch.manual_seed(0)
    model = Classifier(1, [4, 8], num_classes=3).eval()
    meta = model_metadata(1, [4, 8], 3)
    save_state_dict(tmp_path / "a.safetensors", model.state_dict(), meta)
    save_state_dict(tmp_path / "b.safetensors", model.state_dict(), meta)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    loaded = classifier_from_state(*load_state_dict(tmp_path / "a.safetensors")).eval()
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))
