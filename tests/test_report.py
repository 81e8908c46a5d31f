"""The report stage: one self-contained page from the pipeline's files, the same bytes every run,
no torch, bad input stopped with one line. (Opened in a browser: tests/test_browser.py.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT
from transferlab.io import save_arrays, write_csv, write_json
from transferlab.report import confusion_matrix, render_report

CLASSES = ["zero", "one", "two"]
STUDY = {"cells": {f"{name}@k{k}": {"accuracy": acc, "ci_low": acc - 0.05, "ci_high": acc + 0.08,
                                    "negative_transfer": name == "source_only" and k == 2}
                   for name, acc in (("scratch", 0.7), ("finetune", 0.9), ("source_only", 0.8))
                   for k in (1, 2)},
         "layers": {}}


CURVES = ("pretrain", "scratch", "finetune")
HEALTH = {"scratch": {"degenerate": True, "top_share": 0.7, "marginal_entropy": 0.5,
                      "kl_to_source_prior": 0.3}}


def make_inputs(root: Path, n: int = 30) -> dict[str, Path]:
    """A run's files on tiny made-up data: 3 classes, n test images, 2 strategies + source."""
    rng = np.random.default_rng(0)
    actual = np.arange(n) % len(CLASSES)
    paths = {"evaluate": root / "metrics/evaluate.json", "scenario": root / "metrics/scenario.json",
             "curves": root / "plots/curves", "confusion": root / "plots/confusion",
             "test": root / "data/target_test.safetensors"}
    scores = {}
    for name, wrong in (("source_only", 9), ("scratch", 6), ("finetune", 2)):
        predicted = actual.copy()
        predicted[:wrong] = (actual[:wrong] + 1) % len(CLASSES)
        write_csv(paths["confusion"] / f"{name}.csv", ["actual", "predicted"],
                  list(zip(actual.tolist(), predicted.tolist())))
        scores[name] = {"accuracy": round(1 - wrong / n, 4), "macro_f1": round(1 - wrong / n, 4),
                        "gain_over_scratch": round((6 - wrong) / n, 4),
                        # the health check: scratch flagged (one class for 70 % of the images)
                        **HEALTH.get(name, {"degenerate": False, "top_share": 0.4,
                                            "marginal_entropy": 0.97})}
    write_json(paths["evaluate"], scores)
    write_json(paths["scenario"], {"target_test": n, "shots": 2})
    for name in CURVES:
        write_csv(paths["curves"] / f"{name}.csv",
                  ["step", "train_loss", "val_loss", "val_accuracy"],
                  [[s, 1 / s, 1 / s, 1 - 1 / (s + 1)] for s in (5, 10, 15)])
    save_arrays(paths["test"], {"x_test": rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8),
                                "y_test": actual}, {"classes": json.dumps(CLASSES)})
    return paths


def run_report(paths: dict[str, Path], out: Path, *extra: str, probe_torch: bool = False):
    """The stage script in a fresh process (as `dvc repro` runs it)."""
    inputs = ("evaluate", "scenario", "confusion", "test")
    curves = [str(paths["curves"] / f"{name}.csv") for name in CURVES]  # as dvc.yaml lists them
    argv = ["stages/report.py", *[a for key in inputs for a in (f"--{key}", str(paths[key]))],
            "--curves", *curves, "--out", str(out), *extra]
    if probe_torch:  # the same run, then say whether anything imported torch
        code = ("import runpy, sys; sys.argv = " + repr(argv) + "; runpy.run_path(sys.argv[0], "
                "run_name='__main__'); print('torch imported:', 'torch' in sys.modules)")
        cmd = [sys.executable, "-c", code]
    else:
        cmd = [sys.executable, *argv]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    counts = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]), 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_the_page_holds_every_part_and_fetches_nothing():
    n = 12
    actual = np.arange(n) % 3
    predicted = actual.copy()
    predicted[[1, 4, 7]] = 0
    images = np.zeros((n, 1, 8, 8), dtype=np.uint8)
    page = render_report({"scratch": {"accuracy": 0.75, "macro_f1": 0.7}}, {"target_test": n},
                         {"scratch": [{"step": "5", "val_accuracy": "0.5"}]},
                         {"scratch": (actual, predicted)}, images, CLASSES, STUDY)
    assert page.count("<svg") == 4  # results, study, curves (one figure), confusion
    assert page.count("<figure>") == 3  # one tile per misclassified image
    assert "one &rarr; <b>zero</b>" in page
    assert "k = 1" in page and "&#9888;" in page  # the study's table, negative transfer marked
    # only data: URIs and in-page #ids may be loaded; no script, stylesheet link or @import
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), \
        [r for r in refs if not r.startswith(("data:", "#"))]
    assert not re.search(r"<script|<link|@import|url\(\s*['\"]?http", page)


