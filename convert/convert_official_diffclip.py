"""Convert a released DiffCLIP checkpoint into a Transformers folder, exactly.

    python convert/convert_official_diffclip.py --checkpoint PATH_OR_REPO_ID --output_dir DIR \
        [--push_to_hub REPO_ID] [--private] [--overwrite]

The released checkpoints (`hammh0a/DiffCLIP_ViTB16_CC3M`, `hammh0a/DiffCLIP_ViTB16_CC12M`) are `checkpoint_best.pt`
files from a SLIP-style code base: a dict with `state_dict` (keys possibly prefixed `module.`), `epoch`, `args`, ...
The architecture is read from the tensors (widths, depths, patch and image size, context length, vocabulary, heads
from the λ vectors, which tower is differential), so checkpoints of any size convert. Before anything is written
the converted model is checked against an independent, straightforward implementation of the official forward pass
run on the original tensors; a difference above 1e-4 stops the conversion.
"""

import argparse
import math
import pickle
import re
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from conversion import ConversionError, add_output_arguments, convert_and_publish
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel, DiffCLIPProcessor
from modeling_diffclip.publishing import atomic_directory, check_output_directory, model_card


VERIFY_TOLERANCE = 1e-4
CLIP_VOCAB_SIZE = 49408


# --------------------------------------------------------------------------------------------- loading


def load_official_checkpoint(path: str | Path, trust_checkpoint: bool = False) -> tuple[dict, dict]:
    """
    Read a released checkpoint file: its state dict (without `module.` prefixes) and its other entries.

    Only tensors, containers and `argparse.Namespace` (the checkpoints' `args`) are unpickled unless
    `trust_checkpoint=True`, which unpickles everything and so must only be used on files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such checkpoint file.")
    try:
        if trust_checkpoint:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if blocked is None:
            raise ConversionError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?).") from None
        raise ConversionError(
            f"{path} holds a pickled {blocked.group(1)} besides tensors, which is not loaded by default because "
            "unpickling can run arbitrary code. If you trust this file, pass --trust_checkpoint."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise ConversionError(
            f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {error}"
        ) from None

    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        state_dict, extras = checkpoint["state_dict"], {k: v for k, v in checkpoint.items() if k != "state_dict"}
    elif isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state_dict, extras = checkpoint, {}
    else:
        raise ConversionError(f"{path} holds no state dict (expected a dict with a 'state_dict' entry of tensors).")
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    if not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise ConversionError(f"{path}: the state dict holds entries that are not tensors.")
    return state_dict, extras


def resolve_checkpoint(checkpoint: str, filename: str = "checkpoint_best.pt") -> Path:
    """A local file as is; anything else is taken as a Hub repo id and its `filename` downloaded."""
    if Path(checkpoint).exists() or checkpoint.count("/") != 1:
        return Path(checkpoint)
    try:
        return Path(hf_hub_download(checkpoint, filename))
    except (RepositoryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError) as error:
        raise ConversionError(f"could not download {filename} from the Hub repo {checkpoint}: {error}") from None


# ---------------------------------------------------------------------------------- architecture


def _count_blocks(state_dict: dict, prefix: str) -> int:
    indices = {int(m.group(1)) for key in state_dict if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))}
    if not indices or indices != set(range(max(indices) + 1)):
        raise ConversionError(f"the checkpoint's {prefix}N blocks are missing or not numbered 0..N-1.")
    return len(indices)


def _heads(state_dict: dict, attn_prefix: str, width: int, heads_given: int | None, tower: str) -> tuple[bool, int]:
    """Whether a tower is differential, and its head count: read from the λ vectors' size, else given."""
    lambda_q1 = state_dict.get(f"{attn_prefix}.lambda_q1")
    if lambda_q1 is not None:
        heads = width // lambda_q1.shape[0]
        if heads_given is not None and heads_given != heads:
            raise ConversionError(f"--{tower}_heads {heads_given} contradicts the λ vectors ({heads} heads).")
        return True, heads
    if heads_given is None or width % heads_given:
        raise ConversionError(
            f"the {tower} tower has no differential attention, so its head count is not stored in its tensors: pass "
            f"--{tower}_heads, a divisor of its width {width} (CLIP and ViT use {width // 64 or 1} heads of 64 "
            "dimensions)."
        )
    return False, heads_given


