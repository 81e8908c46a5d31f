"""Transfer strategies: one module each, one `run(inputs, cfg) -> Outcome` per module.

Every strategy returns the same kind of model, a `Classifier` (encoder + linear head) for the
target classes, so `evaluate` scores them all the same way, and none of them sees the target
test set: `Inputs` holds only the target train shots and the target validation set.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from transferlab.models import Classifier
from transferlab.train import FitResult, Stream, fit

NAMES = ("scratch", "finetune", "features", "structure", "joint")


@dataclass
class Inputs:
    target: dict[str, torch.Tensor]  # x_train, y_train (the shots), x_val, y_val: on the device
    in_channels: int
    num_classes: int
    widths: list[int]
    seed: int
    load_source_model: Callable[[], Classifier]           # read only by strategies that use it
    load_source_data: Callable[[], dict[str, torch.Tensor]]
    load_features: Callable[[], dict]


@dataclass
class Outcome:
    model: Classifier
    fit: FitResult | None = None
    info: dict = field(default_factory=dict)  # strategy facts for metrics (what was copied, ...)


def run(name: str, inputs: Inputs, cfg) -> Outcome:
    if name not in NAMES:
        raise ValueError(f"unknown strategy '{name}': choose one of {', '.join(NAMES)}")
    return importlib.import_module(f"transferlab.strategies.{name}").run(inputs, cfg)


def fit_on_target(model: Classifier, param_groups: list[dict], inputs: Inputs, cfg,
                  penalty=None) -> FitResult:
    """The shared case: one stream, the target shots, through `model`; selection on target val."""
    t = inputs.target
    return fit(model, [g for g in param_groups if g["params"]],
               [Stream(t["x_train"], t["y_train"], model)], (t["x_val"], t["y_val"], model),
               steps=cfg.steps, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
               shift_px=cfg.shift_px, seed=inputs.seed, penalty=penalty)


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]
