"""Every file read is untrusted, and an output replaces only what is its own (issue 23).

- Safetensors headers (class 3): real files the pipeline wrote (prepare's arrays, pretrain's
  model), mutated field by field; each reader (load_arrays lazy or not, read_metadata,
  load_state_dict) and each stage that loads them says "<path> is corrupt (not a valid
  safetensors file: <why>): <fix>" in one line.
- Outputs (class 4): a symbolic link, a FIFO, a socket, a device node is never replaced nor
  written through; a link loop, an over-long name, a file where a folder should be is one line
  naming the path, through io's helpers, stage scripts and the `transferlab-predict` command.
- Numbers from the environment (class 6): each variable the package reads, given nonsense, is
  one line naming it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.test_bad_input import (EXTRACT, OUTPUT_DIRS, PRETRAIN, assert_one_line_error,
                                  prepared_base, run_entry, snapshot, temporaries)  # noqa: F401
from tests.test_stages import run_main
from transferlab import compute
from transferlab.errors import UserError, show_path
from transferlab.io import (atomic_path, load_arrays, load_state_dict, read_json, read_metadata,
                            resident_limit, save_arrays, write_csv, write_json)

ROOT_USER = os.geteuid() == 0
INVALID = "is corrupt (not a valid safetensors file: "


@pytest.fixture(scope="module")
def pipeline_files(prepared_base, tmp_path_factory):  # noqa: F811
    """prepare's arrays and pretrain's model, as the pipeline wrote them (tiny params)."""
    work = tmp_path_factory.mktemp("untrusted")
    shutil.copytree(prepared_base, work, dirs_exist_ok=True)
    run_main(work, *PRETRAIN)
    return work


@pytest.fixture
def work(pipeline_files, tmp_path, monkeypatch):
    monkeypatch.delenv("TRANSFERLAB_DEBUG", raising=False)
    dst = tmp_path / "work"
    shutil.copytree(pipeline_files, dst)
    return dst


# ---- class 3: safetensors headers ------------------------------------------------------------

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


@pytest.mark.parametrize("content, why", [
    (b"[1, 2]", "it holds a list"), (b"\xff\xfe", "not UTF-8"), (b"{", "Expecting"),
    (b"[" * 100000, "nested too deeply"), (b'{"a": ' + b"9" * 5000 + b"}", "digits")])
def test_read_json_refuses_what_is_not_a_json_object(tmp_path, content, why):
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match=rf"^{path} is not a valid JSON file \(.*{why}"):
        read_json(path)


# ---- class 4: outputs replace only what is their own ------------------------------------------

def special_files(folder: Path) -> dict[str, Path]:
    """A FIFO, a socket, a link to a file, a dangling link, a link to a folder, a link loop,
    and (as root) a private character device, in `folder`."""
    target = folder / "target.txt"
    target.write_text("someone else's\n")
    (folder / "sub").mkdir()
    made = {"fifo": folder / "fifo", "socket": folder / "sock", "link": folder / "link",
            "dangling link": folder / "dangling", "link to a folder": folder / "dirlink",
            "link loop": folder / "loop"}
    os.mkfifo(made["fifo"])
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(made["socket"]))
    server.close()
    made["link"].symlink_to(target)
    made["dangling link"].symlink_to(folder / "nothing")
    made["link to a folder"].symlink_to(folder / "sub")
    made["link loop"].symlink_to(made["link loop"])
    if ROOT_USER:  # a device node of our own, never /dev's: the same driver as /dev/null
        made["device"] = folder / "null"
        os.mknod(made["device"], stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return made


def describe(folder: Path) -> dict:
    """Each entry's kind, link target and content: what must stay as it was."""
    out = {}
    for p in sorted(folder.rglob("*")):
        info = os.lstat(p)
        out[p.name] = (stat.S_IFMT(info.st_mode), os.readlink(p) if p.is_symlink() else None,
                       p.read_bytes() if stat.S_ISREG(info.st_mode) else None)
    return out


