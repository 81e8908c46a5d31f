"""DANN: domain-adversarial training through a gradient reversal layer.

Ganin, Ustinova, Ajakan, Germain, Larochelle, Laviolette, Marchand & Lempitsky,
"Domain-adversarial training of neural networks", JMLR 2016. A domain discriminator D
(source = 1, target = 0) on the encoder's features f, trained through a gradient reversal
layer R (identity forward, -gamma x gradient backward), solves the saddle point
    min_{f, h} max_D  L_CE(h(f(x_s)), y_s) [+ L_CE(target shots)]
                      - lambda * [ BCE(D(f(x_s)), 1) + BCE(D(f(x_t)), 0) ]
in one minimisation; gamma ramps up as 2 / (1 + exp(-10 p)) - 1 over the progress p in [0, 1].
D: linear - ReLU - linear, as wide as the features.
"""

from __future__ import annotations

import math

from transferlab.options import Adaptation
from transferlab.search import ADAPTATION
from transferlab.strategies import Inputs, Method, Outcome


class Options(Adaptation):
    pass


METHOD = Method("domain adaptation", "DANN: domain discriminator through gradient reversal",
                Options, needs_labels=False,
                reads=frozenset({"source_model", "source_data", "unlabelled"}),
                search=ADAPTATION)


def reverse_gradient(x, coeff: float):
    """Identity in the forward pass; the gradient is multiplied by -coeff on the way back."""
    return x * -coeff + (x * (1 + coeff)).detach()


def reversal_coefficient(progress: float) -> float:
    """Ganin et al.'s schedule: 0 at the start, close to 1 at the end."""
    return 2 / (1 + math.exp(-10 * progress)) - 1


def domain_loss(discriminator, source, target, coeff: float):
    """BCE of the discriminator on reversed features: source labelled 1, target 0 (summed means)."""
    import torch
    import torch.nn.functional as F

    logits = discriminator(reverse_gradient(torch.cat([source, target]), coeff)).squeeze(1)
    labels = torch.cat([torch.ones(len(source)), torch.zeros(len(target))]).to(logits.device)
    return 2 * F.binary_cross_entropy_with_logits(logits, labels)


def new_discriminator(width: int):
    from torch import nn

    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))


def run(inputs: Inputs, cfg: Options) -> Outcome:
    from transferlab.transfer import adapt

    discriminator = new_discriminator(inputs.source_model.encoder.out_features)

    def term(b):
        return domain_loss(discriminator, b.features[0], b.target_features,
                           reversal_coefficient(b.progress))

    model, result = adapt(inputs, cfg, term, extra=discriminator)
    return Outcome(model, result)
