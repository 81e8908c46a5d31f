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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from transferlab.io import UserError

JOBS_ENV = "TRANSFERLAB_JOBS"  # stages running at once on this machine (overrides detection)


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


def queue_workers(dvc_root: str | os.PathLike) -> int:
    """Live workers of DVC's experiment queue in the repository at `dvc_root`: each writes
    .dvc/tmp/exps/celery/dvc-exp-worker-<n>.json with its pid, and a returncode once it ends."""
    alive = 0
    for info in Path(dvc_root, ".dvc", "tmp", "exps", "celery").glob("dvc-exp-worker-*.json"):
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
    given = environ.get(JOBS_ENV, "").strip()
    if given:
        if not given.isdigit() or int(given) < 1:
            raise UserError(f"${JOBS_ENV}={given!r}: give the number of experiments that run at "
                            "once, a whole number >= 1 (or unset it)")
        return int(given)
    if environ.get("DVC_EXP_NAME") and environ.get("DVC_ROOT"):
        return max(1, queue_workers(environ["DVC_ROOT"]))
    return 1


def threads_for(setting: int | str, nproc: int, jobs: int, cores: int) -> int:
    """The torch thread count of one process: `setting`, or for auto cores / (jobs x nproc)."""
    if setting != "auto":
        return int(setting)
    return max(1, cores // (jobs * nproc))


def set_threads(cfg, trains: bool = False) -> int:
    """Apply compute.threads to this process; `trains`: a training stage, which runs
    compute.nproc processes. Says what it chose, and why, on stdout."""
    nproc = int(os.environ.get("LOCAL_WORLD_SIZE", cfg.nproc if trains else 1))
    jobs, cores = parallel_stages(), usable_cores()
    threads = threads_for(cfg.threads, nproc, jobs, cores)
    torch.set_num_threads(threads)
    if "LOCAL_RANK" not in os.environ:  # under torchrun, rank 0 reports (launch)
        why = f"auto: {cores} cores / ({jobs} at once x {nproc} processes)" \
            if cfg.threads == "auto" else "compute.threads"
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
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if trains and cfg.nproc > 1 and "LOCAL_RANK" not in os.environ:
        if torch.cuda.is_available() and cfg.nproc > torch.cuda.device_count():
            raise UserError(f"compute.nproc={cfg.nproc} but {torch.cuda.device_count()} GPU(s) "
                            f"are visible: use at most {torch.cuda.device_count()}")
        sys.exit(run_torchrun(cfg.nproc, threads, [sys.argv[0], *sys.argv[1:]]))
    _setup = Setup(precision=precision)
    if trains and world > 1:
        import torch.distributed as dist

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
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


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """For tests: the default setup inside the block, whatever was configured before."""
    global _setup
    saved, _setup = _setup, Setup()
    try:
        yield
    finally:
        _setup = saved
