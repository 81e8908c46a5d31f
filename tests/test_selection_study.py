"""The selection study (selection/dvc.yaml): search spaces and their draws, tasks as params
overrides, the stages' bad input, and the whole study through the real `dvc`."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import tiny_params_dict
from tests.dvc_helpers import copy_project, dvc, ran, read_params, write_params
from tests.test_stages import cwd, load_stage, run_main
from transferlab import search
from transferlab.errors import UserError
from transferlab.params import load_task_params, parse_params
from transferlab.strategies import METHODS, Method

SEARCHED = [name for name, m in METHODS.items() if m.search]


def test_every_label_free_training_method_declares_a_space():
    # adabn trains nothing (it re-estimates statistics): nothing to draw
    assert set(SEARCHED) == {n for n, m in METHODS.items()
                             if not m.needs_labels and n != "adabn"}


@pytest.mark.parametrize("name", SEARCHED)
def test_draw_zero_is_the_params_section_and_others_lie_in_the_space(name, tiny_params):
    defaults = getattr(tiny_params.transfer, name)
    space = METHODS[name].search
    assert search.draw(name, space, defaults, 0) is defaults
    for index in range(1, 21):
        drawn = search.draw(name, space, defaults, index)
        assert type(drawn) is type(defaults)
        for key, dist in space.items():
            value = getattr(drawn, key)
            assert dist.low * 0.9999 <= value <= dist.high * 1.0001, (key, value)
        # what is not in the space stays the params' (steps, batch size...)
        for key in set(type(defaults).model_fields) - set(space):
            assert getattr(drawn, key) == getattr(defaults, key)


def test_a_draw_depends_on_the_method_and_index_only(tiny_params):
    dan = METHODS["dan"]
    first = search.draw("dan", dan.search, tiny_params.transfer.dan, 3)
    again = search.draw("dan", dan.search, tiny_params.transfer.dan.model_copy(
        update={"steps": 9}), 3)
    assert (first.lr, first.loss_weight) == (again.lr, again.loss_weight)
    others = {(d.lr, d.loss_weight) for d in (
        search.draw("dan", dan.search, tiny_params.transfer.dan, i) for i in range(1, 6))}
    assert len(others) == 5
    coral = search.draw("coral", METHODS["coral"].search, tiny_params.transfer.coral, 3)
    assert (coral.lr, coral.loss_weight) != (first.lr, first.loss_weight)


def test_a_space_naming_an_option_the_method_lacks_is_refused(tiny_params):
    dan = METHODS["dan"]
    with pytest.raises(ValueError, match="temperature"):
        Method(dan.family, dan.description, dan.options, False,
               search={"temperature": search.Uniform(1, 2)})
    with pytest.raises(ValueError, match="temperature"):
        search.draw("dan", {"temperature": search.Uniform(1, 2)}, tiny_params.transfer.dan, 1)
    with pytest.raises(ValueError, match="from 0"):
        search.draw("dan", dan.search, tiny_params.transfer.dan, -1)


STUDY = {"tasks": ["default"], "seeds": [0], "draws": [0, 1],
         "task_params": {"default": {}, "noise": {"data.target.name": "uci_digits_noise"}}}


@pytest.mark.parametrize("change, words", [
    ({"tasks": ["default", "zzz"]}, "names zzz, which selection_study.task_params does not"),
    ({"task_params": {"default": {}, "Big Task": {}}}, "Big Task: name it with a-z"),
    ({"draws": [0, 0]}, "selection_study.draws=[0, 0]: use distinct integers"),
    ({"draws": [-1]}, "selection_study.draws=[-1]: use distinct integers"),
    ({"seeds": []}, "selection_study.seeds"),
    ({"tasks": ["default", "default"]}, "selection_study.tasks=['default', 'default']: use distinct"),
])
def test_a_bad_selection_study_section_is_one_line(change, words):
    with pytest.raises(UserError) as err:
        parse_params(tiny_params_dict(selection_study={**STUDY, **change}))
    assert words in str(err.value) and "\n" not in str(err.value)


def write(tmp_path, **task_params):
    params = tiny_params_dict(selection_study={**STUDY, "task_params": task_params})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_a_task_is_the_params_with_its_values_put_in(tmp_path):
    path = write(tmp_path, default={}, blend={"data.source.name": "mnist_half",
                                              "prepare.image_size": 12})
    params, raw = load_task_params("blend", path)
    assert (params.data.source.name, params.prepare.image_size) == ("mnist_half", 12)
    assert raw["data"]["source"]["name"] == "mnist_half"
    assert load_task_params("default", path)[0].prepare.image_size == 8  # the tiny params'


@pytest.mark.parametrize("values, words", [
    ({"data.target.nmae": "x"}, "'data.target.nmae' is not a params key a task can set"),
    ({"nosuch": 1}, "'nosuch' is not a params key"),
    ({"selection_study.draws": [0]}, "'selection_study.draws' is not a params key"),
    ({"prepare.image_size": 0}, "selection_study.task_params.bad sets values that fail the "
                                "checks: prepare.image_size=0"),
    ({"data.target.name": "nope"}, "selection_study.task_params.bad sets values that fail"),
    ({"data.target.name": "folder"}, "data.target.root must be set"),
])
def test_a_task_that_cannot_be_params_is_one_line_naming_it(tmp_path, values, words):
    path = write(tmp_path, default={}, bad=values)
    with pytest.raises(UserError) as err:
        load_task_params("bad", path)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("values, words", [
    ({"data.target": {"name": "x"}}, "task_params.default.data.target is a dict: a task sets "
                                     "values"),
    ({"prepare.image_size": "32"}, "task_params.default sets values that fail the checks: "
                                   "prepare.image_size='32'"),
])
def test_a_task_in_the_study_is_checked_with_the_params(values, words):
    """The selection study's first stage checks every task it will run: not an hour later."""
    with pytest.raises(UserError) as err:
        parse_params(tiny_params_dict(selection_study={**STUDY, "task_params": {
            "default": values}}), tasks=True)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_task_naming_a_dataset_names_it_whole(tmp_path):
    """A user whose own run is a folder pair (root set, official test split) keeps a study
    whose tasks name built-in datasets: the task's dataset does not inherit the folder's root,
    classes or target_test (each params load checks every task; CI found the pipeline refused)."""
    params = tiny_params_dict(selection_study={**STUDY, "task_params": {
        "default": {}, "noise": {"data.target.name": "uci_digits_noise"},
        "mine": {"data.source.name": "folder", "data.source.root": str(tmp_path / "src")}}})
    params["data"]["target"] = {"name": "folder", "classes": [0, 1], "root": str(tmp_path)}
    params["data"]["target_test"] = "official"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    noise, raw = load_task_params("noise", tmp_path / "params.yaml")
    assert (noise.data.target.root, noise.data.target.classes, noise.data.target_test) == (
        "", "all", "auto")
    assert raw["data"]["target"] == {"name": "uci_digits_noise", "classes": "all", "root": ""}
    assert load_task_params("default", tmp_path / "params.yaml")[0].data.target.root == str(
        tmp_path)  # a task that names no dataset keeps the user's
    mine = load_task_params("mine", tmp_path / "params.yaml")[0]
    assert (mine.data.source.root, mine.data.target.root) == (str(tmp_path / "src"), str(tmp_path))


