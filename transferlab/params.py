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
from typing import Annotated, Literal

from pydantic import (AfterValidator, BaseModel, Field, ValidationError, WrapValidator,
                      create_model, field_validator, model_validator)

from transferlab import backbones, datasets
from transferlab.errors import UserError
from transferlab.options import (MAX_BATCH, MAX_EPOCHS, MAX_IMAGES_PER_CLASS, MAX_LIST,
                                 MAX_WIDTH, SEED_LIMIT, WHY_BATCH, WHY_IMAGES, WHY_LIST,
                                 WHY_STEPS, Encoder, Optim, Selection, Strict)
from transferlab.strategies import METHODS


def encoder_blocks(arch: str, widths: Sequence[int]) -> int:
    """How many named blocks an architecture has (what frozen/copied block counts range over)."""
    return backbones.get(arch).block_count(widths)


def min_image_size(arch: str, widths: Sequence[int], small_input_stem: bool) -> int:
    """The smallest input that every downsampling of the encoder still leaves >= 1 pixel."""
    return backbones.get(arch).smallest_input(widths, small_input_stem)


def is_weights_name(weights: str) -> bool:
    """A torchvision weights name (DEFAULT, IMAGENET1K_V1, ...; imagenet = DEFAULT), as opposed
    to none or a file path: upper-case letters, digits and underscores."""
    return weights == "imagenet" or re.fullmatch(r"[A-Z][A-Z0-9_]*", weights) is not None


DATASETS = datasets.NAMES  # every module of transferlab/datasets/


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


def same_place(a: str, b: str) -> bool:
    """Whether two folder roots name one folder (`/x/base` and `/x/base/`, a link, `~`). A folder
    inside the other is not the same place: `prepare` finds its shared images by content."""
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


class Data(Strict):
    source: DatasetSpec
    target: DatasetSpec
    cache_dir: str  # downloaded datasets; "" = $TRANSFERLAB_DATA or ~/.cache/transferlab
    # the target test set: the dataset's official test split, carved from its training images,
    # or auto (official where the dataset has one: torchvision's, a folder with test/)
    target_test: Literal["auto", "official", "split"]
    # folder images: shorter side resized to this, then centre-cropped square (torchvision's
    # weight transforms: Resize(256) before their 224 crop), decoded once by `download`
    decode_size: int = Field(ge=8, le=1024, description="a decoded colour folder image takes "
                             "decode_size^2 x 3 bytes")

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
        same = self.source.name == self.target.name and (
            self.source.name != "folder" or same_place(self.source.root, self.target.root))
        shared_classes = (self.source.classes == "all" or self.target.classes == "all"
                          or set(self.source.classes) & set(self.target.classes))
        if same and shared_classes:
            raise ValueError("data.source and data.target are the same dataset: give both "
                             "explicit, disjoint class lists (data.*.classes), or the target's "
                             "test images would be source training images")
        made = {n: datasets.get(n).made_from for n in (self.source.name, self.target.name)}
        if shared_classes and (self.source.name in made[self.target.name]
                               or self.target.name in made[self.source.name]):
            base, derived = ((self.source.name, self.target.name)
                             if self.source.name in made[self.target.name]
                             else (self.target.name, self.source.name))
            raise ValueError(f"data.source={self.source.name} and data.target="
                             f"{self.target.name} share images ({derived} is made from "
                             f"{base}'s): the target's test images would be source training "
                             "images; choose datasets not made from one another (docs/datasets.md)"
                             " or give both explicit, disjoint class lists (data.*.classes)")
        return self


def _one_or_three(value):
    if value not in ("auto", 1, 3):
        raise ValueError("use auto, 1 or 3")
    return value


def _bottleneck(value):
    if value != "auto" and not (isinstance(value, int) and 0 <= value <= 512):
        raise ValueError("use auto, 0 (off) or a size of 1..512")
    return value


def _one_message(message: str) -> WrapValidator:
    """Any failure of the wrapped union (auto or an int) as one message, not the union's first
    branch ("Input should be 'auto'" for 513 or '3')."""
    def wrap(value, handler):
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(message) from None
    return WrapValidator(wrap)


