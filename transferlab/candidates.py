"""Candidate sources of the ranking study: each one built, pretrained, scored, then transferred.

A candidate is derived from data.source (params `ranking.candidates.<name>`): a class subset,
a share of the train split, fewer pretraining epochs (0 = an untrained encoder) or no domain
alignment. The target is the default pipeline's, aligned as always, so every candidate is
judged on the same target images. Per seed, the candidate is scored (one forward pass over the
seed's shots and the validation set, then LogME, LEEP, NCE, H-score) and transferred for real
(finetune and features, selection and accuracy on the target validation set; the test set is
never read here). Both are timed, so the study can say what a score costs next to fine-tuning.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from transferlab import strategies
from transferlab.rawdata import RawDataset
from transferlab.errors import UserError
from transferlab.models import Classifier, architecture_from
from transferlab.params import Candidate, Params
from transferlab.scenario import (align, relabel_by_name, select_classes, separate_by_content,
                                  split_stratified)
from transferlab.source import pretrain, target_features
from transferlab.study import cell_target
from transferlab.train import make_deterministic
from transferlab.transfer import make_inputs
from transferlab.transferability import feature_cells, score_source

OUTCOMES = ("finetune", "features")
UNALIGNED = {"crop": "none", "bottleneck_size": 0, "scale": "none"}


def candidate_source(raw: RawDataset, target: RawDataset, name: str, cand: Candidate,
                     params: Params, official: dict[str, RawDataset] | None = None
                     ) -> dict[str, np.ndarray]:
    """The candidate's source arrays, built as `prepare` builds the source (its class subset,
    no image that the target (data.target.classes; its official test/val splits if any) also
    holds, the split_seed split), then its share of the train split and its alignment."""
    p = params.prepare if cand.align else params.prepare.model_copy(update=UNALIGNED)
    raw = select_classes(raw, cand.classes, f"ranking.candidates.{name}.classes")
    classes = params.data.target.classes
    held = [select_classes(relabel_by_name(target, part, split), classes, "data.target.classes")
            for split, part in sorted((official or {}).items())]
    target = select_classes(target, classes, "data.target.classes")
    raw = separate_by_content(raw, *held, target, channels=params.prepare.channels)[0]
    x = align(raw, p)
    split = split_stratified(raw.labels, p.split_seed, val=p.source_val_fraction)
    train = split["rest"]
    if cand.fraction < 1:
        train = train[split_stratified(raw.labels[train], p.split_seed, keep=cand.fraction)["keep"]]
    kept = np.bincount(raw.labels[train], minlength=len(raw.classes))
    if kept.min() == 0:
        raise UserError(f"ranking.candidates.{name}.fraction={cand.fraction} leaves class "
                        f"{raw.classes[int(kept.argmin())]} without a training image: raise it")
    return {"x_train": x[train], "y_train": raw.labels[train],
            "x_val": x[split["val"]], "y_val": raw.labels[split["val"]]}


def train_candidate(source: dict[str, torch.Tensor], cand: Candidate, params: Params,
                    backdrop: str = "blank") -> Classifier:
    """The candidate's source model: pretrained for `epochs` (best source-val epoch), or with
    epochs = 0 the same architecture at its seeded random initialisation."""
    architecture = architecture_from(params.model, source["x_train"].shape[1],
                                     source["x_train"].shape[-1], backdrop)
    if cand.epochs == 0:
        torch.manual_seed(params.pretrain.seed)
        model = Classifier(architecture.build(), int(source["y_train"].max()) + 1)
        return model.to(source["x_train"].device).eval()
    cfg = params.pretrain.model_copy(update={"epochs": cand.epochs})
    return pretrain(source, architecture, cfg, params.model.weights, params.augment.photo())[0].eval()


def evaluate_candidate(model: Classifier, pool: dict[str, torch.Tensor], params: Params,
                       backdrop: str = "blank") -> tuple[list[dict], list[dict]]:
    """(results, timings), one entry per seed of `ranking.seeds`.

    result: the seed's scores on its shots + validation set, and the target-validation
    accuracy of finetune and features. timing: wall and process-CPU seconds of scoring
    (features and head forward pass + the scores) and of each transfer strategy (CPU
    time as well because wall time on a shared machine measures the neighbours too)."""
    cfg = params.ranking
    smallest = int(np.bincount(pool["y_pool"].cpu().numpy()).min())
    if cfg.shots > smallest:
        raise UserError(f"ranking.shots={cfg.shots} but a target class has only {smallest} "
                        "images in the train pool: lower ranking.shots")
    head = [t.detach().cpu().numpy() for t in (model.head.weight, model.head.bias)]
    results, timings = [], []
    for seed in cfg.seeds:
        target = cell_target(pool, cfg.shots, seed)[0]  # labelled shots only: no pool used
        make_deterministic(seed)
        start, cpu = time.perf_counter(), time.process_time()
        features = target_features(model.encoder, target, params.extract.batch_size)
        scores = score_source(features, *head, cells=feature_cells(model.encoder))
        timing = {"seed": seed, "score_s": time.perf_counter() - start,
                  "score_cpu_s": time.process_time() - cpu}
        accuracy = {}
        for name in OUTCOMES:
            make_deterministic(seed)
            inputs = make_inputs(strategies.METHODS[name], target, params, seed,
                                 source_model=model, features=features, backdrop=backdrop)
            start, cpu = time.perf_counter(), time.process_time()
            outcome = strategies.run(name, inputs, getattr(params.transfer, name))
            timing[f"{name}_s"] = time.perf_counter() - start
            timing[f"{name}_cpu_s"] = time.process_time() - cpu
            accuracy[name] = round(outcome.fit.best_val_accuracy if outcome.fit
                                   else outcome.info["val_accuracy"], 4)
        results.append({"seed": seed, "scores": scores, "val_accuracy": accuracy})
        timings.append({k: round(v, 4) if isinstance(v, float) else v for k, v in timing.items()})
    return results, timings
