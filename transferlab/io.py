"""Files the pipeline writes: atomic (temp path, then rename) and byte-deterministic.

Arrays and models are stored as safetensors: no pickle on load, and the same tensors give the
same bytes (plain `torch.save` embeds a random serialization id, so DVC would see a new hash on
every run).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import json
import math
import os
import shutil
import stat
import struct
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from transferlab import launcher
from transferlab.errors import PATH_FIXES, UserError, check_path_text, one_line, path_error, show_path


def _unwritable(path: Path, err: OSError) -> UserError:
    if err.errno in (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
        return UserError(f"cannot write {show_path(path)} ({err.strerror or type(err).__name__}): "
                         f"make {show_path(path.parent)} writable (and free space), then run again")
    return path_error(path, err, "written")


# what an output never replaces: nodes of the system, not files of the pipeline
_SPECIAL = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
            (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"))


def _check_output_target(path: Path) -> None:
    """An output goes to a new path, or replaces a regular file or a folder (checked against
    its own kind by _check_same_kind). Never a device node (`--out /dev/full` as root turned the
    device into a file), a FIFO or a socket, and never a symbolic link: replacing the link would
    lose it, and writing through it would change a file that is not the output's own (DVC's
    cache, with cache.type symlink, is one)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return  # a new path (its folders are made)
    except OSError as err:
        raise path_error(path, err, "written") from None
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise UserError(f"{show_path(path)} is a symbolic link (to {show_path(target)}): give the "
                        "path of a regular file or a new path; an output never replaces a link "
                        "nor writes through it (nothing was written)")
    for test, kind in _SPECIAL:
        if test(info.st_mode):
            raise UserError(f"{show_path(path)} is {kind}, not a regular file: give the path of "
                            "a regular file or a new path (nothing was written)")


def check_output(path: str | os.PathLike) -> None:
    """Refuse, in one line, an output path that atomic_path would refuse: a symbolic link, a
    device node, a FIFO, a socket, a NUL, or a path the system cannot look up (a link loop, an
    over-long name, a file where a folder should be). For a command to call before its work."""
    check_path_text(path, "written")
    _check_output_target(Path(path))


def _temp_prefix(name: str) -> str:
    """The name a temporary sibling of `name` starts with, at most 201 bytes: the full name
    may take all 255 a file system allows, and mkdtemp adds 8 random characters and .tmp."""
    return "." + os.fsdecode(os.fsencode(name)[:200]) + "."


def _check_not_an_input(path: Path) -> None:
    """An output never replaces a file the command read, nor a folder holding one
    (`stages/extract.py MODEL prepared.safetensors prepared.safetensors` overwrote the data)."""
    target = os.path.realpath(path)
    for read in launcher.inputs_read():
        real = os.path.realpath(read)
        if real == target or real.startswith(target.rstrip(os.sep) + os.sep):
            what = "an input" if real == target else "the folder of an input"
            raise UserError(f"{show_path(path)} is also {what} of this command "
                            f"({show_path(Path(read))}): give the output another path (nothing "
                            "was written)")


