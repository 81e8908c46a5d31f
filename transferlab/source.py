"""The source side: pretraining the source model, and what its frozen encoder says of the target.

Pretraining uses the same loop as every strategy; its model selection uses the source's own
validation split, never target data.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import torch

from transferlab.io import UserError
from transferlab.models import Architecture, Classifier, Encoder, load_pretrained
from transferlab.params import Pretrain
from transferlab.train import FitResult, Stream, fit, predict_logits

DIGITS = 4


def read_weights(weights: str) -> dict[str, torch.Tensor]:
    """A torchvision-format resnet18 state dict: `imagenet` (torchvision's own weights enum and
    cache under $TORCH_HOME) or a local file, loaded with weights_only=True (no code runs)."""
    if weights == "imagenet":
        from torchvision.models import ResNet18_Weights

        spec = ResNet18_Weights.IMAGENET1K_V1
        try:
            return spec.get_state_dict(progress=False)
        except OSError as err:  # URLError is an OSError: no network, no cached file
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(spec.url).name
            raise UserError(f"ImageNet weights not found at {cache} and not downloadable ({err}):"
                            f" place the file from {spec.url} there (set TORCH_HOME to move it)"
                            ) from None
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"model.weights: {path} not found: give a resnet18 state dict (.pth), "
                        "imagenet or none")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        # weights_only refuses anything but tensors and plain containers: no code can run
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"model.weights: {path} is not a loadable state dict ({first_line})"
                        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"model.weights: {path} holds no state dict of tensors")
    return state


def pretrain(source: dict[str, torch.Tensor], architecture: Architecture, cfg: Pretrain,
             weights: str = "none") -> tuple[Classifier, FitResult]:
    """Train encoder + head on the source train split (from `weights` if given); keep the best
    epoch on source val."""
    x, y = source["x_train"], source["y_train"]
    torch.manual_seed(cfg.seed)
    model = Classifier(architecture.build(), int(y.max()) + 1)
    if weights != "none":
        try:
            copied, skipped = load_pretrained(model.encoder, read_weights(weights))
        except ValueError as err:
            raise UserError(f"model.weights={weights}: {err}") from None
        print(f"initialised from {weights}: copied {len(copied)} tensors"
              + (f"; skipped {len(skipped)}: {'; '.join(skipped)}" if skipped else ""))
    model.to(x.device)
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


def target_features(encoder: Encoder, target: dict[str, torch.Tensor], batch_size: int) -> dict:
    """Frozen features of the target shots and validation set, with their labels."""
    return {"train_features": extract_features(encoder, target["x_train"], batch_size),
            "val_features": extract_features(encoder, target["x_val"], batch_size),
            "y_train": target["y_train"].cpu().numpy(), "y_val": target["y_val"].cpu().numpy()}


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def feature_diagnostics(train_f: np.ndarray, y_train: np.ndarray, val_f: np.ndarray,
                        y_val: np.ndarray) -> dict[str, float | str | None]:
    """Cheap transferability signals of the frozen features, computed before any training.

    nearest_centroid_val_accuracy: classify target val by the closest class mean of the shots
        (cosine); high means the source features already separate the target classes.
    fisher_ratio: between-class over within-class variance of the shots' features (trace ratio).
        Undefined (None, with fisher_ratio_undefined saying why) when no class has two distinct
        shots: the within-class scatter is then 0 and the ratio was reported as ~4e14 at 1 shot.
    """
    classes = np.unique(y_train)
    centroids = np.stack([train_f[y_train == c].mean(0) for c in classes])
    nearest = classes[(_unit_rows(val_f) @ _unit_rows(centroids).T).argmax(1)]
    mean = train_f.mean(0)
    between = sum((y_train == c).sum() * ((centroids[i] - mean) ** 2).sum()
                  for i, c in enumerate(classes))
    within = sum(((train_f[y_train == c] - centroids[i]) ** 2).sum() for i, c in enumerate(classes))
    out = {"nearest_centroid_val_accuracy": round(float((nearest == y_val).mean()), DIGITS)}
    if within > 0:
        out["fisher_ratio"] = round(float(between / within), DIGITS)
    else:
        out["fisher_ratio"] = None
        out["fisher_ratio_undefined"] = ("no within-class scatter: every class has one shot (or "
                                         "identical ones); the ratio needs >= 2 shots per class")
    return out
