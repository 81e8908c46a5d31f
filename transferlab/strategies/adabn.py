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
With 0 target labels the recalibrated model is a candidate beside the source model, like any
adapted checkpoint (transferlab/selection.py): it replaces the source model only when the
guard's validators agree, which reads the source validation split.
"""

from __future__ import annotations

import math

from pydantic import Field

from transferlab.options import MAX_BATCH, WHY_BATCH, Strict
from transferlab.strategies import Inputs, Method, Outcome


class Options(Strict):
    # images per forward pass: the statistics are averaged over batches of this size
    batch_size: int = Field(ge=2, le=MAX_BATCH, description=WHY_BATCH)


METHOD = Method("domain adaptation", "AdaBN: source model, BatchNorm statistics of the target",
                Options, needs_labels=False, reads=frozenset({"source_model", "source_data", "unlabelled"}),
                needs_batchnorm=True)


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
    from transferlab.train import predict_logits
    from transferlab.transfer import label_free_record, label_free_scores, source_copy

    model = source_copy(inputs, "adabn (it keeps the source head)")
    x_val, y_val = inputs.target["x_val"], inputs.target["y_val"]
    label_free = not len(inputs.target["y_train"])
    if label_free:
        if inputs.selection is None:
            raise ValueError("0 target labels: Inputs.selection (params.selection) says how to "
                             "choose")
        source = {"step": 0, **label_free_scores(model, inputs)}
        source_state = {k: v.clone() for k, v in model.state_dict().items()}
    layers = recalibrate(model, inputs.unlabelled, cfg.batch_size)
    info = {"recalibrated_layers": layers}
    if label_free:  # 0 target labels: recalibrated only if the validators say so
        from transferlab.selection import decide

        adapted = {"step": 1, **label_free_scores(model, inputs)}
        cfg_sel = inputs.selection
        shipped, _, why = decide([source, adapted], cfg_sel.validator, cfg_sel.max_source_drop,
                                 cfg_sel.guard, cfg_sel.guard_margin)
        if not shipped:
            model.load_state_dict(source_state)
        info.update(label_free_record(adapted if shipped else source, source, why))
    logits = predict_logits(model.eval(), x_val)
    # NaN: no target val image (prepare.target_val_per_class 0); the metrics file says None
    info["val_accuracy"] = float((logits.argmax(1) == y_val).float().mean()) if len(y_val) else math.nan
    return Outcome(model, None, info)
