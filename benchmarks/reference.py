"""A plain-PyTorch yardstick for the pipeline's source-only model, on the very same images.

For each task and seed: copy the project's files that git does not ignore to a scratch folder,
set the task's params there, run `dvc repro evaluate` (timed), read the source-only target-test
accuracy from metrics/evaluate.json, then train the reference below on the source images that
run downloaded and test it on its target test images, and print both and their ratio.

The reference is what a competent user writes in 50 lines, and it imports nothing from
`transferlab`, so the pipeline cannot move its own yardstick:
    inputs   RGB (grey repeated to 3 channels), bilinear resize to 32x32, scaled to [-1, 1]
    model    LeNet-style: conv5x5(3->32)-ReLU-maxpool2, conv5x5(32->48)-ReLU-maxpool2,
             linear(1200->100)-ReLU, linear(100->100)-ReLU, linear(100->K); no BatchNorm
    training Adam lr 1e-3, batch 64, --epochs epochs (5), torch.manual_seed(seed), shuffled by a
             seeded generator: the same seed gives the same accuracy
    data     source: data/raw/source.safetensors, ALL its images with their labels (the pipeline
             trains on 90 % of them and selects on the other 10 %); no target label is used.
             Target test: data/raw/target_test.safetensors when the target has an official test
             split (what the pipeline tests on; the count is checked against the prepared set),
             else data/prepared/target_test.safetensors, the split the pipeline carves in
             `prepare`: those images went through the pipeline's preprocessing (prepare.crop,
             bottleneck_size, scale, channels, image_size) before the reference saw them.

Usage:  python benchmarks/reference.py [--tasks default,blend,blend-reverse] [--seeds 0]
                                       [--epochs 5] [--keep DIR]
                                       [--variant NAME:KEY=VALUE,KEY=VALUE ...]
Each --variant is a set of params overrides run on every task and seed (default: one variant,
params.yaml as it is); the reference is trained once per task and seed and shared by them, so
`--variant bn:model.norm=batch --variant gn:model.norm=group` compares encoder options on the
same images against the same yardstick.
A task the pipeline refuses prints the pipeline's one-line error and the others go on (exit 1
at the end). Measured once each on this 2-core CPU, seed 0, shared with other jobs: default
(reference --epochs 1) pipeline 312 s, reference 8 s, source-only 0.898 vs 0.468; blend
(--epochs 5) pipeline 100 s, reference 67 s, 0.173 vs 0.646. One seed: no spread yet.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Each task: dataset names (dotted keys of params.yaml); the framing is prepare's auto choice.
TASKS = {
    "default": {},  # params.yaml as it is: mnist_5k -> uci_digits
    "blend": {"data.source.name": "mnist_half", "data.target.name": "mnist_blend"},
    "blend-reverse": {"data.source.name": "mnist_blend", "data.target.name": "mnist_half"},
}
NEEDED = ("numpy", "torch", "safetensors", "yaml", "dvc")
SIZE = 32  # reference input side, pixels


# --- the pipeline, in a scratch copy ----------------------------------------------------------


def copy_project_files(dst: Path) -> None:
    """The working-tree version of every file git tracks here, and of new files git does not
    ignore (a module added but not yet committed, which dvc.yaml may already name); no data, no
    cache, no venv: those are ignored."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():  # a tracked file deleted in the working tree is skipped
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)


