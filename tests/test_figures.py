"""Figures and tables say what was measured: a missing result is "n/a", never a bar of 0, and one seed draws no
error bars (diffclip_lab/evaluation/reports.py, whose rows, figures and numbers compare.py and the study share)."""

import math

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from diffclip_lab.core.formatting import format_difference, format_number
from diffclip_lab.evaluation import reports, study


def test_numbers_are_written_one_way():
    assert format_number(0.5, 0.01) == "0.5000 ± 0.0100"  # compare.py: a value and its 95 % interval
    assert format_number(0.6, 0.14142, decimals=1, scale=100) == "60.0 ± 14.1"  # the study: mean ± sd in %
    assert format_number(85.314, decimals=2) == "85.31"  # POPE, already in %
    assert [format_number(None), format_number(math.nan), format_number(3)] == ["", "", "3"]
    assert format_difference(0.25, decimals=1, scale=100) == "+25.0"
    assert format_difference(-0.00006) == "-0.0001"
    assert format_difference(-0.00001) == "+0.0000"  # rounds to zero: no sign of a difference not shown
    assert format_difference(-0.0004, decimals=1, scale=100) == "+0.0"


def test_a_row_summarises_seeds_by_their_spread_and_a_single_value_by_its_interval():
    row = reports.Row("few_shot", "d", "acc1", {"a": [0.5, 0.7], "b": [0.4]}, {"a": 0.01, "b": 0.02})
    assert row.summary("a") == (pytest.approx(0.6), pytest.approx(math.sqrt(0.02)))  # (0.1² + 0.1²) / (2 − 1)
    assert row.summary("b") == (0.4, 0.02)
    assert row.summary("c") == (None, None)


def test_bars_draw_values_mark_missing_ones_and_only_real_error_bars():
    figure, axes = plt.subplots()
    drawn = reports.bars(axes, [0, 1, 2], [0.5, None, 0.0], 0.4, [0.1, None, None], "%.3f", label="model")
    assert [bar.get_x() + bar.get_width() / 2 for bar in drawn] == pytest.approx([0, 2])  # no bar where missing
    assert [bar.get_height() for bar in drawn] == [0.5, 0.0]  # a measured 0 is a bar of 0
    assert [text.get_text() for text in axes.texts if text.get_text().strip() == "n/a"] == [" n/a"]
    assert next(t for t in axes.texts if t.get_text().strip() == "n/a").get_position()[0] == 1
    assert sorted(t.get_text() for t in axes.texts if t.get_text().strip() != "n/a") == ["0.000", "0.500"]
    assert drawn.errorbar is not None
    segments = drawn.errorbar.lines[2][0].get_segments()
    assert len([s for s in segments if len(s) and not math.isnan(s[0][1])]) == 1  # the one spread given, no other
    plt.close(figure)

    figure, axes = plt.subplots()
    one_seed = reports.bars(axes, [0, 1], [0.7, 0.6], 0.4, [None, None], capsize=2)
    assert one_seed.errorbar is None  # one seed: no spread, so no error bars (not bars of zero width)
    plt.close(figure)


def record(model, dataset, value):
    return {"model": model, "task": "zeroshot", "dataset": dataset, "main_metric": "acc1", "metrics": {"acc1": value}}


def test_compare_and_study_figures_render_with_missing_results_and_one_seed(tmp_path):
    records = [record("clip", "a", 0.4), record("clip", "b", 0.5), record("diffclip", "a", 0.45)]
    models, rows = reports.comparison_rows(records, "clip")
    (path,) = reports.bar_plots(rows, models, tmp_path)
    rows = [
        reports.Row("zeroshot", "a", "acc1", {"clip": [0.4], "diffclip": [0.45]}),
        reports.Row("zeroshot", "b", "acc1", {"clip": [0.5]}),
    ]
    bars = study.figure_bars(rows, ["clip", "diffclip"], tmp_path / "study.png", "one seed, one result missing")
    mmvp = [reports.Row("mmvp", "shapes", p, {"clip": [0.5, 0.7], "diffclip": [0.6, 0.6]}) for p in ("a", "b", "c")]
    mmvp[1].values.pop("diffclip")
    radar = study.figure_radar(mmvp, ["clip", "diffclip"], tmp_path / "radar.png", "MMVP")
    for figure in (path, bars, radar):
        with Image.open(figure) as image:
            assert image.format == "PNG"
