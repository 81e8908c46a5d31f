"""The source side: pretraining the source model, and what its frozen encoder says of the target.

Pretraining uses the same loop as every strategy; its model selection uses the source's own
validation split, never target data.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from transferlab.errors import UserError, one_line, show_path
from transferlab.metrics import DIGITS
from transferlab.models import (Architecture, Classifier, Encoder, load_pretrained,
                                set_input_normalisation)
from transferlab.params import Pretrain, is_weights_name
from transferlab.train import FitResult, Stream, TrainingDiverged, fit, predict_logits



def _not_weights(path: Path, err: BaseException | None) -> UserError:
    first_line = (str(err).splitlines() or [""])[0] if err else ""
    why = f" ({type(err).__name__}{': ' if first_line else ''}{one_line(first_line)[:100]})" \
        if err else ""
    return UserError(f"model.weights: {show_path(path)} is not a torch weights file{why}: give a "
                     "state dict saved with torch.save")


def read_weights(arch: str, weights: str) -> tuple[dict[str, torch.Tensor], tuple | None]:
    """A torchvision-format state dict of `arch` and the input normalisation (mean, std) it
    expects: a torchvision weights name (torchvision's enum and cache under $TORCH_HOME;
    imagenet = DEFAULT), or a local file loaded with weights_only=True (no code runs), which is
    taken to expect the normalisation of the arch's DEFAULT weights. A timm backbone reads a
    timm-format checkpoint file only (`_read_timm_weights`)."""
    from torchvision.models import get_model_weights

    from transferlab import backbones

    if backbones.get(arch).weights == "timm":
        return _read_timm_weights(arch, weights)

    enum = get_model_weights(arch)
    names = ["DEFAULT", *enum.__members__]
    if is_weights_name(weights):
        name = "DEFAULT" if weights == "imagenet" else weights
        if name not in names:
            raise UserError(f"model.weights={weights}: {arch} has no such weights: use one of "
                            f"{', '.join(names)}, a file path or none")
        spec = enum.DEFAULT if name == "DEFAULT" else enum[name]
        try:
            state = spec.get_state_dict(progress=False)
        except OSError as err:  # URLError is an OSError: no network, no cached file
            cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(spec.url).name
            raise UserError(f"model.weights={weights}: {show_path(cache)} not found and not "
                            f"downloadable ({one_line(str(err))[:80]}): place the file from "
                            f"{spec.url} there (set TORCH_HOME to move it)") from None
        return state, _normalisation(spec)
    return _read_weights_file(Path(weights)), _normalisation(enum.DEFAULT)


def _read_timm_weights(arch: str, weights: str) -> tuple[dict[str, torch.Tensor], tuple]:
    """A timm / Hugging Face checkpoint file of `arch` (model.safetensors, or a torch state dict
    such as pytorch_model.bin) and its published normalisation; nothing is downloaded."""
    from transferlab import backbones

    family = backbones.family_module(arch)
    url = backbones.get(arch).weights_url()
    if is_weights_name(weights):
        raise UserError(f"model.weights={weights}: {arch} reads its weights from a checkpoint "
                        f"file: download model.safetensors from {url} and give its path")
    path = Path(weights)
    if not path.exists() and not path.is_symlink():
        raise UserError(f"model.weights: {show_path(path)} not found: place model.safetensors "
                        f"from {url} there (nothing is downloaded)")
    if path.suffix == ".safetensors" and path.is_file():
        from transferlab.io import load_state_dict

        try:
            state = load_state_dict(path)[0]
        except UserError as err:  # its advice ("delete it, run dvc repro") is for the pipeline's
            why = re.sub(r":? delete it and run `dvc repro`.*$", "", str(err))  # own files
            raise UserError(f"model.weights: {why}: place model.safetensors from {url} "
                            "there") from None
        _check_finite(state, path)
    else:
        state = _read_weights_file(path)
    return state, family.normalisation(arch)


def _normalisation(spec) -> tuple | None:
    """The mean and std of a torchvision weights enum's own transforms."""
    transforms = spec.transforms()
    return (tuple(transforms.mean), tuple(transforms.std)) if hasattr(transforms, "mean") else None


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if path.is_dir():
        raise UserError(f"model.weights: {show_path(path)} is a folder: give the weights file "
                        "itself (a state dict in torchvision's format, .pth)")
    if not path.is_file():
        raise UserError(f"model.weights: {show_path(path)} not found: give a state dict in "
                        "torchvision's format (.pth), a weights name such as DEFAULT, or none")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "Unsupported class" in str(err):
            # weights_only=True refused a pickled object: loading it would run its code. Never
            # advise turning that off (torch's own message does); say how to save tensors only.
            raise UserError(f"model.weights: {show_path(path)} holds Python objects, not only "
                            "tensors, and is not loaded (it could run code): save just the tensors"
                            " with torch.save(model.state_dict(), path)") from None
        raise _not_weights(path, None) from None  # torch's text advises weights_only=False
    except Exception as err:  # noqa: BLE001 - foreign bytes make torch.load raise almost anything:
        raise _not_weights(path, err) from None  # KeyError (a text file), EOFError (empty), ...
    # A training checkpoint often nests the weights one level down
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise UserError(f"model.weights: {show_path(path)} holds no state dict of named tensors")
    _check_finite(state, path)
    return state


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    if bad := [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]:
        raise UserError(f"model.weights: {show_path(path)}: tensor {bad[0]} holds NaN or infinity")


def pretrain(source: dict[str, torch.Tensor], architecture: Architecture, cfg: Pretrain,
             weights: str = "none", photo=None) -> tuple[Classifier, FitResult]:
    """Train encoder + head on the source train split (from `weights` if given); keep the best
    epoch on source val. `photo`: train.PhotoAugment instead of cfg.shift_px's translation."""
    x, y = source["x_train"], source["y_train"]
    torch.manual_seed(cfg.seed)
    model = Classifier(architecture.build(), int(y.max()) + 1)
    if weights != "none":
        state, normalisation = read_weights(architecture.arch, weights)
        try:
            copied, skipped = load_pretrained(model.encoder, state)
        except ValueError as err:
            raise UserError(f"model.weights={weights}: {err}") from None
        if normalisation:
            set_input_normalisation(model.encoder, *normalisation)
        print(f"initialised from {weights}: copied {len(copied)} tensors"
              + (f"; skipped {len(skipped)}: {'; '.join(skipped)}" if skipped else ""))
    model.to(x.device)
    steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    try:
        result = fit(model, [{"params": list(model.parameters()), "lr": cfg.lr}],
                     [Stream(x, y, model)], (source["x_val"], source["y_val"], model),
                     steps=cfg.epochs * steps_per_epoch, batch_size=cfg.batch_size,
                     weight_decay=cfg.weight_decay, shift_px=cfg.shift_px, seed=cfg.seed,
                     eval_every=steps_per_epoch, photo=photo, desc="pretrain")
    except TrainingDiverged as err:
        raise UserError(f"pretrain: {err}: lower pretrain.lr or pretrain.weight_decay") from None
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
    if len(y_train) == 0:
        why = "no labelled target shot (prepare.shots 0): the diagnostics need >= 1 shot per class"
        return {"nearest_centroid_val_accuracy": None, "fisher_ratio": None,
                "fisher_ratio_undefined": why}
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