# annotated (not class validators): records.preprocess_schema copies these fields, checks included
Channels = Annotated[Literal["auto"] | int, AfterValidator(_one_or_three),
                     _one_message("use auto, 1 or 3")]
Bottleneck = Annotated[Literal["auto"] | int, AfterValidator(_bottleneck),
                       _one_message("use auto, 0 (off) or a size of 1..512")]


class Prepare(Strict):
    image_size: int = Field(ge=8, le=512, description="the prepared arrays hold every image "
                            "at this size: 512 x 512 x 3 bytes each")
    # auto (each of the four): chosen by `prepare` from both domains' framing statistics, the
    # same for both (scenario.resolve_framing); the choice is in metrics/scenario.json
    crop: Literal["auto", "bbox", "none"]  # centre each digit on its square bounding box
    bottleneck_size: Bottleneck  # pass both domains through this size; 0 = off
    scale: Literal["auto", "max", "none"]  # each image divided by its own maximum
    channels: Channels  # 1 or 3: gray -> 3 repeats it; colour -> 1: luminance
    source_val_fraction: float = Field(gt=0, lt=1)
    target_test_fraction: float = Field(gt=0, lt=1)
    # 0: no target validation image (with shots 0: no target label outside the test set)
    target_val_per_class: int = Field(ge=0, le=MAX_IMAGES_PER_CLASS, description=WHY_IMAGES)
    split_seed: int = Field(ge=0, lt=SEED_LIMIT)  # fixes the target test set across seeds
    shots: int = Field(ge=0, le=MAX_IMAGES_PER_CLASS, description=WHY_IMAGES)  # per class; 0 = none

    @model_validator(mode="after")
    def _validation_for_shots(self):
        if self.target_val_per_class == 0 and self.shots > 0:
            raise ValueError(f"prepare.target_val_per_class=0 with prepare.shots={self.shots}: the "
                             "methods trained on target labels choose their checkpoint on target "
                             "validation images: set prepare.target_val_per_class >= 1, or "
                             "prepare.shots: 0 for a run with no target label at all")
        return self


class Model(Strict):
    arch: Literal[backbones.NAMES]  # the backbone registry: transferlab/backbones/
    widths: list[int] = Field(min_length=1, max_length=6)  # small_cnn: channels per block
    small_input_stem: bool  # resnets: 3x3 stride-1 stem, no max-pool, for small images
    # auto: the backbone's own (its registry entry's first: small_cnn batch + flatten, chosen by
    # measurement over the offline tasks; torchvision models as published: batch + pool)
    norm: Literal["auto", "batch", "group", "layer", "none"]  # small_cnn's normalisation layers
    head: Literal["auto", "pool", "flatten"]  # small_cnn: 4x4 grid flattened | global average pool
    # small_cnn: unit (pixels in [0, 1]) | centred ([-1, 1]); auto: unit, centred on a textured
    # backdrop; a torchvision model normalises its own input (auto only)
    input: Literal["auto", "unit", "centred"] = "auto"
    weights: str  # source init: none | a torchvision weights name (DEFAULT, IMAGENET1K_V1, ...;
    #               imagenet = DEFAULT) | a path to a state dict of the arch in torchvision's format

    @model_validator(mode="after")
    def _positive(self):
        if any(w < 1 or w > MAX_WIDTH for w in self.widths):
            raise ValueError(f"model.widths must all be in 1..{MAX_WIDTH}, got {list(self.widths)}"
                             f" (wider conv blocks would not fit in memory)")
        return self


class Pretrain(Optim):
    epochs: int = Field(ge=1, le=MAX_EPOCHS, description=WHY_STEPS)
    seed: int = Field(ge=0, lt=SEED_LIMIT)


class Extract(Strict):
    batch_size: int = Field(ge=1, le=MAX_BATCH, description=WHY_BATCH)


# One section per registered method, with that method's own options class (its module under
# transferlab/strategies/ declares it): adding a method adds its section here by itself.
Transfer = create_model("Transfer", __base__=Strict,
                        **{m.name: (m.options, ...) for m in METHODS.values()})


