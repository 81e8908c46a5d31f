"""Peak resident memory of every stage of the real pipeline on data larger than the budget.

Each scenario is a `dvc repro` of the project's own dvc.yaml in a temporary copy:

  fashion60k  the source: the 60,000 Fashion-MNIST training images (28x28; the MNIST-format
              files of Debian's dataset-fashion-mnist package, /usr/share/datasets/fashion-mnist,
              read by torchvision's FashionMNIST class). Debian recompressed the .gz files, so
              their md5 is not torchvision's and `download` rightly refuses them: this script
              writes data/raw itself and freezes `download` (`dvc freeze`). Target: the default
              uci_digits; every other param the default.
  photos4g    the source: a folder of --photos reproducible JPEG photos (benchmarks/photos.py's
              make_photos, 640-800 x 512-600 px), decoded at 512 px (data.decode_size) and
              prepared at 512 x 512 x 3, so data/prepared/source.safetensors is 768 KiB a photo,
              4.4 GB for the default 5,600; the target: a second folder with train/ and test/
              (official split). small_cnn [4, 8], one pretraining epoch (batch 32), 4 steps
              of batch 8 per strategy: this measures memory, not accuracy.

Every stage process records its own peak RSS (getrusage(RUSAGE_SELF).ru_maxrss: the kernel's
high-water mark of that process) at exit, through a sitecustomize module on PYTHONPATH in the
copy only; the product code is not touched. dvc's own process is listed too.

With --compare the scenario runs a second time with TRANSFERLAB_RESIDENT_MIB=1000000 (every
array read into memory, as before this change) for contrast, in the same run.

Usage:  python benchmarks/memory.py fashion60k          (about 6 minutes on 2 cores)
        python benchmarks/memory.py photos4g            (about 16 minutes, 20 GB of disk)
        python benchmarks/memory.py photos4g --photos 600 --compare   (a quick look)
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ROOT, child_env, copy_project  # noqa: E402
from photos import make_photos  # noqa: E402

sys.path.insert(0, str(ROOT))

BUDGET_MIB = 2048
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
SITECUSTOMIZE = '''\
import atexit, json, os, resource, sys

def _peak():
    with open(os.environ["TRANSFERLAB_RSS_LOG"], "a") as f:
        f.write(json.dumps({"argv": sys.argv, "peak_mib":
                            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}) + "\\n")

atexit.register(_peak)
'''


def set_params(repo: Path, changes: dict) -> None:
    """changes: dotted keys -> values, written into the copy's params.yaml."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for key, value in changes.items():
        *path, last = key.split(".")
        node = params
        for part in path:
            node = node[part]
        node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def fashion60k(repo: Path, work: Path, args) -> None:
    from torchvision.datasets import FashionMNIST

    from transferlab.datasets import fetch
    from transferlab.datasets.torchvision_sets import to_raw
    from transferlab.rawdata import save_raw

    raw = work / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        if not (DEBIAN_FASHION / f"{name}.gz").is_file():
            raise SystemExit(f"{DEBIAN_FASHION / name}.gz not found: "
                             "apt-get install dataset-fashion-mnist")
        with gzip.open(DEBIAN_FASHION / f"{name}.gz") as f:
            (raw / name).write_bytes(f.read())
    # torchvision reads the unpacked files it finds (its md5 check is on download only)
    (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:16])
    (raw / "t10k-labels-idx1-ubyte").write_bytes((raw / "train-labels-idx1-ubyte").read_bytes()[:8])
    source = to_raw("fashion_mnist", FashionMNIST(work, train=True, download=False))
    set_params(repo, {"data.source.name": "fashion_mnist"})
    (repo / "data" / "raw").mkdir(parents=True)
    save_raw(repo / "data" / "raw" / "source.safetensors", source)
    save_raw(repo / "data" / "raw" / "target.safetensors", fetch("uci_digits"))
    print(f"source: {len(source.labels)} Fashion-MNIST images {source.images.shape[1:]}")
    dvc(repo, "freeze", "download")


def _photos(job: tuple) -> None:
    root, n, seed, split, first = job
    make_photos(root, n, seed=seed, split=split, width=(640, 801), height=(512, 601), first=first)


