"""Option classes shared by the params schema and the strategy modules.

Kept apart from params.py so that a strategy module can declare its own options (its params
section) without importing the schema that is built from those very modules, and free of torch
so that validating params.yaml (check_params, download) never pays torch's ~2 s import.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from transferlab.validators import NAMES as VALIDATOR_NAMES  # the registry: light, no torch

SEED_LIMIT = 2 ** 63  # torch.manual_seed takes a signed 64-bit integer

# Every count has a ceiling, each with its reason (shown when a value exceeds it): a typo such as
# `steps: 1e30` must stop here, not run for a geological age or allocate the machine away.
MAX_STEPS, MAX_EPOCHS = 1_000_000, 1_000
WHY_STEPS = "a longer run would take days on this hardware; the defaults use a few hundred"
MAX_BATCH = 65_536
WHY_BATCH = "a bigger batch would not fit in memory, and no dataset here needs one"
MAX_IMAGES_PER_CLASS = 100_000
WHY_IMAGES = "no supported dataset has that many images per class"
MAX_BLOCKS = 64
WHY_BLOCKS = "no encoder here has more blocks"
MAX_WEIGHT = 1_000.0
WHY_WEIGHT = "a loss weight that large only rescales the learning rate until training diverges"
WHY_DECAY = "AdamW shrinks each weight by lr x weight_decay per step: above 1 training diverges"
MAX_LIST, WHY_LIST = 100, "each entry is a pipeline stage per seed or budget"
MAX_WIDTH = 4096


class Strict(BaseModel):
    # allow_inf_nan=False: `.inf` would pass every lower bound and train a NaN model
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class Encoder(BaseModel):
    """What a method's options may check themselves against (`Options.check_encoder`): the
    encoder of `model.arch`, as the backbone registry describes it."""
    arch: str
    blocks: int  # named blocks: what frozen / copied block counts range over

    def check_block_count(self, key: str, value: int) -> None:
        """A count of this encoder's blocks (frozen, copied) that it cannot have: ValueError."""
        if value > self.blocks:
            raise ValueError(f"{key}={value} but the encoder has {self.blocks} blocks; "
                             f"use 0..{self.blocks}")


class Optim(Strict):
    batch_size: int = Field(ge=1, le=MAX_BATCH, description=WHY_BATCH)
    lr: float = Field(gt=0, le=10)
    weight_decay: float = Field(ge=0, le=1, description=WHY_DECAY)
    shift_px: int = Field(ge=0, le=8)  # random translation, augmentation


class Steps(Optim):
    steps: int = Field(ge=1, le=MAX_STEPS, description=WHY_STEPS)


class Adaptation(Steps):
    """Every domain-adaptation method: source CE + target-shot CE + loss_weight x its own term.
    batch_size is per stream (source, target shots, unlabelled target)."""
    # the lambda in front of the adaptation term; 0 = source + target CE only
    loss_weight: float = Field(ge=0, le=MAX_WEIGHT, description=WHY_WEIGHT)


ValidatorName = Literal[VALIDATOR_NAMES]  # type: ignore[valid-type]


class Selection(Strict):
    """How a run with no target label (prepare.shots: 0) chooses: every registered validator
    is recorded at every evaluation; `validator` picks the checkpoint among those that keep
    their source accuracy, and an adapted model replaces the source model only when every
    validator of `guard` says it is better (transferlab/selection.py)."""
    validator: ValidatorName
    # a checkpoint whose source validation accuracy fell more than this below the source
    # model's is not a candidate (adaptation must not forget the task it transfers)
    max_source_drop: float = Field(ge=0, le=1)
    # ... except for a source-free method (shot, tent), which never trains on a source image:
    # its candidates must stay this far above chance (1/K) on source validation instead; null
    # holds them to max_source_drop too
    source_free_floor: float | None = Field(ge=0, le=1)
    # unlabelled target images the validators read: a seeded subsample of the pool, so that
    # scoring a checkpoint costs the same on a pool of 700 or 70,000 images
    pool_size: int = Field(ge=2, le=MAX_IMAGES_PER_CLASS)
    guard: list[ValidatorName] = Field(max_length=MAX_LIST)  # empty: no guard
    # each guard validator must rise by more than this share of |the source model's score|
    guard_margin: float = Field(ge=0, le=10)
