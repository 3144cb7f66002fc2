# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The released DiffCLIP checkpoints: their tensor layout, and their forward pass written from the official code,
independently of `modeling_diffclip`. The converter checks its output against this forward pass run on the original
tensors; the benchmarks time it (its attention materialises both softmax maps, as the paper's code does); the tests
compare the model with it.

The architecture is SLIP's: a timm ViT (`visual.*`, GELU) and an OpenAI-CLIP text transformer (QuickGELU), LayerNorm
eps 1e-5; only the sizes and the λ_init schedule are read from the config. Differential towers name their
attention `q_proj/k_proj/v_proj/out_proj` plus `lambda_*` and `diff_norm`; plain towers use timm's fused `qkv`/`proj`
(vision) and `nn.MultiheadAttention`'s `in_proj_*`/`out_proj` (text).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modeling_diffclip import DiffCLIPConfig

from ..core.errors import UserError


# --------------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class TensorMapping:
    """How one official tensor becomes DiffCLIP tensors (`ours`), and back."""

    ours: tuple[str, ...]
    to_ours: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] = lambda t: (t,)
    to_official: Callable[..., torch.Tensor] = lambda t: t


def _transposed(name: str) -> TensorMapping:  # official (in, out) matrices applied as x @ P; ours nn.Linear weights
    return TensorMapping((name,), lambda t: (t.T.contiguous(),), lambda t: t.T.contiguous())


def _fused(prefix: str, param: str) -> TensorMapping:  # a (3·width, ...) query/key/value tensor: CLIP's three
    names = tuple(f"{prefix}.{proj}.{param}" for proj in ("q_proj", "k_proj", "v_proj"))
    return TensorMapping(names, lambda t: t.chunk(3), lambda *parts: torch.cat(parts))


def official_key_map(config: DiffCLIPConfig) -> dict[str, TensorMapping]:
    """For every tensor an official checkpoint of this architecture holds, the DiffCLIP tensors it becomes."""
    vision, text = config.vision_config, config.text_config
    mapping = {
        "logit_scale": TensorMapping(("logit_scale",)),
        "image_projection": _transposed("visual_projection.weight"),
        "text_projection": _transposed("text_projection.weight"),
        "visual.cls_token": TensorMapping(
            ("vision_model.embeddings.class_embedding",), lambda t: (t.reshape(-1),), lambda t: t.view(1, 1, -1)
        ),
        "visual.pos_embed": TensorMapping(
            ("vision_model.embeddings.position_embedding.weight",),
            lambda t: (t.reshape(t.shape[-2:]),),
            lambda t: t.unsqueeze(0),
        ),
    }
    renamed = {
        "visual.patch_embed.proj.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.norm.weight": "vision_model.post_layernorm.weight",
        "visual.norm.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
    }
    if vision.patch_embedding_bias:
        renamed["visual.patch_embed.proj.bias"] = "vision_model.embeddings.patch_embedding.bias"
    if vision.pre_layernorm:
        renamed["visual.norm_pre.weight"] = "vision_model.pre_layrnorm.weight"
        renamed["visual.norm_pre.bias"] = "vision_model.pre_layrnorm.bias"
    towers = (
        (vision, "visual.blocks", "vision_model", ("norm1", "norm2", "mlp.fc1", "mlp.fc2"), ("qkv.", "proj")),
        (
            text,
            "transformer.resblocks",
            "text_model",
            ("ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj"),
            ("in_proj_", "out_proj"),
        ),
    )
    for tower, source, target, (norm1, norm2, fc1, fc2), (fused_qkv, fused_out) in towers:
        for layer in range(tower.num_hidden_layers):
            src, dst = f"{source}.{layer}", f"{target}.encoder.layers.{layer}"
            pairs = [(norm1, "layer_norm1"), (norm2, "layer_norm2"), (fc1, "mlp.fc1"), (fc2, "mlp.fc2")]
            if tower.use_differential_attention:
                pairs += [(f"attn.{proj}", f"self_attn.{proj}") for proj in ("q_proj", "k_proj", "v_proj", "out_proj")]
                for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
                    renamed[f"{src}.attn.{name}"] = f"{dst}.self_attn.diff_lambda.{name}"
                renamed[f"{src}.attn.diff_norm.weight"] = f"{dst}.self_attn.diff_norm.weight"
            else:
                pairs.append((f"attn.{fused_out}", "self_attn.out_proj"))
                for param in ("weight", "bias"):
                    mapping[f"{src}.attn.{fused_qkv}{param}"] = _fused(f"{dst}.self_attn", param)
            for official, ours in pairs:
                for param in ("weight", "bias"):
                    renamed[f"{src}.{official}.{param}"] = f"{dst}.{ours}.{param}"
    return {**mapping, **{official: TensorMapping((ours,)) for official, ours in renamed.items()}}


