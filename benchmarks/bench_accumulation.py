# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Time one optimizer step's gradients (forwards, contrastive loss, backwards; no optimizer update) over a global batch
taken three ways: as one batch; as micro-batches with exact accumulation (`accumulated_step`: the whole global batch
as negatives, one more forward pass per micro-batch); and as micro-batches each with its own loss (what
`--gradient_accumulation_steps` did before, a different objective). Also each way's peak memory.

    python benchmarks/bench_accumulation.py                              # tiny and ViT-B/16 on CPU, a few minutes
    python benchmarks/bench_accumulation.py --shapes tiny --repeats 5 --output accumulation.json

Shapes as benchmarks/bench_model.py's (DiffCLIP, sdpa, float32); the global batch and the number of micro-batches
per shape below (`--global_batch_size`, `--micro_batches` override them).
"""

import argparse
import statistics
from pathlib import Path

import torch
from accelerate import Accelerator

from diffclip_lab.benchmarking.harness import mebibytes, peak_memory, spread, time_interleaved
from diffclip_lab.core.cli import ArgumentParser, non_negative_int, positive_int, run_main
from diffclip_lab.core.errors import UserError
from diffclip_lab.core.files import write_json
from diffclip_lab.core.formatting import format_measurement
from diffclip_lab.core.provenance import command_and_machine, environment
from diffclip_lab.training.contrastive import DualEncoderForTraining, accumulated_step, contrastive_loss
from diffclip_lab.training.recipes import MODEL_CONFIGS
from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel


# config, global batch, micro-batches per step (on CPU)
SHAPES = {"tiny": (MODEL_CONFIGS["tiny"], 256, 8), "vit-b-16": (MODEL_CONFIGS["vit-b-16"], 8, 4)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--global_batch_size", type=positive_int, help="default: per shape")
    parser.add_argument("--micro_batches", type=positive_int, help="default: per shape")
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--warmup", type=non_negative_int, default=1)
    parser.add_argument("--output", type=Path, help="write the results as JSON")
    return parser.parse_args(argv)


def inputs(config: DiffCLIPConfig, rows: int) -> dict:
    size, length = config.vision_config.image_size, config.text_config.max_position_embeddings
    return {
        "input_ids": torch.randint(1, config.text_config.vocab_size, (rows, length)),
        "attention_mask": torch.ones(rows, length, dtype=torch.long),
        "pixel_values": torch.randn(rows, 3, size, size),
    }


def steps(trainer: DualEncoderForTraining, batch: dict, micro_batches: int) -> dict:
    """The three ways of taking the gradients of `batch`, each a call that leaves them in `trainer`."""
    size = len(batch["input_ids"]) // micro_batches
    chunks = zip(*(value.split(size) for value in batch.values()), strict=True)
    micro = [dict(zip(batch, values, strict=True)) for values in chunks]
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=micro_batches)

    def one_batch():
        trainer.zero_grad()
        contrastive_loss(*trainer(**batch)[:3]).backward()

    def exact():
        trainer.zero_grad()
        accumulated_step(accelerator, trainer, micro, lambda inputs: inputs)

    def per_micro_batch():
        trainer.zero_grad()
        for inputs in micro:
            (contrastive_loss(*trainer(**inputs)[:3]) / micro_batches).backward()

    return {"one batch": one_batch, "exact accumulation": exact, "per-micro-batch loss": per_micro_batch}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    payload = {
        "script": "bench_accumulation",
        **command_and_machine("bench_accumulation"),
        "environment": environment("cpu"),
        "results": [],
    }
    runs = [
        (shape, SHAPES[shape][0], args.global_batch_size or SHAPES[shape][1], args.micro_batches or SHAPES[shape][2])
        for shape in args.shapes
    ]
    for _, _, global_batch, micro_batches in runs:  # all checked before the first is timed
        if global_batch % micro_batches:
            raise UserError(f"a global batch of {global_batch} does not divide into {micro_batches} micro-batches")
    print("| shape | global batch | micro-batches | way | s / step (median) | × one batch | peak MiB |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for shape, config_kwargs, global_batch, micro_batches in runs:
        config = DiffCLIPConfig(**config_kwargs).with_variant("diffclip")
        trainer = DualEncoderForTraining(DiffCLIPModel(config)).train()
        ways = steps(trainer, inputs(config, global_batch), micro_batches)
        times = time_interleaved(ways, args.repeats, args.warmup, "cpu")
        baseline = statistics.median(times["one batch"])
        for way, step in ways.items():
            record = {
                "shape": shape,
                "global_batch": global_batch,
                "micro_batches": micro_batches,
                "way": way,
                "seconds": spread(times[way]),
                "vs_one_batch": statistics.median(times[way]) / baseline,
                "peak_mib": mebibytes(peak_memory(step, "cpu")),
            }
            payload["results"].append(record)
            cells = [shape, global_batch, micro_batches, way, record["seconds"]["median"]]
            cells += [record["vs_one_batch"], record["peak_mib"]]
            print("| " + " | ".join(map(format_measurement, cells)) + " |")
    write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    run_main(main)