def _check_same_kind(path: Path, new: Path) -> None:
    """A folder output replaces a folder, a file output a file: a file written over a folder
    (`--out photos/`, the folder being read) would delete everything in it."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise path_error(path, err, "written") from None
    if stat.S_ISLNK(info.st_mode) or stat.S_ISDIR(info.st_mode) == new.is_dir():
        return
    kind, other = ("a folder", "a file") if stat.S_ISDIR(info.st_mode) else ("a file", "a folder")
    raise UserError(f"{show_path(path)} is {kind} and this output is {other}: give another "
                    "path, or move it away (nothing was written)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; move it into place only if the block succeeds.

    The yielded path's parent is a private temporary folder, removed afterwards whatever
    happens: a stage may keep scratch files there (prepare's aligned images too large for
    memory), and they never reach `path`.

    Works for files and directories, each replacing its own kind only (a file never replaces a
    folder). An interrupted or failed block leaves `path` as it was;
    a temporary left by a killed run (SIGKILL gives no chance to clean up) is removed here.
    Nothing is moved into place once the `dvc` process that launched this stage is gone
    (`launcher_gone`): DVC would not record it. Permission or disk-space errors are one line.
    """
    path = Path(path)
    check_output(path)
    prefix = _temp_prefix(path.name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
    except OSError as err:
        raise _unwritable(path, err) from None
    target = tmp / path.name
    try:
        try:
            yield target
        except OSError as err:
            named = os.fsdecode(err.filename) if isinstance(err.filename, (str, bytes)) else None
            if named is not None and not os.path.abspath(named).startswith(str(tmp.absolute())):
                if err.errno in PATH_FIXES:  # about another path the block used: an input
                    raise path_error(named, err, "read") from None
                raise
            if err.errno in PATH_FIXES:  # the temporary output itself, or a write (ENOSPC)
                raise _unwritable(path, err) from None
            raise
        if launcher.launcher_gone():
            raise KeyboardInterrupt  # unwinds as an interruption: nothing is published
        _check_output_target(path)  # again: it may have changed while the block ran
        _check_same_kind(path, target)
        _check_not_an_input(path)
        try:
            if stat.S_ISDIR(_lstat_mode(path)):
                old = tmp / ".old"
                os.replace(path, old)
            os.replace(target, path)
        except OSError as err:
            raise _unwritable(path, err) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _lstat_mode(path: Path) -> int:
    """The mode of `path` itself (0 for none)."""
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0


def write_json(path: str | os.PathLike, obj: Mapping) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from a file (what write_json writes); anything else is one line."""
    path = Path(path)
    check_readable(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise path_error(path, err, "read") from None
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, ...
        why = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else \
            "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise UserError(f"{show_path(path)} is not a valid JSON file ({one_line(why)[:200]}): "
                        "delete it and run the stage that writes it (`dvc repro`)") from None
    if not isinstance(obj, dict):
        raise UserError(f"{show_path(path)} is not a valid JSON file (it holds a "
                        f"{type(obj).__name__}, not an object): delete it and run the stage that "
                        "writes it (`dvc repro`)")
    return obj


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[round(v, 6) if isinstance(v, float) else v for v in row] for row in rows])


def canonical_safetensors(blob: bytes) -> bytes:
    """The same file with its JSON header key-sorted: the safetensors writer orders the header
    from a hash map, so the same tensors can give different bytes from one process to the next."""
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.dumps(json.loads(blob[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format aligns the data section to 8 bytes
    return struct.pack("<Q", len(header)) + header + blob[8 + n:]


def _write_bytes(path: str | os.PathLike, blob: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)


# numpy dtype -> safetensors code, in the order safetensors lays arrays out (wider types first,
# then by name): files written here row by row are byte-identical to safetensors' own
SAFETENSORS_DTYPES = {np.dtype(t): code for t, code in (
    (np.uint64, "U64"), (np.int64, "I64"), (np.float64, "F64"), (np.complex64, "C64"),
    (np.float32, "F32"), (np.uint32, "U32"), (np.int32, "I32"), (np.float16, "F16"),
    (np.uint16, "U16"), (np.int16, "I16"), (np.int8, "I8"), (np.uint8, "U8"), (np.bool_, "BOOL"))}
NUMPY_DTYPES = {code: dtype for dtype, code in SAFETENSORS_DTYPES.items()}
NUMPY_ITEM_BYTES = {code: dtype.itemsize for code, dtype in NUMPY_DTYPES.items()}
CHUNK_BYTES = 64 << 20  # what one write or one read of rows holds in memory at most


def _layout(specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]], metadata: Mapping[str, str]
            ) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The file's header (key-sorted JSON, padded to 8 bytes, as canonical_safetensors writes it)
    and each array's byte span in the data section."""
    order = list(SAFETENSORS_DTYPES)
    names = sorted(specs, key=lambda k: (order.index(np.dtype(specs[k][0])), k))
    header: dict = {"__metadata__": dict(metadata)}
    spans, at = {}, 0
    for name in names:
        dtype, shape = np.dtype(specs[name][0]), tuple(int(n) for n in specs[name][1])
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        spans[name] = (at, at + size)
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [at, at + size]}
        at += size
    blob = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob, spans


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data.nbytes:  # one pwrite moves at most ~2 GiB on Linux
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


