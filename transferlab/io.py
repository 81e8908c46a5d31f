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
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; move it into place only if the block succeeds.

    Works for files and directories. An interrupted or failed block leaves `path` as it was;
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


def save_arrays(path: str | os.PathLike, arrays: Mapping[str, np.ndarray],
                metadata: Mapping[str, str] | None = None) -> None:
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    _write_bytes(path, canonical_safetensors(save(arrays, metadata=dict(metadata or {}))))


def write_history(path: str | os.PathLike, history: Sequence[Mapping]) -> None:
    """Training curve rows (dicts with the same keys) as CSV for `dvc plots`."""
    write_csv(path, list(history[0]), [list(row.values()) for row in history])


def _readable_file(path: Path) -> None:
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


def load_arrays(path: str | os.PathLike, required: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Every array of a safetensors file the pipeline wrote; `required` names must be present."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    _readable_file(path)
    try:
        arrays = load_file(str(path))
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


def run_stage(main: Callable[[list[str] | None], None]) -> None:
    """Entry point of every stage script: bad input becomes one line on stderr and exit code 2.

    Set TRANSFERLAB_DEBUG=1 to see the traceback instead.
    """
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C so atomic_path cleans its temp files.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
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
