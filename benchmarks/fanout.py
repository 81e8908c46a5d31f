"""transferlab-fanout against sequential `dvc repro` on a study of 24 cells (issue 27).

Copies the project (the files git tracks or does not ignore) to a scratch folder, sets a study
of 4 label budgets x 6 seeds with every method's training shortened (`--steps`), runs
`dvc repro pretrain` there once, and copies that (outputs, DVC cache, git) twice. Then, in one
run on this machine:
  A  `dvc repro study/dvc.yaml`                      (one stage at a time, threads auto: all cores)
  B  `transferlab-fanout study/dvc.yaml --jobs J`    (J stages at once, threads auto: cores / J)
and compares every study output and study/dvc.lock byte for byte. Prints wall times, the
speed-up A / B, and whether the outputs are identical. With `--same-threads`, A runs with
TRANSFERLAB_JOBS=J too (the same torch threads per stage as B), which separates what the
runner does from what a thread count does to float sums.

Before A and B it times one cell's command alone, with every core's threads (T_all, as in A),
alone with cores / J threads (T_J), and J copies side by side with cores / J threads each
(T_side, as B's jobs run; medians of 3 runs each after a warm-up), and prints two ceilings:
J x T_all / T_J, the speed-up B would reach if side-by-side processes ran as fast as one
alone, and J x T_all / T_side, what they reach on this machine with no runner involved. The
gap from the second to A / B is the runner's; `--ceiling-only` prints the ceilings and stops.

Usage:  python benchmarks/fanout.py [--jobs 2] [--steps 40] [--same-threads] [--keep DIR]
                                    [--ceiling-only]

Measured on this 2-core CPU (2026-12-06): docs/scaling.md, "A study's cells at once".
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reference import copy_project_files, set_params  # noqa: E402


def env(repo: Path, **extra: str) -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1", **extra}


def run(repo: Path, command: list[str], **extra: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=repo, env=env(repo, **extra), capture_output=True,
                          text=True)
    if proc.returncode:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise SystemExit(f"{repo.name}: {' '.join(command)} failed: {' | '.join(tail)}")
    return time.perf_counter() - start


def digests(repo: Path) -> dict[str, str]:
    files = sorted(p for p in (repo / "study").rglob("*") if p.is_file())
    return {str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def ceiling(repo: Path, jobs: int, repeats: int = 3) -> tuple[float, float, float]:
    """(T_all, T_J, T_side): one study cell's command alone with all cores' threads, alone with
    cores / jobs threads, and `jobs` copies of it side by side with cores / jobs threads each
    (in copies of `repo`: the wall time until the last ends), each the median of `repeats`
    runs taken in turn after one warm-up run (single runs moved by 10-15 % here: 1.42x and
    1.72x from two of them). The cell's output is overwritten."""
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    from dvc.repo import Repo

    cmd = Repo(str(repo)).stage.collect("study/dvc.yaml:cell@1-0")[0].cmd
    copies = [repo] + [repo.with_name(f"{repo.name}-{i}") for i in range(1, jobs)]
    for copy in copies[1:]:
        shutil.copytree(repo, copy, symlinks=True)
    cell = ["bash", "-c", cmd]
    run(repo, cell, TRANSFERLAB_JOBS=str(jobs))  # warm-up: page cache, imports

    def side_by_side() -> float:
        start = time.perf_counter()
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(lambda c: run(c, cell, TRANSFERLAB_JOBS=str(jobs)), copies))
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"all": [], "one": [], "side": []}
    for _ in range(repeats):
        times["all"].append(run(repo, cell, TRANSFERLAB_JOBS="1"))
        times["one"].append(run(repo, cell, TRANSFERLAB_JOBS=str(jobs)))
        times["side"].append(side_by_side())
    return tuple(statistics.median(times[k]) for k in ("all", "one", "side"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--steps", type=int, default=40, help="every method's training steps")
    ap.add_argument("--same-threads", action="store_true",
                    help="run A with TRANSFERLAB_JOBS=jobs too")
    ap.add_argument("--keep", type=Path, help="keep the copies here")
    ap.add_argument("--ceiling-only", action="store_true",
                    help="time one cell both ways, print the ceiling, skip A and B")
    args = ap.parse_args()

    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    shorter = {f"transfer.{name}.steps": args.steps for name, section in
               params["transfer"].items() if "steps" in section}
    shorter.update({f"transfer.{name}.probe_steps": args.steps for name, section in
                    params["transfer"].items() if "probe_steps" in section})
    with tempfile.TemporaryDirectory() as scratch:
        base = args.keep or Path(scratch)
        template = base / "template"
        copy_project_files(template)
        for stale in ("cells", "layers"):  # the committed study's, not this one's
            shutil.rmtree(template / "study" / stale, ignore_errors=True)
        set_params(template, {"study.shots": [1, 2, 5, 10], "study.seeds": [0, 1, 2, 3, 4, 5],
                              **shorter})
        run(template, [sys.executable, "-m", "dvc", "repro", "pretrain"])
        probe = base / "probe"
        shutil.copytree(template, probe, symlinks=True)
        t_all, t_jobs, t_side = ceiling(probe, args.jobs)
        top, side = args.jobs * t_all / t_jobs, args.jobs * t_all / t_side
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        print(f"one cell (medians of 3): alone {t_all:.1f} s with {os.cpu_count()} threads, "
              f"alone {t_jobs:.1f} s with {threads}; {args.jobs} side by side with {threads} "
              f"each: {t_side:.1f} s until the last ended")
        print(f"ceiling of A / B with --jobs {args.jobs}: {top:.2f}x if side-by-side processes "
              f"ran as fast as one alone; {side:.2f}x as they ran here (no runner involved)")
        if args.ceiling_only:
            return
        for name in ("sequential", "fanout"):
            shutil.copytree(template, base / name, symlinks=True)
        a, b = base / "sequential", base / "fanout"
        extra = {"TRANSFERLAB_JOBS": str(args.jobs)} if args.same_threads else {}
        seconds_a = run(a, [sys.executable, "-m", "dvc", "repro", "study/dvc.yaml"], **extra)
        seconds_b = run(b, [sys.executable, "-m", "transferlab.fanout", "study/dvc.yaml",
                            "--jobs", str(args.jobs)])
        same = digests(a) == digests(b)
        differ = sorted(k for k in digests(a) if digests(a)[k] != digests(b).get(k))
        cells = len(list((a / "study/cells").glob("*.json")))
        load = os.getloadavg()[0]
    threads_a = f"TRANSFERLAB_JOBS={args.jobs}" if args.same_threads else "threads auto"
    print(f"study of {cells} cells (+ layers, report), {args.steps} steps per method, "
          f"{os.cpu_count()} cores")
    print(f"A  dvc repro study/dvc.yaml ({threads_a}): {seconds_a:.1f} s")
    print(f"B  transferlab-fanout --jobs {args.jobs}: {seconds_b:.1f} s")
    print(f"speed-up A / B: {seconds_a / seconds_b:.2f}x ({seconds_a / seconds_b / side:.0%} of "
          f"the {side:.2f}x the cells reach side by side); load average after: {load:.1f}")
    print("outputs and study/dvc.lock byte-identical" if same else
          f"outputs differ: {', '.join(differ[:6])}{' ...' if len(differ) > 6 else ''}")


if __name__ == "__main__":
    main()
