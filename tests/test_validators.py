"""The label-free validators (transferlab/validators/) and the choice they make
(transferlab/selection.py): known values on constructed outputs, bounded cost, and the guard."""

import math

import pytest
import torch

from transferlab import selection
from transferlab.validators import NAMES, VALIDATORS, View, anchors, score_all

K = 4


def view(target_logits, source_logits=None, source_y=None):
    if source_logits is None:
        source_logits, source_y = torch.eye(K) * 10, torch.arange(K)
    return View(target_logits, source_logits, source_y)


def confident(classes, scale=50.0):
    return torch.nn.functional.one_hot(torch.as_tensor(classes), K).float() * scale


def test_the_registry_finds_every_module_once():
    assert set(NAMES) == {"source_accuracy", "entropy", "info_max", "bnm", "snd", "cluster",
                          "dev", "iwv", "circular", "mixval", "agreement"}
    assert all(v.family == v.name for v in VALIDATORS.values())  # one validator per module
    assert len({v.label for v in VALIDATORS.values()}) == len(VALIDATORS)


def test_known_values():
    balanced = view(confident([0, 1, 2, 3] * 8))
    collapsed = view(confident([2] * 32))
    uniform = view(torch.zeros(32, K))
    assert score_all(uniform)["entropy"] == pytest.approx(-1.0)
    assert score_all(balanced)["entropy"] == pytest.approx(0.0, abs=1e-6)
    # information maximisation: ln K for confident balanced predictions, 0 once collapsed
    assert score_all(balanced)["info_max"] == pytest.approx(1.0, abs=1e-5)
    assert score_all(collapsed)["info_max"] == pytest.approx(0.0, abs=1e-5)
    assert score_all(uniform)["info_max"] == pytest.approx(0.0, abs=1e-6)
    # batch nuclear norm: K singular values sqrt(n / K) over n rows; one of sqrt(n) collapsed
    assert score_all(balanced)["bnm"] == pytest.approx(K * math.sqrt(32 / K) / 32, rel=1e-4)
    assert score_all(collapsed)["bnm"] == pytest.approx(math.sqrt(32) / 32, rel=1e-4)
    # SND: 8 exact copies per class -> entropy ln 7 (Saito et al.); collapsed: ln 31
    assert score_all(balanced)["snd"] == pytest.approx(math.log(7), rel=1e-4)
    assert score_all(collapsed)["snd"] == pytest.approx(math.log(31), rel=1e-4)
    wrong = view(confident([0]), torch.eye(K) * 10, torch.tensor([0, 1, 3, 3]))
    assert score_all(wrong)["source_accuracy"] == pytest.approx(0.75)


def test_class_cluster_agreement_on_known_clusters():
    """ClassAMI: 1 when the predicted classes are the feature clusters (whatever their names),
    about 0 for a collapsed model, nan without features."""
    torch.manual_seed(0)
    classes = torch.arange(K).repeat(8)
    centres = torch.eye(K, 16) * 10
    features = centres[classes] + 0.01 * torch.randn(len(classes), 16)
    renamed = (classes + 1) % K  # the clusters carry no class names: a permutation is as good
    assert score_all(View(confident(renamed), torch.eye(K), torch.arange(K), features)
                     )["cluster"] == pytest.approx(1.0)
    assert score_all(View(confident([2] * len(classes)), torch.eye(K), torch.arange(K), features)
                     )["cluster"] == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(score_all(view(confident(classes)))["cluster"])


