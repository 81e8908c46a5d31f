"""Prediction entropy, negated: confident target predictions score high (Morerio, Cavazza &
Murino, "Minimal-entropy correlation alignment for unsupervised deep domain adaptation", ICLR
2018, select by it). Divided by ln K, so it lies in [-1, 0]. A model that predicts one class
for everything with certainty scores the maximum: read it beside the class balance
(`info_max`) or the source accuracy."""

from __future__ import annotations

import math

from transferlab.validators import Validator, View


def score(view: View) -> float:
    p = view.target.float().softmax(1)
    if not len(p):
        return float("nan")
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1).mean().item()
    return -entropy / math.log(max(2, p.shape[1]))


VALIDATORS = (Validator("entropy", "entropy", "confident target predictions",
                        "Morerio et al., ICLR 2018", "O(n K)", score),)
