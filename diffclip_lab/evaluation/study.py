# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The paper's study at any scale (`examples/study.py`): its runs, its held-out data, and its report.

- Runs: one pretraining per variant and seed, in `<study>/runs/<variant>-seed<seed>`; a run is done when its
  `eval_results.json` exists, and a run that is not is continued from its latest checkpoint.
- Data: without a dataset of the user's, held-out captioned shapes for every task (`write_eval_data`): a labelled
  image-caption set (zero-shot over the 30 classes, retrieval, linear probe and few-shot), the same images labelled
  by shape only and by colour only (linear probe and few-shot), MMVP-style pairs of images that differ in one
  property, and two scenes for the attention maps. All drawn from seeds disjoint from the pretraining data's.
- Results: one `evaluation.py` record per run and evaluation, in `<study>/results/<run>/<evaluation>.json`, with the
  run's variant and seed; `summarize` gathers them into mean ± standard deviation over seeds.
- Report: the paper's Tables 1 and 2 and the MMVP table with each variant's difference to the baseline, marked when
  it is smaller than the seed spread; Figures 1, 4 and 5 (`figure_*`), and `results_markdown`.
"""

import csv
import json
import math
import random
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import matplotlib


matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from modeling_diffclip.configuration_diffclip import VARIANTS as VARIANT_CONFIGS  # noqa: E402

from ..core.errors import UserError  # noqa: E402
from ..core.files import atomic_directory, atomic_write_text  # noqa: E402
from ..core.formatting import PAPER_NAMES, markdown_table  # noqa: E402
from ..demo.shapes import (
    CLASSNAMES,
    COLORS,
    PAIR_PROPERTIES,
    SHAPES,
    SPLIT_SEEDS,
    ZEROSHOT_TEMPLATES,
    render,
    render_objects,
    render_pair,
)
from .reports import STYLES, bars  # noqa: E402


VARIANTS = tuple(VARIANT_CONFIGS)  # clip, diffclip, diffclip-vision, diffclip-dynamic
# the held-out data's seeds, disjoint from the pretraining demo's (train from 0, test from 1_000_003)
EVAL_SEEDS = {"train": 2_000_003, "test": 3_000_003, "mmvp": 4_000_003, "scenes": 5_000_003}
MAX_EXAMPLES = 1_000_000  # per split: keeps the seed ranges apart
# what a label set keeps of the 30 classes "colour shape"
LABEL_SETS = {
    "shapes": (CLASSNAMES, lambda label: label),
    "shape": (list(SHAPES), lambda label: SHAPES.index(CLASSNAMES[label].split(" ")[1])),
    "colour": (list(COLORS), lambda label: list(COLORS).index(CLASSNAMES[label].split(" ")[0])),
}
# the attention maps' two scenes (objects and quadrants) and the two queries asked of both
ATTENTION_SCENES = (
    [("red circle", (0, 0)), ("blue square", (1, 1))],
    [("blue square", (0, 1)), ("red circle", (1, 0))],
)
ATTENTION_QUERIES = ("a red circle", "a blue square")


@dataclass(frozen=True)
class StudyRun:
    """One pretraining of the study."""

    variant: str
    seed: int
    path: Path

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed}"

    @property
    def done(self) -> bool:
        return (self.path / "eval_results.json").is_file() and (self.path / "model").is_dir()


def study_runs(study_dir: Path, variants: list[str], seeds: list[int]) -> list[StudyRun]:
    return [StudyRun(v, s, study_dir / "runs" / f"{v}-seed{s}") for v in variants for s in seeds]


@dataclass(frozen=True)
class Evaluation:
    """One task on one held-out dataset, as `examples/evaluate.py` runs it; `name` is the results file's."""

    name: str
    task: str
    dataset: str
    label: str  # what the report's tables call the dataset
    options: dict = field(default_factory=dict)  # EvalOptions fields beyond task and dataset

    def command(self, script: str, model: str) -> list[str]:
        """The equivalent command line of `script` (examples/evaluate.py)."""
        argv = ["python", script, "--model", model, "--task", self.task, "--dataset", self.dataset]
        for key, value in self.options.items():
            argv += [f"--{key}", str(value)]
        return argv


