"""Information maximisation: the mutual information between a target image and its predicted
class, H(mean p) - mean H(p) (Shi & Sha, ICML 2012; the IM validator of Musgrave et al.,
"Benchmarking validation methods for unsupervised domain adaptation", 2022). Confident
predictions (the second term) that use every class (the first): a collapsed model scores 0,
a confident one with balanced classes ln K. Divided by ln K, so it lies in [0, 1]."""

from __future__ import annotations

import math

from transferlab.validators import Validator, View


def _entropy(p):
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def score(view: View) -> float:
    p = view.target.float().softmax(1)
    if not len(p):
        return float("nan")
    mutual = _entropy(p.mean(0)).item() - _entropy(p).mean().item()
    return mutual / math.log(max(2, p.shape[1]))


VALIDATORS = (Validator("info_max", "IM", "confident target predictions that use every class",
                        "Shi & Sha, ICML 2012; Musgrave et al. 2022", "O(n K)", score),)
