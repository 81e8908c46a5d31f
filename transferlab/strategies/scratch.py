"""The control: the same architecture from a random initialisation, trained on the target shots
only. min_theta L(theta; D_target) with no source knowledge at all."""

from __future__ import annotations

import torch

from transferlab.models import Classifier, new_head
from transferlab.params import Scratch
from transferlab.strategies import Inputs, Outcome, fit_on_target


def run(inputs: Inputs, cfg: Scratch) -> Outcome:
    torch.manual_seed(inputs.seed)
    model = Classifier(inputs.in_channels, inputs.widths, inputs.num_classes)
    model.head = new_head(model.encoder.out_features, inputs.num_classes)
    model.to(inputs.target["x_train"].device)
    result = fit_on_target(model, [{"params": list(model.parameters()), "lr": cfg.lr}], inputs, cfg)
    return Outcome(model, result)
