"""A small conv encoder with named blocks, a linear head, and weight copying that says what it did.

Shapes for the default 16x16 one-channel input and widths (32, 64, 128):
    block1  (N, 1, 16, 16) -> (N, 32, 8, 8)    conv3x3-BN-ReLU, max-pool 2
    block2  (N, 32, 8, 8)  -> (N, 64, 4, 4)    conv3x3-BN-ReLU, max-pool 2
    block3  (N, 64, 4, 4)  -> (N, 128, 4, 4)   conv3x3-BN-ReLU (the last block keeps its size)
    pool    (N, 128, 4, 4) -> (N, 128)         global average
    head    (N, 128)       -> (N, classes)     linear
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


def conv_block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    def __init__(self, in_channels: int, widths: Sequence[int]):
        super().__init__()
        channels = [in_channels, *widths]
        self.blocks = nn.Sequential(OrderedDict(
            (f"block{i + 1}", conv_block(channels[i], channels[i + 1], pool=i + 1 < len(widths)))
            for i in range(len(widths))))
        self.out_features = channels[-1]

    @property
    def block_names(self) -> list[str]:
        return list(self.blocks._modules)

    def block(self, name: str) -> nn.Module:
        return getattr(self.blocks, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=(2, 3))  # (N, C, H, W) -> (N, C)


class Classifier(nn.Module):
    """encoder + linear head; `forward` always returns logits (N, classes)."""

    def __init__(self, in_channels: int, widths: Sequence[int], num_classes: int):
        super().__init__()
        self.encoder = Encoder(in_channels, widths)
        self.head = nn.Linear(self.encoder.out_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def new_head(in_features: int, num_classes: int) -> nn.Linear:
    """Zero-initialised, as in Big Transfer: every class starts equally likely, and the encoder's
    features are not scrambled by a random projection in the first steps."""
    head = nn.Linear(in_features, num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def copy_blocks(dst: Encoder, src: Encoder, names: Sequence[str]) -> list[str]:
    """Copy the parameters and BatchNorm statistics of the named blocks; return the tensor names.

    Refuses a block that is missing or whose tensors differ in name or shape.
    """
    copied = []
    src_state, dst_state = src.state_dict(), dst.state_dict()
    for name in names:
        prefix = f"blocks.{name}."
        keys = [k for k in src_state if k.startswith(prefix)]
        dst_keys = [k for k in dst_state if k.startswith(prefix)]
        if not keys or keys != dst_keys:
            raise ValueError(f"block '{name}' differs between source and destination: "
                             f"{keys} vs {dst_keys}")
        for key in keys:
            if src_state[key].shape != dst_state[key].shape:
                raise ValueError(f"{key}: shape {tuple(src_state[key].shape)} in the source, "
                                 f"{tuple(dst_state[key].shape)} here")
            dst_state[key] = src_state[key].clone()
            copied.append(key)
    dst.load_state_dict(dst_state)
    return copied


def freeze(module: nn.Module) -> None:
    """No gradient for its parameters; the training loop also keeps its BatchNorm in eval mode."""
    for p in module.parameters():
        p.requires_grad_(False)


def model_metadata(in_channels: int, widths: Sequence[int], num_classes: int) -> dict[str, str]:
    return {"in_channels": str(in_channels), "widths": ",".join(map(str, widths)),
            "num_classes": str(num_classes)}


def classifier_from_state(state: dict, metadata: dict[str, str]) -> Classifier:
    """Rebuild a Classifier from a file the pipeline wrote; names and shapes must match exactly."""
    model = Classifier(int(metadata["in_channels"]),
                       [int(w) for w in metadata["widths"].split(",")],
                       int(metadata["num_classes"]))
    model.load_state_dict(state, strict=True)
    return model