def test_dev_weights_the_source_loss_towards_where_the_target_is():
    """DEV: the source validation loss where the target's features are. Half the source images
    are right (cluster A), half wrong (cluster B); a target near A scores a low risk, one near B
    a high one, and one spread like the source about the plain mean loss."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    a, b = torch.zeros(8), torch.full((8,), 4.0)
    source_x = torch.cat([a + torch.randn(40, 8), b + torch.randn(40, 8)])
    source_y = torch.cat([torch.zeros(40), torch.ones(40)]).long()
    logits = torch.cat([confident([0] * 40, 3.0), confident([2] * 40, 3.0)])  # B all wrong
    near = lambda centre: centre + torch.randn(60, 8)  # noqa: E731

    def dev(target_x):
        return score_all(View(torch.zeros(len(target_x), K), logits, source_y, target_x,
                              source_x))["dev"]

    mean_loss = F.cross_entropy(logits, source_y).item()
    assert -dev(near(a)) < 0.5 * mean_loss < 1.5 * mean_loss < -dev(near(b))
    assert -dev(source_x[torch.randperm(80)]) == pytest.approx(mean_loss, rel=0.2)
    assert math.isnan(score_all(view(confident([0, 1])))["dev"])


def test_iwv_weights_the_source_accuracy_towards_where_the_target_is():
    """IWV: the same half-right source as DEV's test; a target near the right half scores
    about 1, near the wrong half about 0, spread like the source about the plain accuracy."""
    torch.manual_seed(0)
    a, b = torch.zeros(8), torch.full((8,), 4.0)
    source_x = torch.cat([a + torch.randn(40, 8), b + torch.randn(40, 8)])
    source_y = torch.cat([torch.zeros(40), torch.ones(40)]).long()
    logits = torch.cat([confident([0] * 40, 3.0), confident([2] * 40, 3.0)])  # B all wrong

    def iwv(target_x):
        return score_all(View(torch.zeros(len(target_x), K), logits, source_y, target_x,
                              source_x), ["iwv"])["iwv"]

    assert iwv(a + torch.randn(60, 8)) > 0.85 and iwv(b + torch.randn(60, 8)) < 0.15
    assert iwv(source_x[torch.randperm(80)]) == pytest.approx(0.5, abs=0.1)
    assert math.isnan(score_all(view(confident([0, 1])), ["iwv"])["iwv"])


def clustered(n_per_class=20, dims=16, seed=0):
    """Features in K tight clusters, one per class, and their classes."""
    gen = torch.Generator().manual_seed(seed)
    classes = torch.arange(K).repeat(n_per_class)
    return torch.eye(K, dims)[classes] * 10 + 0.1 * torch.randn(len(classes), dims, generator=gen), classes


def test_circular_validation_leads_back_to_the_source_labels_only_from_a_right_labelling():
    """Circular: a target labelled right (its clusters are the source's) labels the source
    right (1.0); the same clusters under the wrong class names label it wrong (0.0); a
    collapsed labelling scores the share of its one class among the source images."""
    target_f, target_y = clustered(seed=0)
    source_f, source_y = clustered(n_per_class=5, seed=1)

    def circular(labels):
        return score_all(View(confident(labels), torch.zeros(len(source_y), K), source_y,
                              target_f, source_f), ["circular"])["circular"]

    assert circular(target_y) == pytest.approx(1.0)
    assert circular((target_y + 1) % K) == pytest.approx(0.0)
    assert circular([3] * len(target_y)) == pytest.approx(1 / K)
    assert math.isnan(score_all(view(confident(target_y)), ["circular"])["circular"])


def test_agreement_of_the_head_with_the_source_prototypes():
    """Agreement: target features in the source's clusters, named right by the head: 1.0;
    named wrong: 0.0; a class with no source image is never the prototype's answer."""
    target_f, target_y = clustered(seed=0)
    source_f, source_y = clustered(n_per_class=5, seed=1)

    def agreement(labels, keep=slice(None)):
        return score_all(View(confident(labels), torch.zeros(len(source_y[keep]), K),
                              source_y[keep], target_f, source_f[keep]),
                         ["agreement"])["agreement"]

    assert agreement(target_y) == pytest.approx(1.0)
    assert agreement((target_y + 1) % K) == pytest.approx(0.0)
    # no source image of class 0: the prototypes name the others only, so class 0's target
    # images (a quarter) cannot agree
    assert agreement(target_y, source_y != 0) == pytest.approx(1 - 1 / K)
    assert math.isnan(score_all(view(confident(target_y)), ["agreement"])["agreement"])


def test_mixval_rewards_classes_that_hold_between_clusters():
    """MixVal on images whose class is the brightest of K pixels: a model reading that pixel
    keeps the dominant image's class on every 0.55 / 0.45 mix (1.0); a model that predicts one
    class has no inter-cluster pair (0.5 at most); one that guesses at random scores low.
    Without a probe or images: NaN."""
    gen = torch.Generator().manual_seed(0)
    classes = torch.randint(0, K, (200,), generator=gen)
    images = (torch.nn.functional.one_hot(classes, K).float() * 200 + 20
              ).to(torch.uint8).view(-1, 1, 1, K)

    def mixval(probe, labels):
        return score_all(View(confident(labels), torch.eye(K), torch.arange(K), target_x=images,
                              probe=probe), ["mixval"])["mixval"]

    reads = lambda x: x.float().flatten(1)  # noqa: E731  logits = the pixels
    assert mixval(reads, classes) == pytest.approx(1.0)
    one_class = lambda x: confident([0] * len(x))  # noqa: E731
    assert mixval(one_class, [0] * 200) == pytest.approx(0.5)
    guesses = lambda x: torch.randn(len(x), K, generator=gen)  # noqa: E731
    assert mixval(guesses, classes) < 0.3
    assert math.isnan(score_all(view(confident(classes)), ["mixval"])["mixval"])


def test_label_free_scores_read_the_models_own_features_and_logits(monkeypatch):
    """What LabelFree hands the validators: the encoder's features on the anchors, and logits
    byte-identical to the model's forward (what the checkpoints are chosen by)."""
    from transferlab import train
    from transferlab.models import Classifier, SmallCNN
    from transferlab.options import Selection

    torch.manual_seed(0)
    model = Classifier(SmallCNN(1, (4, 8), "group", "flatten"), K).eval()
    target = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8)
    source = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    seen = []
    monkeypatch.setattr(train, "score_all", lambda v: seen.append(v) or {})
    cfg = Selection(validator="info_max", max_source_drop=0.02, source_free_floor=0.2,
                    pool_size=16, guard=["info_max"], guard_margin=0.01)
    train.LabelFree(source, torch.arange(6) % K, target, model, cfg, seed=1).scores()
    anchors_x = train.to_float(target[anchors(20, 16, seed=1)])
    with torch.no_grad():
        assert torch.equal(seen[0].target_features, model.encoder(anchors_x))
        assert torch.equal(seen[0].target, model(anchors_x))
        assert torch.equal(seen[0].source, model(train.to_float(source)))
        assert torch.equal(seen[0].source_features, model.encoder(train.to_float(source)))
        # mixval's probe: the same model on images of the 0-255 scale, which it does not alter
        assert torch.equal(seen[0].target_x, target[anchors(20, 16, seed=1)])
        mixed = seen[0].target_x.float()
        assert torch.equal(seen[0].probe(mixed), model(anchors_x))
        assert torch.equal(mixed, seen[0].target_x.float())


