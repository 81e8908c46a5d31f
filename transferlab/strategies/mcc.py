"""MCC: minimum class confusion on the unlabelled target predictions.

Jin, Wang, Long & Wang, "Minimum class confusion for versatile domain adaptation", ECCV 2020.
With Y = softmax(z / T) for a target batch (B x K), uncertainty weights
w_i = B (1 + exp(-H(Y_i))) / sum_j (1 + exp(-H(Y_j))), the class correlation C = Y^T diag(w) Y
and its row-normalised version C~ (each row sums to 1),
    min_theta  L_CE(source) [+ L_CE(target shots)]  +  lambda * (sum_jk C~_jk - sum_j C~_jj) / K
i.e. the off-diagonal mass: the target predictions should not confuse classes.
"""

from __future__ import annotations

from pydantic import Field

from transferlab.options import Adaptation
from transferlab.search import ADAPTATION, Uniform
from transferlab.strategies import Inputs, Method, Outcome


class Options(Adaptation):
    temperature: float = Field(gt=0, le=100)  # T of the probability rescaling; the paper: 2.5


METHOD = Method("domain adaptation", "MCC: minimum class confusion on target predictions",
                Options, needs_labels=False,
                reads=frozenset({"source_model", "source_data", "unlabelled"}),
                search=ADAPTATION | {"temperature": Uniform(1.0, 5.0)})


# Below this T, softmax(logits / T) in float32 saturates to exact 0s and 1s for typical logit
# gaps (a few units): a class no image of the batch predicts has a zero row in C, and C~ = 0/0.
# Measured on the tests' tiny data: T = 0.02 trained, T = 0.001 diverged at step 1.
MIN_STABLE_TEMPERATURE = 0.05


def why_diverged(cfg: Options) -> str | None:
    """The knob at fault when training diverged (strategies.divergence_advice): a tiny T."""
    if cfg.temperature < MIN_STABLE_TEMPERATURE:
        return (f"transfer.mcc.temperature={cfg.temperature:g} is too small: the softmax of "
                "logits / T saturates to exact 0s and 1s and the class-confusion matrix divides "
                f"0 by 0: raise it to {MIN_STABLE_TEMPERATURE} or more (the paper uses 2.5)")
    return None


def class_confusion(logits, temperature: float):
    probs = (logits / temperature).softmax(1)  # (B, K)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    weight = 1 + (-entropy).exp()
    weight = len(probs) * weight / weight.sum()  # (B,)
    confusion = (probs * weight[:, None]).T @ probs  # (K, K)
    confusion = confusion / confusion.sum(1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / len(confusion)


def run(inputs: Inputs, cfg: Options) -> Outcome:
    from transferlab.transfer import adapt

    model, result = adapt(inputs, cfg, lambda b: class_confusion(b.target_logits, cfg.temperature))
    return Outcome(model, result)
