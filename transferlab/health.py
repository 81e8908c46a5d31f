"""Label-free health check: is a classifier applied to the target still using its classes?

Under a hard shift a transferred model can collapse: issue 29 measured the pipeline's models
predicting one class for 54-99 % of the target images at chance accuracy, and `export` shipped
one ("target val accuracy 0.1000") without a word. A collapse shows without any target label,
in the distribution of the classes a model predicts on target images (the predicted-class
marginal):

    top_share         the share of images given the most predicted class       1/K .. 1
    marginal_entropy  entropy of the marginal / ln K (1 = every class used     0 .. 1
                      equally often, 0 = one class for every image)
    kl_to_source_prior  KL(marginal || source class prior), nats               0 .. inf

and a model is `degenerate` when its top share or its marginal entropy passes the limits below.
`evaluate` checks every model on the unlabelled target pool, `export` checks the model it would
ship on the target validation images (their labels unused) and refuses a degenerate one unless
`health.allow_degenerate: true`. numpy only: the report stage imports this and starts without
torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from transferlab.errors import UserError

# Degenerate when the top class takes max(MIN_TOP_SHARE, TOP_SHARE_OVER_UNIFORM / K) or more of
# the images. 70 % in one class caps the accuracy on a balanced target at 0.3 + 1/K (40 % of ten
# classes) whatever the rest does. Measured (benchmarks/health_thresholds.py on 37 models of the
# blend tasks, December 2026): 0.7 with the entropy limit below flags all 4 models below chance
# + 20 points and none of the 15 within 5 points of their run's best; 0.5 flagged 3 of those
# (group-normalised models at 47-49 %, 53-64 % of their answers in one class):
MIN_TOP_SHARE = 0.7
# ... and with few classes half is ordinary (K = 2), so the limit is also 3x a class's share
# under uniform use; it reaches 1 at K = 3, where only the entropy rule below can fire.
TOP_SHARE_OVER_UNIFORM = 3.0
# Degenerate below this marginal entropy (/ ln K): K^0.6 classes in effective use, 4 of 10 or
# 1.5 of 2 (a 2-class model fires from about 86 % of the images in one class).
MIN_MARGINAL_ENTROPY = 0.6
# export: a model whose target validation accuracy is below chance (the share of the largest
# validation class: 1/K on the balanced default) + 2 binomial standard errors at chance is not
# clearly better than always answering one class (a guesser passes it about 1 time in 44).
CHANCE_STANDARD_ERRORS = 2.0
# NCE (transferability.nce) is uninformative when the source predictions explain less than
# this share of the target label entropy beyond what independent labels explain by chance.
NCE_MARGIN = 0.05
ROUND = 4  # decimals in a metrics file, as transferlab.metrics.DIGITS (not imported: export
#            and report do not load metrics.py)
PROBABILITY_TOLERANCE = 1e-3  # |row sum - 1| of float32 softmax outputs is ~1e-6
DOCS = 'see "Health check" in docs/troubleshooting.md'


def top_share_limit(num_classes: int) -> float:
    """The top-class share from which a K-class model is degenerate (1.0 for K <= 3)."""
    return min(1.0, max(MIN_TOP_SHARE, TOP_SHARE_OVER_UNIFORM / num_classes))


def problems(top_share: float, marginal_entropy: float, num_classes: int,
             top_class: str | None = None) -> list[str]:
    """Why a model with these numbers is degenerate, one phrase per rule it breaks ([] when
    healthy). Shared by evaluate's warnings, export's refusal and the report's banner."""
    found = []
    if top_share >= top_share_limit(num_classes):
        name = "" if top_class is None else f" ({top_class!r})"
        found.append(f"predicts one class{name} for {100 * top_share:.0f} % of the images "
                     f"(limit {100 * top_share_limit(num_classes):.0f} %)")
    if marginal_entropy < MIN_MARGINAL_ENTROPY:
        found.append(f"class-use entropy {marginal_entropy:.2f} of its maximum "
                     f"(limit {MIN_MARGINAL_ENTROPY:.2f})")
    return found


