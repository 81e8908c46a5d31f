"""Knowledge transfer by joint training: one shared encoder G, a head per domain, trained on
source and target together. min_{G,H_s,H_t} L(H_s(G(x)); D_source) + lambda L(H_t(G(x)); D_target)
(multi-task learning with hard parameter sharing: Caruana, "Multitask learning", 1997).

Each step draws one batch from each domain. The encoder starts from a random initialisation:
what it knows of the source it learns here, not from the pretrained model.
"""

from __future__ import annotations

from pydantic import Field

from transferlab.options import MAX_WEIGHT, WHY_WEIGHT, Steps
from transferlab.strategies import Inputs, Method, Outcome


class Options(Steps):
    target_weight: float = Field(gt=0, le=MAX_WEIGHT, description=WHY_WEIGHT)  # λ of L_s + λ·L_t


METHOD = Method("knowledge transfer", "shared encoder, L_source + λ·L_target", Options,
                needs_labels=True, reads=frozenset({"source_data"}))


def run(inputs: Inputs, cfg: Options) -> Outcome:
    import torch
    from torch import nn

    from transferlab.models import new_head
    from transferlab.train import Stream, fit
    from transferlab.transfer import new_classifier

    torch.manual_seed(inputs.seed)
    model = new_classifier(inputs)  # its head is the target head
    source = inputs.source
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
                 weight_decay=cfg.weight_decay, shift_px=cfg.shift_px, seed=inputs.seed,
                 photo=inputs.augment)
    return Outcome(model, result)
