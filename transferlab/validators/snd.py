"""Soft neighbourhood density (Saito, Kim, Teterwak, Sclaroff, Darrell & Saenko, "Tune it the
right way: unsupervised validation of domain adaptation via soft neighborhood density", ICCV
2021): the mean entropy of each target image's softmax-normalised similarity to the others,
in the space of L2-normalised class probabilities; higher = denser neighbourhoods. Alone it
prefers a collapsed model (every prediction alike is one dense neighbourhood): `fit` reads it
among checkpoints that keep their source accuracy. Quadratic in the images it reads, which is
why it reads the anchors (at most selection.pool_size), not the pool."""

from __future__ import annotations

from transferlab.validators import Validator, View


def density(logits, temperature: float = 0.05) -> float:
    """SND of these logits (rows: images)."""
    import torch
    import torch.nn.functional as F

    p = F.normalize(logits.float().softmax(1), dim=1)
    n = len(p)
    if n < 2:
        return float("nan")
    # rows of the n x n similarity matrix a chunk at a time: 2**26 values (256 MiB) at most
    rows = max(1, (1 << 26) // n)
    entropy = []
    for start in range(0, n, rows):
        sim = p[start:start + rows] @ p.T / temperature
        # an image is not its own neighbour
        sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = float("-inf")
        q = sim.softmax(1)
        entropy.append(-(q * q.clamp_min(1e-12).log()).sum(1))
    return torch.cat(entropy).mean().item()


def score(view: View) -> float:
    return density(view.target)


VALIDATORS = (Validator("snd", "SND", "dense neighbourhoods of target predictions",
                        "Saito et al., ICCV 2021", "O(n^2 K)", score),)
