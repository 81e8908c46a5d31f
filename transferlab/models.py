"""Encoders with named blocks, a linear head, and weight copying that says what it did.

Two encoders share one interface (`blocks` with names, `out_features`, forward -> (N, F)):
    small_cnn  conv blocks `block1`..`blockL`, one per entry of model.widths
    resnet18   torchvision's ResNet-18 as blocks `stem`, `layer1`..`layer4`; optionally a
               small-input stem (3x3 stride-1 conv, no max-pool) for 16-32 pixel images

small_cnn shapes for the default 16x16 one-channel input and widths (32, 64, 128):
    block1  (N, 1, 16, 16) -> (N, 32, 8, 8)    conv3x3-BN-ReLU, max-pool 2
    block2  (N, 32, 8, 8)  -> (N, 64, 4, 4)    conv3x3-BN-ReLU, max-pool 2
    block3  (N, 64, 4, 4)  -> (N, 128, 4, 4)   conv3x3-BN-ReLU (the last block keeps its size)
    pool    (N, 128, 4, 4) -> (N, 128)         global average
    head    (N, 128)       -> (N, classes)     linear
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


def conv_block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Named blocks (an nn.Sequential) followed by a global average pool."""

    blocks: nn.Sequential
    out_features: int

    @property
    def block_names(self) -> list[str]:
        return list(self.blocks._modules)

    def block(self, name: str) -> nn.Module:
        return getattr(self.blocks, name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=(2, 3))  # (N, C, H, W) -> (N, C)


class SmallCNN(Encoder):
    def __init__(self, in_channels: int, widths: Sequence[int]):
        super().__init__()
        channels = [in_channels, *widths]
        self.blocks = nn.Sequential(OrderedDict(
            (f"block{i + 1}", conv_block(channels[i], channels[i + 1], pool=i + 1 < len(widths)))
            for i in range(len(widths))))
        self.out_features = channels[-1]


class ResNet18(Encoder):
    """torchvision's resnet18 without its fc layer, regrouped into five named blocks.

    (N, C, 224, 224) -> stem (N, 64, 56, 56) -> layer1..layer4 -> (N, 512, 7, 7) -> (N, 512);
    with small_input_stem, (N, C, 32, 32) -> stem (N, 64, 32, 32) -> ... -> (N, 512, 4, 4).
    """

    def __init__(self, in_channels: int, small_input_stem: bool):
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        if small_input_stem:
            conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            pool = nn.Identity()
        else:
            conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            pool = net.maxpool
        stem = nn.Sequential(OrderedDict(conv1=conv1, bn1=net.bn1, relu=net.relu, maxpool=pool))
        self.blocks = nn.Sequential(OrderedDict(stem=stem, layer1=net.layer1, layer2=net.layer2,
                                                layer3=net.layer3, layer4=net.layer4))
        self.out_features = 512


def build_encoder(arch: str, in_channels: int, widths: Sequence[int] = (),
                  small_input_stem: bool = False) -> Encoder:
    if arch == "small_cnn":
        return SmallCNN(in_channels, widths)
    if arch == "resnet18":
        return ResNet18(in_channels, small_input_stem)
    raise ValueError(f"unknown architecture '{arch}': choose small_cnn or resnet18")


class Classifier(nn.Module):
    """encoder + linear head; `forward` always returns logits (N, classes)."""

    def __init__(self, encoder: Encoder, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_features, num_classes)

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


@dataclass(frozen=True)
class Architecture:
    """What it takes to rebuild an encoder; stored in every model file's metadata."""
    arch: str
    in_channels: int
    widths: tuple[int, ...] = ()
    small_input_stem: bool = False

    def build(self) -> Encoder:
        return build_encoder(self.arch, self.in_channels, self.widths, self.small_input_stem)


def architecture_from(model_cfg, in_channels: int) -> Architecture:
    """From params.yaml's `model` section (arch, widths, small_input_stem)."""
    widths = tuple(model_cfg.widths) if model_cfg.arch == "small_cnn" else ()
    return Architecture(model_cfg.arch, in_channels, widths,
                        model_cfg.small_input_stem if model_cfg.arch == "resnet18" else False)


def model_metadata(architecture: Architecture, classes: Sequence[str],
                   preprocess: str | None = None) -> dict[str, str]:
    """A model file's metadata: how to rebuild it, its class names, and (from the prepared
    file it was trained on) the preprocessing of its inputs, for prediction and export."""
    return {"arch": architecture.arch, "in_channels": str(architecture.in_channels),
            "widths": json.dumps(list(architecture.widths)),
            "small_input_stem": json.dumps(architecture.small_input_stem),
            "classes": json.dumps(list(classes)),
            **({"preprocess": preprocess} if preprocess else {})}