def infer_config(
    state_dict: dict,
    lambda_init: float = 0.8,
    lambda_schedule: str = "constant",
    vision_heads: int | None = None,
    text_heads: int | None = None,
) -> DiffCLIPConfig:
    """The `DiffCLIPConfig` of an official state dict, read from its tensors' names and shapes."""
    required = [
        "visual.cls_token",
        "visual.pos_embed",
        "visual.patch_embed.proj.weight",
        "token_embedding.weight",
        "positional_embedding",
        "image_projection",
        "text_projection",
        "logit_scale",
    ]
    absent = [key for key in required if key not in state_dict]
    if absent:
        raise ConversionError(
            f"this is not a DiffCLIP checkpoint in the released (SLIP-style) layout: it lacks {', '.join(absent)}."
        )
    vision_width = state_dict["visual.cls_token"].shape[-1]
    num_channels, patch_size = state_dict["visual.patch_embed.proj.weight"].shape[1:3]
    grid = math.isqrt(state_dict["visual.pos_embed"].shape[1] - 1)
    if grid * grid != state_dict["visual.pos_embed"].shape[1] - 1:
        raise ConversionError("visual.pos_embed does not hold a class token plus a square grid of patches.")
    vision_diff, vision_heads = _heads(state_dict, "visual.blocks.0.attn", vision_width, vision_heads, "vision")
    vocab_size, text_width = state_dict["token_embedding.weight"].shape
    if vocab_size != CLIP_VOCAB_SIZE:
        raise ConversionError(
            f"the text tower has a vocabulary of {vocab_size} tokens, not CLIP's {CLIP_VOCAB_SIZE}: its tokenizer is "
            "unknown, and this converter ships only the CLIP tokenizer."
        )
    text_diff, text_heads = _heads(state_dict, "transformer.resblocks.0.attn", text_width, text_heads, "text")
    schedule = dict(lambda_init=lambda_init, lambda_schedule=lambda_schedule)
    try:
        return DiffCLIPConfig(
            vision_config=dict(
                hidden_size=vision_width,
                intermediate_size=state_dict["visual.blocks.0.mlp.fc1.weight"].shape[0],
                num_hidden_layers=_count_blocks(state_dict, "visual.blocks."),
                num_attention_heads=vision_heads,
                num_channels=num_channels,
                image_size=grid * patch_size,
                patch_size=patch_size,
                hidden_act="gelu",
                layer_norm_eps=1e-5,
                pre_layernorm="visual.norm_pre.weight" in state_dict,
                patch_embedding_bias="visual.patch_embed.proj.bias" in state_dict,
                use_differential_attention=vision_diff,
                **schedule,
            ),
            text_config=dict(
                vocab_size=vocab_size,
                hidden_size=text_width,
                intermediate_size=state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                num_hidden_layers=_count_blocks(state_dict, "transformer.resblocks."),
                num_attention_heads=text_heads,
                max_position_embeddings=state_dict["positional_embedding"].shape[0],
                hidden_act="quick_gelu",
                layer_norm_eps=1e-5,
                use_differential_attention=text_diff,
                **schedule,
            ),
            projection_dim=state_dict["image_projection"].shape[1],
        )
    except KeyError as error:
        raise ConversionError(f"the checkpoint lacks {error.args[0]}, which every block of this layout has.") from None


# -------------------------------------------------------------------------------------- key mapping

Transform = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def _rename(name: str) -> Transform:
    return lambda tensor: {name: tensor}