def test_unknown_task_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no task .zzz.: choose one of blend, default"):
        load_task_params("zzz", write(tmp_path, default={}))


def test_draws_leave_out_methods_without_a_space(tiny_params):
    drawn_params = load_stage("selection_cell").drawn_params
    params, options = drawn_params(tiny_params, 0)
    assert set(options) == {n for n, m in METHODS.items() if not m.needs_labels}
    assert params.transfer.dan == tiny_params.transfer.dan
    params, options = drawn_params(tiny_params, 2)
    assert set(options) == set(SEARCHED)  # adabn would only repeat draw 0
    assert params.transfer.dan.lr == options["dan"]["lr"] != tiny_params.transfer.dan.lr


def test_the_report_names_a_missing_cell_and_writes_nothing(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(
        selection_study=STUDY)))
    (tmp_path / "cells").mkdir()
    with pytest.raises(UserError, match=r"default-s0-d0.json is missing: run `make selection`"):
        run_main(tmp_path, "selection_report", "cells", "--metrics", "m.json", "--report",
                 "r.md", "--plots", "plots")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells", "params.yaml"]


def test_the_report_refuses_a_cell_without_a_validator_score(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(
        selection_study={**STUDY, "draws": [0]})))
    (tmp_path / "cells").mkdir()
    row = {"step": 0, "val_accuracy": 0.5, "test_accuracy": 0.5}  # no validator score
    (tmp_path / "cells/default-s0-d0.json").write_text(json.dumps(
        {"shots": 0, "seed": 0, "draw": 0, "checkpoints": {"dan": [row]}}))
    with cwd(tmp_path), pytest.raises(UserError,
                                      match="has no 'agreement' number.*rerun `make selection`"):
        load_stage("selection_report").main(["cells", "--metrics", "m.json", "--report", "r.md",
                                             "--plots", "plots"])
    assert not (tmp_path / "m.json").exists()


