"""small_cnn: the pipeline's own conv net, one conv block per entry of `model.widths`.

Shapes for the default 16x16 one-channel input and widths (32, 64, 128):
    block1  (N, 1, 16, 16) -> (N, 32, 8, 8)    conv3x3-norm-ReLU, max-pool 2
    block2  (N, 32, 8, 8)  -> (N, 64, 4, 4)    conv3x3-norm-ReLU, max-pool 2
    block3  (N, 64, 4, 4)  -> (N, 128, 4, 4)   conv3x3-norm-ReLU (the last block keeps its size)
    head    pool:    (N, 128, 4, 4) -> (N, 128)       global average
            flatten: (N, 128, 4, 4) -> (N, 2048)      average-pooled to a 4x4 grid, flattened
model.norm: batch (BatchNorm: statistics of each batch, running averages at test time) |
group (GroupNorm, 8 channels a group) | layer (GroupNorm with one group: each image on its own)
| none (conv with bias). Without BatchNorm an image's features do not depend on the batch or on
statistics gathered on the source, which is what collapses on a shifted target.
model.input: unit (pixels in [0, 1], as prepared) | centred (2x - 1: in [-1, 1], so the zero
padding of every 3x3 conv is mid-grey rather than black; what the plain reference script does).
No published weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transferlab.backbones import Backbone


@dataclass(frozen=True)
class SmallCNNBackbone(Backbone):
    def block_count(self, widths: Sequence[int]) -> int:
        return len(widths)

    def smallest_input(self, widths: Sequence[int], small_input_stem: bool) -> int:
        return 2 ** (len(widths) - 1)  # every block but the last halves the image

    def uses_widths(self) -> bool:
        return True


BACKBONES = (SmallCNNBackbone("small_cnn", blocks=0, min_size=1, weights=None,
                              # the first of each is model.norm/head auto, and group norm where a
                              # domain has a textured background: chosen by measurement on the
                              # three offline tasks (docs/datasets.md, "The encoder")
                              norms=("batch", "group", "layer", "none"),
                              heads=("flatten", "pool"), textured_norm="group",
                              inputs=("unit", "centred"), textured_input="centred"),)


def build(name: str, in_channels: int, widths: Sequence[int], small_input_stem: bool, *,
          norm: str = "batch", head: str = "pool", input: str = "unit"):
    from transferlab.models import SmallCNN

    return SmallCNN(in_channels, widths, norm, head, centred=input == "centred")
