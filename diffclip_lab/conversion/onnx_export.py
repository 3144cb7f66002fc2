# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Exporting a CLIP-family dual encoder (DiffCLIP and its ablations, Transformers CLIP) for ONNX Runtime, verified.

A folder holds two graphs with a dynamic batch size, `image_encoder.onnx` (`pixel_values` (batch, 3, H, W) float32
-> `image_embeds` (batch, projection_dim)) and `text_encoder.onnx` (`input_ids`, `attention_mask` (batch, tokens ≤
context length) int64 -> `text_embeds` (batch, projection_dim)), both the projected, unnormalised embeddings of
`get_image_features`/`get_text_features`; the processor files; `onnx_config.json` (logit scale, preprocessing,
context length, padding id, projection dimension, opset, dtype, source model, the verification) and a README.
`examples/onnx_zero_shot.py` classifies with it without PyTorch or Transformers.

Each graph is run in ONNX Runtime right after its export, on random images and real captions of several lengths at
batch sizes other than the traced one, and compared with PyTorch: max |Δ| ≤ 1e-4 on the embeddings in float32, ≤ 1 %
of the largest embedding component in float16; then the zero-shot top-1 of every image must agree. Otherwise
nothing is written.
"""

import copy
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime
import onnxscript
import torch
import transformers
from PIL import Image
from torch import nn
from transformers import CLIPModel

import modeling_diffclip  # noqa: F401  (registers DiffCLIP with the Auto classes)

from ..core.errors import UserError
from ..core.files import atomic_directory, check_output_directory
from ..core.loading import load_dual_encoder


# torch.onnx's dynamo exporter implements opset 18 and newer. Asked for an older one it exports opset 18 and runs
# ONNX's version converter, which cannot take this graph below 18 (ReduceMean's axes, an input since opset 18, are
# not constants it can fold into an attribute) and then keeps opset 18 without failing: refuse instead.
MIN_OPSET = 18
DEFAULT_OPSET = 18
# Eager attention, because both backends export (the SDPA path's `DifferentialNorm` autograd function traces under
# `no_grad`; both agree with PyTorch to 1e-5) but ONNX has no fused attention kernel below opset 23: the SDPA path's
# four attention calls per layer become matrix products that materialise the maps anyway, and ONNX Runtime merges the
# duplicated score maps but not the four value products, where eager multiplies the maps' difference with the values
# once, and its graph runs faster under ONNX Runtime (`onnxruntime` against `onnxruntime-sdpa` in docs/performance.md).
ATTN_IMPLEMENTATION = "eager"
FP32_TOLERANCE = 1e-4  # max |Δ| of the embeddings
FP16_RELATIVE_TOLERANCE = 1e-2  # max |Δ| / max |embedding|
IMAGE_ENCODER, TEXT_ENCODER, CONFIG_NAME = "image_encoder.onnx", "text_encoder.onnx", "onnx_config.json"
GRAPH_FILES = {"image_embeds": IMAGE_ENCODER, "text_embeds": TEXT_ENCODER}
# Real captions of several lengths; the last one is longer than any context and is truncated.
CAPTIONS = [
    "a photo of a cat",
    "a dog",
    "a red square on a blue background",
    "two people riding bicycles down a steep mountain road at sunset",
    "a diagram",
    " ".join(["a very long caption that goes on and on about a busy street market full of colourful stalls"] * 8),
]
# The image processor settings that examples/onnx_zero_shot.py reproduces with PIL and NumPy.
PREPROCESSING_KEYS = (
    "do_convert_rgb",
    "do_resize",
    "size",
    "resample",
    "do_center_crop",
    "crop_size",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)


class ImageEncoder(nn.Module):
    """`pixel_values` (batch, 3, H, W) float32 -> projected image embeddings (batch, projection_dim) float32."""

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.model.dtype)
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output.float()


class TextEncoder(nn.Module):
    """`input_ids`, `attention_mask` (batch, tokens) int64 -> projected text embeddings (batch, projection_dim)."""

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output.float()


def preprocessing_config(image_processor) -> dict:
    """The image processor's settings that `examples/onnx_zero_shot.py` applies, as plain JSON values."""
    settings = image_processor.to_dict()
    config = {key: settings[key] for key in PREPROCESSING_KEYS}
    config["resample"] = int(config["resample"])
    config["image_mean"], config["image_std"] = list(config["image_mean"]), list(config["image_std"])
    if config["do_resize"] and set(config["size"]) not in ({"shortest_edge"}, {"height", "width"}):
        raise UserError(
            f"the image processor resizes to {config['size']}; onnx_zero_shot.py reproduces resizing to "
            "{'shortest_edge': N} or {'height': H, 'width': W} only."
        )
    return config


