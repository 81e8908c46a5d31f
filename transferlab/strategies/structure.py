"""Structural transfer: reuse the source architecture and its first n blocks, re-initialise the
rest, train on the target. min_{G,H} L(H(G(x)); D_target) with G's first n blocks copied.

Yosinski, Clune, Bengio & Lipson, "How transferable are features in deep neural networks?",
NeurIPS 2014: AnB (copied blocks frozen) and AnB+ (copied blocks fine-tuned).
"""

from __future__ import annotations

import torch

from transferlab.models import copy_blocks, freeze
from transferlab.params import Structure
from transferlab.strategies import Inputs, Outcome, fit_on_target, new_classifier, trainable


def run(inputs: Inputs, cfg: Structure) -> Outcome:
    torch.manual_seed(inputs.seed)
    model = new_classifier(inputs)
    names = model.encoder.block_names[:cfg.copied_blocks]
    copied = copy_blocks(model.encoder, inputs.load_source_model().encoder, names) if names else []
    if cfg.freeze_copied:
        for name in names:
            freeze(model.encoder.block(name))
    model.to(inputs.target["x_train"].device)
    result = fit_on_target(model, [{"params": trainable(model), "lr": cfg.lr}], inputs, cfg)
    return Outcome(model, result, {"copied_blocks": names, "copied_tensors": len(copied),
                                   "frozen": bool(cfg.freeze_copied and names)})