# ------------------------------------------------------------------------------------------------------ data


def write_eval_data(root: Path, train_examples: int, test_examples: int, mmvp_pairs: int, image_size: int = 48):
    """The held-out captioned shapes, once: `shapes`, `shape` and `colour` (`save_to_disk` folders with train and
    test splits, classes balanced), `mmvp` (the MMVP-VLM layout, `mmvp_pairs` pairs per property), `scenes/*.png`
    for the attention maps, and `templates.txt` (the demo's zero-shot templates). A folder already written is kept."""
    if max(train_examples, test_examples) > MAX_EXAMPLES:
        raise UserError(f"at most {MAX_EXAMPLES} held-out examples per split.")
    if train_examples < 5 * len(CLASSNAMES) or test_examples < len(CLASSNAMES):
        raise UserError(
            f"the held-out data needs at least {5 * len(CLASSNAMES)} training and {len(CLASSNAMES)} test examples "
            "(every class in both, five shots and a validation share of each class in training)."
        )
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "templates.txt").exists():
        atomic_write_text(root / "templates.txt", "\n".join(ZEROSHOT_TEMPLATES) + "\n")
    splits = {"train": train_examples, "test": test_examples}
    if not all((root / name).exists() for name in LABEL_SETS):
        rendered = {split: _balanced_shapes(split, count, image_size) for split, count in splits.items()}
        for name, (classnames, relabel) in LABEL_SETS.items():
            if (root / name).exists():
                continue
            features = datasets.Features(
                {
                    "image": datasets.Image(),
                    "caption": datasets.Value("string"),
                    "label": datasets.ClassLabel(names=classnames),
                }
            )
            columns = {
                split: {
                    "image": [image for image, _, _ in examples],
                    "caption": [caption for _, caption, _ in examples],
                    "label": [relabel(label) for _, _, label in examples],
                }
                for split, examples in rendered.items()
            }
            dataset = datasets.DatasetDict(
                {split: datasets.Dataset.from_dict(data, features=features) for split, data in columns.items()}
            )
            with atomic_directory(root / name) as staging:
                dataset.save_to_disk(str(staging))
    if not (root / "mmvp").exists():
        with atomic_directory(root / "mmvp") as staging:
            write_mmvp_pairs(staging, mmvp_pairs, image_size)
    if not (root / "scenes").exists():
        with atomic_directory(root / "scenes") as staging:
            for index, placed in enumerate(ATTENTION_SCENES):
                image = render_objects(random.Random(EVAL_SEEDS["scenes"] + index), 4 * image_size, placed)
                image.save(staging / f"scene-{index + 1}.png")


def _balanced_shapes(split: str, count: int, image_size: int) -> list[tuple]:
    """`count` captioned shapes of the study's held-out `split`, the classes in turn."""
    start = EVAL_SEEDS[split]
    assert all(abs(start - other) >= MAX_EXAMPLES for other in SPLIT_SEEDS.values())
    return [render(random.Random(start + i), image_size, label=i % len(CLASSNAMES)) for i in range(count)]


def write_mmvp_pairs(root: Path, pairs_per_property: int, image_size: int) -> None:
    """MMVP-VLM's layout (`Questions.csv` and `MLLM_VLM Images/<Type>/<id>.jpg`, ids 2k+1 and 2k+2 a pair) for the
    pairs of `shapes.render_pair`, one Type per property."""
    rows, question = [], 0
    for index, prop in enumerate(PAIR_PROPERTIES):
        folder = root / "MLLM_VLM Images" / prop
        folder.mkdir(parents=True)
        for pair in range(pairs_per_property):
            rng = random.Random(EVAL_SEEDS["mmvp"] + index * MAX_EXAMPLES // 10 + pair)
            images, statements = render_pair(rng, prop, image_size)
            for image, statement in zip(images, statements, strict=True):
                question += 1
                image.save(folder / f"{question}.jpg", quality=95)
                rows.append({"Question ID": question, "Type": prop, "Statement": statement})
    with (root / "Questions.csv").open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, ["Question ID", "Type", "Statement"])
        writer.writeheader()
        writer.writerows(rows)


