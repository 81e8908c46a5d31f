"""Choosing without target labels (prepare.shots: 0): which checkpoint of a run, and whether an
adapted model may replace the source model at all.

The candidates of a label-free run are its evaluations *and the source model it starts from*
(step 0): "do not adapt" is always an answer. A checkpoint is eligible when its source
validation accuracy is at most `selection.max_source_drop` below the source model's; a
source-free method's (shot, tent: the family "source-free adaptation"), which never trains on a
source image and so drifts there by design, when it stays `selection.source_free_floor` above
chance (1/K): that still refuses a model that permuted its classes. Among the eligible ones
`selection.validator` picks (transferlab/validators/). The guard then compares
the pick with the source model: every validator of `selection.guard` must rise by more than
`selection.guard_margin` x |the source model's score|, or the source model is kept and the
reason is recorded. Pure functions of the recorded scores, so the study replays them on its
checkpoints and measures what each rule would have shipped (docs/selection.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

SOURCE_ACCURACY = "source_accuracy"
SOURCE_FREE = "source-free adaptation"  # the family (transferlab/strategies/) held to a floor


def source_floor(source_free: bool, classes: int, source_free_floor: float | None
                 ) -> float | None:
    """The source validation accuracy a candidate of a source-free method must keep: chance
    (1/`classes`) + `source_free_floor`; None (max_source_drop applies) for any other method,
    or where `source_free_floor` is None (source-free methods held to the drop as well)."""
    if not source_free or source_free_floor is None:
        return None
    return 1 / classes + source_free_floor


def eligible(scores: Mapping[str, float], source: Mapping[str, float],
             max_source_drop: float, floor: float | None = None) -> bool:
    """Whether a checkpoint kept its source accuracy: within `max_source_drop` of the source
    model's, or at least `floor` where one is given (source_floor)."""
    if floor is not None:
        return scores[SOURCE_ACCURACY] >= floor - 1e-9
    return scores[SOURCE_ACCURACY] >= source[SOURCE_ACCURACY] - max_source_drop - 1e-9


def pick(candidates: Sequence[Mapping[str, float]], validator: str, max_source_drop: float,
         floor: float | None = None) -> int:
    """Index of the chosen candidate: candidates[0] is the source model, always eligible; the
    highest `validator` score among the eligible ones (ties and NaN scores: the earlier
    candidate)."""
    source = candidates[0]
    best, best_score = 0, -math.inf
    for i, scores in enumerate(candidates):
        value = scores[validator]
        if (i == 0 or eligible(scores, source, max_source_drop, floor)) \
                and not math.isnan(value) and value > best_score:
            best, best_score = i, value
    return best


def guard(candidate: Mapping[str, float], source: Mapping[str, float], validators: Sequence[str],
          margin: float) -> str | None:
    """None when every validator of `validators` says `candidate` beats the source model by
    more than `margin` x |its source score|; else why not, in words."""
    short = [name for name in validators
             if not candidate[name] - source[name] > margin * abs(source[name])]
    if not short:
        return None
    return "not above the source model on " + ", ".join(
        f"{name} ({candidate[name]:.4g} vs {source[name]:.4g})" for name in short)


def decide(candidates: Sequence[Mapping[str, float]], validator: str, max_source_drop: float,
           guard_validators: Sequence[str], margin: float, floor: float | None = None
           ) -> tuple[int, int, str | None]:
    """(shipped, picked, why the source model is kept or None): the validator's pick, and the
    guard's verdict on it. `shipped` is 0 (the source model) when the guard declines."""
    picked = pick(candidates, validator, max_source_drop, floor)
    if picked == 0:
        return 0, 0, f"{validator} ranks the source model first"
    why = guard(candidates[picked], candidates[0], guard_validators, margin)
    return (0 if why else picked), picked, why
