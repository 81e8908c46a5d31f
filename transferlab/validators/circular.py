"""Circular (reverse) validation (Bruzzone & Marconcini, "Domain adaptation problems: a DASVM
classification technique and a circular validation strategy", TPAMI 2010; Zhong et al.,
ECML 2010): label the target anchors with the model's own predictions, fit a classifier on
the target features with those labels, and score how well it labels the source validation
images. It asks whether the model's labelling of the target is one that leads back to the
source's classes: a labelling that is confident but wrong, or collapsed, does not. The
reverse classifier is a multinomial logistic regression on the encoder's features, randomly
projected to 64 dimensions (validators.projected) and standardised; a one-class labelling
scores the share of that class among the source images."""

from __future__ import annotations

from transferlab.validators import Validator, View, projected, sklearn_threads


def score(view: View) -> float:
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if view.source_features is None or view.target_features is None \
            or not len(view.source_features) or len(view.target_features) < 2:
        return float("nan")
    n = len(view.target_features)
    both = projected(torch.cat([view.target_features, view.source_features]))
    scaler = StandardScaler().fit(both[:n])
    labels = view.target.argmax(1).cpu().numpy()
    truth = view.source_y.cpu().numpy()
    if len(np.unique(labels)) < 2:
        return float((truth == labels[0]).mean())
    with sklearn_threads():
        reverse = LogisticRegression(max_iter=200).fit(scaler.transform(both[:n]), labels)
        predicted = reverse.predict(scaler.transform(both[n:]))
    return float((predicted == truth).mean())


VALIDATORS = (Validator("circular", "circular", "a classifier fit on the model's own target "
                        "labels that labels the source validation images right",
                        "Bruzzone & Marconcini, TPAMI 2010", "O(n D K) a logistic fit", score),)