# the protocol options of each task a study may set (`EvalOptions` fields)
PROTOCOL_OPTIONS = {"linear_probe": ("max_iter",), "few_shot": ("episodes",)}


def _evaluation(name: str, task: str, dataset: str, label: str, protocol: dict, **options) -> Evaluation:
    options.update({key: protocol[key] for key in PROTOCOL_OPTIONS.get(task, ()) if key in protocol})
    return Evaluation(name, task, dataset, label, options)


def shapes_evaluations(root: Path, protocol: dict) -> list[Evaluation]:
    """Every task on the held-out shapes of `write_eval_data`; `protocol` holds options such as `episodes`."""
    shapes = str(root / "shapes")
    evaluations = [
        _evaluation("zeroshot-shapes", "zeroshot", shapes, "shapes", protocol, templates=str(root / "templates.txt")),
        _evaluation("retrieval-shapes", "retrieval", shapes, "shapes", protocol),
    ]
    for task in ("linear_probe", "few_shot"):
        evaluations += [_evaluation(f"{task}-{name}", task, str(root / name), name, protocol) for name in LABEL_SETS]
    evaluations.append(_evaluation("mmvp-shapes", "mmvp", str(root / "mmvp"), "pairs", protocol))
    return evaluations


def user_evaluations(
    classification: list[str], retrieval: list[str], mmvp: list[str], protocol: dict
) -> list[Evaluation]:
    """The tasks of the user's held-out datasets: zero-shot, linear probe and few-shot on each classification
    dataset, retrieval on each captioned one, MMVP on each MMVP-VLM folder. `protocol` holds `split` and
    `train_split`, and options such as `episodes`."""
    names = _short_names(classification + retrieval + mmvp)
    split = {"split": protocol["split"]}
    evaluations = []
    for dataset in classification:
        name = names[dataset]
        training = {**split, "train_split": protocol["train_split"]}
        evaluations += [
            _evaluation(f"zeroshot-{name}", "zeroshot", dataset, name, protocol, **split),
            _evaluation(f"linear_probe-{name}", "linear_probe", dataset, name, protocol, **training),
            _evaluation(f"few_shot-{name}", "few_shot", dataset, name, protocol, **training),
        ]
    evaluations += [
        _evaluation(f"retrieval-{names[d]}", "retrieval", d, names[d], protocol, **split) for d in retrieval
    ]
    evaluations += [_evaluation(f"mmvp-{names[d]}", "mmvp", d, names[d], protocol) for d in mmvp]
    return evaluations


def _short_names(datasets_: list[str]) -> dict[str, str]:
    """File-name-safe, distinct names: the last path part, numbered when two share it."""
    names, seen = {}, defaultdict(int)
    for dataset in dict.fromkeys(datasets_):
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(dataset.rstrip("/")).name) or "data"
        seen[base] += 1
        names[dataset] = base if seen[base] == 1 else f"{base}{seen[base]}"
    return names


# ------------------------------------------------------------------------------------------------------ results


@dataclass
class Row:
    """One metric of one evaluation: every variant's values over the seeds."""

    task: str
    dataset: str
    metric: str
    values: dict[str, list[float]]  # variant -> one value per seed, in seed order


def load_results(results_dir: Path) -> list[dict]:
    """Every record the study wrote, each with its `study` entry (variant, seed, evaluation)."""
    records = []
    for path in sorted(results_dir.glob("*/*.json")):
        record = json.loads(path.read_text())
        if "study" not in record:
            raise UserError(f"{path} is not a result of the study (it has no 'study' entry); move it elsewhere.")
        records.append(record)
    return records


