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

from transferlab.models import Architecture, Classifier, architecture_from, new_head
from transferlab.params import Params
from transferlab.source import target_features
from transferlab.io import UserError
from transferlab.train import FitResult, Stream, TrainingDiverged, fit

NAMES = ("scratch", "finetune", "features", "structure", "joint")


@dataclass
class Inputs:
    target: dict[str, torch.Tensor]  # x_train, y_train (the shots), x_val, y_val: on the device
    architecture: Architecture       # the encoder every new model is built with
    num_classes: int
    seed: int
    load_source_model: Callable[[], Classifier]           # read only by strategies that use it
    load_source_data: Callable[[], dict[str, torch.Tensor]]
    load_features: Callable[[], dict]


@dataclass
class Outcome:
    model: Classifier
    fit: FitResult | None = None
    info: dict = field(default_factory=dict)  # strategy facts for metrics (what was copied, ...)


def make_inputs(target: dict[str, torch.Tensor], params: Params, seed: int,
                load_source_model: Callable[[], Classifier],
                load_source_data: Callable[[], dict],
                load_features: Callable[[], dict] | None = None) -> Inputs:
    """Inputs for the target shots and validation set; without `load_features`, the frozen
    features are computed on demand from the source encoder (as the extract stage does)."""
    def compute_features() -> dict:
        return target_features(load_source_model().encoder, target, params.extract.batch_size)

    return Inputs(target=target,
                  architecture=architecture_from(params.model, target["x_train"].shape[1]),
                  num_classes=int(target["y_train"].max()) + 1, seed=seed,
                  load_source_model=load_source_model, load_source_data=load_source_data,
                  load_features=load_features or compute_features)


def run(name: str, inputs: Inputs, cfg) -> Outcome:
    if name not in NAMES:
        raise ValueError(f"unknown strategy '{name}': choose one of {', '.join(NAMES)}")
    try:
        return importlib.import_module(f"transferlab.strategies.{name}").run(inputs, cfg)
    except TrainingDiverged as err:
        raise UserError(f"transfer.{name}: {err}: lower transfer.{name}.lr or "
                        f"transfer.{name}.weight_decay") from None


def new_classifier(inputs: Inputs) -> Classifier:
    """A randomly initialised encoder (from the global seed) with a zero-initialised head."""
    model = Classifier(inputs.architecture.build(), inputs.num_classes)
    model.head = new_head(model.encoder.out_features, inputs.num_classes)
    return model


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
