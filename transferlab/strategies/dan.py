"""DAN: match source and target feature distributions by multi-kernel MMD.

Long, Cao, Wang & Jordan, "Learning transferable features with deep adaptation networks",
ICML 2015. With a family of Gaussian kernels k = sum_u beta_u k_u,
    min_theta  L_CE(source) [+ L_CE(target shots)]  +  lambda * MMD_k^2(f(X_s), f(X_t)),
    MMD_k^2 = E k(s, s') + E k(t, t') - 2 E k(s, t)
on the encoder's pooled features. Simplifications, as in common reimplementations: one adapted
layer (not fc6-fc8), the biased batch estimate, and equal weights beta over five bandwidths
2^-2..2^2 times the batch's mean squared distance (DAN learns beta by a quadratic program).
"""

from __future__ import annotations

from transferlab.options import Adaptation
from transferlab.search import ADAPTATION
from transferlab.strategies import Inputs, Method, Outcome

BANDWIDTH_MULTIPLIERS = (0.25, 0.5, 1.0, 2.0, 4.0)


class Options(Adaptation):
    pass


METHOD = Method("domain adaptation", "DAN: multi-kernel MMD between source and target features",
                Options, needs_labels=False,
                reads=frozenset({"source_model", "source_data", "unlabelled"}),
                search=ADAPTATION)


def mk_mmd(source, target):
    """Biased MMD^2 estimate with the mean of five Gaussian kernels, (n_s, d) vs (n_t, d)."""
    import torch

    both = torch.cat([source, target])
    dist = torch.cdist(both, both) ** 2  # (n, n) squared distances
    base = dist.detach().sum() / (len(both) ** 2 - len(both))  # mean off-diagonal distance
    kernel = sum(torch.exp(-dist / (base * m).clamp_min(1e-8)) for m in BANDWIDTH_MULTIPLIERS)
    kernel = kernel / len(BANDWIDTH_MULTIPLIERS)
    n = len(source)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def run(inputs: Inputs, cfg: Options) -> Outcome:
    from transferlab.transfer import adapt

    model, result = adapt(inputs, cfg, lambda b: mk_mmd(b.features[0], b.target_features))
    return Outcome(model, result)
