"""Transferability scores: how well a source model should transfer to a target, before training.

Each score needs one forward pass of the source model over labelled target images (the shots
and the validation set: data the strategies may see; never the test set) and no training:

    score          reads                                    higher is better; range
    logme          frozen features F (n, D), labels y       log evidence per image; (-inf, inf)
    leep           source-head probabilities θ (n, Z), y    log-likelihood per image; (-inf, 0]
    nce            source-head argmax z = argmax θ, y       -H(Y|Z) in nats; [-H(Y), 0]
    hscore         frozen features F, y                     tr(cov(F)⁻¹ cov(E[F|y])); [0, K-1]
    hscore_shrunk  F, y: H-score with a shrunk cov(F)       (Ibrahim et al. 2022); [0, K-1]

LogME and H-score judge the encoder's features (what `features` and `finetune` start from);
LEEP and NCE judge the source classifier's predictions (its head included), so they see a
source trained on other classes differently. All computed in float64 numpy.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn.covariance import ledoit_wolf
from threadpoolctl import threadpool_limits  # installed with scikit-learn

from transferlab.metrics import DIGITS

SCORES = ("logme", "leep", "nce", "hscore", "hscore_shrunk")


def _one_hot_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    labels = np.asarray(labels)
    classes, index = np.unique(labels, return_inverse=True)
    return index.reshape(-1), classes.size


# ---- LogME -------------------------------------------------------------------------------

def logme_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | F, α, β) of the Bayesian linear model y = F w + ε, w ~ N(0, α⁻¹ I),
    ε ~ N(0, β⁻¹ I) (You et al. 2021, eq. 2), per image:

        L = D/2 log α + n/2 log β − n/2 log 2π − β/2 ‖F m − y‖² − α/2 ‖m‖² − ½ log |A|,
        A = α I + β FᵀF,  m = β A⁻¹ Fᵀ y.

    Written out directly, so a test can check that `logme` finds its maximum."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    logdet = np.linalg.slogdet(a)[1]
    value = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi)
             - beta / 2 * float(((f @ m - y) ** 2).sum()) - alpha / 2 * float(m @ m) - logdet / 2)
    return value / n


def logme_fit(f: np.ndarray, y: np.ndarray, max_iter: int = 100, tol: float = 1e-7,
              eig: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[float, float, float]:
    """(max evidence per image, α, β) for one target column y, by MacKay's fixed point
    (You et al. 2021, Algorithm 1), with FᵀF = V diag(σ²) Vᵀ computed once:
        γ = Σ βσᵢ² / (α + βσᵢ²),  α ← γ / ‖m‖²,  β ← (n − γ) / ‖F m − y‖².
    Iterates to a relative change of α/β below `tol` (the paper's code stops after 11 steps
    or at 1 %). The log-determinant uses D log α + Σ log(1 + βσᵢ²/α): for a direction the
    features do not span (σᵢ = 0, e.g. n < D) it adds nothing, as it must. `eig`: FᵀF's
    eigendecomposition when the caller has it (one for all K label columns)."""
    n, d = f.shape
    sigma2, v = eig if eig is not None else np.linalg.eigh(f.T @ f)
    sigma2 = np.clip(sigma2, 0.0, None)
    projected = v.T @ (f.T @ y)  # Vᵀ Fᵀ y
    tiny = 1e-12 * max(1.0, float(y @ y))  # keeps α, β finite for features that explain all/none
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        gamma = float((beta * sigma2 / (alpha + beta * sigma2)).sum())
        m = v @ (projected * beta / (alpha + beta * sigma2))
        m2, residual = float(m @ m), float(((f @ m - y) ** 2).sum())
        # n - gamma > 0 in exact arithmetic (gamma <= rank <= n); round-off with n << D can
        # push it below zero, and a negative beta has no logarithm
        new_alpha, new_beta = gamma / max(m2, tiny), max(n - gamma, 1e-12) / max(residual, tiny)
        new_alpha = max(new_alpha, 1e-12)  # γ = 0 when the features carry nothing
        converged = abs(new_alpha / new_beta - alpha / beta) <= tol * alpha / beta
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    m = v @ (projected * beta / (alpha + beta * sigma2))
    m2, residual = float(m @ m), float(((f @ m - y) ** 2).sum())
    evidence = (n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi) - beta / 2 * residual
                - alpha / 2 * m2 - 0.5 * float(np.log1p(beta * sigma2 / alpha).sum()))
    return evidence / n, alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME (You, Liu, Wang, Long 2021, "LogME: Practical Assessment of Pre-trained Models
    for Transfer Learning", ICML): the maximum over α, β of the log evidence per image of a
    Bayesian linear regression from the frozen features to each one-hot label column,
    averaged over the K classes. Higher: a linear model on these features explains the labels
    with less noise and smaller weights."""
    f = np.asarray(features, dtype=np.float64)
    index, k = _one_hot_labels(labels)
    eig = np.linalg.eigh(f.T @ f)  # shared by the K columns: 10 eigh of 128x128 cost ~40 ms
    return float(np.mean([logme_fit(f, (index == c).astype(np.float64), eig=eig)[0]
                          for c in range(k)]))


