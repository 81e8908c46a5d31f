"""Structural transfer: reuse the source architecture and its first n blocks, re-initialise the
rest, train on the target. min_{G,H} L(H(G(x)); D_target) with G's first n blocks copied.

Yosinski, Clune, Bengio & Lipson, "How transferable are features in deep neural networks?",
NeurIPS 2014: AnB (copied blocks frozen) and AnB+ (copied blocks fine-tuned).
"""

from __future__ import annotations

from pydantic import Field

from transferlab.options import MAX_BLOCKS, WHY_BLOCKS, Encoder, Steps
from transferlab.strategies import Inputs, Method, Outcome


class Options(Steps):
    copied_blocks: int = Field(ge=0, le=MAX_BLOCKS, description=WHY_BLOCKS)
    freeze_copied: bool  # true: AnB (frozen), false: AnB+ (fine-tuned)

    def check_encoder(self, section: str, encoder: Encoder) -> None:
        encoder.check_block_count(f"{section}.copied_blocks", self.copied_blocks)


METHOD = Method("structural transfer", "first blocks copied, rest re-initialised", Options,
                needs_labels=True, reads=frozenset({"source_model"}))


def run(inputs: Inputs, cfg: Options) -> Outcome:
    import torch

    from transferlab.models import copy_blocks, freeze
    from transferlab.transfer import fit_on_target, new_classifier, trainable

    torch.manual_seed(inputs.seed)
    model = new_classifier(inputs)
    names = model.encoder.block_names[:cfg.copied_blocks]
    copied = copy_blocks(model.encoder, inputs.source_model.encoder, names) if names else []
    if cfg.freeze_copied:
        for name in names:
            freeze(model.encoder.block(name))
    model.to(inputs.target["x_train"].device)
    result = fit_on_target(model, [{"params": trainable(model), "lr": cfg.lr}], inputs, cfg)
    return Outcome(model, result, {"copied_blocks": names, "copied_tensors": len(copied),
                                   "frozen": bool(cfg.freeze_copied and names)})
