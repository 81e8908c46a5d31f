"""The study: every strategy at several label budgets k and seeds, and the layer-transfer grid.

A cell (k, seed) draws its own k shots per class from the target train pool (nested across k
for a seed), trains every strategy on them with the same code as the default pipeline
(selection on the target validation set), and only then scores the selected models on the
target test set. `train_cell` and `train_layer_grid` never receive the test set; the stage
scripts load it after training has finished.
"""

from __future__ import annotations

import numpy as np
import torch

from transferlab import strategies
from transferlab.evaluation import compare, predict
from transferlab.models import Classifier
from transferlab.params import Params, encoder_blocks
from transferlab.scenario import draw_shots
from transferlab.train import make_deterministic

LayerVariant = tuple[str, int]  # (variant, copied blocks)


def cell_target(pool: dict[str, torch.Tensor], shots: int, seed: int) -> dict[str, torch.Tensor]:
    """The k-shot training set of one cell, and the (shared) target validation set."""
    y_pool = pool["y_pool"].cpu().numpy()
    idx = torch.from_numpy(draw_shots(y_pool, np.arange(y_pool.size), shots, seed))
    return {"x_train": pool["x_pool"][idx.to(pool["x_pool"].device)],
            "y_train": pool["y_pool"][idx.to(pool["y_pool"].device)],
            "x_val": pool["x_val"], "y_val": pool["y_val"]}


def train_cell(inputs: strategies.Inputs, params: Params) -> dict[str, strategies.Outcome]:
    """Every strategy on one cell's shots, each from the same seeded state."""
    outcomes = {}
    for name in strategies.NAMES:
        make_deterministic(inputs.seed)
        outcomes[name] = strategies.run(name, inputs, getattr(params.transfer, name))
    return outcomes


def layer_variants(num_blocks: int) -> list[LayerVariant]:
    """Yosinski et al. 2014: n = 0..L blocks copied and frozen (AnB), copied and fine-tuned
    (AnB+), and a control whose first n blocks are frozen at a random initialisation."""
    return [("none", 0)] + [(v, n) for n in range(1, num_blocks + 1)
                            for v in ("frozen", "fine-tuned", "random-frozen")]


def train_layer_grid(inputs: strategies.Inputs, params: Params
                     ) -> dict[LayerVariant, strategies.Outcome]:
    cfg = params.transfer.structure
    load_source = inputs.load_source_model
    outcomes = {}
    for variant, n in layer_variants(encoder_blocks(params.model.arch, params.model.widths)):
        make_deterministic(inputs.seed)
        if variant == "random-frozen":
            random_source = Classifier(inputs.architecture.build(), inputs.num_classes)
            inputs.load_source_model = lambda model=random_source: model
        else:
            inputs.load_source_model = load_source
        update = {"copied_blocks": n, "freeze_copied": variant != "fine-tuned"}
        outcomes[(variant, n)] = strategies.run("structure", inputs, cfg.model_copy(update=update))
    inputs.load_source_model = load_source
    return outcomes


def score(models: dict[str, Classifier], x_test: torch.Tensor, y_test: np.ndarray) -> dict:
    """Test accuracy and macro-F1 of each selected model (the only use of the test set)."""
    num_classes = int(y_test.max()) + 1
    scores = compare({name: predict(m, x_test) for name, m in models.items()}, y_test, num_classes)
    return {name: {"accuracy": s["accuracy"], "macro_f1": s["macro_f1"]}
            for name, s in scores.items()}
