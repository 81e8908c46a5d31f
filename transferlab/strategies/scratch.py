"""The control: the same architecture from a random initialisation, trained on the target shots
only. min_theta L(theta; D_target) with no source knowledge at all."""

from __future__ import annotations

import torch

from transferlab.params import Scratch
from transferlab.strategies import Inputs, Outcome, fit_on_target, new_classifier


def run(inputs: Inputs, cfg: Scratch) -> Outcome:
    torch.manual_seed(inputs.seed)
    model = new_classifier(inputs)
    model.to(inputs.target["x_train"].device)
    result = fit_on_target(model, [{"params": list(model.parameters()), "lr": cfg.lr}], inputs, cfg)
    return Outcome(model, result)
