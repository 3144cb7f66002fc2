"""Start a DiffCLIP from a Transformers CLIP checkpoint (a fine-tuning path the paper does not offer).

    python convert/convert_clip_to_diffclip.py --model CLIP_PATH_OR_REPO_ID --output_dir DIR \\
        [--variant diffclip|diffclip-vision|diffclip-dynamic|clip] [--push_to_hub REPO_ID] [--private] [--overwrite]

Every CLIP tensor is copied unchanged; the parameters CLIP lacks are initialised as in the paper (λ vectors from
N(0, 0.1), RMSNorm weights at one), and the CLIP processor is carried over. With `--variant clip` the result is the
same network as the CLIP model, packaged as DiffCLIP (a baseline for fair comparisons).
"""

import argparse
import logging

from diffclip_lab.conversion.checkpoints import convert_clip
from diffclip_lab.core.cli import ArgumentParser, add_output_arguments, path_or_repo_id, run_main, setup_logging
from diffclip_lab.core.publishing import check_can_push, push_output
from modeling_diffclip.configuration_diffclip import VARIANTS


logger = logging.getLogger(__name__)


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a Transformers CLIP folder or Hub repo id")
    parser.add_argument("--variant", choices=list(VARIANTS), default="diffclip")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    if args.push_to_hub:  # before the work, not after it
        check_can_push(args.push_to_hub)
    convert_clip(
        path_or_repo_id(args.model, "--model"), args.output_dir, variant=args.variant, overwrite=args.overwrite
    )
    logger.info(f"Converted {args.model} -> {args.output_dir} ({args.variant})")
    push_output(args, f"{args.variant} from {args.model}")
    return 0


if __name__ == "__main__":
    run_main(main)
