import pytest
import torch

from transferlab.io import load_state_dict, save_state_dict
from transferlab.models import (Architecture, Classifier, SmallCNN, classifier_from_state,
                                copy_blocks, model_metadata)


def test_shapes_and_block_names():
    model = Classifier(SmallCNN(1, [4, 8, 16]), num_classes=10)
    assert model.encoder.block_names == ["block1", "block2", "block3"]
    logits = model(torch.rand(5, 1, 16, 16))
    assert logits.shape == (5, 10) and torch.isfinite(logits).all()
    assert model.encoder(torch.rand(2, 1, 8, 8)).shape == (2, 16)


def test_copy_blocks_copies_bit_for_bit_and_names_every_tensor():
    torch.manual_seed(0)
    src, dst = SmallCNN(1, [4, 8, 8]), SmallCNN(1, [4, 8, 8])
    src.block("block1")[1].running_mean.add_(1.5)  # BN statistics travel too
    copied = copy_blocks(dst, src, ["block1", "block2"])
    assert copied == [k for k in src.state_dict() if k.startswith(("blocks.block1.", "blocks.block2."))]
    for key in copied:
        assert torch.equal(dst.state_dict()[key], src.state_dict()[key])
    assert not torch.equal(dst.block("block3")[0].weight, src.block("block3")[0].weight)


def test_copy_blocks_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        copy_blocks(SmallCNN(1, [4, 8]), SmallCNN(1, [6, 8]), ["block1"])


def test_saved_model_gives_the_same_outputs_and_the_same_bytes(tmp_path):
    torch.manual_seed(0)
    model = Classifier(SmallCNN(1, [4, 8]), num_classes=3).eval()
    meta = model_metadata(Architecture("small_cnn", 1, (4, 8)), ["a", "b", "c"])
    save_state_dict(tmp_path / "a.safetensors", model.state_dict(), meta)
    save_state_dict(tmp_path / "b.safetensors", model.state_dict(), meta)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    loaded, classes = classifier_from_state(*load_state_dict(tmp_path / "a.safetensors"))
    assert classes == ["a", "b", "c"]
    loaded.eval()
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))


def test_resnet18_blocks_and_shapes_for_small_and_standard_inputs():
    from transferlab.models import ResNet18

    small = ResNet18(1, small_input_stem=True)
    assert small.block_names == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert small(torch.rand(2, 1, 16, 16)).shape == (2, 512)
    assert ResNet18(3, small_input_stem=False)(torch.rand(2, 3, 32, 32)).shape == (2, 512)


def _torchvision_resnet18_file(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    reference = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # the format torchvision's weights files use
    return reference, path


def test_local_resnet18_weights_are_copied_by_name_and_checked_by_shape(tmp_path):
    from transferlab.models import ResNet18, load_pretrained
    from transferlab.source import read_weights

    reference, path = _torchvision_resnet18_file(tmp_path)
    encoder = ResNet18(3, small_input_stem=False)
    copied, skipped = load_pretrained(encoder, read_weights("resnet18", str(path))[0])
    assert "conv1.weight" in copied and "layer4.1.bn2.running_var" in copied
    assert skipped == ["fc.weight (the ImageNet head: replaced)", "fc.bias (the ImageNet head: replaced)"]
    assert torch.equal(encoder.block("layer3")[0].conv1.weight, reference.layer3[0].conv1.weight)
    x = torch.rand(2, 3, 32, 32)
    reference.eval(), encoder.eval()
    expected = torch.flatten(reference.avgpool(reference.layer4(reference.layer3(reference.layer2(
        reference.layer1(reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))), 1)
    torch.testing.assert_close(encoder(x), expected)

    small = ResNet18(3, small_input_stem=True)  # a 3x3 stem cannot take the 7x7 weights
    copied, skipped = load_pretrained(small, read_weights("resnet18", str(path))[0])
    assert "conv1.weight (shape (64, 3, 7, 7), here (64, 3, 3, 3))" in skipped
    assert "layer1.0.conv1.weight" in copied


def test_weights_that_are_not_a_resnet18_are_refused(tmp_path):
    from transferlab.errors import UserError
    from transferlab.models import ResNet18, load_pretrained
    from transferlab.source import read_weights

    path = tmp_path / "other.pth"
    torch.save({"encoder.w": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="no tensor of the weights file matches a resnet18"):
        load_pretrained(ResNet18(3, False), read_weights("resnet18", str(path))[0])
    (tmp_path / "pickle.pth").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="is not a torch weights file"):
        read_weights("resnet18", str(tmp_path / "pickle.pth"))
    with pytest.raises(UserError, match="not found: give a state dict in torchvision's format"):
        read_weights("resnet18", str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("size", [8, 16, 28])
def test_the_flatten_head_exports_to_onnx_at_any_input_size(size):
    """adaptive pooling to 4x4 from a 2x2 (8 px) or 7x7 (28 px) map: ONNX has no such op, so
    grid_pool computes the same windows as a matrix product; onnxruntime agrees with torch."""
    import onnxruntime

    from transferlab.export import onnx_bytes
    from transferlab.models import Classifier, SmallCNN, grid_pool

    x = torch.randn(2, 3, 7, 5)
    torch.testing.assert_close(grid_pool(x, 4), torch.nn.functional.adaptive_avg_pool2d(x, 4))
    torch.manual_seed(0)
    model = Classifier(SmallCNN(1, [4, 8, 8], "batch", "flatten"), 10).eval()
    session = onnxruntime.InferenceSession(onnx_bytes(model, (1, size, size), {}),
                                           providers=["CPUExecutionProvider"])
    images = torch.rand(3, 1, size, size)
    theirs = session.run(None, {"image": images.numpy()})[0]
    assert abs(theirs - model(images).detach().numpy()).max() < 1e-5
