# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
What the GPU check (`bash benchmarks/gpu_check.sh OUTPUT_DIR`) runs: its steps with their exact command lines and
time limits (`plan_steps`), and the plan command that checks OUTPUT_DIR and the GPU, records the environment and
prints the steps for the shell script to run (`plan`).

The steps: the backend comparison (`gpu_backends`), `bench_model.py` at ViT-B/16 in bfloat16, the demo pretraining in
bf16 and a `--torch_compile` training run. Each step has a time limit; together they stay under 8 minutes.

PyTorch and the model are imported only once CUDA has been checked, so that a missing or broken torch is one line.
"""

import importlib.util
import os
import shlex
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from ..core.errors import UserError
from ..core.files import write_json


REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout gpu_check.sh runs from
USAGE = "usage: bash benchmarks/gpu_check.sh OUTPUT_DIR"
# The demo's own length (6 epochs of 20,000 captioned shapes in batches of 128), so that its zero-shot accuracy
# compares with the README's (about 75 % over 30 classes on CPU in float32).
DEMO_STEPS = 936
MIN_DEMO_TOP1 = 0.30  # 9 × chance: far below the demo's ~75 %, far above what a broken bf16 run reaches
COMPILE_STEPS = 10
TOTAL_LIMIT_S = 480  # the whole check, limits of every step and the plan and report included
PLAN_LIMIT_S, REPORT_LIMIT_S, KILL_AFTER_S = 60, 20, 5  # must match gpu_check.sh


@dataclass
class Step:
    """One command of the check: steps of the same `group` run at the same time, groups one after the other."""

    name: str
    group: int
    limit_s: int
    script: str  # relative to the repository root
    args: list[str]
    title: str

    def command(self) -> str:
        return shlex.join([sys.executable, self.script, *self.args])


def bench_batch_size(gpu_memory_gib: float | None) -> int:
    """The ViT-B/16 training batch of bench_model: 256 (the paper's per-GPU batch scale) where memory allows; eager
    and the reference keep both N×N maps of every layer (about 35 GiB at 256)."""
    if gpu_memory_gib is None or gpu_memory_gib >= 70:
        return 256
    return 128 if gpu_memory_gib >= 35 else 64 if gpu_memory_gib >= 18 else 32


def data_workers(cpu_count: int | None) -> int:
    return min(8, max(1, (cpu_count or 2) // 2))


def plan_steps(work: Path, cpu_test: bool = False, gpu_memory_gib: float | None = None, cpu_count=None) -> list[Step]:
    """The steps and their exact command lines (tests parse them with each script's own parser). Group 1 runs at
    once: the backend comparison and the compiled run spend most of their time compiling on the CPU, and the demo's
    accuracy does not depend on its speed; bench_model then has the machine to itself."""
    workers = str(data_workers(cpu_count))
    if cpu_test:  # tests only: the same steps at CPU sizes, to run the driver end to end
        return [
            Step("backends", 1, 600, "benchmarks/gpu_check.py", ["backends", "--output", str(work / "backends.json"),
                 "--allow_cpu", "--size", "tiny", "--backends", "eager", "sdpa"], "attention backends"),
            Step("pretrain", 1, 600, "examples/pretrain.py", ["--output_dir", str(work / "pretrain"),
                 "--mixed_precision", "no", "--max_steps", "3", "--logging_steps", "1", "--num_workers", "0",
                 "--per_device_batch_size", "32"], "demo pretraining"),
            # compiling takes minutes on a small CPU: the step runs uncompiled there
            Step("pretrain_compile", 1, 600, "examples/pretrain.py", ["--output_dir", str(work / "pretrain-compile"),
                 "--mixed_precision", "no", "--max_steps", "2", "--logging_steps", "1", "--num_workers", "0",
                 "--per_device_batch_size", "32"], "training (uncompiled on CPU)"),
            Step("bench_model", 2, 600, "benchmarks/bench_model.py", ["--device", "cpu", "--dtype", "bfloat16",
                 "--shapes", "tiny", "--batch_size", "4", "--modes", "forward", "train", "--repeats", "2",
                 "--warmup", "0", "--output", str(work / "bench_model.json")], "whole model"),
        ]  # fmt: skip
    return [
        Step("backends", 1, 175, "benchmarks/gpu_check.py", ["backends", "--output", str(work / "backends.json")],
             "attention backends against eager, SDPA kernels"),
        Step("pretrain", 1, 175, "examples/pretrain.py", ["--output_dir", str(work / "pretrain"), "--mixed_precision",
             "bf16", "--max_steps", str(DEMO_STEPS), "--num_workers", workers], "demo pretraining (bf16)"),
        Step("pretrain_compile", 1, 175, "examples/pretrain.py", ["--output_dir", str(work / "pretrain-compile"),
             "--mixed_precision", "bf16", "--torch_compile", "--max_steps", str(COMPILE_STEPS), "--logging_steps",
             "1", "--num_workers", "2"], "torch.compile training (bf16, tiny model)"),
        Step("bench_model", 2, 205, "benchmarks/bench_model.py", ["--device", "cuda", "--dtype", "bfloat16",
             "--shapes", "vit-b-16", "--batch_size", str(bench_batch_size(gpu_memory_gib)), "--modes", "forward",
             "train", "--repeats", "20", "--warmup", "3", "--output", str(work / "bench_model.json")],
             "whole model at ViT-B/16 (bench_model.py)"),
    ]  # fmt: skip


def worst_case_seconds(steps: list[Step]) -> int:
    """The check's longest possible run: plan and report, and each group's longest limit (with the kill grace)."""
    groups = {}
    for step in steps:
        groups[step.group] = max(groups.get(step.group, 0), step.limit_s + KILL_AFTER_S)
    return PLAN_LIMIT_S + REPORT_LIMIT_S + 2 * KILL_AFTER_S + sum(groups.values())


class UsageError(Exception):
    """A wrong OUTPUT_DIR: reported as one line, exit status 2."""


def check_output_dir(path: str) -> Path:
    """OUTPUT_DIR must be a folder or creatable as one; it is created later, once the GPU is there."""
    if not path or path.startswith("-") or "\n" in path:
        raise UsageError(f"{USAGE} (not an output folder: {path!r})")
    output = Path(path)
    if output.exists() and not output.is_dir():
        raise UsageError(f"{USAGE} ({path} exists and is not a folder)")
    parent = next((p for p in [output, *output.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{USAGE} ({path}: {parent} is not a writable folder)")
    return output


def cuda_status() -> tuple[bool, str]:
    """Whether CUDA works, and a line that says why not."""
    try:
        with warnings.catch_warnings():  # a CUDA build without a driver warns on its first query
            warnings.simplefilter("ignore")
            import torch

            if torch.cuda.is_available():
                return True, ""
            return False, "torch.cuda.is_available() is False"
    except Exception as error:  # torch missing or broken
        return False, f"torch does not import: {type(error).__name__}: {error}".splitlines()[0]


def nvidia_smi() -> dict:
    """Driver version, GPU name and memory as nvidia-smi reports them, where it is installed."""
    fields = ["name", "driver_version", "memory.total", "compute_mode"]
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return {"error": f"nvidia-smi: {error}".splitlines()[0]}
    if out.returncode != 0:
        return {"error": f"nvidia-smi exited {out.returncode}: {(out.stderr or out.stdout).strip()[:200]}"}
    first = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    values = [value.strip() for value in first.split(",")]
    return dict(zip(["gpu", "driver_version", "memory_total_mib", "compute_mode"], values, strict=False))


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def gpu_environment(device: str) -> dict:
    """`core.provenance.environment` and what the check adds: torch's CUDA and cuDNN builds, the packages the steps
    use, the commit of the checkout, and on CUDA the driver and compute mode (nvidia-smi)."""
    import torch

    from ..core.provenance import environment, git_commit

    info = environment(device)
    commit, dirty = git_commit(REPO_ROOT, length=12)
    info.update(
        torch_cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        **{name: package_version(name) for name in ("accelerate", "datasets", "triton")},
        git_commit=commit,
        git_dirty=dirty,
    )
    if device == "cuda":
        smi = nvidia_smi()
        info["driver_version"] = smi.get("driver_version")
        info["compute_mode"] = smi.get("compute_mode")
        if "error" in smi:
            info["nvidia_smi"] = smi["error"]
    return info


def missing_requirements(transformers_version: str | None) -> list[str]:
    """What the steps need and this Python lacks (pyproject.toml's versions), one line each."""
    lines = []
    if not _at_least(transformers_version, (5, 0)):
        lines.append(f"transformers {transformers_version} is installed; this project needs >= 5.0")
    for name, steps in (("accelerate", "pretrain, pretrain_compile"), ("datasets", "pretrain, pretrain_compile")):
        if importlib.util.find_spec(name) is None:
            lines.append(f"{name} is not installed: {steps} will fail (pip install -e '.[dev]')")
    return lines


def _at_least(version: str | None, minimum: tuple) -> bool:
    try:
        return tuple(int(part) for part in version.split(".")[:2]) >= minimum
    except (AttributeError, ValueError):
        return False


def plan(args) -> None:
    """Check OUTPUT_DIR and CUDA, record the environment and the plan in --work, print the steps (tab-separated:
    group, name, limit in seconds, command)."""
    output = check_output_dir(args.output_dir)
    available, why = cuda_status()
    if not available and not args.allow_cpu:
        raise UserError(f"no CUDA GPU: {why}")
    device = "cuda" if available else "cpu"
    # the steps that need them will fail, and say so; the others run
    for line in missing_requirements(package_version("transformers")):
        print(f"warning: {line}", file=sys.stderr)
    (output / "logs").mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = gpu_environment(device)
    steps = plan_steps(
        work, cpu_test=device == "cpu", gpu_memory_gib=env.get("gpu_memory_gib"), cpu_count=os.cpu_count()
    )
    settings = {
        "device": device,
        "cpu_test": device == "cpu",
        "min_demo_top1": MIN_DEMO_TOP1 if device == "cuda" else None,
        "demo_steps": DEMO_STEPS,
        "worst_case_s": worst_case_seconds(steps),
        "limit_s": TOTAL_LIMIT_S,
        "steps": [asdict(step) | {"command": step.command()} for step in steps],
    }
    write_json(work / "environment.json", env)
    write_json(work / "plan.json", settings)
    for step in steps:
        print(f"{step.group}\t{step.name}\t{step.limit_s}\t{step.command()}")