def test_empty_inputs_score_nan_not_an_error():
    empty = view(torch.zeros(0, K), torch.zeros(0, K), torch.zeros(0, dtype=torch.long))
    assert all(math.isnan(v) for v in score_all(empty).values())


def test_anchors_bound_the_cost_and_are_seeded():
    assert torch.equal(anchors(5, 10, seed=0), torch.arange(5))
    drawn = anchors(10_000, 2048, seed=3)
    assert len(drawn) == 2048 == len(set(drawn.tolist())) and torch.equal(drawn, drawn.sort().values)
    assert torch.equal(drawn, anchors(10_000, 2048, seed=3))
    assert not torch.equal(drawn, anchors(10_000, 2048, seed=4))


def rows(*scores):
    """Candidates (source model first) from (snd, info_max, source_accuracy) triples."""
    return [{"step": 10 * i, "snd": s, "info_max": m, "source_accuracy": a}
            for i, (s, m, a) in enumerate(scores)]


def test_pick_prefers_eligible_candidates_and_can_answer_do_not_adapt():
    cands = rows((1.0, 0.5, 0.95), (3.0, 0.6, 0.80), (2.0, 0.7, 0.94), (float("nan"), 0.9, 0.95))
    # 3.0 forgot the source task (0.80 < 0.95 - 0.02); NaN is never picked
    assert selection.pick(cands, "snd", 0.02) == 2
    assert selection.pick(cands, "snd", 0.5) == 1
    only_worse = rows((1.0, 0.5, 0.95), (0.5, 0.6, 0.95))
    assert selection.pick(only_worse, "snd", 0.02) == 0  # the source model itself
    shipped, picked, why = selection.decide(only_worse, "snd", 0.02, ["snd"], 0.0)
    assert (shipped, picked) == (0, 0) and "ranks the source model first" in why