class Study(Strict):
    shots: list[int] = Field(min_length=1, max_length=MAX_LIST, description=WHY_LIST)  # budgets k
    seeds: list[int] = Field(min_length=1, max_length=MAX_LIST, description=WHY_LIST)
    layer_shots: int = Field(ge=1, le=MAX_IMAGES_PER_CLASS, description=WHY_IMAGES)

    @model_validator(mode="after")
    def _distinct_positive(self):
        for key, values, low, high in (("shots", self.shots, 0, 10 ** 6),
                                       ("seeds", self.seeds, 0, SEED_LIMIT)):
            if len(set(values)) != len(values) or min(values) < low or max(values) >= high:
                raise ValueError(f"study.{key}={values}: use distinct integers in [{low}, {high})")
        return self


MAX_NPROC, WHY_NPROC = 64, "processes per node: more than a node has GPUs or core pairs"
# Threads per process. The schema gives the same verdict on every machine (a params.yaml valid
# on a workstation stays valid in CI), so its ceiling is fixed, not this machine's cores: 256 is
# above the cores of the largest CPUs (192) and far above where torch's intra-op threads stop
# paying on this pipeline's models. What depends on the machine is what a number gives:
# compute.threads_for caps it at the usable cores (1000 threads on 2 cores made an epoch 22x
# slower and a SIGTERM take 36 s), as `auto` already divides them.
MAX_THREADS = 256


class Augment(Strict):
    """Training augmentation of every training stage: `shift` (the digits' random translation,
    each section's shift_px) or `photo` (random resized crop + horizontal flip per image)."""
    mode: Literal["shift", "photo"]
    min_scale: float = Field(gt=0, le=1)  # photo: smallest crop area, a share of the image
    flip: bool  # photo: mirror half the images left-right

    def photo(self):
        """train.PhotoAugment for mode photo, None for shift."""
        from transferlab.train import PhotoAugment

        return PhotoAugment(self.min_scale, self.flip) if self.mode == "photo" else None


class Compute(Strict):
    """Where training runs (transferlab/compute.py); never what it computes, up to float
    rounding (and BatchNorm statistics per process when nproc > 1)."""
    nproc: int = Field(ge=1, le=MAX_NPROC, description=WHY_NPROC)  # processes: torchrun + DDP
    threads: Literal["auto"] | int  # torch CPU threads per process; auto: cores / (jobs x nproc)
    precision: Literal["fp32", "bf16", "fp16"]  # autocast of the training forward pass

    @field_validator("threads", mode="before")
    @classmethod
    def _auto_or_count(cls, value):
        if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool)
                                    and 1 <= value <= MAX_THREADS):
            raise ValueError(f"use auto or a whole number of threads from 1 to {MAX_THREADS} "
                             "(more than the usable cores is capped to them)")
        return value


class Candidate(Strict):
    """One candidate source of the ranking study, derived from data.source."""
    classes: Literal["all"] | list[int]  # source class ids kept (data.source's numbering)
    fraction: float = Field(gt=0, le=1)  # share of the source train split kept, per class
    epochs: int = Field(ge=0, le=MAX_EPOCHS, description=WHY_STEPS)  # 0 = untrained (random)
    align: bool  # false: source plain-resized (no bbox crop, bottleneck or max scaling)

    _all_or_ids = field_validator("classes", mode="before")(DatasetSpec._all_or_ids.__func__)