@pytest.mark.parametrize("writer", ["json", "csv", "arrays"])
def test_an_output_never_replaces_nor_writes_through_a_special_file(tmp_path, writer):
    folder = tmp_path / "outs"
    folder.mkdir()
    made = special_files(folder)
    before = describe(folder)
    write = {"json": lambda p: write_json(p, {"a": 1}),
             "csv": lambda p: write_csv(p, ["a"], [[1]]),
             "arrays": lambda p: save_arrays(p, {"x": np.zeros(3, np.float32)})}[writer]
    for kind, path in made.items():
        with pytest.raises(UserError) as caught:
            write(path)
        message = str(caught.value)
        assert message.startswith(f"{path} is ") and "nothing was written" in message, message
    for kind, path in made.items():  # through a link loop, as a folder of the output
        if kind == "link loop":
            with pytest.raises(UserError, match=rf"^cannot write {path}/out.json "
                               r"\(Too many levels of symbolic links\): .*link"):
                write_json(path / "out.json", {"a": 1})
    assert describe(folder) == before


def test_long_names_loops_and_files_for_folders_are_one_line(tmp_path):
    long = "n" * 300
    cases = {
        tmp_path / long / "out.json": "File name too long",
        tmp_path / f"{long}.json": "File name too long",
        tmp_path / "file.txt" / "out.json": "Not a directory",
        tmp_path / "a\0b.json": "NUL",
    }
    (tmp_path / "file.txt").write_text("a file, not a folder\n")
    for path, why in cases.items():
        with pytest.raises(UserError, match=why) as caught:
            write_json(path, {"a": 1})
        assert str(caught.value).startswith(f"cannot write {show_path(path)}"[:500]), caught.value
        with pytest.raises(UserError, match=why):
            load_arrays(path)
        with pytest.raises(UserError, match=why):
            read_json(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_a_hard_linked_output_is_replaced_not_written_into(tmp_path):
    """The other name of the file (a DVC cache entry with cache.type hardlink, say) keeps its
    bytes: an output is a new file moved into place, never the old inode rewritten."""
    cache = tmp_path / "cache"
    cache.write_text("cached\n")
    out = tmp_path / "out.json"
    os.link(cache, out)
    write_json(out, {"a": 1})
    assert cache.read_text() == "cached\n" and read_json(out) == {"a": 1}


def test_a_name_of_255_bytes_is_written(tmp_path):
    """The longest name a file system allows: the temporary beside it must fit too (its
    `.<name>.<random>.tmp` was 269 bytes, refused as too long)."""
    path = tmp_path / ("é" * 125 + ".json")  # 250 + 5 bytes in UTF-8
    assert len(os.fsencode(path.name)) == 255
    write_json(path, {"a": 1})
    assert read_json(path) == {"a": 1}
    write_json(path, {"a": 2})  # replaced in place, the stale-temporary glob included
    assert read_json(path) == {"a": 2} and len(list(tmp_path.iterdir())) == 1


@pytest.mark.skipif(ROOT_USER, reason="root writes anywhere")
def test_a_read_only_folder_is_one_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UserError, match="Permission denied"):
            write_json(folder / "out.json", {"a": 1})
    finally:
        folder.chmod(0o700)


def test_a_reader_never_opens_a_fifo_or_follows_a_loop(tmp_path):
    """Opening a FIFO for reading waits for a writer forever: refused before any open."""
    made = special_files(tmp_path)
    for kind in ("fifo", "socket", "link loop", "link to a folder"):
        for read in (load_arrays, read_json, read_metadata):
            with pytest.raises(UserError, match=rf"^{made[kind]} "):
                read(made[kind])


def test_atomic_path_refuses_before_the_block_runs(tmp_path):
    """Refused at once, not after the work: nothing is computed for an output that cannot be."""
    os.mkfifo(tmp_path / "fifo")
    ran = []
    with pytest.raises(UserError, match="named pipe"):
        with atomic_path(tmp_path / "fifo"):
            ran.append(True)
    assert ran == []


