"""The one training loop, used by pretraining and by every neural transfer strategy.

Images are uint8 tensors on the device, or, when larger than io.resident_limit(), DiskImages
that read one batch at a time from the prepared file; batches are index slices either way and
give the same values. Augmentation works on whole batches on the device. Strategies differ only in what they hand to
`fit`: which parameters train and at what learning rate, which labelled data streams (one per
domain, each with its own head and loss weight), an optional penalty term (L2-SP), and for
domain adaptation an unlabelled target stream with the method's extra loss term (`Adapt`).

Model selection: the weights of the evaluation with the best validation accuracy (ties: lower
validation loss) are returned. The validation set is the only held-out data `fit` ever sees.
With `label_free` (0 target labels) no target label may choose: every checkpoint and the
starting model are scored by the label-free validators (`LabelFree`), transferlab/selection.py
chooses among them (source accuracy kept, `selection.validator`, the guard), and the
target-validation choice is only recorded, as the "oracle", for reporting.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from transferlab import compute, selection
from transferlab.errors import UserError
from transferlab.validators import VALIDATORS, View, anchors, score_all

EVALUATIONS_PER_RUN = 30  # checkpoints considered by model selection when no epochs are given


class TrainingDiverged(UserError):
    """The loss became NaN or infinite: further steps cannot recover, and no weights are kept."""


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_deterministic(seed: int) -> None:
    """Same seed, code and data -> same weights, bit for bit on a given machine."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by cuBLAS determinism
    set_deterministic_algorithms()
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(seed)


def set_deterministic_algorithms() -> None:
    """torch.use_deterministic_algorithms(True) for eager code. That function also imports
    torch._inductor to set its `deterministic` flag, 1.2-1.9 s in every stage process (a third
    of a training stage's start-up on the 2-core CPU), for torch.compile, which this project
    does not use; so when inductor is not loaded already, only the eager flag is set, by the
    call torch itself makes. torch.are_deterministic_algorithms_enabled() reads it back."""
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True)
    else:
        setter(True, warn_only=False)