def to_diffclip_state_dict(state_dict: dict, config: DiffCLIPConfig) -> dict[str, torch.Tensor]:
    """Rename (and reshape) every official tensor; a missing or unexpected tensor stops with a list of them."""
    mapping = official_key_map(config)
    missing, unexpected = sorted(mapping.keys() - state_dict.keys()), sorted(state_dict.keys() - mapping.keys())
    if missing or unexpected:
        raise UserError(
            "the checkpoint's tensors do not match the architecture read from it: "
            f"missing {_listing(missing)}; unexpected {_listing(unexpected)}. Nothing was written."
        )
    converted = {}
    for key, entry in mapping.items():
        converted.update(zip(entry.ours, entry.to_ours(state_dict[key]), strict=True))
    return converted


def to_official_state_dict(state_dict: dict, config: DiffCLIPConfig) -> dict[str, torch.Tensor]:
    """The official tensors of a `DiffCLIPModel` state dict (or of any dict of tensors in its layout, e.g. their
    gradients)."""
    return {
        key: entry.to_official(*(state_dict[name] for name in entry.ours))
        for key, entry in official_key_map(config).items()
    }


def _listing(keys: list[str], limit: int = 20) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


# ------------------------------------------------------------------------------------------- forward pass


def causal_mask(tokens: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Additive (tokens, tokens) mask: 0 on and below the diagonal, −inf above."""
    return torch.full((tokens, tokens), -math.inf, device=device, dtype=dtype).triu(1)


def _layer_norm(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps=1e-5)


def _linear(x, sd, prefix):
    return x @ sd[f"{prefix}.weight"].T + sd[f"{prefix}.bias"]


def attention(x, sd, num_heads, lambda_init, mask=None, prefix="", return_maps=False):
    """
    The official attention of the tensors `sd[prefix + ...]` on x (batch, tokens, width): differential (2h query/key
    heads of size d pairing into h heads, value slices of width 2d, both softmax maps materialised, as in the paper's
    code) or standard multi-head. `mask`: additive, broadcastable to (batch, heads, tokens, tokens). With
    `return_maps`, also the maps the output is made of: A1 − λ·A2 (batch, h, tokens, tokens), or the softmax maps.
    """
    batch, tokens, width = x.shape
    head_dim = width // num_heads
    prefix = f"{prefix}." if prefix else ""
    if f"{prefix}lambda_q1" in sd:
        q, k, v = (_linear(x, sd, f"{prefix}{name}") for name in ("q_proj", "k_proj", "v_proj"))
        q = q.view(batch, tokens, num_heads, head_dim).transpose(1, 2) * head_dim**-0.5
        k = k.view(batch, tokens, num_heads, head_dim).transpose(1, 2)
        v = v.view(batch, tokens, num_heads // 2, 2 * head_dim).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) + (0 if mask is None else mask)
        maps = F.softmax(scores, dim=-1, dtype=torch.float32).type_as(scores).unflatten(1, (num_heads // 2, 2))
        lam = [torch.exp(torch.sum(sd[f"{prefix}lambda_q{i}"] * sd[f"{prefix}lambda_k{i}"]).float()) for i in (1, 2)]
        maps = maps[:, :, 0] - (lam[0] - lam[1] + lambda_init).type_as(q) * maps[:, :, 1]
        out = maps @ v
        normed = out.float() * torch.rsqrt(out.float().pow(2).mean(-1, keepdim=True) + 1e-5)
        out = normed.type_as(out) * sd[f"{prefix}diff_norm.weight"] * (1 - lambda_init)
        out = _linear(out.transpose(1, 2).reshape(batch, tokens, width), sd, f"{prefix}out_proj")
    else:
        fused = f"{prefix}qkv" if f"{prefix}qkv.weight" in sd else None
        weight = sd[f"{fused}.weight"] if fused else sd[f"{prefix}in_proj_weight"]
        bias = sd[f"{fused}.bias"] if fused else sd[f"{prefix}in_proj_bias"]
        q, k, v = (x @ weight.T + bias).view(batch, tokens, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) * head_dim**-0.5 + (0 if mask is None else mask)
        maps = scores.softmax(-1)
        out = (maps @ v).transpose(1, 2).reshape(batch, tokens, width)
        out = _linear(out, sd, f"{prefix}proj" if fused else f"{prefix}out_proj")
    return (out, maps) if return_maps else out


def _quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def _block(x, sd, prefix, tower, layer, names, activation, mask=None):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + fc2(act(fc1(norm2(x))))."""
    norm1, norm2, fc1, fc2 = (f"{prefix}.{name}" for name in names)
    x = x + attention(
        _layer_norm(x, sd, norm1),
        sd,
        tower.num_attention_heads,
        tower.layer_lambda_init(layer),
        mask,
        f"{prefix}.attn",
    )
    return x + _linear(activation(_linear(_layer_norm(x, sd, norm2), sd, fc1)), sd, fc2)


def image_embeddings(sd: dict, config: DiffCLIPConfig, pixel_values: torch.Tensor) -> torch.Tensor:
    """(batch, projection_dim) unnormalised image embeddings of the official (timm ViT) vision tower."""
    vision = config.vision_config
    x = F.conv2d(
        pixel_values,
        sd["visual.patch_embed.proj.weight"],
        sd.get("visual.patch_embed.proj.bias"),
        stride=vision.patch_size,
    )
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["visual.pos_embed"]
    if "visual.norm_pre.weight" in sd:
        x = _layer_norm(x, sd, "visual.norm_pre")
    for layer in range(vision.num_hidden_layers):
        x = _block(x, sd, f"visual.blocks.{layer}", vision, layer, ("norm1", "norm2", "mlp.fc1", "mlp.fc2"), F.gelu)
    return _layer_norm(x, sd, "visual.norm")[:, 0] @ sd["image_projection"]


def text_embeddings(sd: dict, config: DiffCLIPConfig, input_ids: torch.Tensor) -> torch.Tensor:
    """(batch, projection_dim) unnormalised text embeddings of the official (OpenAI CLIP) text tower, pooled at the
    end-of-text token (the largest id)."""
    text = config.text_config
    tokens = input_ids.shape[1]
    x = sd["token_embedding.weight"][input_ids] + sd["positional_embedding"][:tokens]
    mask = causal_mask(tokens, device=x.device, dtype=x.dtype)
    for layer in range(text.num_hidden_layers):
        names = ("ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj")
        x = _block(x, sd, f"transformer.resblocks.{layer}", text, layer, names, _quick_gelu, mask)
    x = _layer_norm(x, sd, "ln_final")
    return x[torch.arange(x.shape[0], device=x.device), input_ids.argmax(dim=-1)] @ sd["text_projection"]


# --------------------------------------------------------------- as modules, for timing and gradients


class _OfficialTensors(nn.Module):
    """Official tensors as parameters (module names cannot hold dots: they are kept as '/')."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        super().__init__()
        self.tensors = nn.ParameterDict(
            {k.replace(".", "/"): nn.Parameter(v.detach().clone()) for k, v in state_dict.items()}
        )

    def official(self) -> dict[str, torch.Tensor]:
        return {key.replace("/", "."): value for key, value in self.tensors.items()}


def official_attention_tensors(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `DiffCLIPAttention`'s tensors under the official attention's names: its λ vectors outside `diff_lambda`."""
    return {key.removeprefix("diff_lambda."): value for key, value in state_dict.items()}


class ReferenceAttention(_OfficialTensors):
    """The official attention over the tensors of a `DiffCLIPAttention` (kept under their names in the module)."""

    def __init__(self, module):
        super().__init__(module.state_dict())
        self.num_heads, self.lambda_init = module.num_heads, module.lambda_init

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return attention(x, official_attention_tensors(self.official()), self.num_heads, self.lambda_init, mask)


class ReferenceDiffCLIP(_OfficialTensors):
    """The official dual encoder over a `DiffCLIPModel`'s weights, in the official layout."""

    def __init__(self, model):
        super().__init__(to_official_state_dict(model.state_dict(), model.config))
        self.config = model.config

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return image_embeddings(self.official(), self.config, pixel_values)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        return text_embeddings(self.official(), self.config, input_ids)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits_per_image (images, texts) and the symmetric contrastive loss (image i matches text i)."""
        image = F.normalize(self.encode_image(pixel_values), dim=-1)
        text = F.normalize(self.encode_text(input_ids), dim=-1)
        logits_per_image = self.tensors["logit_scale"].exp() * image @ text.t()
        labels = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
        loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_image.t(), labels)) / 2
        return logits_per_image, loss

    def diffclip_grads(self) -> dict[str, torch.Tensor]:
        """The gradients of the official tensors, in the `DiffCLIPModel` layout."""
        grads = {key: value.grad for key, value in self.official().items()}
        return to_diffclip_state_dict(grads, self.config)


def reference_from(module: nn.Module) -> ReferenceAttention | ReferenceDiffCLIP:
    """The reference counterpart of a `DiffCLIPAttention` or a `DiffCLIPModel`, with its weights, dtype and device."""
    return ReferenceAttention(module) if hasattr(module, "lambda_full") else ReferenceDiffCLIP(module)
