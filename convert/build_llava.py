"""Compose a LLaVA-1.5-style vision-language model from a DiffCLIP (or Transformers CLIP) checkpoint and a causal LM.

    python convert/build_llava.py --vision_model PATH_OR_ID --language_model PATH_OR_ID --output_dir DIR \\
        [--dtype float32|bfloat16|float16] [--chat_template vicuna_v1|short] [--no_pad_to_square] \\
        [--push_to_hub REPO_ID] [--private] [--overwrite]

The vision tower and the language model are copied exactly; the two-layer GELU projector is new (train it with
examples/train_vlm.py). The processor is the vision checkpoint's image processor (after LLaVA-1.5's padding to a
square with the mean colour, unless --no_pad_to_square), the language model's tokenizer with an `<image>` token,
and LLaVA-1.5's `vicuna_v1` conversation as its chat template (system prompt included; `--chat_template short`
leaves it out). The folder is written in one dtype (a saved model loads in one): float32 by default, every part
exact and trainable; `--dtype bfloat16` halves the size, as LLaVA-1.5 holds and trains its 7B model (an exact copy
of a bfloat16 language model; float16 and float32 weights rounded). examples/train_vlm.py trains in float32 master
weights whatever the folder's dtype. A DiffCLIP vision tower gives a `diffclip_llava` folder that carries its code
(load it with trust_remote_code=True where this package is not installed); a CLIP one, Transformers' own `llava`.
"""

import argparse
import logging

from diffclip_lab.core.cli import ArgumentParser, add_output_arguments, path_or_repo_id, run_main, setup_logging
from diffclip_lab.core.publishing import check_can_push, push_output
from diffclip_lab.vlm.composition import build_and_save


logger = logging.getLogger(__name__)


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vision_model", required=True, help="a DiffCLIP or Transformers CLIP folder or Hub id")
    parser.add_argument("--language_model", required=True, help="a causal language model folder or Hub id")
    parser.add_argument(
        "--no_pad_to_square", action="store_true", help="centre-crop images instead of padding them to a square"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--chat_template", default="vicuna_v1", choices=["vicuna_v1", "short"])
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    if args.push_to_hub:  # before the work, not after it
        check_can_push(args.push_to_hub)
    model = build_and_save(
        path_or_repo_id(args.vision_model, "--vision_model"),
        path_or_repo_id(args.language_model, "--language_model"),
        args.output_dir,
        pad_to_square=not args.no_pad_to_square,
        overwrite=args.overwrite,
        chat_template=args.chat_template,
        dtype=args.dtype,
    )
    logger.info(f"Built {model.config.model_type} in {args.output_dir}, every weight in {args.dtype}")
    push_output(args, "LLaVA built with build_llava.py")
    return 0


if __name__ == "__main__":
    run_main(main)
