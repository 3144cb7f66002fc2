"""Convert a released DiffCLIP checkpoint into a Transformers folder, exactly.

    python convert/convert_official_diffclip.py --checkpoint PATH_OR_REPO_ID --output_dir DIR \\
        [--push_to_hub REPO_ID] [--private] [--overwrite]

The released checkpoints (`hammh0a/DiffCLIP_ViTB16_CC3M`, `hammh0a/DiffCLIP_ViTB16_CC12M`) are `checkpoint_best.pt`
files from a SLIP-style code base: a dict with `state_dict` (keys possibly prefixed `module.`), `epoch`, `args`, ...
The architecture is read from the tensors (widths, depths, patch and image size, context length, vocabulary, heads
from the λ vectors, which tower is differential), so checkpoints of any size convert. Before anything is written
the converted model is checked against an independent, straightforward implementation of the official forward pass
run on the original tensors; a difference above 1e-4 stops the conversion.
"""

import argparse
import logging
from pathlib import Path

from diffclip_lab.conversion.checkpoints import convert_official_checkpoint, resolve_checkpoint
from diffclip_lab.core.cli import (
    ArgumentParser,
    add_output_arguments,
    fraction,
    positive_int,
    run_main,
    setup_logging,
)
from diffclip_lab.core.publishing import check_can_push, push_output


logger = logging.getLogger(__name__)


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint_best.pt, or a Hub repo id holding it")
    parser.add_argument("--filename", default="checkpoint_best.pt", help="file to download from a Hub repo")
    add_output_arguments(parser)
    parser.add_argument(
        "--trust_checkpoint",
        action="store_true",
        help="unpickle arbitrary objects in the checkpoint (only for files you trust)",
    )
    parser.add_argument("--lambda_init", type=fraction, default=0.8, help="λ_init the checkpoint was trained with")
    parser.add_argument(
        "--lambda_schedule",
        choices=["constant", "dynamic"],
        default="constant",
        help="'dynamic' for DiffCLIP* checkpoints (λ_init is not stored in the tensors)",
    )
    parser.add_argument("--vision_heads", type=positive_int, help="heads of a plain vision tower (not stored)")
    parser.add_argument("--text_heads", type=positive_int, help="heads of a non-differential text tower (not stored)")
    parser.add_argument("--license", default="other", help="license for the model card metadata")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    if args.push_to_hub:  # before the work, not after it
        check_can_push(args.push_to_hub)
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
    logger.info(
        f"Converted {args.checkpoint} -> {args.output_dir} (largest difference to reference: {difference:.2e})"
    )
    push_output(args, f"Convert {args.checkpoint}")
    return 0


if __name__ == "__main__":
    run_main(main)
