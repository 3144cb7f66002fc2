# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Time DiffCLIP's encoders exported for ONNX Runtime against PyTorch, eager and `torch.compile`d, in inference on CPU
(random weights, both towers differential).

    python benchmarks/bench_onnx.py                                          # ViT-B/16 and tiny
    python benchmarks/bench_onnx.py --shapes vit-b-16 --batch_size 8 --repeats 7 --output onnx.json
    python benchmarks/bench_onnx.py --shapes tiny --repeats 1 --candidates pytorch onnxruntime

Candidates, for the image encoder (`pixel_values` -> `image_embeds`) and the text encoder (`input_ids`,
`attention_mask` of full-length captions -> `text_embeds`):

- `pytorch`: `DiffCLIPModel` with its default SDPA attention, under `torch.no_grad()`; the reference of `max |Δ|`.
- `pytorch-compiled`: `torch.compile` of the same encoder (default options; compiled in the untimed warm-up).
- `onnxruntime`: the graph as `convert/export_onnx.py` writes it (eager attention, float32, `--opset`).
- `onnxruntime-fp16`: the same in float16 (`export_onnx.py --fp16`); `max |Δ|` is against float32 PyTorch.
- `onnxruntime-sdpa`: the graph exported from the SDPA attention path instead (why export_onnx.py uses eager).

