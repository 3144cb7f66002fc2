# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
What the benchmark scripts share: interleaved timing, peak memory, the command-line options, the Markdown table
and the JSON document (written by `core.files.write_json`).

Timing: every candidate runs its warm-up steps, then the repetitions go round the candidates in turn (A B C A B C
...), so that a slow spell of a shared machine hits all of them alike; a ratio is the median over repetitions of
the ratio of the two candidates' times in the same round.

Peak memory: on CUDA, `torch.cuda.max_memory_allocated` during one step minus the memory allocated before it; on
CPU, the peak of the bytes of live tensor storages created during one step, tracked by a `TorchDispatchMode` (each
storage counted once, from the operation that created it until it is freed; buffers a kernel allocates internally
are not seen, and compiled graphs, torch.compile's or flex_attention's, do not run under it, so their memory is
not measured on CPU). Both count what the step adds on top of the parameters and inputs: activations, temporaries
and, in a training step, the parameter gradients.
"""

import argparse
import statistics
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..core.cli import ArgumentParser, non_negative_int, positive_int
from ..core.formatting import format_measurement, markdown_table
from ..core.provenance import command_and_machine, environment


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODES = ("forward", "train")  # inference forward; forward + loss + backward


def parse_args(description: str, shapes: dict, argv=None, **extra_flags) -> argparse.Namespace:
    """The options of bench_attention.py and bench_model.py; `extra_flags` maps a flag name to its help (boolean
    flags). `args.dtype` comes back as a torch dtype."""
    parser = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), help="parameter and input dtype (default: float32 on CPU, bfloat16 on CUDA)"
    )
    add_timing_arguments(parser, shapes, "one batch size for every shape (default: per shape and device)")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="forward (inference) and/or train (forward + loss + backward); default both",
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd DiffCLIP (sdpa)")
    for flag, help_text in extra_flags.items():
        parser.add_argument(f"--{flag}", action="store_true", help=help_text)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine.")
    args.dtype = DTYPES[args.dtype or ("bfloat16" if args.device == "cuda" else "float32")]
    return args


def add_timing_arguments(parser: argparse.ArgumentParser, shapes: dict, batch_help: str) -> None:
    """The options every timing script takes: --shapes (names of `shapes`, default all), --batch_size, --repeats,
    --warmup and --output (the JSON file)."""
    parser.add_argument(
        "--shapes",
        nargs="+",
        choices=tuple(shapes),
        default=list(shapes),
        metavar="SHAPE",
        help=f"shapes to run, of {', '.join(shapes)} (default: all)",
    )
    parser.add_argument("--batch_size", type=positive_int, help=batch_help)
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repetitions of each step (default: 5)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed steps of each candidate first (1)")
    parser.add_argument("--output", type=Path, help="write the results as JSON to this file")


def trainable(candidates: dict, device: str) -> list[str]:
    """The candidates a training step can run: flex_attention has no backward on CPU."""
    return [name for name in candidates if not (device == "cpu" and name.startswith("diffclip-flex"))]


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_interleaved(
    steps: dict[str, Callable[[], None]], repeats: int, warmup: int, device: str
) -> dict[str, list[float]]:
    """Seconds per call of each step: `warmup` untimed calls each, then `repeats` rounds over all steps in turn."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles (inclusive method) and range of `values`."""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": statistics.median(values), "q1": q1, "q3": q3, "min": min(values), "max": max(values)}


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """`spread` of the per-round ratios of two candidates' times."""
    return spread([a / b for a, b in zip(numerator, denominator, strict=True)])


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created by operations run under this mode and still alive."""

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak = set(), 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in inputs and key not in self.live:  # a new storage, not a view or an in-place result
                    self.live.add(key)
                    self.current += storage.nbytes()
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key, storage.nbytes())
        return out

    def _free(self, key: int, nbytes: int) -> None:
        self.live.discard(key)
        self.current -= nbytes


def peak_memory(step: Callable[[], None], device: str) -> int:
    """Peak bytes that one call of `step` allocates on top of what is allocated before it (see the module doc)."""
    if device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with LiveTensorBytes() as tracker:
        step()
    return tracker.peak


def randomise(module: torch.nn.Module) -> None:
    """λ vectors and RMSNorm weights away from their initial values, so that every term of the formula counts when
    backends or implementations are compared."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "lambda_" in name:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
            elif "diff_norm" in name:
                parameter.copy_(1 + 0.3 * torch.randn(parameter.shape, generator=generator))


