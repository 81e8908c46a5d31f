"""The control: the same architecture from a random initialisation, trained on the target shots
only. min_theta L(theta; D_target) with no source knowledge at all."""

from __future__ import annotations

from transferlab.options import Steps
from transferlab.strategies import Inputs, Method, Outcome


class Options(Steps):
    pass


METHOD = Method("none (the control)", "random init, target shots only (the control)", Options,
                needs_labels=True)


def run(inputs: Inputs, cfg: Options) -> Outcome:
    import torch

    from transferlab.transfer import fit_on_target, new_classifier

    torch.manual_seed(inputs.seed)
    model = new_classifier(inputs)
    model.to(inputs.target["x_train"].device)
    result = fit_on_target(model, [{"params": list(model.parameters()), "lr": cfg.lr}], inputs, cfg)
    return Outcome(model, result)
