"""Multi-seed statistics against values computed by hand (the arithmetic is in the comments)."""

import json

import pytest

from transferlab.stats import paired_gain, study_markdown, study_table, summarize, t_quantile


def test_t_quantile_matches_the_t_table():
    assert t_quantile(2) == pytest.approx(4.302652729911275)  # n=3 seeds, two-sided 95 %
    assert t_quantile(4) == pytest.approx(2.7764, abs=1e-4)   # n=5 seeds
    assert t_quantile(4, level=0.90) == pytest.approx(2.1318, abs=1e-4)
    with pytest.raises(ValueError, match="df"):
        t_quantile(0)


def test_summarize_three_seeds():
    s = summarize([0.90, 0.92, 0.94])
    # mean = 2.76 / 3 = 0.92; deviations −0.02, 0, +0.02 -> var = 0.0008 / 2 = 0.0004, std 0.02
    # half-width = 4.3027 · 0.02 / √3 = 0.086054 / 1.732051 = 0.049683
    assert s["n"] == 3
    assert s["mean"] == pytest.approx(0.92)
    assert s["std"] == pytest.approx(0.02)
    assert s["ci_low"] == pytest.approx(0.92 - 0.049683, abs=1e-6)
    assert s["ci_high"] == pytest.approx(0.92 + 0.049683, abs=1e-6)


def test_summarize_one_seed_has_no_interval_and_stays_json():
    s = summarize([0.91])
    assert s == {"mean": 0.91, "std": None, "n": 1, "ci_low": None, "ci_high": None}
    assert "NaN" not in json.dumps(s)
    with pytest.raises(ValueError, match="empty"):
        summarize([])


def test_pairing_by_seed_finds_a_gain_the_raw_intervals_hide():
    scratch = {0: 0.88, 1: 0.91, 2: 0.94}
    finetune = {0: 0.895, 1: 0.93, 2: 0.965}  # scratch + 0.015, 0.020, 0.025
    # raw: scratch 0.91 ± 4.3027·0.03/√3 = ±0.074525 -> [0.8355, 0.9845]
    #      finetune 0.93 ± 4.3027·0.035/√3 = ±0.086946 -> [0.8431, 1.0169]: they overlap
    a, b = summarize(scratch.values()), summarize(finetune.values())
    assert b["ci_low"] < a["ci_high"]
    # paired: differences 0.015, 0.020, 0.025 -> mean 0.02, std 0.005,
    # half-width 4.3027·0.005/√3 = 0.012421 -> [0.007579, 0.032421]: zero excluded
    g = paired_gain(finetune, scratch)
    assert g["n"] == 3 and g["mean"] == pytest.approx(0.02) and g["std"] == pytest.approx(0.005)
    assert g["ci_low"] == pytest.approx(0.007579, abs=1e-6)
    assert g["ci_high"] == pytest.approx(0.032421, abs=1e-6)
    assert g["positive"] and not g["negative_transfer"]


def test_negative_transfer_needs_the_whole_interval_below_zero():
    scratch = {0: 0.90, 1: 0.92, 2: 0.94}
    # differences −0.035, −0.030, −0.025: mean −0.03, std 0.005, ci_high = −0.03 + 0.012421
    hurt = paired_gain({0: 0.865, 1: 0.89, 2: 0.915}, scratch)
    assert hurt["ci_high"] == pytest.approx(-0.017579, abs=1e-6)
    assert hurt["negative_transfer"] and not hurt["positive"]
    # differences −0.03, −0.02, −0.01: mean −0.02, std 0.01, ci_high = −0.02 + 0.024841 > 0
    unsure = paired_gain({0: 0.87, 1: 0.90, 2: 0.93}, scratch)
    assert unsure["ci_high"] == pytest.approx(0.004841, abs=1e-6)
    assert not unsure["negative_transfer"] and not unsure["positive"]


def test_paired_gain_with_one_seed_has_no_verdict():
    g = paired_gain({7: 0.80}, {7: 0.90})  # −0.10, but one seed says nothing about spread
    assert g["mean"] == pytest.approx(-0.10) and g["ci_high"] is None
    assert not g["negative_transfer"] and not g["positive"]


def test_paired_gain_rejects_mismatched_seeds_by_name():
    with pytest.raises(ValueError, match=r"missing from scratch \[2\].*strategy \[3\]"):
        paired_gain({0: 0.9, 1: 0.9, 2: 0.9}, {0: 0.8, 1: 0.8, 3: 0.8})


def _records(strategy, shots, values, metric="accuracy"):
    return [{"strategy": strategy, "shots": shots, "seed": s, metric: v}
            for s, v in enumerate(values)]


