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
import os
import random
import shutil
import signal
import struct
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np


class UserError(Exception):
    """Bad input the user can fix: printed as one line, exit code 2, no traceback."""


MESSAGE_CHARS = 600  # a message is one terminal paragraph, however long a pasted path or value


def one_line(text: str) -> str:
    """Control characters (a newline in a file name, say) escaped; at most MESSAGE_CHARS."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                  for c in text)
    return out if len(out) <= MESSAGE_CHARS else out[:MESSAGE_CHARS - 3] + "..."


def show_path(path: str | os.PathLike) -> str:
    """A path for a message: one line, whatever characters its name holds."""
    return one_line(str(path))


def _unwritable(path: Path, err: OSError) -> UserError:
    return UserError(f"cannot write {show_path(path)} ({err.strerror or type(err).__name__}): "
                     f"make {show_path(path.parent)} writable (and free space), then run again")


_inputs: set[str] = set()  # absolute paths the running command has opened for reading
_hooked = False  # whether run_stage installed _record_reads in this process
_recording = threading.Event()  # set while run_stage runs a command
_CODE = (".py", ".pyc", ".so", ".pth", ".typed")  # what imports open: never a stage's input
# nor is the Python installation (package metadata, data files) or the kernel's /proc: ~200
# files a training stage opens, each resolved at every output's publication if kept
_NOT_INPUTS = tuple(sorted({os.path.join(p, "") for p in (sys.prefix, sys.base_prefix,
                                                           sys.exec_prefix, "/proc", "/sys",
                                                           "/dev")}))


def _record_reads(event: str, args: tuple) -> None:
    """sys.addaudithook callback: note every file opened for reading (Python's open, os.open,
    np.load, PIL, torch.load; _readable_file notes the safetensors files, which Rust opens)."""
    if event != "open" or not _recording.is_set():
        return
    path, mode, flags = args
    if mode is not None:
        reading = "r" in mode and "+" not in mode
    else:  # os.open: flags only; a folder opened to walk it (shutil.rmtree) is not read
        reading = flags is not None and flags & (os.O_ACCMODE | os.O_DIRECTORY) == os.O_RDONLY
    if not reading or isinstance(path, int):
        return
    path = os.path.abspath(os.fsdecode(path))
    if not path.endswith(_CODE) and not path.startswith(_NOT_INPUTS):
        _inputs.add(path)


def _check_not_an_input(path: Path) -> None:
    """An output never replaces a file the command read, nor a folder holding one
    (`stages/extract.py MODEL prepared.safetensors prepared.safetensors` overwrote the data)."""
    target = os.path.realpath(path)
    for read in sorted(_inputs):
        real = os.path.realpath(read)
        if real == target or real.startswith(target.rstrip(os.sep) + os.sep):
            what = "an input" if real == target else "the folder of an input"
            raise UserError(f"{show_path(path)} is also {what} of this command "
                            f"({show_path(Path(read))}): give the output another path (nothing "
                            "was written)")


def _check_same_kind(path: Path, new: Path) -> None:
    """A folder output replaces a folder, a file output a file: a file written over a folder
    (`--out photos/`, the folder being read) would delete everything in it."""
    if not path.exists() or path.is_symlink() or path.is_dir() == new.is_dir():
        return
    kind, other = ("a folder", "a file") if path.is_dir() else ("a file", "a folder")
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as err:
        raise _unwritable(path, err) from None
    target = tmp / path.name
    try:
        try:
            yield target
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT):
                raise _unwritable(path, err) from None
            raise
        if launcher_gone():
            raise KeyboardInterrupt  # unwinds as an interruption: nothing is published
        _check_same_kind(path, target)
        _check_not_an_input(path)
        try:
            if path.is_dir() and not path.is_symlink():
                old = tmp / ".old"
                os.replace(path, old)
            os.replace(target, path)
        except OSError as err:
            raise _unwritable(path, err) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Mapping) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


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
    """Training curve rows (dicts with the same keys) as CSV for `dvc plots`."""
    write_csv(path, list(history[0]), [list(row.values()) for row in history])


def _readable_file(path: Path) -> None:
    if _recording.is_set():
        _inputs.add(os.path.abspath(path))
    if path.is_dir():
        raise UserError(f"{show_path(path)} is a folder where a file was expected: delete it and "
                        "run `dvc repro` again")
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "is missing"
        raise UserError(f"{show_path(path)} {what}: run the stage that writes it (`dvc repro`)")


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(f"{show_path(path)} is corrupt ({one_line(why)[:200]}): delete it and run "
                     "`dvc repro` again")


TRAIN_VAL = ("x_train", "y_train", "x_val", "y_val")  # the arrays of a prepared train/val file


def resident_limit() -> int:
    """Bytes above which an array stays on disk when a stage loads it lazily:
    $TRANSFERLAB_RESIDENT_MIB (default 64). Where data lives changes no result, only memory.
    A stage holds a handful of arrays at once (prepare: raw and aligned, train and test), so
    the data it keeps in memory stays a few hundred MiB whatever the dataset's size; the
    default scenario's arrays (1-2 MB) and CIFAR-10 at 32 px (150 MB) differ only in that the
    latter is read a batch at a time."""
    raw = os.environ.get("TRANSFERLAB_RESIDENT_MIB", "64")
    try:
        mib = float(raw)
    except ValueError:
        raise UserError(f"TRANSFERLAB_RESIDENT_MIB={one_line(raw)!r} is not a number: set it to "
                        "the MiB above which arrays are read from disk (e.g. 64)") from None
    return max(0, int(mib * (1 << 20)))


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
        with open(self.path, "rb") as f:
            fd = f.fileno()
            if rows is None:  # a 0-d array
                return np.frombuffer(os.pread(fd, self.dtype.itemsize, self.offset), self.dtype
                                     ).reshape(())
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


def _header(path: Path) -> tuple[int, dict]:
    """(where the data section starts, the parsed header) of a safetensors file, validated
    against the file's size."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
            size = os.fstat(f.fileno()).st_size
    except (struct.error, ValueError, UnicodeDecodeError) as err:
        raise _corrupt(path, f"unreadable header: {err}") from None
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = NUMPY_DTYPES[entry["dtype"]]
            start, end = entry["data_offsets"]
            count = int(np.prod(entry["shape"], dtype=np.int64))
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"bad header entry for {name!r}") from None
        if end - start != count * dtype.itemsize or 8 + n + end > size:
            raise _corrupt(path, f"array {name!r} does not fit the file")
    return 8 + n, header


