"""The label-free selection replay (transferlab/selection_stats.py) on tasks other than the
default, through params only: how each validator and guard rule would choose on a task.

For each task: copy the project's files that git does not ignore to a scratch folder, set the
task's params there, run `dvc repro pretrain` (download, prepare, pretrain), then the study's
k = 0 cell for every seed (stages/study_cell.py: every label-free method, every candidate's
weights kept and scored on the target test set after the choice), and print the replay that
`make study` writes for the default task to study/selection.json and study/report.md.
With --keep DIR the copies stay in DIR/<task>, and a cell already there is not run again
(an interrupted run resumes).

Usage:  python benchmarks/selection_tasks.py [--tasks reverse,blend] [--seeds 0,1,2] [--keep DIR]

Measured (2026-12, this 2-core CPU, seeds 0-2, one job at a time): reverse (uci_digits ->
mnist_5k) 1,189 s, blend (mnist_half -> mnist_blend) 328 s; docs/selection.md has the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from reference import copy_project_files, set_params  # noqa: E402
from transferlab import selection_stats  # noqa: E402
from transferlab.params import load_params  # noqa: E402

TASKS = {
    "default": {},  # params.yaml as it is: mnist_5k -> uci_digits (also `make study`)
    "reverse": {"data.source.name": "uci_digits", "data.target.name": "mnist_5k"},
    "blend": {"data.source.name": "mnist_half", "data.target.name": "mnist_blend"},
    # the same at 32 px: the mnist-blend preset's image size
    "blend32": {"data.source.name": "mnist_half", "data.target.name": "mnist_blend",
                "prepare.image_size": 32},
    "noise": {"data.target.name": "uci_digits_noise"},  # the default target, corrupted
}


def run(repo: Path, *command: str) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1"}  # the copy's code, not this one's
    proc = subprocess.run([sys.executable, *command], cwd=repo, env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:]
        raise SystemExit(f"{repo.name}: {' '.join(command)} failed: {' '.join(tail)}")


def replay(task: str, repo: Path, seeds: list[int]) -> dict:
    if not (repo / "params.yaml").is_file():
        copy_project_files(repo)
        set_params(repo, TASKS[task])
    start = time.perf_counter()
    run(repo, "-m", "dvc", "repro", "pretrain")
    cells = {}
    for seed in seeds:
        out = repo / "selection-cells" / f"k0-s{seed}.json"
        if not out.is_file():
            run(repo, "stages/study_cell.py", "--shots", "0", "--seed", str(seed), "--prepared",
                "data/prepared", "--source-model", "models/source.safetensors", "--out", str(out))
        cells[str(out)] = json.loads(out.read_text())
    selection = load_params(repo / "params.yaml").selection
    runs = selection_stats.runs_of(cells)
    result = {"task": task, "runs": len(runs), "seconds": round(time.perf_counter() - start),
              "validators": selection_stats.validator_table(runs, selection.max_source_drop,
                                                            selection.source_free_floor),
              "guards": selection_stats.guard_table(runs, selection_stats.default_rules(selection),
                                                    selection.max_source_drop,
                                                    selection.source_free_floor)}
    (repo / "selection.json").write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="reverse,blend", help=f"of {', '.join(TASKS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--keep", type=Path, help="keep the copies here (and resume from them)")
    args = ap.parse_args()
    tasks = args.tasks.split(",")
    if unknown := [t for t in tasks if t not in TASKS]:
        raise SystemExit(f"--tasks: unknown {', '.join(unknown)}: use {', '.join(TASKS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        base = args.keep or Path(scratch)
        for task in tasks:
            result = replay(task, base / task, seeds)
            print(f"\n## {task} ({result['runs']} runs, {result['seconds']} s)\n")
            print(selection_stats.markdown(result["validators"], result["guards"]))


if __name__ == "__main__":
    main()
