"""torchvision's vision transformer as blocks `embed` (patches, class token, positions),
`layer0`..`layer11`, `norm`; its output is the class token after the final LayerNorm.
224 px only: the position embedding is learnt for 14 x 14 patches of 16 px.
"""

from __future__ import annotations

from collections.abc import Sequence

from transferlab.backbones import Backbone

BACKBONES = (Backbone("vit_b_16", blocks=14, min_size=224, fixed_size=224, norms=("layer",)),)


def build(name: str, in_channels: int, widths: Sequence[int], small_input_stem: bool):
    from collections import OrderedDict

    from torchvision.models import get_model

    from transferlab.models import TorchvisionEncoder, ViTEmbedding, with_in_channels

    net = get_model(name, weights=None)
    embed = ViTEmbedding(with_in_channels(net.conv_proj, in_channels), net.class_token,
                         net.encoder.pos_embedding)
    blocks = OrderedDict(embed=embed, **{f"layer{i}": layer for i, layer in
                                         enumerate(net.encoder.layers)}, norm=net.encoder.ln)
    return TorchvisionEncoder(name, in_channels, blocks, net.hidden_dim, token_output=True)


def block_name(arch: str, name: str) -> str | None:
    if name.startswith("conv_proj.") or name == "class_token":
        return f"blocks.embed.{name}"
    if name == "encoder.pos_embedding":
        return "blocks.embed.pos_embedding"
    if name.startswith("encoder.layers.encoder_layer_"):
        index, rest = name.removeprefix("encoder.layers.encoder_layer_").split(".", 1)
        return f"blocks.layer{index}.{rest}"
    if name.startswith("encoder.ln."):
        return f"blocks.norm.{name.removeprefix('encoder.ln.')}"
    return None  # the ImageNet head
