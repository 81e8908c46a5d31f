"""LP-FT, BitFit, TENT and SHOT (issue 26): what each trains, what it leaves alone, and that the
source-free ones never train on a source image."""

import dataclasses

import pytest
import torch

from tests.test_strategies import WIDTHS, cfg, inputs, source_model, tensors  # noqa: F401 (fixtures)
from transferlab import strategies, train
from transferlab.errors import UserError
from transferlab.models import Architecture, Classifier, SmallCNN
from transferlab.strategies.shot import centroids, information_maximisation
from transferlab.strategies.tent import entropy


def zero_shots(inputs):
    t = inputs.target
    return dataclasses.replace(inputs, target=dict(t, x_train=t["x_train"][:0],
                                                   y_train=t["y_train"][:0]))


def changed(before: dict, after: dict) -> set[str]:
    return {k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])}


def test_bitfit_trains_biases_norms_and_the_head_only(inputs, source_model):
    outcome = strategies.run("bitfit", inputs, cfg("bitfit", steps=10, lr=0.05))
    moved = changed({f"encoder.{k}": v for k, v in tensors(source_model.encoder).items()},
                    tensors(outcome.model))
    assert moved, "nothing of the encoder trained"
    weights = {k for k in moved if k.endswith("weight") and "running" not in k}
    norm_weights = {n + ".weight" for n, m in outcome.model.named_modules()
                    if isinstance(m, torch.nn.BatchNorm2d)}
    assert weights <= norm_weights, f"a convolution's weights moved: {weights - norm_weights}"
    info = outcome.info
    head = sum(p.numel() for p in outcome.model.head.parameters())
    assert head < info["trainable_params"] < info["total_params"]
    assert info["trainable_share"] == pytest.approx(info["trainable_params"] / info["total_params"],
                                                    abs=1e-6)


def test_lp_ft_starts_stage_two_from_the_probe(inputs, monkeypatch):
    """Stage 1 trains the head alone (the encoder gets no optimizer group); stage 2 starts from
    the head stage 1 selected, not from a zero head."""
    calls = []
    real = train.fit

    def spy(model, groups, *args, **kwargs):
        calls.append(([p for g in groups for p in g["params"]], model.head.weight.detach().clone()))
        return real(model, groups, *args, **kwargs)

    monkeypatch.setattr("transferlab.transfer.fit", spy)
    outcome = strategies.run("lp_ft", inputs, cfg("lp_ft", probe_steps=8, steps=4))
    (probe_params, probe_start), (ft_params, ft_start) = calls
    head = set(map(id, outcome.model.head.parameters()))
    assert set(map(id, probe_params)) == head
    assert set(map(id, ft_params)) == set(map(id, outcome.model.parameters()))
    assert torch.count_nonzero(probe_start) == 0 and torch.count_nonzero(ft_start) > 0
    assert 0 <= outcome.info["probe_val_accuracy"] <= 1


@pytest.mark.parametrize("name", ["tent", "shot"])
def test_source_free_methods_never_train_on_a_source_image(name, inputs, monkeypatch):
    """Every image a training step sees comes from the target (shots or pool); the source split
    reaches only the label-free selection's scoring at 0 shots."""
    seen = []
    real = train.augment_batch

    def spy(x, *args, **kwargs):
        seen.append(x)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(train, "augment_batch", spy)
    strategies.run(name, inputs, cfg(name, steps=4))
    source = {bytes(x.numpy()) for x in inputs.source["x_train"]}
    assert seen and not any(bytes(x.numpy()) in source for batch in seen for x in batch)


def test_tent_changes_batchnorm_only(inputs, source_model):
    outcome = strategies.run("tent", inputs, cfg("tent", steps=10, lr=0.05))
    moved = changed(tensors(source_model), tensors(outcome.model))
    bn = {n for n, m in outcome.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert moved and all(k.rsplit(".", 1)[0] in bn for k in moved), moved
    assert outcome.info["trainable_params"] == sum(2 * m.num_features for m in outcome.model.modules()
                                                   if isinstance(m, torch.nn.BatchNorm2d))


def test_tent_refuses_a_model_without_batchnorm(inputs):
    inputs.source_model = Classifier(SmallCNN(1, WIDTHS, "none"), num_classes=4).eval()
    inputs.architecture = Architecture("small_cnn", 1, tuple(WIDTHS), norm="none")
    with pytest.raises(UserError, match="tent adapts BatchNorm layers.*model.norm: batch"):
        strategies.run("tent", inputs, cfg("tent"))


def test_shot_keeps_the_source_head(inputs, source_model):
    outcome = strategies.run("shot", inputs, cfg("shot", steps=6, lr=0.05, refresh_every=2))
    assert torch.equal(outcome.model.head.weight, source_model.head.weight)
    assert changed(tensors(source_model.encoder), tensors(outcome.model.encoder))


@pytest.mark.parametrize("name", ["tent", "shot"])
def test_source_free_methods_at_zero_shots_choose_label_free(name, inputs, source_model):
    outcome = strategies.run(name, zero_shots(inputs), cfg(name, steps=4))
    fit = outcome.fit
    assert fit.selection.startswith("source-val+") and fit.oracle_step is not None
    assert (fit.best_step == 0) == (fit.guard is not None or fit.picked_step == 0)
    if fit.best_step == 0:  # the guard kept the source model: bit for bit
        assert all(torch.equal(v, tensors(outcome.model)[k]) for k, v in tensors(source_model).items())


def test_entropy_and_information_maximisation_on_known_values():
    uniform = torch.zeros(4, 3)
    assert entropy(uniform).item() == pytest.approx(torch.log(torch.tensor(3.0)).item())
    # confident and diverse: each row one-hot-like on another class: IM near -ln K
    diverse = torch.eye(3) * 30
    assert information_maximisation(diverse).item() == pytest.approx(-torch.log(torch.tensor(3.0)).item(), abs=1e-4)
    # confident but collapsed: every row on class 0: IM near 0
    collapsed = torch.tensor([[30.0, 0, 0]] * 3)
    assert information_maximisation(collapsed).item() == pytest.approx(0.0, abs=1e-4)


def test_shot_centroids_recover_separated_clusters():
    torch.manual_seed(0)
    centers = torch.eye(3, 8) * 5
    labels = torch.arange(3).repeat(20)
    features = centers[labels] + 0.1 * torch.randn(60, 8)
    logits = torch.randn(60, 3) * 0.1 + 2 * torch.nn.functional.one_hot(labels, 3)  # noisy, right
    c = centroids(features, logits)
    assert ((torch.nn.functional.normalize(features, dim=1) @ c.T).argmax(1) == labels).all()
