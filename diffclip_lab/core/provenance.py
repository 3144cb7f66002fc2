# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""What a result file records about how it was made: the library versions and the date, and for a measurement the
machine it ran on."""

import os
import platform
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
