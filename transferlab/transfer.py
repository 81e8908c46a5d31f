"""Code the strategy modules share: their inputs, a new classifier, training on the target
shots, and the set-up every domain-adaptation method uses (`adapt`).

Kept out of the registry package (transferlab/strategies/) because it imports torch: the
registry is imported by the params schema, which must stay light.
"""

from __future__ import annotations

import math

from collections.abc import Callable

import torch
from torch import nn

from transferlab.errors import UserError
from transferlab.models import Classifier, architecture_from, new_head
from transferlab.options import Adaptation
from transferlab.params import Params
from transferlab.source import target_features
from transferlab.strategies import Inputs, Method, Outcome
from transferlab.train import Adapt, AdaptBatch, FitResult, LabelFree, Stream, fit


def why_skipped(method: Method, shots: int, source_classes, target_classes,
                source_norm: str | None = None) -> str | None:
    """Why `method` cannot run in this scenario (None: it can): a method that needs labels at 0
    shots, domain adaptation (one head shared by both domains) across different classes,
    compared by name (equal counts are not equal classes), or a BatchNorm method on a source
    model without BatchNorm (`source_norm`: the norm its file records). The one rule of the
    pipeline's `transfer` stage and of the study. `source_classes` and `source_norm` may be
    None for a method that does not read the source model (they are not consulted then)."""
    if method.needs_labels and shots == 0:
        return f"{method.name} needs target labels and prepare.shots=0"
    if method.needs_batchnorm and source_norm is not None and source_norm != "batch":
        return (f"{method.name} adapts BatchNorm layers and the source model has {source_norm} "
                "normalisation (model.norm; auto builds group on a textured backdrop): set "
                "model.norm: batch to run it")
    if ("unlabelled" in method.reads and "source_model" in method.reads
            and source_classes is not None and list(source_classes) != list(target_classes)):
        return f"{method.name} adapts one classifier to both domains: their classes differ"
    return None


def make_inputs(method: Method, target: dict[str, torch.Tensor], params: Params, seed: int, *,
                source_model: Classifier | None = None, source: dict | None = None,
                features: dict | None = None, unlabelled: torch.Tensor | None = None,
                backdrop: str = "blank", num_classes: int | None = None) -> Inputs:
    """Inputs for `method`: the target shots and validation set, plus only what it reads
    (registry `reads`); the frozen features are computed from the source model if not given.
    backdrop: the prepared files' (scenario.backdrop), for model.norm auto. num_classes: the
    target's (default: from the labels given, which at zero target labels are none)."""
    if num_classes is None:
        labels = torch.cat([target["y_train"].reshape(-1), target["y_val"].reshape(-1)])
        if len(labels) == 0:
            raise ValueError("no target label to count the classes from: give num_classes")
        num_classes = int(labels.max()) + 1
    def need(what: str, value):
        if what in method.reads and value is None:
            raise ValueError(f"strategy {method.name} reads {what}, none was given")
        return value if what in method.reads else None

    if "features" in method.reads and features is None and source_model is not None:
        features = target_features(source_model.encoder, target, params.extract.batch_size)
    if method.needs_labels and len(target["y_train"]) == 0:
        raise UserError(f"strategy {method.name} needs target labels but prepare.shots=0")
    return Inputs(target=target,
                  architecture=architecture_from(params.model, target["x_val"].shape[1],
                                                 target["x_val"].shape[-1], backdrop),
                  num_classes=num_classes, seed=seed,
                  source_model=need("source_model", source_model),
                  source=need("source_data", source), features=need("features", features),
                  unlabelled=need("unlabelled", unlabelled), augment=params.augment.photo(),
                  selection=params.selection)


def new_classifier(inputs: Inputs) -> Classifier:
    """A randomly initialised encoder (from the global seed) with a zero-initialised head."""
    model = Classifier(inputs.architecture.build(), inputs.num_classes)
    model.head = new_head(model.encoder.out_features, inputs.num_classes)
    return model


