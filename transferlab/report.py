"""The run's report: one self-contained HTML page built from the files the pipeline wrote.

Nothing is recomputed from a model: scores come from metrics/evaluate.json, curves from the
curve CSVs dvc.yaml names (pretrain's and one per strategy), confusion matrices and misclassified images from plots/confusion/<name>.csv
(one (actual, predicted) row per target test image, in the order of target_test.safetensors),
the study's intervals from study/metrics.json when the study has run. Charts are matplotlib
SVG written into the page and images are PNG data URIs, so the page fetches nothing and opens
offline. Same inputs give the same bytes: a fixed SVG id salt, no dates, no random ids.
No torch here: the report stage starts in about a second.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence

import numpy as np

from transferlab.health import problems

MAX_TILES = 200  # misclassified images shown per strategy (5 shots: 40-115 of 898 are wrong)
TILE_PX = 48  # on-screen size of one test image (16x16 at the default params, upscaled 3x)
SVG_SALT = "transferlab-report"  # matplotlib derives its SVG element ids from this


def ordered(names) -> list[str]:
    """evaluate's table order (strategies.table_order), so the page and the table agree."""
    from transferlab.strategies import table_order

    return table_order(names)


def colors_for(names) -> dict[str, str]:
    """One colour per strategy, the same in every chart (matplotlib's ten-colour cycle)."""
    return {name: f"C{i % 10}" for i, name in enumerate(ordered(names))}


# ---- charts: matplotlib figures as inline SVG ---------------------------------------------

