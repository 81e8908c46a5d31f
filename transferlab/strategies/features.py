"""Feature transfer: freeze the source encoder z, fit a new classifier g on its features.
min_g L(g(z(x)); D_target), with g = standardisation + multinomial logistic regression
(scikit-learn, L2 strength 1/C) fitted on features that `extract` computed once (frozen
deep features + a linear classifier: Donahue et al., "DeCAF", ICML 2014).

The fitted g is folded into a linear head on the source encoder, so the result is an ordinary
Classifier and `evaluate` treats it like every other strategy (no pickled estimator on disk).
"""

from __future__ import annotations

from pydantic import Field

from transferlab.options import Strict
from transferlab.strategies import Inputs, Method, Outcome


class Options(Strict):
    # inverse L2 strength of scikit-learn's LogisticRegression
    C: float = Field(gt=0, le=1e6, description="above that the L2 penalty is nil and the solver "
                     "does not converge")


METHOD = Method("feature transfer", "frozen source encoder + logistic regression", Options,
                needs_labels=True, reads=frozenset({"source_model", "features"}))


def fit_linear_probe(x_train, y_train, C: float):
    """Weights (classes, features) and bias (classes,) of logits = x @ W.T + b, scaler folded in;
    numpy arrays in and out."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=C, max_iter=5000).fit(scaler.transform(x_train), y_train)
    if not np.array_equal(clf.classes_, np.arange(clf.classes_.size)) or clf.classes_.size < 2:
        raise ValueError(f"need labels 0..K-1 with K >= 2 in the shots, got {clf.classes_}")
    coef, intercept = clf.coef_, clf.intercept_
    if clf.classes_.size == 2:  # one row, the logit of class 1 against class 0: the same
        coef = np.concatenate([np.zeros_like(coef), coef])  # softmax as logits (0, z)
        intercept = np.concatenate([np.zeros_like(intercept), intercept])
    weight = coef / scaler.scale_  # (x - mean) / scale @ coef.T + b, expanded
    return weight, intercept - weight @ scaler.mean_


def run(inputs: Inputs, cfg: Options) -> Outcome:
    import torch

    from transferlab.transfer import new_classifier

    feats = inputs.features
    weight, bias = fit_linear_probe(feats["train_features"], feats["y_train"], cfg.C)
    val_logits = feats["val_features"] @ weight.T + bias
    val_accuracy = float((val_logits.argmax(1) == feats["y_val"]).mean())

    model = new_classifier(inputs)
    model.encoder.load_state_dict(inputs.source_model.encoder.state_dict(), strict=True)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weight[:inputs.num_classes]))
        model.head.bias.copy_(torch.from_numpy(bias[:inputs.num_classes]))
    model.eval()
    return Outcome(model, None, {"val_accuracy": val_accuracy})