def fit_on_target(model: Classifier, param_groups: list[dict], inputs: Inputs, cfg,
                  penalty=None) -> FitResult:
    """The shared case: one stream, the target shots, through `model`; selection on target val."""
    t = inputs.target
    return fit(model, [g for g in param_groups if g["params"]],
               [Stream(t["x_train"], t["y_train"], model)], (t["x_val"], t["y_val"], model),
               steps=cfg.steps, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
               shift_px=cfg.shift_px, seed=inputs.seed, penalty=penalty, photo=inputs.augment)


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def adapt(inputs: Inputs, cfg: Adaptation, term: Callable[[AdaptBatch], torch.Tensor],
          extra: nn.Module | None = None) -> tuple[Classifier, FitResult]:
    """Domain adaptation on the one training loop: start from the source model (encoder and
    head: source and target share their classes), minimise
        CE(source batch) + CE(target shots, if any) + loss_weight * term(features, logits)
    with an unlabelled target batch at every step; `extra` holds the term's own trainable
    modules (DANN's discriminator). With shots, the target validation set selects the
    checkpoint; with 0 shots, the label-free selection does (train.LabelFree, selection.py)."""
    source, t = inputs.source, inputs.target
    model = source_copy(inputs, "domain adaptation")
    both = nn.ModuleDict({"model": model, **({"extra": extra} if extra is not None else {})})
    both.to(t["x_val"].device)
    streams = [Stream(source["x_train"], source["y_train"], model)]
    if len(t["y_train"]):
        streams.append(Stream(t["x_train"], t["y_train"], model))
    if not len(t["y_train"]) and inputs.selection is None:
        raise ValueError("0 target labels: Inputs.selection (params.selection) says how to choose")
    label_free = None if len(t["y_train"]) else LabelFree(
        source["x_val"], source["y_val"], inputs.unlabelled, model, inputs.selection,
        inputs.seed, inputs.keep_checkpoints)
    result = fit(both, [{"params": list(both.parameters()), "lr": cfg.lr}], streams,
                 (t["x_val"], t["y_val"], model), steps=cfg.steps, batch_size=cfg.batch_size,
                 weight_decay=cfg.weight_decay, shift_px=cfg.shift_px, seed=inputs.seed,
                 photo=inputs.augment,
                 adapt=Adapt(inputs.unlabelled, model.encoder, model.head, term, cfg.loss_weight),
                 label_free=label_free)
    if result.oracle_state is not None:  # fit saw `both`: keep the classifier's own tensors
        result.oracle_state = _own(result.oracle_state)
    if result.checkpoints is not None:
        result.checkpoints = {step: _own(state) for step, state in result.checkpoints.items()}
    return model, result


def source_free(inputs: Inputs, cfg: Adaptation, params: Callable[[Classifier], list],
                term: Callable[[AdaptBatch], torch.Tensor], what: str
                ) -> tuple[Classifier, FitResult]:
    """Adaptation without the source data: start from the source model, train only
    `params(model)` on
        CE(target shots, if any) + loss_weight * term(unlabelled target batch)
    -- the source images are never trained on. With shots, the target validation set selects
    the checkpoint; with 0 shots the label-free selection does, as for every method
    (train.LabelFree: the source validation split checks that the task is not forgotten, the
    validators read the unlabelled pool)."""
    t = inputs.target
    model = source_copy(inputs, what)
    chosen = params(model)
    if not chosen:
        raise UserError(f"{what}: this model has none of the parameters it would train")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in chosen:
        p.requires_grad_(True)
    streams = [Stream(t["x_train"], t["y_train"], model)] if len(t["y_train"]) else []
    if not streams and inputs.selection is None:
        raise ValueError("0 target labels: Inputs.selection (params.selection) says how to choose")
    label_free = None if streams else LabelFree(
        inputs.source["x_val"], inputs.source["y_val"], inputs.unlabelled, model,
        inputs.selection, inputs.seed, inputs.keep_checkpoints, source_free=True)
    result = fit(model, [{"params": chosen, "lr": cfg.lr}], streams,
                 (t["x_val"], t["y_val"], model), steps=cfg.steps, batch_size=cfg.batch_size,
                 weight_decay=cfg.weight_decay, shift_px=cfg.shift_px, seed=inputs.seed,
                 photo=inputs.augment,
                 adapt=Adapt(inputs.unlabelled, model.encoder, model.head, term, cfg.loss_weight),
                 label_free=label_free)
    return model, result


