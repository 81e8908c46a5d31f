"""Each strategy on tiny data: what trains, what stays frozen, what is copied, what is not."""

import numpy as np
import pytest
import torch

from tests.conftest import make_images, tiny_params_dict
from transferlab.validators import VALIDATORS
from transferlab import strategies, train, transfer
from transferlab.models import Architecture, Classifier, SmallCNN
from transferlab.params import parse_params
from transferlab.source import extract_features
from transferlab.strategies.features import fit_linear_probe
from transferlab.train import to_float

WIDTHS = [4, 8, 8]


@pytest.fixture
def source_model():
    torch.manual_seed(123)
    model = Classifier(SmallCNN(1, WIDTHS), num_classes=4)
    for m in model.modules():  # non-trivial BN statistics, as after pretraining
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.fixture
def inputs(tiny_target, tiny_source, source_model):
    f = {split: extract_features(source_model.encoder, tiny_target[f"x_{split}"], 64)
         for split in ("train", "val")}
    features = {"train_features": f["train"], "val_features": f["val"],
                "y_train": tiny_target["y_train"].numpy(), "y_val": tiny_target["y_val"].numpy()}
    unlabelled = make_images(6, seed=5)[0]  # target-like images; their labels are dropped here
    return strategies.Inputs(
        target=tiny_target, architecture=Architecture("small_cnn", 1, tuple(WIDTHS)),
        num_classes=4, seed=0, source_model=source_model, source=tiny_source,
        features=features, unlabelled=unlabelled,
        selection=parse_params(tiny_params_dict()).selection)


def cfg(name, **override):
    raw = tiny_params_dict(model={"widths": WIDTHS},
                           transfer={name: override} if override else {})
    return getattr(parse_params(raw).transfer, name)


def tensors(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def check_outputs(outcome, x):
    logits = outcome.model(to_float(x))
    assert logits.shape == (len(x), 4) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", strategies.NAMES)
def test_every_strategy_returns_a_target_classifier(name, inputs, tiny_target):
    outcome = strategies.run(name, inputs, cfg(name))
    assert isinstance(outcome.model, Classifier)
    check_outputs(outcome, tiny_target["x_val"])


def test_scratch_shares_no_weights_with_the_source(inputs, source_model):
    model = strategies.run("scratch", inputs, cfg("scratch")).model
    src = source_model.state_dict()
    for key, value in model.encoder.state_dict().items():
        if value.dtype.is_floating_point and value.numel() > 1 and "running" not in key:
            assert not torch.equal(value, src[f"encoder.{key}"]), key


def test_finetune_frozen_blocks_get_no_gradient_and_stay_equal(inputs, source_model):
    outcome = strategies.run("finetune", inputs, cfg("finetune", frozen_blocks=2, steps=6))
    enc, src = outcome.model.encoder, source_model.encoder
    for name in ("block1", "block2"):
        assert all(not p.requires_grad for p in enc.block(name).parameters())
        for k, v in enc.block(name).state_dict().items():
            assert torch.equal(v, src.block(name).state_dict()[k]), (name, k)
    assert all(p.requires_grad for p in enc.block("block3").parameters())
    assert not torch.equal(enc.block("block3")[0].weight, src.block("block3")[0].weight)
    assert outcome.info["frozen_blocks"] == ["block1", "block2"]


def test_finetune_gradients_reach_trainable_blocks_only(inputs):
    model = strategies.run("finetune", inputs, cfg("finetune", frozen_blocks=1, steps=1)).model
    model.train()
    loss = model(to_float(inputs.target["x_train"])).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is None for p in model.encoder.block("block1").parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.encoder.block("block2").parameters())


def test_finetune_l2sp_pulls_towards_the_source(inputs, source_model):
    def distance(weight):
        model = strategies.run("finetune", inputs, cfg("finetune", l2sp_weight=weight, steps=20,
                                                       backbone_lr_mult=1.0, lr=0.05)).model
        return sum(((p - q) ** 2).sum() for p, q in zip(model.encoder.parameters(),
                                                       source_model.encoder.parameters()))
    assert distance(100.0) < distance(0.0)


@pytest.mark.parametrize("freeze", [True, False])
def test_structure_copies_the_first_blocks_bit_for_bit(inputs, source_model, freeze, monkeypatch):
    copied_at_start = {}
    original_fit = transfer.fit_on_target

    def spy(model, *args, **kwargs):  # the model as handed to training
        copied_at_start.update(tensors(model.encoder))
        return original_fit(model, *args, **kwargs)

    monkeypatch.setattr("transferlab.transfer.fit_on_target", spy)
    outcome = strategies.run("structure", inputs, cfg("structure", copied_blocks=2,
                                                      freeze_copied=freeze))
    src = source_model.encoder.state_dict()
    for key, value in copied_at_start.items():
        if key.startswith(("blocks.block1.", "blocks.block2.")):
            assert torch.equal(value, src[key]), key
    # the rest is re-initialised (BatchNorm starts at 1/0 either way: compare the convolution)
    assert not torch.equal(copied_at_start["blocks.block3.0.weight"], src["blocks.block3.0.weight"])
    end = outcome.model.encoder.state_dict()
    frozen_equal = all(torch.equal(end[k], src[k]) for k in src if k.startswith("blocks.block1."))
    assert frozen_equal == freeze
    assert outcome.info == {"copied_blocks": ["block1", "block2"], "copied_tensors": 12,
                            "frozen": freeze}


