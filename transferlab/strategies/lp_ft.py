"""LP-FT: linear probe, then fine-tune (Kumar, Raghunathan, Jones, Ma & Liang, "Fine-tuning can
distort pretrained features and underperform out-of-distribution", ICLR 2022).
    stage 1: min_head L(head(z_source(x)); D_target)
    stage 2: min_{z, head} L(head(z(x)); D_target), from z_source and stage 1's head.

Stage 1 (the probe): the source encoder frozen (BatchNorm statistics included), a new zero
head trained alone on the target shots for `probe_steps` at `probe_lr`; the target validation
set picks its checkpoint. Stage 2: every weight trained from that head for `steps`, the head
at `lr` and the encoder at `lr * backbone_lr_mult`; the target validation set picks again.
Plain fine-tuning starts from a zero head, so its first gradients reach the encoder through a
head that does not yet fit the target and move the features towards it; a head that already
fits gives the encoder small gradients, and the features move less.
"""

from __future__ import annotations

from pydantic import Field

from transferlab.options import MAX_STEPS, WHY_STEPS, Steps
from transferlab.strategies import Inputs, Method, Outcome


class Options(Steps):
    probe_steps: int = Field(ge=1, le=MAX_STEPS, description=WHY_STEPS)
    probe_lr: float = Field(gt=0, le=10, description="the head's rate while the encoder is "
                            "frozen: above 10, Adam's steps leave the range any logit needs")
    backbone_lr_mult: float = Field(ge=0, le=10, description="the encoder's rate in stage 2 is "
                                    "lr x this: 10x the head's rate is already far past useful")


METHOD = Method("parameter transfer", "LP-FT: linear probe first, then fine-tuned from that head",
                Options, needs_labels=True, reads=frozenset({"source_model"}))


def run(inputs: Inputs, cfg: Options) -> Outcome:
    import torch

    from transferlab.models import freeze
    from transferlab.transfer import fit_on_target, new_classifier, parameter_budget

    torch.manual_seed(inputs.seed)
    model = new_classifier(inputs)
    model.encoder.load_state_dict(inputs.source_model.encoder.state_dict(), strict=True)
    model.to(inputs.target["x_train"].device)

    freeze(model.encoder)
    probe = fit_on_target(model, [{"params": list(model.head.parameters()), "lr": cfg.probe_lr}],
                          inputs, cfg.model_copy(update={"steps": cfg.probe_steps}))
    for p in model.encoder.parameters():  # a zero rate keeps it frozen, BatchNorm included
        p.requires_grad_(cfg.backbone_lr_mult > 0)
    groups = [{"params": list(model.encoder.parameters()), "lr": cfg.lr * cfg.backbone_lr_mult},
              {"params": list(model.head.parameters()), "lr": cfg.lr}]
    result = fit_on_target(model, groups if cfg.backbone_lr_mult > 0 else groups[1:], inputs, cfg)
    return Outcome(model, result, {"probe_val_accuracy": round(probe.best_val_accuracy, 4),
                                   "probe_best_step": probe.best_step,
                                   **parameter_budget(model, list(model.parameters()))})