def test_the_contact_sheet_shows_both_domains_before_the_results():
    """Two prepared images per class of each domain, as the models see them, with the framing
    prepare chose; it comes before the results (users look before they read)."""
    n = 12
    labels = np.arange(n) % 3
    source = np.zeros((n, 1, 8, 8), dtype=np.uint8)
    target = np.full((n, 3, 8, 8), 200, dtype=np.uint8)
    page = render_report({"scratch": {"accuracy": 0.75, "macro_f1": 0.7}},
                         {"target_test": n, "framing_crop_bbox": 0, "framing_scale_max": 1,
                          "framing_bottleneck_size": 0, "framing_channels": 3}, {},
                         {"scratch": (labels, labels)}, target, CLASSES,
                         prepared={"source": (source, labels, CLASSES),
                                   "target": (target, labels, CLASSES)})
    sheet = page[page.index("Prepared images"):page.index("<h2>Results")]
    assert sheet.count('alt="source image') == 6 and sheet.count('alt="target image') == 6
    assert "crop none, scale max, no bottleneck, 3 channels" in sheet
    assert "Prepared images" not in render_report(
        {"scratch": {"accuracy": 0.75, "macro_f1": 0.7}}, {"target_test": n}, {},
        {"scratch": (labels, labels)}, target, CLASSES)


def test_a_flagged_model_gets_a_banner_at_the_top_and_a_marked_row():
    n = 12
    actual = np.arange(n) % 3
    scores = {"scratch": {"accuracy": 0.4, "macro_f1": 0.2, "degenerate": True, "top_share": 1.0,
                          "marginal_entropy": 0.0},
              "finetune": {"accuracy": 0.9, "macro_f1": 0.9, "degenerate": False,
                           "top_share": 0.4, "marginal_entropy": 0.98}}
    confusions = {"scratch": (actual, np.zeros(n, int)), "finetune": (actual, actual)}
    page = render_report(scores, {"target_test": n}, {}, confusions,
                         np.zeros((n, 1, 8, 8), np.uint8), CLASSES)
    banner = page[page.index('<div class="alert"'):page.index("</div>")]
    assert page.index('<div class="alert"') < page.index("<h2>Results</h2>")  # above everything
    assert "flagged 1 model</b>" in banner and "<b>scratch</b>" in banner
    assert "finetune" not in banner and "health.allow_degenerate: true" in banner
    assert "predicts one class for 100 % of the images (limit 100 %)" in banner  # K = 3
    assert "class-use entropy 0.00 of its maximum (limit 0.60)" in banner
    assert ('<tr class="flagged"><td>&#9888; scratch</td>' in page
            and "<b>&#9888; degenerate</b> (top class 100.0 %)" in page)
    assert "<tr><td>finetune</td>" in page and "ok (top class 40.0 %)" in page
    healthy = render_report({"finetune": scores["finetune"]}, {"target_test": n}, {},
                            {"finetune": confusions["finetune"]},
                            np.zeros((n, 1, 8, 8), np.uint8), CLASSES)
    assert 'class="alert"' not in healthy and 'class="flagged"' not in healthy


def test_the_stage_writes_the_same_bytes_in_every_process_without_torch(tmp_path):
    paths = make_inputs(tmp_path)
    first, second = tmp_path / "a.html", tmp_path / "b.html"
    proc = run_report(paths, first, probe_torch=True)
    assert proc.returncode == 0, proc.stderr
    assert "torch imported: False" in proc.stdout
    assert run_report(paths, second).returncode == 0
    assert first.read_bytes() == second.read_bytes()
    page = first.read_text()
    # + 6: the contact sheet's 2 target test images per class (no --source given here)
    assert page.count("<figure>") == 9 + 6 + 2 + 6 and "finetune" in page and "Study" not in page
    assert '<div class="alert" role="alert">' in page and "<b>scratch</b>: predicts" not in page
    assert "<b>scratch</b>: class-use entropy 0.50 of its maximum (limit 0.60)" in page


def test_the_study_adds_its_intervals(tmp_path):
    paths = make_inputs(tmp_path)
    write_json(tmp_path / "study.json", STUDY)
    proc = run_report(paths, tmp_path / "r.html", "--study", str(tmp_path / "study.json"))
    assert proc.returncode == 0, proc.stderr
    assert "90.0 [85.0, 98.0]" in (tmp_path / "r.html").read_text()