@contextlib.contextmanager
def array_writer(path: str | os.PathLike, specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]],
                 metadata: Mapping[str, str] | None = None
                 ) -> Iterator[Callable[[str, np.ndarray], None]]:
    """Write a safetensors file without holding it in memory: `specs` names each array's dtype
    and shape up front, and the yielded `write(name, rows)` appends rows to that array (in any
    interleaving of arrays). The file appears only if the block succeeds and every array was
    filled; the bytes are those of `save_arrays` with the same arrays."""
    header, spans = _layout(specs, metadata or {})
    filled = {name: 0 for name in specs}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header)
        f.flush()

        def write(name: str, rows: np.ndarray) -> None:
            dtype, shape = np.dtype(specs[name][0]), tuple(specs[name][1])
            rows = np.ascontiguousarray(rows, dtype=dtype)
            if rows.shape[1:] != shape[1:] and rows.shape != shape:
                raise ValueError(f"{name}: rows of shape {rows.shape[1:]}, expected {shape[1:]}")
            start, end = spans[name]
            if start + filled[name] + rows.nbytes > end:
                raise ValueError(f"{name}: more rows than its shape {shape} holds")
            _pwrite_all(f.fileno(), memoryview(rows).cast("B"), len(header) + start + filled[name])
            filled[name] += rows.nbytes

        yield write
        if short := [n for n, (start, end) in spans.items() if filled[n] != end - start]:
            raise ValueError(f"{short[0]}: {filled[short[0]]} of {spans[short[0]][1] - spans[short[0]][0]}"
                             " bytes written")


def row_chunks(array, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """An array (or anything indexable by row slices: DiskArray, a lazy decoder) in blocks of
    whole rows of about `chunk_bytes`, as numpy arrays."""
    shape = tuple(array.shape)
    if not shape:
        yield np.asarray(array)
        return
    row = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(array.dtype).itemsize)
    step = max(1, chunk_bytes // row)
    for start in range(0, shape[0], step):
        yield np.asarray(array[start:start + step])


def save_arrays(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                metadata: Mapping[str, str] | None = None) -> None:
    """A safetensors file of `arrays` (numpy arrays, or row-sliceable array-likes such as
    DiskArray, written a block of rows at a time: bounded memory whatever their size)."""
    specs = {k: (np.dtype(v.dtype), tuple(v.shape)) for k, v in arrays.items()}
    with array_writer(path, specs, metadata) as write:
        for name, array in arrays.items():
            for rows in row_chunks(array):
                write(name, rows)


def write_history(path: str | os.PathLike, history: Sequence[Mapping]) -> None:
    """Training curve rows (dicts with the same keys) as CSV for `dvc plots`; a NaN (a
    validation score without validation images) is an empty cell, which plots leave out."""
    write_csv(path, list(history[0]), [["" if isinstance(v, float) and math.isnan(v) else v
                                        for v in row.values()] for row in history])


def check_readable(path: Path) -> None:
    """A file this command reads: noted as an input (no output may replace it), then checked to
    be there and to be a regular file, each failure one line."""
    launcher.note_read(path)
    check_path_text(path, "read")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{show_path(path)} is missing: run the stage that writes it "
                        "(`dvc repro`)") from None
    except OSError as err:
        raise path_error(path, err, "read") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{show_path(path)} is a folder where a file was expected: delete it and "
                        "run `dvc repro` again")
    if not stat.S_ISREG(mode):
        raise UserError(f"{show_path(path)} is not a regular file: run the stage that writes it "
                        "(`dvc repro`)")


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(f"{show_path(path)} is corrupt ({one_line(why)[:200]}): delete it and run "
                     "`dvc repro` again")


