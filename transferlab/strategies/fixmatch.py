"""Self-training with confidence-thresholded pseudo-labels on augmented target batches.

FixMatch (Sohn, Berthelot, Li, Zhang, Carlini, Cubuk, Kurakin, Zhang & Raffel, "FixMatch:
simplifying semi-supervised learning with consistency and confidence", NeurIPS 2020) applied to
the unlabelled target pool. The weakly augmented batch (the loop's random shift) gives
pseudo-labels q_i = argmax p(y | weak(u_i)) where max p >= tau; a strongly augmented view must
predict them:
    min_theta  L_CE(source) [+ L_CE(target shots)]
               + lambda * (1/B) sum_i 1[max p(y | weak(u_i)) >= tau] CE(q_i, p(y | strong(u_i)))
Strong augmentation here (digits, batch-wise): another random shift of up to 2 pixels, a
random contrast factor in [0.5, 1.5] and a cut-out square of a third of the side (RandAugment
+ Cutout in the paper; its colour and shear operations do not fit 16x16 digits).
"""

from __future__ import annotations

from pydantic import Field

from transferlab.options import Adaptation
from transferlab.search import ADAPTATION, Uniform
from transferlab.strategies import Inputs, Method, Outcome


class Options(Adaptation):
    threshold: float = Field(gt=0, lt=1)  # tau, the confidence a pseudo-label needs; paper 0.95


METHOD = Method("self-training", "FixMatch: confident pseudo-labels, strongly augmented target",
                Options, needs_labels=False,
                reads=frozenset({"source_model", "source_data", "unlabelled"}),
                search=ADAPTATION | {"threshold": Uniform(0.8, 0.99)})


def strong_augment(x, gen):
    """(N, C, H, W) float in [0, 1] -> the same, shifted, contrast-scaled and cut out."""
    import torch

    from transferlab.train import shift_batch

    n, _, h, w = x.shape
    x = shift_batch(x, 2, gen)
    contrast = (0.5 + torch.rand(n, 1, 1, 1, generator=gen)).to(x.device)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    side = max(1, h // 3)
    top = torch.randint(0, h - side + 1, (n,), generator=gen).to(x.device)
    left = torch.randint(0, w - side + 1, (n,), generator=gen).to(x.device)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    hole = ((rows >= top[:, None, None]) & (rows < top[:, None, None] + side)
            & (cols >= left[:, None, None]) & (cols < left[:, None, None] + side))
    return x.masked_fill(hole[:, None], 0).contiguous(memory_format=torch.channels_last)


def pseudo_label_loss(weak_logits, strong_logits, threshold: float):
    """Mean over the batch of 1[confidence >= tau] * CE(pseudo-label, strong prediction)."""
    import torch.nn.functional as F

    confidence, pseudo = weak_logits.detach().softmax(1).max(1)
    mask = (confidence >= threshold).float()
    return (F.cross_entropy(strong_logits, pseudo, reduction="none") * mask).mean()


def run(inputs: Inputs, cfg: Options) -> Outcome:
    from transferlab.transfer import adapt

    def term(b):
        strong_logits = b.forward(strong_augment(b.target_x, b.gen))
        return pseudo_label_loss(b.target_logits, strong_logits, cfg.threshold)

    model, result = adapt(inputs, cfg, term)
    return Outcome(model, result)