def parameter_budget(model: nn.Module, trained: list[nn.Parameter]) -> dict:
    """How many weights a method trains, of how many, and the share: what must be stored beside
    the source model to rebuild its result (buffers such as BatchNorm statistics aside)."""
    total = sum(p.numel() for p in model.parameters())
    count = sum(p.numel() for p in trained)
    return {"trainable_params": count, "total_params": total,
            "trainable_share": round(count / total, 6) if total else 0.0}


def _own(state: dict) -> dict:
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}


def source_copy(inputs: Inputs, what: str) -> Classifier:
    """A copy of the source model (encoder and head) on the target's device, for a method that
    adapts it to the unlabelled target (`what`: its kind, for the messages): needs a non-empty
    pool and the same classes in both domains."""
    if len(inputs.unlabelled) < 2:
        raise UserError("the unlabelled target pool has fewer than 2 images (prepare.shots takes "
                        "every target train image): lower prepare.shots, or use a strategy that "
                        "needs no pool")
    source_model = inputs.source_model
    if source_model.head.out_features != inputs.num_classes:
        raise UserError(f"{what} needs the source and target classes to be the same "
                        f"({source_model.head.out_features} vs {inputs.num_classes}): set "
                        "data.source.classes and data.target.classes alike")
    torch.manual_seed(inputs.seed)
    model = new_classifier(inputs)
    model.load_state_dict(source_model.state_dict(), strict=True)
    return model.to(inputs.target["x_val"].device)


def label_free_scores(model: Classifier, inputs: Inputs) -> dict[str, float]:
    """Every validator's score of `model` (eval mode) on the inputs' anchors and source val."""
    return LabelFree(inputs.source["x_val"], inputs.source["y_val"], inputs.unlabelled,
                     model.eval(), inputs.selection, inputs.seed).scores()


def selection_metrics(outcome: Outcome) -> dict:
    """Target-val accuracy of the chosen model (None without target validation images), and
    which selection chose it; for label-free selection also its validators, its guard and, where
    there are validation labels, what target-val selection (the oracle) would have picked."""
    fit_result = outcome.fit
    if fit_result is None:  # no checkpoints: e.g. the features strategy's closed-form fit
        return {"val_accuracy": val_accuracy(outcome.info["val_accuracy"]), "selection": "none"}
    out = {"val_accuracy": val_accuracy(fit_result.best_val_accuracy),
           "best_step": fit_result.best_step, "selection": fit_result.selection}
    if fit_result.picked_step is not None:  # label-free
        rows = {r["step"]: r for r in fit_result.candidates()}
        out.update(label_free_record(rows[fit_result.best_step], rows[0], fit_result.guard),
                   picked_step=fit_result.picked_step)
        if fit_result.oracle_step is not None:
            out.update(oracle_step=fit_result.oracle_step,
                       oracle_val_accuracy=round(fit_result.oracle_val_accuracy, 4))
    return out


def val_accuracy(value: float | None) -> float | None:
    """A target-val accuracy for a metrics file: None where there was no validation image."""
    return None if value is None or math.isnan(value) else round(value, 4)


def label_free_record(chosen: dict, source: dict, guard: str | None) -> dict:
    """The metrics of a label-free choice: the shipped model's validator scores (export ranks
    methods by them), the source model's, and the guard's verdict."""
    from transferlab.validators import NAMES

    return {"snd": round(chosen["snd"], 6),
            "source_val_accuracy": round(chosen["source_accuracy"], 4),
            "validators": {n: round(chosen[n], 6) for n in NAMES},
            "source_validators": {n: round(source[n], 6) for n in NAMES},
            "guard": "accepted" if guard is None else f"kept the source model: {guard}"}