def _not_safetensors(path: Path, why: str) -> UserError:
    """A file that does not parse as safetensors: corrupt if named like one (delete it, the
    pipeline writes it anew); else another file given where an array or model file belongs
    (deleting it would be the wrong advice: it may be params.yaml)."""
    if path.suffix == ".safetensors":
        return _corrupt(path, f"not a valid safetensors file: {why}")
    return UserError(f"{show_path(path)} is not a safetensors file ({one_line(why)[:200]}): "
                     "give the .safetensors file the pipeline wrote (dvc.yaml names it)")


TRAIN_VAL = ("x_train", "y_train", "x_val", "y_val")
RESIDENT_ENV = "TRANSFERLAB_RESIDENT_MIB"
MAX_RESIDENT_MIB = 1 << 20  # 1 TiB: above any machine's memory, so "never on disk"  # the arrays of a prepared train/val file


def resident_limit() -> int:
    """Bytes above which an array stays on disk when a stage loads it lazily:
    $TRANSFERLAB_RESIDENT_MIB (default 64). Where data lives changes no result, only memory.
    A stage holds a handful of arrays at once (prepare: raw and aligned, train and test), so
    the data it keeps in memory stays a few hundred MiB whatever the dataset's size; the
    default scenario's arrays (1-2 MB) and CIFAR-10 at 32 px (150 MB) differ only in that the
    latter is read a batch at a time."""
    raw = os.environ.get(RESIDENT_ENV, "").strip() or "64"  # empty: as if unset
    try:
        mib = float(raw) if raw.isascii() else None  # float() reads other scripts' digits
    except ValueError:
        mib = None
    if mib is None or math.isnan(mib):
        raise UserError(f"{RESIDENT_ENV}={one_line(raw)!r} is not a number: set it to the MiB "
                        "above which arrays are read from disk (e.g. 64), or unset it") from None
    if not 0 <= mib <= MAX_RESIDENT_MIB:
        raise UserError(f"{RESIDENT_ENV}={one_line(raw)!r} is out of range: give the MiB above "
                        f"which arrays are read from disk, from 0 (all on disk) to "
                        f"{MAX_RESIDENT_MIB} (1 TiB, more memory than a machine has), e.g. 64")
    return int(mib * (1 << 20))


class DiskArray:
    """One array of a safetensors file, read from disk when indexed.

    Indexing (an int, a slice, an index or boolean array over rows) returns a numpy array of
    just those rows; `take` returns a lazy selection of rows. Rows are read with os.pread,
    consecutive ones in one call: what was read stays in the kernel's page cache, which it
    reclaims, not in this process. (np.memmap would count every page it touched in this
    process's resident memory until unmapped: a pass over a 4 GB file would show as 4 GB.)
    """

    def __init__(self, path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...],
                 rows: np.ndarray | None = None):
        self.path, self.offset, self.dtype = Path(path), offset, np.dtype(dtype)
        self._stored, self._rows = tuple(shape), rows
        self.shape = (len(rows), *shape[1:]) if rows is not None else self._stored
        self.ndim = len(self.shape)
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.nbytes = self._row_bytes * (self.shape[0] if self.shape else 1)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DiskArray({show_path(self.path)}, {self.dtype}, {self.shape})"

    def _positions(self, key) -> np.ndarray | int:
        """Stored row numbers of `key` (an int for one row)."""
        index = np.arange(self.shape[0]) if self._rows is None else self._rows
        if isinstance(key, (int, np.integer)):
            return int(index[key])
        return index[np.asarray(key) if isinstance(key, (list, tuple)) else key]

    def take(self, key) -> DiskArray:
        """The rows `key` selects, still on disk."""
        rows = self._positions(key)
        return DiskArray(self.path, self.offset, self.dtype, self._stored, np.atleast_1d(rows))

    def __getitem__(self, key) -> np.ndarray:
        if not self.shape:
            raise TypeError("a 0-d DiskArray is read with np.asarray")
        rows = self._positions(key)
        out = self._read(np.atleast_1d(rows))
        return out[0] if np.ndim(rows) == 0 else out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._read(self._positions(slice(None)) if self.shape else None)
        return out if dtype is None else out.astype(dtype)

    def _read(self, rows: np.ndarray | None) -> np.ndarray:
        """Stored rows `rows` (None: the whole 0-d array), in that order."""
        try:
            return self._read_open(rows)
        except OSError as err:  # the file removed or made unreadable while a stage runs
            raise path_error(self.path, err, "read") from None

    def _read_open(self, rows: np.ndarray | None) -> np.ndarray:
        with open(self.path, "rb") as f:
            fd = f.fileno()
            if rows is None:  # a 0-d array
                data = _pread_all(fd, self.dtype.itemsize, self.offset)
                if len(data) != self.dtype.itemsize:
                    raise _corrupt(self.path, "the file is shorter than its header says")
                return np.frombuffer(data, self.dtype).reshape(())
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
            order = np.argsort(rows, kind="stable")
            ordered = rows[order]
            out = np.empty((len(rows), *self._stored[1:]), self.dtype)
            flat = out.reshape(len(rows), -1).view(np.uint8).reshape(-1) if len(rows) else None
            # runs of consecutive rows (in sorted order) are one read each
            breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
            for run in np.split(np.arange(len(ordered)), breaks) if len(ordered) else []:
                first, count = int(ordered[run[0]]), len(run)
                want = count * self._row_bytes
                data = _pread_all(fd, want, self.offset + first * self._row_bytes)
                if len(data) != want:
                    raise _corrupt(self.path, "the file is shorter than its header says")
                flat[run[0] * self._row_bytes:(run[0] + count) * self._row_bytes] = \
                    np.frombuffer(data, np.uint8)
        if not np.array_equal(order, np.arange(len(rows))):
            result = np.empty_like(out)
            result[order] = out
            out = result
        return out


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    parts = []
    while size:
        data = os.pread(fd, min(size, 1 << 30), offset)
        if not data:
            break
        parts.append(data)
        size, offset = size - len(data), offset + len(data)
    return b"".join(parts)


