"""torchvision models whose `features` is a sequence of stages, each stage one named block
(`features0`..): MobileNet V3, EfficientNet, ConvNeXt (whose classifier's LayerNorm on the
pooled features is kept as `pool_norm`).
"""

from __future__ import annotations

from collections.abc import Sequence

from transferlab.backbones import Backbone

BACKBONES = (Backbone("mobilenet_v3_small", blocks=13, min_size=32),
             Backbone("efficientnet_b0", blocks=9, min_size=32),
             Backbone("convnext_tiny", blocks=8, min_size=32, norms=("layer",)))


def build(name: str, in_channels: int, widths: Sequence[int], small_input_stem: bool):
    from collections import OrderedDict

    from torchvision.models import get_model

    from transferlab.models import TorchvisionEncoder, with_in_channels

    net = get_model(name, weights=None)
    net.features[0][0] = with_in_channels(net.features[0][0], in_channels)
    blocks = OrderedDict((f"features{i}", m) for i, m in enumerate(net.features))
    convnext = name.startswith("convnext")
    head = net.classifier[0] if name.startswith("mobilenet") else net.classifier[-1]
    return TorchvisionEncoder(name, in_channels, blocks, head.in_features,
                              pool_norm=net.classifier[0] if convnext else None)


def block_name(arch: str, name: str) -> str | None:
    """'features.3.0.block.0.0.weight' -> 'blocks.features3.0.block.0.0.weight'; ConvNeXt's
    classifier LayerNorm -> 'pool_norm.*'; None for the ImageNet classifier."""
    if name.startswith("features."):
        index, rest = name.removeprefix("features.").split(".", 1)
        return f"blocks.features{index}.{rest}"
    if arch.startswith("convnext") and name.startswith("classifier.0."):
        return f"pool_norm.{name.removeprefix('classifier.0.')}"
    return None
