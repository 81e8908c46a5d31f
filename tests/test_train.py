import pytest
import torch
import torch.nn.functional as F

from tests.conftest import make_images
from transferlab.models import Classifier, SmallCNN, freeze
from transferlab.train import (AdamW, IndexSampler, augment_batch, PhotoAugment, Stream, cosine_lr, fit, photo_batch,
                               photo_boxes, shift_batch, to_float)


def test_shift_batch_moves_pixels_and_keeps_shape():
    x = torch.zeros(64, 1, 5, 5)
    x[:, 0, 2, 2] = 1
    gen = torch.Generator().manual_seed(0)
    out = shift_batch(x, 1, gen)
    assert out.shape == x.shape and (out.sum(dim=(1, 2, 3)) == 1).all()
    assert (out[:, 0, 2, 2] == 0).any()  # some images moved
    assert shift_batch(x, 0, gen) is x


def test_photo_batch_crops_and_flips_each_image_on_its_own():
    """Per image: a crop box (zoom), a flip or not; a crop of the whole image unflipped is
    the identity, a crop of a constant image stays that constant, same seed, same batch."""
    ramp = torch.arange(32.0).repeat(32, 1)[None, None] / 31  # left 0 -> right 1, every row
    x = ramp.repeat(256, 3, 1, 1)
    out = photo_batch(x, PhotoAugment(0.08, True), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    left, right = out[:, 0, 16, 0], out[:, 0, 16, -1]
    flipped = left > right
    assert 0.35 < flipped.float().mean() < 0.65  # about half mirrored
    span = (right - left).abs()
    assert span.min() < 0.6 and span.max() > 0.9  # small and large crops, each its own
    again = photo_batch(x, PhotoAugment(0.08, True), torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    # min_scale 1 and no flip: the whole image, resampled onto itself
    whole = photo_batch(x, PhotoAugment(1.0, False), torch.Generator().manual_seed(1))
    same = (whole - x).abs().amax(dim=(1, 2, 3)) < 1e-6
    assert same.float().mean() > 0.9  # a box of the whole image (all but near-square ratios)
    grey = torch.full((8, 1, 16, 16), 0.25)
    assert torch.allclose(photo_batch(grey, PhotoAugment(), torch.Generator().manual_seed(2)),
                          grey)


def test_photo_batch_is_torchvision_resized_crop_and_flip_per_image():
    """Each image: torchvision's resized_crop of its own box (antialiased bilinear, as
    RandomResizedCrop on a tensor), then its flip, from the same random draws."""
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(12, 3, 40, 30)
    aug = PhotoAugment(0.08, True)
    out = photo_batch(x, aug, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    boxes = photo_boxes(12, 40, 30, aug, gen)
    flips = torch.rand(12, generator=gen) < 0.5
    assert len({tuple(b) for b in boxes}) == 12 and 0 < flips.sum() < 12
    for i, (top, left, h, w) in enumerate(boxes):
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 30
        want = TF.resized_crop(x[i], top, left, h, w, [40, 30], antialias=True)
        want = TF.horizontal_flip(want) if flips[i] else want
        assert torch.allclose(out[i], want, atol=1e-6), f"image {i}, box {(top, left, h, w)}"
    assert photo_batch(torch.rand(0, 3, 8, 8), aug, gen).shape == (0, 3, 8, 8)  # no images
    assert photo_batch(torch.rand(2, 1, 1, 1), aug, gen).shape == (2, 1, 1, 1)  # one pixel


def test_photo_batch_of_uint8_is_torchvision_on_uint8_and_rounds_the_same_off_the_cpu(
        monkeypatch):
    """uint8 in, uint8 out: per image exactly torchvision's resized_crop of a uint8 tensor (+
    flip) on the CPU; where the resize takes floats only (CUDA), resampled in float32 and
    rounded, within one level of it. Same draws as from floats."""
    from torchvision.transforms.v2 import functional as TF

    from transferlab import train

    x = torch.randint(0, 256, (12, 3, 40, 30), dtype=torch.uint8)
    aug = PhotoAugment(0.08, True)
    out = photo_batch(x, aug, torch.Generator().manual_seed(3))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    assert out.is_contiguous(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(3)
    boxes = photo_boxes(12, 40, 30, aug, gen)
    flips = torch.rand(12, generator=gen) < 0.5
    for i, (top, left, h, w) in enumerate(boxes):
        want = TF.resized_crop(x[i], top, left, h, w, [40, 30], antialias=True)
        want = TF.horizontal_flip(want) if flips[i] else want
        assert torch.equal(out[i], want), f"image {i}, box {(top, left, h, w)}"
    as_float = photo_batch(x.float() / 255, aug, torch.Generator().manual_seed(3))
    assert (as_float * 255 - out.float()).abs().max() < 1.001  # fixed-point weights: 1 level
    monkeypatch.setattr(train, "uint8_resize_on", lambda device: False)
    in_float = photo_batch(x, aug, torch.Generator().manual_seed(3))
    assert in_float.dtype == torch.uint8
    assert (in_float.int() - out.int()).abs().max() <= 1


def test_augment_batch_works_on_uint8_and_hands_out_floats():
    """A translation of the uint8 pixels is the translation of their floats, bit for bit; the
    batch comes out as to_float would give it."""
    x = torch.randint(0, 256, (64, 1, 16, 16), dtype=torch.uint8)
    out = augment_batch(x, 2, None, torch.Generator().manual_seed(0))
    want = shift_batch(to_float(x), 2, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and torch.equal(out, want)
    assert out.is_contiguous(memory_format=torch.channels_last)
    photo = augment_batch(x.expand(-1, 3, -1, -1), 0, PhotoAugment(), torch.Generator())
    assert photo.dtype == torch.float32 and 0 <= photo.min() and photo.max() <= 1


def test_cosine_schedule_warms_up_then_decays_to_zero():
    lrs = [cosine_lr(s, 100, 1.0) for s in range(100)]
    assert lrs[0] < lrs[4] == 1.0 and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_sampler_visits_every_index_once_per_pass():
    sampler = IndexSampler(10, 5, torch.Generator().manual_seed(0))
    assert sorted(torch.cat([sampler.next(), sampler.next()]).tolist()) == list(range(10))


def _fit(model, x, y, steps=30, seed=0):
    return fit(model, [{"params": [p for p in model.parameters() if p.requires_grad], "lr": 0.01}],
               [Stream(x, y, model)], (x, y, model), steps=steps, batch_size=16,
               weight_decay=0.0, shift_px=0, seed=seed)


def test_fit_learns_and_selects_on_validation():
    torch.manual_seed(0)
    x, y = make_images(8)
    model = Classifier(SmallCNN(1, [8, 8]), 4)
    result = _fit(model, x, y)
    assert result.best_val_accuracy == 1.0
    assert len(result.history) == 30 and result.history[-1]["step"] == 30
    assert (model(to_float(x)).argmax(1) == y).float().mean() == 1.0


def test_same_seed_gives_the_same_weights_bit_for_bit():
    x, y = make_images(8)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = Classifier(SmallCNN(1, [8, 8]), 4)
        _fit(model, x, y, steps=10)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_adamw_is_torchs_adamw_bit_for_bit():
    """train.AdamW skips torch's compile guards, nothing else: per-group learning rates set
    between steps (as the schedule does), weight decay, a state_dict round trip mid-run."""
    def run(optimizer_class):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
        optimizer = optimizer_class([{"params": model[0].parameters(), "lr": 0.01},
                                     {"params": model[2].parameters(), "lr": 0.003}],
                                    weight_decay=0.05)
        for step in range(6):
            optimizer.param_groups[1]["lr"] = 0.003 / (1 + step)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(torch.randn(8, 5)), torch.randint(0, 3, (8,))).backward()
            optimizer.step()
            if step == 2:
                optimizer.load_state_dict(optimizer.state_dict())
        assert torch.is_grad_enabled()
        return [p.detach() for p in model.parameters()]

    ours, torchs = run(AdamW), run(torch.optim.AdamW)
    assert all(torch.equal(a, b) for a, b in zip(ours, torchs))


def test_training_does_not_load_torch_dynamo():
    """torch.optim's compile guards import torch._dynamo (1.5-2 s per training stage); fit's
    optimizer avoids them. In a fresh process: this one may have loaded it already."""
    import subprocess
    import sys

    code = """
import sys, torch
from transferlab.models import Classifier, SmallCNN
from transferlab.train import Stream, fit
torch.manual_seed(0)
x, y = torch.randint(0, 256, (32, 1, 8, 8), dtype=torch.uint8), torch.arange(32) % 4
model = Classifier(SmallCNN(1, [8, 8]), 4)
fit(model, [{"params": list(model.parameters()), "lr": 0.01}], [Stream(x, y, model)],
    (x, y, model), steps=3, batch_size=16, weight_decay=0.01, shift_px=1, seed=0)
assert "torch._dynamo" not in sys.modules, "training imported torch._dynamo"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_frozen_block_keeps_weights_and_batchnorm_statistics():
    torch.manual_seed(0)
    x, y = make_images(8)
    model = Classifier(SmallCNN(1, [8, 8]), 4)
    freeze(model.encoder.block("block1"))
    before = {k: v.clone() for k, v in model.encoder.block("block1").state_dict().items()}
    _fit(model, x, y, steps=5)
    after = model.encoder.block("block1").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(model.encoder.block("block2")[0].weight,
                           Classifier(SmallCNN(1, [8, 8]), 4).encoder.block("block2")[0].weight)


def test_make_deterministic_sets_torch_flag_without_loading_inductor():
    """The flag torch.use_deterministic_algorithms sets, without its 1-2 s import of
    torch._inductor (in a fresh process: this one may have loaded it already). The flag acts:
    deterministic mode fills uninitialised memory (torch.empty) with NaN."""
    import subprocess
    import sys

    code = """
import sys, torch
from transferlab.train import make_deterministic
make_deterministic(0)
assert torch.are_deterministic_algorithms_enabled()
assert not torch.is_deterministic_algorithms_warn_only_enabled()
assert torch.empty(64).isnan().all()
assert "torch._inductor" not in sys.modules, "make_deterministic imported torch._inductor"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_fit_refuses_zero_steps_with_a_clear_error():
    x, y = make_images(4)
    model = Classifier(SmallCNN(1, [8, 8]), 4)
    with pytest.raises(ValueError, match="steps=0: train for at least one step"):
        _fit(model, x, y, steps=0)
