"""MixVal (Hu, Liang, Jin, Yang & Li, "Mixed samples as probes for unsupervised model selection
in domain adaptation", NeurIPS 2023): probe the model with mixed target images. Each anchor x_i
is mixed with a seeded partner x_j, 0.55 x_i + 0.45 x_j, and should keep x_i's predicted class
(the larger share); the score is the mean of that accuracy over pairs the model puts in the
same class (intra-cluster) and over pairs it puts in different classes (inter-cluster), the
paper's interpolation consistency, both kinds. A model whose classes hold under interpolation
between its own clusters separates them with margin. Where one kind of pair does not occur
(a model that predicts one class has no inter-cluster pair) that kind counts 0: a collapsed
model scores at most 0.5. One forward pass of the n mixed anchors through the model
(View.probe)."""

from __future__ import annotations

from transferlab.validators import Validator, View

MIX = 0.55  # the paper's lambda: the first image's share


def score(view: View) -> float:
    import torch

    if view.probe is None or view.target_x is None or len(view.target_x) < 2:
        return float("nan")
    x, labels = view.target_x, view.target.argmax(1).cpu()
    partner = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    mixed = MIX * x.float() + (1 - MIX) * x[partner.to(x.device)].float()
    kept = view.probe(mixed).argmax(1).cpu() == labels
    same = labels == labels[partner]
    parts = [kept[group].float().mean().item() if group.any() else 0.0
             for group in (same, ~same)]
    return sum(parts) / 2


VALIDATORS = (Validator("mixval", "MixVal", "predicted classes that hold on mixed target images",
                        "Hu et al., NeurIPS 2023", "O(n) one forward pass of n mixed images",
                        score),)
