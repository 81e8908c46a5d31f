"""Files the pipeline wrote, read back as untrusted: safetensors arrays and models, the weights a
user points model.weights at, JSON.

Real files the pipeline wrote (prepare's arrays, pretrain's model), mutated field by field, go
to each reader (load_arrays lazy or not, read_metadata, load_state_dict, read_json) and to the
stages that load them (`pretrain`, `extract` as `python stages/x.py` runs them). The promise:
one line "<path> is corrupt (not a valid safetensors file: <why>): <fix>" or "... is not a
model file of this pipeline" naming the file, never another exception; from a stage, exit code
2, "error: ..." and no traceback, earlier outputs byte-identical and no temporary left; what the
pipeline itself writes is never refused.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from tests.bad_input_helpers import (EXTRACT, OUTPUT_DIRS, PRETRAIN, assert_one_line_error,
                                     assert_untouched, pipeline_files, prepared_base,
                                     pretrained_work, run_entry, set_params, snapshot,
                                     temporaries)  # noqa: F401
from transferlab.errors import UserError
from transferlab.io import load_arrays, load_state_dict, read_json, read_metadata, save_arrays


INVALID = "is corrupt (not a valid safetensors file: "


# ---- safetensors headers: every reader refuses a malformed file in one line ------------------

def split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join(header, data: bytes, text: bytes | None = None) -> bytes:
    text = json.dumps(header).encode() if text is None else text
    return struct.pack("<Q", len(text)) + text + data


def first_array(header: dict) -> str:
    return sorted((k for k in header if k != "__metadata__"),
                  key=lambda k: header[k]["data_offsets"][0])[0]


def entry_edit(**fields):
    def mutate(blob):
        header, data = split(blob)
        header[first_array(header)].update(fields)
        return join(header, data)
    return mutate


def swap_offsets(blob):
    header, data = split(blob)
    name = first_array(header)
    header[name]["data_offsets"] = header[name]["data_offsets"][::-1]
    return join(header, data)


def overlap(blob):
    """Two arrays point at the same bytes (the second one's span moved onto the first)."""
    header, data = split(blob)
    names = sorted((k for k in header if k != "__metadata__"),
                   key=lambda k: header[k]["data_offsets"][0])
    a, b = names[0], names[1]
    size = header[b]["data_offsets"][1] - header[b]["data_offsets"][0]
    start = header[a]["data_offsets"][0]
    header[b]["data_offsets"] = [start, start + size]
    return join(header, data)


def duplicate_key(blob):
    header, data = split(blob)
    name = first_array(header)
    text = json.dumps(header)
    extra = json.dumps({name: header[name]})[1:-1]
    return join(None, data, (text[:-1] + ", " + extra + "}").encode())


def whole_text(text: bytes):
    return lambda blob: join(None, split(blob)[1], text)


def with_metadata(metadata):
    def mutate(blob):
        header, data = split(blob)
        header["__metadata__"] = metadata
        return join(header, data)
    return mutate


def shape_overflow(blob):
    """Dimensions whose product overflows int64 (numpy wraps it to a small number)."""
    header, data = split(blob)
    name = first_array(header)
    header[name]["shape"] = [2 ** 32, 2 ** 32, 2 ** 32] + header[name]["shape"][1:]
    return join(header, data)


MUTATIONS = {
    # the header length
    "length 2**64-1": lambda b: struct.pack("<Q", 2 ** 64 - 1) + b[8:],
    "length past the end": lambda b: struct.pack("<Q", len(b)) + b[8:],
    "length 0": lambda b: struct.pack("<Q", 0) + b[8:],
    "3 bytes": lambda b: b[:3],
    "empty file": lambda b: b"",
    "length only": lambda b: b[:8],
    # the JSON
    "header is a list": whole_text(b'[1, 2, 3]'),
    "header is a string": whole_text(b'"x_train"'),
    "header is null": whole_text(b"null"),
    "not JSON": whole_text(b"{x_train: 1}"),
    "not UTF-8": whole_text(b'{"\xff\xfe": 1}'),
    "NaN in the header": whole_text(b'{"a": {"dtype": "F32", "shape": [NaN], '
                                    b'"data_offsets": [0, 0]}}'),
    "nested 100000 deep": whole_text(b"[" * 100000 + b"]" * 100000),
    "a 5000-digit number": whole_text(b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000
                                      + b'], "data_offsets": [0, 4]}}'),
    "duplicate key": duplicate_key,
    # the entries
    "entry is a number": entry_edit(dtype="F32", shape=None, data_offsets=None),
    "unknown dtype": entry_edit(dtype="F128"),
    "dtype not a string": entry_edit(dtype=32),
    "negative dimension": entry_edit(shape=[-1, 2]),
    "float dimension": entry_edit(shape=[1.5]),
    "bool dimension": entry_edit(shape=[True]),
    "shape not a list": entry_edit(shape="4,1,8,8"),
    "shape product overflows int64": shape_overflow,
    "offsets past the end": entry_edit(data_offsets=[0, 10 ** 9]),
    "offsets negative": entry_edit(data_offsets=[-8, 0]),
    "offsets reversed": swap_offsets,
    "offsets of three": entry_edit(data_offsets=[0, 4, 8]),
    "offsets huge": entry_edit(data_offsets=[0, 10 ** 400]),
    "offsets floats": entry_edit(data_offsets=[0.0, 4.0]),
    "arrays overlap": overlap,
    "bytes after the last array": lambda b: b + b"\0" * 16,
    "data truncated": lambda b: b[:-16],
    # metadata
    "metadata a list": with_metadata(["classes"]),
    "metadata value a number": with_metadata({"classes": 3}),
    "metadata value null": with_metadata({"classes": None}),
}


def readers(path: Path):
    """Every reader of a safetensors file, as the stages call them."""
    yield "load_arrays lazy", lambda: load_arrays(path, lazy=True)
    yield "load_arrays", lambda: load_arrays(path)
    yield "read_metadata", lambda: read_metadata(path)
    yield "load_state_dict", lambda: load_state_dict(path)


@pytest.mark.parametrize("kind", ["data/prepared/source.safetensors", "models/source.safetensors"])
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_every_reader_refuses_a_malformed_safetensors_file_in_one_line(
        pipeline_files, tmp_path, monkeypatch, kind, mutation):
    monkeypatch.setenv("TRANSFERLAB_RESIDENT_MIB", "0")  # lazy: every array stays on disk
    path = tmp_path / Path(kind).name
    path.write_bytes(MUTATIONS[mutation]((pipeline_files / kind).read_bytes()))
    for name, read in readers(path):
        with pytest.raises(UserError) as caught:
            read()
        message = str(caught.value)
        assert message.startswith(f"{path} ") and "\n" not in message, (name, message)
        assert "delete it and run `dvc repro` again" in message, (name, message)
        if mutation != "data truncated" or name != "load_state_dict":
            assert INVALID in message, (name, message)


def test_a_file_changed_under_a_lazy_array_is_one_line(pipeline_files, tmp_path, monkeypatch):
    """Validated at load, then truncated or removed while a stage reads it row by row."""
    monkeypatch.setenv("TRANSFERLAB_RESIDENT_MIB", "0")
    path = tmp_path / "source.safetensors"
    blob = (pipeline_files / "data/prepared/source.safetensors").read_bytes()
    path.write_bytes(blob)
    arrays = load_arrays(path, lazy=True)
    path.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(UserError, match="is corrupt .*shorter than its header says"):
        [np.asarray(a) for a in arrays.values()]
    path.unlink()
    with pytest.raises(UserError, match=r"cannot be read \(No such file or directory\): .*dvc repro"):
        [np.asarray(a) for a in arrays.values()]


def test_the_unmutated_files_load(pipeline_files, monkeypatch):
    """The checks refuse nothing the pipeline itself writes, lazily or not."""
    monkeypatch.setenv("TRANSFERLAB_RESIDENT_MIB", "0")
    for kind in ("data/prepared/source.safetensors", "data/prepared/target.safetensors",
                 "models/source.safetensors", "data/raw/source.safetensors"):
        for _, read in readers(pipeline_files / kind):
            read()
    lazy = load_arrays(pipeline_files / "data/prepared/source.safetensors", lazy=True)
    eager = load_arrays(pipeline_files / "data/prepared/source.safetensors")
    assert sorted(lazy) == sorted(eager)
    for key in eager:
        assert np.array_equal(np.asarray(lazy[key]), eager[key])


def test_zero_sized_arrays_and_empty_metadata_are_valid(tmp_path):
    path = tmp_path / "a.safetensors"
    save_arrays(path, {"empty": np.zeros((0, 3), np.float32), "one": np.ones(2, np.uint8),
                       "scalar": np.array(7, np.int64), "also_empty": np.zeros(0, np.int64)})
    assert read_metadata(path) == {}
    loaded = load_arrays(path)
    assert loaded["empty"].shape == (0, 3) and int(loaded["scalar"]) == 7


@pytest.mark.parametrize("foreign", ["params.yaml", "dvc.lock", "README.md"])
def test_a_foreign_file_given_as_arrays_is_not_called_corrupt(tmp_path, foreign):
    """A file of another kind passed where a .safetensors belongs (a slip on the command line):
    one line saying what is expected, never "delete it" (the file is the user's params.yaml)."""
    from tests.conftest import ROOT

    path = tmp_path / foreign
    path.write_bytes((ROOT / foreign).read_bytes())
    for name, read in readers(path):
        with pytest.raises(UserError) as caught:
            read()
        message = str(caught.value)
        assert "is not a safetensors file" in message and "delete" not in message, (name, message)
        assert "\n" not in message
    assert path.read_bytes() == (ROOT / foreign).read_bytes()


# ---- the stages that load them ---------------------------------------------------------------

@pytest.mark.parametrize("mutation", ["length 2**64-1", "header is a list", "arrays overlap",
                                      "metadata value a number", "shape product overflows int64"])
def test_a_malformed_prepared_file_stops_pretrain_in_one_line(work, capsys, monkeypatch, mutation):
    """The stage that loads prepared data lazily (TRANSFERLAB_RESIDENT_MIB=0: all on disk)."""
    monkeypatch.setenv("TRANSFERLAB_RESIDENT_MIB", "0")
    data = work / "data/prepared/source.safetensors"
    data.write_bytes(MUTATIONS[mutation](data.read_bytes()))
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *PRETRAIN, capsys=capsys)
    assert_one_line_error(code, err, "data/prepared/source.safetensors", fragments=[INVALID])
    assert snapshot(work, *OUTPUT_DIRS) == before and temporaries(work) == []