def _figure(width_in: float, height_in: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    return Figure(figsize=(width_in, height_in), dpi=72, layout="constrained")


def svg_of(fig) -> str:
    """The figure as an <svg> element: text kept as text, ids from a fixed salt, no date."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": SVG_SALT, "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML


def accuracy_chart(scores: Mapping[str, Mapping], colors: Mapping[str, str]) -> str:
    names = [n for n in ordered(scores) if not scores[n].get("skipped")][::-1]  # barh: bottom-up
    acc = [100 * scores[n]["accuracy"] for n in names]
    fig = _figure(6.5, 0.35 * len(names) + 0.9)
    ax = fig.add_subplot()
    ax.barh(names, acc, color=[colors[n] for n in names])
    for y, a in enumerate(acc):
        ax.text(a + 0.3, y, f"{a:.1f}", va="center", fontsize=9)
    lo = max(0.0, min(acc) - 10)
    ax.set_xlim(lo, 100)
    ax.set_xlabel(f"target test accuracy % (axis from {lo:.0f})")
    ax.grid(axis="x", alpha=0.3)
    return svg_of(fig)


def curves_chart(curves: Mapping[str, Sequence[Mapping]], colors: Mapping[str, str]) -> str:
    """Validation accuracy against training step: the source model (its own validation split)
    and every target strategy (the target validation set), two panels."""
    fig = _figure(10, 3.6)
    source_ax, target_ax = fig.subplots(1, 2)
    for ax, names, title in ((source_ax, [n for n in curves if n == "pretrain"],
                              "pretraining on the source (source val)"),
                             (target_ax, [n for n in ordered(curves) if n != "pretrain"],
                              "target strategies (target val)")):
        for name in names:
            rows = [r for r in curves[name] if r["val_accuracy"] != ""]  # "": a skipped strategy
            if not rows:
                continue
            steps = [float(r["step"]) for r in rows]
            acc = [100 * float(r["val_accuracy"]) for r in rows]
            ax.plot(steps, acc, marker="o" if len(rows) < 3 else None, markersize=5, label=name,
                    color=colors.get(name, "black"))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("validation accuracy %")
        ax.grid(alpha=0.3)
        if ax.get_lines():  # none: every curve empty (no target val image: shots and val 0)
            ax.legend(fontsize=8, loc="lower right")
    return svg_of(fig)


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j] = test images of class i predicted as j."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (actual, predicted), 1)
    return counts


def confusion_chart(confusions: Mapping[str, np.ndarray], classes: Sequence[str]) -> str:
    """One heat map per strategy, colour = share of the true class, numbers = counts."""
    names = ordered(confusions)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig = _figure(3.4 * cols, 3.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    ticks = range(len(classes))
    for ax, name in zip(axes, names):
        counts = confusions[name]
        share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        for (i, j), c in np.ndenumerate(counts):
            if c:
                ax.text(j, i, str(c), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
        accuracy = 100 * np.trace(counts) / max(counts.sum(), 1)
        ax.set_title(f"{name} ({accuracy:.1f} %)", fontsize=10)
        ax.set_xticks(ticks, classes, fontsize=7)
        ax.set_yticks(ticks, classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    return svg_of(fig)


def study_chart(cells: Mapping[str, Mapping], colors: Mapping[str, str]) -> str:
    """Mean target-test accuracy against the label budget k, 95 % interval as a band (drawn
    up to 100 %: with 3 seeds a t-interval can pass it)."""
    fig = _figure(6.5, 3.8)
    ax = fig.add_subplot()
    by_name = study_rows(cells)
    for name in ordered(by_name):
        ks = sorted(by_name[name])
        cell = [by_name[name][k] for k in ks]
        color = colors.get(name, "black")
        ax.plot(ks, [100 * c["accuracy"] for c in cell], marker="o", markersize=4, label=name,
                color=color)
        banded = [(k, c) for k, c in zip(ks, cell) if c["ci_low"] is not None]  # 1 seed: none
        ax.fill_between([k for k, _ in banded], [100 * c["ci_low"] for _, c in banded],
                        [min(100.0, 100 * c["ci_high"]) for _, c in banded], color=color,
                        alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    ax.set_xticks(sorted({k for v in by_name.values() for k in v}))
    ax.xaxis.set_major_formatter("{x:.0f}")
    ax.set_xlabel("labelled target images per class k")
    ax.set_ylabel("target test accuracy %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return svg_of(fig)


def study_rows(cells: Mapping[str, Mapping]) -> dict[str, dict[int, Mapping]]:
    """study/metrics.json's "strategy@k<k>" cells as {strategy: {k: cell}}."""
    rows: dict[str, dict[int, Mapping]] = {}
    for key, cell in cells.items():
        name, _, k = key.rpartition("@k")
        rows.setdefault(name, {})[int(k)] = cell
    return rows


# ---- images -------------------------------------------------------------------------------

def png_data_uri(image: np.ndarray) -> str:
    """A (C, H, W) uint8 image as a PNG data URI (Pillow writes no time stamp)."""
    from PIL import Image

    pixels = image[0] if image.shape[0] == 1 else np.moveaxis(image[:3], 0, -1)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def misclassified_grid(images: np.ndarray, actual: np.ndarray, predicted: np.ndarray,
                       classes: Sequence[str]) -> str:
    """Tiles of the wrongly classified test images, in test-set order, true -> predicted."""
    wrong = np.flatnonzero(actual != predicted)
    tiles = [f'<figure><img src="{png_data_uri(images[i])}" alt="test image {i}" '
             f'title="test image {i}"><figcaption>{html.escape(classes[actual[i]])} &rarr; '
             f'<b>{html.escape(classes[predicted[i]])}</b></figcaption></figure>'
             for i in wrong[:MAX_TILES]]
    more = (f"<p>first {MAX_TILES} of {wrong.size} shown</p>" if wrong.size > MAX_TILES else "")
    return f'<div class="grid">{"".join(tiles)}</div>{more}'


SHEET_PER_CLASS = 2  # prepared images per class and domain on the contact sheet


def framing_words(scenario: Mapping[str, float]) -> str:
    """metrics/scenario.json's framing_* numbers in prepare's words ("crop bbox, scale none,
    bottleneck 8 px, 1 channel"); empty for a scenario written before they were recorded."""
    if "framing_crop_bbox" not in scenario:
        return ""
    size = int(scenario.get("framing_bottleneck_size", 0))
    channels = int(scenario.get("framing_channels", 1))
    return (f"crop {'bbox' if scenario['framing_crop_bbox'] else 'none'}, "
            f"scale {'max' if scenario.get('framing_scale_max') else 'none'}, "
            f"{f'bottleneck {size} px' if size else 'no bottleneck'}, "
            f"{channels} channel{'s' if channels > 1 else ''}")


def contact_sheet(domains: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence[str]]],
                  scenario: Mapping[str, float]) -> str:
    """The first SHEET_PER_CLASS prepared images of each class of each domain ({"source": (images,
    labels, classes), "target": ...}), one row per domain, as the model sees them, with the
    framing prepare chose: the first thing to look at when a result is near chance."""
    rows = []
    for role, (images, labels, classes) in domains.items():
        labels = np.asarray(labels)
        picked = [int(i) for c in range(len(classes))
                  for i in np.flatnonzero(labels == c)[:SHEET_PER_CLASS]]
        tiles = "".join(f'<figure><img src="{png_data_uri(np.asarray(images[i]))}" '
                        f'alt="{role} image {i}"><figcaption>{html.escape(classes[labels[i]])}'
                        "</figcaption></figure>" for i in picked)
        rows.append(f"<p><b>{role}</b> ({len(labels)} images)</p><div class=\"grid\">{tiles}</div>")
    said = framing_words(scenario)
    return (f"<p>As the models see them (prepare's framing: {html.escape(said or 'not recorded')}; "
            "docs/datasets.md, Framing). The two rows should look alike in everything but the "
            "shift you mean to study.</p>" + "".join(rows))