class Ranking(Strict):
    shots: int = Field(ge=1, le=MAX_IMAGES_PER_CLASS, description=WHY_IMAGES)  # per class
    seeds: list[int] = Field(min_length=1, max_length=MAX_LIST,
                             description="each seed fine-tunes every candidate once more")
    bootstrap: int = Field(ge=100, le=100_000, description="resamples of the candidates: more "
                           "than 100,000 changes no interval's second decimal")
    # the score that picks the source (transferability.SCORES; a test keeps the two equal)
    recommend_by: Literal["logme", "leep", "nce", "hscore", "hscore_shrunk"]
    candidates: dict[str, Candidate] = Field(  # >= 3: fewer leave no ranking to check
        min_length=3, max_length=MAX_LIST, description="each candidate is a pipeline stage")

    @model_validator(mode="after")
    def _names_and_seeds(self):
        for name, cand in self.candidates.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", name):
                raise ValueError(f"ranking.candidates.{name}: name it with a-z, 0-9, _ and - "
                                 "(at most 64 characters: it becomes a stage and a file name)")
            if cand.classes != "all" and (len(set(cand.classes)) != len(cand.classes)
                                          or len(cand.classes) < 2 or min(cand.classes) < 0):
                raise ValueError(f"ranking.candidates.{name}.classes={cand.classes}: use 'all' "
                                 "or at least two distinct class ids >= 0")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0 \
                or max(self.seeds) >= SEED_LIMIT:
            raise ValueError(f"ranking.seeds={self.seeds}: use distinct integers in "
                             f"[0, {SEED_LIMIT})")
        return self


TaskValue = str | int | float | bool | list[str | int | float | bool]


class SelectionStudy(Strict):
    """`make selection` (selection/dvc.yaml): the label-free choice measured on several tasks.
    A task is params.yaml with a few values replaced (`task_params.<name>`: dotted keys);
    every (task, seed, draw) cell trains every label-free method at 0 target labels, draw 0
    with its params section, draw n > 0 with options drawn from its search space
    (transferlab/search.py)."""
    tasks: list[str] = Field(min_length=1, max_length=MAX_LIST, description=WHY_LIST)
    seeds: list[int] = Field(min_length=1, max_length=MAX_LIST, description=WHY_LIST)
    draws: list[int] = Field(min_length=1, max_length=MAX_LIST, description=WHY_LIST)
    task_params: dict[str, dict[str, TaskValue]] = Field(max_length=MAX_LIST,
                                                         description=WHY_LIST)

    @field_validator("task_params", mode="before")
    @classmethod
    def _flat_values(cls, value):
        scalar = (str, int, float, bool)
        for task, values in (value.items() if isinstance(value, dict) else ()):
            for key, v in (values.items() if isinstance(values, dict) else ()):
                if not (isinstance(v, scalar) or isinstance(v, list)
                        and all(isinstance(x, scalar) for x in v)):
                    raise ValueError(f"selection_study.task_params.{task}.{key} is a "
                                     f"{type(v).__name__}: a task sets values (a number, text, "
                                     "true/false or a list of those); name a nested key dotted, "
                                     "e.g. data.target.name: mnist_5k")
        return value

    @model_validator(mode="after")
    def _names_seeds_draws(self):
        for name in self.task_params:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_]{0,63}", name):
                raise ValueError(f"selection_study.task_params.{name}: name it with a-z, 0-9 "
                                 "and _ (at most 64 characters: it becomes a stage and a folder "
                                 "name)")
        missing = [t for t in self.tasks if t not in self.task_params]
        if missing:
            raise ValueError(f"selection_study.tasks names {', '.join(missing)}, which "
                             "selection_study.task_params does not define: define it there, or "
                             f"choose among {', '.join(self.task_params) or 'none'}")
        for key, values, high in (("tasks", self.tasks, None), ("seeds", self.seeds, SEED_LIMIT),
                                  ("draws", self.draws, 10 ** 6)):
            if len(set(values)) != len(values) or (high and not 0 <= min(values) <= max(values) < high):
                raise ValueError(f"selection_study.{key}={values}: use distinct "
                                 + ("names" if high is None else f"integers in [0, {high})"))
        return self


# What a task that names a domain's dataset (data.source.name, data.target.name) resets, unless
# it sets them too: they describe the dataset params.yaml named, not the task's (a folder root
# beside a built-in dataset would otherwise refuse every task when the user's run is a folder).
DATASET_DEFAULTS = {"classes": "all", "root": ""}
TARGET_DEFAULTS = {"target_test": "auto"}