def photos4g(repo: Path, work: Path, args) -> None:
    start = time.perf_counter()
    chunk = 200  # photos per job, each job its own seed: the same files for any --jobs
    jobs = [(work / "source", min(chunk, args.photos - first), (1, first), "train", first)
            for first in range(0, args.photos, chunk)]
    jobs += [(work / "target", 240, (2, 0), "train", 0), (work / "target", 160, (3, 0), "test", 0)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_photos, jobs))
    print(f"{args.photos} source + 400 target JPEG photos written in "
          f"{time.perf_counter() - start:.0f} s")
    set_params(repo, {
        "data.source.name": "folder", "data.source.root": str(work / "source"),
        "data.target.name": "folder", "data.target.root": str(work / "target"),
        "data.target_test": "official", "data.decode_size": 512,
        "prepare.image_size": 512, "prepare.channels": 3, "prepare.crop": "none",
        "prepare.bottleneck_size": 0, "prepare.scale": "none", "prepare.shots": 10,
        "model.widths": [4, 8], "pretrain.epochs": 1, "pretrain.batch_size": 32,
        "extract.batch_size": 64, "augment.mode": "photo"})
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # at 512 px memory is activations, which grow with the batch, not the data: an adaptation
    # method's step holds three batches (source, target shots, unlabelled), so 3 x 8 images,
    # fewer than pretraining's 32 (3 x 16 took 2,149 MiB in transfer@mcc)
    steps = {k: {"steps": 4, "batch_size": 8} for k, v in params["transfer"].items()
             if isinstance(v, dict) and "steps" in v}
    set_params(repo, {f"transfer.{k}.{f}": v for k, kv in steps.items() for f, v in kv.items()})


SCENARIOS = {"fashion60k": fashion60k, "photos4g": photos4g}


def dvc(repo: Path, *args: str, env: dict | None = None) -> None:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo,
                          env=env or child_env(repo), capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"dvc {' '.join(args)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def label(argv: list[str]) -> str:
    script = Path(argv[0])
    if script.parent.name == "dvc" or script.name == "dvc":
        return "(dvc itself)"
    if script.name == "-c":
        return "(python -c)"
    return script.stem + (f"@{argv[1]}" if script.stem == "transfer" and len(argv) > 1 else "")


def run(scenario: str, args, resident_mib: str | None) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        if args.keep:  # a new folder, left in place for a closer look (e.g. memray on a stage)
            work = args.keep / (scenario + ("" if resident_mib is None else "-in-memory"))
            work.mkdir(parents=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.tmp)))
        repo = work / "project"
        repo.mkdir()
        copy_project(repo)
        hooks = work / "hooks"
        hooks.mkdir()
        (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
        log = work / "rss.jsonl"
        SCENARIOS[scenario](repo, work, args)
        env = child_env(repo)
        env.update(PYTHONPATH=f"{hooks}{os.pathsep}{repo}", TRANSFERLAB_RSS_LOG=str(log))
        if resident_mib is not None:
            env["TRANSFERLAB_RESIDENT_MIB"] = resident_mib
        start = time.perf_counter()
        dvc(repo, "repro", env=env)
        wall = time.perf_counter() - start
        peaks: dict[str, float] = {}
        for line in log.read_text().splitlines():
            row = json.loads(line)
            name = label(row["argv"])
            peaks[name] = max(peaks.get(name, 0.0), row["peak_mib"])
        sizes = {str(p.relative_to(repo)): p.stat().st_size
                 for p in (repo / "data").rglob("*.safetensors")}
        biggest = max(sizes, key=sizes.get)
        limit = resident_mib or "default (64)"
        print(f"\n{scenario}, TRANSFERLAB_RESIDENT_MIB={limit}: dvc repro {wall:.0f} s; largest "
              f"file {biggest} {sizes[biggest] / 2**30:.2f} GiB "
              f"({sum(sizes.values()) / 2**30:.2f} GiB under data/)")
        print(f"{'process':24s} {'peak RSS MiB':>12s}")
        for name, peak in peaks.items():
            mark = "" if peak <= BUDGET_MIB else f"   over the {BUDGET_MIB} MiB target"
            print(f"{name:24s} {peak:12.0f}{mark}")
        return peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--photos", type=int, default=5600, help="photos4g: source photos")
    ap.add_argument("--compare", action="store_true",
                    help="run again with every array in memory (TRANSFERLAB_RESIDENT_MIB=1000000)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="write the project copies under this new folder and keep them")
    ap.add_argument("--tmp", type=Path, default=None, help="where the copy goes (default $TMPDIR)")
    args = ap.parse_args()
    peaks = run(args.scenario, args, None)
    if args.compare:
        before = run(args.scenario, args, "1000000")
        print(f"\n{'process':24s} {'on disk':>8s} {'in memory':>10s}   peak RSS MiB")
        for name in peaks:
            print(f"{name:24s} {peaks[name]:8.0f} {before.get(name, float('nan')):10.0f}")
    worst = max(v for k, v in peaks.items() if not k.startswith("("))
    print(f"\nlargest stage peak: {worst:.0f} MiB (target <= {BUDGET_MIB} MiB)")


if __name__ == "__main__":
    main()