def test_the_report_leads_with_every_task_and_every_validator(tmp_path):
    """Two tasks whose one method gains 20 points at step 1, which every validator and the
    guard see, and one where it loses 10 (the validators are fooled, the oracle is not): the
    overview table has one row per task, the validator table one per validator, and the metrics
    carry the gain."""
    from transferlab.selection_stats import NAMES
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(selection_study={
        **STUDY, "tasks": ["default", "noise", "blend"], "draws": [0],
        "task_params": {"default": {}, "noise": {}, "blend": {}}},
        selection={"validator": "info_max", "guard": ["info_max", "bnm"], "guard_margin": 0.01})))
    (tmp_path / "cells").mkdir()

    def row(step, score, test):
        return {"step": step, "val_accuracy": test, "test_accuracy": test,
                **{name: score for name in NAMES}, "source_accuracy": 0.9,
                "top_share": 0.15, "marginal_entropy": 0.95}

    for task, later in (("default", 0.7), ("noise", 0.7), ("blend", 0.4)):
        (tmp_path / f"cells/{task}-s0-d0.json").write_text(json.dumps(
            {"shots": 0, "seed": 0, "draw": 0, "classes": 10, "checkpoints": {
                "dan": [row(0, 0.5, 0.5), row(1, 0.6, later)]}}))
    run_main(tmp_path, "selection_report", "cells", "--metrics", "m.json", "--report", "r.md",
             "--plots", "plots")
    report = (tmp_path / "r.md").read_text()
    overview = report.split("## Every task")[1].split("\n## ")[0]
    assert "| default | 50.0 | +20.0 | +20.0 | +20.0 | 0 | 100 % |" in overview
    assert "| noise | 50.0 | +20.0 | +20.0 | +20.0 | 0 | 100 % |" in overview
    # where no pick gains (the oracle keeps the source model), no share to show: a dash
    assert "| blend | 50.0 | +0.0 | -10.0 | -10.0 | 1 | — |" in overview
    assert all(f"| {name} | +0.0 | " in overview for name in NAMES if name != "source_accuracy")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["noise"]["recommended_gain"] == pytest.approx(0.2)
    # within the method: the params' rule and each one-more-guard variant ship the -10 model,
    # except with source accuracy in the guard (it does not rise: the source model is kept)
    blend = report.split("## blend")[1]
    within = [line for line in blend.splitlines() if line.endswith("| 1/1, -10.0 |")]
    assert len(within) == 1 + sum(1 for n in NAMES if n not in ("info_max", "bnm",
                                                                 "source_accuracy"))
    assert "| info_max; guard bnm+info_max+source_accuracy, margin 0.01 | 0/1, +0.0 |" in blend
    # the health check on every candidate: none collapsed, the best of each cell not flagged
    assert "| blend | 2 | 0 | 0 | 0 | 1 | 0 | 0 | 0 | 0 |" in overview
    assert metrics["blend"]["health_check_false_alarms"] == 0


def test_the_health_check_is_scored_on_every_candidate_of_a_cell():
    """A hit, a miss and a false alarm among one cell's candidates (K = 10: collapsed below
    30 %, near the best within 5 points); a cell without classes or a row without the check's
    numbers is a ValueError naming it."""
    from transferlab.selection_stats import detector_counts

    def c(test, top, entropy, source=0.9):
        return {"test_accuracy": test, "top_share": top, "marginal_entropy": entropy,
                "source_accuracy": source}

    runs = [{"method": "dan", "seed": 0, "draw": 0, "classes": 10, "rows": [
        c(0.90, 0.15, 0.95),   # the best, healthy
        c(0.12, 0.90, 0.20),   # collapsed, flagged: a hit
        c(0.20, 0.30, 0.90, source=0.05),  # collapsed, not flagged: a miss (classes permuted)
        c(0.88, 0.75, 0.80)]}]  # near the best, flagged: a false alarm
    assert detector_counts(runs) == {"models": 4, "collapsed": 2, "hits": 1, "misses": 1,
                                     "near_best": 2, "false_alarms": 1}
    # the source split sees the permuted one
    assert detector_counts(runs, source_check=True) == {
        "models": 4, "collapsed": 2, "hits": 2, "misses": 0, "near_best": 2, "false_alarms": 1}
    with pytest.raises(ValueError, match="classes=None"):
        detector_counts([{**runs[0], "classes": None}])
    with pytest.raises(ValueError, match=r"checkpoints.dan\[1\] has no health numbers"):
        detector_counts([{**runs[0], "rows": [runs[0]["rows"][0], {"test_accuracy": 0.5}]}])