def inference_config(model: CLIPModel, processor, source: str, opset: int, fp16: bool) -> dict:
    """What `onnx_config.json` holds, but the verification: what a runtime needs besides the graphs."""
    vision, text, tokenizer = model.config.vision_config, model.config.text_config, processor.tokenizer
    preprocessing = preprocessing_config(processor.image_processor)
    crop = preprocessing["crop_size"] if preprocessing["do_center_crop"] else preprocessing["size"]
    if (crop.get("height"), crop.get("width")) != (vision.image_size, vision.image_size):
        raise UserError(
            f"the image processor makes {crop} images but the model takes {vision.image_size} px; save a processor "
            "that matches the model."
        )
    return {
        "source_model": str(source),
        "model_type": model.config.model_type,
        "image_encoder": IMAGE_ENCODER,
        "text_encoder": TEXT_ENCODER,
        "image_size": vision.image_size,
        "preprocessing": preprocessing,
        "context_length": text.max_position_embeddings,
        "pad_token": tokenizer.pad_token,
        "pad_token_id": tokenizer.pad_token_id,
        "split_special_tokens": bool(getattr(tokenizer, "split_special_tokens", False)),
        "projection_dim": model.config.projection_dim,
        "logit_scale": model.logit_scale.item(),
        "zero_shot": "softmax(exp(logit_scale) * cosine similarity of image_embeds and text_embeds)",
        "opset": opset,
        "dtype": "float16" if fp16 else "float32",
        "attn_implementation": ATTN_IMPLEMENTATION,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxscript": onnxscript.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }


def sample_inputs(processor, context_length: int, image_size: int) -> dict[str, list[dict]]:
    """
    Verification inputs per output: random images of three shapes through the processor, as batches of 3 and 1, and
    the captions tokenized three ways: all of them padded to the context length (5 + 1 truncated), the first three
    padded to the longest of them, and one unpadded (shorter than the context). The graphs are traced with the
    first two of each first batch.
    """
    rng = np.random.default_rng(0)
    sizes = [(image_size + image_size // 2, image_size), (image_size, image_size + image_size // 4), (40, 40)]
    images = [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for width, height in sizes]
    pixel_values = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]

    def tokenize(captions, padding):
        return dict(
            processor.tokenizer(
                captions, padding=padding, truncation=True, max_length=context_length, return_tensors="pt"
            )
        )

    return {
        "image_embeds": [{"pixel_values": pixel_values}, {"pixel_values": pixel_values[:1]}],
        "text_embeds": [
            tokenize(CAPTIONS, "max_length"),
            tokenize(CAPTIONS[:3], "longest"),
            tokenize(CAPTIONS[4:5], False),
        ],
    }


@contextmanager
def exporter_notes_silenced() -> Iterator[None]:
    """
    Hide what torch.onnx.export reports that is no concern of these graphs: the torchvision operators it skips
    where torchvision is absent, the axis names shared by the two text inputs, a pytree deprecation.
    """
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="# The axis name")
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def export_graph(model: CLIPModel, output: str, path: Path, opset: int, example_inputs: dict) -> None:
    """
    Write the graph of `model` (in its dtype, float32 inputs and outputs) that gives `output`, "image_embeds" or
    "text_embeds", to `path`. Traced with `example_inputs` (name -> tensor, two samples), it takes any batch size
    and up to the context length of tokens.
    """
    encoder = ImageEncoder(model) if output == "image_embeds" else TextEncoder(model)
    axes = {0: torch.export.Dim("batch")}
    if output == "text_embeds":
        axes[1] = torch.export.Dim("tokens", max=model.config.text_config.max_position_embeddings)
    unsupported = UserError(
        f"opset {opset} could not be exported by torch {torch.__version__} with onnxscript {onnxscript.__version__}; "
        f"use the default opset {DEFAULT_OPSET}, or upgrade onnx and onnxscript."
    )
    with torch.no_grad(), exporter_notes_silenced():
        try:
            program = torch.onnx.export(
                encoder.eval(),
                tuple(example_inputs.values()),
                dynamo=True,
                opset_version=opset,
                input_names=list(example_inputs),
                output_names=[output],
                dynamic_shapes={name: axes for name in example_inputs},
                verbose=False,
            )
        except torch.onnx.errors.OnnxExporterError:
            if opset == DEFAULT_OPSET:
                raise  # the exporter or the model is at fault: keep the traceback
            raise unsupported from None
    if program.model.opset_imports[""] != opset:  # the version converter failed and kept another opset
        raise unsupported
    program.save(path)  # weights beside the graph (`path`.data) only past protobuf's 2 GB


def verify_graph(path: Path, model: CLIPModel, output: str, batches: list[dict], fp16: bool) -> tuple:
    """
    Run the graph at `path` with ONNX Runtime on `batches` and compare its `output` with `model`'s in float32;
    raise a [`UserError`] above the tolerance. Returns the largest difference, the tolerance, and the
    embeddings of the first batch as (ONNX Runtime, PyTorch).
    """
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    features = model.get_image_features if output == "image_embeds" else model.get_text_features
    embeddings = []  # (ONNX Runtime, PyTorch) per batch
    for inputs in batches:
        actual = session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})[0]
        with torch.no_grad():
            embeddings.append((actual, features(**inputs).pooler_output.numpy()))
    difference = max(float(np.abs(actual - expected).max()) for actual, expected in embeddings)
    scale = max(float(np.abs(expected).max()) for _, expected in embeddings)
    tolerance = FP16_RELATIVE_TOLERANCE * scale if fp16 else FP32_TOLERANCE
    if not difference <= tolerance:  # NaN fails too
        overflow = "; float16 overflows past ±65504: export in float32" if fp16 and not np.isfinite(difference) else ""
        raise UserError(
            f"the ONNX Runtime {output} differ from PyTorch's by up to {difference:.2e} (tolerance {tolerance:.1e})"
            f"{overflow}; nothing was written."
        )
    return difference, tolerance, embeddings[0]


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    return embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)