def official_key_map(config: DiffCLIPConfig) -> dict[str, Transform]:
    """
    For every tensor an official checkpoint of this architecture holds, the Transformers tensors it becomes.
    Non-differential towers use the SLIP layouts: timm's fused `qkv`/`proj` (vision) and `nn.MultiheadAttention`'s
    `in_proj_*`/`out_proj` (text).
    """
    vision, text = config.vision_config, config.text_config
    mapping: dict[str, Transform] = {
        "logit_scale": _rename("logit_scale"),
        "image_projection": lambda t: {"visual_projection.weight": t.T.contiguous()},
        "text_projection": lambda t: {"text_projection.weight": t.T.contiguous()},
        "visual.cls_token": lambda t: {"vision_model.embeddings.class_embedding": t.reshape(-1)},
        "visual.pos_embed": lambda t: {"vision_model.embeddings.position_embedding.weight": t.reshape(t.shape[-2:])},
        "visual.patch_embed.proj.weight": _rename("vision_model.embeddings.patch_embedding.weight"),
        "visual.norm.weight": _rename("vision_model.post_layernorm.weight"),
        "visual.norm.bias": _rename("vision_model.post_layernorm.bias"),
        "token_embedding.weight": _rename("text_model.embeddings.token_embedding.weight"),
        "positional_embedding": _rename("text_model.embeddings.position_embedding.weight"),
        "ln_final.weight": _rename("text_model.final_layer_norm.weight"),
        "ln_final.bias": _rename("text_model.final_layer_norm.bias"),
    }
    if vision.patch_embedding_bias:
        mapping["visual.patch_embed.proj.bias"] = _rename("vision_model.embeddings.patch_embedding.bias")
    if vision.pre_layernorm:
        mapping["visual.norm_pre.weight"] = _rename("vision_model.pre_layrnorm.weight")
        mapping["visual.norm_pre.bias"] = _rename("vision_model.pre_layrnorm.bias")

    towers = (
        (vision, "visual.blocks", "vision_model", ("norm1", "norm2", "mlp.fc1", "mlp.fc2"), ("qkv", "proj")),
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
                for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2", "diff_norm.weight"):
                    mapping[f"{src}.attn.{name}"] = _rename(f"{dst}.self_attn.{name}")
            else:
                pairs.append((f"attn.{fused_out}", "self_attn.out_proj"))
                separator = "" if fused_qkv.endswith("_") else "."
                for param in ("weight", "bias"):
                    mapping[f"{src}.attn.{fused_qkv}{separator}{param}"] = _split_fused(f"{dst}.self_attn", param)
            for official, ours in pairs:
                for param in ("weight", "bias"):
                    mapping[f"{src}.{official}.{param}"] = _rename(f"{dst}.{ours}.{param}")
    return mapping


def _split_fused(prefix: str, param: str) -> Transform:
    """A fused (3·width, ...) query/key/value tensor, split into CLIP's three projections."""
    return lambda tensor: {
        f"{prefix}.{proj}.{param}": part for proj, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3))
    }


def convert_state_dict(state_dict: dict, config: DiffCLIPConfig) -> dict[str, torch.Tensor]:
    """Rename (and reshape) every official tensor; a missing or unexpected tensor stops with a list of them."""
    mapping = official_key_map(config)
    missing, unexpected = sorted(mapping.keys() - state_dict.keys()), sorted(state_dict.keys() - mapping.keys())
    if missing or unexpected:
        raise ConversionError(
            "the checkpoint's tensors do not match the architecture read from it: "
            f"missing {_listing(missing)}; unexpected {_listing(unexpected)}. Nothing was written."
        )
    converted = {}
    for key, transform in mapping.items():
        converted.update(transform(state_dict[key]))
    return converted


def _listing(keys: list[str], limit: int = 20) -> str:
    if not keys:
        return "none"
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} ({shown}{', ...' if len(keys) > limit else ''})"


# ------------------------------------------------------------------ independent reference forward pass


def _layer_norm(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps=1e-5)


def _linear(x, sd, prefix):
    return x @ sd[f"{prefix}.weight"].T + sd[f"{prefix}.bias"]


def _reference_attention(x, sd, prefix, num_heads, lambda_init, mask=None):
    """The official attention: differential (materialised maps, as in the paper's code) or standard multi-head."""
    batch, tokens, width = x.shape
    head_dim = width // num_heads
    if f"{prefix}.lambda_q1" in sd:
        q, k, v = (_linear(x, sd, f"{prefix}.{name}") for name in ("q_proj", "k_proj", "v_proj"))
        q = q.view(batch, tokens, num_heads, head_dim).transpose(1, 2) * head_dim**-0.5
        k = k.view(batch, tokens, num_heads, head_dim).transpose(1, 2)
        v = v.view(batch, tokens, num_heads // 2, 2 * head_dim).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) + (0 if mask is None else mask)
        maps = scores.softmax(-1).view(batch, num_heads // 2, 2, tokens, tokens)
        lam = (
            torch.exp((sd[f"{prefix}.lambda_q1"] * sd[f"{prefix}.lambda_k1"]).sum())
            - torch.exp((sd[f"{prefix}.lambda_q2"] * sd[f"{prefix}.lambda_k2"]).sum())
            + lambda_init
        )
        out = (maps[:, :, 0] - lam * maps[:, :, 1]) @ v
        out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + 1e-5) * sd[f"{prefix}.diff_norm.weight"]
        out = (out * (1 - lambda_init)).transpose(1, 2).reshape(batch, tokens, width)
        return _linear(out, sd, f"{prefix}.out_proj")
    fused = f"{prefix}.qkv" if f"{prefix}.qkv.weight" in sd else None
    weight = sd[f"{fused}.weight"] if fused else sd[f"{prefix}.in_proj_weight"]
    bias = sd[f"{fused}.bias"] if fused else sd[f"{prefix}.in_proj_bias"]
    q, k, v = (x @ weight.T + bias).view(batch, tokens, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) * head_dim**-0.5 + (0 if mask is None else mask)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, tokens, width)
    return _linear(out, sd, f"{prefix}.proj" if fused else f"{prefix}.out_proj")


