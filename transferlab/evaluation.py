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