# ---- LEEP and NCE ------------------------------------------------------------------------

def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP (Nguyen, Hassner, Seeger, Archambeau 2020, "LEEP: A New Measure to Evaluate
    Transferability of Learned Representations", ICML, eq. 1-3). θ(x) is the source model's
    distribution over its Z classes on a target image:
        P̂(y, z) = 1/n Σ_{i: yᵢ = y} θ(xᵢ)_z,   P̂(y | z) = P̂(y, z) / Σ_y' P̂(y', z),
        LEEP = 1/n Σᵢ log Σ_z P̂(yᵢ | z) θ(xᵢ)_z,
    the mean log-likelihood of the "expected empirical predictor" that maps source classes to
    target classes through P̂(y | z). 0 when the source predictions determine the target label;
    −H(Y) (the label entropy) when they carry no information about it."""
    theta = np.asarray(source_probs, dtype=np.float64)
    index, k = _one_hot_labels(labels)
    n = index.size
    joint = np.zeros((k, theta.shape[1]))
    np.add.at(joint, index, theta)
    joint /= n
    marginal = joint.sum(0)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    eep = (theta @ conditional.T)[np.arange(n), index]
    return float(np.log(eep).mean())


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """NCE, negative conditional entropy (Tran, Nguyen, Hassner 2019, "Transferability and
    Hardness of Supervised Classification Tasks", ICCV, eq. 2-4): −H(Y | Z) in nats from the
    empirical joint distribution of source labels z and target labels y on the same images,
        −H(Y | Z) = Σ_{y,z} P̂(y, z) log P̂(y | z).
    Here z is the source classifier's predicted class on each target image (as in Nguyen et
    al. 2020, Section 5: the source task's "dummy labels"). 0 when z determines y, −H(Y) when
    z says nothing about y."""
    z_index, _ = _one_hot_labels(source_labels)
    y_index, k = _one_hot_labels(labels)
    counts = np.zeros((z_index.max() + 1, k))
    np.add.at(counts, (z_index, y_index), 1.0)
    joint = counts / counts.sum()
    conditional = joint / joint.sum(1, keepdims=True)
    present = joint > 0
    return float((joint[present] * np.log(conditional[present])).sum())


# ---- H-score ------------------------------------------------------------------------------

def hscore(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score (Bao, Li, Huang, Zheng, Zhang, Ji 2019, "An Information-Theoretic Approach to
    Transferability in Task Transfer Learning", ICIP, Definition 2):
        H(f) = tr( cov(f(X))⁻¹ cov(E[f(X) | Y]) ),
    the between-class covariance of the features measured in the metric of their total
    covariance: how much of the feature variance the label explains, summed over directions.
    Between 0 and K − 1. The inverse is a pseudo-inverse, as in the authors' code, but it drops
    directions whose variance is below 1e-10 of the largest (their rcond=1e-15 inverts
    round-off: features equal to the one-hot label gave 9.86 for K = 10 instead of 9). With
    fewer images than feature dimensions the total covariance is singular and the score is
    unreliable (Ibrahim et al. 2022 shrink the covariance for that reason)."""
    f = np.asarray(features, dtype=np.float64)
    index, k = _one_hot_labels(labels)
    centred = f - f.mean(0)
    class_means = np.stack([centred[index == c].mean(0) for c in range(k)])
    g = class_means[index]  # E[f | y] for every image, centred
    cov_f = centred.T @ centred / (len(f) - 1)
    cov_g = g.T @ g / (len(f) - 1)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g))


