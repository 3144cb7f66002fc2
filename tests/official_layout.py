"""Random checkpoints in the released (SLIP-style) layout, written by hand from the official code's module names.

Differential towers name their attention `q_proj/k_proj/v_proj/out_proj` plus `lambda_*` and `diff_norm`; plain
towers use the layouts of SLIP's CLIP baseline: timm's fused `qkv`/`proj` (vision) and `nn.MultiheadAttention`'s
`in_proj_weight`/`in_proj_bias`/`out_proj` (text).
"""

import argparse

import torch


def random_official_state_dict(
    vision_width=48,
    vision_layers=3,
    vision_heads=6,
    vision_differential=True,
    patch_size=8,
    image_size=24,
    text_width=32,
    text_layers=2,
    text_heads=4,
    text_differential=True,
    context_length=20,
    embed_dim=24,
    vocab_size=49408,
    seed=0,
) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, std=0.2):
        return torch.randn(*shape, generator=generator) * std

    sd = {
        "visual.cls_token": rand(1, 1, vision_width),
        "visual.pos_embed": rand(1, (image_size // patch_size) ** 2 + 1, vision_width),
        "visual.patch_embed.proj.weight": rand(vision_width, 3, patch_size, patch_size, std=0.05),
        "visual.patch_embed.proj.bias": rand(vision_width),
        "visual.norm.weight": 1 + rand(vision_width),
        "visual.norm.bias": rand(vision_width),
        "token_embedding.weight": rand(vocab_size, text_width),
        "positional_embedding": rand(context_length, text_width),
        "ln_final.weight": 1 + rand(text_width),
        "ln_final.bias": rand(text_width),
        "image_projection": rand(vision_width, embed_dim),
        "text_projection": rand(text_width, embed_dim),
        "logit_scale": torch.tensor(2.9957),
    }

    def attention(prefix, width, heads, differential, fused_vision):
        if differential:
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                sd[f"{prefix}.{proj}.weight"], sd[f"{prefix}.{proj}.bias"] = rand(width, width), rand(width)
            for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
                sd[f"{prefix}.{name}"] = rand(width // heads, std=0.3)
            sd[f"{prefix}.diff_norm.weight"] = 1 + rand(2 * width // heads)
        elif fused_vision:
            sd[f"{prefix}.qkv.weight"], sd[f"{prefix}.qkv.bias"] = rand(3 * width, width), rand(3 * width)
            sd[f"{prefix}.proj.weight"], sd[f"{prefix}.proj.bias"] = rand(width, width), rand(width)
        else:
            sd[f"{prefix}.in_proj_weight"], sd[f"{prefix}.in_proj_bias"] = rand(3 * width, width), rand(3 * width)
            sd[f"{prefix}.out_proj.weight"], sd[f"{prefix}.out_proj.bias"] = rand(width, width), rand(width)

    def block(prefix, width, heads, differential, fused_vision, names):
        norm1, norm2, fc1, fc2 = names
        for norm in (norm1, norm2):
            sd[f"{prefix}.{norm}.weight"], sd[f"{prefix}.{norm}.bias"] = 1 + rand(width), rand(width)
        sd[f"{prefix}.{fc1}.weight"], sd[f"{prefix}.{fc1}.bias"] = rand(4 * width, width), rand(4 * width)
        sd[f"{prefix}.{fc2}.weight"], sd[f"{prefix}.{fc2}.bias"] = rand(width, 4 * width), rand(width)
        attention(f"{prefix}.attn", width, heads, differential, fused_vision)

    for layer in range(vision_layers):
        block(
            f"visual.blocks.{layer}",
            vision_width,
            vision_heads,
            vision_differential,
            True,
            ("norm1", "norm2", "mlp.fc1", "mlp.fc2"),
        )
    for layer in range(text_layers):
        block(
            f"transformer.resblocks.{layer}",
            text_width,
            text_heads,
            text_differential,
            False,
            ("ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj"),
        )
    return sd


def save_official_checkpoint(state_dict: dict, path) -> None:
    """As the released files: DataParallel's `module.` prefix, and the run's `args` as an argparse.Namespace."""
    torch.save(
        {
            "epoch": 40,
            "state_dict": {f"module.{key}": value for key, value in state_dict.items()},
            "best_acc1": 0.0,
            "args": argparse.Namespace(model="DiffCLIP_VITB16", epochs=40),
        },
        path,
    )