def summarize(records: list[dict], metrics: dict[str, list[str]]) -> list[Row]:
    """The rows of `metrics` (task -> metric names; "*" for all of a record's numbers, "average" last): tasks in the
    order of `metrics`, each task's rows in the order the records give them, values in seed order."""
    rows: dict[tuple, dict[str, dict[int, float]]] = {}
    for record in records:
        study = record["study"]
        names = metrics.get(record["task"], [])
        if names == ["*"]:
            names = sorted(m for m in record["metrics"] if m != "average") + ["average"]
        for metric in names:
            if metric in record["metrics"]:
                key = (record["task"], study["label"], metric)
                rows.setdefault(key, defaultdict(dict))[study["variant"]][study["seed"]] = float(
                    record["metrics"][metric]
                )
    order = list(metrics)  # tasks in the order asked, then datasets and metrics as the records first give them
    keys = sorted(rows, key=lambda key: order.index(key[0]))
    return [
        Row(*key, {variant: [seeds[s] for s in sorted(seeds)] for variant, seeds in rows[key].items()}) for key in keys
    ]


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n − 1); None for one value, which has no spread."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def difference(values: list[float], baseline: list[float]) -> tuple[float, bool]:
    """A variant's mean minus the baseline's, and whether it exceeds the seed spread: |Δ| > sd + sd_baseline
    (the two mean ± sd intervals do not overlap). With a single seed there is no spread and no difference counts."""
    (mean, std), (base, base_std) = mean_std(values), mean_std(baseline)
    if std is None or base_std is None:
        return mean - base, False
    return mean - base, abs(mean - base) > std + base_std


def _percent(values: list[float]) -> str:
    mean, std = mean_std(values)
    return f"{100 * mean:.1f}" + ("" if std is None else f" ± {100 * std:.1f}")


def _delta(values: list[float], baseline: list[float]) -> str:
    delta, beyond = difference(values, baseline)
    shown = f"{round(100 * delta, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"
    return shown if beyond else f"≈ {shown}"


def variant_table(rows: list[Row], variants: list[str], baseline: str, column) -> str:
    """Variants down, one column per row (`column(row)` its header), mean ± sd in %, then each variant's Δ to the
    baseline."""
    headers = ["", *(column(row) for row in rows)]
    table = [
        [PAPER_NAMES.get(v, v), *(_percent(r.values[v]) if v in r.values else "" for r in rows)] for v in variants
    ]
    for variant in variants:
        if variant == baseline:
            continue
        cells = [
            _delta(r.values[variant], r.values[baseline]) if variant in r.values and baseline in r.values else ""
            for r in rows
        ]
        table.append([f"Δ {PAPER_NAMES.get(variant, variant)}", *cells])
    return markdown_table(headers, table, cell=str)


def findings(rows: list[Row], variants: list[str], baseline: str) -> list[str]:
    """Each difference to the baseline that exceeds the seed spread, in words."""
    found = []
    for row in rows:
        for variant in variants:
            if variant == baseline or variant not in row.values or baseline not in row.values:
                continue
            delta, beyond = difference(row.values[variant], row.values[baseline])
            if beyond:
                found.append(
                    f"{PAPER_NAMES.get(variant, variant)} {'above' if delta > 0 else 'below'} "
                    f"{PAPER_NAMES.get(baseline, baseline)} on {describe(row)}: {100 * delta:+.1f} points "
                    f"({_percent(row.values[variant])} vs {_percent(row.values[baseline])})"
                )
    return found


METRIC_NAMES = {
    "acc1": "top-1",
    "text_retrieval_recall@5": "image→text R@5",
    "image_retrieval_recall@5": "text→image R@5",
    "average": "average",
}


def describe(row: Row) -> str:
    task = {"zeroshot": "zero-shot", "linear_probe": "linear probe", "few_shot": "few-shot", "mmvp": "MMVP"}.get(
        row.task, row.task
    )
    return f"{task} {row.dataset} ({METRIC_NAMES.get(row.metric, row.metric)})"


