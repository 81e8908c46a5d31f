"""A corrupted target that installs offline: the default target, UCI digits, under Gaussian noise.

The "gaussian noise" corruption of ImageNet-C (Hendrycks & Dietterich, "Benchmarking neural
network robustness to common corruptions and perturbations", ICLR 2019), applied to
scikit-learn's 1,797 UCI digits: pixels scaled to [0, 1], x' = clip(x + n, 0, 1) with n drawn
from N(0, 0.25^2) per pixel (between ImageNet-C's severities 4 and 5, for 8x8 images whose 4-bit
values already round away fine detail), then stored as 0..255. The noise comes from a fixed
seed: the same bytes on every machine. Labels and order are UCI digits' own.

    uci_digits_noise  the target of the default source (mnist_5k) under a corruption: the task
                      of test-time and source-free adaptation (tent, shot, adabn, predict --adapt)
"""

from __future__ import annotations

from transferlab.datasets import Dataset, Where

DATASETS = (
    Dataset("uci_digits_noise", "1,797 UCI digits under Gaussian noise (sd 0.25 of full scale, "
            "ImageNet-C's corruption), 8x8, values 0..255", made_from=("uci_digits",)),
)

SIGMA = 0.25
SEED = 2019


def load(name: str, split: str, where: Where):
    import numpy as np

    from transferlab.datasets.embedded import load_uci_digits
    from transferlab.rawdata import RawDataset

    clean = load_uci_digits()
    x = clean.images.astype(np.float64) / clean.max_value
    noisy = np.clip(x + np.random.default_rng(SEED).normal(0.0, SIGMA, x.shape), 0.0, 1.0)
    return RawDataset(np.round(noisy * 255).astype(np.uint8), clean.labels, 255, clean.classes)
