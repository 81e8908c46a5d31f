"""The registry of backbones (encoder architectures): one module per family in this package.

Each module declares `BACKBONES = (Backbone(...), ...)`, the facts the params schema needs
(how many named blocks, the smallest input, a fixed input size, whether published weights
exist, which normalisations and heads it builds), and a `build(name, in_channels, widths,
small_input_stem)` that returns a `models.Encoder` with named blocks; a family that declares
more than one of `norms`, `heads` or `inputs` also takes `norm=` / `head=` / `input=`
keywords (model.norm, model.head, model.input), and one declared `sized` an `image_size=` keyword (prepare.image_size: a ViT's
position embedding is built for one grid). A family may also declare
`convert_state(arch, state, encoder)`, which fits a published state dict to the built encoder
before it is copied (a position embedding resampled to the grid). Torchvision families also map torchvision's tensor names to ours (`block_name`),
which is how pretrained weights are copied.

This package imports no torch: params.py reads it to build its schema (`check_params` must not
pay torch's ~2 s start-up), and each module imports torch inside `build`. Adding a backbone is
one module here (docs/extending.md); tests/test_backbones.py checks every registered one.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

from transferlab.registry import discover


@dataclass(frozen=True)
class Backbone:
    """What the rest of the pipeline may know of an architecture without building it."""
    name: str
    blocks: int                 # named blocks: what frozen / copied block counts range over
    min_size: int               # smallest input every downsampling still leaves >= 1 px
    fixed_size: int | None = None  # the only input size it takes (learnt position embeddings)
    small_stem_min_size: int | None = None  # takes model.small_input_stem: the smallest then
    weights: str | None = "torchvision"  # where published weights come from; None: none exist
    # model.norm / model.head values it builds; the first of each is what auto builds (as
    # published for torchvision's; small_cnn's by measurement)
    norms: tuple[str, ...] = ("batch",)
    heads: tuple[str, ...] = ("pool",)
    # what model.norm auto builds instead of norms[0] where prepare found a textured or bright
    # background in either domain (scenario.backdrop); None: norms[0] everywhere
    textured_norm: str | None = None
    # model.input values it takes (how pixels in [0, 1] enter it), the first what auto takes, and
    # what auto takes instead on a textured backdrop; () for a backbone that normalises its own
    # input (a torchvision model: its published mean and std)
    inputs: tuple[str, ...] = ()
    textured_input: str | None = None
    sized: bool = False         # built for one input size: its build() takes image_size=
    family: str = ""            # filled in from the module name

    def block_count(self, widths: Sequence[int]) -> int:
        return self.blocks

    def smallest_input(self, widths: Sequence[int], small_input_stem: bool) -> int:
        if small_input_stem and self.small_stem_min_size is not None:
            return self.small_stem_min_size
        return self.min_size

    def uses_widths(self) -> bool:
        """True when model.widths shapes it (the model file records them)."""
        return False

    def takes_small_stem(self) -> bool:
        return self.small_stem_min_size is not None


BACKBONES: dict[str, Backbone] = discover(__name__, __path__, "BACKBONES", "backbone")
NAMES = tuple(BACKBONES)  # discovery order: by module name, then as each module lists them


def list_backbones() -> list[Backbone]:
    return list(BACKBONES.values())


def get(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown architecture '{name}': choose one of {', '.join(NAMES)}")
    return BACKBONES[name]


def family_module(name: str):
    """The module that builds backbone `name` (imports torch)."""
    return importlib.import_module(f"{__name__}.{get(name).family}")
