"""Readers for what the pipeline's own files record: a model file's metadata (its preprocessing,
why it was skipped, how it was selected) and the metrics JSON and curve CSV files that evaluate,
export and report read.

Every file read is untrusted. Each record has one pydantic schema, and a file that breaks it
(not JSON, a wrong type, NaN or infinity, a value out of range, a missing or a foreign key)
gives one line naming the file, the key and the fix, never a traceback and never a silently
wrong table or choice. No torch here: the report stage imports this and starts in a second.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from transferlab.errors import UserError, one_line, path_error, show_path
from transferlab.io import check_readable
from transferlab.params import Prepare
from transferlab.validators import NAMES, VALIDATORS

RERUN = "delete it and run `dvc repro` again"
# The pipeline's JSON files are a few kB (study/metrics.json of a 100-cell study: ~20 kB) and
# its metadata values a few hundred bytes: anything far larger is not one of them, and is
# refused before it is parsed (json.loads on a deeply nested megabyte exhausts the stack).
MAX_JSON_BYTES = 16 << 20
MAX_METADATA_CHARS = 64 << 10
MAX_CSV_BYTES = 256 << 20  # a confusion file holds one short row per test image


class Checked(BaseModel):
    # strict: true is no number and "8" is no int; NaN and infinity are no finite score
    model_config = ConfigDict(strict=True, frozen=True, allow_inf_nan=False)


class Open(Checked):
    model_config = ConfigDict(extra="allow")  # facts a strategy adds are kept, not read


Fraction = Annotated[float, Field(ge=0, le=1)]
# how a checkpoint was chosen (train.fit, transfer.selection_metrics; source-val: the source model)
Selection = Literal[("target-val", *(f"source-val+{v.label}" for v in VALIDATORS.values()),  # type: ignore[valid-type]
                     "source-val", "none")]
ValidatorKey = Literal[NAMES]  # type: ignore[valid-type]


def _not_infinite(value: float) -> float:
    if math.isinf(value):
        raise ValueError("a validator's score is finite, or NaN where it cannot score")
    return value


# a validator's score: NaN where it cannot score (an unlabelled pool of one image, or of no more
# images than classes: validators/*.py say which), which a label-free run may well record
ValidatorScore = Annotated[float, Field(allow_inf_nan=True), AfterValidator(_not_infinite)]
Gain = Annotated[float, Field(ge=-1, le=1)]  # accuracy points / 100 between two strategies


def explain(err: ValidationError) -> str:
    """The first fault of a pydantic error as "key a.b=<value> is invalid: <why>"."""
    first = sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "missing":
        return f"key '{key}' is missing"
    if first["type"] == "extra_forbidden":
        return f"key '{key}' is not one this pipeline writes"
    why = first["msg"].removeprefix("Value error, ")
    if not key:
        return why
    given = first.get("input")
    if isinstance(given, (dict, list)):  # a whole section: its own check names the key
        return f"key '{key}' is invalid: {why}"
    return f"key '{key}'={one_line(repr(given))[:60]} is invalid: {why}"


def parse_json(text: str | bytes, limit: int = MAX_JSON_BYTES) -> object:
    """JSON text -> Python value; ValueError saying why for anything else (too large, not UTF-8,
    not JSON, NaN/Infinity spelt out, an integer of thousands of digits)."""
    if len(text) > limit:
        raise ValueError(f"{len(text)} bytes long, more than this pipeline ever writes there")
    try:
        return json.loads(text, parse_constant=lambda c: float(c))  # NaN stays NaN: the schema names it
    except RecursionError:
        raise ValueError("nested too deeply to be JSON this pipeline wrote") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise ValueError(f"not JSON: {one_line(str(err))[:120]}") from None


def _read_bytes(path: Path, limit: int, fix: str) -> bytes:
    # io's one check of an input: missing, a folder, a FIFO, a link loop, an over-long name are
    # one line each, and the read is noted (no output of the command may replace this file)
    check_readable(Path(path))
    try:
        with open(path, "rb") as f:
            blob = f.read(limit + 1)
    except OSError as err:
        raise path_error(path, err) from None
    if len(blob) > limit:
        raise UserError(f"{show_path(path)} is larger than {limit >> 20} MiB, more than any file "
                        f"of this pipeline holds: {fix}")
    return blob


def read_record(path: str | Path, schema: type[BaseModel], fix: str = RERUN) -> BaseModel:
    """A JSON file the pipeline wrote, checked against `schema`: one line naming the file and
    the key when it does not fit."""
    path = Path(path)
    try:
        raw = parse_json(_read_bytes(path, MAX_JSON_BYTES, fix))
    except ValueError as err:
        raise UserError(f"{show_path(path)} is {err}: {fix}") from None
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"{show_path(path)}: {explain(err)}: {fix}") from None


# ---- metrics JSON ---------------------------------------------------------------------------

class TransferMetrics(Open):
    """metrics/transfer/<strategy>.json: what export chooses by."""
    skipped: bool = False
    val_accuracy: Fraction | None = None
    selection: Selection | None = None
    snd: ValidatorScore | None = None  # soft neighbourhood density: label-free selection only
    # label-free choices (transferlab/selection.py): every validator's score of the shipped
    # model and of the source model, and the guard's verdict
    validators: dict[ValidatorKey, ValidatorScore] | None = None
    source_validators: dict[ValidatorKey, ValidatorScore] | None = None
    guard: Annotated[str, Field(max_length=2000)] | None = None

    @model_validator(mode="after")
    def _complete(self):
        if self.skipped:
            return self
        if self.selection is None:
            raise ValueError("a strategy that ran records its selection: it is missing")
        # val_accuracy: None only where nothing had target labels (prepare.shots and
        # target_val_per_class 0), so only beside a label-free choice (its validators)
        if self.val_accuracy is None and self.validators is None:
            raise ValueError(f"selection {self.selection} records val_accuracy: it is missing")
        if self.selection.startswith("source-val+") and self.snd is None:
            raise ValueError(f"selection {self.selection} records snd: it is missing")
        if self.selection.startswith("source-val+") and self.validators is None:
            raise ValueError(f"selection {self.selection} records validators: they are missing")
        return self


class Score(Open):
    """One strategy of metrics/evaluate.json."""
    skipped: Literal[True] | None = None
    reason: str | None = None
    accuracy: Fraction | None = None
    macro_f1: Fraction | None = None
    gain_over_scratch: Gain | None = None
    gain_over_source_only: Gain | None = None
    negative_transfer: bool | None = None
    best_baseline: str | None = None
    selection: Selection | None = None
    guard: Annotated[str, Field(max_length=2000)] | None = None  # label-free: the guard's verdict
    # the label-free health check (transferlab/health.py) on the unlabelled target images
    degenerate: bool | None = None
    top_share: Fraction | None = None
    marginal_entropy: Fraction | None = None  # entropy of the predicted classes / ln K
    kl_to_source_prior: Annotated[float, Field(ge=0)] | None = None  # nats

    @model_validator(mode="after")
    def _scored(self):
        if not self.skipped and (self.accuracy is None or self.macro_f1 is None):
            raise ValueError("a scored strategy records accuracy and macro_f1: one is missing")
        return self


class Scores(Checked):
    root: dict[Annotated[str, Field(min_length=1, max_length=200)], Score]


class Scenario(Checked):
    root: dict[Annotated[str, Field(min_length=1, max_length=200)],
               Annotated[int, Field(ge=0)] | Annotated[float, Field(ge=0)] | bool | str | None]


class StudyCell(Open):
    accuracy: Fraction
    ci_low: float | None = None
    ci_high: float | None = None
    negative_transfer: bool = False


class Study(Open):
    cells: dict[Annotated[str, Field(pattern=r"^.+@k\d{1,7}$")], StudyCell]


def _rooted(schema: type[Checked]) -> type[BaseModel]:
    """A schema whose whole document is its `root` field, as a RootModel would take it."""
    from pydantic import RootModel

    return RootModel[schema.model_fields["root"].annotation]


def read_scores(path: str | Path) -> dict[str, dict]:
    """metrics/evaluate.json: {strategy: its scores}, every number finite and in range."""
    scores = read_record(path, _rooted(Scores)).root
    return {name: s.model_dump(exclude_none=True) for name, s in scores.items()}


def read_scenario(path: str | Path) -> dict:
    return read_record(path, _rooted(Scenario)).root


def read_study(path: str | Path) -> dict:
    """study/metrics.json: {"cells": {"<strategy>@k<k>": cell}}; intervals may be null (one seed)."""
    return {"cells": {k: c.model_dump() for k, c in read_record(path, Study).cells.items()}}


def read_transfer_metrics(path: str | Path) -> dict:
    return read_record(path, TransferMetrics).model_dump(exclude_none=True)


# ---- CSV files ------------------------------------------------------------------------------

def read_csv(path: str | Path, columns: tuple[str, ...], fix: str = RERUN) -> list[dict[str, str]]:
    """Rows of a CSV file the pipeline wrote, as {column: text}; one line when it lacks one of
    `columns`, is not UTF-8 or has a ragged row."""
    path = Path(path)
    blob = _read_bytes(path, MAX_CSV_BYTES, fix)
    try:
        rows = list(csv.reader(io.StringIO(blob.decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{show_path(path)} is not a CSV file of this pipeline "
                        f"({one_line(str(err))[:120]}): {fix}") from None
    if not rows or any(c not in rows[0] for c in columns):
        raise UserError(f"{show_path(path)} has no column {', '.join(columns)} in its header "
                        f"line: {fix}")
    header = rows[0]
    if bad := next((i for i, r in enumerate(rows[1:], 2) if len(r) != len(header)), None):
        raise UserError(f"{show_path(path)} line {bad} has {len(rows[bad - 1])} fields for "
                        f"{len(header)} columns: {fix}")
    return [dict(zip(header, r)) for r in rows[1:]]


def number(path: Path, line: int, column: str, text: str, low: float, high: float,
           fix: str = RERUN) -> float:
    """A finite number within [low, high] from a CSV cell, or one line naming file, line and column."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise UserError(f"{show_path(path)} line {line}: {column}={one_line(text)[:40]!r} is not a "
                        f"number in {low:g}..{high:g}: {fix}")
    return value