def hscore_shrunk(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score with a shrunk covariance (Ibrahim, Ponomareva, Mazumder 2022, "Newer is not
    always better: Rethinking transferability metrics, their peculiarities, stability and
    performance", ECML-PKDD, Section 4):
        H_α(f) = tr( ((1 − α) cov(f) + α (tr cov(f) / D) I)⁻¹ (1 − α) cov(E[f | Y]) ),
    α the Ledoit-Wolf shrinkage (scikit-learn's `ledoit_wolf`). The plain H-score inverts a
    covariance estimated from about as many images as dimensions (150 vs 128 here) and comes
    out near its maximum K − 1 for every source; shrinking keeps the inverse stable."""
    f = np.asarray(features, dtype=np.float64)
    index, k = _one_hot_labels(labels)
    centred = f - f.mean(0)
    shrunk_cov, alpha = ledoit_wolf(centred, assume_centered=True)  # covariances with 1/n
    class_means = np.stack([centred[index == c].mean(0) for c in range(k)])
    g = class_means[index]
    cov_g = g.T @ g / len(f)
    inverse = np.linalg.pinv(shrunk_cov, rcond=1e-10, hermitian=True)  # 0 for constant features
    return float(np.trace(inverse @ ((1 - alpha) * cov_g)))


def transferability(features: np.ndarray, source_probs: np.ndarray, labels: np.ndarray
                    ) -> dict[str, float]:
    """All the scores on the same labelled target images (rounded to 4 decimals).

    BLAS runs on one thread here: for 150 x 128 features, OpenBLAS's threads made the
    scores 4-9x slower (0.08-0.19 s vs 0.02 s, measured on the shared 2-core machine)."""
    with threadpool_limits(limits=1, user_api="blas"):
        values = {"logme": logme(features, labels), "leep": leep(source_probs, labels),
                  "nce": nce(np.asarray(source_probs).argmax(1), labels),
                  "hscore": hscore(features, labels),
                  "hscore_shrunk": hscore_shrunk(features, labels)}
    return {name: round(values[name], DIGITS) for name in SCORES}


def softmax_head(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """θ(x): the source classifier's linear head on its own frozen features, as probabilities."""
    logits = np.asarray(features, np.float64) @ np.asarray(weight, np.float64).T + bias
    logits -= logits.max(1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(1, keepdims=True)


def score_source(features: dict, head_weight: np.ndarray, head_bias: np.ndarray,
                 cells: int = 1) -> dict[str, float]:
    """The scores of a source model on the target shots + validation set, from the frozen
    features that `source.target_features` computes and the source head (its weight, bias).
    `cells` (feature_cells): positions per channel in the features. LEEP and NCE read the
    source head on the features as they are; LogME and the H-scores read the channel means:
    with small_cnn's flatten head (128 channels x 16 cells = 2,048 features) they would
    otherwise estimate a 2,048-dimensional covariance from ~150 images and saturate (measured:
    the H-score at its maximum for every ranking candidate, LogME's rank agreement +0.10, and
    scoring 4x slower than fine-tuning). With no labelled target image (prepare.shots and
    target_val_per_class 0) every score is None: each one reads target labels."""
    f = np.concatenate([features["train_features"], features["val_features"]])
    y = np.concatenate([features["y_train"], features["y_val"]])
    if len(y) == 0:
        return {name: None for name in SCORES}
    pooled = f.reshape(len(f), -1, cells).mean(2) if cells > 1 else f
    return transferability(pooled, softmax_head(f, head_weight, head_bias), y)


def feature_cells(encoder) -> int:
    """Positions per channel in an encoder's features: small_cnn's flatten head lays them out
    channel by channel over its models.FLATTEN_GRID^2 cells; every other encoder pools (1)."""
    if not getattr(encoder, "flatten", False):
        return 1
    from transferlab.models import FLATTEN_GRID

    return FLATTEN_GRID ** 2
