"""Files the pipeline writes: atomic (temp path, then rename) and byte-deterministic.

Arrays and models are stored as safetensors: no pickle on load, and the same tensors give the
same bytes (plain `torch.save` embeds a random serialization id, so DVC would see a new hash on
every run).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
import shutil
import signal
import struct
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np


class UserError(Exception):
    """Bad input the user can fix: printed as one line, exit code 2, no traceback."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; move it into place only if the block succeeds.

    Works for files and directories. An interrupted or failed block leaves `path` as it was;
    a temporary left by a killed run (SIGKILL gives no chance to clean up) is removed here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            old = tmp / ".old"
            os.replace(path, old)
        os.replace(target, path)
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


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing: run the stage that writes it (`dvc repro`)")
    try:
        return load_file(str(path))
    except SafetensorError as err:
        raise UserError(f"{path} is corrupt ({err}): delete it and run `dvc repro` again") from None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return dict(f.metadata() or {})


def save_state_dict(path: str | os.PathLike, state: Mapping, metadata: Mapping[str, str]) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    _write_bytes(path, canonical_safetensors(save(state, metadata=dict(metadata))))


def load_state_dict(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """Tensors and metadata of a model file the pipeline wrote (safetensors: no code runs)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing: run the stage that writes it (`dvc repro`)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except SafetensorError as err:
        raise UserError(f"{path} is corrupt ({err}): delete it and run `dvc repro` again") from None


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_stage(main: Callable[[list[str] | None], None]) -> None:
    """Entry point of every stage script: bad input becomes one line on stderr and exit code 2.

    Set TRANSFERLAB_DEBUG=1 to see the traceback instead.
    """
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C so atomic_path cleans its temp files.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        main(sys.argv[1:])
    except UserError as err:
        if os.environ.get("TRANSFERLAB_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: no output was written", file=sys.stderr)
        sys.exit(130)
