"""Transfer learning as a reproducible DVC pipeline.

Modules, in the order the pipeline uses them:
    params        the typed schema of params.yaml (its lists come from the registries)
    datasets/     the dataset registry: one module per family (embedded, folder, torchvision)
    rawdata       a raw dataset (images, labels, class names) and its file
    images        image files and class folders on disk, and the one image reader
    scenario      domain alignment, framing checks, copies by content, splits, k-shot draws
    backbones/    the backbone registry: one module per encoder family
    models        encoders with named blocks + linear head, model files, pretrained weights
    compute       threads, processes (torchrun), precision
    train         the one training loop
    source        pretraining and frozen features
    transferability  scores of a source before any target training
    strategies/   the method registry: one module per transfer method
    transfer      what the methods share (inputs, adaptation, selection)
    evaluation, metrics  target-test scores
    records       the pipeline's own files (metrics, model metadata) read back, validated
    export, predict, report  ONNX export, transferlab-predict, the HTML report
    study, stats, ranking, candidates  the study and the ranking pipelines
    io            atomic outputs, validated arrays and files
    errors        UserError and the one-line wording of bad input (torch- and numpy-free)
    launcher      a stage's run: its `dvc` launcher, signals, files read, run_stage

Importing the package does one thing, and only under DVC ($DVC_STAGE set): it notes the `dvc`
process that launched this stage (see take_launchers). Elsewhere (tests, notebooks) nothing.
"""

import os as _os

# The launcher chain, taken here because every stage script's first import is a transferlab
# module: this runs at the stage's first instruction, before torch (1-2 s of imports). Taken
# later (it was, in launcher.run_stage), a `dvc` killed in that window left a stage that adopted
# pid 1 as its "launcher", trained on and published outputs dvc.lock never recorded.
# Stdlib only: ~0.1 ms of /proc reads (+ ~2 ms for ctypes), under DVC only.
LAUNCHERS: list = []  # (pid, start time in clock ticks): the parent first, up to the `dvc` process
ORPHANED = False  # no `dvc` above this process when it started: it must never publish
_HOPS = 6  # rank -> torchrun -> stage -> shell -> dvc is the longest chain the pipeline makes
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_SIGTERM = 15


def _proc_stat(pid: int):
    """(state, parent pid, start time in clock ticks) of `pid` from /proc; None if none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
        fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and ')'
        return fields[0], int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _is_dvc(pid: int) -> bool:
    """`dvc ...` (the console script, a frozen binary) or `python [options] -m dvc ...`
    (`python -X dev -W ignore -m dvc` too: the interpreter's options come first)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")[:16]
    except OSError:
        return False
    names = [_os.path.basename(a) for a in argv]
    return b"dvc" in names or b"dvc.exe" in names or any(
        a == b"-m" and b == b"dvc" for a, b in zip(argv, argv[1:]))


def _set_parent_death_signal() -> None:
    """SIGTERM to this process when its parent dies (Linux prctl); a no-op elsewhere."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, _SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # no libc prctl: the /proc checks still hold
        pass


def take_launchers(environ=None) -> None:
    """Under DVC, note the chain of processes from the parent up to `dvc` (a shell `dvc` runs
    the command in, torchrun and the stage above a rank), and ask the kernel for SIGTERM when
    the parent dies: the stage then dies with a `dvc` that is SIGTERMed or SIGKILLed, and
    launcher.launcher_gone() sees a `dvc` that died above a shell. When no `dvc` is found (it
    died before this ran: the parent is now pid 1 or a subreaper) the stage is ORPHANED and
    io.atomic_path never publishes. The parent is read after the prctl and again after the
    walk, so a parent that dies in between is seen too."""
    global ORPHANED
    environ = _os.environ if environ is None else environ
    del LAUNCHERS[:]
    ORPHANED = False
    if not environ.get("DVC_STAGE") or not _os.path.exists("/proc/self/stat"):
        return
    _set_parent_death_signal()
    parent = _os.getppid()
    chain, pid = [], parent
    for _ in range(_HOPS):
        stat = _proc_stat(pid) if pid > 0 else None
        if stat is None:
            break
        chain.append((pid, stat[2]))
        if _is_dvc(pid):
            LAUNCHERS.extend(chain)
            break
        if pid == 1:
            break
        pid = stat[1]
    if not LAUNCHERS or _os.getppid() != parent:
        ORPHANED = True


take_launchers()