def _check_classes(num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 2:
        raise UserError(f"health check: num_classes={num_classes!r}: a classifier has at least "
                        "two classes: pass the number of target classes")


def predicted_classes(predictions, num_classes: int, what: str = "the predictions") -> np.ndarray:
    """Predicted class indices from (N,) class indices or (N, K) class probabilities (argmax;
    ties go to the lower class). Empty input, NaN, values that are no probabilities or class
    indices outside 0..K-1 are one line each."""
    _check_classes(num_classes)
    values = np.asarray(predictions)
    if values.ndim not in (1, 2) or values.shape[0] == 0:
        raise UserError(f"health check of {what}: no images to check (shape {values.shape}): "
                        "give the predictions of at least one target image")
    if values.ndim == 1:
        if not np.issubdtype(values.dtype, np.integer):
            raise UserError(f"health check of {what}: 1-D predictions must be class indices, "
                            f"got {values.dtype}: pass integer labels or (N, K) probabilities")
        if values.min() < 0 or values.max() >= num_classes:
            raise UserError(f"health check of {what}: class index {int(values.max())} is outside "
                            f"0..{num_classes - 1}: pass the target's number of classes")
        return values.astype(np.int64)
    if values.shape[1] != num_classes or not np.issubdtype(values.dtype, np.number):
        raise UserError(f"health check of {what}: probabilities of shape {values.shape} for "
                        f"{num_classes} classes: pass one column per class")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        raise UserError(f"health check of {what}: NaN or infinite probabilities (the model "
                        "diverged or its file is damaged): retrain it (`dvc repro`)")
    if values.min() < 0 or np.abs(values.sum(1) - 1).max() > PROBABILITY_TOLERANCE:
        raise UserError(f"health check of {what}: rows are not probabilities (each must be >= 0 "
                        "and sum to 1): pass softmax outputs, not logits")
    return values.argmax(1)


def class_prior(labels, num_classes: int) -> np.ndarray:
    """The share of each class 0..K-1 among `labels` (e.g. the source training labels)."""
    return np.bincount(predicted_classes(labels, num_classes, "the class labels"),
                       minlength=num_classes) / len(labels)


@dataclass(frozen=True)
class Health:
    images: int
    num_classes: int
    top_class: int  # index of the most predicted class (the lowest on a tie)
    top_share: float
    marginal_entropy: float  # entropy of the predicted-class marginal / ln K
    kl_to_source_prior: float | None  # nats; None without a prior, inf where it has a zero
    problems: tuple[str, ...]  # why it is degenerate; () when healthy

    @property
    def degenerate(self) -> bool:
        return bool(self.problems)

    def record(self) -> dict:
        """For a metrics file: degenerate and the numbers, rounded (KL left out when unknown)."""
        out = {"degenerate": self.degenerate, "top_share": round(self.top_share, ROUND),
               "marginal_entropy": round(self.marginal_entropy, ROUND)}
        if self.kl_to_source_prior is not None and math.isfinite(self.kl_to_source_prior):
            out["kl_to_source_prior"] = round(self.kl_to_source_prior, ROUND)
        return out

    def describe(self, classes=None) -> str:
        """"predicts one class ('3') for 90 % of the images (limit 70 %); class-use entropy
        0.14 of its maximum (limit 0.60)", or "healthy"."""
        if not self.degenerate:
            return "healthy"
        name = str(classes[self.top_class] if classes is not None else self.top_class)
        return "; ".join(problems(self.top_share, self.marginal_entropy,
                                  self.num_classes, name))


def check_health(predictions, num_classes: int, source_prior=None,
                 what: str = "the predictions") -> Health:
    """The health of a model from its predictions on target images, labels unused:
    `predictions` (N,) class indices or (N, K) probabilities; `source_prior` the K class shares
    of the source labels (class_prior), or None where the source has other classes."""
    predicted = predicted_classes(predictions, num_classes, what)
    marginal = np.bincount(predicted, minlength=num_classes) / predicted.size
    used = marginal[marginal > 0]
    entropy = float(min(1.0, max(0.0, -(used * np.log(used)).sum() / math.log(num_classes))))
    top = int(marginal.argmax())
    kl = None
    if source_prior is not None:
        prior = np.asarray(source_prior, dtype=np.float64)
        if prior.shape != (num_classes,) or not np.isfinite(prior).all() or prior.min() < 0 \
                or abs(prior.sum() - 1) > PROBABILITY_TOLERANCE:
            raise UserError(f"health check of {what}: the source prior {prior.shape} is not "
                            f"{num_classes} class shares summing to 1: pass class_prior(labels)")
        present = marginal > 0
        kl = (math.inf if (prior[present] == 0).any() else
              float((marginal[present] * np.log(marginal[present] / prior[present])).sum()))
    share = float(marginal[top])
    return Health(images=int(predicted.size), num_classes=num_classes, top_class=top,
                  top_share=share, marginal_entropy=entropy, kl_to_source_prior=kl,
                  problems=tuple(problems(share, entropy, num_classes)))


def check_models(on_target: dict[str, np.ndarray], num_classes: int,
                 source_prior: np.ndarray | None, where: str) -> dict[str, Health]:
    """check_health of every model from its predicted classes on the target images `where`
    names ("749 unlabelled target images"; their labels, if any, unused)."""
    return {name: check_health(pred, num_classes, source_prior, f"{name} on the {where}")
            for name, pred in sorted(on_target.items())}


def health_warning(name: str, health: Health, classes, where: str) -> str:
    """The one line evaluate prints for a degenerate model."""
    return (f"warning: {name} is degenerate on the {where}: "
            f"{health.describe(classes)}: its scores are no transfer result ({DOCS})")


def accuracy_floor(labels, num_classes: int) -> float:
    """The validation accuracy a model must reach to be clearly above chance: the share p of
    the largest class among `labels` (what always answering that class scores; 1/K when
    balanced) plus CHANCE_STANDARD_ERRORS binomial standard errors sqrt(p (1 - p) / n).
    100 balanced images of 10 classes: 0.1 + 2 x 0.03 = 0.16."""
    prior = class_prior(labels, num_classes)
    p, n = float(prior.max()), len(labels)
    return p + CHANCE_STANDARD_ERRORS * math.sqrt(p * (1 - p) / n)


# ---- transferability at its no-information value ------------------------------------------

def label_entropy(labels) -> float:
    """H(Y) in nats of the empirical label distribution."""
    y = np.asarray(labels)
    if y.size == 0:
        raise UserError("NCE check: no target labels: give the labels the score was computed on")
    shares = np.unique(y, return_counts=True)[1] / y.size
    return float(-(shares * np.log(shares)).sum())


def nce_no_information(labels, source_classes: int) -> float:
    """The NCE of a source whose predictions say nothing about these target labels: -H(Y)
    (transferability.nce's lower end) plus the first-order bias of the plug-in mutual
    information of independent variables, (Z - 1)(K - 1) / (2 n) nats (Miller 1955; Panzeri &
    Treves 1996), Z source classes, K target classes, n images. Independent predictions on 150
    balanced images of 10 classes measured 0.32 +- 0.04 nats above -ln 10 (300 draws); the
    formula gives 0.27."""
    y = np.asarray(labels)
    classes = np.unique(y).size
    return -label_entropy(y) + (source_classes - 1) * (classes - 1) / (2 * y.size)


def nce_uninformative(nce: float, labels, source_classes: int) -> bool:
    """A warning, not a refusal: the source predictions explain less than NCE_MARGIN of the
    label entropy beyond chance, NCE < nce_no_information + NCE_MARGIN x H(Y) (150 images of
    10 classes: below -ln 10 + 0.27 + 0.115; independent predictions stay below it 92 % of the
    time). NaN counts as uninformative."""
    return not (nce >= nce_no_information(labels, source_classes)
                + NCE_MARGIN * label_entropy(labels))


# How the check is scored where labels exist (the study, benchmarks/health_thresholds.py): two
# labelled facts it never reads. A model below chance + COLLAPSE_MARGIN has collapsed (the check
# should fire: a hit, else a miss); one within NEAR_BEST of the best model of its run (its study
# cell) is healthy by any account (the check should not fire: else a false alarm).
COLLAPSE_MARGIN = 0.20
NEAR_BEST = 0.05


def score_detector(rows, num_classes: int, fires=None) -> dict[str, int]:
    """Hits, misses and false alarms of the check over `rows` (dicts with accuracy, the best
    accuracy of their run, and top_share / marginal_entropy); `fires(row)` overrides the
    check's own limits (a grid of other limits in the benchmark)."""
    fires = fires or (lambda r: bool(problems(r["top_share"], r["marginal_entropy"], num_classes)))
    out = {"models": 0, "collapsed": 0, "hits": 0, "misses": 0, "near_best": 0,
           "false_alarms": 0}
    for r in rows:
        fired = fires(r)
        collapsed = r["accuracy"] < 1 / num_classes + COLLAPSE_MARGIN
        near = r["accuracy"] >= r["best"] - NEAR_BEST
        out["models"] += 1
        out["collapsed"] += collapsed
        out["hits"] += collapsed and fired
        out["misses"] += collapsed and not fired
        out["near_best"] += near
        out["false_alarms"] += near and fired
    return out