class AdamW(torch.optim.AdamW):
    """torch.optim.AdamW, the same update, without torch._dynamo: torch wraps `step` and four
    other Optimizer methods in torch.compile guards (graph breaks, torch._disable_dynamo) that
    import torch._dynamo on their first call, 1.5-2 s in each training stage process on the
    2-core CPU. This project never compiles, so it calls the methods those wrappers wrap
    (inspect.unwrap follows functools.wraps), and `step` runs without autograd, as the wrapper
    does when `differentiable` is False (its default, and never set here)."""

    add_param_group = inspect.unwrap(torch.optim.Optimizer.add_param_group)
    zero_grad = inspect.unwrap(torch.optim.Optimizer.zero_grad)
    state_dict = inspect.unwrap(torch.optim.Optimizer.state_dict)
    load_state_dict = inspect.unwrap(torch.optim.Optimizer.load_state_dict)
    _step = inspect.unwrap(torch.optim.AdamW.step)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        return self._step(closure)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32 in [0, 1], channels_last (NHWC in memory): measured
    on the 2-core CPU, the default conv net trains 25-35 % faster at batch 128-256 that way.
    Float images on the 0-255 scale (mixed ones: validators/mixval.py) are copied, not
    divided in place."""
    return x.to(torch.float32, copy=True).div_(255).contiguous(memory_format=torch.channels_last)


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


@dataclass(frozen=True)
class PhotoAugment:
    """Photo augmentation of a whole batch on its device, drawn per image: torchvision's
    RandomResizedCrop(scale=(min_scale, 1), ratio=(3/4, 4/3)) -- its box sampling (10 tries,
    then the whole image) and its resampling of the box to the batch's size (bilinear with
    antialiasing, what transforms.v2.functional.resized_crop does to a tensor) -- and a
    horizontal flip with probability 1/2 when `flip`."""
    min_scale: float = 0.08
    flip: bool = True


def photo_boxes(n: int, h: int, w: int, aug: PhotoAugment, gen: torch.Generator) -> list:
    """n crop boxes (top, left, height, width) in an h x w image, drawn as RandomResizedCrop
    draws them, all at once."""
    tries = 10
    area = h * w * torch.empty(n, tries).uniform_(aug.min_scale, 1.0, generator=gen)
    ratio = torch.exp(torch.empty(n, tries).uniform_(math.log(3 / 4), math.log(4 / 3),
                                                     generator=gen))
    cw, ch = torch.sqrt(area * ratio).round(), torch.sqrt(area / ratio).round()
    ok = (cw >= 1) & (cw <= w) & (ch >= 1) & (ch <= h)
    first = ok.float().argmax(1, keepdim=True)  # the first try that fits, as torchvision
    cw = torch.where(ok.any(1), cw.gather(1, first)[:, 0], torch.tensor(float(w)))
    ch = torch.where(ok.any(1), ch.gather(1, first)[:, 0], torch.tensor(float(h)))
    u = torch.rand(n, 2, generator=gen)
    x0, y0 = (u[:, 0] * (w - cw + 1)).floor(), (u[:, 1] * (h - ch + 1)).floor()
    return torch.stack([y0, x0, ch, cw], 1).long().tolist()


def uint8_resize_on(device: torch.device) -> bool:
    """Whether F.interpolate's antialiased bilinear resize takes uint8 images on `device`: the
    CPU's does, CUDA's takes floating point only."""
    return device.type == "cpu"


def photo_batch(x: torch.Tensor, aug: PhotoAugment, gen: torch.Generator) -> torch.Tensor:
    """`x` (N, C, H, W), uint8 or float, each image cropped to its own box, resized back to
    H x W and maybe flipped; the same dtype, channels_last, out. One antialiased resize per
    image, as torchvision's resized_crop does to a tensor of that dtype: uint8 is resampled
    and rounded to uint8 (the CPU's uint8 kernel; elsewhere in float32, then rounded, as
    torchvision does). On the 2-core CPU a batch of 32 at 224 px takes 18 ms from uint8
    (to_float included), 60 ms from float32, 171 ms with torchvision.ops.roi_align over the
    batch (this loop's first way)."""
    n, _, h, w = x.shape
    if n == 0:
        return x.contiguous(memory_format=torch.channels_last)
    rounded = not x.is_floating_point()
    if rounded and uint8_resize_on(x.device):
        resize = functools.partial(F.interpolate, size=(h, w), mode="bilinear", antialias=True,
                                   align_corners=False)
        src = x.contiguous(memory_format=torch.channels_last)  # uint8: fastest as NHWC
    else:
        def resize(crop: torch.Tensor) -> torch.Tensor:
            out = F.interpolate(crop.float(), size=(h, w), mode="bilinear", antialias=True,
                                align_corners=False)
            return out.round_().clamp_(0, 255).to(x.dtype) if rounded else out

        src = x.contiguous()  # float32: fastest as NCHW (26 ms, 41 as channels_last)
    out = torch.cat([resize(src[i:i + 1, :, top:top + ch, left:left + cw])
                     for i, (top, left, ch, cw) in enumerate(photo_boxes(n, h, w, aug, gen))])
    if aug.flip:
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)[:, None, None, None]
        out = torch.where(flip, out.flip(-1), out)
    return out.contiguous(memory_format=torch.channels_last)