def task_raw(raw: dict, task: str) -> dict:
    """params.yaml's raw mapping with selection_study.task_params.<task>'s values put in: a
    key must name an existing params key (a typo would otherwise run the untouched default).
    A task that names a domain's dataset names it whole (DATASET_DEFAULTS, TARGET_DEFAULTS)."""
    import copy

    out = copy.deepcopy(raw)
    where = f"params.yaml: selection_study.task_params.{task}"
    values = raw["selection_study"]["task_params"][task]
    data = out.get("data")
    for domain in ("source", "target"):
        spec = data.get(domain) if isinstance(data, dict) else None
        if f"data.{domain}.name" in values and isinstance(spec, dict):
            spec.update(DATASET_DEFAULTS)
            if domain == "target":
                data.update(TARGET_DEFAULTS)
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node or dotted.startswith("selection_study"):
            raise UserError(f"{where}: '{_show(dotted)}' is not a params key a task can set: "
                            "write it as in params.yaml, dotted (e.g. data.target.name)")
        node[leaf] = value
    return out


def load_task_params(task: str, path: str | Path = "params.yaml") -> tuple[Params, dict]:
    """(the params of selection-study task `task`, their raw mapping): params.yaml with the
    task's values put in, checked as a whole; an error names the task. Every task the study
    lists is checked here, so its first stage stops on a bad one, not an hour later."""
    params = load_params(path, tasks=True)
    if task not in params.selection_study.task_params:
        raise UserError(f"selection_study.task_params has no task '{_show(task)}': choose one "
                        f"of {', '.join(params.selection_study.task_params)}")
    raw = read_yaml(Path(path).read_text(encoding="utf-8"))
    return _parse_task(raw, task), task_raw(raw, task)


class Health(Strict):
    """The label-free health check (transferlab/health.py): evaluate and the report flag a
    model that predicts one class for most target images (top share >= max(0.7, 3/K), or
    entropy of its predicted classes < 0.6 ln K); export refuses to ship such a model, or one
    whose target validation accuracy is not clearly above chance, unless this allows it."""
    allow_degenerate: bool  # true: export ships a flagged model with a warning, not a refusal


class Params(Strict):
    seed: int = Field(ge=0, lt=SEED_LIMIT)  # shot draw + initialisation of transfer
    data: Data
    prepare: Prepare
    model: Model
    pretrain: Pretrain
    extract: Extract
    transfer: Transfer
    selection: Selection
    study: Study
    augment: Augment
    compute: Compute
    ranking: Ranking
    selection_study: SelectionStudy
    health: Health

    @model_validator(mode="after")
    def _fits_the_model(self):
        m = self.model
        backbone = backbones.get(m.arch)
        if m.weights != "none" and backbone.weights is None:
            with_weights = [n for n, b in backbones.BACKBONES.items() if b.weights is not None]
            raise ValueError(f"model.weights={m.weights!r} needs a model.arch with published "
                             f"weights ({', '.join(with_weights)}; {m.arch} has none): use none")
        if m.input != "auto" and not backbone.inputs:
            raise ValueError(f"model.input={m.input}: model.arch={m.arch} normalises its own "
                             "input (its published mean and std): use auto")
        for key, value, built in (("norm", m.norm, backbone.norms), ("head", m.head, backbone.heads),
                                  ("input", m.input, backbone.inputs)):
            if value != "auto" and value not in built:
                raise ValueError(f"model.{key}={value}: model.arch={m.arch} builds "
                                 f"{' | '.join(built)} only: use auto or {built[0]}")
        if backbone.weights == "timm" and is_weights_name(m.weights):
            raise ValueError(f"model.weights={m.weights}: model.arch={m.arch} reads its weights "
                             "from a checkpoint file on disk: give its path (see "
                             "docs/datasets.md, Backbones), or none")
        if is_weights_name(m.weights) and self.prepare.channels == 1:
            raise ValueError(f"model.weights={m.weights} expects colour input: set "
                             "prepare.channels=3")
        size = backbone.fixed_size
        if size is not None and self.prepare.image_size != size:
            raise ValueError(f"prepare.image_size={self.prepare.image_size}: model.arch={m.arch} "
                             f"takes {size} x {size} images: set prepare.image_size={size}")
        folders = [r for r in ("source", "target") if getattr(self.data, r).name == "folder"]
        if folders and self.prepare.image_size > self.data.decode_size:
            raise ValueError(f"prepare.image_size={self.prepare.image_size} is larger than "
                             f"data.decode_size={self.data.decode_size}, the size the folder "
                             f"images of data.{folders[0]} are decoded to (they would be "
                             f"upsampled): set data.decode_size >= {self.prepare.image_size}")
        smallest = min_image_size(m.arch, m.widths, m.small_input_stem)
        if self.prepare.image_size < smallest:
            raise ValueError(f"prepare.image_size={self.prepare.image_size} is too small for "
                             f"model.arch={m.arch} with these blocks: use >= {smallest}")
        encoder = Encoder(arch=m.arch, blocks=encoder_blocks(m.arch, m.widths))
        for name in METHODS:  # each method checks its own options against the encoder
            options = getattr(self.transfer, name)
            if hasattr(options, "check_encoder"):
                options.check_encoder(f"transfer.{name}", encoder)
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


