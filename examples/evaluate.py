"""Evaluate CLIP-family models with the DiffCLIP paper's protocols, the same way for every model.

    python examples/evaluate.py --model PATH_OR_REPO [--model PATH_OR_REPO ...] \\
        --task zeroshot|retrieval|linear_probe|few_shot|mmvp --dataset PATH_OR_REPO [--output results.json]

Models: anything `AutoModel` and `AutoProcessor` load as a dual encoder (`get_image_features`/`get_text_features`):
DiffCLIP and its ablations, Transformers CLIP, SigLIP. Datasets: the CLIP Benchmark webdataset layout, any
`datasets` image dataset, or the MMVP-VLM layout (see diffclip_lab/evaluation/datasets.py). Features are computed
once per model, dataset and split, in batches (on the GPU when there is one), and cached on disk.
"""

import argparse
import json
import os
from pathlib import Path

import torch

import modeling_diffclip  # noqa: F401  (registers DiffCLIP with the Auto classes)
from diffclip_lab.core.cli import ArgumentParser, device, path_or_repo_id, run_main
from diffclip_lab.core.files import atomic_write_text
from diffclip_lab.core.formatting import distinct_names
from diffclip_lab.evaluation.tasks import (
    TASKS,
    DualEncoder,
    EvalOptions,
    FeatureCache,
    add_eval_options,
    evaluate,
    results_table,
)


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", action="append", required=True, help="a folder or Hub id; repeat to compare models")
    add("--task", choices=TASKS, required=True)
    add("--dataset", required=True, help="CLIP Benchmark wds root or repo, datasets id/path, or MMVP-VLM root")
    add("--output", help="write the results (a JSON list, one record per model) here")
    add_eval_options(parser)
    add("--device", type=device, default="cuda" if torch.cuda.is_available() else "cpu")
    add("--cache_dir", default=os.path.join(Path.home(), ".cache", "diffclip", "features"))
    add("--no_cache", action="store_true", help="always recompute features")
    add("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    if args.ways < 2:
        parser.error(f"--ways {args.ways}: a few-shot episode needs at least 2 classes to tell apart")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    options = EvalOptions(**{name: getattr(args, name) for name in EvalOptions.__dataclass_fields__})
    cache = FeatureCache(None if args.no_cache else args.cache_dir)
    labels = distinct_names(args.model)
    records = []
    for name in args.model:
        encoder = DualEncoder.from_pretrained(
            path_or_repo_id(name, "--model"), args.device, args.trust_remote_code, labels[name]
        )
        records.append(evaluate(encoder, args.task, options, cache))
    print(f"\n{args.task} on {args.dataset} ({args.split})\n")
    print(results_table(records))
    if args.output:
        atomic_write_text(args.output, json.dumps(records, indent=2))
    return records


if __name__ == "__main__":
    run_main(main)
