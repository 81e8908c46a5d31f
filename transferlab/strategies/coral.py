"""Deep CORAL: align the second-order statistics of source and target features.

Sun & Saenko, "Deep CORAL: Correlation alignment for deep domain adaptation", ECCV 2016
workshops. With C_s, C_t the (d x d) feature covariances of a source and a target batch,
    min_theta  L_CE(source) [+ L_CE(target shots)]  +  lambda * ||C_s - C_t||_F^2 / (4 d^2)
applied here to the encoder's pooled features (d = 128 by default).
"""

from __future__ import annotations

from transferlab.options import Adaptation
from transferlab.search import ADAPTATION
from transferlab.strategies import Inputs, Method, Outcome


class Options(Adaptation):
    pass


METHOD = Method("domain adaptation", "Deep CORAL: source + target feature covariances aligned",
                Options, needs_labels=False,
                reads=frozenset({"source_model", "source_data", "unlabelled"}),
                search=ADAPTATION)


def coral_loss(source, target):
    """||C_s - C_t||_F^2 / (4 d^2) for feature batches (n_s, d) and (n_t, d)."""
    def covariance(f):
        centred = f - f.mean(0, keepdim=True)
        return centred.T @ centred / max(1, len(f) - 1)

    d = source.shape[1]
    return ((covariance(source) - covariance(target)) ** 2).sum() / (4 * d * d)


def run(inputs: Inputs, cfg: Options) -> Outcome:
    from transferlab.transfer import adapt

    model, result = adapt(inputs, cfg, lambda b: coral_loss(b.features[0], b.target_features))
    return Outcome(model, result)