def test_structure_with_no_copied_blocks_uses_no_source(inputs):
    inputs.source_model = None  # it must not be read
    strategies.run("structure", inputs, cfg("structure", copied_blocks=0))


def test_features_keeps_the_source_encoder_and_matches_scikit_learn(inputs, source_model,
                                                                    tiny_target):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    outcome = strategies.run("features", inputs, cfg("features"))
    src = source_model.encoder.state_dict()
    assert all(torch.equal(v, src[k]) for k, v in outcome.model.encoder.state_dict().items())
    f = inputs.features
    sk = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    sk.fit(f["train_features"], f["y_train"])
    ours = outcome.model(to_float(tiny_target["x_val"])).argmax(1).numpy()
    np.testing.assert_array_equal(ours, sk.predict(f["val_features"]))


def test_linear_probe_logits_equal_scikit_learn_decision_function():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)) * [1, 2, 3, 4, 5, 6] + 3, np.arange(40) % 4
    w, b = fit_linear_probe(x, y, C=0.5)
    scaler = StandardScaler().fit(x)
    ref = LogisticRegression(C=0.5, max_iter=5000).fit(scaler.transform(x), y)
    np.testing.assert_allclose(x @ w.T + b, ref.decision_function(scaler.transform(x)), atol=1e-8)


def test_joint_trains_on_both_domains(inputs, monkeypatch):
    seen = []
    original = train.fit

    def spy(model, groups, streams, *args, **kwargs):
        seen.extend((len(s.x), s.weight) for s in streams)
        return original(model, groups, streams, *args, **kwargs)

    monkeypatch.setattr("transferlab.train.fit", spy)
    strategies.run("joint", inputs, cfg("joint", target_weight=2.5))
    assert seen == [(len(inputs.source["x_train"]), 1.0),
                    (len(inputs.target["x_train"]), 2.5)]


def test_inputs_hold_no_test_data(inputs):
    assert set(inputs.target) == {"x_train", "y_train", "x_val", "y_val"}


def test_adabn_takes_the_pools_batchnorm_statistics_and_nothing_else(inputs, source_model):
    """The first BatchNorm's running mean becomes the mean of its input over the pool (one batch
    here), every learned tensor stays the source's, and no gradient step is taken."""
    outcome = strategies.run("adabn", inputs, cfg("adabn", batch_size=64))
    source, adapted = tensors(source_model), tensors(outcome.model)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert all(torch.equal(v, adapted[k]) for k, v in source.items() if not k.endswith(stats))
    assert not torch.equal(source["encoder.blocks.block1.1.running_mean"],
                           adapted["encoder.blocks.block1.1.running_mean"])
    first_conv = source_model.encoder.blocks.block1[0]
    with torch.no_grad():
        pre_norm = first_conv(to_float(inputs.unlabelled))
    torch.testing.assert_close(adapted["encoder.blocks.block1.1.running_mean"],
                               pre_norm.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert outcome.info["recalibrated_layers"] == len(WIDTHS) and not outcome.model.training
    assert 0 <= outcome.info["val_accuracy"] <= 1  # with shots: no label-free record
    assert "validators" not in outcome.info


@pytest.mark.parametrize("margin", [0.0, 10.0])
def test_adabn_at_zero_shots_is_guarded_against_the_source_model(inputs, source_model, margin):
    """0 target labels: the recalibrated model and the source model are scored by every
    validator; a guard margin no model can clear keeps the source model's weights, bit for bit,
    and says why."""
    import dataclasses

    target = dict(inputs.target, x_train=inputs.target["x_train"][:0],
                  y_train=inputs.target["y_train"][:0])
    guarded = dataclasses.replace(inputs, target=target, selection=inputs.selection.model_copy(
        update={"guard": ["snd", "info_max"], "guard_margin": margin}))
    outcome = strategies.run("adabn", guarded, cfg("adabn", batch_size=64))
    info = outcome.info
    assert set(info["validators"]) == set(info["source_validators"]) == set(VALIDATORS)
    adapted, source = tensors(outcome.model), tensors(source_model)
    kept = all(torch.equal(v, adapted[k]) for k, v in source.items())
    if margin == 10.0:
        assert info["guard"].startswith("kept the source model") and kept
        assert info["validators"] == info["source_validators"]
    else:
        assert (info["guard"] == "accepted") != kept


def test_adabn_leaves_a_model_without_batchnorm_unchanged(inputs):
    torch.manual_seed(0)
    plain = Classifier(SmallCNN(1, WIDTHS, "none"), num_classes=4).eval()
    inputs.source_model = plain
    inputs.architecture = Architecture("small_cnn", 1, tuple(WIDTHS), norm="none")
    outcome = strategies.run("adabn", inputs, cfg("adabn"))
    assert outcome.info["recalibrated_layers"] == 0
    assert all(torch.equal(v, tensors(outcome.model)[k]) for k, v in tensors(plain).items())
