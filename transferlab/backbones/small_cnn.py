"""small_cnn: the pipeline's own conv net, one conv block per entry of `model.widths`.

Shapes for the default 16x16 one-channel input and widths (32, 64, 128):
    block1  (N, 1, 16, 16) -> (N, 32, 8, 8)    conv3x3-BN-ReLU, max-pool 2
    block2  (N, 32, 8, 8)  -> (N, 64, 4, 4)    conv3x3-BN-ReLU, max-pool 2
    block3  (N, 64, 4, 4)  -> (N, 128, 4, 4)   conv3x3-BN-ReLU (the last block keeps its size)
    pool    (N, 128, 4, 4) -> (N, 128)         global average
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


BACKBONES = (SmallCNNBackbone("small_cnn", blocks=0, min_size=1, weights=None),)


def build(name: str, in_channels: int, widths: Sequence[int], small_input_stem: bool):
    from transferlab.models import SmallCNN

    return SmallCNN(in_channels, widths)