def check_zero_shot(image_embeds: tuple, text_embeds: tuple) -> None:
    """
    The same top-1 caption for every image from ONNX Runtime as from PyTorch; `image_embeds` and `text_embeds` are
    (ONNX Runtime, PyTorch) pairs of (images, dim) and (captions, dim) arrays.
    """
    top1, expected_top1 = [
        (_normalised(images) @ _normalised(texts).T).argmax(-1)
        for images, texts in zip(image_embeds, text_embeds, strict=True)
    ]
    if not np.array_equal(top1, expected_top1):
        raise UserError(
            f"the zero-shot top-1 caption differs between ONNX Runtime ({top1.tolist()}) and PyTorch "
            f"({expected_top1.tolist()}) on the sample images; nothing was written."
        )


def folder_readme(config: dict) -> str:
    """The README.md of an exported folder: what the files are and how to classify with them."""
    size, context, dim = config["image_size"], config["context_length"], config["projection_dim"]
    return f"""---
tags:
- onnx
- clip
- {config["model_type"]}
pipeline_tag: zero-shot-image-classification
---

# {config["source_model"]} for ONNX Runtime

Exported from `{config["source_model"]}` ({config["model_type"]}) with `convert/export_onnx.py` of DiffCLIP for
Transformers: opset {config["opset"]}, {config["dtype"]} weights, dynamic batch size.

| file | contents |
| --- | --- |
| `{IMAGE_ENCODER}` | `pixel_values` (batch, 3, {size}, {size}) float32 -> `image_embeds` (batch, {dim}) float32 |
| `{TEXT_ENCODER}` | `input_ids`, `attention_mask` (batch, tokens ≤ {context}) int64 -> `text_embeds` (batch, {dim}) |
| `{CONFIG_NAME}` | logit scale, preprocessing, context length, padding id, versions, the verification |
| `tokenizer.json`, `processor_config.json`, ... | the Transformers processor |

The embeddings are projected and not normalised. Zero-shot probabilities are the softmax over captions of
exp(logit_scale) × the cosine similarity of the image and caption embeddings. Captions are tokenized with
`tokenizer.json`, padded with id {config["pad_token_id"]} and truncated to {context} tokens; images are resized,
centre-cropped and normalised as `preprocessing` in `{CONFIG_NAME}` says.

Classify an image with ONNX Runtime, the `tokenizers` library, Pillow and NumPy only (no PyTorch):

```bash
python examples/onnx_zero_shot.py THIS_FOLDER image.jpg --labels cat dog --template "a photo of a {{}}"
```

Before writing, both graphs were run with ONNX Runtime and compared with PyTorch: largest absolute difference
{config["verification"]["max_abs_difference"]["image_embeds"]:.1e} (image) and
{config["verification"]["max_abs_difference"]["text_embeds"]:.1e} (text) on the embeddings, same zero-shot top-1.
"""