ECHO_CHARS = 60  # a value or key is echoed at most this long: a pasted blob must not flood the line


def echo(value: object) -> str:
    """A value as the message shows it: repr, one line, at most ECHO_CHARS characters."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS - 3] + "..."


def _show(key: str) -> str:
    """A dotted key for a message: control characters escaped, long names cut."""
    text = key.encode("unicode_escape").decode("ascii", "backslashreplace")
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS - 3] + "..."


def _real_loc(loc: tuple, raw: object) -> tuple[str, ...]:
    """pydantic's error location with its own tags (union branches such as "literal['all']",
    validator names) dropped: a part stays only if it is a key or index of the data itself."""
    out, node = [], raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            continue
        out.append(str(part))
    return tuple(out)


def _field_reason(loc: tuple[str, ...]) -> str:
    """The documented reason of a field's limit (its Field description), if any."""
    model = _submodel(loc[:-1])
    field = model.model_fields.get(loc[-1]) if loc else None
    return f" ({field.description})" if field is not None and field.description else ""


def _explain(err: ValidationError, raw: dict) -> str:
    # an unknown key first: a misspelt key also makes its correct spelling "missing"
    first = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    loc = _real_loc(first["loc"], raw)
    if first["type"] == "missing":
        loc = loc + (str(first["loc"][-1]),)  # the missing key itself (absent from the data)
    key = _show(".".join(loc))
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(_submodel(loc[:-1]))
        given, lower = loc[-1], {a.lower(): a for a in allowed}
        close = ([a for a in allowed if a.lower().startswith(given.lower()[:40])
                  or given.lower().startswith(a.lower())]
                 or [lower[m] for m in difflib.get_close_matches(given.lower()[:40], lower, n=1,
                                                                 cutoff=0.5)])
        hint = f"did you mean '{'.'.join(loc[:-1] + (close[0],))}'? " if close else ""
        return f"params.yaml: unknown key '{key}': {hint}allowed here: {', '.join(allowed)}"
    if first["type"] == "missing":
        return f"params.yaml: key '{key}' is missing: add it (see the README's params section)"
    msg = first["msg"].removeprefix("Value error, ")
    msg = msg if len(msg) <= 400 else msg[:397] + "..."  # our checks echo values: keep it a line
    if not loc:  # a model-level check: the message names its keys
        return f"params.yaml: {msg}"
    if first["type"] == "value_error" and re.search(r"\b[a-z_]+\.[a-z_]{2,}", msg):
        return f"params.yaml: {msg}"  # a section's own check: its message names the keys
    reason = _field_reason(loc) if first["type"].startswith(("less_than", "too_long")) else ""
    if isinstance(first.get("input"), str) and re.fullmatch(r"\s*[-+]?[\d._]+(e[-+]?\d+)?\s*|"
                                                           r"\s*0[oxb][\da-f_]+\s*",
                                                           first["input"], re.IGNORECASE):
        # `dvc exp run -S key=010` (Hydra's override grammar) writes '010' as quoted text
        reason = " (the value is quoted text: write the number unquoted, without leading zeros)"
    return f"params.yaml: {key}={echo(first.get('input'))} is invalid: {msg}{reason}"


