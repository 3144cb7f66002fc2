# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Time whole dual encoders: DiffCLIPModel (each attention backend), Transformers' CLIPModel of identical dimensions,
and the reference implementation (materialised maps), in inference (forward) and a training step (forward,
contrastive loss, backward).

    python benchmarks/bench_model.py                                     # CPU, float32, small batches
    python benchmarks/bench_model.py --shapes vit-b-16 --batch_size 8 --repeats 7 --output model.json
    python benchmarks/bench_model.py --device cuda --output model.json   # bfloat16, batch 256, flex_attention too
    python benchmarks/bench_model.py --compile --shapes tiny             # torch.compile speed-up

Shapes: `tiny` is examples/pretrain.py's demo model (width 64, 2 layers, 4 heads, 32-px images, patch 8, 16 text
tokens); `vit-b-16` the released DiffCLIP ViT-B/16 (224 px, 197 image tokens; 77 text tokens); `vit-b-16-336` and
`vit-b-16-384` the same at 336 and 384 px (442 and 577 image tokens; 577 is also what 336 px gives with 14-pixel
patches, as in ViT-L/14@336); `text-77` its text tower alone on a large batch of 77-token captions.
The CLIP model has DiffCLIP's widths, depths, heads, patch and image size and activations; it keeps CLIP's
pre-encoder LayerNorm and bias-free patch embedding. Prints Markdown tables; `--output` writes them as JSON
(keys documented in docs/performance.md).
"""

import copy

import torch
from transformers import CLIPConfig, CLIPModel

from diffclip_lab.benchmarking.harness import new_payload, parse_args, run_shape, trainable
from diffclip_lab.conversion.official import reference_from
from diffclip_lab.core.cli import run_main
from diffclip_lab.core.files import write_json
from diffclip_lab.training.recipes import MODEL_CONFIGS
from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel


# config, whether images are part of the step (else the text tower alone), default batch per device
SHAPES = {
    "tiny": dict(config=MODEL_CONFIGS["tiny"], images=True, batch={"cpu": 32, "cuda": 1024}),
    "vit-b-16": dict(config={}, images=True, batch={"cpu": 2, "cuda": 256}),
    "vit-b-16-336": dict(config={"vision_config": {"image_size": 336}}, images=True, batch={"cpu": 1, "cuda": 128}),
    "vit-b-16-384": dict(config={"vision_config": {"image_size": 384}}, images=True, batch={"cpu": 1, "cuda": 128}),
    "text-77": dict(config={}, images=False, batch={"cpu": 8, "cuda": 1024}),
}
RATIOS = [
    ("diffclip-sdpa", "clip-sdpa"),
    ("diffclip-sdpa", "reference"),
    ("diffclip-eager", "reference"),
    ("diffclip-eager", "clip-sdpa"),
    ("diffclip-flex", "clip-sdpa"),
    ("diffclip-sdpa", "diffclip-sdpa-compiled"),
]


def clip_like(config: DiffCLIPConfig) -> CLIPConfig:
    """A CLIPConfig of DiffCLIP's dimensions and activations."""

    def tower(tower_config, fields):
        return {
            field: getattr(tower_config, field)
            for field in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "hidden_act",
                "layer_norm_eps",
                *fields,
            )
        }

    return CLIPConfig(
        text_config=tower(config.text_config, ("vocab_size", "max_position_embeddings", "eos_token_id")),
        vision_config=tower(config.vision_config, ("image_size", "patch_size", "num_channels")),
        projection_dim=config.projection_dim,
    )


