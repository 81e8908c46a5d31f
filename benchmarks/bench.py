"""Benchmark of the default pipeline on this machine: wall time, throughput, FLOP rate, memory.

Prints, in one run:
  - the default `dvc repro` from clean (in a temporary copy of the project), total and per stage,
    with each stage's peak resident memory;
  - the no-op `dvc repro` (nothing changed);
  - the start-up share: each stage's import time (`python -X importtime`, every module the process
    loads, lazy imports included), which stages load torch, and their sum against the clean run;
  - training throughput of our loop against a loop written the way the founding tutorial writes
    it (DataLoader over a Dataset, per-item ToTensor + Normalize, batch 100, num_workers=2), on
    the same model, data and number of samples, measured side by side;
  - our training rate in GFLOP/s (torch.utils.flop_counter) against this machine's fp32 matmul
    rate measured in the same run.

Usage:  python benchmarks/bench.py            (about 3 minutes on 2 cores)
        python benchmarks/bench.py --skip-pipeline   (throughput and FLOP rate only)
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["dvc.yaml", "params.yaml", ".dvcignore", ".dvc/config", ".dvc/.gitignore",
                 "data/.gitignore", "stages", "transferlab"]


def copy_project(dst: Path) -> None:
    for name in PROJECT_FILES:
        src, out = ROOT / name, dst / name
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, out)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)


def child_env(repo: Path) -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1"}


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MiB) of one process, measured by the kernel (wait4), and its
    stderr (through a file: a pipe nobody reads would block a chatty process)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr}")
    return wall, usage.ru_maxrss / 1024, stderr


def import_seconds(importtime: str) -> tuple[float, bool]:
    """Total import time of a process from its `-X importtime` lines (the top-level entries'
    cumulative microseconds: nested imports are inside them), and whether it loaded torch."""
    total, torch = 0, False
    for line in importtime.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        if not name.startswith("  "):  # one space after the bar; nested imports have more
            total += int(cumulative)
        torch = torch or name.strip() == "torch"
    return total / 1e6, torch


def bench_pipeline(override: dict | None = None) -> None:
    """`override`: params sections to change in the copy, e.g. {"compute": {"nproc": 2}}."""
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        copy_project(repo)
        if override:
            params = yaml.safe_load((repo / "params.yaml").read_text())
            for section, values in override.items():
                params[section].update(values)
            (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        env = child_env(repo)
        dvc = [sys.executable, "-m", "dvc"]
        clean, _, _ = timed([*dvc, "repro"], repo, env)
        noop, _, _ = timed([*dvc, "repro"], repo, env)
        print(f"dvc repro from clean: {clean:6.1f} s   (target <= 60 s)")
        print(f"dvc repro, no-op:     {noop:6.1f} s   (target <= 2 s)")
        # each stage again, alone, as DVC ran it (commands from dvc.lock), for time and memory
        lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
        print(f"\n{'stage':22s} {'wall s':>7s} {'peak RSS MiB':>13s} {'imports s':>10s} torch")
        walls, imports, torch_stages = {}, {}, []
        profiled = {**env, "PYTHONPROFILEIMPORTTIME": "1"}
        for name, stage in lock.items():
            wall, rss, stderr = timed(shlex.split(stage["cmd"]), repo, profiled)
            walls[name] = wall
            imports[name], torch = import_seconds(stderr)
            torch_stages += [name] if torch else []
            print(f"{name:22s} {wall:7.1f} {rss:13.0f} {imports[name]:10.1f} "
                  f"{'yes' if torch else 'no':>5s}   (target: peak RSS <= 2048 MiB)")
        print(f"{'sum of stage processes':22s} {sum(walls.values()):7.1f}   "
              "(the rest of the clean run is dvc itself)")
        print(f"start-up: {sum(imports.values()):.1f} s of imports in {len(lock)} stage processes "
              f"= {100 * sum(imports.values()) / clean:.0f} % of the clean run; "
              f"{len(torch_stages)} stages load torch, "
              f"{', '.join(n for n in lock if n not in torch_stages)} do not")
        features = walls["extract"] + walls["transfer@features"]
        print(f"extract + transfer@features: {features:.1f} s   (target <= 5 s)")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], env=env, check=True)
        print(f"one `import torch` process: {time.perf_counter() - start:.1f} s "
              f"(x {len(torch_stages)} stages)")


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def bench_loops(samples: int) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Dataset
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision import transforms

    from transferlab.models import Classifier, SmallCNN
    from transferlab.params import load_params
    from transferlab.train import Stream, fit

    params = load_params(ROOT / "params.yaml")
    rng = np.random.default_rng(0)
    size, n = params.prepare.image_size, 4500
    x = torch.from_numpy(rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8))
    y = torch.from_numpy(rng.integers(0, 10, n)).long()

    # the founding tutorial's way: per-item transforms in a Dataset, DataLoader with 2 workers
    class Images(Dataset):
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])

        def __len__(self):
            return n

        def __getitem__(self, i):
            return self.transform(x[i, 0].numpy()), y[i]

    torch.manual_seed(0)
    model = Classifier(SmallCNN(1, params.model.widths), 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    loader = DataLoader(Images(), batch_size=100, shuffle=True, num_workers=2)
    seen, start = 0, time.perf_counter()
    while seen < samples:
        for data, target in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(data), target)
            loss.backward()
            optimizer.step()
            seen += len(target)
            if seen >= samples:
                break
    founding = seen / (time.perf_counter() - start)

    cfg = params.pretrain
    torch.manual_seed(0)
    model = Classifier(SmallCNN(1, params.model.widths), 10)
    steps = math.ceil(samples / cfg.batch_size)
    start = time.perf_counter()
    fit(model, [{"params": list(model.parameters()), "lr": cfg.lr}], [Stream(x, y, model)],
        (x[:500], y[:500], model), steps=steps, batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay, shift_px=cfg.shift_px, seed=0, eval_every=steps)
    ours = steps * cfg.batch_size / (time.perf_counter() - start)

    model.train()
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x[:cfg.batch_size].float() / 255), y[:cfg.batch_size]).backward()
    flops_per_sample = counter.get_total_flops() / cfg.batch_size
    peak = matmul_gflops()
    rate = ours * flops_per_sample / 1e9
    print(f"\ntraining throughput, {samples} samples, batch {cfg.batch_size} vs 100:")
    print(f"  founding-style DataLoader loop: {founding:8.0f} samples/s")
    print(f"  our loop (transferlab.train):   {ours:8.0f} samples/s   "
          f"= {ours / founding:.1f}x   (target >= 3x)")
    print(f"  our rate: {rate:.1f} GFLOP/s ({flops_per_sample / 1e6:.1f} MFLOP/sample fwd+bwd) "
          f"= {100 * rate / peak:.0f} % of fp32 matmul {peak:.0f} GFLOP/s   (target >= 40 %)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--samples", type=int, default=9000, help="training samples per loop")
    args = ap.parse_args()
    if args.samples < 1:
        ap.error(f"--samples {args.samples}: must be at least 1")
    # torch is imported only after the pipeline runs: a child's peak RSS starts from its
    # parent's at fork (the kernel carries the high-water mark over exec), so a parent holding
    # torch would add ~700 MiB to every stage's figure
    print(f"torch {metadata.version('torch')}, {os.cpu_count()} CPUs")
    if not args.skip_pipeline:
        bench_pipeline()
    import torch

    print(f"\n{torch.get_num_threads()} torch threads, "
          f"CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    bench_loops(args.samples)


if __name__ == "__main__":
    main()