def reference_image_embeddings(sd: dict, config: DiffCLIPConfig, pixel_values: torch.Tensor) -> torch.Tensor:
    """Image embeddings of the official (timm ViT) vision tower, from the original tensors."""
    vision = config.vision_config
    patch = vision.patch_size
    x = F.conv2d(
        pixel_values, sd["visual.patch_embed.proj.weight"], sd.get("visual.patch_embed.proj.bias"), stride=patch
    )
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["visual.pos_embed"]
    if "visual.norm_pre.weight" in sd:
        x = _layer_norm(x, sd, "visual.norm_pre")
    for layer in range(vision.num_hidden_layers):
        p = f"visual.blocks.{layer}"
        x = x + _reference_attention(
            _layer_norm(x, sd, f"{p}.norm1"),
            sd,
            f"{p}.attn",
            vision.num_attention_heads,
            vision.layer_lambda_init(layer),
        )
        x = x + _linear(F.gelu(_linear(_layer_norm(x, sd, f"{p}.norm2"), sd, f"{p}.mlp.fc1")), sd, f"{p}.mlp.fc2")
    return _layer_norm(x, sd, "visual.norm")[:, 0] @ sd["image_projection"]


def reference_text_embeddings(sd: dict, config: DiffCLIPConfig, input_ids: torch.Tensor) -> torch.Tensor:
    """Text embeddings of the official (OpenAI CLIP) text tower, from the original tensors."""
    text = config.text_config
    tokens = input_ids.shape[1]
    x = sd["token_embedding.weight"][input_ids] + sd["positional_embedding"][:tokens]
    mask = torch.full((tokens, tokens), float("-inf")).triu(1)
    for layer in range(text.num_hidden_layers):
        p = f"transformer.resblocks.{layer}"
        x = x + _reference_attention(
            _layer_norm(x, sd, f"{p}.ln_1"),
            sd,
            f"{p}.attn",
            text.num_attention_heads,
            text.layer_lambda_init(layer),
            mask,
        )
        hidden = _linear(_layer_norm(x, sd, f"{p}.ln_2"), sd, f"{p}.mlp.c_fc")
        x = x + _linear(hidden * torch.sigmoid(1.702 * hidden), sd, f"{p}.mlp.c_proj")
    x = _layer_norm(x, sd, "ln_final")
    return x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1)] @ sd["text_projection"]


