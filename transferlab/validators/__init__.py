"""The registry of label-free validators: one module per validator in this package.

A validator scores a model without any target label, from its outputs on a seeded subsample
of the unlabelled target pool (`anchors`: at most `selection.pool_size` images, so its cost is
bounded whatever the pool's size) and on the source validation split. Higher is better for
every one of them. `fit` records every registered validator at every evaluation of a
label-free run (0 target labels); `selection.validator` names the one that chooses the
checkpoint, `selection.guard` the ones that must agree before an adapted model replaces the
source model (transferlab/selection.py). The study measures each against the target test
accuracy of the same checkpoints (docs/selection.md).

One of them probes the model with images of its own (`View.probe`: mixed anchors in
mixval.py, one forward pass of the anchors).

Each module declares `VALIDATORS = (Validator(...),)`: its name (the module's), a label for
tables, its reference, its cost, and `score(view) -> float`. torch is imported inside `score`:
the params schema reads the names, and check_params must stay light.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from transferlab.registry import discover


@dataclass(frozen=True)
class View:
    """A model's outputs, all a validator may read (never a target label)."""
    target: Any        # (n, K) float logits on the anchors of the unlabelled target pool
    source: Any        # (m, K) float logits on the source validation images
    source_y: Any      # (m,) their labels
    target_features: Any = None  # (n, D) the encoder's features on the same anchors
    source_features: Any = None  # (m, D) ... on the source validation images
    target_x: Any = None  # (n, C, H, W) the anchor images, uint8 as stored
    probe: Any = None     # images (any dtype, 0-255 scale) -> logits of the same model in eval
                          # mode: for a validator that feeds it images of its own (mixval.py)


@dataclass(frozen=True)
class Validator:
    name: str
    label: str          # how tables and the selection record name it ("SND")
    summary: str        # one line: what it rewards
    reference: str
    cost: str           # in the anchors n and classes K
    score: Callable[[View], float]
    family: str = ""    # the module, filled in by the registry


def projected(features, dims: int = 64):
    """(n, D) features -> (n, min(D, dims)) float64 numpy, L2-normalised, through a fixed
    Gaussian random projection (seed 0) where D > dims: distances and clusters are kept within
    a small factor (Johnson-Lindenstrauss), and a k-means or a logistic fit on them costs 30-40x
    less at small_cnn's D = 2048 (measured: benchmarks/validators.py)."""
    import torch
    import torch.nn.functional as F

    x = F.normalize(features.detach().float().cpu(), dim=1)
    if x.shape[1] > dims:
        matrix = torch.randn(x.shape[1], dims, generator=torch.Generator().manual_seed(0))
        x = F.normalize(x @ matrix, dim=1)
    return x.double().numpy()


def sklearn_threads():
    """A context in which scikit-learn's OpenMP and BLAS pools use torch's thread count
    (compute.threads): without it each of `transferlab-fanout --jobs N`'s processes would spin
    every core's worth of threads (measured: a k-means 10x slower with two jobs on 2 cores)."""
    import torch
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    return threadpool_limits(limits=torch.get_num_threads())


VALIDATORS: dict[str, Validator] = discover(__name__, __path__, "VALIDATORS", "validator")
NAMES = tuple(VALIDATORS)


def score_all(view: View, names: Iterable[str] = NAMES) -> dict[str, float]:
    """{name: score} of the named validators (all registered ones by default)."""
    return {name: float(VALIDATORS[name].score(view)) for name in names}


def anchors(n: int, limit: int, seed: int):
    """Indices of the pool images validators read: all of them up to `limit`, else a seeded
    draw of `limit`, in pool order (the same images at every evaluation of a run)."""
    import torch

    if n <= limit:
        return torch.arange(n)
    draw = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:limit]
    return draw.sort().values
