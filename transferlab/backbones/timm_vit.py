"""timm's vision transformers (PyTorch Image Models: DINOv2, CLIP image towers, AugReg, ...) as
blocks `embed` (patches, class and register tokens, positions, pre-norm), `block0`..`blockN-1`,
`norm`; the output is timm's own pooled feature (`forward_head(..., pre_logits=True)`: the
class token, or the average, as the model was published).

Any timm `VisionTransformer` is one entry below: its registry name is `timm/` + timm's model
name, `blocks` is its depth + 2, `min_size` its patch size. Built with `dynamic_img_size` and
`dynamic_img_pad`, so any `prepare.image_size` of at least one patch works (the image is padded
to whole patches, the position embedding interpolated to the grid); the published models were trained at 224 px (DINOv2: 518) and transfer best near that size.

Weights (`model.weights`) come from a timm / Hugging Face checkpoint file on disk, in timm's
format (`model.safetensors` or `pytorch_model.bin` of the `hub` repository below); nothing is
downloaded. The input normalisation of the model's published config (its mean and std) goes
into the model file with them, so predict and the ONNX export reuse it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transferlab import backbones
from transferlab.backbones import Backbone


@dataclass(frozen=True)
class TimmBackbone(Backbone):
    hub: str = ""  # the Hugging Face repository of the weights a user is told to place
    sized: bool = True
    norms: tuple[str, ...] = ("layer",)  # LayerNorm throughout: what the model file records

    def weights_url(self) -> str:
        return f"https://huggingface.co/{self.hub}"


BACKBONES = (
    # DINOv2 ViT-S/14 (Oquab et al. 2023): self-supervised on LVD-142M, 22 M weights
    TimmBackbone("timm/vit_small_patch14_dinov2", blocks=14, min_size=14, weights="timm",
                 hub="timm/vit_small_patch14_dinov2.lvd142m"),
    # CLIP ViT-B/16 image tower (Radford et al. 2021), OpenAI's weights, 86 M weights
    TimmBackbone("timm/vit_base_patch16_clip_224", blocks=14, min_size=16, weights="timm",
                 hub="timm/vit_base_patch16_clip_224.openai"),
    # ViT-Ti/16 (AugReg, Steiner et al. 2021), 5.5 M weights: the small one, for CPUs
    TimmBackbone("timm/vit_tiny_patch16_224", blocks=14, min_size=16, weights="timm",
                 hub="timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"),
)


def timm_name(arch: str) -> str:
    return arch.removeprefix("timm/")


def create(arch: str, in_channels: int, image_size: int):
    """timm's model for `image_size` inputs, no classifier, random weights. Its grid is built
    for the size padded up to whole patches (what dynamic_img_pad feeds it)."""
    import timm

    patch = backbones.get(arch).min_size  # the patch side
    net = timm.create_model(timm_name(arch), pretrained=False, num_classes=0,
                            in_chans=in_channels, img_size=-(-image_size // patch) * patch,
                            dynamic_img_pad=True)
    net.patch_embed.strict_img_size = False  # image_size itself, padded to the grid built for
    return net


def build(name: str, in_channels: int, widths: Sequence[int], small_input_stem: bool, *,
          image_size: int):
    from transferlab.models import TimmViTEncoder

    return TimmViTEncoder(name, in_channels, create(name, in_channels, image_size))


def convert_state(arch: str, state: dict, encoder) -> dict:
    """A published (timm-format) state dict fitted to the built `encoder`: its position
    embedding resampled to the encoder's grid (timm's own bicubic resampling, as timm does when
    it loads weights for another image size)."""
    from timm.layers import resample_abs_pos_embed

    net = encoder.blocks.embed.net
    theirs = state.get("pos_embed")
    if theirs is None or theirs.shape == net.pos_embed.shape or theirs.ndim != 3:
        return state  # a shape still wrong is named by load_pretrained
    prefix = 0 if net.no_embed_class else net.num_prefix_tokens
    return {**state, "pos_embed": resample_abs_pos_embed(
        theirs, new_size=list(net.patch_embed.grid_size), num_prefix_tokens=prefix,
        verbose=False)}


def block_name(arch: str, name: str) -> str | None:
    """timm's tensor names -> ours: 'blocks.3.attn.qkv.weight' -> 'blocks.block3.attn.qkv.weight',
    'norm.weight' -> 'blocks.norm.weight', the embedding's and pooling's under 'blocks.embed.net.';
    None for the classifier `head`."""
    if name.startswith("head."):
        return None
    if name.startswith("blocks."):
        index, rest = name.removeprefix("blocks.").split(".", 1)
        return f"blocks.block{index}.{rest}"
    if name.startswith("norm."):
        return f"blocks.{name}"
    return f"blocks.embed.net.{name}"


def normalisation(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std of the published weights' config."""
    import timm

    cfg = timm.get_pretrained_cfg(backbones.get(arch).hub.removeprefix("timm/"))
    return tuple(cfg.mean), tuple(cfg.std)