def augment_batch(x: torch.Tensor, shift_px: int, photo: PhotoAugment | None,
                  gen: torch.Generator) -> torch.Tensor:
    """The training augmentation of a uint8 batch, as float32 in [0, 1] (to_float): photo crops
    and flips when `photo` is set (augment.mode: photo), else the digits' random translation by
    up to shift_px. Both work on the uint8 pixels, a quarter of float32's bytes; a translation
    moves values, so it gives what it gives on floats."""
    x = photo_batch(x, photo, gen) if photo is not None else shift_batch(x, shift_px, gen)
    return to_float(x)


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
class AdaptBatch:
    """What an adaptation term sees at one step: features and logits of the labelled batches
    (source first, then the target shots if any) and of the unlabelled target batch."""
    features: list[torch.Tensor]   # per labelled stream, (B, F)
    logits: list[torch.Tensor]     # per labelled stream, (B, K)
    target_features: torch.Tensor  # (B, F), unlabelled target
    target_logits: torch.Tensor    # (B, K)
    target_x: torch.Tensor         # (B, C, H, W) float, the unlabelled images as fed
    progress: float                # step / steps, in [0, 1): for schedules such as DANN's
    gen: torch.Generator           # seeded: for augmentations the term draws itself
    forward: Callable[[torch.Tensor], torch.Tensor]  # images -> logits, for extra views


@dataclass
class Adapt:
    """The unlabelled target stream and the loss term a domain-adaptation method adds.

    With it, every labelled stream and the unlabelled batch go through `encoder` and `head`
    in one concatenated batch (one forward pass; BatchNorm sees both domains together), and the
    objective is sum_s weight_s * CE(stream_s) + weight * term(batch)."""
    x: torch.Tensor                                    # (M, C, H, W) uint8: images, no labels
    encoder: Callable[[torch.Tensor], torch.Tensor]    # images -> features
    head: Callable[[torch.Tensor], torch.Tensor]       # features -> logits
    term: Callable[[AdaptBatch], torch.Tensor]
    weight: float


@dataclass
class LabelFree:
    """What a run with 0 target labels chooses by: the source validation split, a seeded
    subsample of the unlabelled target pool (`pool_size` anchors), and the `selection` params
    (options.Selection). Every registered validator is recorded at every evaluation and for
    the starting model (step 0, a candidate: "do not adapt" is always an answer);
    transferlab/selection.py picks and guards. The target validation labels only give the
    "oracle" row, recorded for reporting."""
    source_x: torch.Tensor
    source_y: torch.Tensor
    target_x: torch.Tensor  # unlabelled target images (no labels exist here)
    forward: Any  # the Classifier being trained (encoder + head), in eval mode when scored
    selection: Any  # options.Selection
    seed: int = 0
    keep_checkpoints: bool = False  # the study: keep every candidate's weights to score them
    # a source-free method (transfer.source_free): its candidates keep their source accuracy
    # above selection.source_free_floor over chance, not within max_source_drop (selection.py)
    source_free: bool = False
    _anchors: Any = None

    def floor(self) -> float | None:
        """The absolute source-val accuracy a candidate must keep (selection.source_floor)."""
        return selection.source_floor(self.source_free, self.forward.head.out_features,
                                      self.selection.source_free_floor)

    def scores(self) -> dict[str, float]:
        if self._anchors is None:  # tensors or DiskImages: either takes an index tensor
            index = anchors(len(self.target_x), self.selection.pool_size, self.seed)
            self._anchors = self.target_x[index.to(self.target_x.device)]
        model = self.forward  # a Classifier: its features are read too (validators/cluster.py)

        def features_and_logits(x: torch.Tensor) -> torch.Tensor:
            features = model.encoder(x)  # the ops of model(x): the logits are its very bytes
            return torch.cat([features, model.head(features)], 1)

        target = predict_logits(features_and_logits, self._anchors)
        source = predict_logits(features_and_logits, self.source_x)
        width = model.head.out_features
        return score_all(View(target[:, -width:], source[:, -width:], self.source_y,
                              target[:, :-width], source[:, :-width], self._anchors,
                              lambda images: predict_logits(model, images)))


def soft_neighborhood_density(logits: torch.Tensor, temperature: float = 0.05) -> float:
    """SND (Saito et al. 2021) of these logits: transferlab/validators/snd.py."""
    from transferlab.validators.snd import density  # the registry imported it already

    return density(logits, temperature)