def test_a_stage_output_onto_a_symlink_or_fifo_is_one_line(work, capsys, tmp_path):
    """pretrain's model path a link to a file elsewhere, a FIFO, a link loop: one line, the
    link and what it points to untouched, no other output written."""
    elsewhere = tmp_path / "elsewhere.safetensors"
    elsewhere.write_bytes(b"not the pipeline's\n")
    model = work / "models/source.safetensors"
    for make, fragment in [(lambda: model.symlink_to(elsewhere), "is a symbolic link"),
                           (lambda: os.mkfifo(model), "named pipe"),
                           (lambda: model.symlink_to(model), "is a symbolic link")]:
        model.unlink()
        make()
        before = snapshot(work, "metrics", "plots")
        code, _, err = run_entry(work, *PRETRAIN, capsys=capsys)
        assert_one_line_error(code, err, "models/source.safetensors", fragments=[fragment])
        assert snapshot(work, "metrics", "plots") == before and temporaries(work) == []
    assert elsewhere.read_bytes() == b"not the pipeline's\n"


def digit_image(work: Path) -> Path:
    image = work / "digit.png"
    if not image.exists():
        from PIL import Image

        Image.fromarray(np.eye(8, dtype=np.uint8) * 255).save(image)
    return image


def predict_command(work: Path, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    """`transferlab-predict MODEL IMAGE --out OUT` in a subprocess, as the console script runs."""
    environ = {k: v for k, v in os.environ.items() if k != "TRANSFERLAB_DEBUG"}
    environ["PYTHONPATH"] = str(ROOT)
    command = [sys.executable, "-c", "import sys; from transferlab.predict import cli; "
               "sys.argv[0] = 'transferlab-predict'; cli()"]
    return subprocess.run([*command, str(work / "models/source.safetensors"),
                           str(digit_image(work)), "--out", str(out)],
                          capture_output=True, text=True, env=environ, cwd=cwd, timeout=120)


def predict_in_process(work: Path, out: str, cwd: Path, capsys) -> tuple[int, str]:
    """The same command through its entry point (cli: run_stage(main)) in this process."""
    from unittest import mock

    from tests.test_bad_input import stage_process_state
    from tests.test_stages import cwd as inside
    from transferlab import predict

    argv = ["transferlab-predict", str(work / "models/source.safetensors"),
            str(digit_image(work)), "--out", out]
    capsys.readouterr()
    code = 0
    with inside(cwd), stage_process_state(), mock.patch.object(sys, "argv", argv):
        try:
            predict.cli()
        except SystemExit as exc:
            code = exc.code
    return code, capsys.readouterr().err


def test_transferlab_predict_out_with_an_over_long_name_is_one_line(work, tmp_path, capsys):
    out = "x" * 300 + ".csv"
    code, err = predict_in_process(work, out, tmp_path, capsys)
    assert_one_line_error(code, err, out, fragments=["File name too long"])
    assert list(tmp_path.iterdir()) == [tmp_path / "work"]


def test_transferlab_predict_out_never_replaces_what_is_not_its_own(work, tmp_path, capsys):
    """`--out` onto a link, a FIFO, a socket, a device (as root: one of our own), a link loop:
    one line each, exit 2, nothing replaced; a new path works. The console command itself in a
    subprocess for the device (or the FIFO), the others through its entry point in-process."""
    folder = tmp_path / "outs"
    folder.mkdir()
    made = special_files(folder)
    before = describe(folder)
    real = made.get("device", made["fifo"]).name
    proc = predict_command(work, Path(real), cwd=folder)
    assert_one_line_error(proc.returncode, proc.stderr, real, fragments=["nothing was written"])
    for out in [p.name for p in made.values()] + ["loop/p.csv", "sub/../loop/p"]:
        code, err = predict_in_process(work, out, folder, capsys)
        assert_one_line_error(code, err, out)
    assert describe(folder) == before
    code, err = predict_in_process(work, "new.csv", folder, capsys)
    assert code == 0, err
    assert (folder / "new.csv").read_text().startswith("path,")


# ---- class 6: numbers from the environment ------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "-1", "1e400", "0x40", "lots",
                                   "64MiB", "1,5", "\u0666\u0664", "2e6"])