# ---- the page -----------------------------------------------------------------------------

STYLE = f"""
body {{ font-family: sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.2em; margin-top: 1.8em; }}
table {{ border-collapse: collapse; margin: 8px 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 3px 10px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
svg {{ max-width: 100%; height: auto; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 4px; }}
figure {{ margin: 0; text-align: center; font-size: 11px; }}
figure img {{ width: {TILE_PX}px; height: {TILE_PX}px; image-rendering: pixelated;
  background: #000; display: block; }}
summary {{ cursor: pointer; margin: 6px 0; }}
.alert {{ border: 2px solid #b00020; background: #fdecea; padding: 8px 14px; margin: 12px 0; }}
tr.flagged td {{ background: #fdecea; }}
"""


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _interval(cell: Mapping) -> str:
    """" [low, high]", or nothing where one seed gives no interval (null in the JSON)."""
    if cell.get("ci_low") is None:
        return ""
    return f" [{_pct(cell['ci_low'])}, {_pct(cell['ci_high'])}]"


def _gain(s: Mapping, base: str) -> str:
    return "n/a" if (g := s.get(f"gain_over_{base}")) is None else f"{100 * g:+.1f}"


def _health(s: Mapping) -> str:
    """The health cell: top class share, flagged or ok (empty for an older evaluate.json)."""
    if s.get("degenerate") is None:
        return ""
    share = "" if s.get("top_share") is None else f" (top class {_pct(s['top_share'])} %)"
    return f"<b>&#9888; degenerate</b>{share}" if s["degenerate"] else f"ok{share}"


def health_banner(scores: Mapping[str, Mapping], num_classes: int) -> str:
    """A box at the top of the page naming every model the label-free health check flagged
    and why; nothing when none is."""
    flagged = [n for n in ordered(scores) if scores[n].get("degenerate")]
    if not flagged:
        return ""
    why = {n: "; ".join(problems(s["top_share"], s["marginal_entropy"], num_classes))
           if s.get("top_share") is not None and s.get("marginal_entropy") is not None else ""
           for n, s in ((n, scores[n]) for n in flagged)}
    items = "".join(f"<li><b>{html.escape(n)}</b>: "  # why: recomputed from rounded numbers
                    f"{html.escape(why[n] or 'flagged by evaluate')}</li>" for n in flagged)
    return ('<div class="alert" role="alert"><p><b>&#9888; The label-free health check flagged '
            f"{len(flagged)} model{'s' if len(flagged) > 1 else ''}</b>: on the unlabelled target "
            "images each uses too few of its classes (one class for most images, or a few for "
            "all), so its scores are no transfer result. <code>export</code> refuses to ship such a model unless "
            "<code>health.allow_degenerate: true</code> (docs/troubleshooting.md, "
            f"&ldquo;Health check&rdquo;).</p><ul>{items}</ul></div>")


