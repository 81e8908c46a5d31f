"""TENT: fully test-time adaptation by entropy minimisation (Wang, Shelhamer, Liu, Olshausen &
Darrell, "Tent: fully test-time adaptation by entropy minimization", ICLR 2021).

From the source model, only the BatchNorm layers' scale and shift train, on
    min_{gamma, beta}  CE(target shots, if any)  +  loss_weight * mean_x H(softmax(f(x)))
over unlabelled target batches; every other weight stays the source's, and the BatchNorm
layers normalise by the target batches' statistics while training, their running statistics
moving to the target's (what evaluation then uses). Source-free: the source images are never
trained on (at 0 target labels the pipeline's label-free selection still reads the source
validation split, as for every method: transferlab/selection.py). A model without BatchNorm
(`model.norm` other than batch) has nothing to adapt: refused.
"""

from __future__ import annotations

from transferlab.options import Adaptation
from transferlab.search import ADAPTATION
from transferlab.strategies import Inputs, Method, Outcome


class Options(Adaptation):
    pass


METHOD = Method("source-free adaptation",
                "TENT: entropy of target predictions minimised, BatchNorm scale and shift only",
                Options, needs_labels=False,
                reads=frozenset({"source_model", "source_data", "unlabelled"}),
                needs_batchnorm=True,
                # lr alone: with no target shots loss_weight only rescales the one loss,
                # which Adam's step normalises away
                search={"lr": ADAPTATION["lr"]})


def entropy(logits):
    """Mean Shannon entropy (nats) of the softmax of `logits` (B x K)."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()


def batch_norm_affine(model) -> list:
    from torch import nn

    return [p for m in model.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in m.parameters(recurse=False)]


def run(inputs: Inputs, cfg: Options) -> Outcome:
    from transferlab.errors import UserError
    from transferlab.transfer import parameter_budget, source_free

    if not batch_norm_affine(inputs.source_model):
        raise UserError("tent adapts BatchNorm layers and the source model has none: set "
                        "model.norm: batch, or choose another method")
    model, result = source_free(inputs, cfg, batch_norm_affine,
                                lambda b: entropy(b.target_logits), "tent")
    return Outcome(model, result, parameter_budget(model, batch_norm_affine(model)))
