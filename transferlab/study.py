"""The study: every strategy at several label budgets k and seeds, and the layer-transfer grid.

A cell (k, seed) draws its own k shots per class from the target train pool (nested across k
for a seed), takes the rest of the pool without its labels as the unlabelled target set, trains
every registered method on them with the same code as the default pipeline (selection on the
target validation set; at k = 0 label-free, by `selection.*` (transferlab/selection.py), where
the methods that need labels are skipped), and only then scores the selected models on the target test set.
`train_cell` and `train_layer_grid` never receive the test set; the stage scripts load it after
training has finished.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch

from transferlab import strategies
from transferlab.errors import UserError
from transferlab.evaluation import compare, predict
from transferlab.health import check_health, check_models
from transferlab.models import Classifier
from transferlab.params import Params, encoder_blocks
from transferlab.scenario import draw_shots
from transferlab.train import make_deterministic, rows
from transferlab.transfer import make_inputs, why_skipped

LayerVariant = tuple[str, int]  # (variant, copied blocks)
ORACLE = " (oracle)"  # suffix of a label-free method's target-val-selected checkpoint


def require_target_val(pool: dict, what: str) -> None:
    """The study, its layer grid and the ranking choose checkpoints on the target validation
    images and compare label-free choices with that choice (the oracle): a pool prepared with
    prepare.target_val_per_class 0 has none, which is one line."""
    if len(pool["y_val"]) == 0:
        raise UserError(f"{what} chooses checkpoints on target validation images, but "
                        "prepare.target_val_per_class is 0: set it >= 1 (then `dvc repro "
                        f"prepare`) to run {what}")


def cell_target(pool: dict[str, torch.Tensor], shots: int, seed: int
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The k-shot training set of one cell with the (shared) target validation set, and the
    unlabelled target images: the rest of the pool, images only (its labels stay here)."""
    y_pool = pool["y_pool"].cpu().numpy()
    drawn = draw_shots(y_pool, np.arange(y_pool.size), shots, seed)
    rest = np.setdiff1d(np.arange(y_pool.size), drawn)
    device = pool["x_pool"].device
    idx, rest = torch.from_numpy(drawn).to(device), torch.from_numpy(rest).to(device)
    return ({"x_train": pool["x_pool"][idx], "y_train": pool["y_pool"][idx],
             "x_val": pool["x_val"], "y_val": pool["y_val"]}, rows(pool["x_pool"], rest))


def train_cell(target: dict[str, torch.Tensor], unlabelled: torch.Tensor, params: Params,
               seed: int, source_model: Classifier, source: dict, source_classes: list[str],
               target_classes: list[str], backdrop: str = "blank", source_norm: str = "batch",
               only: tuple[str, ...] | None = None) -> dict[str, strategies.Outcome]:
    """Every registered method on one cell, each from the same seeded state and with only the
    inputs it reads. A method is left out exactly where the pipeline's `transfer` stage skips
    it (`why_skipped`, on class names: at k = 0 the methods that need target labels; across
    different class sets, even of equal size, the adaptation methods; BatchNorm methods where
    the source model, whose file records `source_norm`, has no BatchNorm). `only`: these
    methods alone (the selection study's draws)."""
    outcomes = {}
    shots = len(target["y_train"]) // len(target_classes)
    for name, method in strategies.METHODS.items():
        if (only is not None and name not in only) \
                or why_skipped(method, shots, source_classes, target_classes, source_norm):
            continue
        make_deterministic(seed)
        inputs = make_inputs(method, target, params, seed, source_model=source_model,
                             source=source, unlabelled=unlabelled, backdrop=backdrop)
        # k = 0: every label-free candidate's weights stay, for `checkpoint_rows` to score
        inputs = dataclasses.replace(inputs, keep_checkpoints=shots == 0)
        outcomes[name] = strategies.run(name, inputs, getattr(params.transfer, name))
    return outcomes