# every dtype safetensors names, and its item size in bytes: numpy's, and the torch-only ones
SAFETENSORS_ITEM_BYTES = {**NUMPY_ITEM_BYTES, "BF16": 2, "F8_E5M2": 1, "F8_E4M3": 1}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


def _unique_keys(pairs: list) -> dict:
    """json object_pairs_hook: a key given twice is an error (json.loads keeps the last)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} appears twice")
        out[key] = value
    return out


def _json_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _header(path: Path, dtypes: Mapping[str, int] = SAFETENSORS_ITEM_BYTES) -> tuple[int, dict]:
    """(where the data section starts, the parsed header) of a safetensors file, every field
    checked before anything is read by it: the declared header length against the file (a
    length of 2**64-1 was read as such), a JSON object with unique keys, `__metadata__` a
    str -> str map, each array's dtype one of `dtypes`, its shape whole numbers >= 0 whose
    product (Python ints: no overflow) times the item size is the span of its data_offsets,
    and the spans tiling the data section exactly (no gap, no overlap, no bytes after), as the
    safetensors library requires."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise _not_safetensors(path, f"{size} bytes, shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > MAX_HEADER_BYTES:
                raise _not_safetensors(path, f"its header length ({n} bytes) is longer than the "
                                       f"file ({size} bytes)" if n > size - 8 else
                                       f"its header length ({n} bytes) is over the "
                                       f"{MAX_HEADER_BYTES}-byte limit")
            blob = f.read(n)
    except OSError as err:
        raise path_error(path, err, "read") from None
    if len(blob) != n:
        raise _not_safetensors(path, "the file is shorter than its header says")
    try:
        header = json.loads(blob.decode("utf-8"), object_pairs_hook=_unique_keys,
                            parse_constant=_json_constant)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, ...
        why = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise _not_safetensors(path, f"unreadable header: {why}") from None
    if not isinstance(header, dict):
        raise _not_safetensors(path, f"its header is a JSON {type(header).__name__}, not an object")
    metadata = header.get("__metadata__", {})
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise _not_safetensors(path, "its __metadata__ is not a map of strings to strings")
    data_bytes, spans = size - 8 - n, []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise _not_safetensors(path, f"the entry of {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in dtypes:
            raise _not_safetensors(path, f"{name!r} has dtype {one_line(repr(dtype))[:40]}, not "
                                   f"one of {', '.join(dtypes)}")
        if not (isinstance(shape, list) and all(_whole(d) and d >= 0 for d in shape)):
            raise _not_safetensors(path, f"{name!r} has shape {one_line(repr(shape))[:60]}, not a "
                                   "list of whole numbers >= 0")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_whole, offsets))
                and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise _not_safetensors(path, f"{name!r} has data_offsets "
                                   f"{one_line(repr(offsets))[:60]} outside the file's "
                                   f"{data_bytes} data bytes")
        count = 1
        for d in shape:
            count *= d
        if count * dtypes[dtype] != offsets[1] - offsets[0]:
            raise _not_safetensors(path, f"array {name!r} ({dtype}, shape {shape}) does not fit "
                                   f"its {offsets[1] - offsets[0]} bytes")
        spans.append((offsets[0], offsets[1], name))
    at = 0
    for start, end, name in sorted(spans):
        if start != at:
            raise _not_safetensors(path, f"array {name!r} " + (
                "overlaps another" if start < at else "leaves a gap before it"))
        at = end
    if at != data_bytes:
        raise _not_safetensors(path, f"{data_bytes - at} bytes after the last array")
    return 8 + n, header