def test_a_one_seed_study_has_means_without_intervals(tmp_path):
    """study/metrics.json holds null bounds when there is one seed (no t-interval)."""
    paths = make_inputs(tmp_path)
    one_seed = {"cells": {k: {**c, "ci_low": None, "ci_high": None}
                          for k, c in STUDY["cells"].items()}, "layers": {}}
    write_json(tmp_path / "study.json", one_seed)
    proc = run_report(paths, tmp_path / "r.html", "--study", str(tmp_path / "study.json"))
    assert proc.returncode == 0, proc.stderr
    assert "<td>90.0</td>" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("fault, message", [
    ("confusion_rows", "has 29 rows for 30 test images"),
    ("no_evaluate", "evaluate.json is missing"),
    ("no_curves", "finetune.csv is missing"),
    ("no_test", "target_test.safetensors is missing"),
])
def test_bad_input_stops_with_one_line_and_writes_nothing(tmp_path, fault, message):
    paths = make_inputs(tmp_path)
    if fault == "confusion_rows":
        lines = (paths["confusion"] / "scratch.csv").read_text().splitlines()
        (paths["confusion"] / "scratch.csv").write_text("\n".join(lines[:-1]) + "\n")
    elif fault == "no_evaluate":
        paths["evaluate"].unlink()
    elif fault == "no_curves":
        (paths["curves"] / "finetune.csv").unlink()
    else:
        paths["test"].unlink()
    out = tmp_path / "report.html"
    proc = run_report(paths, out)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not out.exists()


# ---- every file it reads is untrusted, and only the files dvc.yaml names are read -------------

def test_a_stray_curve_and_a_removed_strategy_are_not_drawn(tmp_path):
    """A CSV dropped into plots/curves/, or the curve a strategy left behind when it was removed
    from dvc.yaml, lies in the folder: the report reads only the files its command names."""
    paths = make_inputs(tmp_path)
    for name in ("stray", "dann"):  # dann: once in dvc.yaml's matrix, its curve still there
        write_csv(paths["curves"] / f"{name}.csv", ["step", "val_accuracy"], [[5, 0.5]])
    out = tmp_path / "r.html"
    proc = run_report(paths, out)
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    assert "finetune" in page and "stray" not in page and "dann" not in page


