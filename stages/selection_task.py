"""Stage selection task@<name>: one task of the selection study, prepared and pretrained.

A task is params.yaml with `selection_study.task_params.<name>`'s values put in. This stage
writes those params to a scratch folder and runs the default pipeline's own download, prepare
and pretrain scripts there, unchanged, then moves into `--out` what the cells read: the
prepared source, target pool and target test arrays, the source model, and task.json (the
task's values, its scenario sizes and the source model's validation accuracy). A path in a
task's values (a folder dataset's root) is read from the repository root.
"""

import transferlab  # noqa: F401  first: notes the dvc process that launched this stage
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from transferlab.errors import UserError, one_line
from transferlab.io import atomic_path, write_json
from transferlab.launcher import run_stage
from transferlab.params import load_task_params

ROOT = Path(__file__).resolve().parents[1]
PREPARED = ("source.safetensors", "target_pool.safetensors", "target_test.safetensors")


def run_script(script: str, args: list[str], cwd: Path, task: str) -> None:
    """One of the default pipeline's stage scripts, in `cwd` (its params.yaml is the task's);
    its one-line error becomes this stage's, naming the task."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / script), *args], cwd=cwd,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode == 130:
        raise KeyboardInterrupt
    if proc.returncode:
        last = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"selection task {task}: {script} failed: "
                        f"{one_line(last.removeprefix('error: '))}")
    for line in proc.stdout.strip().splitlines()[-3:]:
        print(f"  {script}: {line}")


def absolute_roots(raw: dict) -> dict:
    """A folder dataset's root is relative to the repository root: made absolute, for the
    scripts that run in the scratch folder."""
    for role in ("source", "target"):
        spec = raw["data"][role]
        if spec.get("root"):
            spec["root"] = str((Path.cwd() / spec["root"]).resolve())
    if raw["data"].get("cache_dir"):
        raw["data"]["cache_dir"] = str((Path.cwd() / raw["data"]["cache_dir"]).resolve())
    return raw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("task", help="a name of selection_study.task_params")
    ap.add_argument("--out", type=Path, required=True, help="output folder of the task")
    args = ap.parse_args(argv)
    _, raw = load_task_params(args.task)  # checked as a whole before anything runs
    from ruamel.yaml import YAML  # as DVC and load_params read it

    with atomic_path(args.out) as tmp:
        work = tmp.parent / "work"
        work.mkdir()
        with open(work / "params.yaml", "w", encoding="utf-8") as f:
            YAML(typ="safe", pure=True).dump(absolute_roots(raw), f)
        run_script("download.py", ["raw"], work, args.task)
        run_script("prepare.py", ["raw", "prepared", "--summary", "scenario.json"], work,
                   args.task)
        run_script("pretrain.py", ["prepared/source.safetensors", "source.safetensors",
                                   "--metrics", "pretrain.json", "--curve", "curve.csv"], work,
                   args.task)
        (tmp / "prepared").mkdir(parents=True)
        for name in PREPARED:
            shutil.move(work / "prepared" / name, tmp / "prepared" / name)
        shutil.move(work / "source.safetensors", tmp / "source.safetensors")
        write_json(tmp / "task.json", {
            "task": args.task,
            "params": raw["selection_study"]["task_params"][args.task],
            "scenario": json.loads((work / "scenario.json").read_text()),
            "pretrain": json.loads((work / "pretrain.json").read_text())})
    print(f"task {args.task}: prepared and pretrained in {args.out}")


if __name__ == "__main__":
    run_stage(main)