def index(path: Path, line: int, column: str, text: str, count: int, fix: str = RERUN) -> int:
    """A class index 0..count-1 from a CSV cell, or one line naming file, line and column."""
    if not re.fullmatch(r"\d{1,9}", text) or int(text) >= count:
        raise UserError(f"{show_path(path)} line {line}: {column}={one_line(text)[:40]!r} is not a "
                        f"class index 0..{count - 1}: {fix}")
    return int(text)


def read_curve(path: str | Path) -> list[dict[str, float]]:
    """A training curve (step, val_accuracy; a skipped strategy's one row has val_accuracy "")
    -> the rows that hold a point, as numbers."""
    path = Path(path)
    points = []
    for line, row in enumerate(read_csv(path, ("step", "val_accuracy")), 2):
        if row["val_accuracy"] == "":
            continue
        points.append({"step": number(path, line, "step", row["step"], 0, 1e9),
                       "val_accuracy": number(path, line, "val_accuracy", row["val_accuracy"], 0, 1)})
    return points


# ---- model file metadata --------------------------------------------------------------------

PREPROCESS_KEYS = ("image_size", "crop", "bottleneck_size", "scale", "channels")


class PreprocessBase(Checked):
    model_config = ConfigDict(extra="forbid")
    decode_size: int = Field(ge=0, le=1024)  # data.decode_size's range (8..1024), or 0: arrays

    @model_validator(mode="after")
    def _valid(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels={self.channels}: use 1 or 3")
        if "auto" in (self.crop, self.scale, self.bottleneck_size):  # prepare resolves auto
            raise ValueError("an unresolved auto: not written by this pipeline's prepare")
        if 0 < self.decode_size < 8:
            raise ValueError(f"decode_size={self.decode_size}: 0 (arrays) or 8..1024")
        return self

    def prepare(self):
        """As the `prepare` params section `scenario.align` takes (the split knobs play no part
        in preprocessing one image: any valid value does)."""
        return Prepare.model_validate({**self.model_dump(exclude={"decode_size"}),
                                       "source_val_fraction": 0.5, "target_test_fraction": 0.5,
                                       "target_val_per_class": 1, "split_seed": 0, "shots": 1})

    def record(self) -> str:
        """The canonical JSON again (scenario.preprocess_record's form)."""
        return json.dumps(self.model_dump(), sort_keys=True)


@functools.cache
def preprocess_schema() -> type[PreprocessBase]:
    """The `preprocess` metadata of a prepared or model file (scenario.preprocess_record): the
    prepare params that turn one image into a model input, with the params schema's own types
    and ranges, and the size a folder's files were first decoded to. Built on first use. The
    params schema is imported at the top, not here: the stages that read model metadata
    (evaluate, export) then depend on params.py in dvc.yaml (scripts/dvc_deps.py follows
    module-level imports only), as their verdicts do."""
    from pydantic import create_model

    return create_model("Preprocess", __base__=PreprocessBase,
                        **{k: (Prepare.model_fields[k].annotation, Prepare.model_fields[k])
                           for k in PREPROCESS_KEYS})


@functools.cache
def model_record_schema() -> type[BaseModel]:
    """What evaluate, export and predict read from a model file's metadata besides its
    architecture and classes (models.architecture_from_metadata checks those)."""
    from pydantic import create_model

    return create_model(
        "ModelRecord", __base__=Checked, __config__=None,
        skipped=(Annotated[str, Field(min_length=1, max_length=2000)] | None, None),
        preprocess=(preprocess_schema() | None, None),
        selection=(Selection, "source-val"),
        # label-free choices: "accepted", or why the source model was kept (selection.guard)
        guard=(Annotated[str, Field(min_length=1, max_length=2000)] | None, None),
        target_labels=(Annotated[int, Field(ge=0, le=10 ** 9)], 0))


def model_record(path: str | Path, metadata: dict[str, str], fix: str = RERUN):
    """The checked record of a model file's metadata (strings, as safetensors keeps them)."""
    raw: dict[str, object] = {}
    for key in ("skipped", "preprocess", "selection", "target_labels"):
        if key not in metadata:
            continue
        value = metadata[key]
        if key == "preprocess":
            try:
                value = parse_json(value, MAX_METADATA_CHARS)
            except ValueError as err:
                raise UserError(f"{show_path(path)}: metadata key 'preprocess' is {err}: "
                                f"{fix}") from None
            if value is None:
                raise UserError(f"{show_path(path)}: metadata key 'preprocess' is null: {fix}")
        elif key == "target_labels":
            value = int(value) if re.fullmatch(r"\d{1,10}", value) else value
        raw[key] = value
    try:
        return model_record_schema().model_validate(raw)
    except ValidationError as err:
        raise UserError(f"{show_path(path)}: metadata {explain(err)}: {fix}") from None
