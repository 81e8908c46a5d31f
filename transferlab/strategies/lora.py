"""LoRA: low-rank adapters on the frozen source encoder (Hu, Shen, Wallis, Allen-Zhu, Li, Wang,
Wang & Chen, "LoRA: low-rank adaptation of large language models", ICLR 2022), through the
`peft` library.
    W = W_source + (alpha / r) * B A,   min_{A, B, head} L(head(z(x; W)); D_target)

From the source encoder with a new head: every targeted layer (`target_modules`: the conv and
linear layers whose names a regular expression matches in full; `auto` takes each of them,
which covers every backbone family here: convolutions in the CNNs, the MLP and patch layers of
a ViT) gets a rank-`rank` update B A
with B zero at the start, so training starts from the source model exactly. Only A, B and the
head train; the source weights stay as they are, norm layers and their BatchNorm statistics
included (the training loop keeps a frozen BatchNorm in eval mode).

The pipeline stores the model with the adapters merged into the weights (peft's
`merge_and_unload`): evaluate, export and predict read it like any other model and need no
peft. What a user must keep beside the source model to rebuild it is the adapters and the head:
`trainable_params` in the metrics (`adapter_params`: the adapters alone).

Attention projections inside `nn.MultiheadAttention` are left out of `auto`: that module reads
its `out_proj` weight directly, so a wrapped layer there would train without changing a thing.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from transferlab.options import Steps
from transferlab.strategies import Inputs, Method, Outcome


class Options(Steps):
    rank: int = Field(ge=1, le=256, description="the update's rank: above 256 it is no longer "
                      "low-rank for any layer here")
    alpha: float = Field(gt=0, le=1024, description="the update is scaled by alpha / rank")
    dropout: float = Field(ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: str = Field(min_length=1, max_length=500, description="auto, or a regular "
                                "expression: the conv and linear layers whose full names it "
                                "matches are adapted")

    @field_validator("target_modules")
    @classmethod
    def _a_pattern(cls, value: str) -> str:
        if value != "auto":
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"'{value}' is not a regular expression ({e}): write one "
                                 "that matches layer names, e.g. 'block[23]\\..*conv', or auto")
        return value


METHOD = Method("parameter transfer", "LoRA (peft): new head, low-rank adapters on the frozen "
                "source encoder", Options, needs_labels=True, reads=frozenset({"source_model"}))


def auto_targets(encoder) -> list[str]:
    """The names of every Conv2d and Linear layer of `encoder` that peft's LoRA can wrap and that
    its module's forward actually calls (not the projections of nn.MultiheadAttention)."""
    from torch import nn

    inside_attention = {f"{name}.{child}" if name else child
                        for name, m in encoder.named_modules()
                        if isinstance(m, nn.MultiheadAttention)
                        for child, _ in m.named_modules() if child}
    return [name for name, m in encoder.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and name not in inside_attention]


def run(inputs: Inputs, cfg: Options) -> Outcome:
    import torch

    from transferlab.errors import UserError
    from transferlab.transfer import fit_on_target, new_classifier, parameter_budget

    from peft import LoraConfig, get_peft_model  # a dependency of the package (pyproject.toml)

    torch.manual_seed(inputs.seed)
    model = new_classifier(inputs)
    model.encoder.load_state_dict(inputs.source_model.encoder.state_dict(), strict=True)
    model.to(inputs.target["x_train"].device)
    layers = auto_targets(model.encoder)
    targets = layers if cfg.target_modules == "auto" else [
        name for name in layers if re.fullmatch(cfg.target_modules, name)]
    if not targets:
        raise UserError(f"transfer.lora.target_modules='{cfg.target_modules}' matches no conv or "
                        f"linear layer of the {inputs.architecture.arch} encoder: use auto, or a "
                        f"pattern for names such as {', '.join(layers[:3]) or '(none)'}")
    adapted = get_peft_model(model.encoder, LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha,
                                                 lora_dropout=cfg.dropout,
                                                 target_modules=targets, bias="none"))
    model.encoder = adapted  # frozen: get_peft_model leaves only the adapters trainable
    adapters = [p for p in adapted.parameters() if p.requires_grad]
    trained = adapters + list(model.head.parameters())
    result = fit_on_target(model, [{"params": trained, "lr": cfg.lr}], inputs, cfg)
    budget = parameter_budget(model, trained)
    budget["total_params"] -= sum(p.numel() for p in adapters)  # of the model that is stored
    budget["trainable_share"] = round(budget["trainable_params"] / budget["total_params"], 6)
    model.encoder = adapted.merge_and_unload()  # the encoder it wrapped, adapters merged in
    return Outcome(model, result, {**budget, "adapter_params": sum(p.numel() for p in adapters)})