@dataclass
class FitResult:
    best_step: int  # 0: the starting model (label-free runs whose guard kept the source model)
    best_val_accuracy: float  # target val accuracy of the selected checkpoint
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    selection: str = "target-val"  # or "source-val+<validator label>" (0 target labels)
    oracle_step: int | None = None  # label-free runs: what target-val selection would pick
    oracle_val_accuracy: float | None = None
    oracle_state: dict | None = None  # its weights, for reporting only (the study scores them)
    # label-free runs: the validators' pick before the guard, and why the guard kept the source
    # model (None: the pick was shipped)
    picked_step: int | None = None
    guard: str | None = None
    checkpoints: dict | None = None  # {step: weights} of every candidate (keep_checkpoints)
    start: dict | None = None  # label-free runs: the starting model's row (step 0, no loss)

    def candidates(self) -> list[dict]:
        """Label-free runs: the rows a choice is made among, the starting model first."""
        return [self.start, *self.history]


def set_train_mode(model: nn.Module) -> None:
    """Train mode, except BatchNorm layers whose parameters are frozen: their running statistics
    stay the source's, otherwise a 'frozen' block would still drift on 50 target images."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in m.parameters()):
            m.eval()


# Inference batches hold at most this many input values (32 MiB as float32): 1024 digits of
# 16x16 or 32x32x3, but 55 photos at 224 px and 10 at 512 px, whose activations would otherwise
# need gigabytes. Memory is bounded by the image size, not the batch size knob.
PREDICT_VALUES = 1 << 23


@torch.no_grad()
def predict_logits(forward: Callable, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Outputs of `forward` on `x` in batches of at most `batch_size` (and PREDICT_VALUES input
    values); an empty `x` gives an empty (0, ...) tensor of the right width (at prepare.shots 0
    there are no target shots to embed)."""
    batch_size = max(1, min(batch_size, PREDICT_VALUES // max(1, math.prod(x.shape[1:]))))
    starts = range(0, len(x), batch_size) if len(x) else [0]
    return torch.cat([forward(to_float(x[i:i + batch_size])) for i in starts])


def fit(model: nn.Module, param_groups: Sequence[dict], streams: Sequence[Stream],
        val: tuple[torch.Tensor, torch.Tensor, Callable], *, steps: int, batch_size: int,
        weight_decay: float, shift_px: int, seed: int, eval_every: int | None = None,
        penalty: Callable[[], torch.Tensor] | None = None, adapt: Adapt | None = None,
        label_free: LabelFree | None = None, photo: PhotoAugment | None = None,
        desc: str = "train") -> FitResult:
    """Minimise sum_s weight_s * CE(stream_s) + penalty (+ adapt.weight * adapt.term) with AdamW;
    keep the selected weights in `model`. `param_groups` carry their peak `lr`; the schedule
    scales it per step."""
    if steps < 1:  # params.yaml allows none; a direct caller gets this, not a load_state_dict error
        raise ValueError(f"fit: steps={steps}: train for at least one step")
    model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)
    samplers = [IndexSampler(len(s.x), batch_size, gen) for s in streams]
    if adapt is not None:
        if len(adapt.x) == 0:
            raise ValueError("the unlabelled target stream is empty")
        unlabelled = IndexSampler(len(adapt.x), batch_size, gen)
    optimizer = AdamW([dict(g, peak_lr=g["lr"]) for g in param_groups],
                                  weight_decay=weight_decay)
    eval_every = eval_every or max(1, steps // EVALUATIONS_PER_RUN)
    val_x, val_y, val_forward = val
    has_val = len(val_y) > 0  # none: prepare.shots and target_val_per_class 0 (label-free only)
    if label_free is None and not has_val:
        raise ValueError("fit: no validation image to choose a checkpoint on")
    best_key, best_state, oracle_best = None, None, None
    result = FitResult(best_step=0, best_val_accuracy=0.0)
    states = {}  # label-free: every candidate's weights until the choice (copies on the device)
    if label_free is not None:  # the starting model is candidate 0
        result.selection = f"source-val+{VALIDATORS[label_free.selection.validator].label}"
        model.eval()
        logits = predict_logits(val_forward, val_x)
        row = {"step": 0, "val_loss": F.cross_entropy(logits, val_y).item() if len(val_y) else
               float("nan"), "val_accuracy": _accuracy(logits, val_y), **label_free.scores()}
        result.start = row
        states[0] = _copy_state(model)
        if has_val:  # no validation label, no oracle
            oracle_best = (row["val_accuracy"], -row["val_loss"])
            result.oracle_step, result.oracle_val_accuracy = 0, row["val_accuracy"]
    running = torch.zeros((), device=val_x.device)

    def streams_loss(batches: list, xu: torch.Tensor | None, progress: float) -> torch.Tensor:
        """The step's loss, one call per step (under DDP: one forward). With `adapt`, every
        labelled batch and the unlabelled one `xu` go through the encoder together. Under DDP
        each rank's term sees its part of the batch (batch statistics such as CORAL's
        covariances or MCC's class confusion are per rank, as BatchNorm's are)."""
        loss = torch.zeros((), device=val_x.device)
        if adapt is None:
            for stream, (xb, yb, scale) in zip(streams, batches):
                loss = loss + stream.weight * scale * F.cross_entropy(stream.forward(xb), yb)
            return loss
        sizes = [len(xb) for xb, _, _ in batches] + [len(xu)]
        features = adapt.encoder(torch.cat([xb for xb, _, _ in batches] + [xu]))
        logits = adapt.head(features)
        feats, outs = features.split(sizes), logits.split(sizes)
        for stream, (_, yb, scale), out in zip(streams, batches, outs):
            loss = loss + stream.weight * scale * F.cross_entropy(out, yb)
        return loss + adapt.weight * adapt.term(AdaptBatch(
            list(feats[:-1]), list(outs[:-1]), feats[-1], outs[-1], xu, progress, gen,
            lambda x: adapt.head(adapt.encoder(x))))

    step_loss = compute.data_parallel(model, streams_loss)  # streams_loss itself in one process
    scaler = compute.grad_scaler()  # fp16 only; passes through otherwise
    for step in tqdm(range(steps), desc=desc, mininterval=2, disable=None, leave=False):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, group["peak_lr"])
        set_train_mode(model)
        batches = []
        for stream, sampler in zip(streams, samplers):
            idx = sampler.next().to(stream.x.device, non_blocking=True)
            part, scale = compute.shard(len(idx))  # this rank's part of the global batch
            xb = augment_batch(stream.x[idx], shift_px, photo, gen)[part]
            batches.append((xb, stream.y[idx][part], scale))
        xu = None
        if adapt is not None:
            iu = unlabelled.next().to(adapt.x.device, non_blocking=True)
            xu = augment_batch(adapt.x[iu], shift_px, photo, gen)[compute.shard(len(iu))[0]]
        with compute.autocast():
            loss = step_loss(batches, xu, step / steps)
            if penalty is not None:
                loss = loss + penalty()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        running += loss.detach()  # summed on the device: no host sync per step

        if (step + 1) % eval_every == 0 or step + 1 == steps:
            running = compute.agree(model, running)  # several ranks: one model, one mean loss
            model.eval()
            val_loss = val_acc = float("nan")
            if has_val:
                logits = predict_logits(val_forward, val_x)
                val_loss = F.cross_entropy(logits, val_y).item()
                val_acc = (logits.argmax(1) == val_y).float().mean().item()
            seen = (step % eval_every) + 1
            if not ((math.isfinite(val_loss) or not has_val) and math.isfinite(running.item())):
                raise TrainingDiverged(f"training diverged by step {step + 1} of {steps} (loss "
                                       f"{running.item() / seen:.3g}, validation loss {val_loss:.3g})")
            row = {"step": step + 1, "train_loss": running.item() / seen,
                   "val_loss": val_loss, "val_accuracy": val_acc}
            running.zero_()
            oracle_key = (val_acc, -val_loss)
            result.history.append(row)
            if label_free is not None:  # chosen after the last step, from the recorded scores
                row.update(label_free.scores())
                states[step + 1] = _copy_state(model)
                if has_val and oracle_key > oracle_best:
                    oracle_best = oracle_key
                    result.oracle_step, result.oracle_val_accuracy = step + 1, val_acc
                if not label_free.keep_checkpoints:  # keep the weights a choice may still need
                    keep = {0, result.oracle_step, _label_free_pick(result, label_free)}
                    states = {k: v for k, v in states.items() if k in keep}
            elif best_key is None or oracle_key > best_key:
                best_key = oracle_key
                best_state = _copy_state(model)
                result.best_step, result.best_val_accuracy = step + 1, val_acc
    if label_free is not None:
        best_state = _choose_label_free(result, label_free, states)
        result.oracle_state = states[result.oracle_step] if has_val else None
        if label_free.keep_checkpoints:
            result.checkpoints = states
    model.load_state_dict(best_state)
    model.eval()
    if bad := [k for k, v in best_state.items() if v.is_floating_point() and not v.isfinite().all()]:
        # finite logits can hide a NaN BatchNorm statistic of a unit the ReLU zeroes out
        raise TrainingDiverged(f"training diverged: {bad[0]} holds NaN or infinity")
    return result


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return (logits.argmax(1) == y).float().mean().item() if len(y) else float("nan")


def _copy_state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _label_free_pick(result: FitResult, label_free: LabelFree) -> int:
    """The step the validator picks among the rows recorded so far."""
    rows, cfg = result.candidates(), label_free.selection
    return rows[selection.pick(rows, cfg.validator, cfg.max_source_drop, label_free.floor())]["step"]


def _choose_label_free(result: FitResult, label_free: LabelFree, states: dict) -> dict:
    """Fill in the label-free choice (selection.decide on the recorded rows, row 0 the starting
    model) and return the shipped checkpoint's weights."""
    rows, cfg = result.candidates(), label_free.selection
    shipped, picked, why = selection.decide(rows, cfg.validator, cfg.max_source_drop, cfg.guard,
                                            cfg.guard_margin, label_free.floor())
    result.picked_step, result.guard = rows[picked]["step"], why
    result.best_step, result.best_val_accuracy = rows[shipped]["step"], rows[shipped]["val_accuracy"]
    return states[result.best_step]


class DiskImages:
    """uint8 images (N, C, H, W) that stay in their file: indexing with a slice or an index
    tensor reads just those rows (io.DiskArray) and hands them over as a tensor on `device`.
    Everything the training and prediction loops do with an image tensor (len, shape, device,
    x[i:j], x[idx]) works on it, and gives the same values, so results do not depend on where
    the images live; only memory does (one batch, not the dataset)."""

    dtype = torch.uint8

    def __init__(self, array, device: torch.device):
        self.array, self.device = array, torch.device(device)
        self.shape = torch.Size(array.shape)

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        return torch.from_numpy(self.array[key]).to(self.device)

    def take(self, index) -> DiskImages:
        """The rows `index` selects, still on disk."""
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        return DiskImages(self.array.take(index), self.device)


def to_device(arrays: dict, device: torch.device) -> dict[str, torch.Tensor | DiskImages]:
    """Arrays from a prepared file -> tensors on the device (uint8 images stay uint8). Images
    that `load_arrays(..., lazy=True)` left on disk (larger than io.resident_limit()) become
    DiskImages: read a batch at a time, never whole."""
    from transferlab.io import DiskArray

    pin = device.type == "cuda"  # page-locked host memory: the copy runs asynchronously
    out = {}
    for k, v in arrays.items():
        if isinstance(v, DiskArray) and v.ndim == 4:
            out[k] = DiskImages(v, device)
            continue
        v = torch.from_numpy(np.asarray(v))
        out[k] = (v.pin_memory() if pin else v).to(device, non_blocking=pin)
    return out


def rows(x: torch.Tensor | DiskImages, index: torch.Tensor) -> torch.Tensor | DiskImages:
    """x[index] for a subset that is kept (a split of a pool): lazy for images on disk."""
    return x.take(index) if isinstance(x, DiskImages) else x[index]