# params.yaml is 3 levels deep (transfer.finetune.steps) with short lists; anything far beyond
# that is pasted junk or an alias bomb, refused before pydantic walks it.
MAX_DEPTH = 8
MAX_VALUES = 10_000


def check_shape(raw: object) -> None:
    """Every mapping key is text, nesting is at most MAX_DEPTH, and there are at most MAX_VALUES
    values counting aliases expanded (`&a [*b, *b, ...]` nests into billions). Iterative, so
    no RecursionError; the first offence in document order is reported."""
    stack: list[tuple[tuple[str, ...], object]] = [((), raw)]
    seen = 0
    while stack:
        path, node = stack.pop()
        seen += 1
        where = _show(".".join(path)) or "the top level"
        if seen > MAX_VALUES:
            raise UserError(f"params.yaml holds more than {MAX_VALUES} values (aliases expanded): "
                            "it is not a params file of this project: restore the repository's")
        if len(path) > MAX_DEPTH:
            raise UserError(f"params.yaml: '{where}' nests deeper than {MAX_DEPTH} levels: "
                            "restore the repository's params.yaml layout")
        if isinstance(node, dict):
            for key in node:
                if not isinstance(key, str):
                    raise UserError(f"params.yaml: key {echo(key)} in {where} is not a name: keys "
                                    "are words such as 'shots' (quote it if it is meant as text)")
            stack.extend(reversed([(path + (key,), value) for key, value in node.items()]))
        elif isinstance(node, list):
            stack.extend(reversed([(path + (str(i),), v) for i, v in enumerate(node)]))


def parse_params(raw: object, tasks: bool = False) -> Params:
    """params.yaml's mapping, checked; `tasks`: also each task of selection_study.tasks (the
    selection study's stages ask for it: a task the user's own run never reads does not stop
    that run, e.g. a built-in target beside the user's source dataset)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError("params.yaml must be a mapping of sections (seed, data, prepare, ...)")
    check_shape(raw)
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise UserError(_explain(err, raw)) from None
    if tasks:
        for task in params.selection_study.tasks:
            _parse_task(raw, task)
    return params


def _parse_task(raw: dict, task: str) -> Params:
    composed = task_raw(raw, task)  # a key that is not one: its own line
    try:
        return parse_params(composed, tasks=False)
    except UserError as err:
        raise UserError(f"params.yaml: selection_study.task_params.{task} sets values that "
                        f"fail the checks: {str(err).removeprefix('params.yaml: ')}") from None


def read_yaml(text: str) -> object:
    """YAML as DVC reads params.yaml (ruamel.yaml, typ="safe", YAML 1.2): the value `dvc.lock`
    and `dvc params diff` record is the value that runs (`010` is ten, `1e-3` a number, `no` a
    string; PyYAML's YAML 1.1 read `010` as eight). Duplicate keys are refused, as DVC does."""
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(text)


def load_params(path: str | Path = "params.yaml", tasks: bool = False) -> Params:
    from ruamel.yaml.constructor import DuplicateKeyError
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{_show(str(path))} is a folder, not a params file: run from the "
                        "repository root")
    if not path.is_file():
        raise UserError(f"{_show(str(path))} not found: run from the repository root")
    try:
        raw = read_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text: save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"{path} cannot be read ({err.strerror})") from None
    except DuplicateKeyError as err:
        mark = err.problem_mark
        key = err.problem.split('"')[1] if '"' in (err.problem or "") else "a key"
        raise UserError(f"{path}: key '{_show(key)}' appears twice (line {mark.line + 1}): keep "
                        "one") from None
    except RecursionError:
        raise UserError(f"{path} nests deeper than {MAX_DEPTH} levels: restore the repository's "
                        "params.yaml layout") from None
    except (YAMLError, MarkedYAMLError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path} is not valid YAML{where}: fix the syntax") from None
    try:
        return parse_params(raw, tasks)
    except UserError as err:
        message = str(err)
        if path.name == "params.yaml" or not message.startswith("params.yaml"):
            raise
        # another file checked (check_params.py my.yaml): name it, not the repository's
        raise UserError(f"{path}{message.removeprefix('params.yaml')}") from None
