"""BitFit: fine-tune the biases only (Ben Zaken, Ravfogel & Goldberg, "BitFit: simple
parameter-efficient fine-tuning for transformer-based masked language-models", ACL 2022).
    min_{b, head} L(head(z(x; W_source, b)); D_target)    (W: the weights, b: biases and norms)

From the source encoder with a new head: the head, every bias and every normalisation layer's
scale and shift train; the convolution and linear weights stay the source's. What must be
stored beside the source model is those few tensors (`trainable_params` in the metrics). The
normalisation layers that train also re-estimate their BatchNorm statistics on the target
shots, as in fine-tuning.
"""

from __future__ import annotations

from transferlab.options import Steps
from transferlab.strategies import Inputs, Method, Outcome


class Options(Steps):
    pass


METHOD = Method("parameter transfer", "BitFit: new head, only the encoder's biases and norms train",
                Options, needs_labels=True, reads=frozenset({"source_model"}))


def bias_and_norm(module) -> list:
    """The biases of `module` and the parameters of its normalisation layers, in module order."""
    from torch import nn

    norms = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    chosen, seen = [], set()
    for sub in module.modules():
        for name, p in sub.named_parameters(recurse=False):
            if (isinstance(sub, norms) or name == "bias") and id(p) not in seen:
                seen.add(id(p))
                chosen.append(p)
    return chosen


def run(inputs: Inputs, cfg: Options) -> Outcome:
    import torch

    from transferlab.transfer import fit_on_target, new_classifier, parameter_budget

    torch.manual_seed(inputs.seed)
    model = new_classifier(inputs)
    model.encoder.load_state_dict(inputs.source_model.encoder.state_dict(), strict=True)
    model.to(inputs.target["x_train"].device)
    encoder = bias_and_norm(model.encoder)
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    for p in encoder:
        p.requires_grad_(True)
    trained = encoder + list(model.head.parameters())
    result = fit_on_target(model, [{"params": trained, "lr": cfg.lr}], inputs, cfg)
    return Outcome(model, result, parameter_budget(model, trained))
