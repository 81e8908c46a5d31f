"""Batch nuclear norm: the nuclear norm of the n x K matrix of target class probabilities,
divided by n (Cui et al., "Towards discriminability and diversity: batch nuclear-norm
maximization under label insufficient situations", CVPR 2020; a validator in Musgrave et al.
2022). Large when predictions are both confident and spread over the classes (the matrix is
then close to rank K with unit rows); at most sqrt(min(n, K) / n)."""

from __future__ import annotations

from transferlab.validators import Validator, View


def score(view: View) -> float:
    import torch

    p = view.target.float().softmax(1)
    if not len(p):
        return float("nan")
    return torch.linalg.svdvals(p).sum().item() / len(p)


VALIDATORS = (Validator("bnm", "BNM", "confident and diverse target predictions",
                        "Cui et al., CVPR 2020", "O(n K^2)", score),)
