"""Transferability scores: hand-computed cases, the papers' properties, and the extract wiring."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from transferlab.source import feature_diagnostics
from transferlab.transferability import (SCORES, hscore, hscore_shrunk, leep, logme,
                                         logme_evidence, logme_fit, nce, score_source,
                                         softmax_head, transferability)

K = 10
LABELS = np.repeat(np.arange(K), 15)  # 150 images, as 5 shots + 10 validation per class


def informative_features(rng, noise=0.5, dim=32):
    """Noise plus a class-dependent mean: a linear model can read the label off them."""
    return noise * rng.normal(size=(LABELS.size, dim)) + np.eye(K)[LABELS] @ rng.normal(size=(K, dim))


# ---- hand-computed cases -------------------------------------------------------------------

def test_hscore_by_hand():
    # f = 0, 2, 4, 6 with labels 0, 0, 1, 1: cov f = 20/3; E[f|y] = 1, 1, 5, 5: cov = 16/3
    assert hscore(np.array([[0.0], [2], [4], [6]]), np.array([0, 0, 1, 1])) == pytest.approx(0.8)


def test_nce_by_hand():
    # z = 0 holds y = 0 and 1 once each (1 bit), z = 1 only y = 1: H(Y|Z) = 1/2 ln 2
    assert nce(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])) == pytest.approx(-0.5 * math.log(2))


def test_leep_by_hand():
    # θ = (0.8, 0.2) for y=0 and (0.4, 0.6) for y=1; P(y, z) = [[.4, .1], [.2, .3]],
    # P(y|z) = [[2/3, 1/4], [1/3, 3/4]]; EEP = 0.8*2/3 + 0.2/4 = 0.4/3 + 0.6*3/4 = 7/12 for both
    theta = np.array([[0.8, 0.2], [0.4, 0.6]])
    assert leep(theta, np.array([0, 1])) == pytest.approx(math.log(7 / 12))


def test_logme_evidence_is_the_marginal_likelihood_and_logme_maximises_it():
    """The evidence formula against the Gaussian marginal y ~ N(0, FFᵀ/α + I/β), and the fixed
    point against nearby (α, β)."""
    rng = np.random.default_rng(0)
    f = rng.normal(size=(30, 3))
    y = f @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=30)
    evidence, alpha, beta = logme_fit(f, y)
    marginal = multivariate_normal(np.zeros(30), f @ f.T / alpha + np.eye(30) / beta).logpdf(y)
    assert evidence == pytest.approx(marginal / 30, rel=1e-9)
    assert logme_evidence(f, y, alpha, beta) == pytest.approx(evidence, rel=1e-9)
    for da, db in ((1.05, 1), (0.95, 1), (1, 1.05), (1, 0.95)):
        assert logme_evidence(f, y, alpha * da, beta * db) < evidence


# ---- known properties ----------------------------------------------------------------------

def test_features_that_encode_the_label_score_higher_than_noise():
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(LABELS.size, 32))
    good, better = informative_features(rng, noise=1.0), informative_features(rng, noise=0.2)
    for score in (logme, hscore, hscore_shrunk):
        assert score(noise, LABELS) < score(good, LABELS) < score(better, LABELS), score.__name__


def test_hscore_bounds_and_invariance():
    rng = np.random.default_rng(2)
    f = informative_features(rng)
    h = hscore(f, LABELS)
    assert 0 < h < K - 1
    mix = rng.normal(size=(32, 32))  # any invertible linear map of the features
    assert hscore(f @ mix + 3.0, LABELS) == pytest.approx(h, rel=1e-6)
    assert hscore(np.eye(K)[LABELS], LABELS) == pytest.approx(K - 1)  # the label itself


def test_shrunk_hscore_by_hand_and_against_the_plain_one():
    # one dimension: Ledoit-Wolf shrinks towards tr(cov)/D = cov itself, so α has no effect
    # on the inverse and H_α = (1 - α) H; with 1/n covariances H = (16/4) / (20/4) = 0.8
    from sklearn.covariance import ledoit_wolf

    f, y = np.array([[0.0], [2], [4], [6]]), np.array([0, 0, 1, 1])
    alpha = ledoit_wolf(f - f.mean(0), assume_centered=True)[1]
    assert hscore_shrunk(f, y) == pytest.approx((1 - alpha) * 0.8)
    # with as many images as dimensions the plain score saturates near K - 1; shrinking not
    rng = np.random.default_rng(10)
    noise = rng.normal(size=(LABELS.size, 128))
    assert hscore(noise, LABELS) > 0.85 * (K - 1)
    assert hscore_shrunk(noise, LABELS) < 0.5 * hscore(noise, LABELS)


def test_leep_and_nce_reach_zero_when_the_source_predicts_the_label():
    permuted = np.eye(K)[(LABELS * 3) % K]  # the source's classes are the target's, renamed
    assert leep(permuted, LABELS) == pytest.approx(0.0, abs=1e-12)
    assert nce(permuted.argmax(1), LABELS) == pytest.approx(0.0, abs=1e-12)


def test_uninformative_predictions_give_minus_the_label_entropy():
    labels = np.array([0, 0, 0, 1, 2, 2])
    entropy = -sum(p * math.log(p) for p in (0.5, 1 / 6, 1 / 3))
    rng = np.random.default_rng(3)
    assert leep(np.full((6, 4), 0.25), labels) == pytest.approx(-entropy)
    assert nce(np.zeros(6, dtype=int), labels) == pytest.approx(-entropy)
    assert nce(rng.integers(0, 3, 6), labels) >= -entropy - 1e-12  # H(Y|Z) <= H(Y)


def test_leep_bounds_nce_from_above():
    """Nguyen et al. 2020, Theorem 1: LEEP >= NCE + 1/n Σ log θ(xᵢ)_{zᵢ}, zᵢ = argmax θ(xᵢ)."""
    rng = np.random.default_rng(4)
    for _ in range(20):
        theta = rng.dirichlet(np.full(6, 0.3), size=LABELS.size)
        z = theta.argmax(1)
        bound = nce(z, LABELS) + np.log(theta[np.arange(LABELS.size), z]).mean()
        assert leep(theta, LABELS) >= bound - 1e-12


def test_more_informative_predictions_score_higher():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(LABELS.size, K))
    scores = []
    for strength in (0.0, 1.0, 3.0):
        theta = softmax_head(logits + strength * np.eye(K)[LABELS], np.eye(K), np.zeros(K))
        scores.append((leep(theta, LABELS), nce(theta.argmax(1), LABELS)))
    assert scores[0] < scores[1] < scores[2]


def test_degenerate_features_give_finite_low_scores():
    zeros, rng = np.zeros((LABELS.size, 8)), np.random.default_rng(6)
    probs = np.full((LABELS.size, 3), 1 / 3)
    scores = transferability(zeros, probs, LABELS)
    assert all(math.isfinite(v) for v in scores.values())
    assert scores["logme"] < logme(informative_features(rng), LABELS)
    assert scores["hscore"] == 0.0


def test_softmax_head_matches_the_torch_classifier_head():
    rng = np.random.default_rng(7)
    head = torch.nn.Linear(8, 5).double()
    f = rng.normal(size=(12, 8))
    expected = torch.softmax(head(torch.from_numpy(f)), 1).detach().numpy()
    got = softmax_head(f, head.weight.detach().numpy(), head.bias.detach().numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_score_source_uses_shots_and_validation_together():
    rng = np.random.default_rng(8)
    f = informative_features(rng).astype(np.float32)
    features = {"train_features": f[:50], "val_features": f[50:], "y_train": LABELS[:50],
                "y_val": LABELS[50:]}
    weight, bias = rng.normal(size=(K, 32)), np.zeros(K)
    scores = score_source(features, weight, bias)
    assert scores == transferability(f, softmax_head(f, weight, bias), LABELS)


def test_fisher_ratio_is_undefined_at_one_shot_per_class():
    rng = np.random.default_rng(9)
    one_shot = rng.normal(size=(K, 8))
    out = feature_diagnostics(one_shot, np.arange(K), one_shot, np.arange(K))
    assert out["fisher_ratio"] is None and "one shot" in out["fisher_ratio_undefined"]
    two_shots = feature_diagnostics(rng.normal(size=(2 * K, 8)), np.repeat(np.arange(K), 2),
                                    one_shot, np.arange(K))
    assert two_shots["fisher_ratio"] > 0 and "fisher_ratio_undefined" not in two_shots


def test_params_offer_every_score_to_recommend_by():
    from typing import get_args

    from transferlab.params import Ranking

    assert get_args(Ranking.model_fields["recommend_by"].annotation) == SCORES


def test_zero_shots_give_empty_features_and_undefined_diagnostics():
    """prepare.shots 0 (found through `dvc exp run -S prepare.shots=0`: extract crashed in
    torch.cat): no shot to embed or to build centroids from, and the scores use the val set."""
    from transferlab.source import extract_features

    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    empty = extract_features(encoder, torch.zeros(0, 1, 2, 2, dtype=torch.uint8), batch_size=8)
    assert empty.shape == (0, 3)
    rng = np.random.default_rng(3)
    val = rng.normal(size=(K, 3)).astype(np.float32)
    out = feature_diagnostics(empty, np.zeros(0, dtype=np.int64), val, np.arange(K))
    assert out["nearest_centroid_val_accuracy"] is None and out["fisher_ratio"] is None
    assert "prepare.shots 0" in out["fisher_ratio_undefined"]
    features = {"train_features": empty, "val_features": val, "y_train": np.zeros(0, np.int64),
                "y_val": np.arange(K)}
    weight, bias = rng.normal(size=(K, 3)), np.zeros(K)
    assert score_source(features, weight, bias) == transferability(
        val, softmax_head(val, weight, bias), np.arange(K))


def test_flattened_features_are_scored_on_their_channel_means():
    """small_cnn's flatten head: LogME and the H-scores read the C channel means of C x 16
    features (no 2,048-dimensional covariance from 150 images); LEEP and NCE the head as is."""
    import numpy as np

    from transferlab.models import SmallCNN
    from transferlab.transferability import feature_cells, score_source, softmax_head, transferability

    rng = np.random.default_rng(0)
    features = {"train_features": rng.normal(size=(20, 8 * 16)), "y_train": np.arange(20) % 4,
                "val_features": rng.normal(size=(40, 8 * 16)), "y_val": np.arange(40) % 4}
    weight, bias = rng.normal(size=(4, 8 * 16)), rng.normal(size=4)
    f = np.concatenate([features["train_features"], features["val_features"]])
    y = np.concatenate([features["y_train"], features["y_val"]])
    expected = transferability(f.reshape(60, 8, 16).mean(2), softmax_head(f, weight, bias), y)
    assert score_source(features, weight, bias, cells=16) == expected
    assert score_source(features, weight, bias)["leep"] == expected["leep"]
    assert feature_cells(SmallCNN(1, [4, 8], head="flatten")) == 16
    assert feature_cells(SmallCNN(1, [4, 8], head="pool")) == 1
