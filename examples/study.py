"""The paper's comparison end to end: pretrain every variant with every seed, evaluate every task on held-out data,
compare, and write `results.md` with the paper's tables and figures (mean ± standard deviation over seeds).

    python examples/study.py --output_dir studies/shapes                       # the default study, on the demo
    python examples/study.py --output_dir studies/x --variants clip diffclip --seeds 0 1 --dry_run
    python examples/study.py --output_dir studies/cc3m --dataset pixparse/cc3m-wds \\
        --eval_dataset data/wds_cifar10 --retrieval_dataset data/wds_flickr30k --mmvp_dataset data/MMVP_VLM \\
        --config_file examples/configs/multi_gpu.yaml -- --recipe paper --streaming --max_steps 28000

Each pretraining runs as `accelerate launch examples/pretrain.py` (so any Accelerate config applies: --config_file,
--num_processes); options after `--` go to pretrain.py as they are. Without --dataset the runs train on the demo's
captioned shapes and are evaluated on held-out shapes (zero-shot, retrieval, linear probe and few-shot on three label
sets, MMVP-style pairs); with --dataset, give the held-out datasets. The evaluations run in this process with the
protocols of examples/evaluate.py (--dry_run prints the equivalent commands), then examples/compare.py sets every
run side by side. A run or evaluation already done is skipped, and an interrupted run continues from its last
checkpoint: rerun the same command to continue a study.
"""

import argparse
import importlib.util
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

import modeling_diffclip  # noqa: F401  (registers DiffCLIP with the Auto classes)
from diffclip_lab.core.cli import ArgumentParser, device, positive_int, random_seed, run_main, setup_logging
from diffclip_lab.core.errors import UserError
from diffclip_lab.core.files import atomic_write_text
from diffclip_lab.core.formatting import PAPER_NAMES
from diffclip_lab.core.images import UnreadableImage, read_image
from diffclip_lab.core.loading import load_pretrained
from diffclip_lab.core.provenance import environment
from diffclip_lab.evaluation import study
from diffclip_lab.evaluation.relevance import centre_crop_box, draw, relevance_map
from diffclip_lab.evaluation.tasks import DualEncoder, EvalOptions, FeatureCache, evaluate


logger = logging.getLogger(__name__)
EXAMPLES = Path(__file__).resolve().parent


def script_path(name: str) -> str:
    """An example script's path as the printed commands show it: relative to the working directory."""
    return os.path.relpath(EXAMPLES / name)


DEMO_EPOCHS = 3  # the default study's budget per run: 12 runs and their evaluations in under an hour on 2 cores


def parse_args(argv=None):
    argv = full = list(sys.argv[1:] if argv is None else argv)
    pretrain_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--output_dir", required=True, help="the study's folder: runs/, results/, figures/, results.md")
    add("--variants", nargs="+", choices=study.VARIANTS, default=list(study.VARIANTS))
    add("--seeds", nargs="+", type=random_seed, default=[0, 1, 2])
    add("--baseline", choices=study.VARIANTS, default="clip", help="the variant the differences are taken to")
    add("--dataset", help="pretraining data (any layout pretrain.py reads); default: the demo's captioned shapes")
    add("--num_epochs", type=positive_int, help=f"epochs per run (default: {DEMO_EPOCHS} on the demo)")
    add("--eval_dataset", action="append", default=[], help="held-out classification data; repeat for several")
    add("--retrieval_dataset", action="append", default=[], help="held-out image-caption data; repeat")
    add("--mmvp_dataset", action="append", default=[], help="a folder in the MMVP-VLM layout; repeat")
    add("--split", default="test", help="the held-out datasets' split scored")
    add("--train_split", default="train", help="the linear probe's and few-shot's training split")
    add("--eval_train_examples", type=positive_int, default=2000, help="held-out shapes to train probes on")
    add("--eval_test_examples", type=positive_int, default=1000, help="held-out shapes to test on")
    add("--mmvp_pairs", type=positive_int, default=30, help="MMVP-style pairs per property")
    add("--episodes", type=positive_int, default=5000, help="few-shot episodes per evaluation")
    add("--max_iter", type=positive_int, default=1000, help="L-BFGS iterations per linear-probe fit")
    add("--attention_image", action="append", default=[], help="images for the attention maps (default: two scenes)")
    add("--query", action="append", default=[], help="text queries for the attention maps (default: two)")
    add("--config_file", help="an Accelerate config for the pretraining launches")
    add("--num_processes", type=positive_int, help="processes per pretraining launch")
    add("--checkpointing_steps", type=positive_int, default=100, help="so that an interrupted run loses little")
    add("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu", help="for the evaluations")
    add("--dry_run", action="store_true", help="print what would run, run nothing")
    args = parser.parse_args(argv)
    args.pretrain_args, args.command = pretrain_args, full
    if len(set(args.seeds)) != len(args.seeds) or len(set(args.variants)) != len(args.variants):
        parser.error("--variants and --seeds must not repeat")
    if args.baseline not in args.variants:
        parser.error(f"the baseline {args.baseline!r} is not among --variants")
    held_out = args.eval_dataset + args.retrieval_dataset + args.mmvp_dataset
    if args.dataset and not held_out:
        parser.error("with --dataset, give held-out data: --eval_dataset, --retrieval_dataset or --mmvp_dataset")
    if (
        args.num_epochs is None
        and not args.dataset
        and not any(a in pretrain_args for a in ("--max_steps", "--num_epochs"))
    ):
        args.num_epochs = DEMO_EPOCHS
    study_sets = {*STUDY_SETS, *(["--dataset"] if args.dataset else [])}
    study_sets |= {"--num_epochs"} if args.num_epochs else set()
    if own := sorted(study_sets & {a.split("=")[0] for a in pretrain_args if a.startswith("--")}):
        parser.error(
            f"{', '.join(own)} after -- would override what the study sets for each run; use the study's own "
            "options (--variants, --seeds, --dataset, --num_epochs, --checkpointing_steps, --output_dir)"
        )
    check_pretrain_options(args)
    return args


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


