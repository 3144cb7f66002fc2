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
  it is smaller than the seed spread; Figures 1, 4 and 5 (`figure_*`, drawn by `reports`), Figure 2 (`relevance`),
  compare.py's table and figures of every run (`reports.compare`), all in `results.md` (`report`).
- Running: `run_study` does every step in turn (`pretrain`, which launches pretrain.py; `evaluate_runs`;
  `compare_runs`; `attention_maps`; `report`), skipping what is done, or with --dry_run prints the commands each
  step equals.
"""

import csv
import importlib.util
import json
import logging
import os
import random
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import datasets

from modeling_diffclip.configuration_diffclip import VARIANTS as VARIANT_CONFIGS

from ..core.errors import UserError
from ..core.files import atomic_directory, atomic_write_text
from ..core.formatting import PAPER_NAMES, format_difference, format_number, markdown_table
from ..core.provenance import git_commit
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
from .relevance import attention_figure, load_for_relevance
from .reports import Row, bar_figure, compare, load_records, mean_std, radar_figure
from .tasks import DualEncoder, EvalOptions, FeatureCache, evaluate


logger = logging.getLogger(__name__)


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
    """The rows of `metrics` (task -> metric names; "*" for all of a record's numbers, "average" last), each
    variant's values over the seeds: tasks in the order of `metrics`, each task's rows in the order the records
    give them, values in seed order."""
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


def difference(values: list[float], baseline: list[float]) -> tuple[float, bool]:
    """A variant's mean minus the baseline's, and whether it exceeds the seed spread: |Δ| > sd + sd_baseline
    (the two mean ± sd intervals do not overlap). With a single seed there is no spread and no difference counts."""
    (mean, std), (base, base_std) = mean_std(values), mean_std(baseline)
    if std is None or base_std is None:
        return mean - base, False
    return mean - base, abs(mean - base) > std + base_std


def _percent(values: list[float]) -> str:
    """Mean ± sd over the seeds, in %."""
    return format_number(*mean_std(values), decimals=1, scale=100)


def _delta(values: list[float], baseline: list[float]) -> str:
    delta, beyond = difference(values, baseline)
    return ("" if beyond else "≈ ") + format_difference(delta, decimals=1, scale=100)


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
    """Figures 1 and 5: each variant's headline metrics, mean ± sd over the seeds in % (`reports.bar_figure`)."""
    ticks = [describe(row).replace(" (", "\n(") for row in rows]
    return bar_figure(rows, variants, PAPER_NAMES, ticks, path, title, "score (%), mean ± sd over seeds", percent=True)


def figure_radar(rows: list[Row], variants: list[str], path: Path, title: str) -> Path:
    """Figure 4: MMVP pair accuracy per property, mean ± sd over the seeds (`reports.radar_figure`)."""
    return radar_figure(rows, variants, PAPER_NAMES, path, title)


# ------------------------------------------------------------------------------------------------------ running


def script_path(scripts: Path, name: str) -> str:
    """An example script's path as the printed commands show it: relative to the working directory."""
    return os.path.relpath(scripts / name)


# the pretrain.py options the study gives every run itself (`pretrain_arguments`; --dataset and --num_epochs too
# when the study is given them)
STUDY_SETS = (
    "--variant",
    "--seed",
    "--output_dir",
    "--resume_from_checkpoint",
    "--checkpointing_steps",
    "--overwrite",  # would delete a run the study continues
)


def check_pretrain_options(args, scripts: Path) -> None:
    """pretrain.py's own check of a run's options (ranges, combinations), before the study writes or launches
    anything: a bad option after -- stops here, with pretrain.py's message, not at the first launch."""
    spec = importlib.util.spec_from_file_location("study_pretrain", scripts / "pretrain.py")
    pretrain_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain_script)
    for variant in args.variants:
        run = StudyRun(variant, args.seeds[0], Path(args.output_dir) / "runs" / "check")
        pretrain_script.parse_args(pretrain_arguments(args, run))


