"""torchvision's ResNets as blocks `stem` (conv1, bn1, relu, maxpool), `layer1`..`layer4`.

`model.small_input_stem: true` replaces the stem by a 3x3 stride-1 conv with no max-pool, for
16-32 px inputs (x8 downsampling instead of x32).
"""

from __future__ import annotations

from collections.abc import Sequence

from transferlab.backbones import Backbone

BACKBONES = (Backbone("resnet18", blocks=5, min_size=32, small_stem_min_size=8),
             Backbone("resnet50", blocks=5, min_size=32, small_stem_min_size=8))


def build(name: str, in_channels: int, widths: Sequence[int], small_input_stem: bool):
    from collections import OrderedDict

    from torch import nn
    from torchvision.models import get_model

    from transferlab.models import TorchvisionEncoder, with_in_channels

    net = get_model(name, weights=None)
    if small_input_stem:  # 3x3 stride 1, no max-pool: for 16-32 px inputs
        conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        pool = nn.Identity()
    else:
        conv1, pool = with_in_channels(net.conv1, in_channels), net.maxpool
    stem = nn.Sequential(OrderedDict(conv1=conv1, bn1=net.bn1, relu=net.relu, maxpool=pool))
    blocks = OrderedDict(stem=stem, layer1=net.layer1, layer2=net.layer2, layer3=net.layer3,
                         layer4=net.layer4)
    return TorchvisionEncoder(name, in_channels, blocks, net.fc.in_features)


def block_name(arch: str, name: str) -> str | None:
    """'conv1.weight' -> 'blocks.stem.conv1.weight'; None for the ImageNet classifier `fc`."""
    if name.startswith(("conv1.", "bn1.")):
        return f"blocks.stem.{name}"
    return f"blocks.{name}" if name.startswith("layer") else None