def test_the_curves_must_be_the_strategies_evaluate_scored(tmp_path):
    """A curve listed for a strategy evaluate.json does not hold (dvc.yaml's report command and
    its evaluate command disagree): one line, nothing written."""
    paths = make_inputs(tmp_path)
    write_csv(paths["curves"] / "dann.csv", ["step", "val_accuracy"], [[5, 0.5]])
    inputs = ("evaluate", "scenario", "confusion", "test")
    out = tmp_path / "r.html"
    proc = subprocess.run(
        [sys.executable, "stages/report.py",
         *[a for key in inputs for a in (f"--{key}", str(paths[key]))], "--curves",
         *[str(paths["curves"] / f"{n}.csv") for n in (*CURVES, "dann")], "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: report: --curves ")
    assert "fix the report command in dvc.yaml" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def test_a_folder_of_curves_is_refused(tmp_path):
    paths = make_inputs(tmp_path)
    out = tmp_path / "r.html"
    proc = subprocess.run(
        [sys.executable, "stages/report.py", "--evaluate", str(paths["evaluate"]), "--scenario",
         str(paths["scenario"]), "--curves", str(paths["curves"]), "--confusion",
         str(paths["confusion"]), "--test", str(paths["test"]), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "is a folder: name each curve file" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


def _edit_json(path: Path, edit) -> None:
    path.write_text(edit(path.read_text()))


HOSTILE = [  # (file, how it is damaged, what the one line names)
    ("evaluate", lambda t: t.replace('"accuracy": 0.9333', '"accuracy": NaN'),
     "key 'finetune.accuracy'=nan"),
    ("evaluate", lambda t: t.replace('"accuracy": 0.9333', '"accuracy": Infinity'),
     "key 'finetune.accuracy'=inf"),
    ("evaluate", lambda t: t.replace('"accuracy": 0.9333', '"accuracy": "0.9"'),
     "key 'finetune.accuracy'='0.9'"),
    ("evaluate", lambda t: t.replace('"accuracy": 0.9333', '"accuracy": [0.9]'),
     "key 'finetune.accuracy'"),
    ("evaluate", lambda t: t.replace('"accuracy": 0.9333', '"accuracy": 93.3'),
     "key 'finetune.accuracy'=93.3"),
    ("evaluate", lambda t: t.replace('"accuracy": 0.9333,', ''), "one is missing"),
    ("evaluate", lambda t: t.replace('"gain_over_scratch": 0.1333', '"gain_over_scratch": -Infinity'),
     "key 'finetune.gain_over_scratch'"),
    ("evaluate", lambda t: "[1, 2]", "Input should be a valid dictionary"),
    ("evaluate", lambda t: t.replace('"degenerate": true', '"degenerate": "yes"'),
     "key 'scratch.degenerate'='yes'"),
    ("evaluate", lambda t: t.replace('"top_share": 0.7', '"top_share": 1.5'),
     "key 'scratch.top_share'=1.5"),
    ("evaluate", lambda t: t.replace('"kl_to_source_prior": 0.3', '"kl_to_source_prior": -1'),
     "key 'scratch.kl_to_source_prior'=-1"),
    ("evaluate", lambda t: t[:len(t) // 2], "is not JSON"),
    ("evaluate", lambda t: "[" * 100_000, "nested too deeply"),
    ("scenario", lambda t: t.replace('"shots": 2', '"shots": NaN'), "key 'shots"),
    ("scenario", lambda t: t.replace('"shots": 2', '"shots": {"a": 1}'), "key 'shots"),
    ("study", lambda t: t.replace('"ci_low": ', '"ci_low": NaN, "was": ', 1), "ci_low"),
    ("study", lambda t: t.replace('"finetune@k1"', '"finetune@kone"'), "cells.finetune@kone"),
    ("study", lambda t: '{"layers": {}}', "key 'cells' is missing"),
]


@pytest.mark.parametrize("which, edit, named", HOSTILE,
                         ids=[f"{w}-{i}" for i, (w, _, _) in enumerate(HOSTILE)])
def test_a_malformed_metrics_file_is_one_line(tmp_path, which, edit, named):
    paths = make_inputs(tmp_path)
    write_json(tmp_path / "study.json", STUDY)
    path = {"evaluate": paths["evaluate"], "scenario": paths["scenario"],
            "study": tmp_path / "study.json"}[which]
    _edit_json(path, edit)
    out = tmp_path / "r.html"
    out.write_text("earlier")
    proc = run_report(paths, out, "--study", str(tmp_path / "study.json"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"error: {path}") and named in proc.stderr, proc.stderr
    assert out.read_text() == "earlier"


CSV_FAULTS = [  # (file, rows written, what the one line names)
    ("curves/finetune.csv", "step,val_accuracy\n5,abc\n", "line 2: val_accuracy='abc'"),
    ("curves/finetune.csv", "step,val_accuracy\n5,nan\n", "line 2: val_accuracy='nan'"),
    ("curves/finetune.csv", "step,val_accuracy\ninf,0.5\n", "line 2: step='inf'"),
    ("curves/finetune.csv", "step,val_accuracy\n5,1.5\n", "line 2: val_accuracy='1.5'"),
    ("curves/finetune.csv", "step,loss\n5,0.5\n", "has no column step, val_accuracy"),
    ("curves/finetune.csv", "step,val_accuracy\n5\n", "line 2 has 1 fields for 2 columns"),
    ("curves/finetune.csv", b"step,val_accuracy\n5,\xff\n", "is not a CSV file"),
    ("curves/finetune.csv", "", "has no column"),
    ("confusion/scratch.csv", "actual,predicted\n" + "0,7\n" * 30, "line 2: predicted='7'"),
    ("confusion/scratch.csv", "actual,predicted\n" + "0,-1\n" * 30, "line 2: predicted='-1'"),
    ("confusion/scratch.csv", "actual,predicted\n" + "x,1\n" * 30, "line 2: actual='x'"),
    ("confusion/scratch.csv", "actual,predicted\n" + "0.5,1\n" * 30, "line 2: actual='0.5'"),
    ("confusion/scratch.csv", None, "scratch.csv is missing"),
]


@pytest.mark.parametrize("name, content, named", CSV_FAULTS,
                         ids=[f"{n.split('/')[0]}-{i}" for i, (n, _, _) in enumerate(CSV_FAULTS)])
def test_a_malformed_curve_or_confusion_file_is_one_line(tmp_path, name, content, named):
    paths = make_inputs(tmp_path)
    path = tmp_path / "plots" / name
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    out = tmp_path / "r.html"
    proc = run_report(paths, out)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert named in proc.stderr and str(path) in proc.stderr, proc.stderr
    assert not out.exists()


def test_a_label_free_row_shows_the_guards_verdict():
    """0 shots: the selection cell says what chose the model and, under it, the guard's verdict
    (an adapted model accepted, or the source model kept and why)."""
    n = 6
    actual = np.arange(n) % 3
    why = "kept the source model: not above the source model on info_max (0.41 vs 0.52)"
    scores = {"mcc": {"accuracy": 0.9, "macro_f1": 0.9, "selection": "source-val+SND",
                      "guard": why}}
    page = render_report(scores, {"target_test": n}, {}, {"mcc": (actual, actual)},
                         np.zeros((n, 1, 8, 8), np.uint8), CLASSES)
    assert "source-val+SND<br><small>guard: kept the source model: not above the source model " \
           "on info_max (0.41 vs 0.52)</small>" in page
