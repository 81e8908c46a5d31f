"""Deep embedded validation (You, Wang, Long & Jordan, "Towards accurate model selection in deep
unsupervised domain adaptation", ICML 2019): the source validation loss, importance-weighted
towards the target, as an estimate of the target loss. A logistic domain classifier on the
encoder's features (source validation images vs the target anchors, standardised) gives each
source image the density ratio w = p(target | x) / p(source | x) x m / n (the features
randomly projected to 64 dimensions first: validators.projected); the weighted losses
w * loss get DEV's control variate (eta = -Cov(w * loss, w) / Var(w)), which keeps the
estimate's variance down when a few weights dominate. The score is minus that risk: higher
is better, as for every validator. It needs labelled source validation images (any source
class the model shares) and a classifier fit per checkpoint."""

from __future__ import annotations

from transferlab.validators import Validator, View, projected, sklearn_threads


def density_ratio(source_features, target_features):
    """w_i = p(target | x_i) / p(source | x_i) x m / n for each source image x_i: a logistic
    domain classifier on the features (randomly projected, standardised), as numpy."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    both = projected(torch.cat([source_features, target_features]))
    m = len(source_features)
    x = StandardScaler().fit_transform(both)
    domain = np.r_[np.zeros(m), np.ones(len(target_features))]
    with sklearn_threads():
        p_target = LogisticRegression(max_iter=200).fit(x, domain).predict_proba(x[:m])[:, 1]
    p_target = np.clip(p_target, 1e-6, 1 - 1e-6)
    return p_target / (1 - p_target) * m / len(target_features)


def usable(view: View) -> bool:
    """Features of at least two images on each side (a domain classifier needs both)."""
    return not (view.source_features is None or view.target_features is None
                or len(view.source_features) < 2 or len(view.target_features) < 2)


def risk(source_features, source_logits, source_y, target_features) -> float:
    """DEV's estimate of the target loss."""
    import numpy as np
    import torch.nn.functional as F

    w = density_ratio(source_features, target_features)
    loss = F.cross_entropy(source_logits.float(), source_y.long(), reduction="none").cpu().numpy()
    weighted = w * loss
    var = np.var(w, ddof=1)
    eta = -np.cov(weighted, w)[0, 1] / var if var > 0 else 0.0
    return float(weighted.mean() + eta * w.mean() - eta)


def score(view: View) -> float:
    if not usable(view):
        return float("nan")
    return -risk(view.source_features, view.source, view.source_y, view.target_features)


VALIDATORS = (Validator("dev", "DEV", "low source validation loss, importance-weighted towards "
                        "the target", "You et al., ICML 2019", "O((m + n) D) a logistic fit",
                        score),)