def results_table(scores: Mapping[str, Mapping], errors: Mapping[str, int]) -> str:
    """evaluate.json as a table: a skipped strategy says why; &#9888; marks negative transfer
    (below the best baseline that uses no more target labels) and, in a tinted row, a model
    the health check flagged."""
    rows = []
    for n in ordered(scores):
        s = scores[n]
        if s.get("skipped"):
            rows.append(f"<tr><td>{html.escape(n)}</td><td colspan=\"8\" style=\"text-align:left\">"
                        f"skipped: {html.escape(str(s.get('reason', 'needs target labels')))}"
                        "</td></tr>")
            continue
        flag = (f"&#9888; below {html.escape(str(s.get('best_baseline')))}"
                if s.get("negative_transfer") else "")
        row, name = (('<tr class="flagged">', f"&#9888; {html.escape(n)}") if s.get("degenerate")
                     else ("<tr>", html.escape(n)))
        guard = (f"<br><small>guard: {html.escape(str(s['guard']))}</small>"
                 if s.get("guard") else "")
        rows.append(f"{row}<td>{name}</td><td>{html.escape(str(s.get('selection', '')))}{guard}"
                    f"</td><td>{_pct(s['accuracy'])}</td><td>{_pct(s['macro_f1'])}</td>"
                    f"<td>{_gain(s, 'scratch')}</td><td>{_gain(s, 'source_only')}</td>"
                    f"<td>{flag}</td><td>{_health(s)}</td><td>{errors.get(n, '')}</td></tr>")
    return ("<table><tr><th>strategy</th><th>selection</th><th>accuracy %</th><th>macro-F1 %</th>"
            "<th>gain over scratch (points)</th><th>gain over source-only (points)</th>"
            "<th>negative transfer</th><th>health (unlabelled target)</th><th>misclassified</th>"
            "</tr>" + "".join(rows) + "</table>")


def study_table(cells: Mapping[str, Mapping]) -> str:
    by_name = study_rows(cells)
    ks = sorted({k for v in by_name.values() for k in v})
    head = "".join(f"<th>k = {k}</th>" for k in ks)
    body = "".join(
        f"<tr><td>{html.escape(n)}</td>" + "".join(
            f"<td>{_pct(c['accuracy'])}{_interval(c)}"
            f"{' &#9888;' if c.get('negative_transfer') else ''}</td>" if (c := by_name[n].get(k))
            else "<td></td>" for k in ks) + "</tr>" for n in ordered(by_name))
    return f"<table><tr><th>strategy</th>{head}</tr>{body}</table>"


def render_report(scores: Mapping[str, Mapping], scenario: Mapping[str, int],
                  curves: Mapping[str, Sequence[Mapping]],
                  confusions: Mapping[str, tuple[np.ndarray, np.ndarray]],
                  images: np.ndarray, classes: Sequence[str],
                  study: Mapping | None = None,
                  prepared: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence[str]]] | None = None
                  ) -> str:
    """The whole page. `confusions`: {name: (actual, predicted)} over the target test images,
    in the order of `images`; `study`: study/metrics.json, or None before the study has run;
    `prepared`: contact_sheet's domains (source val and target test images)."""
    matrices = {n: confusion_matrix(a, p, len(classes)) for n, (a, p) in confusions.items()}
    errors = {n: int((a != p).sum()) for n, (a, p) in confusions.items()}
    colors = colors_for(set(scores) | set(confusions) | set(study_rows(study["cells"]) if study
                                                             else ()))
    summary = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in scenario.items())
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>transferlab report</title>", f"<style>{STYLE}</style></head><body>",
        "<h1>transferlab: transfer learning report</h1>",
        health_banner(scores, len(classes)),  # first thing under the title: nobody misses it
        f"<p>Scenario (metrics/scenario.json): {html.escape(summary)}. Every score is on the "
        f"{len(images)} held-out target test images; one run, one seed.</p>",
        *(["<h2>Prepared images: source and target</h2>", contact_sheet(prepared, scenario)]
          if prepared else []),
        "<h2>Results</h2>", results_table(scores, errors), accuracy_chart(scores, colors)]
    if study is not None:
        parts += ["<h2>Study: label budget and seeds (95 % intervals)</h2>",
                  "<p>Target-test accuracy %, mean over seeds [95 % Student-t interval]; "
                  "&#9888; = negative transfer: the interval of the gain over the best baseline that "
                  "uses no more target labels (source-only at k = 0; the better of source-only "
                  "and scratch from k = 1) lies entirely below zero, as in study/report.md.</p>",
                  study_table(study["cells"]), study_chart(study["cells"], colors)]
    parts += ["<h2>Training curves</h2>", curves_chart(curves, colors),
              "<h2>Confusion matrices (target test)</h2>",
              confusion_chart(matrices, classes),
              "<h2>Misclassified target test images</h2>",
              "<p>true class &rarr; <b>predicted</b>, in test-set order.</p>"]
    best = min(ordered(confusions), key=errors.get)  # its grid starts open
    for name in ordered(confusions):
        actual, predicted = confusions[name]
        parts.append(f"<details{' open' if name == best else ''}><summary>"
                     f"{html.escape(name)}: {errors[name]} misclassified</summary>"
                     f"{misclassified_grid(images, actual, predicted, classes)}</details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