def load_arrays(path: str | os.PathLike, required: Sequence[str] = (), lazy: bool = False
                ) -> dict[str, np.ndarray | DiskArray]:
    """Every array of a safetensors file the pipeline wrote; `required` names must be present.
    Its header is validated first (_header): a malformed file is one line, however it lies.

    lazy: arrays larger than resident_limit() come back as DiskArray (read from disk when
    indexed), so a dataset larger than memory can be trained on; smaller ones are in memory."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    check_readable(path)
    limit = resident_limit() if lazy else None
    start, header = _header(path, NUMPY_ITEM_BYTES)
    arrays = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            for key in sorted(k for k in header if k != "__metadata__"):
                entry = header[key]
                begin, end = entry["data_offsets"]
                if lazy and end - begin > limit:
                    arrays[key] = DiskArray(path, start + begin, NUMPY_DTYPES[entry["dtype"]],
                                            tuple(entry["shape"]))
                else:
                    arrays[key] = f.get_tensor(key)
    except (SafetensorError, ValueError, TypeError) as err:
        raise _corrupt(path, str(err)) from None
    except OSError as err:
        raise path_error(path, err, "read") from None
    if missing := [k for k in required if k not in arrays]:
        raise _corrupt(path, f"no array '{missing[0]}'; it holds {sorted(arrays)[:6]}")
    return arrays


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The str -> str metadata of a safetensors file (validated with the rest of its header)."""
    path = Path(path)
    check_readable(path)
    return dict(_header(path)[1].get("__metadata__", {}))


def read_classes(path: str | os.PathLike) -> list[str]:
    """The class names a prepared or model file records in its metadata (a JSON list)."""
    raw = read_metadata(path).get("classes")
    try:
        classes = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError:
        classes = None
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise _corrupt(Path(path), "no list of class names in its metadata")
    return classes


def save_state_dict(path: str | os.PathLike, state: Mapping, metadata: Mapping[str, str]) -> None:
    """A model file; refused (nothing written) when a tensor holds NaN or infinity, which is
    what a diverged run leaves: such a file would score as chance and look like a result."""
    import torch
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    if bad := [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]:
        raise UserError(f"training diverged: {bad[0]} (and {len(bad) - 1} more tensors) holds NaN "
                        f"or infinity, so {show_path(path)} was not written: lower the stage's lr "
                        "or weight_decay")
    _write_bytes(path, canonical_safetensors(save(state, metadata=dict(metadata))))


def load_state_dict(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Tensors and metadata of a model file the pipeline wrote (safetensors: no code runs);
    its header validated first (_header)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    check_readable(path)
    _, header = _header(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(header.get("__metadata__", {}))
    except (SafetensorError, ValueError, TypeError) as err:
        raise _corrupt(path, str(err)) from None
    except OSError as err:
        raise path_error(path, err, "read") from None
