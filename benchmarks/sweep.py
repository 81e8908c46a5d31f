"""Parallel sweeps: 4 queued experiments run by 1 and by 2 DVC queue workers, in one run.

In a temporary copy of the project (default params; --quick: pretrain.epochs=2), after one
baseline `dvc repro`: queue 4 experiments (`dvc exp run --queue -S pretrain.seed=...`: each
reruns pretrain, extract, every transfer strategy and evaluate), time
`dvc exp run --run-all --jobs 1`, queue 4 more (other seeds: the same work, none of it in the
run-cache), time `--jobs 2`, and print both and their ratio, with the torch thread count each
worker's stages chose (compute.threads: auto = cores / workers). --oversubscribed adds a third
round: 2 workers told that they run alone ($TRANSFERLAB_JOBS=1), each using every core.

Usage:  python benchmarks/sweep.py [--quick] [--oversubscribed]   (default: ~8 min on 2 cores)
Timings depend on what else runs on the machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import child_env, copy_project  # noqa: E402  (benchmarks/ is not a package)

EXPERIMENTS = 4


def dvc(repo: Path, env: dict, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"dvc {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def run_round(repo: Path, env: dict, jobs: int, seeds: range) -> tuple[float, set[str]]:
    """Queue one experiment per seed, run them with `jobs` workers: (wall s, thread lines)."""
    for seed in seeds:
        dvc(repo, env, "exp", "run", "--queue", "-S", f"pretrain.seed={seed}")
    start = time.perf_counter()
    dvc(repo, env, "exp", "run", "--run-all", "--jobs", str(jobs))
    wall = time.perf_counter() - start
    status = dvc(repo, env, "queue", "status")
    done = [line.split()[0] for line in status.splitlines() if "Success" in line]
    failed = [line for line in status.splitlines() if "Failed" in line]
    if failed:
        raise SystemExit(f"experiments failed:\n{status}")
    threads = set()
    for task in done[-len(seeds):]:
        logs = dvc(repo, env, "queue", "logs", task)
        threads |= set(re.findall(r"torch threads: .*", logs))
    dvc(repo, env, "queue", "remove", "--success")
    return wall, threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="pretrain.epochs=2 (about 4 min)")
    ap.add_argument("--oversubscribed", action="store_true",
                    help="also 2 workers that each use every core")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        copy_project(repo)
        if args.quick:
            params = yaml.safe_load((repo / "params.yaml").read_text())
            params["pretrain"]["epochs"] = 2
            (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        (repo / ".gitignore").write_text("__pycache__/\n")
        env = child_env(repo)
        env.pop("TRANSFERLAB_JOBS", None)
        git(repo, "config", "user.email", "bench@example.com")
        git(repo, "config", "user.name", "bench")
        start = time.perf_counter()
        dvc(repo, env, "repro")
        print(f"baseline dvc repro: {time.perf_counter() - start:.0f} s (not counted)")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "baseline")

        rounds = [("1 worker", 1, env), ("2 workers", 2, env)]
        if args.oversubscribed:
            rounds.append(("2 workers, each told it runs alone", 2,
                           {**env, "TRANSFERLAB_JOBS": "1"}))
        walls = []
        for i, (name, jobs, round_env) in enumerate(rounds):
            seeds = range(1 + i * EXPERIMENTS, 1 + (i + 1) * EXPERIMENTS)
            wall, threads = run_round(repo, round_env, jobs, seeds)
            walls.append(wall)
            print(f"{EXPERIMENTS} experiments, {name:36s}: {wall:6.1f} s   "
                  f"[{'; '.join(sorted(threads))}]   load average {os.getloadavg()[0]:.1f}")
        print(f"serial / parallel = {walls[0] / walls[1]:.2f}x   (target >= 1: parallel not slower)")
        if args.oversubscribed:
            print(f"oversubscribed / thread rule = {walls[2] / walls[1]:.2f}x")


if __name__ == "__main__":
    main()
