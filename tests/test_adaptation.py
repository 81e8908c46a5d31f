"""Domain adaptation: each method's loss term on known cases, and each method on tiny data with
and without target labels (0 shots: label-free selection, no target label chooses anything)."""

import dataclasses
import math

import pytest
import torch

from tests.conftest import make_images, tiny_params_dict
from transferlab import strategies
from transferlab.errors import UserError
from transferlab.models import Architecture, Classifier, SmallCNN
from transferlab.params import parse_params
from transferlab.strategies.coral import coral_loss
from transferlab.strategies.dan import mk_mmd
from transferlab.strategies.dann import (domain_loss, new_discriminator, reversal_coefficient,
                                         reverse_gradient)
from transferlab.strategies.fixmatch import pseudo_label_loss, strong_augment
from transferlab.strategies.mcc import class_confusion
from transferlab.train import soft_neighborhood_density, to_float
from transferlab.validators import VALIDATORS

WIDTHS = [4, 8, 8]
# the label-free methods that train (adabn takes no step: tests/test_strategies.py)
ADAPTATION = [n for n, m in strategies.METHODS.items()
              if not m.needs_labels and "steps" in m.options.model_fields]


@pytest.fixture
def source_model():
    torch.manual_seed(123)
    return Classifier(SmallCNN(1, WIDTHS), num_classes=4).eval()


def make_inputs(tiny_target, tiny_source, source_model, shots=True):
    target = dict(tiny_target)
    if not shots:
        target["x_train"], target["y_train"] = target["x_train"][:0], target["y_train"][:0]
    return strategies.Inputs(target=target, architecture=Architecture("small_cnn", 1, tuple(WIDTHS)),
                             num_classes=4, seed=0, source_model=source_model, source=tiny_source,
                             unlabelled=make_images(6, seed=5)[0],
                             selection=parse_params(tiny_params_dict()).selection)


def cfg(name, **override):
    raw = tiny_params_dict(model={"widths": WIDTHS}, transfer={name: {"steps": 6, **override}})
    return getattr(parse_params(raw).transfer, name)


def encoder_features(source_model, seed):
    x = to_float(make_images(4, seed=seed)[0])
    return source_model.encoder(x)


@pytest.mark.parametrize("name", ADAPTATION)
@pytest.mark.parametrize("shots", [True, False])
def test_every_adaptation_method_trains_with_and_without_labels(name, shots, tiny_target,
                                                                tiny_source, source_model):
    inputs = make_inputs(tiny_target, tiny_source, source_model, shots)
    outcome = strategies.run(name, inputs, cfg(name))
    logits = outcome.model(to_float(tiny_target["x_val"]))
    assert logits.shape == (len(tiny_target["x_val"]), 4) and torch.isfinite(logits).all()
    fit = outcome.fit
    assert all(math.isfinite(r["train_loss"]) for r in fit.history)
    if shots:
        assert fit.selection == "target-val" and fit.oracle_step is None
    else:  # no target label chose: source val + SND did, target val only recorded (oracle)
        label = VALIDATORS[inputs.selection.validator].label  # params.yaml's selection
        assert fit.selection == f"source-val+{label}" and fit.oracle_step is not None
        # every validator at every evaluation and for the starting model, a candidate itself
        assert fit.start["step"] == 0 and fit.candidates()[1:] == fit.history
        assert all(set(VALIDATORS) <= set(r) for r in fit.candidates())
        assert fit.best_step in {r["step"] for r in fit.candidates()}


@pytest.mark.parametrize("name", ADAPTATION)
def test_the_adaptation_term_reaches_the_encoder(name, tiny_target, tiny_source, source_model,
                                                 monkeypatch):
    """The gradient of the term alone, taken inside the loop at the second step (DANN's reversal
    starts at 0), reaches the encoder's parameters."""
    from transferlab import train

    grads = {}
    original = train.Adapt

    def spy(x, encoder, head, term, weight):
        def probed(batch):
            value = term(batch)
            assert value.ndim == 0 and torch.isfinite(value)
            if not grads and batch.progress > 0:
                params = [p for p in encoder.parameters() if p.requires_grad]  # tent: BN only
                g = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
                grads["total"] = sum(float(v.abs().sum()) for v in g if v is not None)
            return value
        return original(x, encoder, head, probed, weight)

    monkeypatch.setattr("transferlab.transfer.Adapt", spy)
    kwargs = {"threshold": 0.01} if name == "fixmatch" else {}  # confident enough to count
    strategies.run(name, make_inputs(tiny_target, tiny_source, source_model, shots=False),
                   cfg(name, **kwargs))
    assert grads["total"] > 0


def test_coral_is_zero_for_equal_statistics_and_grows_with_the_difference(source_model):
    f = encoder_features(source_model, 1)
    assert coral_loss(f, f).item() == pytest.approx(0, abs=1e-7)
    assert coral_loss(f, 3 * f).item() > coral_loss(f, 1.5 * f).item() > 0


