"""Figures say what was measured: a missing result is "n/a", never a bar of 0, and one seed draws no error bars
(diffclip_lab/evaluation/reports.py `bars`, used by compare.py's and the study's figures)."""

import math

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from diffclip_lab.evaluation import reports, study


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
    (path,) = reports.bar_plots(records, ["clip", "diffclip"], tmp_path)
    rows = [
        study.Row("zeroshot", "a", "acc1", {"clip": [0.4], "diffclip": [0.45]}),
        study.Row("zeroshot", "b", "acc1", {"clip": [0.5]}),
    ]
    bars = study.figure_bars(rows, ["clip", "diffclip"], tmp_path / "study.png", "one seed, one result missing")
    mmvp = [study.Row("mmvp", "shapes", p, {"clip": [0.5, 0.7], "diffclip": [0.6, 0.6]}) for p in ("a", "b", "c")]
    mmvp[1].values.pop("diffclip")
    radar = study.figure_radar(mmvp, ["clip", "diffclip"], tmp_path / "radar.png", "MMVP")
    for figure in (path, bars, radar):
        with Image.open(figure) as image:
            assert image.format == "PNG"
