"""Export a CLIP-family dual encoder for ONNX Runtime: DiffCLIP and its ablations, or a Transformers CLIP.

    python convert/export_onnx.py --model PATH_OR_REPO_ID --output_dir DIR [--opset N] [--fp16] \\
        [--push_to_hub REPO_ID] [--private] [--overwrite]

The folder holds two graphs, with a dynamic batch size:

- `image_encoder.onnx`: `pixel_values` (batch, 3, H, W) float32 -> `image_embeds` (batch, projection_dim)
- `text_encoder.onnx`: `input_ids`, `attention_mask` (batch, tokens ≤ context length) int64 -> `text_embeds`
  (batch, projection_dim)

both the projected, unnormalised embeddings of `get_image_features`/`get_text_features`; the processor files
(`tokenizer.json`, the image processor config); `onnx_config.json` (logit scale, preprocessing, context length,
padding id, projection dimension, opset, dtype, source model, the verification) and a README. With `--fp16` the
weights and arithmetic are float16 and the inputs and outputs stay as above. Classify with
`examples/onnx_zero_shot.py DIR IMAGE --labels ...`, which needs neither PyTorch nor Transformers.

Before anything is written both graphs run in ONNX Runtime on random images and real captions of several lengths,
at batch sizes other than the exported one, and are compared with PyTorch: max |Δ| ≤ 1e-4 on the embeddings in
float32 (≤ 1 % of the largest embedding component with `--fp16`) and the same zero-shot top-1 for every image;
otherwise nothing is written. Opset 18 (the default) or newer.
"""

import argparse
import logging

from diffclip_lab.conversion.onnx_export import DEFAULT_OPSET, MIN_OPSET, export_onnx
from diffclip_lab.core.cli import (
    ArgumentParser,
    add_output_arguments,
    path_or_repo_id,
    positive_int,
    run_main,
    setup_logging,
)
from diffclip_lab.core.publishing import check_can_push, push_output


logger = logging.getLogger(__name__)


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a DiffCLIP or Transformers CLIP folder or Hub repo id")
    parser.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET, help=f"ONNX opset, at least {MIN_OPSET}")
    parser.add_argument("--fp16", action="store_true", help="float16 weights and arithmetic (float32 inputs/outputs)")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging()
    if args.push_to_hub:  # before the work, not after it
        check_can_push(args.push_to_hub)
    report = export_onnx(
        path_or_repo_id(args.model, "--model"),
        args.output_dir,
        opset=args.opset,
        fp16=args.fp16,
        overwrite=args.overwrite,
    )
    differences = report["max_abs_difference"]
    logger.info(
        f"Exported {args.model} -> {args.output_dir} (opset {args.opset}, {'float16' if args.fp16 else 'float32'}; "
        f"max |Δ| to PyTorch: image {differences['image_embeds']:.1e}, text {differences['text_embeds']:.1e})"
    )
    push_output(args, f"ONNX export of {args.model}")
    return 0


if __name__ == "__main__":
    run_main(main)