def pretrain_command(args, run: StudyRun, scripts: Path) -> list[str]:
    """`accelerate launch -q examples/pretrain.py` for one run (-q: a failed run shows its error, without the
    launcher's traceback); it continues the run from its latest checkpoint."""
    launch = ["accelerate", "launch", "-q"]
    if args.config_file:
        launch += ["--config_file", args.config_file]
    if args.num_processes:
        launch += ["--num_processes", str(args.num_processes)]
    return [*launch, script_path(scripts, "pretrain.py"), *pretrain_arguments(args, run)]


def pretrain_arguments(args, run: StudyRun) -> list[str]:
    """pretrain.py's options for one run: the study's, then those given after --."""
    script = ["--variant", run.variant, "--seed", str(run.seed)]
    script += ["--output_dir", str(run.path), "--resume_from_checkpoint", "latest"]
    script += ["--checkpointing_steps", str(args.checkpointing_steps)]
    if args.dataset:
        script += ["--dataset", args.dataset]
    if args.num_epochs:
        script += ["--num_epochs", str(args.num_epochs)]
    return script + args.pretrain_args


def pretrain(args, runs: list[StudyRun], timings_file: Path, scripts: Path) -> None:
    """Each run not done yet, launched in turn; the time each took is added up in `timings_file`."""
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    for run in runs:
        if run.done:
            logger.info(f"{run.name}: trained already")
            continue
        command = pretrain_command(args, run, scripts)
        print(shlex.join(command), flush=True)
        if args.dry_run:
            continue
        start = time.perf_counter()
        # the launcher of this Python, whatever the PATH holds
        if subprocess.run([sys.executable, "-m", "accelerate.commands.launch", *command[2:]]).returncode != 0:
            raise UserError(
                f"the pretraining of {run.name} failed (its log is above); fix the cause and rerun the same command: "
                "the study continues from the run's last checkpoint."
            )
        timings[run.name] = timings.get(run.name, 0.0) + time.perf_counter() - start
        atomic_write_text(timings_file, json.dumps(timings, indent=2))


def evaluate_runs(args, runs: list[StudyRun], evaluations: list[Evaluation], output: Path, scripts: Path) -> None:
    """Every evaluation of every run not evaluated yet, each model loaded once; features cached in the study."""
    cache = FeatureCache(output / "cache")
    for run in runs:
        todo = [e for e in evaluations if not (output / "results" / run.name / f"{e.name}.json").exists()]
        script = script_path(scripts, "evaluate.py")
        for evaluation in todo:
            print(shlex.join(evaluation.command(script, str(run.path / "model"))), flush=True)
        if args.dry_run or not todo:
            continue
        encoder = DualEncoder.from_pretrained(str(run.path / "model"), args.device, label=run.name)
        for evaluation in todo:
            options = EvalOptions(dataset=evaluation.dataset, **evaluation.options)
            record = evaluate(encoder, evaluation.task, options, cache)
            record["study"] = {"variant": run.variant, "seed": run.seed, "evaluation": evaluation.name}
            record["study"]["label"] = evaluation.label
            path = output / "results" / run.name / f"{evaluation.name}.json"
            atomic_write_text(path, json.dumps(record, indent=2))


def compare_runs(args, runs: list[StudyRun], output: Path, scripts: Path) -> None:
    """What examples/compare.py gives for every run's results (`reports.compare`): each run side by side in
    `compare/table.md`, its bar plots and radar beside it."""
    baseline = next(run for run in runs if run.variant == args.baseline)
    options = ["--baseline", str(baseline.path / "model"), "--plot_dir", str(output / "compare")]
    pattern = shlex.quote(str(output / "results")) + "/*/*.json"  # as a shell expands it
    print(f"python {shlex.quote(script_path(scripts, 'compare.py'))} {pattern} {shlex.join(options)}", flush=True)
    if args.dry_run:
        return
    paths = [str(p) for run in runs for p in sorted((output / "results" / run.name).glob("*.json"))]
    table, _ = compare(load_records(paths), str(baseline.path / "model"), output / "compare")
    atomic_write_text(output / "compare" / "table.md", table + "\n")


