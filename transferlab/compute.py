"""Where training runs: CPU threads, processes (torchrun + DistributedDataParallel), precision.

With the defaults (`compute.nproc: 1`, `precision: fp32`) nothing here imports
torch.distributed or changes a number: `fit` runs as a plain loop, bit for bit as before.

- Threads: `compute.threads: auto` gives each process usable cores / (stages running at once x
  processes per stage), at least 1. Stages running at once: $TRANSFERLAB_JOBS if set, else the
  live workers of DVC's experiment queue (`dvc queue start -j N`, `dvc exp run --run-all -j N`)
  when the stage runs as a queued experiment, else 1. Two workers each using every core ran
  slower than one at a time here (thread oversubscription); see benchmarks/sweep.py.
- Processes: `compute.nproc: N > 1` makes a training stage run itself again through
  `torch.distributed.run` (torchrun) with N processes on this machine; a stage already started
  by torchrun (several nodes: `torchrun --nnodes ... --rdzv-endpoint ...`) runs as it was
  started. The stage process waits for torchrun and passes on its exit code. Each rank trains on its contiguous part of every global batch (same global batch,
  same sample order and augmentation as one process), DDP averages the gradients (gloo on CPU,
  NCCL on CUDA), and rank 0 alone writes outputs, after a barrier.
- Precision: `bf16` / `fp16` autocast for the training forward pass (fp16 with a gradient
  scaler, CUDA only); weights, optimiser and outputs stay fp32.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from transferlab.errors import UserError

JOBS_ENV = "TRANSFERLAB_JOBS"  # stages running at once on this machine (overrides detection)
# More stages at once than that is beyond any machine's cores: each would get one thread anyway.
MAX_JOBS = 1024
# torchrun's variables, read here to join its process group; a stale one in a shell (from a
# cluster job, say) must be one line, not a traceback in int()
TORCHRUN_ENV = ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "LOCAL_RANK")
MAX_WORLD = 1 << 16  # processes in one group: far above any cluster this pipeline runs on


@dataclass(frozen=True)
class Setup:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    precision: str = "fp32"


_setup = Setup()


def current() -> Setup:
    return _setup


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def whole_env(name: str, low: int, high: int, fix: str, environ=None) -> int | None:
    """$name as a whole number from `low` to `high` (plain decimal digits; surrounding spaces
    ignored); None when unset or empty. Anything else is one line naming the variable."""
    raw = (os.environ if environ is None else environ).get(name, "")
    given = raw.strip()
    if not given:
        return None
    if not (given.isascii() and given.isdigit() and low <= int(given) <= high):
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        raise UserError(f"${name}={shown!r} is not a whole number from {low} to {high}: {fix}")
    return int(given)


def torchrun_env(environ=None) -> dict[str, int]:
    """WORLD_SIZE, LOCAL_WORLD_SIZE and LOCAL_RANK as torchrun sets them, checked: each a whole
    number in range, LOCAL_RANK below LOCAL_WORLD_SIZE, LOCAL_WORLD_SIZE at most WORLD_SIZE."""
    fix = "torchrun sets it; unset it when not running under torchrun"
    values = {"WORLD_SIZE": whole_env("WORLD_SIZE", 1, MAX_WORLD, fix, environ),
              "LOCAL_WORLD_SIZE": whole_env("LOCAL_WORLD_SIZE", 1, MAX_WORLD, fix, environ),
              "LOCAL_RANK": whole_env("LOCAL_RANK", 0, MAX_WORLD - 1, fix, environ)}
    local, world, rank = values["LOCAL_WORLD_SIZE"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if local is not None and world is not None and local > world:
        raise UserError(f"$LOCAL_WORLD_SIZE={local} is more than $WORLD_SIZE={world}: {fix}")
    if rank is not None and local is not None and rank >= local:
        raise UserError(f"$LOCAL_RANK={rank} is not below $LOCAL_WORLD_SIZE={local}: {fix}")
    return {k: v for k, v in values.items() if v is not None}


def queue_workers(dvc_root: str | os.PathLike) -> int:
    """Live workers of DVC's experiment queue in the repository at `dvc_root`: each writes
    .dvc/tmp/exps/celery/dvc-exp-worker-<n>.json with its pid, and a returncode once it ends."""
    alive = 0
    try:  # DVC sets $DVC_ROOT; a folder it cannot list has no workers we could count
        infos = sorted(Path(dvc_root, ".dvc", "tmp", "exps", "celery").glob("dvc-exp-worker-*.json"))
    except (OSError, ValueError):
        return 0
    for info in infos:
        try:
            worker = json.loads(info.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(worker, dict) and worker.get("returncode") is None and \
                isinstance(worker.get("pid"), int) and Path(f"/proc/{worker['pid']}").exists():
            alive += 1
    return alive


def parallel_stages(environ: dict | None = None) -> int:
    """How many pipeline stages run at once on this machine (see the module docstring)."""
    environ = os.environ if environ is None else environ
    given = whole_env(JOBS_ENV, 1, MAX_JOBS, "give the number of experiments that run at once "
                      "on this machine (or unset it)", environ)
    if given is not None:
        return given
    if environ.get("DVC_EXP_NAME") and environ.get("DVC_ROOT"):
        return max(1, queue_workers(environ["DVC_ROOT"]))
    return 1


def threads_for(setting: int | str, nproc: int, jobs: int, cores: int) -> int:
    """The torch thread count of one process: `setting` up to `cores`, or for auto
    cores / (jobs x nproc). A number above the cores is capped: threads beyond them only wait
    for each other (compute.threads: 1000 on 2 cores: an epoch went from 9 s to 200 s, and a
    SIGTERM took 36 s to stop it). The params schema allows the same numbers on every machine
    (params.Compute); only what a number gives depends on the machine, as auto's does."""
    if setting != "auto":
        return max(1, min(int(setting), cores))
    return max(1, cores // (jobs * nproc))


def set_threads(cfg, trains: bool = False) -> int:
    """Apply compute.threads to this process; `trains`: a training stage, which runs
    compute.nproc processes. Says what it chose, and why, on stdout."""
    nproc = torchrun_env().get("LOCAL_WORLD_SIZE", cfg.nproc if trains else 1)
    jobs, cores = parallel_stages(), usable_cores()
    threads = threads_for(cfg.threads, nproc, jobs, cores)
    torch.set_num_threads(threads)
    if "LOCAL_RANK" not in os.environ:  # under torchrun, rank 0 reports (launch)
        why = f"auto: {cores} cores / ({jobs} at once x {nproc} processes)" \
            if cfg.threads == "auto" else "compute.threads" if threads == cfg.threads else \
            f"compute.threads={cfg.threads} capped at the {cores} usable cores"
        print(f"torch threads: {threads} ({why})")
    return threads


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc-per-node={nproc}", *argv]


def run_torchrun(nproc: int, threads: int, argv: list[str]) -> int:
    """Run this stage again as `nproc` processes under torchrun, wait, and return its exit code.

    The ranks' own one-line errors (run_stage prints "error: ...") come out once, without
    torchrun's report around them; anything else (a crash) is shown whole. An interruption of
    this process (Ctrl-C, SIGTERM from dvc) stops torchrun, which stops the ranks."""
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # torchrun would set 1 and warn
    sys.stdout.flush()
    proc = subprocess.Popen(torchrun_command(nproc, argv), env=env, stderr=subprocess.PIPE,
                            text=True, errors="replace")
    try:
        _, err = proc.communicate()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    ours = [line for line in err.splitlines() if line.startswith(("error: ", "interrupted: "))]
    if proc.returncode and ours:
        print(ours[0], file=sys.stderr)
        return 130 if ours[0].startswith("interrupted") else 2
    sys.stderr.write(err)
    return proc.returncode


def launch(cfg, *, trains: bool = True) -> None:
    """Set threads and precision; with compute.nproc > 1 (and `trains`), run this stage again
    under torchrun, or, inside torchrun, join the process group. Call it right after reading the
    params, before any output is opened."""
    global _setup
    threads = set_threads(cfg, trains)
    precision = cfg.precision if trains else "fp32"
    if precision == "fp16" and not torch.cuda.is_available():
        raise UserError("compute.precision=fp16 needs a CUDA GPU (none found): use bf16 or fp32")
    ranks = torchrun_env()
    world = ranks.get("WORLD_SIZE", 1)
    if trains and cfg.nproc > 1 and "LOCAL_RANK" not in ranks:
        if torch.cuda.is_available() and cfg.nproc > torch.cuda.device_count():
            raise UserError(f"compute.nproc={cfg.nproc} but {torch.cuda.device_count()} GPU(s) "
                            f"are visible: use at most {torch.cuda.device_count()}")
        sys.exit(run_torchrun(cfg.nproc, threads, [sys.argv[0], *sys.argv[1:]]))
    _setup = Setup(precision=precision)
    if trains and world > 1:
        import torch.distributed as dist

        local_rank = ranks.get("LOCAL_RANK", 0)
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)  # torch.device("cuda") is now this rank's GPU
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(dist.destroy_process_group)
        _setup = Setup(dist.get_rank(), dist.get_world_size(), local_rank, precision)
        if _setup.rank:
            sys.stdout = open(os.devnull, "w")  # one rank reports: the others' lines repeat it
        print(f"{_setup.world} processes (DistributedDataParallel, {dist.get_backend()}), "
              f"{threads} threads each")


