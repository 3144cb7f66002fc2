"""Where each model's image encoder looks when it matches a text query, drawn side by side (the paper's Figure 2).

    python examples/attention_maps.py --model A --model B --image IMG --query "mug" --query "lamp" --output fig.png

The map is the text-conditioned relevance of Chefer et al. (ICCV 2021), computed from each model's attention maps
and their gradients: for DiffCLIP the differential maps A1 − λ·A2, for CLIP the softmax maps (see
diffclip_lab/evaluation/relevance.py).
"""

import argparse
import logging
from pathlib import Path

import torch
from matplotlib.backend_bases import FigureCanvasBase

import modeling_diffclip  # noqa: F401  (registers DiffCLIP with the Auto classes)
from diffclip_lab.core.cli import ArgumentParser, device, path_or_repo_id, run_main, setup_logging
from diffclip_lab.core.errors import UserError
from diffclip_lab.core.formatting import distinct_names
from diffclip_lab.core.images import UnreadableImage, read_image
from diffclip_lab.core.loading import load_pretrained
from diffclip_lab.evaluation.relevance import Relevance, centre_crop_box, draw, relevance_map


logger = logging.getLogger(__name__)


def main(argv=None) -> dict[str, list[Relevance]]:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True, help="a folder or Hub id; repeat to compare")
    parser.add_argument("--image", required=True)
    parser.add_argument("--query", action="append", required=True, help="a text query; repeat for several")
    parser.add_argument("--output", default="attention_maps.png")
    parser.add_argument("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    if (kind := Path(args.output).suffix.lstrip(".").lower()) not in FigureCanvasBase.get_supported_filetypes():
        parser.error(f"--output {args.output}: matplotlib writes no {kind!r} files; use .png, .pdf or .svg")
    setup_logging()
    try:
        image = read_image(args.image)
    except UnreadableImage as error:
        raise UserError(f"cannot read the image {args.image}: {error}") from None
    labels = distinct_names(args.model)
    rows, maps, box = [], {}, None
    for name in args.model:
        # the maps exist only in the eager path; float32 keeps the gradients exact
        model, processor = load_pretrained(
            path_or_repo_id(name, "--model"), args.trust_remote_code, attn_implementation="eager", dtype=torch.float32
        )
        model = model.to(args.device).eval()
        maps[name] = [relevance_map(model, processor, image, query) for query in args.query]
        rows.append((labels[name], maps[name]))
        box = box or centre_crop_box(processor, image)
    draw(rows, image, box, Path(args.output))
    logger.info(f"Wrote {args.output}")
    return maps


if __name__ == "__main__":
    run_main(main)