def attention_maps(args, runs: list[StudyRun], images: list[Path], output: Path, scripts: Path) -> list[Path]:
    """Figure 2: the baseline's and DiffCLIP's first seed, the same queries on each image."""
    models = [next(run for run in runs if run.variant == v) for v in compared_pair(args.variants, args.baseline)]
    queries = args.query or list(ATTENTION_QUERIES)
    figures = [output / "figures" / f"figure2_attention_{i + 1}.png" for i in range(len(images))]
    if args.dry_run:
        for image in images:
            command = ["python", script_path(scripts, "attention_maps.py")]
            command += [x for run in models for x in ("--model", str(run.path / "model"))]
            command += ["--image", str(image), *(x for q in queries for x in ("--query", q))]
            print(shlex.join(command), flush=True)
        return figures
    loaded = [
        (f"{PAPER_NAMES[run.variant]} (seed {run.seed})", *load_for_relevance(str(run.path / "model"), args.device))
        for run in models
    ]
    for image, figure in zip(images, figures, strict=True):
        attention_figure(loaded, image, queries, figure)
    return figures


def code_version(scripts: Path) -> str:
    """The commit of the checkout of `scripts`, and whether it had changes; "unknown" outside a git checkout."""
    commit, dirty = git_commit(scripts)
    if commit is None:
        return "unknown"
    return f"commit {commit}" + (" with uncommitted changes" if dirty else "")