def test_resident_mib_out_of_range_is_one_line(monkeypatch, value):
    monkeypatch.setenv("TRANSFERLAB_RESIDENT_MIB", value)
    with pytest.raises(UserError, match=r"^TRANSFERLAB_RESIDENT_MIB='.*' is (not a number|out "
                                        r"of range)"):
        resident_limit()


@pytest.mark.parametrize("value, limit", [("", 64 << 20), (" 12 ", 12 << 20), ("0", 0),
                                          ("0.5", 1 << 19), ("1e3", 1000 << 20)])
def test_resident_mib_in_range(monkeypatch, value, limit):
    monkeypatch.setenv("TRANSFERLAB_RESIDENT_MIB", value)
    assert resident_limit() == limit


@pytest.mark.parametrize("name, value", [
    ("TRANSFERLAB_JOBS", "0"), ("TRANSFERLAB_JOBS", "-2"), ("TRANSFERLAB_JOBS", "1.5"),
    ("TRANSFERLAB_JOBS", "\u0663"), ("TRANSFERLAB_JOBS", "99999999999999999999"),
    ("TRANSFERLAB_JOBS", "nan"), ("WORLD_SIZE", "two"), ("WORLD_SIZE", "0"),
    ("LOCAL_WORLD_SIZE", "-1"), ("LOCAL_RANK", "x"), ("LOCAL_RANK", "1e3")])
def test_every_numeric_variable_is_checked_naming_it(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=rf"^\${name}='.*' is not a whole number from"):
        compute.parallel_stages() if name == "TRANSFERLAB_JOBS" else compute.torchrun_env()


def test_torchrun_variables_must_agree(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(UserError, match=r"\$LOCAL_WORLD_SIZE=4 is more than \$WORLD_SIZE=2"):
        compute.torchrun_env()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UserError, match=r"\$LOCAL_RANK=2 is not below"):
        compute.torchrun_env()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert compute.torchrun_env() == {"WORLD_SIZE": 2, "LOCAL_WORLD_SIZE": 2, "LOCAL_RANK": 1}


def test_a_queue_root_that_cannot_be_listed_counts_no_workers(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for root in (str(loop), "x" * 300, str(tmp_path / "missing")):
        assert compute.parallel_stages({"DVC_EXP_NAME": "e", "DVC_ROOT": root}) == 1


@pytest.mark.parametrize("value, code", [("yes please", 2), ("2", 2), ("0", 2), ("", 2)])
def test_transferlab_debug_takes_1_or_0(tmp_path, value, code):
    """A stage run with TRANSFERLAB_DEBUG set to something else than 1/0 says so in one line;
    0 and empty mean one-line errors (0 showed tracebacks: any non-empty value did)."""
    (tmp_path / "params.yaml").write_text("not: [valid")
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "TRANSFERLAB_DEBUG": value}
    proc = subprocess.run([sys.executable, str(ROOT / "stages/check_params.py"), "params.yaml",
                           "params.ok"], cwd=tmp_path, env=environ, capture_output=True, text=True,
                          timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr,
                          *(["TRANSFERLAB_DEBUG"] if value.strip() not in ("", "0") else []))
    assert not (tmp_path / "params.ok").exists()


@pytest.mark.parametrize("threads", [1000, 257, 0, -1, True, 2.0, "8"])
def test_compute_threads_has_a_fixed_ceiling(threads):
    from pydantic import ValidationError

    from transferlab.params import Compute

    with pytest.raises(ValidationError, match="whole number of threads from 1 to 256"):
        Compute(nproc=1, threads=threads, precision="fp32")
    assert Compute(nproc=1, threads=256, precision="fp32").threads == 256


def test_threads_above_the_cores_are_capped_and_said(monkeypatch, capsys):
    from transferlab.params import Compute

    monkeypatch.setattr(compute, "usable_cores", lambda: 2)
    monkeypatch.delenv("TRANSFERLAB_JOBS", raising=False)
    import torch

    before = torch.get_num_threads()
    try:
        assert compute.set_threads(Compute(nproc=1, threads=200, precision="fp32")) == 2
    finally:
        torch.set_num_threads(before)
    assert "compute.threads=200 capped at the 2 usable cores" in capsys.readouterr().out


