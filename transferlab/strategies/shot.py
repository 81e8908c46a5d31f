"""SHOT: source hypothesis transfer (Liang, Hu & Feng, "Do we really need to access the source
data? Source hypothesis transfer for unsupervised domain adaptation", ICML 2020).

From the source model, the head (the source hypothesis) is frozen and the encoder z solves
    min_z  CE(target shots, if any)
    + loss_weight * [ mean_x H(p(x)) - H(mean_x p(x))          information maximisation:
                      + beta * CE(p(x), y^(x)) ]                 confident, diverse, clustered
over unlabelled target batches, p = softmax of the logits. The pseudo-label y^(x) is the class
whose centroid in feature space is nearest (cosine): centroids weighted by the predictions on
`pseudo_pool` images of the pool (a seeded draw), then one k-means step with the hard labels,
recomputed every `refresh_every` steps. Source-free: the source images are never trained on
(at 0 target labels the pipeline's label-free selection still reads the source validation
split, as for every method: transferlab/selection.py).
"""

from __future__ import annotations

from pydantic import Field

from transferlab.options import (MAX_IMAGES_PER_CLASS, MAX_STEPS, MAX_WEIGHT, WHY_STEPS,
                                 WHY_WEIGHT, Adaptation)
from transferlab.search import ADAPTATION, Uniform
from transferlab.strategies import Inputs, Method, Outcome


class Options(Adaptation):
    beta: float = Field(ge=0, le=MAX_WEIGHT, description=WHY_WEIGHT)  # pseudo-label CE weight
    pseudo_pool: int = Field(ge=2, le=MAX_IMAGES_PER_CLASS, description="the centroids are "
                             "computed on at most this many pool images")
    refresh_every: int = Field(ge=1, le=MAX_STEPS, description=WHY_STEPS)


METHOD = Method("source-free adaptation",
                "SHOT: source head frozen, information maximisation + centroid pseudo-labels",
                Options, needs_labels=False,
                reads=frozenset({"source_model", "source_data", "unlabelled"}),
                search=ADAPTATION | {"beta": Uniform(0.0, 1.0)})


def information_maximisation(logits):
    """mean_x H(p(x)) - H(mean_x p(x)): low when each prediction is confident and the batch
    uses every class."""
    probs = logits.softmax(1)
    conditional = -(probs * logits.log_softmax(1)).sum(1).mean()
    marginal = probs.mean(0)
    return conditional + (marginal * marginal.clamp_min(1e-12).log()).sum()


def centroids(features, logits):
    """SHOT's class centroids (K x F, rows unit length): prediction-weighted, then one k-means
    step with the nearest-centroid labels (a class no image is nearest to keeps its first
    centroid)."""
    import torch.nn.functional as F

    feats = F.normalize(features, dim=1)
    probs = logits.softmax(1)
    first = F.normalize(probs.T @ feats, dim=1)
    hard = F.one_hot((feats @ first.T).argmax(1), probs.shape[1]).to(feats.dtype)
    counts = hard.sum(0)[:, None]
    second = F.normalize(hard.T @ feats, dim=1)
    return (second * (counts > 0) + first * (counts == 0))


def run(inputs: Inputs, cfg: Options) -> Outcome:
    import torch
    import torch.nn.functional as F

    from transferlab.train import predict_logits, set_train_mode
    from transferlab.transfer import parameter_budget, source_free
    from transferlab.validators import anchors

    pool = inputs.unlabelled
    index = anchors(len(pool), cfg.pseudo_pool, inputs.seed)
    pool = pool[index.to(pool.device)]  # a tensor, or train.DiskImages: either takes an index
    state = {"step": 0, "centroids": None, "model": None}

    def refresh():
        model = state["model"]
        model.eval()
        with torch.no_grad():
            features = predict_logits(model.encoder, pool)
            state["centroids"] = centroids(features, model.head(features))
        set_train_mode(model)

    def term(batch):
        if state["step"] % cfg.refresh_every == 0:
            refresh()
        state["step"] += 1
        with torch.no_grad():
            labels = (F.normalize(batch.target_features.float(), dim=1)
                      @ state["centroids"].T).argmax(1)
        loss = information_maximisation(batch.target_logits)
        if cfg.beta > 0:
            loss = loss + cfg.beta * F.cross_entropy(batch.target_logits, labels)
        return loss

    def encoder_of(model):
        state["model"] = model
        return list(model.encoder.parameters())

    model, result = source_free(inputs, cfg, encoder_of, term, "shot")
    return Outcome(model, result, parameter_budget(model, list(model.encoder.parameters())))
