"""Scores of a classifier on a labelled set, as plain floats ready for a metrics JSON."""

from __future__ import annotations

import numpy as np

DIGITS = 4  # rounded so metric JSON diffs stay readable


def score(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """Accuracy, macro-F1 and per-class accuracy (recall) over the classes 0..num_classes-1."""
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    labels = list(range(num_classes))
    per_class = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), DIGITS),
        "macro_f1": round(float(f1_score(y_true, y_pred, labels=labels, average="macro",
                                         zero_division=0)), DIGITS),
        "per_class_accuracy": {str(c): round(float(a), DIGITS) for c, a in enumerate(per_class)},
    }
