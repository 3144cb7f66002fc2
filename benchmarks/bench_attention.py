# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Time one attention layer: DiffCLIP's (each backend), Transformers' CLIPAttention of the same width and heads, and
the reference implementation (materialised maps), in inference (forward) and training (forward + backward).

    python benchmarks/bench_attention.py                                 # CPU, float32, every shape
    python benchmarks/bench_attention.py --formulations --shapes vit-b-16 vit-b-16-384
    python benchmarks/bench_attention.py --device cuda --output attention.json   # bfloat16, flex_attention too

`--formulations` adds the exact formulations of the differential attention core that were compared to choose
DiffCLIPAttention's (see docs/performance.md), timed on the attention core alone (after the projections).
Prints Markdown tables; `--output` writes them as JSON (keys documented in docs/performance.md).
"""

import torch
import torch.nn.functional as F
from transformers import CLIPTextConfig
from transformers.masking_utils import create_causal_mask
from transformers.models.clip.modeling_clip import CLIPAttention

from diffclip_lab.benchmarking.harness import new_payload, parse_args, run_shape, trainable
from diffclip_lab.conversion.official import causal_mask, reference_from
from diffclip_lab.core.cli import run_main
from diffclip_lab.core.files import write_json
from modeling_diffclip import DiffCLIPAttention, DiffCLIPTextConfig
from modeling_diffclip.modeling_diffclip import DifferentialNorm


# width, heads, tokens, causal (text) or not (vision), default batch per device. With 16-pixel patches, 224, 336
# and 384 px give 197, 442 and 577 tokens (577 is also 336 px with 14-pixel patches, as in ViT-L/14@336).
SHAPES = {
    "tiny-vision": dict(width=64, heads=4, tokens=17, causal=False, batch={"cpu": 64, "cuda": 1024}),
    "tiny-text": dict(width=64, heads=4, tokens=16, causal=True, batch={"cpu": 64, "cuda": 1024}),
    "vit-b-16": dict(width=768, heads=12, tokens=197, causal=False, batch={"cpu": 8, "cuda": 256}),
    "vit-b-16-336": dict(width=768, heads=12, tokens=442, causal=False, batch={"cpu": 4, "cuda": 256}),
    "vit-b-16-384": dict(width=768, heads=12, tokens=577, causal=False, batch={"cpu": 2, "cuda": 256}),
    "text-77": dict(width=512, heads=8, tokens=77, causal=True, batch={"cpu": 32, "cuda": 1024}),
}
RATIOS = [
    ("diffclip-sdpa", "clip-sdpa"),
    ("diffclip-sdpa", "reference"),
    ("diffclip-eager", "reference"),
    ("diffclip-flex", "clip-sdpa"),
    ("diffclip-sdpa", "diffclip-sdpa-compiled"),
]


def attention_modules(shape: dict, args) -> dict:
    """name -> (module, attention mask, extra forward kwargs) of each candidate; DiffCLIP's share their weights."""
    implementations = ["eager", "sdpa"] + (["flex_attention"] if args.flex or args.device == "cuda" else [])
    x = torch.empty(1, shape["tokens"], shape["width"], device=args.device, dtype=args.dtype)
    kwargs = {"is_causal": True} if shape["causal"] else {}
    torch.manual_seed(0)
    modules, weights = {}, None
    for implementation in implementations:
        config = DiffCLIPTextConfig(hidden_size=shape["width"], num_attention_heads=shape["heads"])
        config._attn_implementation = implementation
        module = DiffCLIPAttention(config, layer_idx=0)
        if weights is None:
            with torch.no_grad():  # λ and the norm weight away from their initial values, so every term counts
                for name, parameter in module.named_parameters():
                    if name.startswith("diff_lambda.") or name == "diff_norm.weight":
                        parameter.normal_(1.0 if name == "diff_norm.weight" else 0.0, 0.3)
            weights = module.state_dict()
        module.load_state_dict(weights)
        module = module.to(device=args.device, dtype=args.dtype)
        name = "diffclip-" + implementation.removesuffix("_attention")
        modules[name] = (module, _causal_mask(config, x) if shape["causal"] else None, kwargs)
    if args.compile:
        module, mask, _ = modules["diffclip-sdpa"]
        modules["diffclip-sdpa-compiled"] = (torch.compile(module), mask, kwargs)
    config = CLIPTextConfig(hidden_size=shape["width"], num_attention_heads=shape["heads"])
    config._attn_implementation = "sdpa"
    modules["clip-sdpa"] = (
        CLIPAttention(config).to(device=args.device, dtype=args.dtype),
        _causal_mask(config, x) if shape["causal"] else None,
        kwargs,
    )
    reference_mask = causal_mask(shape["tokens"], args.device, args.dtype) if shape["causal"] else None
    modules["reference"] = (reference_from(modules["diffclip-eager"][0]), reference_mask, {})
    return modules


