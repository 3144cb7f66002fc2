"""Start a DiffCLIP from a Transformers CLIP checkpoint (a fine-tuning path the paper does not offer).

    python convert/convert_clip_to_diffclip.py --model CLIP_PATH_OR_REPO_ID --output_dir DIR \
        [--variant diffclip|diffclip-vision|diffclip-dynamic|clip] [--push_to_hub REPO_ID] [--private] [--overwrite]

Every CLIP tensor is copied unchanged; the parameters CLIP lacks are initialised as in the paper (λ vectors from
N(0, 0.1), RMSNorm weights at one), and the CLIP processor is carried over. With `--variant clip` the result is the
same network as the CLIP model, packaged as DiffCLIP (a baseline for fair comparisons).
"""

import argparse
import sys
from pathlib import Path

import torch
from conversion import ConversionError, add_output_arguments, convert_and_publish
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoProcessor, CLIPModel

from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel, DiffCLIPProcessor
from modeling_diffclip.configuration_diffclip import VARIANTS
from modeling_diffclip.publishing import atomic_directory, check_output_directory, model_card


NEW_PARAMETER_SUFFIXES = ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2", "diff_norm.weight")


def diffclip_from_clip(clip: CLIPModel, variant: str = "diffclip", seed: int = 0) -> DiffCLIPModel:
    """A DiffCLIP holding every tensor of `clip`; only the differential-attention parameters are new."""
    try:
        config = DiffCLIPConfig.from_clip_config(clip.config, variant=variant)
    except (ValueError, StrictDataclassError) as error:
        # strict validation wraps the ValueError that names the problem
        raise ConversionError(f"{variant} cannot be built on this CLIP: {error.__cause__ or error}") from None
    with torch.random.fork_rng(devices=[]):  # the new λ vectors are random: make the conversion reproducible
        torch.manual_seed(seed)
        model = DiffCLIPModel(config).to(clip.dtype)
    result = model.load_state_dict(clip.state_dict(), strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [key for key in result.missing_keys if not key.endswith(NEW_PARAMETER_SUFFIXES)]
    if missing or unexpected:
        raise ConversionError(f"the CLIP weights do not map one to one: missing {missing}, unexpected {unexpected}.")
    return model


def convert_clip(
    model_name_or_path: str, output_dir: str | Path, variant: str = "diffclip", overwrite: bool = False
) -> DiffCLIPModel:
    """Load a CLIP checkpoint and its processor, and write the DiffCLIP folder in one rename."""
    check_output_directory(output_dir, overwrite)
    try:
        clip = CLIPModel.from_pretrained(model_name_or_path)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise ConversionError(f"could not load a CLIP model from {model_name_or_path}: {reason}") from None
    try:
        clip_processor = AutoProcessor.from_pretrained(model_name_or_path)
    except (OSError, ValueError):
        raise ConversionError(
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
    with atomic_directory(output_dir, overwrite=overwrite) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "README.md").write_text(card, encoding="utf-8")
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a Transformers CLIP folder or Hub repo id")
    parser.add_argument("--variant", choices=list(VARIANTS), default="diffclip")
    add_output_arguments(parser)
    args = parser.parse_args(argv)

    def convert() -> str:
        convert_clip(args.model, args.output_dir, variant=args.variant, overwrite=args.overwrite)
        return f"Converted {args.model} -> {args.output_dir} ({args.variant})"

    return convert_and_publish(args, convert, f"{args.variant} initialised from {args.model}")


if __name__ == "__main__":
    sys.exit(main())