Shapes: `vit-b-16` is `DiffCLIPConfig()` (224 px, 197 image tokens; 77 text tokens), `tiny` the demo model of
examples/pretrain.py (32 px, 17 image tokens; 16 text tokens). ONNX Runtime gets as many intra-op threads as
PyTorch and does not spin-wait between calls, which would take the cores from the PyTorch candidates interleaved
with it. Timing as in `diffclip_lab/benchmarking/harness.py` (warm-up, interleaved rounds, medians); speed-ups are
medians of the per-round ratios of PyTorch's time to the candidate's. Memory is not measured: ONNX Runtime
allocates outside PyTorch. Prints a Markdown table per shape; `--output` writes the results as JSON (keys in
docs/performance.md).
"""

import argparse
import copy
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import onnxscript
import torch

from diffclip_lab.benchmarking.harness import add_timing_arguments, paired_ratio, spread, time_interleaved
from diffclip_lab.conversion.onnx_export import DEFAULT_OPSET, ImageEncoder, TextEncoder, export_graph
from diffclip_lab.core.cli import ArgumentParser, positive_int, run_main
from diffclip_lab.core.files import write_json
from diffclip_lab.core.formatting import format_measurement, markdown_table
from diffclip_lab.core.provenance import command_and_machine, environment
from diffclip_lab.training.recipes import MODEL_CONFIGS
from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel


SHAPES = {"tiny": dict(config=MODEL_CONFIGS["tiny"], batch=32), "vit-b-16": dict(config={}, batch=8)}
# candidate -> (attention the graph is exported from, float16 weights); `None`: a PyTorch candidate
CANDIDATES = {
    "pytorch": None,
    "pytorch-compiled": None,
    "onnxruntime": ("eager", False),
    "onnxruntime-fp16": ("eager", True),
    "onnxruntime-sdpa": ("sdpa", False),
}
DEFAULT_CANDIDATES = ["pytorch", "pytorch-compiled", "onnxruntime"]
HEADERS = ["encoder", "candidate", "median ms", "IQR ms", "samples/s", "speed-up vs pytorch (IQR)", "max |Δ|"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_arguments(parser, SHAPES, "images and captions per call (default: 8, tiny 32)")
    parser.add_argument("--candidates", nargs="+", choices=tuple(CANDIDATES), default=DEFAULT_CANDIDATES)
    parser.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET, help="ONNX opset of the exported graphs")
    args = parser.parse_args(argv)
    if "pytorch" not in args.candidates:
        parser.error("--candidates must include pytorch, the reference of the speed-ups and differences.")
    return args


def onnx_sessions(model: DiffCLIPModel, args, folder: Path, example_inputs: dict) -> dict:
    """
    candidate -> encoder -> ONNX Runtime session of each ONNX Runtime candidate, exported into `folder`;
    `example_inputs`: encoder -> name -> tensor.
    """
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {}
    for name in args.candidates:
        if CANDIDATES[name] is None:
            continue
        attention, fp16 = CANDIDATES[name]
        # a copy: _from_config sets the attention on the config it is given, which the PyTorch baseline shares
        exported = DiffCLIPModel._from_config(copy.deepcopy(model.config), attn_implementation=attention).eval()
        exported.load_state_dict(model.state_dict())
        exported = exported.half() if fp16 else exported
        sessions[name] = {}
        for encoder, output in (("image", "image_embeds"), ("text", "text_embeds")):
            path = folder / f"{name}-{encoder}.onnx"
            export_graph(exported, output, path, args.opset, example_inputs[encoder])
            sessions[name][encoder] = onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
    return sessions


def inputs(config: DiffCLIPConfig, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images, (batch, 3, H, W), and full-length captions: start token, random words, end token."""
    generator = torch.Generator().manual_seed(0)
    vision, text = config.vision_config, config.text_config
    pixel_values = torch.randn(batch_size, 3, vision.image_size, vision.image_size, generator=generator)
    input_ids = torch.randint(1, text.bos_token_id, (batch_size, text.max_position_embeddings), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = text.bos_token_id, text.eos_token_id
    return pixel_values, input_ids


def run_pytorch(module: torch.nn.Module, inputs: dict) -> np.ndarray:
    with torch.no_grad():
        return module(**inputs).numpy()


def run_onnx(session: onnxruntime.InferenceSession, feeds: dict) -> np.ndarray:
    return session.run(None, feeds)[0]


def encoder_steps(shape: dict, batch_size: int, args, folder: Path) -> dict:
    """encoder -> candidate -> step returning the embeddings, (batch, projection_dim), as a NumPy array."""
    config = DiffCLIPConfig(**shape["config"])
    torch.manual_seed(0)
    model = DiffCLIPModel(config).eval()
    pixel_values, input_ids = inputs(config, batch_size)
    attention_mask = torch.ones_like(input_ids)
    encoders = {
        "image": (ImageEncoder(model), {"pixel_values": pixel_values}),
        "text": (TextEncoder(model), {"input_ids": input_ids, "attention_mask": attention_mask}),
    }
    example_inputs = {
        name: {key: tensor[:2] for key, tensor in tensors.items()} for name, (_, tensors) in encoders.items()
    }
    sessions = onnx_sessions(model, args, folder, example_inputs)
    steps = {}
    for encoder_name, (encoder, tensors) in encoders.items():
        modules = {"pytorch": encoder}
        if "pytorch-compiled" in args.candidates:
            modules["pytorch-compiled"] = torch.compile(encoder)
        steps[encoder_name] = {name: partial(run_pytorch, module, tensors) for name, module in modules.items()}
        feeds = {key: tensor.numpy() for key, tensor in tensors.items()}
        for name, encoder_sessions in sessions.items():
            steps[encoder_name][name] = partial(run_onnx, encoder_sessions[encoder_name], feeds)
    return steps


def main(argv=None) -> int:
    args = parse_args(argv)
    versions = {module.__name__: module.__version__ for module in (onnxruntime, onnxscript, onnx)}
    env = {**environment("cpu"), **versions}
    payload = {
        "script": "bench_onnx",
        **command_and_machine("bench_onnx"),
        "environment": env,
        "settings": {**vars(args), "output": str(args.output)},
    }
    payload["results"] = []
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        batch_size = args.batch_size or shape["batch"]
        with tempfile.TemporaryDirectory(prefix="bench-onnx-") as folder:
            steps = encoder_steps(shape, batch_size, args, Path(folder))
            rows = []
            for encoder_name, candidates in steps.items():
                reference = candidates["pytorch"]()
                errors = {name: float(np.abs(step() - reference).max()) for name, step in candidates.items()}
                times = time_interleaved(candidates, args.repeats, args.warmup, "cpu")
                for name in candidates:
                    stats, speedup = spread(times[name]), paired_ratio(times["pytorch"], times[name])
                    record = {
                        "shape": shape_name,
                        "encoder": encoder_name,
                        "candidate": name,
                        "batch_size": batch_size,
                        "times_s": times[name],
                        **{f"{key}_s": value for key, value in stats.items()},
                        "samples_per_s": batch_size / stats["median"],
                        **{f"speedup_{key}": value for key, value in speedup.items()},
                        "max_abs_error": errors[name],
                    }
                    payload["results"].append(record)
                    rows.append(result_row(record))
        print(f"\n### {shape_name}: batch {batch_size}, CPU, {torch.get_num_threads()} threads\n")
        print(markdown_table(HEADERS, rows, cell=format_measurement), flush=True)
    write_json(args.output, payload)
    return 0


def result_row(record: dict) -> list:
    ms = {key: 1e3 * record[f"{key}_s"] for key in ("median", "q1", "q3")}
    return [
        record["encoder"],
        record["candidate"],
        ms["median"],
        f"{ms['q1']:.3g}–{ms['q3']:.3g}",
        record["samples_per_s"],
        f"{record['speedup_median']:.2f} ({record['speedup_q1']:.2f}–{record['speedup_q3']:.2f})",
        f"{record['max_abs_error']:.1e}",
    ]


if __name__ == "__main__":
    run_main(main)
