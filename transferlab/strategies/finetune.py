"""Parameter transfer: start from the source encoder, attach a new head, fine-tune on the target.
min_theta L(theta; D_target) + alpha/2 ||w - w_source||^2   (L2-SP: Li, Grandvalet & Davoine,
"Explicit inductive bias for transfer learning with convolutional networks", ICML 2018).

Options: the first `frozen_blocks` encoder blocks stay fixed (BatchNorm statistics included);
the encoder learns at `lr * backbone_lr_mult`; with L2-SP on, the encoder is pulled towards the
source weights instead of towards zero (AdamW's decay applies to the head only).
"""

from __future__ import annotations

from pydantic import Field

from transferlab.options import MAX_BLOCKS, MAX_WEIGHT, WHY_BLOCKS, WHY_WEIGHT, Encoder, Steps
from transferlab.strategies import Inputs, Method, Outcome


class Options(Steps):
    frozen_blocks: int = Field(ge=0, le=MAX_BLOCKS, description=WHY_BLOCKS)
    backbone_lr_mult: float = Field(ge=0, le=10, description="the encoder's rate is lr x this: "
                                    "10x the head's rate is already far past useful")
    l2sp_weight: float = Field(ge=0, le=MAX_WEIGHT, description=WHY_WEIGHT)

    def check_encoder(self, section: str, encoder: Encoder) -> None:
        encoder.check_block_count(f"{section}.frozen_blocks", self.frozen_blocks)


METHOD = Method("parameter transfer", "source weights, new head, fine-tuned", Options,
                needs_labels=True, reads=frozenset({"source_model"}))


def run(inputs: Inputs, cfg: Options) -> Outcome:
    import torch

    from transferlab.models import freeze
    from transferlab.transfer import fit_on_target, new_classifier, trainable

    torch.manual_seed(inputs.seed)
    source = inputs.source_model
    model = new_classifier(inputs)
    model.encoder.load_state_dict(source.encoder.state_dict(), strict=True)
    frozen = model.encoder.block_names[:cfg.frozen_blocks]
    for name in frozen:
        freeze(model.encoder.block(name))
    model.to(inputs.target["x_train"].device)

    backbone = trainable(model.encoder)
    penalty = None
    if cfg.l2sp_weight > 0:
        anchor = [p.detach().clone() for p in backbone]

        def penalty() -> torch.Tensor:
            return 0.5 * cfg.l2sp_weight * sum(((p - a) ** 2).sum() for p, a in zip(backbone, anchor))

    groups = [
        {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult,
         "weight_decay": 0.0 if cfg.l2sp_weight > 0 else cfg.weight_decay},
        {"params": list(model.head.parameters()), "lr": cfg.lr},
    ]
    if cfg.backbone_lr_mult == 0:
        groups = groups[1:]
    result = fit_on_target(model, groups, inputs, cfg, penalty=penalty)
    return Outcome(model, result, {"frozen_blocks": frozen})
