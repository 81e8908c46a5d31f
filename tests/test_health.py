"""The label-free health check (transferlab/health.py): a collapsed model is flagged, a healthy
one is not, bad input is one line; export's gate refuses or, when allowed, warns. The stages'
use of it (evaluate's JSON, export's refusal through its entry point, the report's banner) is
tested in test_stages.py and test_report.py."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from transferlab.errors import UserError
from transferlab.health import (MIN_MARGINAL_ENTROPY, accuracy_floor, check_health, class_prior,
                                label_entropy, nce_no_information, nce_uninformative,
                                problems, top_share_limit)

CLASSES = [str(c) for c in range(10)]


def collapsed(n: int = 100, top: int = 3, share: float = 0.9) -> np.ndarray:
    """`share` of n predictions are class `top`, the rest cycle through all ten classes."""
    rest = n - round(share * n)
    return np.r_[np.full(n - rest, top), np.arange(rest) % 10]


def test_a_model_predicting_one_class_for_90_percent_is_degenerate():
    health = check_health(collapsed(), 10, np.full(10, 0.1))
    assert health.degenerate and health.top_class == 3 and health.top_share == 0.91
    assert len(health.problems) == 2  # both rules fire
    assert health.marginal_entropy < MIN_MARGINAL_ENTROPY
    # KL(marginal || uniform prior) = ln K - H(marginal)
    assert health.kl_to_source_prior == pytest.approx(
        math.log(10) * (1 - health.marginal_entropy))
    assert health.record() == {"degenerate": True, "top_share": 0.91,
                               "marginal_entropy": round(health.marginal_entropy, 4),
                               "kl_to_source_prior": round(health.kl_to_source_prior, 4)}
    assert health.describe(CLASSES).startswith("predicts one class ('3') for 91 % of the images "
                                               "(limit 70 %); class-use entropy 0.2")


def test_a_balanced_model_is_healthy_and_matches_a_uniform_prior():
    health = check_health(np.arange(200) % 10, 10, np.full(10, 0.1))
    assert not health.degenerate and health.describe(CLASSES) == "healthy"
    assert health.top_share == 0.1 and health.marginal_entropy == pytest.approx(1.0)
    assert health.kl_to_source_prior == pytest.approx(0.0, abs=1e-12)


def test_probabilities_give_the_verdict_of_their_argmax():
    rng = np.random.default_rng(0)
    labels = collapsed()
    logits = rng.normal(size=(len(labels), 10))
    logits[np.arange(len(labels)), labels] += 10
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert check_health(probs.astype(np.float32), 10) == check_health(labels, 10)


@pytest.mark.parametrize("share, degenerate", [(0.7, True), (0.69, False)])
def test_the_top_share_limit_is_70_percent_of_ten_classes(share, degenerate):
    # a healthy entropy given, so that only the top-share rule can fire (spread over the other
    # nine classes, 70 % in one class has entropy 0.55 of ln 10: the entropy rule fires first)
    assert bool(problems(share, MIN_MARGINAL_ENTROPY + 0.1, 10)) == degenerate


def test_two_classes_fire_on_entropy_alone():
    """K = 2: the top-share limit is 1 (max(0.5, 3/2) capped), so 90/10 is caught by the
    entropy rule and 70/30 passes."""
    assert top_share_limit(2) == 1.0 and top_share_limit(4) == 0.75 and top_share_limit(10) == 0.7
    skewed = check_health(np.r_[np.zeros(90, int), np.ones(10, int)], 2)
    assert skewed.degenerate and skewed.problems == (
        "class-use entropy 0.47 of its maximum (limit 0.60)",)
    assert not check_health(np.r_[np.zeros(70, int), np.ones(30, int)], 2).degenerate
    assert check_health(np.zeros(10, int), 2).degenerate  # every image one class


def test_kl_is_left_out_when_the_source_never_has_a_predicted_class():
    prior = np.r_[0.0, np.full(9, 1 / 9)]
    health = check_health(np.arange(100) % 10, 10, prior)
    assert health.kl_to_source_prior == math.inf and "kl_to_source_prior" not in health.record()
    assert check_health(np.arange(100) % 10, 10).kl_to_source_prior is None


@pytest.mark.parametrize("predictions, k, named", [
    (np.zeros(0, int), 10, "no images to check"),
    (np.zeros((0, 10)), 10, "no images to check"),
    (np.full((4, 10), np.nan), 10, "NaN or infinite probabilities"),
    (np.r_[np.full((3, 10), 0.1), [[np.nan] * 10]], 10, "NaN or infinite probabilities"),
    (np.random.default_rng(0).normal(size=(5, 10)), 10, "not probabilities"),
    (np.full((5, 4), 0.25), 10, "pass one column per class"),
    (np.array([0, 1, 10]), 10, "class index 10 is outside 0..9"),
    (np.array([0.0, 1.0]), 10, "must be class indices"),
    (np.array([0, 1]), 1, "at least two classes"),
])
def test_bad_input_is_one_clear_line(predictions, k, named):
    with pytest.raises(UserError) as err:
        check_health(predictions, k, what="finetune on the target")
    message = str(err.value)  # "health check of <what>: <problem>: <fix>"
    assert message.startswith("health check of finetune on the target: ") or k < 2
    assert named in message and "\n" not in message


def test_class_prior_counts_the_labels():
    assert class_prior(np.array([0, 0, 1, 2]), 4).tolist() == [0.5, 0.25, 0.25, 0.0]


def test_accuracy_floor_is_chance_plus_two_standard_errors():
    assert accuracy_floor(np.arange(100) % 10, 10) == pytest.approx(0.1 + 2 * 0.03)
    # imbalanced: chance is the largest class's share (always answering it)
    assert accuracy_floor(np.r_[np.zeros(60, int), np.ones(40, int)], 2) == pytest.approx(
        0.6 + 2 * math.sqrt(0.24 / 100))


def test_nce_at_its_no_information_value_is_flagged():
    from transferlab.transferability import nce

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 15)  # 150 balanced labels: shots + validation
    assert label_entropy(y) == pytest.approx(math.log(10))
    assert nce_no_information(y, 10) == pytest.approx(-math.log(10) + 81 / 300)
    # a source that predicts one class for everything: NCE = -H(Y) exactly
    assert nce_uninformative(nce(np.zeros(150, int), y), y, 10)
    # predictions independent of the labels: above -H(Y) by chance, still flagged
    independent = nce(rng.integers(0, 10, 150), y)
    assert independent > -math.log(10) + 0.2 and nce_uninformative(independent, y, 10)
    # predictions that are the labels (NCE 0), and half of them right: informative
    assert not nce_uninformative(nce(y, y), y, 10)
    half = np.where(rng.random(150) < 0.5, y, rng.integers(0, 10, 150))
    assert not nce_uninformative(nce(half, y), y, 10)
    assert nce_uninformative(math.nan, y, 10)


def test_export_gate_refuses_warns_or_passes():
    from transferlab.export import ship_verdict

    y_val = (np.arange(100) + 5) % 10  # collapsed() is right on 9 of them
    with pytest.raises(UserError) as err:
        ship_verdict("mcc (chosen by target-val)", collapsed(), y_val, CLASSES, False)
    message = str(err.value)
    assert message.startswith("export: refusing to ship mcc (chosen by target-val) on the 100 "
                              "target val images: predicts one class ('3') for 91 %")
    assert "not clearly above chance (needs >= 0.1600)" in message
    assert "set health.allow_degenerate: true" in message and "\n" not in message
    record, warning = ship_verdict("mcc", collapsed(), y_val, CLASSES, True)
    assert record == {"degenerate": True, "top_share": 0.91, "above_chance": False}
    y_val = np.arange(100) % 10
    assert warning.startswith("warning: exporting mcc on the 100 target val images: predicts")
    assert warning.endswith("because health.allow_degenerate is true")
    # every class used, but no better than chance: refused on accuracy alone
    with pytest.raises(UserError, match=r"accuracy 0\.1000 is not clearly above chance"):
        ship_verdict("scratch", (y_val + (np.arange(100) >= 10)) % 10, y_val, CLASSES, False)
    assert ship_verdict("finetune", y_val, y_val, CLASSES, False) == (
        {"degenerate": False, "top_share": 0.1, "above_chance": True}, None)
    # no labelled validation set: the label-free check alone
    assert ship_verdict("mcc", y_val, None, CLASSES, False) == (
        {"degenerate": False, "top_share": 0.1}, None)


def test_importing_the_check_loads_no_torch():
    """The report stage imports it and starts without torch."""
    proc = subprocess.run([sys.executable, "-c", "import sys, transferlab.health; "
                           "print('torch' in sys.modules)"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
