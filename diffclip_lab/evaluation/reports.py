# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Results of `evaluation.py` and `pope.py` side by side: the paper-style tables with differences to a baseline
(Tables 1-2, and Table 3 for POPE), and its figures (grouped bars of each task's main metric, Figures 1 and 5; the
MMVP-VLM radar, Figure 4; POPE's scores per split)."""

import json
import math
import re
from collections import defaultdict
from pathlib import Path

import matplotlib


matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from ..core.errors import UserError  # noqa: E402
from ..core.formatting import distinct_names, markdown_table  # noqa: E402


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


def resolve_model(name: str, models: list[str]) -> str:
    """A model of the results named in full or by the short name the tables show (`distinct_names`)."""
    if name in models:
        return name
    short = {value: full for full, value in distinct_names(models).items()}
    if name not in short:
        raise UserError(f"--baseline {name!r} is not among the models: {', '.join(short)}.")
    return short[name]


def comparison_rows(records: list[dict], baseline: str) -> tuple[list[str], list[tuple]]:
    """(models, rows): each row (task, dataset, metric, {model: value}, {model: 95 % interval}), main metrics
    first; bookkeeping left out."""
    models = list(dict.fromkeys(record["model"] for record in records))
    baseline = resolve_model(baseline, models)
    models.remove(baseline)
    models.insert(0, baseline)
    table, intervals = defaultdict(dict), defaultdict(dict)
    main_metrics = {}
    for record in records:
        key = (record["task"], record["dataset"])
        main_metrics[key] = record.get("main_metric")
        for metric, value in record["metrics"].items():
            if metric not in BOOKKEEPING and isinstance(value, (int, float)) and not isinstance(value, bool):
                table[key + (metric,)][record["model"]] = float(value)
                if f"{metric}_ci95" in record["metrics"]:
                    intervals[key + (metric,)][record["model"]] = record["metrics"][f"{metric}_ci95"]
    rows = sorted(table, key=lambda row: (row[0], row[1], row[2] != main_metrics[row[:2]], _natural(row[2])))
    return models, [(*row, table[row], intervals[row]) for row in rows]


def markdown(models: list[str], rows: list[tuple]) -> str:
    """The side-by-side table: one row per task, dataset and metric; each model's value (± its 95 % interval where
    there is one) and its difference to the baseline (the first model)."""
    baseline, others = models[0], models[1:]
    names = distinct_names(models)
    datasets = distinct_names(list(dict.fromkeys(row[1] for row in rows)))
    header = ["task", "dataset", "metric", *(names[m] for m in models), *(f"Δ {names[m]}" for m in others)]
    table = []
    for task, dataset, metric, values, intervals in rows:
        cells = [task, datasets[dataset], metric]
        cells += [_value(values.get(m), intervals.get(m)) for m in models]
        cells += [f"{values[m] - values[baseline]:+.4f}" if m in values and baseline in values else "" for m in others]
        table.append(cells)
    return markdown_table(header, table)


def _natural(name: str) -> list:
    """Sorts recall@5 before recall@10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _value(value: float | None, interval: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" + ("" if interval is None else f" ± {interval:.4f}")


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


def bar_plots(records: list[dict], models: list[str], plot_dir: Path) -> list[Path]:
    """Per task, the main metric of every model on every dataset as grouped bars, with 95 % intervals where the
    protocol gives them (few-shot). POPE has its own figure (`pope_bar_plot`)."""
    written, names = [], distinct_names(models)
    for task in sorted({record["task"] for record in records if record["task"] not in ("mmvp", "pope")}):
        values, errors = defaultdict(dict), defaultdict(dict)
        task_records = [record for record in records if record["task"] == task]
        dataset_names = distinct_names([record["dataset"] for record in task_records])
        for record in task_records:
            dataset, metric = dataset_names[record["dataset"]], record["main_metric"]
            values[dataset][record["model"]] = record["metrics"][metric]
            errors[dataset][record["model"]] = record["metrics"].get(f"{metric}_ci95")
        metrics = {record["main_metric"] for record in task_records}
        datasets = sorted(values)
        width = 0.8 / len(models)
        # wider with more bars, up to a page; many narrow bars get upright labels and colours that do not repeat
        crowded = len(models) > 4
        figure, axes = plt.subplots(figsize=(min(16.0, max(4.5, 1.2 * len(datasets) * len(models))), 3.8))
        colours = plt.get_cmap("tab20").colors if len(models) > 10 else [None] * len(models)
        for index, model in enumerate(models):
            positions = [x + (index - (len(models) - 1) / 2) * width for x in range(len(datasets))]
            heights, spread = [values[d].get(model) for d in datasets], [errors[d].get(model) for d in datasets]
            bars(
                axes,
                positions,
                heights,
                width,
                spread,
                "%.3f",
                crowded,
                label=names[model],
                color=colours[index % len(colours)],
            )
        axes.set_xticks(range(len(datasets)), datasets, rotation=20, ha="right")
        axes.set_ylabel(" / ".join(METRIC_LABELS.get(metric, metric) for metric in sorted(metrics)))
        highest = max(max(v.values()) for v in values.values())
        headroom = 1.4 if crowded else 1.2  # room for the labels above the bars
        axes.set_ylim(0, min(1.12 * headroom / 1.2, max(0.05, headroom * highest)))
        axes.set_title(task.replace("_", " ") + (" (bars: 95 % interval)" if task == "few_shot" else ""))
        axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=min(len(models), 4))
        figure.tight_layout()
        path = plot_dir / f"{task}_bars.png"
        figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(figure)
        written.append(path)
    return written


def radar_plot(records: list[dict], models: list[str], plot_dir: Path) -> Path | None:
    """MMVP-VLM pair accuracy per visual pattern, one polygon per model (its own marker and line style, so that
    equal scores stay visible)."""
    mmvp = {record["model"]: record["metrics"] for record in records if record["task"] == "mmvp"}
    if not mmvp:
        return None
    categories = sorted({c for metrics in mmvp.values() for c in metrics if c != "average"})
    angles = [2 * math.pi * i / len(categories) for i in range(len(categories))] + [0.0]
    figure, axes = plt.subplots(figsize=(6.5, 6.5), subplot_kw={"projection": "polar"})
    names = distinct_names(models)
    for index, model in enumerate(m for m in models if m in mmvp):
        marker, line = STYLES[index % len(STYLES)]
        # a pattern without a result is a gap in the polygon (NaN), not a score of 0
        values = [100 * mmvp[model][c] if c in mmvp[model] else math.nan for c in categories]
        missing = [c for c in categories if c not in mmvp[model]]
        label = f"{names[model]} (average {100 * mmvp[model]['average']:.1f} %" + (
            f"; n/a: {', '.join(missing)})" if missing else ")"
        )
        axes.plot(angles, values + values[:1], marker=marker, linestyle=line, linewidth=1.5, label=label)
        if not missing:
            axes.fill(angles, values + values[:1], alpha=0.1)
    axes.set_xticks(angles[:-1], [c.replace(" and ", " &\n") for c in categories], fontsize=7)
    axes.set_ylim(0, 100)
    axes.set_title("MMVP-VLM pair accuracy (%)")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), fontsize=8)
    figure.tight_layout()
    path = plot_dir / "mmvp_radar.png"
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


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
                cell = f"{values[model]:.2f}"
                if model != models[0] and models[0] in values:
                    cell += f" ({round(values[model], 2) - round(values[models[0]], 2):+.2f})"
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
