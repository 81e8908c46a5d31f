"""The source side: pretraining the source model, and what its frozen encoder says of the target.

Pretraining uses the same loop as every strategy; its model selection uses the source's own
validation split, never target data.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from transferlab.models import Classifier, Encoder
from transferlab.params import Pretrain
from transferlab.train import FitResult, Stream, fit, predict_logits

DIGITS = 4


def pretrain(source: dict[str, torch.Tensor], widths: list[int], cfg: Pretrain
             ) -> tuple[Classifier, FitResult]:
    """Train encoder + head on the source train split; keep the best epoch on source val."""
    x, y = source["x_train"], source["y_train"]
    torch.manual_seed(cfg.seed)
    model = Classifier(x.shape[1], widths, int(y.max()) + 1).to(x.device)
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    result = fit(model, [{"params": list(model.parameters()), "lr": cfg.lr}],
                 [Stream(x, y, model)], (source["x_val"], source["y_val"], model),
                 steps=cfg.epochs * steps_per_epoch, batch_size=cfg.batch_size,
                 weight_decay=cfg.weight_decay, shift_px=cfg.shift_px, seed=cfg.seed,
                 eval_every=steps_per_epoch, desc="pretrain")
    return model, result


def extract_features(encoder: Encoder, x: torch.Tensor, batch_size: int) -> np.ndarray:
    encoder.eval()
    return predict_logits(encoder, x, batch_size).cpu().numpy().astype(np.float32)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def feature_diagnostics(train_f: np.ndarray, y_train: np.ndarray, val_f: np.ndarray,
                        y_val: np.ndarray) -> dict[str, float]:
    """Cheap transferability signals of the frozen features, computed before any training.

    nearest_centroid_val_accuracy: classify target val by the closest class mean of the shots
        (cosine); high means the source features already separate the target classes.
    fisher_ratio: between-class over within-class variance of the shots' features (trace ratio).
    """
    classes = np.unique(y_train)
    centroids = np.stack([train_f[y_train == c].mean(0) for c in classes])
    nearest = classes[(_unit_rows(val_f) @ _unit_rows(centroids).T).argmax(1)]
    mean = train_f.mean(0)
    between = sum((y_train == c).sum() * ((centroids[i] - mean) ** 2).sum()
                  for i, c in enumerate(classes))
    within = sum(((train_f[y_train == c] - centroids[i]) ** 2).sum() for i, c in enumerate(classes))
    return {"nearest_centroid_val_accuracy": round(float((nearest == y_val).mean()), DIGITS),
            "fisher_ratio": round(float(between / max(within, 1e-12)), DIGITS)}