# ------------------------------------------------------------------------------------------------------ figures

# Each task's headline metric, as Figures 1 and 5 show them.
HEADLINE = {
    "zeroshot": ["acc1"],
    "retrieval": ["text_retrieval_recall@5", "image_retrieval_recall@5"],
    "linear_probe": ["acc1"],
    "few_shot": ["acc1"],
    "mmvp": ["average"],
}


def compared_pair(variants: list[str], baseline: str) -> list[str]:
    """The baseline and the first differential variant studied (DiffCLIP when it is): Figures 1 and 2 compare them."""
    return [baseline] + [v for v in ("diffclip", *VARIANTS) if v != baseline and v in variants][:1]


def figure_bars(rows: list[Row], variants: list[str], path: Path, title: str) -> Path:
    """Grouped bars, one group per task and dataset, one bar per variant: the mean over seeds, the error bar one
    standard deviation (none with one seed); "n/a" where a variant has no result."""
    width = 0.8 / len(variants)
    # wider with more bars, up to what a page shows at a readable scale
    figure, axes = plt.subplots(figsize=(min(14.0, max(6.0, 0.55 * len(rows) * len(variants) + 1.5)), 4.2))
    for index, variant in enumerate(variants):
        stats = [mean_std(r.values[variant]) if variant in r.values else (None, None) for r in rows]
        positions = [x + (index - (len(variants) - 1) / 2) * width for x in range(len(rows))]
        means = [None if mean is None else 100 * mean for mean, _ in stats]
        spread = [None if std is None else 100 * std for _, std in stats]
        bars(axes, positions, means, width, spread, capsize=2, label=PAPER_NAMES.get(variant, variant))
    axes.set_xticks(
        range(len(rows)), [describe(r).replace(" (", "\n(") for r in rows], rotation=35, ha="right", fontsize=7
    )
    axes.set_ylabel("score (%), mean ± sd over seeds")
    axes.set_ylim(0, 105)
    axes.set_title(title, pad=24)
    # above the axes: bars reach 100 %
    axes.legend(fontsize=8, ncol=len(variants), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(figure)
    return path


def figure_radar(rows: list[Row], variants: list[str], path: Path, title: str) -> Path:
    """MMVP pair accuracy per property (the rows), one polygon per variant: the mean over seeds, shaded one standard
    deviation either side (not with one seed)."""
    angles = [2 * math.pi * i / len(rows) for i in range(len(rows))]
    figure, axes = plt.subplots(figsize=(6, 6), subplot_kw={"projection": "polar"})
    for index, variant in enumerate(v for v in variants if any(v in r.values for r in rows)):
        # a property without a result is a gap in the polygon (NaN) and named in the legend, not a score of 0
        stats = [mean_std(r.values[variant]) if variant in r.values else (math.nan, None) for r in rows]
        means = [100 * mean for mean, _ in stats]
        missing = [r.metric for r in rows if variant not in r.values]
        marker, line = STYLES[index % len(STYLES)]
        label = PAPER_NAMES.get(variant, variant) + (f" (n/a: {', '.join(missing)})" if missing else "")
        (drawn,) = axes.plot(angles + angles[:1], means + means[:1], marker=marker, linestyle=line, label=label)
        if all(std is not None for _, std in stats):  # one seed, or a gap: no spread to shade
            lower = [max(0.0, m - 100 * d) for m, (_, d) in zip(means, stats, strict=True)]
            upper = [min(100.0, m + 100 * d) for m, (_, d) in zip(means, stats, strict=True)]
            axes.fill_between(
                angles + angles[:1], lower + lower[:1], upper + upper[:1], alpha=0.15, color=drawn.get_color()
            )
    axes.set_xticks(angles, [r.metric for r in rows])
    axes.set_ylim(0, 100)
    axes.set_title(title, pad=18)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=2, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(figure)
    return path