def load_arrays(path: str | os.PathLike, required: Sequence[str] = (), lazy: bool = False
                ) -> dict[str, np.ndarray | DiskArray]:
    """Every array of a safetensors file the pipeline wrote; `required` names must be present.

    lazy: arrays larger than resident_limit() come back as DiskArray (read from disk when
    indexed), so a dataset larger than memory can be trained on; smaller ones are in memory."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _readable_file(path)
    limit = resident_limit() if lazy else None
    try:
        start, header = _header(path) if lazy else (0, {})
        arrays = {}
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                entry = header.get(key)
                if entry is not None and entry["data_offsets"][1] - entry["data_offsets"][0] > limit:
                    arrays[key] = DiskArray(path, start + entry["data_offsets"][0],
                                            NUMPY_DTYPES[entry["dtype"]], tuple(entry["shape"]))
                else:
                    arrays[key] = f.get_tensor(key)
    except (SafetensorError, ValueError, TypeError) as err:
        raise _corrupt(path, str(err)) from None
    except OSError as err:
        raise UserError(f"{show_path(path)} cannot be read ({err.strerror}): check its "
                        "permissions") from None
    if missing := [k for k in required if k not in arrays]:
        raise _corrupt(path, f"no array '{missing[0]}'; it holds {sorted(arrays)[:6]}")
    return arrays


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _readable_file(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, ValueError, TypeError) as err:
        raise _corrupt(path, str(err)) from None


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
    """Tensors and metadata of a model file the pipeline wrote (safetensors: no code runs)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _readable_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, ValueError, TypeError) as err:
        raise _corrupt(path, str(err)) from None
    except OSError as err:
        raise UserError(f"{show_path(path)} cannot be read ({err.strerror}): check its "
                        "permissions") from None


