"""AdaBN: the source model, its BatchNorm statistics re-estimated on the unlabelled target.

Li, Wang, Shi, Liu & Hou, "Revisiting batch normalization for practical domain adaptation",
ICLR workshops 2017. No gradient step and no label: for every BatchNorm layer l, with a_l(x)
its input on a target pool image x (per channel),
    mu_l, sigma_l^2 = argmin_{mu, s2} sum_x [ (a_l(x) - mu)^2 / s2 + log s2 ]
i.e. the pool's mean and variance, replace the source's running statistics; the learned scale
and shift are kept. As torch computes them (momentum None): the average over the pool's
batches, in pool order, of each batch's mean and unbiased variance, the earlier layers
normalising each batch by its own statistics as in training; a larger batch_size comes closer
to the pool's own variance. On an appearance shift the source statistics are what breaks
first, and this costs a few forward passes: the label-free baseline every adaptation method
should beat. A model without BatchNorm (`model.norm` other than batch) comes out unchanged.
"""

from __future__ import annotations

from pydantic import Field

from transferlab.errors import UserError
from transferlab.options import MAX_BATCH, WHY_BATCH, Strict
from transferlab.strategies import Inputs, Method, Outcome


class Options(Strict):
    # images per forward pass: the statistics are averaged over batches of this size
    batch_size: int = Field(ge=2, le=MAX_BATCH, description=WHY_BATCH)


METHOD = Method("domain adaptation", "AdaBN: source model, BatchNorm statistics of the target",
                Options, needs_labels=False, reads=frozenset({"source_model", "unlabelled"}))


def recalibrate(model, images, batch_size: int) -> int:
    """Replace the running statistics of every BatchNorm layer of `model` by those of `images`
    (uint8, N x C x H x W), in place; returns how many layers were recalibrated. The model is
    left in eval mode."""
    import torch
    from torch import nn

    from transferlab.train import to_float

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(images) == 0:
        return 0
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: each batch weighted by 1 / (batches seen)
    model.train()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                chunk = images[start:start + batch_size]
                if len(chunk) > 1:  # BatchNorm needs two values per channel in training mode
                    model(to_float(chunk))
    finally:
        for m, momentum in zip(norms, saved):
            m.momentum = momentum
        model.eval()
    return len(norms)


def run(inputs: Inputs, cfg: Options) -> Outcome:
    import torch

    from transferlab.train import predict_logits, soft_neighborhood_density
    from transferlab.transfer import new_classifier

    if len(inputs.unlabelled) < 2:
        raise UserError("adabn needs at least 2 unlabelled target images (prepare.shots takes "
                        "every target train image): lower prepare.shots")
    if inputs.source_model.head.out_features != inputs.num_classes:
        raise UserError(f"adabn keeps the source head: the source and target classes must be "
                        f"the same ({inputs.source_model.head.out_features} vs "
                        f"{inputs.num_classes}): set data.source.classes and data.target.classes "
                        "alike")
    torch.manual_seed(inputs.seed)
    model = new_classifier(inputs)
    model.load_state_dict(inputs.source_model.state_dict(), strict=True)
    model.to(inputs.target["x_val"].device)
    layers = recalibrate(model, inputs.unlabelled, cfg.batch_size)
    logits = predict_logits(model, inputs.target["x_val"])
    val_accuracy = float((logits.argmax(1) == inputs.target["y_val"]).float().mean()) \
        if len(inputs.target["y_val"]) else 0.0
    # nothing is selected here; SND on the pool lets export compare it label-free at 0 shots
    snd = soft_neighborhood_density(predict_logits(model, inputs.unlabelled))
    return Outcome(model, None, {"val_accuracy": val_accuracy, "snd": round(snd, 6),
                                 "recalibrated_layers": layers})
