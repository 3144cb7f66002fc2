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
from diffclip_lab.core.formatting import distinct_names
from diffclip_lab.evaluation.relevance import Relevance, attention_figure, load_for_relevance


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
    labels = distinct_names(args.model)
    models = (  # one at a time
        (labels[name], *load_for_relevance(path_or_repo_id(name, "--model"), args.device, args.trust_remote_code))
        for name in args.model
    )
    maps = attention_figure(models, args.image, args.query, Path(args.output))
    logger.info(f"Wrote {args.output}")
    return dict(zip(args.model, maps, strict=True))


if __name__ == "__main__":
    run_main(main)
