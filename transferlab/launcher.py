"""A stage's run: the `dvc` that launched it, the signals that stop it, the files it reads, and
its entry point `run_stage` (bad input: one line, exit 2; interrupted: nothing written, 130).

transferlab/__init__.py notes the launcher chain at the stage's first instruction (see
transferlab.take_launchers); here it is checked. Torch- and numpy-free.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
from collections.abc import Callable

import transferlab
from transferlab.errors import UserError, one_line

# --- the files the running command reads (an output never replaces one: io.check_output) ------

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
    np.load, PIL, torch.load; note_read notes the safetensors files, which Rust opens)."""
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


def note_read(path: str | os.PathLike) -> None:
    """Note a file the running command reads by other means than Python's open (the
    safetensors library opens files from Rust, unseen by the audit hook)."""
    if _recording.is_set():
        _inputs.add(os.path.abspath(path))


def inputs_read() -> list[str]:
    """The absolute paths the running command has read so far, sorted."""
    return sorted(_inputs)


# --- the process that launched this stage --------------------------------------------------


_gone = False  # sticky: a launcher seen gone once stays gone (its pid may be reused later)


def launcher_gone() -> bool:
    """True once the `dvc` that launched this stage is gone (exited, a zombie, its pid reused,
    or already gone when the stage started), or any process between it and us."""
    global _gone
    if _gone or transferlab.ORPHANED:
        _gone = True
        return True
    chain = transferlab.LAUNCHERS
    if not chain:
        return False
    if os.getppid() != chain[0][0]:
        _gone = True
        return True
    for pid, start in chain:
        stat = transferlab._proc_stat(pid)
        if stat is None or stat[0] in "ZX" or stat[2] != start:
            _gone = True
            return True
    return False


LAUNCHER_GONE = "the dvc process that ran this stage is gone: stopping without writing outputs"
NO_LAUNCHER = ("$DVC_STAGE is set but no dvc process launched this stage (it died as the stage "
               "started, or the variable was set by hand): nothing was run; run it with "
               "`dvc repro`, or unset DVC_STAGE")
_finished = threading.Event()  # set once the stage is done, failed or interrupted


def _stop_when_launcher_gone(period_s: float = 0.5) -> None:
    while not _finished.wait(period_s):
        if launcher_gone():
            print(f"error: {LAUNCHER_GONE}", file=sys.stderr)
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


DEBUG_ENV = "TRANSFERLAB_DEBUG"
_DEBUG_VALUES = {"": False, "0": False, "false": False, "no": False, "off": False,
                 "1": True, "true": True, "yes": True, "on": True}


def debug_tracebacks() -> bool:
    """$TRANSFERLAB_DEBUG: 1 shows a bad input's traceback; unset, empty or 0: one line."""
    raw = os.environ.get(DEBUG_ENV, "")
    if raw.strip().lower() not in _DEBUG_VALUES:
        raise UserError(f"{DEBUG_ENV}={one_line(raw)!r} is not 1 or 0: set it to 1 to see "
                        "tracebacks, 0 (or unset it) for one-line errors")
    return _DEBUG_VALUES[raw.strip().lower()]


def run_stage(main: Callable[[list[str] | None], None]) -> None:
    """Entry point of every stage script: bad input becomes one line on stderr and exit code 2.

    Set TRANSFERLAB_DEBUG=1 to see the traceback instead.
    """
    try:
        debug = debug_tracebacks()
    except UserError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        sys.exit(2)
    # SIGTERM (e.g. from a CI timeout) unwinds like Ctrl-C so atomic_path cleans its temp files.
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    sys.unraisablehook = _redeliver_swallowed_interrupt
    global _hooked
    if not _hooked:  # an audit hook cannot be removed: one per process
        sys.addaudithook(_record_reads)
        _hooked = True
    _inputs.clear()
    _recording.set()
    _finished.clear()
    if launcher_gone():  # `dvc` died while this stage started (imports): run nothing
        _finished.set()
        _recording.clear()
        print(f"error: {NO_LAUNCHER if transferlab.ORPHANED else LAUNCHER_GONE}", file=sys.stderr)
        sys.exit(2)
    if transferlab.LAUNCHERS:
        threading.Thread(target=_stop_when_launcher_gone, daemon=True).start()
    try:
        main(sys.argv[1:])
    except UserError as err:
        _finished.set()
        if debug:
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
