"""Export: the strategy chosen on target validation, as an ONNX file that carries its class
names and preprocessing.

The choice reads each strategy's target-validation accuracy (metrics/transfer/*.json), never a
test score: the exported model is picked the way a user without the test set would pick it.
Ties go to the strategy listed first (dvc.yaml's order). The chosen model then passes the
health gate (`ship_verdict`) or nothing is exported.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Mapping

import numpy as np
import torch

from transferlab.errors import UserError
from transferlab.health import DOCS, accuracy_floor, check_health
from transferlab.models import Classifier

OPSET = 17  # onnxruntime 1.16+ runs it; every op the encoders use exists there


def choose(val_metrics: Mapping[str, Mapping], validator: str) -> tuple[str, str]:
    """The strategy to export and what chose it (the first one on a tie). With target labels:
    the best target-validation accuracy. When every candidate was chosen without target labels
    (prepare.shots: 0), no target label chooses here either: the highest `validator` score
    (selection.validator, transferlab/validators/) of each method's shipped model. Each of
    those is already guarded (transferlab/selection.py): a method whose adapted model the
    validators did not prefer to the source model holds the source model, and says so."""
    names, by = ranked(val_metrics, validator)
    return names[0], by


def label_free(metrics: Mapping) -> bool:
    """Whether a strategy's metrics record a choice made without target labels."""
    return "validators" in metrics and metrics.get("selection") != "target-val"


def ranked(val_metrics: Mapping[str, Mapping], validator: str) -> tuple[list[str], str]:
    """Every candidate, best first by `choose`'s rule (ties in the given order), and the rule's
    name: export ships the first one the health check passes."""
    if not val_metrics:
        raise ValueError("no strategy to choose from")
    order = list(val_metrics)
    if all(label_free(m) for m in val_metrics.values()):
        def key(n):  # a validator that could not score (NaN) ranks its method last
            score = float(val_metrics[n]["validators"][validator])
            return math.inf if math.isnan(score) else -score
        from transferlab.validators import VALIDATORS

        by = f"source-val+{VALIDATORS[validator].label}"  # as each method's own selection
    else:
        def key(n):
            return -float(val_metrics[n]["val_accuracy"])
        by = "target-val"
    return sorted(order, key=lambda n: (key(n), order.index(n))), by


def onnx_bytes(model: Classifier, input_shape: tuple[int, int, int],
               metadata: Mapping[str, str]) -> bytes:
    """The model as ONNX: input "image" (N, C, H, W) float32 in [0, 1], output "logits" (N, K),
    any batch size; `metadata` in the file's metadata_props (sorted: the same bytes every run).

    TorchScript-based exporter (dynamo=False): torch's newer exporter needs onnxscript and
    gives the same graph for these plain conv/linear models.
    """
    import onnx

    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice
        # the feature-map size (models.grid_pool) is fixed by the model's input size: a
        # constant in the graph is what is meant
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(model, (torch.zeros(1, *input_shape),), buffer, dynamo=False,
                          input_names=["image"], output_names=["logits"], opset_version=OPSET,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    for key in sorted(metadata):
        proto.metadata_props.add(key=key, value=metadata[key])
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def ship_verdict(name: str, predicted: np.ndarray, y_val: np.ndarray | None, classes,
                 allow_degenerate: bool, where: str = "target val images"
                 ) -> tuple[dict, str | None]:
    """The health gate of the model to ship, from its predicted classes on the target
    validation images: the label-free health check (their labels unused) and, where they are
    labelled, accuracy >= health.accuracy_floor (chance + 2 standard errors). A model failing
    either is refused with one line naming `health.allow_degenerate`; with it allowed, the
    warning line to print comes back instead. Returns ({degenerate, top_share, above_chance}
    for the summary JSON, the warning or None). `where`: what the images are (the unlabelled
    target images where there is no val image)."""
    health = check_health(predicted, len(classes), what=f"{name} on the {where}")
    faults = [health.describe(classes)] if health.degenerate else []
    record = {"degenerate": health.degenerate, "top_share": health.record()["top_share"]}
    if y_val is not None and len(y_val):
        y_val = np.asarray(y_val)
        accuracy = float((np.asarray(predicted) == y_val).mean())
        floor = accuracy_floor(y_val, len(classes))
        record["above_chance"] = accuracy >= floor
        if accuracy < floor:
            faults.append(f"target val accuracy {accuracy:.4f} is not clearly above chance "
                          f"(needs >= {floor:.4f}" + (", more than all of them right: too few "
                                                     "to tell, raise prepare.target_val_per_class)"
                                                     if floor > 1 else ")"))
    if not faults:
        return record, None
    what = f"{name} on the {health.images} {where}: {'; '.join(faults)}"
    if not allow_degenerate:
        raise UserError(f"export: refusing to ship {what}; nothing was exported ({DOCS}): "
                        "improve the transfer, or set health.allow_degenerate: true in "
                        "params.yaml to ship it anyway")
    return record, f"warning: exporting {what}, because health.allow_degenerate is true"


def export_metadata(strategy: str, val_accuracy: float | None, classes, preprocess: str,
                    health: str) -> dict[str, str]:
    """`health`: "ok", or the warning a model shipped with health.allow_degenerate carries;
    val_accuracy None: there was no target val image ("none")."""
    return {"strategy": strategy,
            "target_val_accuracy": "none" if val_accuracy is None else f"{val_accuracy:.4f}",
            "classes": json.dumps(list(classes)), "preprocess": preprocess, "health": health,
            "input": "image: float32 (N, C, H, W) in [0, 1], after `preprocess` (transferlab's "
                     "prepare alignment); output: logits (N, classes)"}