def test_the_replay_holds_source_free_methods_to_their_floor():
    """SHOT's step 1 gains 20 points on target while its source accuracy drifts from 0.95 to
    0.6 (it never trains on a source image); DAN's does the same and is refused (it trains on
    source labels: a drop is forgetting). Floor 0.2 over chance (0.3 at K = 10) lets SHOT's
    through, 0.6 does not, and null holds it to max_source_drop like DAN."""
    from transferlab import selection_stats
    from transferlab.selection_stats import NAMES

    def row(step, score, test, source):
        return {"step": step, "val_accuracy": test, "test_accuracy": test,
                **{name: score for name in NAMES}, "source_accuracy": source}

    runs = [{"method": m, "seed": 0, "draw": 0, "classes": 10, "where": "cell.json",
             "rows": [row(0, 0.5, 0.5, 0.95), row(1, 0.6, 0.7, 0.6)]} for m in ("dan", "shot")]
    rule = {"validator": "info_max", "guard": ["info_max"], "margin": 0.0}
    assert [selection_stats.floor_of(r, 0.2) for r in runs] == [None, pytest.approx(0.3)]
    gains = {f: selection_stats.method_table(runs, [rule], 0.01, f)[0]["methods"]
             for f in (None, 0.2, 0.6)}
    assert gains[0.2]["shot"]["gain"] == pytest.approx(0.2) and gains[0.2]["dan"]["gain"] == 0
    assert gains[None]["shot"]["gain"] == 0 == gains[0.6]["shot"]["gain"]
    table = selection_stats.floor_table(runs, rule, 0.01, (None, 0.2))
    assert [t["info_max_gap"]["mean"] for t in table] == [pytest.approx(-0.2), pytest.approx(-0.1)]
    assert "| null (the drop) | -20.0 " in selection_stats.floor_markdown(table)
    # a source-free run must say how many classes its chance is taken over
    with pytest.raises(ValueError, match="cell.json records classes=None"):
        selection_stats.floor_of({**runs[1], "classes": None}, 0.2)
    assert selection_stats.floor_of({**runs[1], "classes": None}, None) is None
    # a cell of a method this version does not have is named, not replayed as another
    with pytest.raises(ValueError, match="checkpoints.nope: no such method"):
        selection_stats.runs_of({"c.json": {"shots": 0, "seed": 0, "checkpoints": {
            "nope": runs[0]["rows"]}}})


@pytest.mark.slow
def test_the_study_through_dvc_adds_a_draw_by_running_only_its_cells(tmp_path):
    """One tiny task, one seed: `dvc repro selection/dvc.yaml` runs the task, its cells and the
    report; a new draw runs only its cell and the report; the status is clean after."""
    repo = copy_project(tmp_path, tiny_params_dict(selection_study={
        **STUDY, "draws": [0], "tasks": ["noise"]}))
    sel = "selection/dvc.yaml:"
    done = ran(dvc(repo, "repro", "selection/dvc.yaml"))
    assert done == ["check_params", f"{sel}task@noise", f"{sel}cell@noise-0-0", f"{sel}report"]
    metrics = json.loads((repo / "selection/metrics.json").read_text())
    assert set(metrics) == {"noise"} and metrics["noise"]["seeds_harmed"] in (0, 1)
    cell = json.loads((repo / "selection/cells/noise-s0-d0.json").read_text())
    assert cell["task_params"] == {"data.target.name": "uci_digits_noise"}
    assert all(rows[0]["step"] == 0 for rows in cell["checkpoints"].values())

    params = read_params(repo)
    params["selection_study"]["draws"] = [0, 1]
    write_params(repo, params)
    assert ran(dvc(repo, "repro", "selection/dvc.yaml")) == [
        "check_params", f"{sel}cell@noise-0-1", f"{sel}report"]
    drawn = json.loads((repo / "selection/cells/noise-s0-d1.json").read_text())["options"]
    assert drawn["dan"]["lr"] != params["transfer"]["dan"]["lr"]
    assert "## noise" in (repo / "selection/report.md").read_text()
    assert "Data and pipelines are up to date" in dvc(repo, "status", "selection/dvc.yaml")