def mebibytes(nbytes: int | None) -> float:
    return float("nan") if nbytes is None else nbytes / 2**20


def new_payload(script: str, args) -> dict:
    """The JSON document of a run: script, command, machine, environment, settings; `run_shape` adds results and
    ratios."""
    settings = {key: str(value) if key in ("dtype", "output") else value for key, value in vars(args).items()}
    return {
        "script": script,
        **command_and_machine(script),
        "environment": environment(args.device),
        "settings": settings,
        "results": [],
        "ratios": [],
    }


def run_shape(
    payload: dict,
    title: str,
    shape: str,
    section: str,
    built: tuple[dict, dict],
    batch_size: int,
    tokens: int,
    ratio_pairs: list[tuple[str, str]],
    args,
) -> None:
    """
    Time and measure the steps `built` = ({mode: {candidate: step}}, {candidate: largest output difference}) in
    each of `args.modes`; add the result records and the records of the `ratio_pairs` present to `payload` and print
    them as Markdown tables under `title`.
    """
    steps, errors = built
    results, ratios = [], []
    for mode in args.modes:
        times = time_interleaved(steps[mode], args.repeats, args.warmup, args.device)
        memory = {}
        for name, step in steps[mode].items():
            # compiled graphs (torch.compile, flex_attention's kernel) do not run under a dispatch mode; CUDA's
            # allocator sees them
            compiled = name.endswith("-compiled") or name.startswith("diffclip-flex")
            memory[name] = None if args.device == "cpu" and compiled else peak_memory(step, args.device)
            stats = spread(times[name])
            results.append(
                {
                    "shape": shape,
                    "section": section,
                    "mode": mode,
                    "candidate": name,
                    "batch_size": batch_size,
                    "tokens": tokens,
                    "times_s": times[name],
                    **{f"{key}_s": value for key, value in stats.items()},
                    "samples_per_s": batch_size / stats["median"],
                    "peak_memory_bytes": memory[name],
                    "max_abs_error": errors.get(name),
                }
            )
        for numerator, denominator in ratio_pairs:
            if numerator in times and denominator in times:
                ratio = paired_ratio(times[numerator], times[denominator])
                memory_ratio = (
                    memory[numerator] / memory[denominator]
                    if memory[numerator] is not None and memory[denominator]
                    else None
                )
                ratios.append(
                    {
                        "shape": shape,
                        "section": section,
                        "mode": mode,
                        "numerator": numerator,
                        "denominator": denominator,
                        **{f"time_ratio_{key}": value for key, value in ratio.items()},
                        "memory_ratio": memory_ratio,
                    }
                )
    payload["results"] += results
    payload["ratios"] += ratios
    print(f"\n### {title}\n")
    print(markdown_table(RESULT_HEADERS, [result_row(r) for r in results], format_measurement))
    print()
    print(markdown_table(RATIO_HEADERS, [ratio_row(r) for r in ratios], format_measurement), flush=True)


RESULT_HEADERS = ["candidate", "mode", "median ms", "IQR ms", "min–max ms", "samples/s", "peak MiB", "max |Δ|"]
RATIO_HEADERS = ["mode", "ratio", "time (median of paired ratios)", "IQR", "peak memory"]


def result_row(result: dict) -> list:
    ms = {key: 1e3 * result[f"{key}_s"] for key in ("median", "q1", "q3", "min", "max")}
    error = result["max_abs_error"]
    return [
        result["candidate"],
        result["mode"],
        ms["median"],
        f"{ms['q1']:.3g}–{ms['q3']:.3g}",
        f"{ms['min']:.3g}–{ms['max']:.3g}",
        result["samples_per_s"],
        mebibytes(result["peak_memory_bytes"]),
        "–" if error is None else f"{error:.1e}",
    ]


def ratio_row(ratio: dict) -> list:
    memory = ratio["memory_ratio"]
    return [
        ratio["mode"],
        f"{ratio['numerator']} / {ratio['denominator']}",
        ratio["time_ratio_median"],
        f"{ratio['time_ratio_q1']:.3f}–{ratio['time_ratio_q3']:.3f}",
        "–" if memory is None else f"{memory:.3f}",
    ]
