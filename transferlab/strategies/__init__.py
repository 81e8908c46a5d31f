"""The registry of transfer methods: one module per method in this package, found by name.

Each module declares `METHOD = Method(...)` (its family, a one-line description, its options
class = its params section `transfer.<name>`, whether it needs target labels, and which inputs
it reads) and a `run(inputs, cfg) -> Outcome`. Everything else derives from this registry: the
params schema (params.py), evaluate's table (evaluation.py), the study (study.py), and the
tests; tests/test_registry.py fails when a module, its params section and its dvc.yaml entry
disagree.

The modules keep torch out of their top level (it is imported inside `run`): params.py imports
every one of them to build its schema, and check_params must not pay torch's ~2 s start-up.

Every method returns the same kind of model, a `Classifier` (encoder + linear head) for the
target classes, so `evaluate` scores them all the same way, and none of them sees the target
test set: `Inputs` holds the target shots, the target validation set and, for the methods that
read them, the source model, the source data, the frozen features and the unlabelled target
pool -- as values, given by the caller.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from transferlab.errors import UserError

# What a method may read besides the target shots and validation set (dvc.yaml's deps follow).
READS = ("source_model", "source_data", "features", "unlabelled")
# Table order: the control, then the founding document's four families, then adaptation.
FAMILIES = ("none (the control)", "parameter transfer", "feature transfer", "structural transfer",
            "knowledge transfer", "domain adaptation", "source-free adaptation", "self-training")


@dataclass(frozen=True)
class Method:
    family: str           # one of FAMILIES
    description: str      # one line, for evaluate's table and the README
    options: type         # the pydantic class of its params section
    needs_labels: bool    # False: runs with prepare.shots = 0 (unsupervised adaptation)
    reads: frozenset = frozenset()  # a subset of READS
    # adapts the source model's BatchNorm layers: skipped (not refused) where it has none, e.g.
    # small_cnn on a textured backdrop (model.norm auto: group)
    needs_batchnorm: bool = False
    # the options the selection study draws (transferlab/search.py): {option: distribution};
    # empty: the method is run with its params section only
    search: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""        # filled in from the module name

    def __post_init__(self):
        if self.family not in FAMILIES or not set(self.reads) <= set(READS):
            raise ValueError(f"bad METHOD: family {self.family!r}, reads {sorted(self.reads)}")
        unknown = set(self.search) - set(self.options.model_fields)
        if unknown:
            raise ValueError(f"bad METHOD: its search space names options it does not have: "
                             f"{sorted(unknown)}")


def _discover() -> dict[str, Method]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        method = getattr(module, "METHOD", None)
        if method is not None:  # helper modules (shared code) declare none
            found.append(Method(**{**method.__dict__, "name": info.name}))
    found.sort(key=lambda m: (FAMILIES.index(m.family), m.name))
    return {m.name: m for m in found}


@dataclass
class Inputs:
    target: dict          # x_train, y_train (the shots; empty at 0 shots), x_val, y_val: tensors
    architecture: Any     # models.Architecture: the encoder every new model is built with
    num_classes: int
    seed: int
    source_model: Any = None  # models.Classifier, for methods that read it
    source: dict | None = None  # source x_train, y_train, x_val, y_val
    features: dict | None = None  # frozen source features of the shots and val (extract stage)
    unlabelled: Any = None  # (M, C, H, W) uint8 target train images minus the shots: no labels
    augment: Any = None  # train.PhotoAugment (params augment.mode: photo), None: shift_px
    selection: Any = None  # options.Selection: how a run with 0 target labels chooses
    keep_checkpoints: bool = False  # the study: keep every label-free candidate's weights

    @property
    def shots(self) -> int:
        return len(self.target["y_train"]) // self.num_classes


@dataclass
class Outcome:
    model: Any                  # models.Classifier for the target classes
    fit: Any = None             # train.FitResult, None for methods that do not train with fit
    info: dict = field(default_factory=dict)  # method facts for metrics (what was copied, ...)


METHODS: dict[str, Method] = {}  # filled below: the modules import Method from here first
METHODS.update(_discover())
NAMES = tuple(METHODS)


def table_order(names) -> list[str]:
    """The one order of every table, chart and list of results: source_only, then the
    registry's (the control, the four families, adaptation), then any other name; a name
    with a suffix (`dann (oracle)`) sorts with its method."""
    rank = {n: i for i, n in enumerate(["source_only", *METHODS])}
    return sorted(names, key=lambda n: (rank.get(n.split(" (")[0], len(rank)), n))


def run(name: str, inputs: Inputs, cfg) -> Outcome:
    if name not in METHODS:
        raise ValueError(f"unknown strategy '{name}': choose one of {', '.join(NAMES)}")
    from transferlab.train import TrainingDiverged  # torch: imported only when a method runs

    module = importlib.import_module(f"{__name__}.{name}")
    try:
        return module.run(inputs, cfg)
    except TrainingDiverged as err:
        raise UserError(f"transfer.{name}: {err}: {divergence_advice(name, cfg)}") from None


# The options of any method that scale its steps: too large, and the loss becomes NaN. A method
# whose own option can diverge in another way says so in `why_diverged(cfg)` (mcc: temperature).
STEP_KNOBS = ("lr", "weight_decay", "backbone_lr_mult", "loss_weight", "l2sp_weight",
              "target_weight")


def divergence_advice(name: str, cfg) -> str:
    """What to change when `name` diverged with options `cfg`: the method's own diagnosis of its
    values first (module-level `why_diverged(cfg) -> str | None`), else the step-scaling
    options it has, with their values (one at 0 cannot be the cause: not named)."""
    own = getattr(importlib.import_module(f"{__name__}.{name}"), "why_diverged", None)
    if own is not None and (hint := own(cfg)):
        return hint
    knobs = [f"transfer.{name}.{k} (now {getattr(cfg, k):g})" for k in STEP_KNOBS
             if k in type(cfg).model_fields and (k == "lr" or getattr(cfg, k) > 0)]
    return "lower " + (" or ".join(knobs) if len(knobs) < 3 else
                       ", ".join(knobs[:-1]) + " or " + knobs[-1])