def export_onnx(
    model_name_or_path: str,
    output_dir: str | Path,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    overwrite: bool = False,
) -> dict:
    """
    Export `model_name_or_path` (a folder or Hub id of a DiffCLIP or CLIP model with its processor) into
    `output_dir`, written in one rename after the graphs passed verification. Returns the verification report:
    `max_abs_difference` and `tolerance` per output, the batch sizes and text shapes compared.
    """
    check_output_directory(output_dir, overwrite)
    if opset < MIN_OPSET:
        raise UserError(f"opset {opset} is too old for this graph: use >= {MIN_OPSET}")
    model, processor = load_dual_encoder(
        model_name_or_path, attn_implementation=ATTN_IMPLEMENTATION, dtype=torch.float32
    )
    config = inference_config(model, processor, model_name_or_path, opset, fp16)
    samples = sample_inputs(processor, config["context_length"], config["image_size"])
    report = {"max_abs_difference": {}, "tolerance": {}}
    first_batches = {}
    with atomic_directory(output_dir, overwrite=overwrite) as staging:
        processor.save_pretrained(staging)
        if not (staging / "tokenizer.json").is_file():
            raise UserError(
                f"the tokenizer of {model_name_or_path} saves no tokenizer.json, which onnx_zero_shot.py needs."
            )
        # the float32 model stays the reference; the float16 copy only exports
        exported = copy.deepcopy(model).half() if fp16 else model
        for output, batches in samples.items():  # each graph checked before the next is exported
            path = staging / GRAPH_FILES[output]
            export_graph(exported, output, path, opset, {name: tensor[:2] for name, tensor in batches[0].items()})
            difference, tolerance, first_batches[output] = verify_graph(path, model, output, batches, fp16)
            report["max_abs_difference"][output], report["tolerance"][output] = difference, tolerance
        check_zero_shot(first_batches["image_embeds"], first_batches["text_embeds"])
        report["image_batch_sizes"] = [len(batch["pixel_values"]) for batch in samples["image_embeds"]]
        report["text_shapes"] = [list(batch["input_ids"].shape) for batch in samples["text_embeds"]]
        config["verification"] = report
        (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(folder_readme(config), encoding="utf-8")
    return report
