"""Knowledge transfer by joint training: one shared encoder G, a head per domain, trained on
source and target together. min_{G,H_s,H_t} L(H_s(G(x)); D_source) + lambda L(H_t(G(x)); D_target).

Each step draws one batch from each domain. The encoder starts from a random initialisation:
what it knows of the source it learns here, not from the pretrained model.
"""

from __future__ import annotations

import torch
from torch import nn

from transferlab.models import new_head
from transferlab.params import Joint
from transferlab.strategies import Inputs, Outcome, new_classifier
from transferlab.train import Stream, fit


def run(inputs: Inputs, cfg: Joint) -> Outcome:
    torch.manual_seed(inputs.seed)
    model = new_classifier(inputs)  # its head is the target head
    source = inputs.load_source_data()
    source_head = new_head(model.encoder.out_features, int(source["y_train"].max()) + 1)
    both = nn.ModuleDict({"model": model, "source_head": source_head})
    both.to(inputs.target["x_train"].device)
    t = inputs.target
    streams = [
        Stream(source["x_train"], source["y_train"], lambda x: source_head(model.encoder(x)), 1.0),
        Stream(t["x_train"], t["y_train"], model, cfg.target_weight),
    ]
    result = fit(both, [{"params": list(both.parameters()), "lr": cfg.lr}], streams,
                 (t["x_val"], t["y_val"], model), steps=cfg.steps, batch_size=cfg.batch_size,
                 weight_decay=cfg.weight_decay, shift_px=cfg.shift_px, seed=inputs.seed)
    return Outcome(model, result)