def report(args, runs, output: Path, attention: list[Path], started: float, machine: dict, scripts: Path) -> Path:
    """results.md: how the study was run (`machine`: `environment()`'s record), the paper's tables and figures,
    and what the numbers support."""
    records = load_results(output / "results")
    wanted = {(run.variant, run.seed) for run in runs}
    records = [r for r in records if (r["study"]["variant"], r["study"]["seed"]) in wanted]
    variants, baseline = args.variants, args.baseline
    headline = summarize(records, HEADLINE)
    figures = output / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    table1 = [r for r in headline if r.task in ("linear_probe", "few_shot")]
    table2 = summarize(
        records, {"retrieval": ["text_retrieval_recall@5", "image_retrieval_recall@5"], "zeroshot": ["acc1"]}
    )
    mmvp = [r for r in summarize(records, {"mmvp": ["*"]}) if r.metric != "average"]
    shown = compared_pair(variants, baseline)
    figure1 = figure_bars(headline, shown, figures / "figure1_clip_vs_diffclip.png", "CLIP vs DiffCLIP across tasks")
    figure5 = figure_bars(headline, variants, figures / "figure5_variants.png", "The variants across tasks")
    radar_title = "MMVP-style pair accuracy (%), shaded ± 1 sd"
    figure4 = figure_radar(mmvp, variants, figures / "figure4_mmvp_radar.png", radar_title) if mmvp else None

    timings_file = output / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    found = findings(headline + mmvp, variants, baseline)
    seeds = ", ".join(map(str, args.seeds))
    lines = [
        "# DiffCLIP study: " + ", ".join(PAPER_NAMES[v] for v in variants) + f", seeds {seeds}",
        "",
        f"- date: {datetime.now().astimezone().date().isoformat()}",
        f"- machine: {machine['cpu']} ({machine['cpu_threads']} threads), {machine['device']}; "
        f"torch {machine['torch']}, transformers {machine['transformers']}; code: {code_version(scripts)}",
        "- command: `python examples/study.py " + shlex.join(args.command) + "`",
        f"- pretraining: {args.dataset or 'the demo captioned shapes'}; "
        + (f"{args.num_epochs} epochs per run" if args.num_epochs else "pretrain.py's options")
        + (f", `{shlex.join(args.pretrain_args)}`" if args.pretrain_args else ""),
        f"- time: pretraining {sum(timings.values()) / 60:.1f} min over {len(timings)} runs; this invocation "
        f"{(time.perf_counter() - started) / 60:.1f} min in all",
        "",
        "Every number is the mean ± sample standard deviation over the seeds, in %. Δ is a variant's mean minus "
        f"{PAPER_NAMES[baseline]}'s; **≈** marks a difference no larger than the seed spread "
        "(|Δ| ≤ sd + sd of the baseline: the two mean ± sd intervals overlap), which this study does not count as "
        "a difference. With one seed there is no spread and every Δ is marked. With a few seeds this is a screen, "
        "not a significance test: a difference beyond the spread is worth a larger study, not a conclusion.",
        "",
        "## Differences beyond the seed spread",
        "",
        *([f"- {line}" for line in found] or ["- None: no difference between the variants exceeds the seed spread."]),
        "",
    ]
    if table1:
        lines += ["## Table 1: linear probe and few-shot (top-1 %)", ""]
        for task, title in (("linear_probe", "Linear probe"), ("few_shot", "Few-shot (5-way 5-shot)")):
            rows = [r for r in table1 if r.task == task]
            if rows:
                lines += [f"**{title}**", "", variant_table(rows, variants, baseline, lambda r: r.dataset), ""]
    if table2:
        lines += ["## Table 2: retrieval (R@5 %) and zero-shot (top-1 %)", ""]
        lines += [variant_table(table2, variants, baseline, describe), ""]
    if mmvp:
        lines += ["## MMVP-style pairs (pair accuracy %, chance 25)", ""]
        mmvp_rows = mmvp + [r for r in headline if r.task == "mmvp"]
        lines += [variant_table(mmvp_rows, variants, baseline, lambda r: r.metric), ""]
    lines += ["## Figures", ""]
    for title, path in (
        ("Figure 1: CLIP vs DiffCLIP across tasks", figure1),
        ("Figure 4: MMVP-style pairs by property", figure4),
        ("Figure 5: the four variants across tasks", figure5),
        *((f"Figure 2: attention maps, image {i + 1}", p) for i, p in enumerate(attention)),
    ):
        if path is not None:
            lines += [f"**{title}**", "", f"![{title}]({path.relative_to(output).as_posix()})", ""]
    lines += [
        "Figure 2 shows the text-conditioned relevance (Chefer et al., 2021) of the first seed's models: where each "
        "looks when it matches the query.",
        "",
        "Every run side by side, with all metrics: [compare/table.md](compare/table.md). The runs are in `runs/`, "
        "each evaluation's record in `results/<run>/`.",
        "",
    ]
    path = output / "results.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def run_study(args, scripts: Path, machine: dict, started: float) -> Path | None:
    """The whole study of `args` (examples/study.py's options; `scripts` the folder of pretrain.py and the scripts
    whose equivalent commands are printed): the held-out data, every run, every evaluation, the comparison, the
    attention maps and `results.md`, each step skipping what is done. Returns results.md's path; None on a dry run."""
    output = Path(args.output_dir)
    runs = study_runs(output, args.variants, args.seeds)
    protocol = {key: getattr(args, key) for key in ("split", "train_split", "episodes", "max_iter")}
    if args.dataset or args.eval_dataset or args.retrieval_dataset or args.mmvp_dataset:
        evaluations = user_evaluations(args.eval_dataset, args.retrieval_dataset, args.mmvp_dataset, protocol)
        images = [Path(p) for p in args.attention_image]
    else:
        data = output / "data"
        if not args.dry_run:
            write_eval_data(data, args.eval_train_examples, args.eval_test_examples, args.mmvp_pairs)
        evaluations = shapes_evaluations(data, protocol)
        images = (
            [Path(p) for p in args.attention_image]
            or sorted(data.glob("scenes/*.png"))
            or [data / "scenes" / f"scene-{i + 1}.png" for i in range(len(ATTENTION_SCENES))]
        )
    pretrain(args, runs, output / "timings.json", scripts)
    evaluate_runs(args, runs, evaluations, output, scripts)
    compare_runs(args, runs, output, scripts)
    attention = attention_maps(args, runs, images, output, scripts) if images else []
    if args.dry_run:
        return None
    return report(args, runs, output, attention, started, machine, scripts)