@pytest.mark.parametrize("mutation", ["length past the end", "header is a string", "unknown dtype",
                                      "metadata a list", "duplicate key"])
def test_a_malformed_model_stops_extract_in_one_line(work, capsys, mutation):
    model = work / "models/source.safetensors"
    model.write_bytes(MUTATIONS[mutation](model.read_bytes()))
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *EXTRACT, capsys=capsys)
    assert_one_line_error(code, err, "models/source.safetensors", fragments=[INVALID])
    assert snapshot(work, *OUTPUT_DIRS) == before and temporaries(work) == []


# ---- model files (format, metadata, tensors) and the weights model.weights names -------------

def source_state() -> tuple[dict, dict]:
    from transferlab.models import Architecture, Classifier, model_metadata

    architecture = Architecture("small_cnn", 1, (4, 8, 8))
    return Classifier(architecture.build(), 10).state_dict(), model_metadata(architecture, "0123456789")


def write_model(path: Path, fault: str) -> None:
    from safetensors.torch import save_file

    state, meta = source_state()
    if fault == "text":
        path.write_text("just some text\n")
        return
    if fault == "foreign-state-dict":
        state = {"fc.weight": torch.zeros(3, 3)}
    elif fault == "no-metadata":
        meta = None
    elif fault == "metadata-mismatch":
        meta = dict(meta, widths="[4, 16, 8]")
    elif fault == "metadata-garbage":
        meta = dict(meta, classes="{not json")
    elif fault == "foreign-arch":
        meta = dict(meta, arch="vgg11")
    elif fault == "nan-weights":
        state = dict(state, **{"head.weight": torch.full_like(state["head.weight"], float("nan"))})
    elif fault == "wrong-dtype":
        state = dict(state, **{"head.bias": state["head.bias"].double()})
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)


