# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""What a result file records about how it was made: the library versions and the date, and for a measurement the
machine it ran on."""

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

import modeling_diffclip


def provenance() -> dict:
    """What every result record ends with: the library versions and the date."""
    return {
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "modeling_diffclip": modeling_diffclip.__version__,
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def environment(device: str = "cpu") -> dict:
    """
    What a measurement ran on, in one flat record: `provenance()`'s versions and date, Python, the device ("cpu" or
    "cuda"), the CPU (its name, the threads PyTorch uses, the cores) and the platform; on CUDA also the GPU (name,
    count, memory in GiB, compute capability, multiprocessors).
    """
    record = provenance()
    info = {
        **record["versions"],
        "python": platform.python_version(),
        "date": record["date"],
        "device": device,
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    if device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(properties.total_memory / 2**30, 1),
            compute_capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            multiprocessors=properties.multi_processor_count,
        )
    return info


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def command_and_machine(script: str) -> dict:
    """
    What a result file records besides `environment`: the command that wrote it (`None` when `script`'s main was
    called from Python rather than run as a program), with `OMP_NUM_THREADS` where it is set, and the machine: its
    logical CPUs, memory, whether it is a virtual machine, and its load average over 1, 5 and 15 minutes when the
    run started (above 0 when other processes shared the cores).
    """
    command = None
    if Path(sys.argv[0]).name == f"{script}.py":
        threads = os.environ.get("OMP_NUM_THREADS")
        command = shlex.join(["python", f"benchmarks/{script}.py", *sys.argv[1:]])
        command = f"OMP_NUM_THREADS={threads} {command}" if threads else command
    return {
        "command": command,
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "virtual_machine": _virtual_machine(),
            "load_average": [round(load, 2) for load in os.getloadavg()],
        },
    }


def _virtual_machine() -> bool:
    try:
        return " hypervisor" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def git_commit(directory: Path, length: int = 7) -> tuple[str | None, bool]:
    """The short commit of the git checkout holding `directory` and whether its tracked files have changes;
    (None, False) outside a checkout or without git."""

    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", f"--short={length}", "HEAD")
    return commit, bool(commit and git("status", "--porcelain", "--untracked-files=no"))
