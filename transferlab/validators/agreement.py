"""Agreement of two classifiers on the same target features: the model's own head, and a
nearest-prototype classifier built from the source validation images (each class's mean
feature, cosine similarity; the prototypes of Snell et al., NeurIPS 2017, and of SHOT's
pseudo-labels, Liang et al., ICML 2020). The score is the share of target anchors on which the
two name the same class. Both read the same encoder, but only the head was fit by the
training loss: where adaptation moves the target's features towards the source's classes,
the two agree; where a method makes the head confident in a direction the source classes do
not support (entropy minimisation on a drifting encoder: TENT), they part. A cheap ensemble
of two views, no fit: O((n + m) D K)."""

from __future__ import annotations

from transferlab.validators import Validator, View


def score(view: View) -> float:
    import torch
    import torch.nn.functional as F

    if view.source_features is None or view.target_features is None \
            or not len(view.source_features) or not len(view.target_features):
        return float("nan")
    k = view.target.shape[1]
    source = F.normalize(view.source_features.float(), dim=1)
    y = view.source_y.long().to(source.device)
    sums = torch.zeros(k, source.shape[1], device=source.device).index_add_(0, y, source)
    present = torch.bincount(y, minlength=k)[:k] > 0
    prototypes = F.normalize(sums, dim=1)
    similarity = F.normalize(view.target_features.float(), dim=1) @ prototypes.T
    similarity[:, ~present] = -float("inf")  # a class no source image shows is never named
    nearest = similarity.argmax(1)
    return (nearest.cpu() == view.target.argmax(1).cpu()).float().mean().item()


VALIDATORS = (Validator("agreement", "agreement", "a head that names the class of the nearest "
                        "source class prototype of the target features",
                        "Snell et al. 2017; Liang et al. 2020", "O((n + m) D K)", score),)