def _causal_mask(config, x):
    """The causal mask the text model builds for the config's backend (None for sdpa, which gets is_causal)."""
    return create_causal_mask(config=config, inputs_embeds=x, attention_mask=None, cache=None)


def module_steps(shape: dict, batch_size: int, args) -> tuple[dict, dict]:
    """Forward and train steps of every attention module, and the largest output difference to DiffCLIP eager."""
    modules = attention_modules(shape, args)
    generator = torch.Generator(device=args.device).manual_seed(0)
    x = torch.randn(
        batch_size, shape["tokens"], shape["width"], device=args.device, dtype=args.dtype, generator=generator
    )
    probe = torch.randn(x.shape, device=args.device, dtype=args.dtype, generator=generator)
    leaf = x.clone().requires_grad_(True)

    def call(name, inputs):
        module, mask, kwargs = modules[name]
        out = module(inputs, mask, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def forward(name):
        def step():
            with torch.no_grad():
                call(name, x)

        return step

    def train(name):
        def step():
            leaf.grad = None
            call(name, leaf).backward(probe)
            for parameter in modules[name][0].parameters():
                parameter.grad = None

        return step

    with torch.no_grad():
        expected = call("diffclip-eager", x).float()
        errors = {
            name: (call(name, x).float() - expected).abs().max().item() for name in modules if name != "clip-sdpa"
        }
    return {
        "forward": {name: forward(name) for name in modules},
        "train": {name: train(name) for name in trainable(modules, args.device)},
    }, errors


# ---------------------------------------------------------------- formulations of the differential attention core
#
# Each takes queries and keys (batch, 2h, seq, d), values (batch, h, seq, 2d), λ, the norm weight and is_causal,
# and returns the normed differential output (batch, seq, h, 2d) before the output projection.


def _norm(outputs, lambda_full, weight):
    return DifferentialNorm.apply(lambda_full, weight, 0.2, 1e-5, *outputs)


def _sdpa(q, k, v, causal, scale=None):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale).transpose(1, 2)


def per_map_and_half(q, k, v, lambda_full, weight, causal):
    """DiffCLIPAttention's: 4 calls of h heads, one per map and value half; every argument a view."""
    maps = list(zip(q.unflatten(1, (-1, 2)).unbind(2), k.unflatten(1, (-1, 2)).unbind(2), strict=True))
    halves = v.unflatten(-1, (2, -1)).unbind(-2)
    return _norm([_sdpa(qm, km, half, causal) for half in halves for qm, km in maps], lambda_full, weight)


def per_map_and_half_autograd_norm(q, k, v, lambda_full, weight, causal):
    """The same calls, the difference and norm left to autograd (which keeps their intermediate tensors)."""
    maps = list(zip(q.unflatten(1, (-1, 2)).unbind(2), k.unflatten(1, (-1, 2)).unbind(2), strict=True))
    halves = [[_sdpa(qm, km, half, causal) for qm, km in maps] for half in v.unflatten(-1, (2, -1)).unbind(-2)]
    diff = torch.cat([first - lambda_full * second for first, second in halves], dim=-1)
    return F.rms_norm(diff.float(), diff.shape[-1:], eps=1e-5).to(diff.dtype) * weight * 0.2


def repeated_values(q, k, v, lambda_full, weight, causal):
    """1 call of 2h heads, each pair's value slice (width 2d) repeated for both of its heads."""
    out = _sdpa(q, k, v.repeat_interleave(2, dim=1), causal)
    return _norm([out[:, :, 0::2], out[:, :, 1::2]], lambda_full, weight)


def per_map(q, k, v, lambda_full, weight, causal):
    """2 calls of h heads, one per map, over the unrepeated values (width 2d)."""
    return _norm([_sdpa(q[:, i::2], k[:, i::2], v, causal) for i in (0, 1)], lambda_full, weight)


def value_halves(q, k, v, lambda_full, weight, causal):
    """2 calls of 2h heads, one per value half (width d) repeated for both heads of its pair."""
    outputs = []
    for half in v.chunk(2, dim=-1):
        out = _sdpa(q, k, half.repeat_interleave(2, dim=1), causal)
        outputs += [out[:, :, 0::2], out[:, :, 1::2]]
    return _norm(outputs, lambda_full, weight)


def padded_qk(q, k, v, lambda_full, weight, causal):
    """1 call of 2h heads with queries and keys zero-padded to width 2d (the scores are unchanged)."""
    pad = (0, q.shape[-1])
    out = _sdpa(F.pad(q, pad), F.pad(k, pad), v.repeat_interleave(2, dim=1), causal, scale=q.shape[-1] ** -0.5)
    return _norm([out[:, :, 0::2], out[:, :, 1::2]], lambda_full, weight)