def check_pretrain_options(args) -> None:
    """pretrain.py's own check of a run's options (ranges, combinations), before the study writes or launches
    anything: a bad option after -- stops here, with pretrain.py's message, not at the first launch."""
    spec = importlib.util.spec_from_file_location("study_pretrain", EXAMPLES / "pretrain.py")
    pretrain_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain_script)
    for variant in args.variants:
        run = study.StudyRun(variant, args.seeds[0], Path(args.output_dir) / "runs" / "check")
        pretrain_script.parse_args(pretrain_arguments(args, run))


def pretrain_command(args, run: study.StudyRun) -> list[str]:
    """`accelerate launch -q examples/pretrain.py` for one run (-q: a failed run shows its error, without the
    launcher's traceback); it continues the run from its latest checkpoint."""
    launch = ["accelerate", "launch", "-q"]
    if args.config_file:
        launch += ["--config_file", args.config_file]
    if args.num_processes:
        launch += ["--num_processes", str(args.num_processes)]
    return [*launch, script_path("pretrain.py"), *pretrain_arguments(args, run)]


def pretrain_arguments(args, run: study.StudyRun) -> list[str]:
    """pretrain.py's options for one run: the study's, then those given after --."""
    script = ["--variant", run.variant, "--seed", str(run.seed)]
    script += ["--output_dir", str(run.path), "--resume_from_checkpoint", "latest"]
    script += ["--checkpointing_steps", str(args.checkpointing_steps)]
    if args.dataset:
        script += ["--dataset", args.dataset]
    if args.num_epochs:
        script += ["--num_epochs", str(args.num_epochs)]
    return script + args.pretrain_args


def pretrain(args, runs: list[study.StudyRun], timings_file: Path) -> None:
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    for run in runs:
        if run.done:
            logger.info(f"{run.name}: trained already")
            continue
        command = pretrain_command(args, run)
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


def evaluate_runs(args, runs: list[study.StudyRun], evaluations: list[study.Evaluation], output: Path) -> None:
    """Every evaluation of every run not evaluated yet, each model loaded once; features cached in the study."""
    cache = FeatureCache(output / "cache")
    for run in runs:
        todo = [e for e in evaluations if not (output / "results" / run.name / f"{e.name}.json").exists()]
        for evaluation in todo:
            print(shlex.join(evaluation.command(script_path("evaluate.py"), str(run.path / "model"))), flush=True)
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