@pytest.mark.parametrize("fault", ["text", "foreign-state-dict", "no-metadata", "metadata-mismatch",
                                   "metadata-garbage", "foreign-arch", "nan-weights", "wrong-dtype"])
def test_a_bad_model_file_stops_extract_naming_it(fault, work, capsys):
    write_model(work / "models/source.safetensors", fault)
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *EXTRACT, capsys=capsys)
    expected = "is corrupt" if fault == "text" else "is not a model file of this pipeline"
    assert_one_line_error(code, err, "models/source.safetensors", fragments=[expected])
    assert_untouched(work, before)


@pytest.mark.parametrize("fault, fragment", [
    ("pickled-object", "holds Python objects"), ("text", "is not a torch weights file"),
    ("empty", "is not a torch weights file"), ("nested-non-tensor", "no state dict of named tensors"),
    ("nan", "NaN or infinity"),
])
def test_a_bad_weights_file_stops_pretrain_with_our_own_message(fault, fragment, work, tmp_path, capsys):
    path = tmp_path / "weights.pth"
    if fault == "pickled-object":
        torch.save({"conv1.weight": torch.zeros(1), "opt": psutil.Process}, path)
    elif fault == "text":
        path.write_text("hello\n")
    elif fault == "empty":
        path.write_bytes(b"")
    elif fault == "nested-non-tensor":
        torch.save({"conv1.weight": [1, 2, 3]}, path)
    else:
        torch.save({"conv1.weight": torch.full((64, 3, 3, 3), float("inf"))}, path)
    set_params(work, {"model": {"arch": "resnet18", "small_input_stem": True, "weights": str(path)}})
    before = snapshot(work, *OUTPUT_DIRS)
    code, _, err = run_entry(work, *PRETRAIN, capsys=capsys)
    assert_one_line_error(code, err, "model.weights", fragments=[fragment])
    assert "weights_only" not in err.replace("weights_only=True", "")  # never torch's advice
    assert_untouched(work, before)


# ---- JSON ------------------------------------------------------------------------------------

@pytest.mark.parametrize("content, why", [
    (b"[1, 2]", "it holds a list"), (b"\xff\xfe", "not UTF-8"), (b"{", "Expecting"),
    (b"[" * 100000, "nested too deeply"), (b'{"a": ' + b"9" * 5000 + b"}", "digits")])
def test_read_json_refuses_what_is_not_a_json_object(tmp_path, content, why):
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=rf"^{path} is not a valid JSON file \(.*{why}"):
        read_json(path)