# --- the process that launched this stage ----------------------------------------------------

def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time in clock ticks) from /proc, None for no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and ')'
    return fields[0], int(fields[1]), int(fields[19])


_launchers: list[tuple[int, int]] = []  # (pid, start time) of every process watched


def watch_launcher() -> None:
    """Remember the `dvc` process that runs this stage (only under DVC: $DVC_STAGE is set), and
    any shell between it and us (`dvc` runs a stage as `$SHELL -c cmd`).

    A `dvc` that dies of SIGTERM leaves its stage running, orphaned; the stage would write its
    outputs later, unrecorded in dvc.lock. With this, it stops instead (see launcher_gone).
    """
    _launchers.clear()
    if not os.environ.get("DVC_STAGE") or not Path("/proc/self/stat").exists():
        return
    pid = os.getppid()
    for _ in range(4):  # dvc, or a shell and then dvc; never further than that
        stat = _proc_stat(pid)
        if stat is None:
            return
        _launchers.append((pid, stat[2]))
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"dvc" in cmdline:
            return
        pid = stat[1]


def launcher_gone() -> bool:
    """True once a watched launcher exited (gone, a zombie, or its pid reused)."""
    if not _launchers:
        return False
    if os.getppid() != _launchers[0][0]:
        return True
    for pid, start in _launchers:
        stat = _proc_stat(pid)
        if stat is None or stat[0] in "ZX" or stat[2] != start:
            return True
    return False


_finished = threading.Event()  # set once the stage is done, failed or interrupted


def _stop_when_launcher_gone(period_s: float = 0.5) -> None:
    while not _finished.wait(period_s):
        if launcher_gone():
            print("error: the dvc process that ran this stage is gone: stopping without writing "
                  "outputs", file=sys.stderr)
            os.kill(os.getpid(), signal.SIGTERM)  # unwinds the main thread as an interruption
            return


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _redeliver_swallowed_interrupt(unraisable, previous=sys.unraisablehook) -> None:
    """Python drops an exception raised while it runs a finalizer (a __del__, a weakref or GC
    callback) with an "Exception ignored" line; a Ctrl-C or SIGTERM that lands there would be
    lost and the stage would run on and write its outputs. Send it again, as SIGTERM, from
    another thread 10-100 ms later (random, so as not to fall in step with a periodic
    finalizer), so that it lands outside the finalizer, or again should it land in one once
    more; anything else goes to the usual hook."""
    if issubclass(unraisable.exc_type, KeyboardInterrupt) and not _finished.is_set():
        delay = random.SystemRandom().uniform(0.01, 0.1)  # not the seeded global generator
        threading.Timer(delay, _resend_interrupt).start()
        return
    previous(unraisable)


def _resend_interrupt() -> None:
    if not _finished.is_set():  # the stage has not ended meanwhile
        os.kill(os.getpid(), signal.SIGTERM)


def run_stage(main: Callable[[list[str] | None], None]) -> None:
    """Entry point of every stage script: bad input becomes one line on stderr and exit code 2.

    Set TRANSFERLAB_DEBUG=1 to see the traceback instead.
    """
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C so atomic_path cleans its temp files.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    sys.unraisablehook = _redeliver_swallowed_interrupt
    global _hooked
    if not _hooked:  # an audit hook cannot be removed: one per process
        sys.addaudithook(_record_reads)
        _hooked = True
    _inputs.clear()
    _recording.set()
    watch_launcher()
    _finished.clear()
    if _launchers:
        threading.Thread(target=_stop_when_launcher_gone, daemon=True).start()
    try:
        main(sys.argv[1:])
    except UserError as err:
        _finished.set()
        if os.environ.get("TRANSFERLAB_DEBUG"):
            raise
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _finished.set()
        # a second signal (a process group's SIGTERM and the watchdog's, say) must not cut the
        # exit short with a traceback: the cleanup has run, nothing is left to interrupt
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("interrupted: no output was written", file=sys.stderr)
        sys.exit(130)
    finally:
        _finished.set()
        _recording.clear()
        _inputs.clear()
