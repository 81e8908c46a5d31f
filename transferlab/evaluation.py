"""Target-test scores of every strategy, the only code that reads the target test set."""

from __future__ import annotations

import numpy as np
import torch

from transferlab.metrics import DIGITS, score
from transferlab.models import Classifier
from transferlab.train import predict_logits

CONTROL = "scratch"


def predict(model: Classifier, x: torch.Tensor) -> np.ndarray:
    model.eval()
    return predict_logits(model, x).argmax(1).cpu().numpy()


def compare(predictions: dict[str, np.ndarray], y_test: np.ndarray, num_classes: int) -> dict:
    """Per strategy: accuracy, macro-F1, per-class accuracy, and gains over the scratch control
    (in accuracy points, same test set, same shots)."""
    scores = {name: score(y_test, pred, num_classes) for name, pred in sorted(predictions.items())}
    if CONTROL in scores:
        for s in scores.values():
            s["gain_over_scratch"] = round(s["accuracy"] - scores[CONTROL]["accuracy"], DIGITS)
    return scores


ORDER = ["source_only", "scratch", "finetune", "features", "structure", "joint"]
WHAT = {
    "source_only": "source model applied as is (no target labels)",
    "scratch": "random init, target shots only (the control)",
    "finetune": "parameter transfer: source weights, new head, fine-tuned",
    "features": "feature transfer: frozen source encoder + logistic regression",
    "structure": "structural transfer: first blocks copied, rest re-initialised",
    "joint": "knowledge transfer: shared encoder, L_source + λ·L_target",
}


def results_markdown(scores: dict) -> str:
    """The comparison table, in the order of the README (unknown strategies at the end)."""
    names = [n for n in ORDER if n in scores] + sorted(set(scores) - set(ORDER))
    lines = ["| strategy | what it does | accuracy % | macro-F1 % | gain over scratch (points) |",
             "|---|---|---:|---:|---:|"]
    for n in names:
        s = scores[n]
        gain = f"{100 * s['gain_over_scratch']:+.1f}" if "gain_over_scratch" in s else "n/a"
        lines.append(f"| {n} | {WHAT.get(n, '')} | {100 * s['accuracy']:.1f} | "
                     f"{100 * s['macro_f1']:.1f} | {gain} |")
    return "\n".join(lines) + "\n"
