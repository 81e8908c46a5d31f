"""Target-test scores of every strategy, the only code that reads the target test set."""

from __future__ import annotations

import numpy as np
import torch

from transferlab.metrics import DIGITS, score
from transferlab.models import Classifier
from transferlab.train import predict_logits


def predict(model: Classifier, x: torch.Tensor) -> np.ndarray:
    model.eval()
    return predict_logits(model, x).argmax(1).cpu().numpy()


BASELINES = ("source_only", "scratch")  # no transfer at all: the source as is / target only


def compare(predictions: dict[str, np.ndarray], y_test: np.ndarray, num_classes: int,
            target_labels: dict[str, int] | None = None) -> dict:
    """Per strategy: accuracy, macro-F1, per-class accuracy, gains over both baselines (in
    accuracy points, same test set, same shots), and negative transfer: below the best baseline
    that uses no more target labels (`target_labels`: labelled target images each one trained
    on; source_only uses none, scratch as many as the shots)."""
    scores = {name: score(y_test, pred, num_classes) for name, pred in sorted(predictions.items())}
    labels = target_labels or {}
    for name, s in scores.items():
        for base in BASELINES:
            if base in scores:
                s[f"gain_over_{base}"] = round(s["accuracy"] - scores[base]["accuracy"], DIGITS)
        fair = [b for b in BASELINES if b in scores and b != name
                and labels.get(b, 0) <= labels.get(name, 0)]
        if name not in BASELINES and fair:
            best = max(fair, key=lambda b: scores[b]["accuracy"])
            s["negative_transfer"] = s["accuracy"] < scores[best]["accuracy"]
            s["best_baseline"] = best
    return scores


SOURCE_ONLY = "source model applied as is (no target labels)"


def describe(name: str) -> str:
    """The one-line description of a strategy: the registry's, or the source-only baseline's."""
    from transferlab.strategies import METHODS

    base = name.split(" (")[0]  # '<method> (oracle)' rows describe their method
    return SOURCE_ONLY if base == "source_only" else (
        METHODS[base].description if base in METHODS else "")


def order(names) -> list[str]:
    """strategies.table_order: the report and the study use the same."""
    from transferlab.strategies import table_order

    return table_order(names)


def _points(value) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}"


def _health_cell(s: dict) -> str:
    """ok or ⚠ degenerate, with the top class's share of target predictions (blank if unknown;
    the entropy and the divergence from the source prior are in evaluate.json and the report)."""
    if "degenerate" not in s:
        return ""
    flag = "⚠ **degenerate**" if s["degenerate"] else "ok"
    return f"{flag} (top class {100 * s['top_share']:.0f} %)"


def results_markdown(scores: dict) -> str:
    """The comparison table, in registry order; skipped strategies say why; a model the health
    check flags (transferlab/health.py: its predicted classes on the unlabelled target) is
    marked ⚠ in its name and its health column."""
    lines = ["| strategy | what it does | selection | accuracy % | macro-F1 % "
             "| gain over scratch (points) | gain over source-only (points) | negative transfer "
             "| health |",
             "|---|---|---|---:|---:|---:|---:|:---:|:---:|"]
    for n in order(scores):
        s = scores[n]
        if s.get("skipped"):
            lines.append(f"| {n} | {describe(n)} | skipped: {s.get('reason', 'needs target labels')} "
                         "| | | | | | |")
            continue
        flag = {True: f"yes (below {s.get('best_baseline')})", False: ""}.get(
            s.get("negative_transfer"), "")
        name = f"⚠ {n}" if s.get("degenerate") else n
        kept = " (guard kept the source model)" if str(s.get("guard", "")).startswith("kept") else ""
        lines.append(f"| {name} | {describe(n)} | {s.get('selection', '')}{kept} "
                     f"| {100 * s['accuracy']:.1f} | {100 * s['macro_f1']:.1f} "
                     f"| {_points(s.get('gain_over_scratch'))} "
                     f"| {_points(s.get('gain_over_source_only'))} | {flag} | {_health_cell(s)} |")
    return "\n".join(lines) + "\n"


EMBED_PER_DOMAIN = 300  # points per domain in the 2-D picture: enough to see the clouds


def embed_2d(encoder, source_x: torch.Tensor, target_x: torch.Tensor
             ) -> tuple[np.ndarray, np.ndarray]:
    """Encoder features of (the first EMBED_PER_DOMAIN) source and target images, projected
    together onto their first two principal components (scikit-learn PCA): where the domains
    overlap in this picture, the encoder has aligned them."""
    from sklearn.decomposition import PCA

    encoder.eval()
    s = predict_logits(encoder, source_x[:EMBED_PER_DOMAIN]).cpu().numpy()
    t = predict_logits(encoder, target_x[:EMBED_PER_DOMAIN]).cpu().numpy()
    xy = PCA(n_components=2, svd_solver="full").fit_transform(np.concatenate([s, t]))
    return xy[:len(s)], xy[len(s):]