def inputs(config: DiffCLIPConfig, batch_size: int, images: bool, device: str, dtype: torch.dtype) -> dict:
    """Full-length captions (start token, random words, end token) and, for dual shapes, random images."""
    generator = torch.Generator().manual_seed(0)
    text = config.text_config
    input_ids = torch.randint(1, text.bos_token_id, (batch_size, text.max_position_embeddings), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = text.bos_token_id, text.eos_token_id
    batch = {"input_ids": input_ids.to(device)}
    if images:
        vision = config.vision_config
        pixel_values = torch.randn(
            batch_size, vision.num_channels, vision.image_size, vision.image_size, generator=generator
        )
        batch["pixel_values"] = pixel_values.to(device=device, dtype=dtype)
    return batch


def models(config: DiffCLIPConfig, args) -> dict:
    """name -> model: DiffCLIP per backend (one set of weights), CLIP, the reference, and the compiled DiffCLIP."""
    implementations = ["eager", "sdpa"] + (["flex_attention"] if args.flex or args.device == "cuda" else [])
    torch.manual_seed(0)
    diffclip = DiffCLIPModel(config)
    candidates = {}
    for implementation in implementations:
        # each model its own config: the backend is recorded in it
        model = DiffCLIPModel._from_config(copy.deepcopy(config), attn_implementation=implementation)
        model.load_state_dict(diffclip.state_dict())
        candidates["diffclip-" + implementation.removesuffix("_attention")] = model
    candidates["clip-sdpa"] = CLIPModel._from_config(clip_like(config), attn_implementation="sdpa")
    candidates["reference"] = reference_from(diffclip)
    candidates = {name: model.to(device=args.device, dtype=args.dtype) for name, model in candidates.items()}
    if args.compile:
        candidates["diffclip-sdpa-compiled"] = torch.compile(candidates["diffclip-sdpa"])
    return candidates


def model_steps(shape: dict, batch_size: int, args) -> tuple[dict, dict]:
    """Forward and train steps of every model, and the largest difference of its output to DiffCLIP eager's."""
    config = DiffCLIPConfig(**shape["config"])
    candidates = models(config, args)
    batch = inputs(config, batch_size, shape["images"], args.device, args.dtype)
    probe = torch.randn(batch_size, config.projection_dim, generator=torch.Generator().manual_seed(1))
    probe = probe.to(device=args.device, dtype=args.dtype)

    def output_and_loss(name):
        """Dual shapes: logits per image and the contrastive loss; text-77: text embeddings and a probe of them."""
        model = candidates[name]
        if name == "reference":
            if shape["images"]:
                return model(batch["input_ids"], batch["pixel_values"])
            features = model.encode_text(batch["input_ids"])
        elif shape["images"]:
            out = model(**batch, return_loss=True)
            return out.logits_per_image, out.loss
        else:
            features = model.get_text_features(**batch).pooler_output
        return features, (features * probe).sum()

    def forward(name):
        def step():
            candidates[name].eval()
            with torch.no_grad():
                output_and_loss(name)

        return step

    def train(name):
        def step():
            candidates[name].train()
            output_and_loss(name)[1].backward()
            for parameter in candidates[name].parameters():
                parameter.grad = None

        return step

    with torch.no_grad():
        for model in candidates.values():
            model.eval()
        expected = output_and_loss("diffclip-eager")[0].float()
        errors = {
            name: (output_and_loss(name)[0].float() - expected).abs().max().item()
            for name in candidates
            if name != "clip-sdpa"
        }
    return {
        "forward": {name: forward(name) for name in candidates},
        "train": {name: train(name) for name in trainable(candidates, args.device)},
    }, errors


def main(argv=None) -> int:
    args = parse_args(__doc__, SHAPES, argv, flex="also time flex_attention on CPU (compiles for minutes)")
    payload = new_payload("bench_model", args)
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        batch_size = args.batch_size or shape["batch"][args.device]
        config = DiffCLIPConfig(**shape["config"])
        if shape["images"]:
            tokens = (config.vision_config.image_size // config.vision_config.patch_size) ** 2 + 1
            title = f"{shape_name}: batch {batch_size} image-text pairs, {tokens} tokens per image, {args.dtype}"
        else:
            tokens = config.text_config.max_position_embeddings
            title = f"{shape_name}: batch {batch_size} captions of {tokens} tokens, text tower only, {args.dtype}"
        run_shape(
            payload, title, shape_name, "model", model_steps(shape, batch_size, args), batch_size, tokens, RATIOS, args
        )
    write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    run_main(main)