def test_the_errno_of_every_path_error_has_a_fix():
    from transferlab.errors import path_error

    for code in (errno.ELOOP, errno.ENAMETOOLONG, errno.EACCES, errno.ENOSPC, errno.EROFS,
                 errno.ENOTDIR, errno.EDQUOT, errno.EIO):
        err = path_error(Path("some/file"), OSError(code, os.strerror(code)), "written")
        assert str(err).startswith(f"cannot write some/file ({os.strerror(code)}): ")
        err = path_error(Path("some/file"), OSError(code, os.strerror(code)), "read")
        assert str(err).startswith(f"some/file cannot be read ({os.strerror(code)}): ")


# ---- class 2: the launcher, known from the stage's first instruction --------------------------

FAKE_DVC = """import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(child.pid, flush=True)
time.sleep(60)
"""

CHILD = """import sys, time
import transferlab
print(transferlab.ORPHANED, len(transferlab.LAUNCHERS), flush=True)
from transferlab import launcher
print(launcher.launcher_gone(), flush=True)
time.sleep(60)
"""


def launched(tmp_path: Path, launcher_name: str):
    """CHILD run by a python script named `launcher_name` (a stand-in for `dvc`), $DVC_STAGE
    set: (the launcher's Popen, the child's pid, the child's first two lines)."""
    script = tmp_path / launcher_name
    script.write_text(FAKE_DVC)
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_STAGE": "pretrain"}
    proc = subprocess.Popen([sys.executable, str(script), CHILD], env=environ,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(proc.stdout.readline())
    lines = [proc.stdout.readline().strip() for _ in range(2)]
    return proc, child, lines


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["KILL", "TERM"])
def test_a_stage_dies_with_the_dvc_that_launched_it(tmp_path, signum):
    """The parent-death signal asked for at import: `dvc` killed, its stage gets SIGTERM at
    once, whatever it is doing (here: sleeping before any run_stage, as during `import torch`)."""
    proc, child, lines = launched(tmp_path, "dvc")
    try:
        assert lines == ["False 1", "False"]  # dvc found, not gone
        proc.send_signal(signum)
        deadline = time.monotonic() + 5
        while alive(child):
            assert time.monotonic() < deadline, "the stage outlived its dvc"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_stage_with_no_dvc_above_it_never_publishes(tmp_path):
    """$DVC_STAGE set but no `dvc` in the chain (it died before the stage's first instruction,
    or the variable was set by hand): orphaned from the start, launcher_gone() from then on."""
    proc, child, lines = launched(tmp_path, "not-dvc")
    try:
        assert lines == ["True 0", "True"]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_stage_run_by_hand_with_dvc_stage_set_runs_nothing(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "DVC_STAGE": "check_params"}
    environ.pop("TRANSFERLAB_DEBUG", None)
    proc = subprocess.run([sys.executable, str(ROOT / "stages/check_params.py"), "params.yaml",
                           "params.ok"], cwd=tmp_path, env=environ, capture_output=True,
                          text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "DVC_STAGE",
                          fragments=["no dvc process launched this stage"])
    assert not (tmp_path / "params.ok").exists()


def test_importing_the_package_outside_dvc_does_nothing(monkeypatch):
    import transferlab

    monkeypatch.delenv("DVC_STAGE", raising=False)
    transferlab.take_launchers()
    assert transferlab.LAUNCHERS == [] and transferlab.ORPHANED is False


def test_an_input_error_inside_an_output_block_names_the_input(tmp_path):
    """A missing input met while an output is being written is about the input, not 'cannot
    write <output>'; a full disk while writing is about the output."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(UserError, match=rf"^{loop}/x cannot be read \(Too many levels"):
        with atomic_path(tmp_path / "out.json") as tmp:
            tmp.write_text((loop / "x").read_text())
    with pytest.raises(UserError, match=r"^cannot write .*out.json \(No space left on device\)"):
        with atomic_path(tmp_path / "out.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == [loop]


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