def compare(args, runs: list[study.StudyRun], output: Path) -> None:
    """examples/compare.py over every run's results: each run side by side, its tables and bar plots."""
    results = [str(p) for run in runs for p in sorted((output / "results" / run.name).glob("*.json"))]
    baseline = next(run for run in runs if run.variant == args.baseline)
    options = ["--baseline", str(baseline.path / "model"), "--plot_dir", str(output / "compare")]
    pattern = shlex.quote(str(output / "results")) + "/*/*.json"  # as a shell expands it
    print(f"python {shlex.quote(script_path('compare.py'))} {pattern} {shlex.join(options)}", flush=True)
    if args.dry_run:
        return
    done = subprocess.run(
        [sys.executable, script_path("compare.py"), *results, *options], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise UserError(f"examples/compare.py failed: {done.stderr.strip().splitlines()[-1]}")
    atomic_write_text(output / "compare" / "table.md", done.stdout)


def attention_maps(args, runs: list[study.StudyRun], images: list[Path], output: Path) -> list[Path]:
    """Figure 2: the baseline's and DiffCLIP's first seed, the same queries on each image."""
    models = [next(run for run in runs if run.variant == v) for v in study.compared_pair(args.variants, args.baseline)]
    queries = args.query or list(study.ATTENTION_QUERIES)
    figures = [output / "figures" / f"figure2_attention_{i + 1}.png" for i in range(len(images))]
    if args.dry_run:
        for image in images:
            command = ["python", script_path("attention_maps.py")]
            command += [x for run in models for x in ("--model", str(run.path / "model"))]
            command += ["--image", str(image), *(x for q in queries for x in ("--query", q))]
            print(shlex.join(command), flush=True)
        return figures
    loaded = {}
    for run in models:  # the maps exist in the eager path only; float32 keeps their gradients exact
        model, processor = load_pretrained(str(run.path / "model"), attn_implementation="eager", dtype=torch.float32)
        loaded[run.name] = (model.to(args.device).eval(), processor)
    for path, figure in zip(images, figures, strict=True):
        try:
            image = read_image(path)
        except UnreadableImage as error:
            raise UserError(f"cannot read the image {path}: {error}") from None
        rows = []
        for run in models:
            model, processor = loaded[run.name]
            label = f"{PAPER_NAMES[run.variant]} (seed {run.seed})"
            rows.append((label, [relevance_map(model, processor, image, query) for query in queries]))
        draw(rows, image, centre_crop_box(loaded[models[0].name][1], image), figure)
    return figures


def code_version() -> str:
    """The commit of this checkout, and whether it had changes; "unknown" outside a git checkout."""
    git = ["git", "-C", str(EXAMPLES)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        changes = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"commit {commit.stdout.strip()}" + (" with uncommitted changes" if changes.stdout.strip() else "")


def report(args, runs, output: Path, attention: list[Path], started: float) -> Path:
    """results.md: how the study was run, the paper's tables and figures, and what the numbers support."""
    records = study.load_results(output / "results")
    wanted = {(run.variant, run.seed) for run in runs}
    records = [r for r in records if (r["study"]["variant"], r["study"]["seed"]) in wanted]
    variants, baseline = args.variants, args.baseline
    headline = study.summarize(records, study.HEADLINE)
    figures = output / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    table1 = [r for r in headline if r.task in ("linear_probe", "few_shot")]
    table2 = study.summarize(
        records, {"retrieval": ["text_retrieval_recall@5", "image_retrieval_recall@5"], "zeroshot": ["acc1"]}
    )
    mmvp = [r for r in study.summarize(records, {"mmvp": ["*"]}) if r.metric != "average"]
    shown = study.compared_pair(variants, baseline)
    figure1 = study.figure_bars(
        headline, shown, figures / "figure1_clip_vs_diffclip.png", "CLIP vs DiffCLIP across tasks"
    )
    figure5 = study.figure_bars(headline, variants, figures / "figure5_variants.png", "The variants across tasks")
    radar_title = "MMVP-style pair accuracy (%), shaded ± 1 sd"
    figure4 = study.figure_radar(mmvp, variants, figures / "figure4_mmvp_radar.png", radar_title) if mmvp else None

    timings_file = output / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    env = environment(args.device)
    found = study.findings(headline + [r for r in mmvp], variants, baseline)
    seeds = ", ".join(map(str, args.seeds))
    lines = [
        "# DiffCLIP study: " + ", ".join(PAPER_NAMES[v] for v in variants) + f", seeds {seeds}",
        "",
        f"- date: {datetime.now().astimezone().date().isoformat()}",
        f"- machine: {env['cpu']} ({env['cpu_threads']} threads), {env['device']}; torch {env['torch']}, "
        f"transformers {env['transformers']}; code: {code_version()}",
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
                lines += [f"**{title}**", "", study.variant_table(rows, variants, baseline, lambda r: r.dataset), ""]
    if table2:
        lines += ["## Table 2: retrieval (R@5 %) and zero-shot (top-1 %)", ""]
        lines += [study.variant_table(table2, variants, baseline, study.describe), ""]
    if mmvp:
        lines += ["## MMVP-style pairs (pair accuracy %, chance 25)", ""]
        lines += [
            study.variant_table(
                mmvp + [r for r in headline if r.task == "mmvp"], variants, baseline, lambda r: r.metric
            ),
            "",
        ]
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


def main(argv=None) -> Path | None:
    started = time.perf_counter()
    args = parse_args(argv)
    setup_logging()
    output = Path(args.output_dir)
    runs = study.study_runs(output, args.variants, args.seeds)
    protocol = {key: getattr(args, key) for key in ("split", "train_split", "episodes", "max_iter")}
    if args.dataset or args.eval_dataset or args.retrieval_dataset or args.mmvp_dataset:
        evaluations = study.user_evaluations(args.eval_dataset, args.retrieval_dataset, args.mmvp_dataset, protocol)
        images = [Path(p) for p in args.attention_image]
    else:
        data = output / "data"
        if not args.dry_run:
            study.write_eval_data(data, args.eval_train_examples, args.eval_test_examples, args.mmvp_pairs)
        evaluations = study.shapes_evaluations(data, protocol)
        images = (
            [Path(p) for p in args.attention_image]
            or sorted(data.glob("scenes/*.png"))
            or [data / "scenes" / f"scene-{i + 1}.png" for i in range(len(study.ATTENTION_SCENES))]
        )
    pretrain(args, runs, output / "timings.json")
    evaluate_runs(args, runs, evaluations, output)
    compare(args, runs, output)
    attention = attention_maps(args, runs, images, output) if images else []
    if args.dry_run:
        return None
    path = report(args, runs, output, attention, started)
    logger.info(f"Wrote {path}")
    return path


if __name__ == "__main__":
    run_main(main)
