# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The demo's zero-shot accuracy over several seeds: `examples/pretrain.py --seed S` for each seed (one process, as
`accelerate launch examples/pretrain.py` runs on a machine without GPUs), each seed's top-1 and top-5 on the 1,000
held-out shapes, their mean and standard deviation. One run takes about 3 minutes on 2 CPU cores.

    python benchmarks/bench_demo.py --output docs/results/demo.json          # seeds 0-4, about 15 minutes
    python benchmarks/bench_demo.py --check docs/results/demo.json           # fails when the mean drops clearly

`--check` compares a new measurement with the committed one and exits with status 1 when the new mean is below the
committed mean by more than three standard errors of the difference (and by more than one point): a change that
makes training worse shows, while one seed's luck does not.
"""

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffclip_lab.core.cli import ArgumentParser, random_seed, run_main
from diffclip_lab.core.errors import UserError
from diffclip_lab.core.files import write_json
from diffclip_lab.core.provenance import environment


PRETRAIN = Path(__file__).resolve().parent.parent / "examples" / "pretrain.py"


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=random_seed, default=[0, 1, 2, 3, 4], help="default: 0 to 4")
    parser.add_argument("--output", type=Path, help="write the results as JSON to this file")
    parser.add_argument("--check", type=Path, help="a committed result file the new mean must not fall clearly below")
    parser.add_argument("pretrain_args", nargs="*", help="more options for pretrain.py, after --")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds {' '.join(map(str, args.seeds))}: a seed is given twice")
    if args.check is not None and not args.check.is_file():
        parser.error(f"--check {args.check}: no such result file")
    return args


def run_seed(seed: int, extra: list[str], folder: Path) -> dict:
    """One demo run; its seed, accuracies and wall-clock seconds."""
    command = [sys.executable, str(PRETRAIN), "--seed", str(seed), "--output_dir", str(folder), *extra]
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        last = (completed.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
        raise UserError(f"pretrain.py --seed {seed} failed: {last}")
    results = json.loads((folder / "eval_results.json").read_text())
    return {
        "seed": seed,
        "zeroshot_top1": results["zeroshot_top1"],
        "zeroshot_top5": results["zeroshot_top5"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def summary(runs: list[dict]) -> dict:
    """Mean, sample standard deviation, minimum and maximum of the runs' top-1, in percent."""
    top1 = [100 * run["zeroshot_top1"] for run in runs]
    return {
        "seeds": len(top1),
        "mean": statistics.fmean(top1),
        "std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
        "min": min(top1),
        "max": max(top1),
    }


def clearly_below(new: dict, reference: dict) -> bool:
    """Whether `new`'s mean is below `reference`'s by more than 3 standard errors of the difference and 1 point."""
    error = math.sqrt(new["std"] ** 2 / new["seeds"] + reference["std"] ** 2 / reference["seeds"])
    return reference["mean"] - new["mean"] > max(3 * error, 1.0)


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            runs.append(run_seed(seed, args.pretrain_args, Path(scratch) / f"seed-{seed}"))
            print(f"seed {seed}: top-1 {100 * runs[-1]['zeroshot_top1']:.1f} % in {runs[-1]['seconds']:.0f} s")
    result = summary(runs)
    print(f"zero-shot top-1 over {result['seeds']} seeds: {result['mean']:.1f} ± {result['std']:.1f} %")
    command = " ".join(["python", "benchmarks/bench_demo.py", "--seeds", *map(str, args.seeds)])
    payload = {
        "script": "bench_demo",
        "command": command,
        "environment": environment("cpu"),
        "summary": result,
        "runs": runs,
    }
    write_json(args.output, payload)
    if args.check is not None:
        reference = json.loads(args.check.read_text())["summary"]
        if clearly_below(result, reference):
            print(f"The mean fell clearly below {args.check}'s {reference['mean']:.1f} ± {reference['std']:.1f} %.")
            return 1
    return 0


if __name__ == "__main__":
    run_main(main)
