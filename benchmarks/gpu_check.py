# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The three commands of the GPU check, `bash benchmarks/gpu_check.sh OUTPUT_DIR`, which runs them:

    python benchmarks/gpu_check.py plan OUTPUT_DIR --work DIR     # check the argument and the GPU, record the
                                                                  # environment, print the steps to run
    python benchmarks/gpu_check.py backends --output FILE         # every attention backend against eager
    python benchmarks/gpu_check.py report OUTPUT_DIR --work DIR   # OUTPUT_DIR/gpu_check.json and gpu_check.md

The steps, their options and time limits are in diffclip_lab/benchmarking/gpu_plan.py, the backend comparison and
its tolerances in gpu_backends.py, the report in gpu_report.py.
"""

import argparse
import sys
from pathlib import Path

from diffclip_lab.benchmarking import gpu_backends, gpu_plan, gpu_report
from diffclip_lab.core.cli import ArgumentParser, positive_int, run_main


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    # tests only: run on a machine without CUDA, at CPU sizes (not a GPU check)
    allow_cpu = dict(action="store_true", help=argparse.SUPPRESS)

    sub = commands.add_parser("plan", help="check OUTPUT_DIR and the GPU, record the environment, print the steps")
    sub.add_argument("output_dir")
    sub.add_argument("--work", required=True, help="scratch folder of this run")
    sub.add_argument("--allow_cpu", **allow_cpu)

    sub = commands.add_parser("backends", help="every attention backend against eager, and the SDPA kernel used")
    sub.add_argument("--output", type=Path, required=True, help="JSON file to write")
    all_backends = [*gpu_backends.BACKENDS, *gpu_backends.FLASH_BACKENDS]
    sub.add_argument("--backends", nargs="+", choices=all_backends, default=all_backends)
    sub.add_argument("--dtypes", nargs="+", choices=gpu_backends.DTYPES, default=list(gpu_backends.DTYPES))
    sub.add_argument("--size", choices=("full", "tiny"), default="full", help="full: ViT-B/16 width; tiny: tests")
    sub.add_argument("--layer_batch", type=positive_int, help="batch of the attention layer (default 32; tiny 2)")
    sub.add_argument("--model_batch", type=positive_int, help="batch of the tiny model (default 16; tiny 4)")
    sub.add_argument("--allow_cpu", **allow_cpu)

    sub = commands.add_parser("report", help="write OUTPUT_DIR/gpu_check.json and gpu_check.md from the steps")
    sub.add_argument("output_dir")
    sub.add_argument("--work", required=True)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "plan":
            gpu_plan.plan(args)
            return 0
        if args.command == "backends":
            return gpu_backends.backends_check(args)
        return gpu_report.report(args)
    except gpu_plan.UsageError as error:  # the shell script's usage line, and its status for a wrong argument
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    run_main(main)