def reference(q, k, v, lambda_full, weight, causal):
    """The paper's: both maps materialised, their difference multiplied with the values."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if causal:
        scores = scores + causal_mask(q.shape[2], q.device, q.dtype)
    maps = scores.softmax(-1).unflatten(1, (-1, 2))
    out = ((maps[:, :, 0] - lambda_full * maps[:, :, 1]) @ v).transpose(1, 2)
    return F.rms_norm(out.float(), out.shape[-1:], eps=1e-5).to(out.dtype) * weight * 0.2


def clip(q, k, v, lambda_full, weight, causal):
    """CLIP's core for scale: 1 call of 2h heads of width d (values reshaped to 2h heads), no difference."""
    return _sdpa(q, k, v.transpose(1, 2).reshape(*q.shape[:1], q.shape[2], q.shape[1], -1).transpose(1, 2), causal)


FORMULATIONS = [
    per_map_and_half,
    per_map_and_half_autograd_norm,
    repeated_values,
    per_map,
    value_halves,
    padded_qk,
    reference,
    clip,
]


def formulation_name(formulation) -> str:
    return formulation.__name__.replace("_", "-")


FORMULATION_RATIOS = [(formulation_name(f), "clip") for f in FORMULATIONS if f is not clip]


def formulation_steps(shape: dict, batch_size: int, args) -> tuple[dict, dict]:
    """Forward and train steps of every formulation on projection-like inputs, and their difference to the first."""
    heads, tokens, width = shape["heads"], shape["tokens"], shape["width"]
    head_dim = width // heads
    generator = torch.Generator(device=args.device).manual_seed(0)

    def projection():  # (batch, seq, width) as a projection writes it, viewed as (batch, heads, seq, head size)
        return torch.randn(batch_size, tokens, width, device=args.device, dtype=args.dtype, generator=generator)

    leaves = [projection().requires_grad_(True) for _ in range(3)]
    lambda_full = torch.tensor(0.4, device=args.device, requires_grad=True)
    weight = (1 + 0.3 * torch.randn(2 * head_dim, device=args.device, generator=generator)).to(args.dtype)
    weight.requires_grad_(True)

    def inputs():
        q, k, v = leaves
        return (
            q.view(batch_size, tokens, heads, head_dim).transpose(1, 2),
            k.view(batch_size, tokens, heads, head_dim).transpose(1, 2),
            v.view(batch_size, tokens, heads // 2, 2 * head_dim).transpose(1, 2),
        )

    probe = torch.randn(
        batch_size, tokens, heads // 2, 2 * head_dim, device=args.device, dtype=args.dtype, generator=generator
    )

    def forward(formulation):
        def step():
            with torch.no_grad():
                formulation(*inputs(), lambda_full, weight, shape["causal"])

        return step

    def train(formulation):
        def step():
            out = formulation(*inputs(), lambda_full, weight, shape["causal"])
            out.reshape(probe.shape).backward(probe)
            for tensor in (*leaves, lambda_full, weight):
                tensor.grad = None

        return step

    names = {formulation_name(formulation): formulation for formulation in FORMULATIONS}
    with torch.no_grad():
        expected = per_map_and_half(*inputs(), lambda_full, weight, shape["causal"]).float()
        errors = {
            name: (f(*inputs(), lambda_full, weight, shape["causal"]).float() - expected).abs().max().item()
            for name, f in names.items()
            if f is not clip
        }
    steps = {
        mode: {name: (forward if mode == "forward" else train)(f) for name, f in names.items()}
        for mode in ("forward", "train")
    }
    return steps, errors


def main(argv=None) -> int:
    args = parse_args(
        __doc__,
        SHAPES,
        argv,
        flex="also time flex_attention on CPU (compiles for minutes)",
        formulations="also compare the formulations of the differential core",
    )
    payload = new_payload("bench_attention", args)
    sections = [("attention layer", module_steps, RATIOS)]
    if args.formulations:
        sections.append(("differential core", formulation_steps, FORMULATION_RATIOS))
    for shape_name in args.shapes:
        shape = SHAPES[shape_name]
        batch_size = args.batch_size or shape["batch"][args.device]
        for section, build, ratio_pairs in sections:
            title = (
                f"{shape_name}, {section}: batch {batch_size} × {shape['tokens']} tokens, width {shape['width']}, "
                f"{shape['heads']} heads{', causal' if shape['causal'] else ''}, {args.dtype}"
            )
            run_shape(
                payload,
                title,
                shape_name,
                section,
                build(shape, batch_size, args),
                batch_size,
                shape["tokens"],
                ratio_pairs,
                args,
            )
    write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    run_main(main)
