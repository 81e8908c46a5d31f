"""Importance-weighted validation (Sugiyama, Krauledat & Müller, "Covariate shift adaptation by
importance weighted cross validation", JMLR 2007): the source validation accuracy with each
image weighted by how target-like its features are, w = p(target | x) / p(source | x), the
density ratio DEV uses (validators/dev.py), self-normalised: sum(w * right) / sum(w). DEV
weights the loss and adds a control variate; this weights the accuracy and adds none, so one
source image the domain classifier finds very target-like can move it a lot."""

from __future__ import annotations

from transferlab.validators import Validator, View
from transferlab.validators.dev import density_ratio, usable


def score(view: View) -> float:
    if not usable(view):
        return float("nan")
    w = density_ratio(view.source_features, view.target_features)
    right = (view.source.argmax(1) == view.source_y).cpu().numpy()
    return float((w * right).sum() / w.sum())


VALIDATORS = (Validator("iwv", "IWV", "source validation accuracy, importance-weighted towards "
                        "the target", "Sugiyama et al., JMLR 2007", "O((m + n) D) a logistic fit",
                        score),)
