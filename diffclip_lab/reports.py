# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Results of `evaluation.py` side by side: the paper-style table with differences to a baseline, and its figures
(grouped bars of each task's main metric, Figures 1 and 5; the MMVP-VLM radar, Figure 4)."""

import json
import math
from collections import defaultdict
from pathlib import Path

import matplotlib


matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from .cli import UserError  # noqa: E402
from .tables import markdown_table  # noqa: E402


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


def distinct_names(names: list[str]) -> dict[str, str]:
    """The shortest trailing path parts that tell the names apart ("runs/clip/model" -> "clip/model")."""
    parts = {name: Path(name).parts or (name,) for name in names}
    for depth in range(1, max(len(p) for p in parts.values()) + 1):
        short = {name: "/".join(p[-depth:]) for name, p in parts.items()}
        if len(set(short.values())) == len(set(names)):
            return short
    return {name: name for name in names}


def comparison_rows(records: list[dict], baseline: str) -> tuple[list[str], list[tuple]]:
    """(models, rows): each row (task, dataset, metric, {model: value}), main metrics first."""
    models = list(dict.fromkeys(record["model"] for record in records))
    if baseline not in models:
        raise UserError(f"--baseline {baseline!r} is not among the models: {models}.")
    models.remove(baseline)
    models.insert(0, baseline)
    table = defaultdict(dict)
    main_metrics = {}
    for record in records:
        key = (record["task"], record["dataset"])
        main_metrics[key] = record.get("main_metric")
        for metric, value in record["metrics"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                table[key + (metric,)][record["model"]] = float(value)
    rows = sorted(
        table.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] != main_metrics[item[0][:2]], item[0][2])
    )
    return models, [(task, dataset, metric, values) for (task, dataset, metric), values in rows]


def markdown(models: list[str], rows: list[tuple]) -> str:
    """The side-by-side table: one row per task, dataset and metric; each model's value and its difference to the
    baseline (the first model)."""
    baseline, others = models[0], models[1:]
    names = distinct_names(models)
    datasets = distinct_names(list(dict.fromkeys(row[1] for row in rows)))
    header = ["task", "dataset", "metric", *(names[m] for m in models), *(f"Δ {names[m]}" for m in others)]
    table = []
    for task, dataset, metric, values in rows:
        cells = [task, datasets[dataset], metric]
        cells += [f"{values[m]:.4f}" if m in values else "" for m in models]
        cells += [f"{values[m] - values[baseline]:+.4f}" if m in values and baseline in values else "" for m in others]
        table.append(cells)
    return markdown_table(header, table)


def bar_plots(records: list[dict], models: list[str], plot_dir: Path) -> list[Path]:
    """Per task, the main metric of every model on every dataset, as grouped bars."""
    written, names = [], distinct_names(models)
    for task in sorted({record["task"] for record in records if record["task"] != "mmvp"}):
        values = defaultdict(dict)
        task_records = [record for record in records if record["task"] == task]
        dataset_names = distinct_names([record["dataset"] for record in task_records])
        for record in task_records:
            values[dataset_names[record["dataset"]]][record["model"]] = record["metrics"][record["main_metric"]]
        datasets = sorted(values)
        width = 0.8 / len(models)
        figure, axes = plt.subplots(figsize=(max(4.0, 1.2 * len(datasets) * len(models)), 3.5))
        for index, model in enumerate(models):
            heights = [values[d].get(model, 0.0) for d in datasets]
            positions = [x + (index - (len(models) - 1) / 2) * width for x in range(len(datasets))]
            bars = axes.bar(positions, heights, width, label=names[model])
            axes.bar_label(bars, fmt="%.3f", fontsize=7)
        axes.set_xticks(range(len(datasets)), datasets, rotation=20, ha="right")
        axes.set_ylabel(next(r["main_metric"] for r in records if r["task"] == task))
        axes.set_title(task.replace("_", " "))
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = plot_dir / f"{task}_bars.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    return written


def radar_plot(records: list[dict], models: list[str], plot_dir: Path) -> Path | None:
    """MMVP-VLM accuracy per visual pattern, one polygon per model."""
    mmvp = {record["model"]: record["metrics"] for record in records if record["task"] == "mmvp"}
    if not mmvp:
        return None
    categories = sorted({c for metrics in mmvp.values() for c in metrics if c != "average"})
    angles = [2 * math.pi * i / len(categories) for i in range(len(categories))] + [0.0]
    figure, axes = plt.subplots(figsize=(6, 6), subplot_kw={"projection": "polar"})
    names = distinct_names(models)
    for model in (m for m in models if m in mmvp):
        values = [mmvp[model].get(c, 0.0) for c in categories]
        axes.plot(angles, values + values[:1], label=f"{names[model]} (avg {mmvp[model]['average']:.1f})")
        axes.fill(angles, values + values[:1], alpha=0.15)
    axes.set_xticks(angles[:-1], [c.replace(" and ", " &\n") for c in categories], fontsize=7)
    axes.set_ylim(0, 100)
    axes.set_title("MMVP-VLM pair accuracy (%)")
    axes.legend(loc="lower right", bbox_to_anchor=(1.25, -0.1), fontsize=8)
    figure.tight_layout()
    path = plot_dir / "mmvp_radar.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