def test_mmd_is_small_within_a_domain_and_large_across_a_shift():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 8, generator=gen), torch.randn(64, 8, generator=gen)
    assert abs(mk_mmd(a, b).item()) < 0.1 < mk_mmd(a, b + 3).item()
    assert mk_mmd(a, a).item() == pytest.approx(0, abs=1e-6)


def test_gradient_reversal_is_identity_forward_and_negated_backward():
    x = torch.randn(5, 3, requires_grad=True)
    y = reverse_gradient(x, 0.7)
    assert torch.allclose(y, x)
    y.sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, -0.7))
    assert reversal_coefficient(0.0) == 0 and 0.99 < reversal_coefficient(1.0) < 1


def test_dann_domain_loss_is_2_ln2_for_an_undecided_discriminator():
    disc = new_discriminator(8)
    torch.nn.init.zeros_(disc[2].weight)
    torch.nn.init.zeros_(disc[2].bias)
    loss = domain_loss(disc, torch.randn(6, 8), torch.randn(6, 8), 1.0)
    assert loss.item() == pytest.approx(2 * math.log(2), rel=1e-6)


def test_mcc_is_zero_without_confusion_and_positive_with_it():
    confident = torch.eye(4) * 50  # every sample sure of its own class
    assert class_confusion(confident, 2.5).item() == pytest.approx(0, abs=1e-6)
    uniform = torch.zeros(8, 4)
    assert class_confusion(uniform, 2.5).item() == pytest.approx(0.75, abs=1e-6)  # (K-1)/K


def test_fixmatch_uses_only_confident_pseudo_labels():
    weak = torch.tensor([[10.0, 0, 0], [0.1, 0, 0]])  # sure of class 0; unsure
    strong = torch.tensor([[0.0, 5, 0], [0.0, 5, 0]])
    loss = pseudo_label_loss(weak, strong, 0.95)
    expected = torch.nn.functional.cross_entropy(strong[:1], torch.tensor([0])) / 2
    assert loss.item() == pytest.approx(expected.item())
    assert pseudo_label_loss(weak, strong, 0.99999).item() == 0


def test_strong_augmentation_keeps_shape_and_range_and_is_seeded():
    x = to_float(make_images(3, seed=0)[0])
    a = strong_augment(x, torch.Generator().manual_seed(1))
    b = strong_augment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, x)


def test_snd_on_known_cases():
    """Four tight clusters of 8: each sample's neighbourhood is its 7 cluster mates, equally near
    -> entropy ln 7. Everything collapsed into one cluster is densest of all, ln 31: why the
    selection never uses SND without the source-accuracy guard."""
    clusters = torch.eye(4).repeat(8, 1) * 20
    assert soft_neighborhood_density(clusters) == pytest.approx(math.log(7), rel=1e-4)
    collapsed = torch.zeros(32, 4)
    assert soft_neighborhood_density(collapsed) == pytest.approx(math.log(31), rel=1e-4)


def test_no_pool_label_reaches_training(tiny_target, tiny_source, source_model):
    """The unlabelled pool is images only: the Inputs have no place for its labels, and the same
    images with any labels they might have had give the same model bit for bit."""
    inputs = make_inputs(tiny_target, tiny_source, source_model, shots=False)
    assert inputs.unlabelled.dtype == torch.uint8 and inputs.unlabelled.ndim == 4
    a = strategies.run("dann", inputs, cfg("dann")).model.state_dict()
    b = strategies.run("dann", dataclasses.replace(inputs), cfg("dann")).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_empty_unlabelled_pool_is_one_clear_error(tiny_target, tiny_source, source_model):
    inputs = make_inputs(tiny_target, tiny_source, source_model)
    inputs.unlabelled = inputs.unlabelled[:0]
    with pytest.raises(UserError, match="unlabelled target pool has fewer than 2 images"):
        strategies.run("coral", inputs, cfg("coral"))


@pytest.mark.parametrize("keep", [False, True])
def test_a_guard_no_checkpoint_clears_ships_the_source_model_bit_for_bit(
        tiny_target, tiny_source, source_model, keep):
    """0 shots, a guard margin no adapted checkpoint can clear: fit returns the starting (source)
    model's weights, says why, and still records the validators' pick and the oracle; with
    keep_checkpoints (the study) every candidate's weights are kept, the source model's first."""
    import dataclasses

    inputs = make_inputs(tiny_target, tiny_source, source_model, shots=False)
    inputs = dataclasses.replace(inputs, keep_checkpoints=keep, selection=inputs.selection.model_copy(
        update={"guard": ["snd", "info_max"], "guard_margin": 100.0}))
    outcome = strategies.run("coral", inputs, cfg("coral"))
    fit = outcome.fit
    assert fit.best_step == 0 and fit.guard and fit.picked_step is not None
    source = source_model.state_dict()
    assert all(torch.equal(v, outcome.model.state_dict()[k]) for k, v in source.items())
    if keep:
        assert list(fit.checkpoints) == [r["step"] for r in fit.candidates()]
    else:
        assert fit.checkpoints is None