METADATA_KEYS = ("arch", "in_channels", "widths", "small_input_stem", "classes")


def architecture_from_metadata(metadata: dict[str, str]) -> tuple[Architecture, list[str]]:
    """The architecture and class names a model file records; ValueError saying what is wrong."""
    if missing := [k for k in METADATA_KEYS if k not in metadata]:
        raise ValueError(f"its metadata lacks {', '.join(missing)}: not written by this pipeline")
    try:
        widths = json.loads(metadata["widths"])
        stem = json.loads(metadata["small_input_stem"])
        classes = json.loads(metadata["classes"])
        in_channels = int(metadata["in_channels"])
    except ValueError as err:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"its metadata does not parse ({err})") from None
    if metadata["arch"] not in ("small_cnn", "resnet18") or in_channels not in (1, 3) \
            or not isinstance(widths, list) or not all(type(w) is int and 1 <= w <= 4096
                                                       for w in widths) \
            or not isinstance(stem, bool) or not isinstance(classes, list) \
            or len(classes) < 2 or not all(isinstance(c, str) for c in classes) \
            or (metadata["arch"] == "small_cnn" and not 1 <= len(widths) <= 6):
        raise ValueError("its metadata describes no model this pipeline builds "
                         f"(arch={metadata['arch']!r:.20}, in_channels={metadata['in_channels']!r:.8})")
    return Architecture(metadata["arch"], in_channels, tuple(widths), stem), classes


def classifier_from_state(state: dict, metadata: dict[str, str]) -> tuple[Classifier, list[str]]:
    """Rebuild a Classifier (and its class names) from a file the pipeline wrote. ValueError,
    saying which, when the metadata is missing or foreign, or a tensor's name, shape or values
    do not fit the architecture it describes."""
    architecture, classes = architecture_from_metadata(metadata)
    model = Classifier(architecture.build(), len(classes))
    expected = model.state_dict()
    if missing := sorted(set(expected) - set(state)):
        raise ValueError(f"tensor {missing[0]} is missing ({len(missing)} in all) for "
                         f"{architecture.arch} with {len(classes)} classes")
    if extra := sorted(set(state) - set(expected)):
        raise ValueError(f"tensor {extra[0]} is not part of {architecture.arch} "
                         f"({len(extra)} unexpected)")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape or state[name].dtype != tensor.dtype:
            raise ValueError(f"tensor {name} is {state[name].dtype} {tuple(state[name].shape)}, "
                             f"the metadata implies {tensor.dtype} {tuple(tensor.shape)}")
        if state[name].is_floating_point() and not torch.isfinite(state[name]).all():
            raise ValueError(f"tensor {name} holds NaN or infinity")
    model.load_state_dict(state, strict=True)
    return model, classes


def load_classifier(path, device: torch.device | str = "cpu") -> tuple[Classifier, list[str]]:
    """A model file the pipeline wrote -> (Classifier on `device`, its class names).

    The one loader of model files: format, metadata and tensors are all checked, and any fault
    is one line naming the file and what is wrong with it.
    """
    from transferlab.io import UserError, load_state_dict, show_path

    try:
        model, classes = classifier_from_state(*load_state_dict(path))
    except ValueError as err:
        raise UserError(f"{show_path(path)} is not a model file of this pipeline: {err}: delete "
                        "it and run `dvc repro` again") from None
    return model.to(device), classes


def torchvision_to_block_name(name: str) -> str | None:
    """A torchvision resnet18 tensor name -> ours ('conv1.weight' -> 'blocks.stem.conv1.weight');
    None for the ImageNet classifier (fc.*), which transfer always replaces."""
    if name.startswith(("conv1.", "bn1.")):
        return f"blocks.stem.{name}"
    if name.startswith("layer"):
        return f"blocks.{name}"
    return None


def load_pretrained(encoder: Encoder, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy a torchvision-format resnet18 state dict into a ResNet18 encoder.

    Copies every tensor whose name maps to ours and whose shape matches; returns (copied,
    skipped with reasons). Refuses a file that matches nothing: it is not a resnet18.
    """
    own = encoder.state_dict()
    copied, skipped = [], []
    for name, tensor in state.items():
        ours = torchvision_to_block_name(name)
        if ours is None:
            skipped.append(f"{name} (the ImageNet head: replaced)")
        elif ours not in own:
            skipped.append(f"{name} (no such tensor here)")
        elif own[ours].shape != tensor.shape:
            skipped.append(f"{name} (shape {tuple(tensor.shape)}, here {tuple(own[ours].shape)})")
        else:
            own[ours] = tensor.detach().clone()
            copied.append(name)
    if not copied:
        raise ValueError("no tensor of the weights file matches a resnet18: "
                         f"first names {list(state)[:3]}")
    encoder.load_state_dict(own)
    return copied, skipped
