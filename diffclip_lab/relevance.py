# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Where a model's image encoder looks when it matches a text query: the text-conditioned relevance of Chefer, Gur &
Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV
2021). Starting from the identity, every vision layer adds Ā·R to the relevance R, where Ā is the head-mean of the
positive part of (∂s/∂A) ⊙ A, A the layer's attention maps and s the image-text similarity of the query; the class
token's row of R, over the patches, is the map. For DiffCLIP the maps A are the differential maps A1 − λ·A2, for
CLIP the softmax maps.
"""

from pathlib import Path

import matplotlib
import numpy as np
import torch
from PIL import Image


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .cli import UserError  # noqa: E402


def relevance_map(model, processor, image: Image.Image, query: str) -> torch.Tensor:
    """(grid_height, grid_width) relevance of each patch to the query's similarity, scaled to [0, 1]."""
    inputs = processor(text=[query], images=image, padding=True, return_tensors="pt").to(model.device)
    model.zero_grad(set_to_none=True)
    outputs = model(**inputs, output_attentions=True)
    maps = outputs.vision_model_output.attentions  # per layer (1, heads, tokens, tokens), part of the graph
    if not maps:
        raise UserError("the model returned no attention maps: load it with attn_implementation='eager'.")
    for attention in maps:
        attention.retain_grad()
    outputs.logits_per_image[0, 0].backward()
    tokens = maps[0].shape[-1]
    relevance = torch.eye(tokens, device=maps[0].device)
    for attention in maps:
        if attention.grad is None:
            raise UserError("the attention maps are not on the path to the output; cannot take their gradients.")
        weighted = (attention.grad * attention).clamp(min=0).mean(dim=1)[0]
        relevance = relevance + weighted @ relevance
    patches = relevance[0, 1:].detach()
    height = width = int(round((tokens - 1) ** 0.5))
    patches = patches.view(height, width)
    patches = patches - patches.min()
    return patches / patches.max().clamp(min=1e-12)


def model_input_image(processor, image: Image.Image) -> np.ndarray:
    """The image as the model sees it (resized and cropped, not normalised), for drawing under the maps."""
    size = processor.image_processor.crop_size
    width, height = image.size
    scale = max(size["width"] / width, size["height"] / height)
    resized = image.resize((round(width * scale), round(height * scale)), Image.BICUBIC)
    left, top = (resized.width - size["width"]) // 2, (resized.height - size["height"]) // 2
    return np.asarray(resized.crop((left, top, left + size["width"], top + size["height"])))


def draw(rows: list[tuple[str, np.ndarray, list[torch.Tensor]]], queries: list[str], output: Path) -> None:
    """A grid: one row per model, the image then one overlay per query."""
    figure, axes = plt.subplots(
        len(rows), len(queries) + 1, figsize=(2.6 * (len(queries) + 1), 2.7 * len(rows)), squeeze=False
    )
    for row, (name, picture, maps) in enumerate(rows):
        axes[row, 0].imshow(picture)
        axes[row, 0].set_ylabel(name, fontsize=9)
        for column, (query, relevance) in enumerate(zip(queries, maps, strict=True), start=1):
            heat = (
                torch.nn.functional.interpolate(
                    relevance[None, None], size=picture.shape[:2], mode="bilinear", align_corners=False
                )[0, 0]
                .cpu()
                .numpy()
            )
            axes[row, column].imshow(picture)
            axes[row, column].imshow(heat, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if row == 0:
                axes[row, column].set_title(f'"{query}"', fontsize=9)
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    axes[0, 0].set_title("image", fontsize=9)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120)
    plt.close(figure)
