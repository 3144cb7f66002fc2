# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Where a model's image encoder looks when it matches a text query: the text-conditioned relevance of Chefer, Gur &
Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV
2021). Starting from the identity, every vision layer adds Ā·R to the relevance R, where Ā is the head-mean of the
positive part of (∂s/∂A) ⊙ A, A the layer's attention maps and s the image-text similarity of the query; the class
token's row of R, over the patches, is the map. For DiffCLIP the maps A are the differential maps A1 − λ·A2, for
CLIP the softmax maps.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..core.errors import UserError  # noqa: E402
from ..core.images import UnreadableImage, read_image  # noqa: E402
from ..core.loading import load_pretrained  # noqa: E402


@dataclass
class Relevance:
    """How one model matches one text query to one image."""

    query: str
    patches: torch.Tensor  # (grid_height, grid_width): each patch's relevance, ≥ 0, on the model's own scale
    similarity: float  # cosine similarity of the image and text embeddings
    logit: float  # the model's logit for the pair (similarity × its temperature)


def relevance_map(model, processor, image: Image.Image, query: str) -> Relevance:
    """The relevance of each patch to the query's image-text similarity, and the similarity itself."""
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
    side = int(round((tokens - 1) ** 0.5))
    similarity = (outputs.image_embeds @ outputs.text_embeds.T)[0, 0].item()
    patches = relevance[0, 1:].detach().view(side, side)
    return Relevance(query, patches, similarity, outputs.logits_per_image[0, 0].item())


def centre_crop_box(processor, image: Image.Image) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) of the region the processor keeps (resize of the short side, centre crop),
    in the image's own pixels."""
    size = processor.image_processor.crop_size
    width, height = image.size
    scale = max(size["width"] / width, size["height"] / height)
    crop_width, crop_height = size["width"] / scale, size["height"] / scale
    left, top = (width - crop_width) / 2, (height - crop_height) / 2
    return round(left), round(top), round(left + crop_width), round(top + crop_height)


def draw(rows: list[tuple[str, list[Relevance]]], image: Image.Image, box, output: Path) -> None:
    """
    A grid, one row per model: the image with the centre crop the models see, then each query's relevance over the
    crop, titled with the image-text similarity and the query's probability among the queries. A row shares one
    colour scale (its largest relevance = 1), so a query the model finds less relevant looks colder.
    """
    crop = np.asarray(image.crop(box))
    queries = len(rows[0][1])
    figure, axes = plt.subplots(
        len(rows), queries + 1, figsize=(2.7 * (queries + 1) + 0.6, 2.9 * len(rows)), squeeze=False
    )
    for row, (name, maps) in enumerate(rows):
        scale = max(m.patches.max().item() for m in maps) or 1.0
        probabilities = torch.tensor([m.logit for m in maps]).softmax(0).tolist()
        axes[row, 0].imshow(image)
        left, top, right, bottom = box
        axes[row, 0].add_patch(
            plt.Rectangle((left, top), right - left, bottom - top, fill=False, color="white", lw=1.5)
        )
        axes[row, 0].set_ylabel(name, fontsize=9)
        for column, (relevance, probability) in enumerate(zip(maps, probabilities, strict=True), start=1):
            heat = F.interpolate(relevance.patches[None, None].cpu() / scale, size=crop.shape[:2], mode="bilinear")
            axes[row, column].imshow(crop)
            shown = axes[row, column].imshow(heat[0, 0].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[row, column].set_title(
                f'"{relevance.query}"\ncos {relevance.similarity:.3f}, p {probability:.2f}', fontsize=8
            )
        figure.colorbar(shown, ax=axes[row, 1:].tolist(), fraction=0.03, pad=0.02, label="relevance (row max = 1)")
        for axis in axes[row]:
            axis.set_xticks([])
            axis.set_yticks([])
    axes[0, 0].set_title("image (box: the centre crop\nthe model sees)", fontsize=8)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=120, bbox_inches="tight")
    plt.close(figure)


def load_for_relevance(name: str, device: str, trust_remote_code: bool = False):
    """(model, processor) ready for `relevance_map`: the maps exist in the eager path only, and float32 keeps their
    gradients exact."""
    model, processor = load_pretrained(name, trust_remote_code, attn_implementation="eager", dtype=torch.float32)
    return model.to(device).eval(), processor


def attention_figure(models: Iterable[tuple], image_path, queries: list[str], output: Path) -> list[list[Relevance]]:
    """
    The paper's Figure 2 for one image: each model's relevance map of each query (`relevance_map`), drawn one row
    per model (`draw`) into `output`. `models` yields (label, model, processor), e.g. lazily, one model loaded at a
    time; the crop box drawn is the first model's processor's. Returns the maps, one list per model.
    """
    try:
        image = read_image(image_path)
    except UnreadableImage as error:
        raise UserError(f"cannot read the image {image_path}: {error}") from None
    rows, box = [], None
    for label, model, processor in models:
        rows.append((label, [relevance_map(model, processor, image, query) for query in queries]))
        box = box or centre_crop_box(processor, image)
    draw(rows, image, box, Path(output))
    return [maps for _, maps in rows]
