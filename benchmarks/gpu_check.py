"""One command for a CUDA machine: the default pipeline and the training throughput, on the GPU.

Prints, in one run:
  - the card, torch and CUDA versions;
  - the default `dvc repro` from clean in a temporary copy of the project (stages use CUDA when
    present), total and per stage (benchmarks/bench.py's measurement);
  - with 2+ GPUs: the same pipeline with compute.nproc = number of GPUs (torchrun, DDP, NCCL);
  - training throughput of transferlab.train.fit, data on the GPU, at fp32, bf16 and fp16
    autocast (compute.precision), for the default small_cnn at 16x16 and for resnet18 at
    32x32 (3 channels), samples/s, each after a warm-up.

Usage:  python benchmarks/gpu_check.py            (a few minutes)
        python benchmarks/gpu_check.py --skip-pipeline
Without CUDA it stops at once with exit code 2: it measures a GPU, never a CPU stand-in
(--allow-cpu runs the same code on the CPU, to check the script itself, not to measure).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRECISIONS = ("fp32", "bf16", "fp16")


def throughput(arch: str, size: int, channels: int, precision: str, steps: int,
               batch_size: int, device) -> float:
    """Training samples per second of `fit` (data already on `device`), after a warm-up."""
    import torch

    from transferlab import compute
    from transferlab.models import Classifier, build_encoder
    from transferlab.train import Stream, fit

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4096, channels, size, size), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (4096,), generator=gen)
    x, y = x.to(device), y.to(device)
    compute.configure(compute.Setup(precision=precision))
    try:
        torch.manual_seed(0)
        model = Classifier(build_encoder(arch, channels, [32, 64, 128], small_input_stem=True), 10)
        model.to(device)

        def run(n: int) -> None:
            fit(model, [{"params": list(model.parameters()), "lr": 1e-3}], [Stream(x, y, model)],
                (x[:256], y[:256], model), steps=n, batch_size=batch_size, weight_decay=0.0,
                shift_px=1, seed=0, eval_every=n)

        run(5)  # warm-up: kernels chosen, memory allocated
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run(steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return steps * batch_size / (time.perf_counter() - start)
    finally:
        compute.configure(compute.Setup())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--skip-pipeline", action="store_true")
    ap.add_argument("--steps", type=int, default=200, help="timed training steps per figure")
    ap.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("error: no CUDA device visible (torch.cuda.is_available() is False): run this on a "
              "machine with an NVIDIA GPU and a CUDA build of torch; benchmarks/bench.py measures "
              "the CPU", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpus = torch.cuda.device_count()
    name = torch.cuda.get_device_name(0) if gpus else "CPU (--allow-cpu: not a GPU figure)"
    print(f"device: {name} x {max(gpus, 1)}; torch {torch.__version__}, CUDA {torch.version.cuda}")

    if not args.skip_pipeline:
        from bench import bench_pipeline

        print("\n-- default pipeline, one process --")
        bench_pipeline()
        if gpus >= 2:
            print(f"\n-- default pipeline, compute.nproc={gpus} (torchrun, DDP, NCCL) --")
            bench_pipeline({"compute": {"nproc": gpus}})

    print(f"\n-- training throughput of fit, {args.steps} steps, samples/s --")
    print(f"{'model':28s} " + " ".join(f"{p:>9s}" for p in PRECISIONS))
    for arch, size, channels, batch in (("small_cnn", 16, 1, 256), ("resnet18", 32, 3, 256)):
        rates = []
        for precision in PRECISIONS:
            if precision == "fp16" and device.type != "cuda":
                rates.append("n/a")
                continue
            rate = throughput(arch, size, channels, precision, args.steps, batch, device)
            rates.append(f"{rate:9.0f}")
        label = f"{arch} {size}x{size}x{channels}, batch {batch}"
        print(f"{label:28s} " + " ".join(f"{r:>9s}" for r in rates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