def verification_inputs(config: DiffCLIPConfig, batch_size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Fixed random images and captions: start token, random words, end token (the largest id, where the official
    model pools), zero padding.
    """
    generator = torch.Generator().manual_seed(0)
    vision, text = config.vision_config, config.text_config
    pixel_values = torch.randn(
        batch_size, vision.num_channels, vision.image_size, vision.image_size, generator=generator
    )
    start, end, context = text.bos_token_id, text.eos_token_id, text.max_position_embeddings
    input_ids = torch.zeros(batch_size, context, dtype=torch.long)
    for row in range(batch_size):
        length = int(torch.randint(0, context - 1, (1,), generator=generator))
        words = torch.randint(1, start, (length,), generator=generator)
        input_ids[row, : length + 2] = torch.cat([torch.tensor([start]), words, torch.tensor([end])])
    return pixel_values, input_ids


@torch.no_grad()
def verify_conversion(model: DiffCLIPModel, state_dict: dict, tolerance: float = VERIFY_TOLERANCE) -> float:
    """Largest difference between the converted model's embeddings and the reference's; above `tolerance` it raises."""
    config = model.config
    pixel_values, input_ids = verification_inputs(config)
    sd = {key: value.float() for key, value in state_dict.items()}
    expected_image = reference_image_embeddings(sd, config, pixel_values)
    expected_text = reference_text_embeddings(sd, config, input_ids)
    model.eval()
    image = model.get_image_features(pixel_values=pixel_values).pooler_output
    text = model.get_text_features(input_ids=input_ids).pooler_output
    difference = max((image - expected_image).abs().max().item(), (text - expected_text).abs().max().item())
    if not difference <= tolerance or model.logit_scale.item() != sd["logit_scale"].item():
        raise ConversionError(
            f"the converted model differs from the reference forward pass by {difference:.3g} (tolerance "
            f"{tolerance:g}); refusing to write it."
        )
    return difference


# ---------------------------------------------------------------------------------------------- main


def convert_official_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    overwrite: bool = False,
    trust_checkpoint: bool = False,
    lambda_init: float = 0.8,
    lambda_schedule: str = "constant",
    vision_heads: int | None = None,
    text_heads: int | None = None,
    license: str = "other",
    source_name: str | None = None,
) -> tuple[DiffCLIPModel, float]:
    """
    Convert, verify, and write `output_dir` (model, config, processor, code, model card) in one rename. The model
    card names the model `source_name`, by default the name of the folder holding the checkpoint.
    """
    check_output_directory(output_dir, overwrite)  # before the slow work
    state_dict, extras = load_official_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
    config = infer_config(state_dict, lambda_init, lambda_schedule, vision_heads, text_heads)
    converted = convert_state_dict(state_dict, config)
    model = DiffCLIPModel(config)
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as error:
        raise ConversionError(f"the checkpoint's tensor shapes are inconsistent with each other: {error}") from None
    difference = verify_conversion(model, state_dict)

    processor = DiffCLIPProcessor.from_defaults(
        image_size=config.vision_config.image_size, context_length=config.text_config.max_position_embeddings
    )
    epoch = extras.get("epoch")
    source_name = source_name or Path(checkpoint).resolve().parent.name
    provenance = (
        f"Converted from the official checkpoint `{source_name}`"
        + (f" (epoch {epoch})" if epoch is not None else "")
        + " with `convert/convert_official_diffclip.py` of [DiffCLIP for Transformers]. Before writing, the "
        "converter recomputed the image and text embeddings with an independent implementation of the official "
        f"forward pass on the original tensors: largest difference {difference:.2e} (fp32). Preprocessing as "
        "released: resize to "
        f"{config.vision_config.image_size} px (bilinear, short side), centre crop, ImageNet mean/std; CLIP tokenizer."
    )
    card = model_card(config, f"{source_name} for Transformers", provenance, license=license)
    with atomic_directory(output_dir, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "README.md").write_text(card, encoding="utf-8")
    return model, difference


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint_best.pt, or a Hub repo id holding it")
    parser.add_argument("--filename", default="checkpoint_best.pt", help="file to download from a Hub repo")
    add_output_arguments(parser)
    parser.add_argument(
        "--trust_checkpoint",
        action="store_true",
        help="unpickle arbitrary objects in the checkpoint (only for files you trust)",
    )
    parser.add_argument("--lambda_init", type=float, default=0.8, help="λ_init the checkpoint was trained with")
    parser.add_argument(
        "--lambda_schedule",
        choices=["constant", "dynamic"],
        default="constant",
        help="'dynamic' for DiffCLIP* checkpoints (λ_init is not stored in the tensors)",
    )
    parser.add_argument("--vision_heads", type=int, help="heads of a non-differential vision tower (not stored)")
    parser.add_argument("--text_heads", type=int, help="heads of a non-differential text tower (not stored)")
    parser.add_argument("--license", default="other", help="license for the model card metadata")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def convert() -> str:
        path = resolve_checkpoint(args.checkpoint, args.filename)
        # name the model after its Hub repo (a local file: after the folder holding it)
        source = None if Path(args.checkpoint).exists() else args.checkpoint.split("/")[-1]
        _, difference = convert_official_checkpoint(
            path,
            args.output_dir,
            overwrite=args.overwrite,
            trust_checkpoint=args.trust_checkpoint,
            lambda_init=args.lambda_init,
            lambda_schedule=args.lambda_schedule,
            vision_heads=args.vision_heads,
            text_heads=args.text_heads,
            license=args.license,
            source_name=source,
        )
        return f"Converted {args.checkpoint} -> {args.output_dir} (largest difference to reference: {difference:.2e})"

    return convert_and_publish(args, convert, f"Convert {args.checkpoint} to Transformers")


if __name__ == "__main__":
    sys.exit(main())
