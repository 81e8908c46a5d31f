"""Hyper-parameter search spaces and their seeded draws (DomainBed style: Gulrajani & Lopez-Paz,
"In search of lost domain generalization", ICLR 2021).

Each method declares its space beside its defaults (`Method.search`, in its module: the options
it would tune and their distributions). Draw 0 is the method's own params section, unchanged;
draw n > 0 samples every option of the space from a generator seeded by (method name, n) only,
so a draw is the same options in every task and seed (the training seed varies apart), and
adding draws never changes the earlier ones. The selection study (selection/dvc.yaml) runs the
draws; the default pipeline never does. Pure Python and numpy: no torch.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LogUniform:
    """exp(U(ln low, ln high)): for scales (learning rates, loss weights)."""
    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def describe(self) -> str:
        return f"log-uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def describe(self) -> str:
        return f"uniform [{self.low:g}, {self.high:g}]"


Space = Mapping[str, "LogUniform | Uniform"]

# What every adaptation method tunes (its `Adaptation` options): DomainBed's learning-rate
# range for Adam around the default 1e-3, and its lambda range for an adaptation term's weight.
ADAPTATION = {"lr": LogUniform(3e-4, 3e-3), "loss_weight": LogUniform(0.1, 10.0)}


def draw(name: str, space: Space, defaults, index: int):
    """The options of `name`'s draw `index`: `defaults` (its params section) at 0, else every
    option of `space` sampled afresh, rounded to 4 significant digits (a draw reads back from
    its JSON record the same), and validated by the options' own class."""
    if index < 0:
        raise ValueError(f"draw {index}: draws count from 0 (the params' own options)")
    if index == 0 or not space:
        return defaults
    unknown = set(space) - set(type(defaults).model_fields)
    if unknown:
        raise ValueError(f"{name}: search space names options it does not have: {sorted(unknown)}")
    rng = np.random.default_rng([zlib.crc32(name.encode()), index])
    drawn = {key: float(f"{space[key].sample(rng):.4g}") for key in sorted(space)}
    return type(defaults).model_validate({**defaults.model_dump(), **drawn})


def describe(space: Space) -> dict[str, str]:
    return {key: dist.describe() for key, dist in space.items()}
