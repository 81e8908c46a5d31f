"""The one training loop, used by pretraining and by every neural transfer strategy.

Data lives in memory as uint8 tensors on the device; batches are index slices; augmentation
(random translation) works on whole batches. Strategies differ only in what they hand to
`fit`: which parameters train and at what learning rate, which data streams (one per domain,
each with its own head and loss weight) and an optional penalty term (L2-SP).

Model selection: the weights of the evaluation with the best validation accuracy (ties: lower
validation loss) are returned. The validation set is the only held-out data `fit` ever sees.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from transferlab.io import UserError

EVALUATIONS_PER_RUN = 30  # checkpoints considered by model selection when no epochs are given


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: further steps cannot recover, and no weights are kept."""


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_deterministic(seed: int) -> None:
    """Same seed, code and data -> same weights, bit for bit on a given machine."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS determinism
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(seed)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32 in [0, 1], channels_last (NHWC in memory): measured
    on the 2-core CPU, the default conv net trains 25-35 % faster at batch 128-256 that way."""
    return x.float().div_(255).contiguous(memory_format=torch.channels_last)


def shift_batch(x: torch.Tensor, max_px: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random (dy, dx) in [-max_px, max_px], filling with zeros."""
    if max_px == 0:
        return x
    n, _, h, w = x.shape
    shifts = torch.randint(-max_px, max_px + 1, (n, 2), generator=gen).to(x.device)
    padded = F.pad(x, (max_px,) * 4)
    out = torch.empty_like(x)
    for dy in range(-max_px, max_px + 1):  # one slice per distinct shift: (2m+1)^2 slices
        for dx in range(-max_px, max_px + 1):
            sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
            out[sel] = padded[sel, :, max_px + dy:max_px + dy + h, max_px + dx:max_px + dx + w]
    return out.contiguous(memory_format=torch.channels_last)


def cosine_lr(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 5 % of steps, then cosine decay to 0."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


class IndexSampler:
    """Endless batches of indices: a fresh seeded permutation every pass over the data."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator):
        self.n, self.batch_size, self.gen = n, min(batch_size, n), gen
        self.order, self.pos = torch.randperm(n, generator=gen), 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


@dataclass
class Stream:
    """One domain's training data and how its loss enters the objective."""
    x: torch.Tensor                          # (N, C, H, W) uint8
    y: torch.Tensor                          # (N,) int64
    forward: Callable[[torch.Tensor], torch.Tensor]  # images -> logits
    weight: float = 1.0


@dataclass
class FitResult:
    best_step: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)  # one row per evaluation


def set_train_mode(model: nn.Module) -> None:
    """Train mode, except BatchNorm layers whose parameters are frozen: their running statistics
    stay the source's, otherwise a 'frozen' block would still drift on 50 target images."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in m.parameters()):
            m.eval()


@torch.no_grad()
def predict_logits(forward: Callable, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    return torch.cat([forward(to_float(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])


def fit(model: nn.Module, param_groups: Sequence[dict], streams: Sequence[Stream],
        val: tuple[torch.Tensor, torch.Tensor, Callable], *, steps: int, batch_size: int,
        weight_decay: float, shift_px: int, seed: int, eval_every: int | None = None,
        penalty: Callable[[], torch.Tensor] | None = None, desc: str = "train") -> FitResult:
    """Minimise sum_s weight_s * CE(stream_s) + penalty with AdamW; keep the best-on-validation
    weights in `model`. `param_groups` carry their peak `lr`; the schedule scales it per step."""
    model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)
    samplers = [IndexSampler(len(s.x), batch_size, gen) for s in streams]
    optimizer = torch.optim.AdamW([dict(g, peak_lr=g["lr"]) for g in param_groups],
                                  weight_decay=weight_decay)
    eval_every = eval_every or max(1, steps // EVALUATIONS_PER_RUN)
    val_x, val_y, val_forward = val
    best_key, best_state, result = None, None, FitResult(best_step=0, best_val_accuracy=0.0)
    running = torch.zeros((), device=val_x.device)
    for step in tqdm(range(steps), desc=desc, mininterval=2, disable=None, leave=False):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, group["peak_lr"])
        set_train_mode(model)
        loss = torch.zeros((), device=val_x.device)
        for stream, sampler in zip(streams, samplers):
            idx = sampler.next().to(stream.x.device)
            xb = shift_batch(to_float(stream.x[idx]), shift_px, gen)
            loss = loss + stream.weight * F.cross_entropy(stream.forward(xb), stream.y[idx])
        if penalty is not None:
            loss = loss + penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.detach()  # summed on the device: no host sync per step

        if (step + 1) % eval_every == 0 or step + 1 == steps:
            model.eval()
            logits = predict_logits(val_forward, val_x)
            val_loss = F.cross_entropy(logits, val_y).item()
            val_acc = (logits.argmax(1) == val_y).float().mean().item()
            seen = (step % eval_every) + 1
            if not (math.isfinite(val_loss) and math.isfinite(running.item())):
                raise TrainingDiverged(f"training diverged by step {step + 1} of {steps} (loss "
                                       f"{running.item() / seen:.3g}, validation loss {val_loss:.3g})")
            result.history.append({"step": step + 1, "train_loss": running.item() / seen,
                                   "val_loss": val_loss, "val_accuracy": val_acc})
            running.zero_()
            key = (val_acc, -val_loss)
            if best_key is None or key > best_key:
                best_key = key
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                result.best_step, result.best_val_accuracy = step + 1, val_acc
    model.load_state_dict(best_state)
    model.eval()
    if bad := [k for k, v in best_state.items() if v.is_floating_point() and not v.isfinite().all()]:
        # finite logits can hide a NaN BatchNorm statistic of a unit the ReLU zeroes out
        raise TrainingDiverged(f"training diverged: {bad[0]} holds NaN or infinity")
    return result


def to_device(arrays: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """numpy arrays from a prepared file -> tensors on the device (uint8 images stay uint8)."""
    return {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
