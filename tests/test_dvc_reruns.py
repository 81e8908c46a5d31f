"""The rerun table: which stages a plain `dvc repro` reruns after one edit, through the real CLI.

RERUNS is the table (docs/experiments.md's rerun table is a copy of it): for every params.yaml key (one
row per group of keys that behave alike; `section.*` is every key under it) and every module
of the library, the exact set of stages `dvc repro` runs after that one edit to a fully run
repository, tiny params. Two mechanisms decide it, and the table needs both:
  - a stage reruns when one of its own params or deps changed (`params:`/`deps:` in dvc.yaml);
  - it also reruns when an upstream stage that reran wrote different bytes, and it does not
    when those bytes came out identical (outputs are byte-deterministic): propagation stops
    there. So `extract.batch_size` reruns `extract` alone (the features do not depend on the
    batch size), and `data.target.classes` never reruns `pretrain` (the source arrays stay the
    same).
`check_params` depends on the whole params.yaml file, so any edit of it reruns that check (a
second or so, constant output) and nothing else on its account.

Library rows append a comment to the module: its hash changes, so every stage that lists it
reruns, and writes the bytes it wrote before (comments change no output; test_dvc_determinism
proves every stage rewrites identical bytes), so nothing downstream reruns. Those rows are
therefore checked with `dvc status` (one call for all modules); one is run for real to show
the propagation stop.
The cheap tests at the bottom check that the table names every key and module, and that every
stage lists the library files it imports (the reason a module row is what it is).
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.conftest import ROOT, repo_params_dict
from transferlab.strategies import METHODS
from tests.dvc_helpers import (STAGES, dvc, fully_run_project, param_leaves, ran,
                               read_params, resolved_stages, restored, set_params)

EVERY = frozenset(STAGES)
TRANSFER = frozenset(s for s in STAGES if s.startswith("transfer@"))
OUTSIDE = [m for m in METHODS if f"transfer@{m}" not in TRANSFER]  # the study runs them
COMMENT_ONLY = "params.yaml: a comment or whitespace only"

RERUNS: dict[str, frozenset[str]] = {
    # params.yaml: one value changed
    "data.source.name, data.source.root, data.target.name, data.target.root": EVERY,
    "data.source.classes": EVERY - {"download", "transfer@scratch"},  # scratch: target data only
    "data.target.classes": EVERY - {"download", "pretrain"},  # the source arrays come out identical
    "data.cache_dir": frozenset({"check_params", "download"}),  # unused by the embedded datasets
    # the embedded target has no official test split: auto and split carve the same test set
    "data.target_test": frozenset({"check_params", "download"}),
    "data.decode_size": frozenset({"check_params", "download"}),  # folders only: same bytes here
    "prepare.image_size, prepare.crop, prepare.bottleneck_size, prepare.scale, prepare.channels, "
    "prepare.source_val_fraction, prepare.split_seed": EVERY - {"download"},
    "seed, prepare.shots, prepare.target_test_fraction, prepare.target_val_per_class":
        EVERY - {"download", "pretrain"},  # target only: the source model stays
    "model.arch, model.widths, model.norm, model.head, model.input":
        EVERY - {"download", "prepare"},
    # scratch and joint start from random weights and never open the source model; prepare
    # reads model.weights for auto channels (RGB weights need colour)
    "model.weights": EVERY - {"download", "transfer@scratch", "transfer@joint"},
    "pretrain.*": EVERY - {"download", "prepare", "transfer@scratch", "transfer@joint"},
    # resnet18 only: with the default small_cnn the models come out identical
    "model.small_input_stem": frozenset({"check_params", "pretrain", *TRANSFER}),
    "extract.batch_size": frozenset({"check_params", "extract"}),  # identical features
    **{f"transfer.{s.removeprefix('transfer@')}.*": frozenset({"check_params", s, "evaluate",
                                                                "export", "report"})
       for s in sorted(TRANSFER)},
    # methods outside the default pipeline run in the study only
    ", ".join(f"transfer.{m}.*" for m in OUTSIDE): frozenset({"check_params"}),
    "study.*": frozenset({"check_params"}),  # read by study/dvc.yaml only (`make study`)
    "ranking.*": frozenset({"check_params"}),  # read by ranking/dvc.yaml only (`make ranking`)
    # read by selection/dvc.yaml only (`make selection`)
    "selection_study.*": frozenset({"check_params"}),
    # read by the training stages; bf16 (the edit below) changes the weights: all downstream
    "compute.*": EVERY - {"download", "prepare"},
    # every training stage; the source model changes, so all below it
    "augment.*": EVERY - {"download", "prepare"},
    # export alone reads it (refuse or ship a degenerate model); evaluate and report flag anyway
    "health.*": frozenset({"check_params", "export"}),
    # read at prepare.shots 0 only (here 1 shot: the models come out identical); export ranks
    # label-free methods by selection.validator
    "selection.*": frozenset({"check_params", "export", *TRANSFER}),
    COMMENT_ONLY: frozenset({"check_params"}),
    # library modules: a comment appended
    # every stage script's first import: it notes the launching `dvc` (launcher.py's watchdog)
    "transferlab/__init__.py": EVERY,
    # the backbone registry imports every family module: the schema and every model builder
    **{f"transferlab/backbones/{m}.py": EVERY
       for m in ("__init__", "resnet", "small_cnn", "staged", "timm_vit", "vit")},
    "transferlab/candidates.py": frozenset(),  # ranking only
    "transferlab/compute.py": EVERY - {"check_params", "download", "prepare", "report"},  # as train.py
    # the dataset registry imports every dataset module, and the schema imports the registry
    **{f"transferlab/datasets/{m}.py": EVERY
       for m in ("__init__", "blend", "corrupted", "embedded", "folder", "torchvision_sets")},
    "transferlab/errors.py": EVERY,  # UserError: imported by io, so by every stage
    "transferlab/evaluation.py": frozenset({"evaluate"}),
    "transferlab/export.py": frozenset({"export"}),
    "transferlab/fanout.py": frozenset(),  # the transferlab-fanout command: no stage
    # the label-free health check: evaluate's flags, export's gate, the report's banner
    "transferlab/health.py": frozenset({"evaluate", "export", "report"}),
    "transferlab/images.py": frozenset({"download"}),  # folder images (and predict's reader)
    "transferlab/io.py": EVERY,
    "transferlab/launcher.py": EVERY,  # run_stage: every stage's entry point
    # evaluate's scores; its rounding (DIGITS) in every metrics file the training stages write
    "transferlab/metrics.py": EVERY - {"check_params", "download", "prepare", "export", "report"},
    "transferlab/models.py": EVERY - {"check_params", "download", "prepare", "report"},
    "transferlab/options.py": EVERY,
    # every stage: the schema, and the preprocessing records evaluate, export and report check
    "transferlab/params.py": EVERY,
    "transferlab/predict.py": frozenset(),  # the transferlab-predict command: no stage
    "transferlab/ranking.py": frozenset(),  # ranking only
    "transferlab/rawdata.py": frozenset({"download", "prepare"}),  # the raw dataset files
    "transferlab/records.py": frozenset({"evaluate", "export", "report"}),  # files they read
    # discovery of the backbone and dataset registries: the schema, so every stage
    "transferlab/registry.py": EVERY,
    "transferlab/report.py": frozenset({"report"}),
    "transferlab/scenario.py": frozenset({"prepare"}),
    # the search spaces' distributions: every method module imports it, so does the schema
    "transferlab/search.py": EVERY,
    "transferlab/selection_stats.py": frozenset(),  # study only (the selection replay)
    # the label-free choice: imported by train.py
    "transferlab/selection.py": EVERY - {"check_params", "download", "prepare", "report"},
    "transferlab/source.py": EVERY - {"check_params", "download", "prepare", "evaluate", "export",
                                      "report"},
    "transferlab/stats.py": frozenset(),  # study only
    "transferlab/study.py": frozenset(),  # study only
    "transferlab/train.py": EVERY - {"check_params", "download", "prepare", "report"},
    "transferlab/transfer.py": TRANSFER,
    "transferlab/transferability.py": frozenset({"extract"}),
    "transferlab/workers.py": frozenset(),  # transferlab-fanout --remote's workers: no stage
    # the registry: the params schema and evaluate's table are built from it, so every stage
    # lists it; check_params lists the whole folder (every method's options are the schema)
    "transferlab/strategies/__init__.py": EVERY,
    # the validator registry imports every module, and the schema (selection.*) the registry
    **{f"transferlab/validators/{m}.py": EVERY
       for m in ("__init__", "agreement", "bnm", "circular", "cluster", "dev", "entropy", "info_max", "iwv",
                 "mixval", "snd", "source_accuracy")},
    **{f"transferlab/strategies/{s.removeprefix('transfer@')}.py": frozenset({"check_params", s})
       for s in sorted(TRANSFER)},
    **{f"transferlab/strategies/{m}.py": frozenset({"check_params"}) for m in OUTSIDE},
}

# The one edit that stands for each params row (tiny params: every value differs from them).
EDITS = {
    "data.source.name, data.source.root, data.target.name, data.target.root":
        {"data.source.name": "uci_digits", "data.target.name": "mnist_5k"},  # swapped
    "data.source.classes": {"data.source.classes": [0, 1, 2, 3, 4, 5, 6, 7, 8]},
    "data.target.classes": {"data.target.classes": [0, 1, 2, 3, 4]},
    "data.cache_dir": {"data.cache_dir": "datasets-cache"},
    "data.decode_size": {"data.decode_size": 128},
    "data.target_test": {"data.target_test": "split"},
    "prepare.image_size, prepare.crop, prepare.bottleneck_size, prepare.scale, prepare.channels, "
    "prepare.source_val_fraction, prepare.split_seed": {"prepare.image_size": 10},
    "seed, prepare.shots, prepare.target_test_fraction, prepare.target_val_per_class":
        {"prepare.shots": 1},
    "model.arch, model.widths, model.norm, model.head, model.input": {"model.widths": [4, 8, 16]},
    "pretrain.*": {"pretrain.lr": 0.01},
    "model.small_input_stem": {"model.small_input_stem": True},
    "extract.batch_size": {"extract.batch_size": 16},  # 20 shots + 30 val images: 4 batches
    "transfer.scratch.*": {"transfer.scratch.lr": 0.01},
    "transfer.finetune.*": {"transfer.finetune.frozen_blocks": 1},
    "transfer.features.*": {"transfer.features.C": 0.5},
    "transfer.structure.*": {"transfer.structure.freeze_copied": False},
    "transfer.joint.*": {"transfer.joint.target_weight": 0.5},
    "transfer.adabn.*": {"transfer.adabn.batch_size": 100},  # other batches: other averages
    "transfer.mcc.*": {"transfer.mcc.temperature": 2.0},
    ", ".join(f"transfer.{m}.*" for m in OUTSIDE): {f"transfer.{OUTSIDE[0]}.steps": 7},
    "study.*": {"study.layer_shots": 3},
    "ranking.*": {"ranking.shots": 2},
    "selection_study.*": {"selection_study.draws": [0, 2]},
    "compute.*": {"compute.precision": "bf16"},
    "augment.*": {"augment.mode": "photo"},
    "health.*": {"health.allow_degenerate": True},
    "selection.*": {"selection.validator": "bnm"},
}
PARAM_ROWS = [row for row in RERUNS if not row.endswith(".py") and row != COMMENT_ONLY]
# rows the tiny pipeline cannot edit: their stages are checked against dvc.yaml only
# (test_every_stage_that_reads_a_key_is_in_its_row)
NOT_EDITABLE = {"model.weights": "small_cnn, the tiny pipeline's arch, takes model.weights: none "
                                 "only (published weights need a download)"}
MODULE_ROWS = [row for row in RERUNS if row.endswith(".py")]
RUN_FOR_REAL = ["transferlab/strategies/finetune.py"]  # evaluate stays: same model bytes


def row_keys(row: str) -> list[str]:
    return row.split(", ")


def matches(pattern: str, key: str) -> bool:
    return key.startswith(pattern[:-1]) if pattern.endswith(".*") else key == pattern


def show(stages) -> str:
    return "{" + ", ".join(s for s in STAGES if s in stages) + "}"


# ---- through the real CLI ----------------------------------------------------------------

@pytest.fixture
def repo(tmp_path_factory):
    """A fresh copy of the fully run project for every row: no row sees another's leftovers
    (outputs, DVC's file-hash state), so nothing needs undoing."""
    return fully_run_project(tmp_path_factory.mktemp("reruns"))


@pytest.fixture(scope="module")
def ancestors(tmp_path_factory) -> dict[str, set[str]]:
    """Every stage's upstream stages, from `dvc dag --dot` (edges point downstream)."""
    repo = fully_run_project(tmp_path_factory.mktemp("dag"))
    edges = re.findall(r'"(.+?)" -> "(.+?)"', dvc(repo, "dag", "--dot"))
    parents: dict[str, set[str]] = {}
    for up, down in edges:
        parents.setdefault(down, set()).add(up)

    def upstream(stage: str) -> set[str]:
        found = set()
        for parent in parents.get(stage, ()):
            found |= {parent} | upstream(parent)
        return found

    assert {s for edge in edges for s in edge if ":" not in s} == EVERY, \
        "tests/dvc_helpers.py's STAGES no longer lists the stages of dvc.yaml"
    return {stage: upstream(stage) for stage in STAGES}


def repro_reruns(repo, ancestors) -> tuple[list[str], list[str]]:
    """(ran, restored): the stages a plain `dvc repro` would now run, and restore from the
    run-cache, found by running only as many stages as it takes to know.

    `dvc repro --dry` lists the stages whose own params or deps changed; a plain `dvc repro`
    runs every one of them. A stage it does not list reruns only if a listed stage upstream of
    it writes different bytes. While such undecided stages remain, run for real the last listed
    stage upstream of the last undecided one (`dvc repro <stage>` runs the listed stages above
    it first, in the order a plain `dvc repro` uses; if that one wrote the same bytes, run all
    the listed stages above it at once), and ask again. Once none remains, what ran plus what
    is listed is exactly what a plain `dvc repro` runs (2-4x faster here).
    The listed stages left at the end count as run: `--dry` cannot tell a run-cache restore (it
    looks a stage up by its old dep hashes), and every edit here is new to the run-cache."""
    done_ran, done_restored, tried = [], [], set()
    while True:
        listed = ran(dvc(repo, "repro", "--dry"))
        done = set(done_ran) | set(done_restored)
        undecided = [s for s in STAGES
                     if s not in listed and s not in done and ancestors[s] & set(listed)]
        if not undecided:
            return done_ran + listed, done_restored
        last = undecided[-1]
        above = [s for s in listed if s in ancestors[last]]
        output = dvc(repo, "repro", *(above if last in tried else above[-1:]))
        tried.add(last)
        done_ran += ran(output)
        done_restored += restored(output)


@pytest.mark.slow
@pytest.mark.parametrize("row", [
    pytest.param(row, marks=pytest.mark.skip(reason=NOT_EDITABLE[row])) if row in NOT_EDITABLE
    else row for row in PARAM_ROWS], ids=lambda row: row.split(",")[0])
def test_a_params_edit_reruns_exactly_its_row(repo, ancestors, row):
    set_params(repo, EDITS[row])
    reran, from_cache = repro_reruns(repo, ancestors)
    assert not from_cache, f"{EDITS[row]}: restored from the run-cache {from_cache}"
    assert set(reran) == RERUNS[row], (
        f"{EDITS[row]} reran {show(reran)}, the table says {show(RERUNS[row])}: "
        f"unexpected {show(set(reran) - RERUNS[row])}, missing {show(RERUNS[row] - set(reran))}")


@pytest.mark.slow
def test_a_comment_or_whitespace_in_params_yaml_reruns_only_the_check(repo):
    text = (repo / "params.yaml").read_text()
    reindented = re.sub(r"^( +)", r"\1\1", text, flags=re.M)  # same mapping, other indentation
    (repo / "params.yaml").write_text(f"# a comment\n\n{reindented}\n# another one\n")
    assert read_params(repo) == yaml.safe_load(text), "the edit changed a value"
    output = dvc(repo, "repro")
    assert set(ran(output)) == RERUNS[COMMENT_ONLY], output


@pytest.fixture(scope="module")
def stale_per_module(tmp_path_factory) -> dict[str, set[str]]:
    """{module: the stages `dvc status` finds stale because of it}, with a comment appended to
    every module at once (a stage is stale when any of its deps changed, so one call answers
    for all of them)."""
    repo = fully_run_project(tmp_path_factory.mktemp("modules"))
    for row in MODULE_ROWS:
        (repo / row).write_bytes((repo / row).read_bytes() + b"\n# touch\n")
    status = json.loads(dvc(repo, "status", "--json"))
    return {row: {stage for stage, reasons in status.items() if stage in EVERY
                  for reason in reasons if isinstance(reason, dict)
                  and any(row == dep or row.startswith(f"{dep}/")  # a listed file or folder
                          for dep in reason.get("changed deps", {}))} for row in MODULE_ROWS}


@pytest.mark.slow
@pytest.mark.parametrize("row", MODULE_ROWS)
def test_a_comment_in_a_module_reruns_exactly_the_stages_listing_it(stale_per_module, row):
    assert stale_per_module[row] == RERUNS[row], (f"a comment in {row} reruns "
                                                  f"{show(stale_per_module[row])}, the table says "
                                                  f"{show(RERUNS[row])}")


@pytest.mark.slow
@pytest.mark.parametrize("row", RUN_FOR_REAL)
def test_a_comment_reruns_for_real_and_stops_where_the_bytes_repeat(repo, ancestors, row):
    path = repo / row
    path.write_bytes(path.read_bytes() + b"\n# touch\n")
    reran, from_cache = repro_reruns(repo, ancestors)
    assert (set(reran), from_cache) == (RERUNS[row], []), f"{row}: reran {reran}"


# ---- cheap: the table is complete, and dvc.yaml lists what the code imports ---------------

def test_the_table_names_every_params_key_exactly_once():
    leaves = param_leaves(repo_params_dict())
    rows = {key: [row for row in PARAM_ROWS if any(matches(p, key) for p in row_keys(row))]
            for key in leaves}
    assert not [k for k, found in rows.items() if len(found) != 1], \
        {k: found for k, found in rows.items() if len(found) != 1}
    stale = [p for row in PARAM_ROWS for p in row_keys(row)
             if not any(matches(p, key) for key in leaves)]
    assert not stale, f"rows name keys params.yaml does not have: {stale}"
    assert sorted(EDITS) == sorted(set(PARAM_ROWS) - set(NOT_EDITABLE))
    for row in EDITS:
        assert all(any(matches(p, key) for p in row_keys(row)) for key in EDITS[row]), row


def test_the_table_names_every_library_module():
    modules = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "transferlab").rglob("*.py"))
    assert sorted(MODULE_ROWS) == modules


def test_every_stage_that_reads_a_key_is_in_its_row():
    stages = {name: s for name, s in resolved_stages().items() if name in EVERY}
    whole_file = {name for name, s in stages.items() if "params.yaml" in s["deps"]}
    for row in PARAM_ROWS + [COMMENT_ONLY]:
        assert whole_file <= RERUNS[row], f"{row}: {show(whole_file - RERUNS[row])} read all params"
    for row in PARAM_ROWS:
        for key in (k for k in param_leaves(repo_params_dict())
                    if any(matches(p, k) for p in row_keys(row))):
            readers = {name for name, s in stages.items()
                       for listed in s["params"].get("params.yaml", [])
                       if key == listed or key.startswith(listed + ".")}
            assert readers <= RERUNS[row], f"{key} is read by {show(readers - RERUNS[row])}"
