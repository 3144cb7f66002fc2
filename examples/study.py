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
sets, MMVP-style pairs); with --dataset, give the held-out datasets. The evaluations, examples/compare.py's table
and figures of every run side by side, and examples/attention_maps.py's figures are made in this process by the
same lab code as those scripts (--dry_run prints the equivalent commands); the steps are in
diffclip_lab/evaluation/study.py. A run or evaluation already done is skipped, and an interrupted run continues from
its last checkpoint: rerun the same command to continue a study.
"""

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from diffclip_lab.core.cli import ArgumentParser, device, positive_int, random_seed, run_main, setup_logging
from diffclip_lab.core.provenance import environment
from diffclip_lab.evaluation import study
from diffclip_lab.evaluation.tasks import add_eval_options


logger = logging.getLogger(__name__)
EXAMPLES = Path(__file__).resolve().parent
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
    add_eval_options(parser, ("split", "train_split"))
    add("--eval_train_examples", type=positive_int, default=2000, help="held-out shapes to train probes on")
    add("--eval_test_examples", type=positive_int, default=1000, help="held-out shapes to test on")
    add("--mmvp_pairs", type=positive_int, default=30, help="MMVP-style pairs per property")
    add_eval_options(parser, ("episodes", "max_iter"))
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
    study_sets = {*study.STUDY_SETS, *(["--dataset"] if args.dataset else [])}
    study_sets |= {"--num_epochs"} if args.num_epochs else set()
    if own := sorted(study_sets & {a.split("=")[0] for a in pretrain_args if a.startswith("--")}):
        parser.error(
            f"{', '.join(own)} after -- would override what the study sets for each run; use the study's own "
            "options (--variants, --seeds, --dataset, --num_epochs, --checkpointing_steps, --output_dir)"
        )
    study.check_pretrain_options(args, EXAMPLES)
    return args


def main(argv=None) -> Path | None:
    started = time.perf_counter()
    args = parse_args(argv)
    setup_logging()
    path = study.run_study(args, EXAMPLES, environment(args.device), started)
    if path is not None:
        logger.info(f"Wrote {path}")
    return path


if __name__ == "__main__":
    run_main(main)