def configure(setup: Setup) -> None:
    """Set the process's setup directly (tests; a process group must already exist if world>1)."""
    global _setup
    _setup = setup


def shard(n: int) -> tuple[slice, float]:
    """This rank's contiguous part of a global batch of `n`, and the factor that makes the mean
    of the ranks' losses the loss of the whole batch: len(part) x world / n (1.0 for one rank)."""
    rank, world = _setup.rank, _setup.world
    if world == 1:
        return slice(None), 1.0
    if n < world:
        raise UserError(f"compute.nproc={world} is more than a batch of {n} images: every process "
                        f"needs at least one; lower compute.nproc or raise the batch size")
    lo, hi = rank * n // world, (rank + 1) * n // world
    return slice(lo, hi), (hi - lo) * world / n


class _StepLoss(nn.Module):
    """The step's whole loss as one forward pass of one module: DDP synchronises the gradients
    of exactly one forward per backward, and a step may run several streams through `model`."""

    def __init__(self, model: nn.Module, loss: Callable[..., torch.Tensor]):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, *args):
        return self.loss(*args)


def data_parallel(model: nn.Module, loss: Callable[..., torch.Tensor]) -> Callable:
    """`loss` itself for one process; with several, `loss` run inside DistributedDataParallel
    over `model` (its gradients averaged across ranks in the backward pass)."""
    if _setup.world == 1:
        return loss
    from torch.nn.parallel import DistributedDataParallel

    ids = [_setup.local_rank] if next(model.parameters()).is_cuda else None
    return DistributedDataParallel(_StepLoss(model, loss), device_ids=ids)


def agree(model: nn.Module, running: torch.Tensor) -> torch.Tensor:
    """Before an evaluation: rank 0's buffers (BatchNorm statistics, computed per rank on its
    part of the batch) to every rank, and the running loss averaged over ranks, so that every
    rank scores the same model and takes the same decisions."""
    if _setup.world == 1:
        return running
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, 0)
    total = running.clone()
    dist.all_reduce(total)
    return total / _setup.world


def autocast() -> contextlib.AbstractContextManager:
    if _setup.precision == "fp32":
        return contextlib.nullcontext()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16 if _setup.precision == "bf16" else torch.float16)


def grad_scaler() -> torch.amp.GradScaler:
    """fp16 needs its loss scaled against gradient underflow; a disabled scaler passes through."""
    return torch.amp.GradScaler("cuda", enabled=_setup.precision == "fp16")


def publishes() -> bool:
    """Wait for every rank to finish; True in the one process that writes the outputs."""
    if _setup.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return _setup.rank == 0
