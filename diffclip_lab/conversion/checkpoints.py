# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Conversions into DiffCLIP folders: the released checkpoints, exactly, and Transformers CLIP models.

The released checkpoints (`hammh0a/DiffCLIP_ViTB16_CC3M`, `hammh0a/DiffCLIP_ViTB16_CC12M`) are `checkpoint_best.pt`
files from a SLIP-style code base: a dict with `state_dict` (keys possibly prefixed `module.`), `epoch`, `args`, ...
The architecture is read from the tensors (widths, depths, patch and image size, context length, vocabulary, heads
from the λ vectors, which tower is differential), so checkpoints of any size convert. Before anything is written
the converted model is checked against an independent, straightforward implementation of the official forward pass
(`official.py`) run on the original tensors; a difference above 1e-4 stops the conversion.

A Transformers CLIP converts with every tensor copied unchanged; the parameters CLIP lacks are initialised as in the
paper (λ vectors from N(0, 0.1), RMSNorm weights at one), and the CLIP processor is carried over.
"""

import argparse
import math
import pickle
import re
import zipfile
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    StrictDataclassError,
)
from transformers import AutoConfig, AutoProcessor, CLIPModel

from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel, DiffCLIPProcessor

from ..core.errors import UserError
from ..core.files import check_output_directory
from ..core.loading import refused_as
from ..core.publishing import model_card, save_model_folder
from .official import image_embeddings, text_embeddings, to_diffclip_state_dict


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
        raise UserError(f"{path}: no such checkpoint file.")
    try:
        if trust_checkpoint:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if blocked is None:
            raise UserError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?).") from None
        raise UserError(
            f"{path} holds a pickled {blocked.group(1)} besides tensors, which is not loaded by default because "
            "unpickling can run arbitrary code. If you trust this file, pass --trust_checkpoint."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise UserError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {error}") from None

    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        state_dict, extras = checkpoint["state_dict"], {k: v for k, v in checkpoint.items() if k != "state_dict"}
    elif isinstance(checkpoint, dict) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        state_dict, extras = checkpoint, {}
    else:
        raise UserError(f"{path} holds no state dict (expected a dict with a 'state_dict' entry of tensors).")
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    if not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise UserError(f"{path}: the state dict holds entries that are not tensors.")
    return state_dict, extras


def resolve_checkpoint(checkpoint: str, filename: str = "checkpoint_best.pt") -> Path:
    """A local file as is; anything else is taken as a Hub repo id and its `filename` downloaded."""
    if Path(checkpoint).exists() or checkpoint.count("/") != 1:
        return Path(checkpoint)
    try:
        return Path(hf_hub_download(checkpoint, filename))
    except (RepositoryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError) as error:
        raise UserError(f"could not download {filename} from the Hub repo {checkpoint}: {error}") from None


# ---------------------------------------------------------------------------------- architecture


def _count_blocks(state_dict: dict, prefix: str) -> int:
    indices = {int(m.group(1)) for key in state_dict if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))}
    if not indices or indices != set(range(max(indices) + 1)):
        raise UserError(f"the checkpoint's {prefix}N blocks are missing or not numbered 0..N-1.")
    return len(indices)


def _heads(state_dict: dict, attn_prefix: str, width: int, heads_given: int | None, tower: str) -> tuple[bool, int]:
    """Whether a tower is differential, and its head count: read from the λ vectors' size, else given."""
    lambda_q1 = state_dict.get(f"{attn_prefix}.lambda_q1")
    if lambda_q1 is not None:
        heads = width // lambda_q1.shape[0]
        if heads_given is not None and heads_given != heads:
            raise UserError(f"--{tower}_heads {heads_given} contradicts the λ vectors ({heads} heads).")
        return True, heads
    if heads_given is None or width % heads_given:
        raise UserError(
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
        raise UserError(
            f"this is not a DiffCLIP checkpoint in the released (SLIP-style) layout: it lacks {', '.join(absent)}."
        )
    vision_width = state_dict["visual.cls_token"].shape[-1]
    num_channels, patch_size = state_dict["visual.patch_embed.proj.weight"].shape[1:3]
    grid = math.isqrt(state_dict["visual.pos_embed"].shape[1] - 1)
    if grid * grid != state_dict["visual.pos_embed"].shape[1] - 1:
        raise UserError("visual.pos_embed does not hold a class token plus a square grid of patches.")
    vision_diff, vision_heads = _heads(state_dict, "visual.blocks.0.attn", vision_width, vision_heads, "vision")
    vocab_size, text_width = state_dict["token_embedding.weight"].shape
    if vocab_size != CLIP_VOCAB_SIZE:
        raise UserError(
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
        raise UserError(f"the checkpoint lacks {error.args[0]}, which every block of this layout has.") from None


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
    expected_image = image_embeddings(sd, config, pixel_values)
    expected_text = text_embeddings(sd, config, input_ids)
    model.eval()
    image = model.get_image_features(pixel_values=pixel_values).pooler_output
    text = model.get_text_features(input_ids=input_ids).pooler_output
    difference = max((image - expected_image).abs().max().item(), (text - expected_text).abs().max().item())
    if not difference <= tolerance or model.logit_scale.item() != sd["logit_scale"].item():
        raise UserError(
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
    converted = to_diffclip_state_dict(state_dict, config)
    model = DiffCLIPModel(config)
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as error:
        raise UserError(f"the checkpoint's tensor shapes are inconsistent with each other: {error}") from None
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
    save_model_folder(output_dir, model, processor, card, overwrite)
    return model, difference


# ------------------------------------------------------------------------------- from Transformers CLIP

NEW_PARAMETER_SUFFIXES = ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2", "diff_norm.weight")


def diffclip_from_clip(clip: CLIPModel, variant: str = "diffclip", seed: int = 0) -> DiffCLIPModel:
    """A DiffCLIP holding every tensor of `clip`; only the differential-attention parameters are new."""
    try:
        config = DiffCLIPConfig.from_clip_config(clip.config, variant=variant)
    except (ValueError, StrictDataclassError) as error:
        # strict validation wraps the ValueError that names the problem
        raise UserError(f"{variant} cannot be built on this CLIP: {error.__cause__ or error}") from None
    with torch.random.fork_rng(devices=[]):  # the new λ vectors are random: make the conversion reproducible
        torch.manual_seed(seed)
        model = DiffCLIPModel(config).to(clip.dtype)
    result = model.load_state_dict(clip.state_dict(), strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [key for key in result.missing_keys if not key.endswith(NEW_PARAMETER_SUFFIXES)]
    if missing or unexpected:
        raise UserError(f"the CLIP weights do not map one to one: missing {missing}, unexpected {unexpected}.")
    return model


def convert_clip(
    model_name_or_path: str, output_dir: str | Path, variant: str = "diffclip", overwrite: bool = False
) -> DiffCLIPModel:
    """Load a CLIP checkpoint and its processor, and write the DiffCLIP folder in one rename."""
    check_output_directory(output_dir, overwrite)
    with refused_as(f"could not load a CLIP model from {model_name_or_path}"):
        config = AutoConfig.from_pretrained(model_name_or_path)
    if config.model_type != "clip":  # CLIPModel would load another model's config as CLIP's, and its weights
        raise UserError(
            f"{model_name_or_path} is a {config.model_type!r} model, not a Transformers CLIP ('clip'); this "
            "converter starts DiffCLIP from CLIP weights. A DiffCLIP folder trains as it is (pretrain.py "
            "--init_from)."
        )
    with refused_as(f"could not load a CLIP model from {model_name_or_path}"):
        clip = CLIPModel.from_pretrained(model_name_or_path)
    try:
        clip_processor = AutoProcessor.from_pretrained(model_name_or_path)
    except (OSError, ValueError):
        raise UserError(
            f"{model_name_or_path} has no processor to carry over (image processor and tokenizer files); save the "
            "CLIP processor next to the model first."
        ) from None
    model = diffclip_from_clip(clip, variant)
    processor = DiffCLIPProcessor(image_processor=clip_processor.image_processor, tokenizer=clip_processor.tokenizer)
    provenance = (
        f"Initialised from the CLIP checkpoint `{model_name_or_path}` with `convert/convert_clip_to_diffclip.py "
        f"--variant {variant}` of DiffCLIP for Transformers: every CLIP tensor copied unchanged; λ vectors drawn "
        "from N(0, 0.1) and RMSNorm weights set to one, as in the paper. Not trained after conversion."
    )
    card = model_card(model.config, f"{variant} initialised from {model_name_or_path}", provenance)
    save_model_folder(output_dir, model, processor, card, overwrite)
    return model
