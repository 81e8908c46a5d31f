"""The schema of params.yaml: every knob, its type and range; typos and bad values stop early.

`load_params()` validates the whole file, so a misspelt key anywhere fails every stage that
runs, with the key's dotted path, what was given and what is allowed.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from collections.abc import Sequence
from typing import Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from transferlab.io import UserError

STRATEGIES = ("scratch", "finetune", "features", "structure", "joint")


def encoder_blocks(arch: str, widths: Sequence[int]) -> int:
    """How many named blocks an architecture has (what frozen/copied block counts range over)."""
    return len(widths) if arch == "small_cnn" else 5


def min_image_size(arch: str, widths: Sequence[int], small_input_stem: bool) -> int:
    """The smallest input that every downsampling of the encoder still leaves >= 1 pixel."""
    if arch == "small_cnn":
        return 2 ** (len(widths) - 1)  # every block but the last halves the image
    return 8 if small_input_stem else 32  # resnet18: x8 (layer2..4) or x32 (plus the stem's x4)


class Strict(BaseModel):
    # allow_inf_nan=False: `.inf` would pass every lower bound and train a NaN model
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


SEED_LIMIT = 2 ** 63  # torch.manual_seed takes a signed 64-bit integer


DATASETS = ("mnist_5k", "uci_digits", "mnist", "fashion_mnist", "usps", "svhn", "cifar10", "folder")


class DatasetSpec(Strict):
    name: Literal[DATASETS]
    classes: Literal["all"] | list[int]  # class ids in the dataset's own numbering, or all
    root: str  # the image-folder root when name is folder; "" otherwise

    @field_validator("classes", mode="before")
    @classmethod
    def _all_or_ids(cls, value):
        if value != "all" and not (isinstance(value, list) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value)):
            raise ValueError("use 'all' or a list of class ids such as [0, 1, 2]")
        return value


class Data(Strict):
    source: DatasetSpec
    target: DatasetSpec
    cache_dir: str  # downloaded datasets; "" = $TRANSFERLAB_DATA or ~/.cache/transferlab

    @model_validator(mode="after")
    def _scenario(self):
        for role, spec in (("source", self.source), ("target", self.target)):
            if (spec.name == "folder") != bool(spec.root):
                raise ValueError(f"data.{role}.root must be set exactly when data.{role}.name is "
                                 f"folder (got name={spec.name}, root={spec.root!r})")
            if spec.classes != "all" and (len(set(spec.classes)) != len(spec.classes)
                                          or len(spec.classes) < 2 or min(spec.classes) < 0):
                raise ValueError(f"data.{role}.classes={spec.classes}: use 'all' or at least two "
                                 "distinct class ids >= 0")
        same = (self.source.name, self.source.root) == (self.target.name, self.target.root)
        if same and (self.source.classes == "all" or self.target.classes == "all"
                     or set(self.source.classes) & set(self.target.classes)):
            raise ValueError("data.source and data.target are the same dataset: give both "
                             "explicit, disjoint class lists (data.*.classes), or the target's "
                             "test images would be source training images")
        return self


class Prepare(Strict):
    image_size: int = Field(ge=8, le=64)
    crop: Literal["bbox", "none"]  # centre each digit on its square bounding box
    bottleneck_size: int = Field(ge=0, le=64)  # pass both domains through this size; 0 = off
    scale: Literal["max", "none"]  # each image divided by its own maximum
    channels: int  # 1 or 3: gray -> 3 repeats the channel; colour -> 1 takes the luminance
    source_val_fraction: float = Field(gt=0, lt=1)
    target_test_fraction: float = Field(gt=0, lt=1)
    target_val_per_class: int = Field(ge=1)
    split_seed: int = Field(ge=0, lt=SEED_LIMIT)  # fixes the target test set across seeds
    shots: int = Field(ge=1)  # labelled target images per class

    @field_validator("channels")
    @classmethod
    def _one_or_three(cls, value):
        if value not in (1, 3):
            raise ValueError("use 1 or 3")
        return value


class Model(Strict):
    arch: Literal["small_cnn", "resnet18"]
    widths: list[int] = Field(min_length=1, max_length=6)  # small_cnn: channels per block
    small_input_stem: bool  # resnet18: 3x3 stride-1 stem, no max-pool, for small images
    weights: str  # source-model initialisation: none | imagenet | path to a resnet18 .pth

    @model_validator(mode="after")
    def _positive(self):
        if any(w < 1 for w in self.widths):
            raise ValueError(f"model.widths must all be >= 1, got {list(self.widths)}")
        return self


class Optim(Strict):
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0, le=10)
    weight_decay: float = Field(ge=0)
    shift_px: int = Field(ge=0, le=8)  # random translation, augmentation


class Pretrain(Optim):
    epochs: int = Field(ge=1)
    seed: int = Field(ge=0, lt=SEED_LIMIT)


class Extract(Strict):
    batch_size: int = Field(ge=1)


class Steps(Optim):
    steps: int = Field(ge=1)


class Scratch(Steps):
    pass


class Finetune(Steps):
    frozen_blocks: int = Field(ge=0)
    backbone_lr_mult: float = Field(ge=0)
    l2sp_weight: float = Field(ge=0)


class Features(Strict):
    C: float = Field(gt=0)


class Structure(Steps):
    copied_blocks: int = Field(ge=0)
    freeze_copied: bool


class Joint(Steps):
    target_weight: float = Field(gt=0)  # the λ of L_source + λ·L_target


class Transfer(Strict):
    scratch: Scratch
    finetune: Finetune
    features: Features
    structure: Structure
    joint: Joint


class Study(Strict):
    shots: list[int] = Field(min_length=1)  # label budgets k (per class)
    seeds: list[int] = Field(min_length=1)  # each seed: another shot draw and initialisation
    layer_shots: int = Field(ge=1)  # label budget of the layer-transfer grid

    @model_validator(mode="after")
    def _distinct_positive(self):
        for key, values, low, high in (("shots", self.shots, 1, 10 ** 6),
                                       ("seeds", self.seeds, 0, SEED_LIMIT)):
            if len(set(values)) != len(values) or min(values) < low or max(values) >= high:
                raise ValueError(f"study.{key}={values}: use distinct integers in [{low}, {high})")
        return self


class Candidate(Strict):
    """One candidate source of the ranking study, derived from data.source."""
    classes: Literal["all"] | list[int]  # source class ids kept (data.source's numbering)
    fraction: float = Field(gt=0, le=1)  # share of the source train split kept, per class
    epochs: int = Field(ge=0)  # pretraining epochs; 0 = the untrained (random) source model
    align: bool  # false: source plain-resized (no bbox crop, bottleneck or max scaling)

    _all_or_ids = field_validator("classes", mode="before")(DatasetSpec._all_or_ids.__func__)


class Ranking(Strict):
    shots: int = Field(ge=1)  # target shots per class of each seed's draw
    seeds: list[int] = Field(min_length=1)  # each seed: a shot draw and an initialisation
    bootstrap: int = Field(ge=100, le=100_000)  # resamples of the candidates for the intervals
    recommend_by: Literal["logme", "leep", "nce", "hscore"]  # the score that picks the source
    candidates: dict[str, Candidate] = Field(min_length=3)

    @model_validator(mode="after")
    def _names_and_seeds(self):
        for name, cand in self.candidates.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
                raise ValueError(f"ranking.candidates.{name}: name it with a-z, 0-9, _ and - "
                                 "(it becomes a stage and a file name)")
            if cand.classes != "all" and (len(set(cand.classes)) != len(cand.classes)
                                          or len(cand.classes) < 2 or min(cand.classes) < 0):
                raise ValueError(f"ranking.candidates.{name}.classes={cand.classes}: use 'all' "
                                 "or at least two distinct class ids >= 0")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0 \
                or max(self.seeds) >= SEED_LIMIT:
            raise ValueError(f"ranking.seeds={self.seeds}: use distinct integers in "
                             f"[0, {SEED_LIMIT})")
        return self


class Params(Strict):
    seed: int = Field(ge=0, lt=SEED_LIMIT)  # shot draw + initialisation of transfer
    data: Data
    prepare: Prepare
    model: Model
    pretrain: Pretrain
    extract: Extract
    transfer: Transfer
    study: Study
    ranking: Ranking

    @model_validator(mode="after")
    def _fits_the_model(self):
        m = self.model
        if m.weights != "none" and m.arch != "resnet18":
            raise ValueError(f"model.weights={m.weights!r} needs model.arch=resnet18 "
                             "(small_cnn has no published weights): use none")
        if m.weights == "imagenet" and self.prepare.channels != 3:
            raise ValueError("model.weights=imagenet expects colour input: set prepare.channels=3")
        smallest = min_image_size(m.arch, m.widths, m.small_input_stem)
        if self.prepare.image_size < smallest:
            raise ValueError(f"prepare.image_size={self.prepare.image_size} is too small for "
                             f"model.arch={m.arch} with these blocks: use >= {smallest}")
        n = encoder_blocks(m.arch, m.widths)
        for key, value in (("transfer.finetune.frozen_blocks", self.transfer.finetune.frozen_blocks),
                           ("transfer.structure.copied_blocks", self.transfer.structure.copied_blocks)):
            if value > n:
                raise ValueError(f"{key}={value} but the encoder has {n} blocks; use 0..{n}")
        return self


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _submodel(loc: tuple) -> type[BaseModel]:
    model: type[BaseModel] = Params
    named: type[BaseModel] | None = None  # the value model of a mapping of named sections
    for part in loc:
        if named is not None:  # `part` is a name the user chose (ranking.candidates.<name>)
            model, named = named, None
            continue
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if typing.get_origin(annotation) is dict:
            named = typing.get_args(annotation)[1]
            continue
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return model


def _explain(err: ValidationError, raw: dict) -> str:
    # an unknown key first: a misspelt key also makes its correct spelling "missing"
    first = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    # drop pydantic's union-branch names (e.g. "literal['all']") from the location
    loc = tuple(str(p) for p in first["loc"] if isinstance(p, int) or str(p).isidentifier())
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(_submodel(loc[:-1]))
        given, lower = loc[-1], {a.lower(): a for a in allowed}
        close = ([a for a in allowed if a.lower().startswith(given.lower())
                  or given.lower().startswith(a.lower())]
                 or [lower[m] for m in difflib.get_close_matches(given.lower(), lower, n=1,
                                                                 cutoff=0.5)])
        hint = f"did you mean '{'.'.join(loc[:-1] + (close[0],))}'? " if close else ""
        return f"params.yaml: unknown key '{key}': {hint}allowed here: {', '.join(allowed)}"
    if first["type"] == "missing":
        return f"params.yaml: key '{key}' is missing: add it (see the README's params section)"
    if not loc:  # a model-level check: the message names its keys
        return f"params.yaml: {first['msg'].removeprefix('Value error, ')}"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "value_error" and re.search(r"\b[a-z_]+\.[a-z_]{2,}", msg):
        return f"params.yaml: {msg}"  # a section's own check: its message names the keys
    return f"params.yaml: {key}={first.get('input')!r} is invalid: {msg}"


class DuplicateKeyError(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a repeated key (plain PyYAML keeps the last one silently, while
    DVC's own reader refuses the file): both must agree on what params.yaml says."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKeyError(f"key '{key}' appears twice "
                                        f"(line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_params(raw: object) -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError("params.yaml must be a mapping of sections (seed, data, prepare, ...)")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise UserError(_explain(err, raw)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: run from the repository root")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text: save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"{path} cannot be read ({err.strerror})") from None
    except DuplicateKeyError as err:
        raise UserError(f"{path}: {err}: keep one") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{where}: fix the syntax") from None
    return parse_params(raw)