def set_params(repo: Path, values: dict) -> None:
    """Dotted keys -> params.yaml of the copy (comments are lost: the copy is thrown away). A key
    the schema does not know is left for the pipeline's check_params to refuse."""
    import yaml

    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in values.items():
        *sections, key = dotted.split(".")
        node = params
        for section in sections:
            node = node.setdefault(section, {})
        node[key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def run_pipeline(repo: Path) -> tuple[float, str | None]:
    """`dvc repro evaluate` in the copy: (wall s, None) or (wall s, the error in one line)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(repo), "DVC_NO_ANALYTICS": "1"}  # the copy's code, not /work/main's
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "evaluate"], cwd=repo, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if not proc.returncode:
        return wall, None
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    # a stage's bad input is one "error: ..." line (launcher.run_stage); else dvc's own ERROR
    for prefix in ("error: ", "ERROR: "):
        if found := [line for line in lines if line.startswith(prefix)]:
            return wall, found[-1]
    return wall, lines[-1] if lines else f"dvc repro exited {proc.returncode}"


# --- the reference ------------------------------------------------------------------------------


def read_arrays(path: Path) -> tuple[dict, dict]:
    """(arrays, metadata) of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def to_inputs(images, max_value: float):
    """uint8 (N, H, W), (N, H, W, 3) raw or (N, C, H, W) prepared -> float (N, 3, 32, 32) in [-1, 1]."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).float()
    if x.ndim == 3:
        x = x[:, None]                    # (N, 1, H, W)
    elif x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)         # (N, 3, H, W)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (x / max_value * 2 - 1).contiguous()


def make_lenet(num_classes: int):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 32, 5), nn.ReLU(), nn.MaxPool2d(2),   # (N, 32, 14, 14)
        nn.Conv2d(32, 48, 5), nn.ReLU(), nn.MaxPool2d(2),  # (N, 48, 5, 5)
        nn.Flatten(),                                      # (N, 1200)
        nn.Linear(48 * 5 * 5, 100), nn.ReLU(),
        nn.Linear(100, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def train_reference(x, y, num_classes: int, epochs: int, seed: int, batch_size: int = 64):
    """Adam 1e-3, cross-entropy, shuffled index batches; deterministic for a seed."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    model = make_lenet(num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=order).split(batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def accuracy(model, x, y) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(1) for b in x.split(1024)])
    return (pred == y).float().mean().item()


def reference_run(repo: Path, epochs: int, seed: int) -> tuple[float, str]:
    """Train on the copy's raw source, test on its target test: (accuracy, where the test came from)."""
    import numpy as np
    import torch

    source, source_meta = read_arrays(repo / "data/raw/source.safetensors")
    source_classes = json.loads(source_meta["classes"])
    raw_test = repo / "data/raw/target_test.safetensors"
    prepared, prepared_meta = read_arrays(repo / "data/prepared/target_test.safetensors")
    if raw_test.is_file():
        test, test_meta = read_arrays(raw_test)
        x_test, y_test = test["images"], test["labels"]
        max_value, where = float(test_meta["max_value"]), "raw official test split"
        if len(y_test) != len(prepared["y_test"]):  # prepare drops copies of source images
            where += f" ({len(y_test)} images, the pipeline kept {len(prepared['y_test'])})"
    else:
        x_test, y_test = prepared["x_test"], prepared["y_test"]
        max_value, where = 255.0, "prepared test split (pipeline-preprocessed)"
        test_meta = prepared_meta
    test_classes = json.loads(test_meta["classes"])
    if test_classes != source_classes:  # map target labels to the source's class numbering
        index = {name: i for i, name in enumerate(source_classes)}
        if missing := [c for c in test_classes if c not in index]:
            raise ValueError(f"target class {missing[0]!r} is not a source class")
        y_test = np.array([index[c] for c in test_classes], np.int64)[y_test]
    x = to_inputs(source["images"], float(source_meta["max_value"]))
    model = train_reference(x, torch.from_numpy(source["labels"]), len(source_classes), epochs, seed)
    return accuracy(model, to_inputs(x_test, max_value), torch.from_numpy(y_test)), where


# --- wiring -------------------------------------------------------------------------------------


def parse_variant(text: str) -> tuple[str, dict]:
    """"NAME:KEY=VALUE,KEY=VALUE" -> (NAME, {KEY: VALUE}), VALUE read as YAML (1, none, [4, 8])."""
    import yaml

    name, _, body = text.partition(":")
    # a comma splits pairs only before the next KEY=: a list value keeps its own ([32, 48])
    pairs = [item.partition("=") for item in re.split(r",(?=[\w.]+=)", body) if item]
    if not name or any(not key or not eq for key, eq, _ in pairs):
        raise ValueError(f"--variant {text!r}: write NAME:KEY=VALUE,KEY=VALUE")
    return name, {key: yaml.safe_load(value) for key, _, value in pairs}


def run_task(task: str, seed: int, epochs: int, repo: Path, variant: tuple[str, dict],
             reference: dict) -> dict:
    """One pipeline run; the reference for (task, seed) is trained on its first run and kept in
    `reference` (every variant prepares the same raw images)."""
    name, overrides = variant
    copy_project_files(repo)
    set_params(repo, {"seed": seed, "pretrain.seed": seed, **TASKS[task], **overrides})
    print(f"[{task} seed {seed} {name}] dvc repro evaluate in {repo} ...", file=sys.stderr,
          flush=True)
    row = {"task": task, "seed": seed, "variant": name}
    row["pipeline_s"], row["error"] = run_pipeline(repo)
    if row["error"]:
        return row
    scores = json.loads((repo / "metrics/evaluate.json").read_text())
    row["pipeline"] = scores.get("source_only", {}).get("accuracy")  # absent: other classes
    row["best"] = max((s["accuracy"], n) for n, s in scores.items() if "accuracy" in s)
    if (task, seed) not in reference:
        print(f"[{task} seed {seed}] reference, {epochs} epochs ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        accuracy_, test = reference_run(repo, epochs, seed)
        reference[task, seed] = (accuracy_, test, time.perf_counter() - start)
    row["reference"], row["test"], row["reference_s"] = reference[task, seed]
    return row


def print_table(rows: list[dict]) -> None:
    print(f"\n{'task':14s} {'variant':10s} {'seed':>4s} {'pipeline':>8s} {'reference':>9s} "
          f"{'ratio':>6s} {'best (strategy)':>24s} {'pipe s':>7s} {'ref s':>6s}  target test images")
    for r in rows:
        if r.get("error"):
            print(f"{r['task']:14s} {r['variant']:10s} {r['seed']:4d} refused by the pipeline: "
                  f"{r['error']}")
            continue
        ratio = r["pipeline"] / r["reference"] if r["pipeline"] is not None and r["reference"] else None
        pipe = "n/a" if r["pipeline"] is None else f"{r['pipeline']:.4f}"
        best = f"{r['best'][0]:.4f} ({r['best'][1]})"
        print(f"{r['task']:14s} {r['variant']:10s} {r['seed']:4d} {pipe:>8s} {r['reference']:9.4f} "
              f"{'n/a' if ratio is None else f'{ratio:.3f}':>6s} {best:>24s} {r['pipeline_s']:7.1f} "
              f"{r['reference_s']:6.1f}  {r['test']}")
    print("\nmean over seeds")
    for key in dict.fromkeys((r["task"], r["variant"]) for r in rows):
        done = [r for r in rows if (r["task"], r["variant"]) == key and not r.get("error")
                and r["pipeline"] is not None]
        if not done:
            continue
        pipe = sum(r["pipeline"] for r in done) / len(done)
        ref = sum(r["reference"] for r in done) / len(done)
        best = sum(r["best"][0] for r in done) / len(done)
        print(f"{key[0]:14s} {key[1]:10s} n={len(done)} pipeline {pipe:.4f}  reference {ref:.4f}  "
              f"ratio {pipe / ref:.3f}  best {best:.4f}  pipeline "
              f"{sum(r['pipeline_s'] for r in done) / len(done):.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated: {', '.join(TASKS)}")
    ap.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
    ap.add_argument("--epochs", type=int, default=5, help="reference training epochs")
    ap.add_argument("--keep", type=Path, help="keep each scratch copy in "
                    "DIR/<task>-seed<seed>-<variant>")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:KEY=VALUE,KEY=VALUE params overrides (repeatable)")
    args = ap.parse_args()
    try:
        variants = [parse_variant(v) for v in args.variant] or [("params", {})]
    except ValueError as e:
        sys.exit(str(e))
    if missing := [m for m in NEEDED if importlib.util.find_spec(m) is None]:
        sys.exit(f"benchmarks/reference.py needs {', '.join(missing)}: pip install -e . "
                 "(in the project's venv)")
    if shutil.which("git") is None:
        sys.exit("benchmarks/reference.py needs git on PATH (to list and init the scratch copy)")
    tasks = args.tasks.split(",")
    if unknown := [t for t in tasks if t not in TASKS]:
        sys.exit(f"--tasks: unknown {unknown[0]!r}; choose from {', '.join(TASKS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [f"{t}-seed{s}-{v}" for t in tasks for s in seeds for v, _ in variants]
    if args.keep and (taken := [args.keep / n for n in names if (args.keep / n).exists()]):
        sys.exit(f"--keep: {taken[0]} exists: remove it or choose another DIR")
    rows, reference = [], {}
    for task in tasks:
        for seed in seeds:
            for variant in variants:
                with tempfile.TemporaryDirectory() as tmp:
                    repo = args.keep / f"{task}-seed{seed}-{variant[0]}" if args.keep else Path(tmp)
                    rows.append(run_task(task, seed, args.epochs, repo, variant, reference))
    print_table(rows)
    sys.exit(1 if any(r.get("error") for r in rows) else 0)


if __name__ == "__main__":
    main()