def checkpoint_rows(outcomes: dict[str, strategies.Outcome], x_test: torch.Tensor,
                    y_test: np.ndarray) -> dict[str, list[dict]]:
    """{method: one row per label-free candidate (the starting model, step 0, then every
    evaluation): its step, target-val accuracy, every validator's score, its target-test
    accuracy and the health check's numbers on the test images (top_share, marginal_entropy:
    predictions only, no label)}, for the methods whose fit kept its checkpoints (k = 0).
    Called after every model was chosen: the selection replay (transferlab/selection_stats.py)
    reads these rows, and scores the health check on them."""
    out = {}
    for name, outcome in outcomes.items():
        fit = outcome.fit
        if fit is None or fit.checkpoints is None:
            continue
        rows = []
        for row in fit.candidates():
            model = _copy_with_state(outcome.model, fit.checkpoints[row["step"]])
            predicted = predict(model, x_test)
            health = check_health(predicted, model.head.out_features)
            rows.append({k: round(v, 6) for k, v in row.items() if k not in ("train_loss", "val_loss")}
                        | {"step": row["step"],
                           "test_accuracy": round(float((predicted == y_test).mean()), 4),
                           "top_share": round(health.top_share, 4),
                           "marginal_entropy": round(health.marginal_entropy, 4)})
        out[name] = rows
    return out


def selected_models(outcomes: dict[str, strategies.Outcome]) -> dict[str, Classifier]:
    """The chosen model of each method and, for label-free selections, the checkpoint that
    target-val selection would have chosen, named '<method> (oracle)': reported apart."""
    models = {}
    for name, outcome in outcomes.items():
        models[name] = outcome.model
        fit = outcome.fit
        if fit is not None and fit.oracle_state is not None:
            models[name + ORACLE] = _copy_with_state(outcome.model, fit.oracle_state)
    return models


def _copy_with_state(model: Classifier, state: dict) -> Classifier:
    other = copy.deepcopy(model)
    other.load_state_dict(state)
    return other.eval()


def layer_variants(num_blocks: int) -> list[LayerVariant]:
    """Yosinski et al. 2014: n = 0..L blocks copied and frozen (AnB), copied and fine-tuned
    (AnB+), and a control whose first n blocks are frozen at a random initialisation."""
    return [("none", 0)] + [(v, n) for n in range(1, num_blocks + 1)
                            for v in ("frozen", "fine-tuned", "random-frozen")]


def train_layer_grid(inputs: strategies.Inputs, params: Params
                     ) -> dict[LayerVariant, strategies.Outcome]:
    cfg = params.transfer.structure
    outcomes = {}
    for variant, n in layer_variants(encoder_blocks(params.model.arch, params.model.widths)):
        make_deterministic(inputs.seed)
        if variant == "random-frozen":
            random_source = Classifier(inputs.architecture.build(), inputs.num_classes)
            variant_inputs = dataclasses.replace(inputs, source_model=random_source)
        else:
            variant_inputs = inputs
        update = {"copied_blocks": n, "freeze_copied": variant != "fine-tuned"}
        outcomes[(variant, n)] = strategies.run("structure", variant_inputs,
                                                cfg.model_copy(update=update))
    return outcomes


def score(models: dict[str, Classifier], x_test: torch.Tensor, y_test: np.ndarray) -> dict:
    """Test accuracy and macro-F1 of each selected model (the only use of the test set)."""
    num_classes = int(y_test.max()) + 1
    scores = compare({name: predict(m, x_test) for name, m in models.items()}, y_test, num_classes)
    return {name: {"accuracy": s["accuracy"], "macro_f1": s["macro_f1"]}
            for name, s in scores.items()}


def health_rows(models: dict[str, Classifier], unlabelled: torch.Tensor, num_classes: int,
                source_prior: np.ndarray | None) -> dict[str, dict]:
    """The label-free health check of every scored model on the cell's unlabelled target
    images, as evaluate runs it: its verdict and the two numbers it reads. The study report
    scores the verdicts against test accuracy (health.score_detector)."""
    checks = check_models({name: predict(m, unlabelled) for name, m in models.items()},
                          num_classes, source_prior, "unlabelled target images")
    return {name: {"degenerate": h.degenerate, "top_share": round(h.top_share, 4),
                   "marginal_entropy": round(h.marginal_entropy, 4)}
            for name, h in checks.items()}