def _study():
    return (_records("zeta", 5, [0.5, 0.6, 0.7]) + _records("joint", 5, [0.9, 0.9, 0.9])
            + _records("finetune", 5, [0.895, 0.93, 0.965])
            + _records("scratch", 5, [0.88, 0.91, 0.94])
            + _records("source_only", 1, [0.874, 0.874, 0.874])
            + _records("features", 1, [0.865, 0.89, 0.915])
            + _records("scratch", 1, [0.90, 0.92, 0.94]) + _records("alpha", 5, [0.8, 0.8, 0.8]))


def test_study_table_orders_rows_and_pairs_with_scratch():
    rows = study_table(_study())
    assert [(r["shots"], r["strategy"]) for r in rows] == [
        (1, "source_only"), (1, "scratch"), (1, "features"),
        (5, "scratch"), (5, "finetune"), (5, "joint"), (5, "alpha"), (5, "zeta")]
    by = {(r["shots"], r["strategy"]): r for r in rows}
    assert "gain" not in by[5, "scratch"] and not by[5, "scratch"]["negative_transfer"]
    ft = by[5, "finetune"]  # the pairing example above, rounded to 4 decimals
    assert ft["gain"] == {"mean": 0.02, "std": 0.005, "n": 3, "ci_low": 0.0076,
                          "ci_high": 0.0324, "positive": True, "negative_transfer": False}
    assert by[1, "features"]["negative_transfer"]  # the negative-transfer example above
    # source_only − scratch = −0.026, −0.046, −0.066: mean −0.046, std 0.02,
    # ci_high = −0.046 + 4.3027·0.02/√3 = −0.046 + 0.049683 = +0.0037 -> not flagged
    assert by[1, "source_only"]["gain"]["ci_high"] == 0.0037
    assert not by[1, "source_only"]["negative_transfer"]
    assert by[1, "source_only"]["std"] == 0.0  # three equal values: a zero-width interval


def test_study_table_one_seed_gives_rows_without_intervals():
    rows = study_table(_records("scratch", 5, [0.90]) + _records("finetune", 5, [0.93]))
    assert rows[1]["gain"]["mean"] == 0.03 and rows[1]["gain"]["ci_low"] is None
    assert "NaN" not in json.dumps(rows)
    assert study_markdown(rows).splitlines()[3] == "| finetune | 5 | 1 | 93.0 | +3.0 | — |  |"


def test_study_table_raises_on_mismatched_seeds_and_duplicates():
    only_two = _records("scratch", 5, [0.9, 0.9]) + _records("finetune", 5, [0.9, 0.9, 0.9])
    with pytest.raises(ValueError, match="seeds differ"):
        study_table(only_two)
    with pytest.raises(ValueError, match="duplicate"):
        study_table(_records("scratch", 5, [0.9]) * 2)


def test_study_table_without_scratch_has_no_gain_and_reads_other_metrics():
    rows = study_table(_records("finetune", 5, [0.5, 0.7], "macro_f1"), metric="macro_f1")
    assert rows[0]["mean"] == 0.6 and rows[0]["metric"] == "macro_f1" and "gain" not in rows[0]
    assert study_markdown(rows).startswith("| strategy | k | seeds | macro_f1 %")


def test_study_markdown_shape():
    rows = study_table(_study())
    lines = study_markdown(rows).splitlines()
    assert lines[0] == ("| strategy | k | seeds | accuracy % (mean ± 95 % CI) "
                        "| gain over scratch (points, 95 % CI) "
                        "| gain over source-only (points, 95 % CI) | negative transfer |")
    assert len(lines) == 2 + len(rows) and all(line.count("|") == 8 for line in lines)
    # scratch at k=1: 92.0 ± 100·0.049683; over source-only (87.4): gains 2.6, 4.6, 6.6 points,
    # std 2.0 -> half-width 4.3027·2.0/√3 = 5.0
    assert lines[3] == "| scratch | 1 | 3 | 92.0 ± 5.0 | — | +4.6 [\u22120.4, +9.6] |  |"
    # features at k=1: raw std 0.025 -> ± 100·4.3027·0.025/√3 = ±6.2; gain over scratch −3.0
    # [−4.2, −1.8] (100·0.012421); over source-only −0.9, +1.6, +4.1 -> +1.6 ± 6.2. The better
    # baseline (scratch, 92.0 > 87.4) judges it: negative transfer
    assert lines[4] == ("| features | 1 | 3 | 89.0 ± 6.2 | \u22123.0 [\u22124.2, \u22121.8] "
                        "| +1.6 [\u22124.6, +7.8] | yes (vs scratch) |")
    # finetune at k=5: +2.0 [+0.8, +3.2]; raw 93.0 ± 100·0.086946; no source-only at k=5
    assert lines[6] == "| finetune | 5 | 3 | 93.0 ± 8.7 | +2.0 [+0.8, +3.2] | — |  |"
