# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Results of `evaluation.py` and `pope.py` side by side: the paper-style tables with differences to a baseline
(Tables 1-2, and Table 3 for POPE), and its figures (grouped bars of each task's main metric, Figures 1 and 5; the
MMVP-VLM radar, Figure 4; POPE's scores per split). compare.py (`compare`) and the study share the one `Row` type
(each model's values per seed), the figures `bar_figure` and `radar_figure`, and core.formatting's numbers."""

import json
import math
import re
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib


matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ..core.errors import UserError  # noqa: E402
from ..core.formatting import distinct_names, format_difference, format_number, markdown_table  # noqa: E402


def load_records(paths: list[str]) -> list[dict]:
    records = []
    for path in paths:
        try:
            content = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise UserError(f"{path} is not a results file of evaluate.py: {error}") from None
        for record in content if isinstance(content, list) else [content]:
            if not {"model", "task", "dataset", "metrics"} <= set(record):
                raise UserError(f"{path} holds a record without model/task/dataset/metrics.")
            records.append(record)
    if not records:
        raise UserError("no results to compare.")
    return records


# What a task's records hold besides its scores: the table and plots leave these out (a few-shot accuracy shows its
# 95 % interval beside it instead).
BOOKKEEPING = {"cost", "costs_tried", "validation_score", "episodes", "acc1_std", "acc1_ci95"}
METRIC_LABELS = {
    "acc1": "top-1 accuracy",
    "acc5": "top-5 accuracy",
    "mean_per_class_recall": "mean per-class recall",
    "image_retrieval_recall@1": "text→image R@1",
    "image_retrieval_recall@5": "text→image R@5",
    "text_retrieval_recall@5": "image→text R@5",
    "average": "pair accuracy",
}
STYLES = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", (0, (5, 1))), ("P", (0, (3, 1, 1, 1)))]


@dataclass
class Row:
    """One metric of one task on one dataset, as the tables and figures show it: each model's values, one per seed
    in seed order (compare.py's models are single runs: one value each; the study's are variants over seeds), and
    the 95 % interval of a single value where its protocol gives one (few-shot)."""

    task: str
    dataset: str
    metric: str
    values: dict[str, list[float]] = field(default_factory=dict)
    intervals: dict[str, float] = field(default_factory=dict)

    def summary(self, model: str) -> tuple[float | None, float | None]:
        """(mean, spread) of a model's values: the spread is the standard deviation over seeds, or with one value
        its interval; None where there is none. (None, None) where the model has no value."""
        if model not in self.values:
            return None, None
        mean, std = mean_std(self.values[model])
        return mean, self.intervals.get(model) if std is None else std


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n − 1); None for one value, which has no spread."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def resolve_model(name: str, models: list[str]) -> str:
    """A model of the results named in full or by the short name the tables show (`distinct_names`)."""
    if name in models:
        return name
    short = {value: full for full, value in distinct_names(models).items()}
    if name not in short:
        raise UserError(f"--baseline {name!r} is not among the models: {', '.join(short)}.")
    return short[name]


def comparison_rows(records: list[dict], baseline: str) -> tuple[list[str], list[Row]]:
    """(models, rows): the baseline first, then the others in the order of the records; one row per task, dataset
    and metric, each model's value and 95 % interval, main metrics first; bookkeeping left out."""
    models = list(dict.fromkeys(record["model"] for record in records))
    baseline = resolve_model(baseline, models)
    models.remove(baseline)
    models.insert(0, baseline)
    rows, main_metrics = {}, {}
    for record in records:
        key = (record["task"], record["dataset"])
        main_metrics[key] = record.get("main_metric")
        for metric, value in record["metrics"].items():
            if metric not in BOOKKEEPING and isinstance(value, (int, float)) and not isinstance(value, bool):
                row = rows.setdefault(key + (metric,), Row(*key, metric))
                row.values[record["model"]] = [float(value)]
                if f"{metric}_ci95" in record["metrics"]:
                    row.intervals[record["model"]] = record["metrics"][f"{metric}_ci95"]
    order = sorted(rows, key=lambda key: (key[0], key[1], key[2] != main_metrics[key[:2]], _natural(key[2])))
    return models, [rows[key] for key in order]


def markdown(models: list[str], rows: list[Row]) -> str:
    """The side-by-side table: one row per task, dataset and metric; each model's value (± its 95 % interval where
    there is one) and its difference to the baseline (the first model)."""
    baseline, others = models[0], models[1:]
    names = distinct_names(models)
    datasets = distinct_names(list(dict.fromkeys(row.dataset for row in rows)))
    header = ["task", "dataset", "metric", *(names[m] for m in models), *(f"Δ {names[m]}" for m in others)]
    table = []
    for row in rows:
        base = row.summary(baseline)[0]
        cells = [row.task, datasets[row.dataset], row.metric, *(format_number(*row.summary(m)) for m in models)]
        cells += [
            format_difference(row.summary(m)[0] - base) if m in row.values and base is not None else "" for m in others
        ]
        table.append(cells)
    return markdown_table(header, table, cell=str)


def _natural(name: str) -> list:
    """Sorts recall@5 before recall@10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def compare(records: list[dict], baseline: str, plot_dir: Path) -> tuple[str, list[Path]]:
    """What examples/compare.py prints and draws: the side-by-side table (and POPE's, when there are POPE results),
    and the figures in `plot_dir`: each task's bars, the MMVP radar, POPE's bars."""
    models, rows = comparison_rows(records, baseline)
    table = markdown(models, rows)
    if (pope := pope_table(records, models[0])) is not None:
        table += f"\n\nPOPE (%), difference to {models[0]} in parentheses\n\n{pope}"
    plot_dir.mkdir(parents=True, exist_ok=True)
    figures = bar_plots(rows, models, plot_dir)
    for figure in (radar_plot(rows, models, plot_dir), pope_bar_plot(records, models[0], plot_dir)):
        if figure is not None:
            figures.append(figure)
    return table, figures


# ------------------------------------------------------------------------------------------------------ figures


def bars(axes, positions, values, width, errors=None, label_format=None, upright=False, **style):
    """
    One model's (or variant's) bars at `positions`: a bar where it has a value, and where it has none (None) a grey
    "n/a" instead, never a bar of 0. Error bars only where `errors` gives a spread (None: none, e.g. one seed); value
    labels in `label_format` ("%.3f") when given. Returns the bars drawn.
    """
    drawn = [i for i, value in enumerate(values) if value is not None]
    spread = [errors[i] if errors is not None and errors[i] is not None else math.nan for i in drawn]
    container = axes.bar(
        [positions[i] for i in drawn],
        [values[i] for i in drawn],
        width,
        yerr=spread if any(not math.isnan(s) for s in spread) else None,
        **style,
    )
    if label_format:
        axes.bar_label(container, fmt=label_format, fontsize=7, padding=2, rotation=90 if upright else 0)
    for i, value in enumerate(values):
        if value is None:
            axes.text(positions[i], 0, " n/a", ha="center", va="bottom", fontsize=7, color="grey", rotation=90)
            axes.update_datalim([(positions[i] - width / 2, 0), (positions[i] + width / 2, 0)])  # its place shown
    axes.autoscale_view()
    return container


def bar_figure(
    rows: list[Row],
    models: list[str],
    names: dict[str, str],
    ticks: list[str],
    path: Path,
    title: str,
    ylabel: str,
    percent: bool = False,
    label_format: str | None = None,
) -> Path:
    """
    Grouped bars, one group per row (`ticks` their labels), one bar per model (`names` its legend label): the mean of
    its values (×100 when `percent`), the error bar their spread (`Row.summary`: one standard deviation over seeds,
    or a single value's interval; none without one); "n/a" where a model has no value. Value labels in
    `label_format` when given. The figures of compare.py (one per task) and the study (Figures 1 and 5).
    """
    scale, width = 100.0 if percent else 1.0, 0.8 / len(models)
    crowded = len(models) > 4  # narrow bars: upright labels, more room above them
    # wider with more bars, up to what a page shows at a readable scale
    figure, axes = plt.subplots(figsize=(min(16.0, max(6.0, 0.55 * len(rows) * len(models) + 1.5)), 4.2))
    colours = plt.get_cmap("tab20").colors if len(models) > 10 else [None] * len(models)  # none repeats
    highest = 0.0
    for index, model in enumerate(models):
        stats = [row.summary(model) for row in rows]
        means = [None if mean is None else scale * mean for mean, _ in stats]
        spread = [None if std is None else scale * std for _, std in stats]
        highest = max([highest, *(m + (s or 0.0) for m, s in zip(means, spread, strict=True) if m is not None)])
        positions = [x + (index - (len(models) - 1) / 2) * width for x in range(len(rows))]
        style = {"capsize": 2, "label": names.get(model, model), "color": colours[index % len(colours)]}
        bars(axes, positions, means, width, spread, label_format, crowded, **style)
    axes.set_xticks(range(len(rows)), ticks, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel(ylabel)
    headroom = (1.4 if crowded else 1.2) if label_format else 1.05  # room for the labels above the bars
    axes.set_ylim(0, scale * min(1.05 * headroom, max(0.05, headroom * highest / scale)))
    axes.set_title(title, pad=12 + 12 * math.ceil(len(models) / 4))
    # above the axes, where no bar reaches
    axes.legend(fontsize=8, ncol=min(len(models), 4), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(figure)
    return path


def radar_figure(rows: list[Row], models: list[str], names: dict[str, str], path: Path, title: str) -> Path:
    """
    Pair accuracy per MMVP property (the rows; an "average" row goes into the legend), one polygon per model (its
    own marker and line style, so that equal scores stay visible): the mean over seeds, shaded one standard
    deviation either side where there are several seeds. A property without a result is a gap in the polygon and
    named in the legend, never a score of 0. compare.py's radar and the study's Figure 4.
    """
    average = next((row for row in rows if row.metric == "average"), None)
    rows = [row for row in rows if row.metric != "average"]
    angles = [2 * math.pi * i / len(rows) for i in range(len(rows))]
    figure, axes = plt.subplots(figsize=(6.5, 6.5), subplot_kw={"projection": "polar"})
    shown = [model for model in models if any(model in row.values for row in rows)]
    for index, model in enumerate(shown):
        stats = [row.summary(model) if model in row.values else (math.nan, None) for row in rows]
        means = [100 * mean for mean, _ in stats]
        notes = []
        if average is not None and model in average.values:
            notes.append(f"average {format_number(*average.summary(model), decimals=1, scale=100)} %")
        if missing := [row.metric for row in rows if model not in row.values]:
            notes.append(f"n/a: {', '.join(missing)}")
        label = names.get(model, model) + (f" ({'; '.join(notes)})" if notes else "")
        marker, line = STYLES[index % len(STYLES)]
        (drawn,) = axes.plot(angles + angles[:1], means + means[:1], marker=marker, linestyle=line, label=label)
        if all(std is not None for _, std in stats):  # one seed, or a gap: no spread to shade
            lower = [max(0.0, m - 100 * s) for m, (_, s) in zip(means, stats, strict=True)]
            upper = [min(100.0, m + 100 * s) for m, (_, s) in zip(means, stats, strict=True)]
            axes.fill_between(
                angles + angles[:1], lower + lower[:1], upper + upper[:1], alpha=0.15, color=drawn.get_color()
            )
    axes.set_xticks(angles, [row.metric.replace(" and ", " &\n") for row in rows], fontsize=8)
    axes.set_ylim(0, 100)
    axes.set_title(title, pad=18)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2 if len(shown) <= 6 else 1, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(figure)
    return path


def bar_plots(rows: list[Row], models: list[str], plot_dir: Path) -> list[Path]:
    """Per task, the main metric of every model on every dataset as grouped bars (`bar_figure`), with 95 %
    intervals where the protocol gives them (few-shot); `rows` are `comparison_rows`', whose first row of a task
    and dataset is its main metric. MMVP has its radar, POPE its own figure (`pope_bar_plot`)."""
    written, names = [], distinct_names(models)
    main = {}  # (task, dataset) -> its main metric's row
    for row in rows:
        main.setdefault((row.task, row.dataset), row)
    for task in sorted({task for task, _ in main if task not in ("mmvp", "pope")}):
        datasets = distinct_names([dataset for t, dataset in main if t == task])
        shown = sorted(((datasets[d], row) for (t, d), row in main.items() if t == task), key=lambda item: item[0])
        metrics = sorted({row.metric for _, row in shown})
        title = task.replace("_", " ") + (" (bars: 95 % interval)" if task == "few_shot" else "")
        ylabel = " / ".join(METRIC_LABELS.get(metric, metric) for metric in metrics)
        ticks, task_rows = [name for name, _ in shown], [row for _, row in shown]
        path = plot_dir / f"{task}_bars.png"
        written.append(bar_figure(task_rows, models, names, ticks, path, title, ylabel, label_format="%.3f"))
    return written


def radar_plot(rows: list[Row], models: list[str], plot_dir: Path) -> Path | None:
    """MMVP-VLM pair accuracy per visual pattern, one polygon per model (`radar_figure`); None without MMVP
    results. Each model's latest MMVP result counts."""
    latest = {}  # property -> Row of every model's latest result
    for row in rows:
        if row.task == "mmvp":
            latest.setdefault(row.metric, Row("mmvp", "", row.metric)).values.update(row.values)
    if not latest:
        return None
    properties = sorted(metric for metric in latest if metric != "average") + ["average"]
    shown = [latest[metric] for metric in properties if metric in latest]
    path, title = plot_dir / "mmvp_radar.png", "MMVP-VLM pair accuracy (%)"
    return radar_figure(shown, models, distinct_names(models), path, title)


# ------------------------------------------------------------------------------------------------------ POPE

POPE_SPLITS = ("random", "popular", "adversarial")
POPE_METRICS = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "yes_ratio": "yes ratio",
}


def pope_scores(records: list[dict], baseline: str) -> tuple[list[str], dict[tuple[str, str], dict[str, float]]]:
    """(models, {(split, metric): {model: score in %}}) of the POPE records, the baseline model first when it has
    POPE results. A model with two results for one split (two benchmarks, or two runs) is refused: one table
    compares one benchmark."""
    pope = [record for record in records if record["task"] == "pope"]
    models = list(dict.fromkeys(record["model"] for record in pope))
    if baseline in models:
        models.remove(baseline)
        models.insert(0, baseline)
    scores, seen = defaultdict(dict), {}
    for record in pope:
        key = (record["model"], record.get("split"))
        if key[1] not in POPE_SPLITS:
            raise UserError(f"a POPE result of {record['model']} has split {key[1]!r}, not one of POPE's.")
        if key in seen:
            raise UserError(
                f"{record['model']} has two POPE {key[1]} results ({seen[key]} and {record['dataset']}); compare one "
                "benchmark at a time."
            )
        seen[key] = record["dataset"]
        for metric in POPE_METRICS:
            if metric in record["metrics"]:
                scores[key[1], metric][record["model"]] = 100 * record["metrics"][metric]
    return models, scores


def pope_table(records: list[dict], baseline: str) -> str | None:
    """
    POPE in the layout of the DiffCLIP paper's Table 3: one row per split (random, popular, adversarial) and metric
    (accuracy, precision, recall, F1, yes ratio), one column per model, scores in %, and beside each score of a
    model other than the baseline its difference to the baseline's, e.g. `85.31 (+1.20)`. The difference is taken
    between the scores as shown (rounded to 0.01), so that the table adds up. None without POPE results.
    """
    models, scores = pope_scores(records, baseline)
    if not models:
        return None
    names = distinct_names(models)
    rows = []
    for split in POPE_SPLITS:
        for metric, label in POPE_METRICS.items():
            values = scores.get((split, metric))
            if not values:
                continue
            cells = [split, label]
            for model in models:
                if model not in values:
                    cells.append("")
                    continue
                cell = format_number(values[model], decimals=2)
                if model != models[0] and models[0] in values:
                    cell += f" ({format_difference(round(values[model], 2) - round(values[models[0]], 2), 2)})"
                cells.append(cell)
            rows.append(cells)
    return markdown_table(["split", "metric", *(names[m] for m in models)], rows, cell=str)


def pope_bar_plot(records: list[dict], baseline: str, plot_dir: Path) -> Path | None:
    """POPE accuracy, precision, recall and F1 (%) of every model on each split as grouped bars, one panel per
    metric; None without POPE results."""
    models, scores = pope_scores(records, baseline)
    if not models:
        return None
    names = distinct_names(models)
    splits = [split for split in POPE_SPLITS if any(key[0] == split for key in scores)]
    metrics = [metric for metric in POPE_METRICS if metric != "yes_ratio"]
    width = 0.8 / len(models)
    figure, panels = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.8), sharey=True)
    for axes, metric in zip(panels, metrics, strict=True):
        for index, model in enumerate(models):
            heights = [scores.get((split, metric), {}).get(model) for split in splits]
            positions = [x + (index - (len(models) - 1) / 2) * width for x in range(len(splits))]
            bars(axes, positions, heights, width, label_format="%.1f", upright=True, label=names[model])
        axes.set_xticks(range(len(splits)), splits)
        axes.set_title(POPE_METRICS[metric])
        axes.set_ylim(0, 115)  # room for the labels above the bars
    panels[0].set_ylabel("%")
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, fontsize=8, loc="lower center", ncol=min(len(models), 4))
    figure.suptitle("POPE (object hallucination)")
    figure.tight_layout(rect=(0, 0.08, 1, 1))
    path = plot_dir / "pope_bars.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
