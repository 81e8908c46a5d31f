"""Source validation accuracy: training-domain validation (DomainBed's default model selection,
Gulrajani & Lopez-Paz, "In search of lost domain generalization", ICLR 2021). Reads no target
image at all: it asks whether the model still solves the task it transfers, not whether it
fits the target."""

from __future__ import annotations

from transferlab.validators import Validator, View


def score(view: View) -> float:
    if not len(view.source_y):
        return float("nan")
    return (view.source.argmax(1) == view.source_y).float().mean().item()


VALIDATORS = (Validator("source_accuracy", "source accuracy",
                        "accuracy on the source validation split",
                        "Gulrajani & Lopez-Paz, ICLR 2021", "O(m K), m source val images",
                        score),)
