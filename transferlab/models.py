"""Encoders with named blocks, a linear head, and weight copying that says what it did.

Encoders share one interface (`blocks` with names, `out_features`, forward -> (N, F)). Which
architectures exist, their block counts and size limits, and how each is built is the backbone
registry's (transferlab/backbones/, one module per family); this module holds the nn.Modules
they are built from and what every model shares: the head, block copying, freezing, model
files and their metadata, pretrained weights.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from transferlab import backbones
from transferlab.errors import UserError, show_path


GROUP_CHANNELS = 8  # model.norm: group: channels a GroupNorm group holds (Wu & He 2018 use 32
# groups; with small_cnn's 32-128 channels a fixed group width keeps 4-16 groups a layer)
FLATTEN_GRID = 4    # model.head: flatten: the feature map is average-pooled to this grid first


def norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(max(1, channels // GROUP_CHANNELS), channels)
    if norm == "layer":
        return nn.GroupNorm(1, channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}")


def conv_block(c_in: int, c_out: int, pool: bool, norm: str = "batch") -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none"), norm_layer(norm, c_out),
              nn.ReLU()]
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
    def __init__(self, in_channels: int, widths: Sequence[int], norm: str = "batch",
                 head: str = "pool", centred: bool = False):
        super().__init__()
        if head not in ("pool", "flatten"):
            raise ValueError(f"unknown head {head!r}")
        channels = [in_channels, *widths]
        self.blocks = nn.Sequential(OrderedDict(
            (f"block{i + 1}", conv_block(channels[i], channels[i + 1], i + 1 < len(widths), norm))
            for i in range(len(widths))))
        self.flatten = head == "flatten"
        self.centred = centred  # model.input centred: [0, 1] -> [-1, 1] before the first conv
        self.out_features = channels[-1] * (FLATTEN_GRID ** 2 if self.flatten else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.centred:
            x = x * 2 - 1
        if not self.flatten:
            return super().forward(x)
        return grid_pool(self.blocks(x), FLATTEN_GRID).flatten(1)


def _pool_matrix(size: int, out: int) -> np.ndarray:
    """(out, size): row i averages input cells floor(i size / out) .. ceil((i + 1) size / out) - 1,
    adaptive average pooling's windows."""
    m = np.zeros((out, size), np.float32)
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def grid_pool(x: torch.Tensor, grid: int) -> torch.Tensor:
    """adaptive_avg_pool2d(x, grid) that ONNX exports at every input size: torch's own where
    the grid divides the map (exported as AveragePool), else the same windows as one matrix
    product with a constant (ONNX refuses adaptive pooling to a size that is not a factor: a
    7x7 map at prepare.image_size 28, a 2x2 one at 8). The map size is fixed per model input
    size, so the export traces it as a constant."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % grid == 0 and w % grid == 0:
        return nn.functional.adaptive_avg_pool2d(x, grid)
    weights = torch.from_numpy(np.kron(_pool_matrix(h, grid), _pool_matrix(w, grid)).T.copy())
    return (x.flatten(2) @ weights.to(x)).unflatten(2, (grid, grid))


class ViTEmbedding(nn.Module):
    """vit_b_16's input side as one block: 16x16 patches -> tokens, class token, positions.
    (N, C, 224, 224) -> (N, 197, 768)."""

    def __init__(self, conv_proj: nn.Conv2d, class_token: nn.Parameter, pos_embedding: nn.Parameter):
        super().__init__()
        self.conv_proj, self.class_token, self.pos_embedding = conv_proj, class_token, pos_embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (N, 196, 768)
        return torch.cat([self.class_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embedding


def with_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """`conv` itself, or a fresh one like it for `in_channels` inputs (grey images)."""
    if conv.in_channels == in_channels:
        return conv
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     bias=conv.bias is not None)


class TorchvisionEncoder(Encoder):
    """A torchvision classification model without its classifier, as the named blocks its
    backbone module (transferlab/backbones/) cut it into, so frozen and copied block counts mean
    the same in every family.

    The input is normalised inside the model, by buffers `input_mean` / `input_std` (set from the
    pretrained weights' own transforms; 0 and 1 without weights): the normalisation travels in
    the model file, to prediction and ONNX export. Tensor names keep torchvision's below the
    block (`blocks.layer1.0.conv1.weight`), so a torchvision state dict maps by prefix.
    """

    def __init__(self, arch: str, in_channels: int, blocks: OrderedDict, out_features: int,
                 pool_norm: nn.Module | None = None, token_output: bool = False):
        super().__init__()
        self.arch, self.pool_norm = arch, nn.Identity()
        self.register_buffer("input_mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("input_std", torch.ones(1, in_channels, 1, 1))
        if pool_norm is not None:  # convnext: LayerNorm2d on the pooled (N, C, 1, 1)
            self.pool_norm = pool_norm
        self.token_output = token_output
        self.out_features = out_features
        self.blocks = nn.Sequential(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks((x - self.input_mean) / self.input_std)
        if self.token_output:
            return x[:, 0]  # the class token, after the final LayerNorm
        return self.pool_norm(x.mean(dim=(2, 3), keepdim=True)).flatten(1)


class TimmViTEmbedding(nn.Module):
    """A timm VisionTransformer's input side as one block: `net` is the timm model with its
    transformer blocks and final norm taken out (they are the encoder's next blocks); its patch
    embedding, tokens, positions and pre-norm run here, and its pooling at the encoder's end."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        return net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))


class TimmViTEncoder(TorchvisionEncoder):
    """A timm VisionTransformer cut into blocks `embed`, `block0`.., `norm` (transferlab/backbones/
    timm_vit.py), the input normalised by the model file's buffers; the output is timm's own
    pooled feature, so features equal timm's `forward_head(forward_features(x), pre_logits=True)`."""

    def __init__(self, arch: str, in_channels: int, net: nn.Module):
        layers, norm = list(net.blocks), net.norm
        net.blocks, net.norm, net.head = nn.Sequential(), nn.Identity(), nn.Identity()
        blocks = OrderedDict(embed=TimmViTEmbedding(net),
                             **{f"block{i}": layer for i, layer in enumerate(layers)}, norm=norm)
        super().__init__(arch, in_channels, blocks, net.num_features, token_output=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.blocks((x - self.input_mean) / self.input_std)
        return self.blocks.embed.net.forward_head(tokens, pre_logits=True)


def ResNet18(in_channels: int, small_input_stem: bool) -> "TorchvisionEncoder":  # noqa: N802
    """torchvision's resnet18 as blocks stem, layer1..layer4 (the name earlier code used)."""
    return build_encoder("resnet18", in_channels, (), small_input_stem)


def build_encoder(arch: str, in_channels: int, widths: Sequence[int] = (),
                  small_input_stem: bool = False, norm: str = "batch",
                  head: str = "pool", image_size: int | None = None,
                  input: str | None = None) -> Encoder:
    backbone = backbones.get(arch)  # ValueError naming the registered ones
    # a family that builds one normalisation and one head is not asked which
    options = {**({"norm": norm} if len(backbone.norms) > 1 else {}),
               **({"head": head} if len(backbone.heads) > 1 else {}),
               **({"input": input} if len(backbone.inputs) > 1 else {})}
    if backbone.sized:  # built for one input size (a ViT's position embedding)
        if image_size is None:
            raise ValueError(f"{arch} is built for one input size: give image_size")
        options["image_size"] = image_size
    return backbones.family_module(arch).build(arch, in_channels, tuple(widths),
                                               small_input_stem and backbone.takes_small_stem(),
                                               **options)


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
    # model.norm, model.head: what the backbone builds (backbones.Backbone); norm None: its own
    # (LayerNorm for a ViT, BatchNorm for a resnet or small_cnn)
    norm: str | None = None
    head: str = "pool"
    image_size: int | None = None  # only for a backbone built for one size (Backbone.sized)
    # model.input: how [0, 1] pixels enter (Backbone.inputs); None: the backbone's first, or its
    # own normalisation where it declares none
    input: str | None = None

    def __post_init__(self):
        backbone = backbones.get(self.arch)
        if self.norm is None:
            object.__setattr__(self, "norm", backbone.norms[0])
        if self.input is None and backbone.inputs:
            object.__setattr__(self, "input", backbone.inputs[0])

    def build(self) -> Encoder:
        return build_encoder(self.arch, self.in_channels, self.widths, self.small_input_stem,
                             self.norm, self.head, self.image_size, self.input)


BACKDROPS = ("blank", "textured")  # what prepare records (scenario.backdrop)


def read_backdrop(metadata: dict[str, str], path) -> str:
    """The backdrop a prepared file records ('blank' for one prepared before it was recorded),
    which model.norm / model.input auto build for; a value this pipeline does not write is a
    UserError naming the file."""
    value = metadata.get("backdrop", "blank")
    if value not in BACKDROPS:
        raise UserError(f"{show_path(path)}: its metadata gives backdrop {value!r}, not one of "
                        f"{', '.join(BACKDROPS)}: not written by this pipeline's prepare: rerun "
                        "it (dvc repro -f prepare)")
    return value


def architecture_from(model_cfg, in_channels: int, image_size: int | None = None,
                      backdrop: str = "blank") -> Architecture:
    """From params.yaml's `model` section (arch, widths, small_input_stem, norm, head; auto:
    the backbone's first, its default, and for norm on a textured backdrop the backbone's
    `textured_norm` where it has one) and the prepared images' channels, size (kept only for a
    backbone built for one size) and backdrop (scenario.backdrop, from the prepared files)."""
    backbone = backbones.get(model_cfg.arch)
    widths = tuple(model_cfg.widths) if backbone.uses_widths() else ()
    textured = backdrop == "textured"
    norm = model_cfg.norm
    if norm == "auto":
        norm = backbone.textured_norm if textured and backbone.textured_norm else backbone.norms[0]
    head = backbone.heads[0] if model_cfg.head == "auto" else model_cfg.head
    given = model_cfg.input
    if given != "auto":
        input = given
    elif backbone.inputs:
        input = backbone.textured_input if textured and backbone.textured_input \
            else backbone.inputs[0]
    else:
        input = None
    return Architecture(model_cfg.arch, in_channels, widths,
                        model_cfg.small_input_stem and backbone.takes_small_stem(), norm, head,
                        image_size if backbone.sized else None, input)


def model_metadata(architecture: Architecture, classes: Sequence[str],
                   preprocess: str | None = None) -> dict[str, str]:
    """A model file's metadata: how to rebuild it, its class names, and (from the prepared
    file it was trained on) the preprocessing of its inputs, for prediction and export."""
    return {"arch": architecture.arch, "in_channels": str(architecture.in_channels),
            "widths": json.dumps(list(architecture.widths)),
            "small_input_stem": json.dumps(architecture.small_input_stem),
            "norm": architecture.norm, "head": architecture.head,
            **({"image_size": str(architecture.image_size)}
               if architecture.image_size is not None else {}),
            # written only where it is not the [0, 1] every earlier file was trained on
            **({"input": architecture.input}
               if architecture.input not in (None, "unit") else {}),
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
    backbone = backbones.BACKBONES.get(metadata["arch"])
    if backbone is None or in_channels not in (1, 3) \
            or not isinstance(widths, list) or not all(type(w) is int and 1 <= w <= 4096
                                                       for w in widths) \
            or not isinstance(stem, bool) or not isinstance(classes, list) \
            or len(classes) < 2 or not all(isinstance(c, str) for c in classes) \
            or (backbone.uses_widths() and not 1 <= len(widths) <= 6):
        raise ValueError("its metadata describes no model this pipeline builds "
                         f"(arch={metadata['arch']!r:.20}, in_channels={metadata['in_channels']!r:.8})")
    # files written before model.norm / model.head existed: BatchNorm and a global pool
    norm, head = metadata.get("norm", "batch"), metadata.get("head", "pool")
    # files written before model.input existed, or with unit input, record none
    input = metadata.get("input", "unit" if backbone.inputs else None)
    if norm not in backbone.norms or head not in backbone.heads \
            or (input is not None and input not in backbone.inputs):
        raise ValueError(f"its metadata describes no model this pipeline builds ({metadata['arch']}"
                         f" with norm={norm!r:.20}, head={head!r:.20}, input={input!r:.20})")
    size = None
    if backbone.sized:  # an untrusted file: a size this pipeline's params allow, or refused
        size = metadata.get("image_size", "")
        if not size.isdigit() or not backbone.min_size <= int(size) <= 4096:
            raise ValueError(f"its metadata gives {metadata['arch']} no valid image_size "
                             f"({size!r:.20})")
        size = int(size)
    return Architecture(metadata["arch"], in_channels, tuple(widths), stem, norm, head,
                        size, input), classes


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
    from transferlab.errors import UserError, show_path
    from transferlab.io import load_state_dict

    try:
        model, classes = classifier_from_state(*load_state_dict(path))
    except ValueError as err:
        raise UserError(f"{show_path(path)} is not a model file of this pipeline: {err}: delete "
                        "it and run `dvc repro` again") from None
    return model.to(device), classes


def torchvision_to_block_name(arch: str, name: str) -> str | None:
    """A torchvision tensor name -> ours ('conv1.weight' -> 'blocks.stem.conv1.weight'), by the
    backbone's family module; None for the ImageNet classifier, which transfer always replaces."""
    return backbones.family_module(arch).block_name(arch, name)


def load_pretrained(encoder: TorchvisionEncoder, state: dict[str, torch.Tensor]
                    ) -> tuple[list[str], list[str]]:
    """Copy a torchvision-format state dict of the encoder's architecture into it.

    Copies every tensor whose name maps to ours and whose shape matches; a 3-channel first
    convolution feeding a 1-channel encoder is summed over its input channels (grey = R = G = B
    gives the same response). Returns (copied, skipped with reasons). Refuses a file that
    matches nothing: it is not that architecture.
    """
    family = backbones.family_module(encoder.arch)
    if hasattr(family, "convert_state"):  # e.g. a position embedding resampled to the grid
        state = family.convert_state(encoder.arch, state, encoder)
    own = encoder.state_dict()
    copied, skipped = [], []
    for name, tensor in state.items():
        ours = torchvision_to_block_name(encoder.arch, name)
        if ours is None:
            skipped.append(f"{name} (the ImageNet head: replaced)")
        elif ours not in own:
            skipped.append(f"{name} (no such tensor here)")
        elif own[ours].shape == tensor.shape:
            own[ours] = tensor.detach().clone()
            copied.append(name)
        elif (tensor.ndim == 4 and own[ours].shape[1] == 1 and tensor.shape[1] == 3
              and own[ours].shape[0] == tensor.shape[0] and own[ours].shape[2:] == tensor.shape[2:]):
            own[ours] = tensor.detach().sum(dim=1, keepdim=True)
            copied.append(f"{name} (summed over RGB for grey input)")
        else:
            skipped.append(f"{name} (shape {tuple(tensor.shape)}, here {tuple(own[ours].shape)})")
    if not copied:
        raise ValueError(f"no tensor of the weights file matches a {encoder.arch}: "
                         f"first names {list(state)[:3]}")
    encoder.load_state_dict(own)
    return copied, skipped


def set_input_normalisation(encoder: TorchvisionEncoder, mean: Sequence[float],
                            std: Sequence[float]) -> None:
    """The pretrained weights' own normalisation (their transforms' mean/std), per channel; a
    grey (1-channel) input takes the mean over R, G, B."""
    c = encoder.input_mean.shape[1]
    mean_t = torch.tensor(list(mean), dtype=torch.float32)
    std_t = torch.tensor(list(std), dtype=torch.float32)
    if c == 1:
        mean_t, std_t = mean_t.mean(0, keepdim=True), std_t.mean(0, keepdim=True)
    encoder.input_mean.copy_(mean_t.view(1, c, 1, 1))
    encoder.input_std.copy_(std_t.view(1, c, 1, 1))
