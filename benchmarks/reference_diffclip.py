# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The reference formulation of DiffCLIP, for comparison only: differential attention as the paper's code computes it
(both softmax maps materialised, plain matmuls), in a timm-style ViT and an OpenAI-CLIP-style causal text tower with
the dimensions of a `DiffCLIPConfig`. `load_diffclip_state_dict` copies a `DiffCLIPModel`'s weights into it, so the
benchmarks and tests can check that both give the same numbers. Nothing in `modeling_diffclip` imports this file.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x)}


class ReferenceDiffAttention(nn.Module):
    """Multi-head differential attention as in the paper's code; 2h query/key heads of size d, h value heads of 2d."""

    def __init__(self, width: int, num_heads: int, lambda_init: float):
        super().__init__()
        self.num_heads, self.head_dim, self.lambda_init = num_heads, width // num_heads, lambda_init
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(width, width) for _ in range(4))
        self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2 = (
            nn.Parameter(torch.zeros(self.head_dim)) for _ in range(4)
        )
        self.subln = nn.Parameter(torch.ones(2 * self.head_dim))  # the RMSNorm weight

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (batch, tokens, width); mask: additive, broadcastable to (batch, heads, tokens, tokens)."""
        batch, tokens, width = x.shape
        q = self.q_proj(x).view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, tokens, self.num_heads // 2, 2 * self.head_dim).transpose(1, 2)
        scores = (q * self.head_dim**-0.5) @ k.transpose(-1, -2)
        if mask is not None:
            scores = scores + mask
        maps = F.softmax(scores, dim=-1, dtype=torch.float32).type_as(scores)
        maps = maps.view(batch, self.num_heads // 2, 2, tokens, tokens)
        lambda_1 = torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1).float()).type_as(q)
        lambda_2 = torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2).float()).type_as(q)
        lambda_full = lambda_1 - lambda_2 + self.lambda_init
        out = (maps[:, :, 0] - lambda_full * maps[:, :, 1]) @ v
        normed = out.float() * torch.rsqrt(out.float().pow(2).mean(-1, keepdim=True) + 1e-5)
        out = normed.type_as(out) * self.subln * (1 - self.lambda_init)
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, width))


class ReferenceBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + fc2(act(fc1(norm2(x))))."""

    def __init__(self, tower_config, layer_idx: int):
        super().__init__()
        width = tower_config.hidden_size
        self.norm1 = nn.LayerNorm(width, eps=tower_config.layer_norm_eps)
        self.attn = ReferenceDiffAttention(
            width, tower_config.num_attention_heads, tower_config.layer_lambda_init(layer_idx)
        )
        self.norm2 = nn.LayerNorm(width, eps=tower_config.layer_norm_eps)
        self.fc1 = nn.Linear(width, tower_config.intermediate_size)
        self.fc2 = nn.Linear(tower_config.intermediate_size, width)
        self.act = ACTIVATIONS[tower_config.hidden_act]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class ReferenceDiffCLIP(nn.Module):
    """
    The dual encoder: a timm-style ViT pooled at the class token and a causal text transformer pooled at the
    end-of-text token (the largest id, as in OpenAI CLIP), with bias-free projections. Both towers differential.
    """

    def __init__(self, config):
        super().__init__()
        vision, text = config.vision_config, config.text_config
        if not (vision.use_differential_attention and text.use_differential_attention):
            raise ValueError("The reference implements DiffCLIP, whose towers both use differential attention.")
        num_patches = (vision.image_size // vision.patch_size) ** 2
        self.patch_embed = nn.Conv2d(
            vision.num_channels,
            vision.hidden_size,
            vision.patch_size,
            vision.patch_size,
            bias=vision.patch_embedding_bias,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, vision.hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, vision.hidden_size))
        self.norm_pre = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps) if vision.pre_layernorm else None
        self.blocks = nn.ModuleList(ReferenceBlock(vision, layer) for layer in range(vision.num_hidden_layers))
        self.norm = nn.LayerNorm(vision.hidden_size, eps=vision.layer_norm_eps)
        self.image_projection = nn.Parameter(torch.zeros(vision.hidden_size, config.projection_dim))

        self.token_embedding = nn.Embedding(text.vocab_size, text.hidden_size)
        self.positional_embedding = nn.Parameter(torch.zeros(text.max_position_embeddings, text.hidden_size))
        self.resblocks = nn.ModuleList(ReferenceBlock(text, layer) for layer in range(text.num_hidden_layers))
        self.ln_final = nn.LayerNorm(text.hidden_size, eps=text.layer_norm_eps)
        self.text_projection = nn.Parameter(torch.zeros(text.hidden_size, config.projection_dim))
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(batch, channels, size, size) -> unnormalised image embeddings (batch, projection_dim)."""
        x = self.patch_embed(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0] @ self.image_projection

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(batch, tokens) ids, each row holding one end-of-text token -> unnormalised text embeddings."""
        tokens = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:tokens]
        mask = causal_mask(tokens, device=x.device, dtype=x.dtype)
        for block in self.resblocks:
            x = block(x, mask)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), input_ids.argmax(dim=-1)] @ self.text_projection

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns logits_per_image (images, texts) and the symmetric contrastive loss (image i matches text i)."""
        image = F.normalize(self.encode_image(pixel_values), dim=-1)
        text = F.normalize(self.encode_text(input_ids), dim=-1)
        logits_per_image = self.logit_scale.exp() * image @ text.t()
        labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
        loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.t(), labels)) / 2
        return logits_per_image, loss


# ReferenceDiffAttention parameter -> DiffCLIPAttention parameter
ATTENTION_NAMES = {
    **{
        f"{proj}.{kind}": f"{proj}.{kind}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj")
        for kind in ("weight", "bias")
    },
    **{name: name for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")},
    "subln": "diff_norm.weight",
}
# DiffCLIP tensor -> the reference's: projections as (in, out) matrices applied as x @ P; embeddings with a leading
# singleton dimension.
TO_REFERENCE_LAYOUT = {
    "image_projection": torch.Tensor.t,
    "text_projection": torch.Tensor.t,
    "cls_token": lambda t: t.view(1, 1, -1),
    "pos_embed": lambda t: t.unsqueeze(0),
}


def reference_names(model: ReferenceDiffCLIP) -> dict[str, str]:
    """Parameter names of a `ReferenceDiffCLIP` -> those of a `DiffCLIPModel`."""
    names = {
        "patch_embed.weight": "vision_model.embeddings.patch_embedding.weight",
        "patch_embed.bias": "vision_model.embeddings.patch_embedding.bias",
        "cls_token": "vision_model.embeddings.class_embedding",
        "pos_embed": "vision_model.embeddings.position_embedding.weight",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "image_projection": "visual_projection.weight",
        "text_projection": "text_projection.weight",
        "logit_scale": "logit_scale",
    }
    modules = {
        "norm_pre": "vision_model.pre_layrnorm",
        "norm": "vision_model.post_layernorm",
        "ln_final": "text_model.final_layer_norm",
    }
    for blocks, tower in (("blocks", "vision_model"), ("resblocks", "text_model")):
        for i in range(len(getattr(model, blocks))):
            ours, theirs = f"{blocks}.{i}", f"{tower}.encoder.layers.{i}"
            modules.update(
                {
                    f"{ours}.norm1": f"{theirs}.layer_norm1",
                    f"{ours}.norm2": f"{theirs}.layer_norm2",
                    f"{ours}.fc1": f"{theirs}.mlp.fc1",
                    f"{ours}.fc2": f"{theirs}.mlp.fc2",
                }
            )
            names.update({f"{ours}.attn.{a}": f"{theirs}.self_attn.{b}" for a, b in ATTENTION_NAMES.items()})
    for ours, theirs in modules.items():
        names.update({f"{ours}.{kind}": f"{theirs}.{kind}" for kind in ("weight", "bias")})
    own = dict(model.named_parameters())
    return {name: hf for name, hf in names.items() if name in own}


def load_diffclip_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """
    Copy the state dict of a `DiffCLIPModel` into a `ReferenceDiffCLIP`, or that of a `DiffCLIPAttention` into a
    `ReferenceDiffAttention`; every parameter of `model` must be found, with its shape.
    """
    own = dict(model.named_parameters())
    names = ATTENTION_NAMES if isinstance(model, ReferenceDiffAttention) else reference_names(model)
    missing = sorted(set(own) - set(names)) + sorted(hf for hf in names.values() if hf not in state_dict)
    if missing:
        raise KeyError(f"No DiffCLIP tensor for: {', '.join(missing)}")
    tensors = {name: TO_REFERENCE_LAYOUT.get(name, lambda t: t)(state_dict[hf]) for name, hf in names.items()}
    mismatched = [
        f"{name} {tuple(t.shape)} != {tuple(own[name].shape)}"
        for name, t in tensors.items()
        if t.shape != own[name].shape
    ]
    if mismatched:
        raise ValueError(f"DiffCLIP tensors of the wrong shape: {', '.join(mismatched)}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor)
    return model


def reference_from(diffclip_module: nn.Module) -> nn.Module:
    """
    The reference counterpart of a `DiffCLIPModel` (a `ReferenceDiffCLIP`) or of a `DiffCLIPAttention` (a
    `ReferenceDiffAttention`), with its dimensions, weights, dtype and device.
    """
    if hasattr(diffclip_module, "lambda_full"):
        reference = ReferenceDiffAttention(
            diffclip_module.embed_dim, diffclip_module.num_heads, diffclip_module.lambda_init
        )
    else:
        reference = ReferenceDiffCLIP(diffclip_module.config)
    parameter = next(diffclip_module.parameters())
    reference = reference.to(device=parameter.device, dtype=parameter.dtype)
    return load_diffclip_state_dict(reference, diffclip_module.state_dict())


def causal_mask(tokens: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Additive (tokens, tokens) mask: 0 on and below the diagonal, −inf above."""
    return torch.full((tokens, tokens), -math.inf, device=device, dtype=dtype).triu(1)