def test_a_source_free_method_is_held_to_a_floor_above_chance_not_to_the_drop():
    # SHOT / TENT never train on a source image: 0.80 on source val is a drift, not forgetting;
    # 0.25 (ten classes: chance 0.1 + 0.2 = 0.3) is a model that no longer knows its classes
    cands = rows((1.0, 0.5, 0.95), (3.0, 0.6, 0.80), (4.0, 0.7, 0.25))
    floor = selection.source_floor(True, 10, 0.2)
    assert floor == pytest.approx(0.3)
    assert selection.pick(cands, "snd", 0.02) == 0  # the drop: both adapted ones fell
    assert selection.pick(cands, "snd", 0.02, floor) == 1
    assert selection.decide(cands, "snd", 0.02, ["snd"], 0.0, floor) == (1, 1, None)
    # the source model stays a candidate even below the floor (a poor source model)
    poor = rows((1.0, 0.5, 0.2), (0.5, 0.6, 0.2))
    assert selection.pick(poor, "snd", 0.02, floor) == 0
    # other methods, and a floor of null, keep the drop
    assert selection.source_floor(False, 10, 0.2) is None
    assert selection.source_floor(True, 10, None) is None


def test_label_free_runs_of_source_free_methods_carry_their_floor():
    from transferlab import train
    from transferlab.models import Classifier, SmallCNN
    from transferlab.options import Selection

    model = Classifier(SmallCNN(1, (4, 8), "group", "flatten"), K).eval()
    cfg = Selection(validator="info_max", max_source_drop=0.02, source_free_floor=0.25,
                    pool_size=16, guard=["info_max"], guard_margin=0.01)
    x, y = torch.zeros(4, 1, 8, 8, dtype=torch.uint8), torch.arange(4) % K
    assert train.LabelFree(x, y, x, model, cfg).floor() is None
    assert train.LabelFree(x, y, x, model, cfg, source_free=True).floor() == \
        pytest.approx(1 / K + 0.25)


def test_the_guard_keeps_the_source_model_unless_every_validator_agrees():
    cands = rows((1.0, 0.5, 0.95), (2.0, 0.4, 0.95))
    shipped, picked, why = selection.decide(cands, "snd", 0.02, ["snd", "info_max"], 0.0)
    assert (shipped, picked) == (0, 1) and "info_max (0.4 vs 0.5)" in why
    assert selection.decide(cands, "snd", 0.02, ["snd"], 0.0) == (1, 1, None)
    # a margin: SND must rise by more than 200 % of |1.0|
    assert selection.decide(cands, "snd", 0.02, ["snd"], 2.0)[0] == 0
    assert selection.decide(cands, "snd", 0.02, [], 0.0) == (1, 1, None)  # no guard
