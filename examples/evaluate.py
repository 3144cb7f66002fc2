"""Evaluate CLIP-family models with the DiffCLIP paper's protocols, the same way for every model.

    python examples/evaluate.py --model PATH_OR_REPO [--model PATH_OR_REPO ...] \\
        --task zeroshot|retrieval|linear_probe|few_shot|mmvp --dataset PATH_OR_REPO [--output results.json]

Models: anything `AutoModel` and `AutoProcessor` load as a dual encoder (`get_image_features`/`get_text_features`):
DiffCLIP and its ablations, Transformers CLIP, SigLIP. Datasets: see eval_data.py. Features are computed once per
model, dataset and split, in batches (on the GPU when there is one), and cached on disk.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from eval_data import EvalSplit, load_mmvp, load_split
from image_text_data import DataError
from protocols import (
    classification_metrics,
    few_shot,
    linear_probe,
    mmvp_pair_correct,
    mmvp_scores,
    retrieval_metrics,
    split_train_validation,
    zero_shot_prompts,
    zero_shot_weights,
)
from tqdm.auto import tqdm
from transformers import AutoModel, AutoProcessor
from transformers.utils import cached_file

import modeling_diffclip
from modeling_diffclip.publishing import atomic_write_text


TASKS = ("zeroshot", "retrieval", "linear_probe", "few_shot", "mmvp")
PROTOCOLS = {
    "zeroshot": "CLIP Benchmark zero-shot classification: per class, template embeddings L2-normalised, averaged, "
    "renormalised; cosine similarity to the image embedding",
    "retrieval": "CLIP Benchmark retrieval: every caption its own query; recall@k text->image and image->text",
    "linear_probe": "El Banani et al. (CVPR 2023): L-BFGS logistic regression on frozen features, cost chosen on a "
    "validation split by a coarse-then-fine log sweep, refit on train+validation, tested once",
    "few_shot": "El Banani et al. (CVPR 2023): N-way K-shot episodes, support-mean centring, L2 normalisation, "
    "nearest class mean",
    "mmvp": "MMVP-VLM (Tong et al., CVPR 2024): 'a photo of ' + statement matched to one of its pair's two images; "
    "a pair is correct only if both statements pick their own image",
}
MAIN_METRICS = {
    "zeroshot": "acc1",
    "retrieval": "image_retrieval_recall@1",
    "linear_probe": "acc1",
    "few_shot": "acc1",
    "mmvp": "average",
}
# Datasets whose linear probe the protocol scores by mean per-class accuracy
MEAN_PER_CLASS_DATASETS = ("aircraft", "pets", "caltech101", "caltech-101", "flowers")
VALIDATION_SPLITS = ("validation", "valid", "val")


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message says what is wrong and what to do."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", action="append", required=True, help="a folder or Hub id; repeat to compare models")
    add("--task", choices=TASKS, required=True)
    add("--dataset", required=True, help="CLIP Benchmark wds root or repo, datasets id/path, or MMVP-VLM root")
    add("--output", help="write the results (a JSON list, one record per model) here")
    add("--split", default="test", help="the split scored (zeroshot, retrieval) or tested (linear_probe, few_shot)")
    add("--train_split", default="train", help="linear_probe / few_shot training split")
    add("--validation_split", help="linear_probe validation split (default: the dataset's, else 20%% of train)")
    add("--label_column", default="label")
    add("--caption_column")
    add("--classnames", help="a file of class names, one per line (default: the dataset's)")
    add("--templates", help="a file of zero-shot templates with {c}, one per line (default: the dataset's)")
    add(
        "--features",
        choices=["pooled", "projected"],
        default="pooled",
        help="linear_probe / few_shot features: the vision tower's pooled output, or the projected embedding",
    )
    add(
        "--mean_per_class",
        action="store_true",
        help="score the linear probe by mean per-class accuracy (automatic for Aircraft, Pets, Caltech-101, Flowers)",
    )
    add("--max_iter", type=int, default=1000, help="L-BFGS iterations per linear-probe fit")
    add("--episodes", type=int, default=5000)
    add("--ways", type=int, default=5)
    add("--shots", type=int, default=5)
    add("--queries", type=int, default=6)
    add("--seed", type=int, default=0)
    add("--batch_size", type=int, default=64)
    # image decoding workers; they are forked, which only Linux does by default
    add("--num_workers", type=int, default=2 if sys.platform == "linux" else 0)
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--cache_dir", default=os.path.join(Path.home(), ".cache", "diffclip", "features"))
    add("--no_cache", action="store_true", help="always recompute features")
    add("--trust_remote_code", action="store_true")
    return parser.parse_args(argv)


class DualEncoder:
    """A model and its processor, with the calls every protocol needs, and a fingerprint of its weights."""

    def __init__(self, name: str, device: str, trust_remote_code: bool = False):
        try:
            self.model = AutoModel.from_pretrained(name, trust_remote_code=trust_remote_code).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            raise EvalError(f"could not load model {name!r}: {str(error).strip().splitlines()[0]}") from None
        if not all(hasattr(self.model, m) for m in ("get_image_features", "get_text_features")):
            raise EvalError(
                f"{name} ({type(self.model).__name__}) is not a dual encoder: it has no "
                "get_image_features/get_text_features. evaluate.py scores CLIP-like models."
            )
        self.name, self.device = name, device
        tokenizer = self.processor.tokenizer
        self.context_length = tokenizer.model_max_length if tokenizer.model_max_length < 10_000 else None
        self.fingerprint = weights_fingerprint(name)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(texts, dim) embeddings, padded as the model was trained (to its context length when it has one)."""
        inputs = self.processor.tokenizer(
            texts,
            padding="max_length" if self.context_length else True,
            max_length=self.context_length,
            truncation=True,
            return_tensors="pt",
        )
        return _embedding(self.model.get_text_features(**inputs.to(self.device))).float().cpu()

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, kind: str = "projected") -> torch.Tensor:
        pixel_values = pixel_values.to(self.device)
        if kind == "pooled" and hasattr(self.model, "vision_model"):
            return self.model.vision_model(pixel_values=pixel_values).pooler_output.float().cpu()
        return _embedding(self.model.get_image_features(pixel_values=pixel_values)).float().cpu()


def _embedding(output) -> torch.Tensor:
    """Transformers 5 returns model outputs from get_*_features (the embedding in `pooler_output`), 4 a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def weights_fingerprint(name: str) -> str:
    """What identifies a model's weights for the feature cache: a local folder's weight files (path, size, mtime),
    or a Hub snapshot's commit."""
    path = Path(name)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        return "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return str(Path(cached_file(name, "config.json")).parent)  # .../snapshots/<commit>


class FeatureCache:
    """Features on disk, keyed by everything they depend on; written atomically."""

    def __init__(self, directory: str, enabled: bool = True):
        self.directory, self.enabled = Path(directory), enabled

    def get_or_compute(self, key: dict, compute):
        path = self.directory / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest() + ".pt")
        if self.enabled and path.is_file():
            return torch.load(path)
        value = compute()
        if self.enabled:
            self.directory.mkdir(parents=True, exist_ok=True)
            handle, staging = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            os.close(handle)
            torch.save(value, staging)
            os.replace(staging, path)
        return value


def image_features(encoder: DualEncoder, data: EvalSplit, args, cache: FeatureCache, kind: str) -> torch.Tensor:
    """(images, dim) features of a split, computed in batches with a progress bar, or read from the cache."""
    key = {
        "model": encoder.fingerprint,
        "data": data.name,
        "count": len(data.images),
        "kind": kind,
        "image_processor": encoder.processor.image_processor.to_dict(),
    }

    def compute():
        loader = torch.utils.data.DataLoader(
            range(len(data.images)),
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            collate_fn=lambda indices: encoder.processor.image_processor(
                [data.images[i] for i in indices], return_tensors="pt"
            )["pixel_values"],
        )
        batches = tqdm(loader, desc=f"{Path(encoder.name).name}: {data.name} images", leave=False)
        return torch.cat([encoder.encode_images(pixel_values, kind) for pixel_values in batches])

    return cache.get_or_compute(key, compute)


def text_features(encoder: DualEncoder, texts: list[str], args, cache: FeatureCache) -> torch.Tensor:
    key = {
        "model": encoder.fingerprint,
        "texts": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
        "context_length": encoder.context_length,
    }

    def compute():
        batches = range(0, len(texts), args.batch_size)
        return torch.cat(
            [
                encoder.encode_text(texts[i : i + args.batch_size])
                for i in tqdm(batches, desc=f"{Path(encoder.name).name}: texts", leave=False)
            ]
        )

    return cache.get_or_compute(key, compute)


def zeroshot(encoder: DualEncoder, args, cache: FeatureCache) -> tuple[dict, dict]:
    data = load_split(
        args.dataset, args.split, args.label_column, args.caption_column, args.classnames, args.templates
    )
    labels = torch.tensor(data.require_labels())
    if not data.classnames:
        raise DataError(f"{data.name} has no class names: give --classnames FILE (one name per line).")
    if int(labels.max()) >= len(data.classnames):
        raise DataError(f"labels go up to {int(labels.max())} but there are {len(data.classnames)} class names.")
    prompts = zero_shot_prompts(data.classnames, data.templates)
    classifier = zero_shot_weights(text_features(encoder, prompts, args, cache), len(data.classnames))
    images = F.normalize(image_features(encoder, data, args, cache, "projected"), dim=-1)
    metrics = classification_metrics(images @ classifier.T, labels)
    return metrics, {"images": len(labels), "classes": len(data.classnames), "templates": len(data.templates)}


def retrieval(encoder: DualEncoder, args, cache: FeatureCache) -> tuple[dict, dict]:
    data = load_split(args.dataset, args.split, args.label_column, args.caption_column)
    captions = data.require_captions()
    texts = [caption for image_captions in captions for caption in image_captions]
    text_to_image = torch.tensor([image for image, image_captions in enumerate(captions) for _ in image_captions])
    if not texts:
        raise DataError(f"{data.name} has no captions to retrieve with.")
    metrics = retrieval_metrics(
        text_features(encoder, texts, args, cache),
        image_features(encoder, data, args, cache, "projected"),
        text_to_image,
    )
    return metrics, {"images": len(captions), "captions": len(texts)}


def labelled_features(encoder, args, cache, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_split(args.dataset, split, args.label_column)
    return image_features(encoder, data, args, cache, args.features), torch.tensor(data.require_labels())


def train_validation_features(encoder, args, cache):
    """The training split and a validation split: the dataset's own, or a stratified 20% of train."""
    train = labelled_features(encoder, args, cache, args.train_split)
    for split in [args.validation_split] if args.validation_split else VALIDATION_SPLITS:
        try:
            return train, labelled_features(encoder, args, cache, split), split
        except DataError:
            if args.validation_split:
                raise
    fit, held_out = split_train_validation(train[1].tolist())
    return (train[0][fit], train[1][fit]), (train[0][held_out], train[1][held_out]), f"20% of {args.train_split}"


def linear_probe_task(encoder: DualEncoder, args, cache: FeatureCache) -> tuple[dict, dict]:
    train, validation, validation_name = train_validation_features(encoder, args, cache)
    test = labelled_features(encoder, args, cache, args.split)
    mean_per_class = args.mean_per_class or any(name in args.dataset.lower() for name in MEAN_PER_CLASS_DATASETS)
    progress = tqdm(desc=f"{Path(encoder.name).name}: cost sweep", unit="fit", leave=False)
    metrics = linear_probe(
        train, validation, test, args.max_iter, mean_per_class, on_fit=lambda cost, score: progress.update(1)
    )
    progress.close()
    metrics["main"] = metrics["mean_per_class_recall" if mean_per_class else "acc1"]
    counts = {
        "train": len(train[1]),
        "validation": len(validation[1]),
        "test": len(test[1]),
        "classes": int(torch.cat([train[1], test[1]]).max()) + 1,
        "validation_split": validation_name,
        "scored_by": "mean_per_class_recall" if mean_per_class else "acc1",
        "features": args.features,
    }
    return metrics, counts


def few_shot_task(encoder: DualEncoder, args, cache: FeatureCache) -> tuple[dict, dict]:
    train = labelled_features(encoder, args, cache, args.train_split)
    test = labelled_features(encoder, args, cache, args.split)
    try:
        metrics = few_shot(train, test, args.episodes, args.ways, args.shots, args.queries, args.seed)
    except ValueError as error:
        raise DataError(str(error)) from None
    counts = {
        "train": len(train[1]),
        "test": len(test[1]),
        "ways": args.ways,
        "shots": args.shots,
        "queries": args.queries,
        "seed": args.seed,
        "features": args.features,
    }
    return metrics, counts


def mmvp(encoder: DualEncoder, args, cache: FeatureCache) -> tuple[dict, dict]:
    pairs = load_mmvp(args.dataset)
    correct = []
    for pair in tqdm(pairs, desc=f"{Path(encoder.name).name}: MMVP pairs", leave=False):
        pixel_values = encoder.processor.image_processor(list(pair.images), return_tensors="pt")["pixel_values"]
        texts = encoder.encode_text(["a photo of " + statement for statement in pair.statements])
        correct.append(mmvp_pair_correct(encoder.encode_images(pixel_values), texts))
    scores = mmvp_scores([pair.category for pair in pairs], correct)
    return scores, {"pairs": len(pairs), "categories": len(scores) - 1}


RUNNERS = {
    "zeroshot": zeroshot,
    "retrieval": retrieval,
    "linear_probe": linear_probe_task,
    "few_shot": few_shot_task,
    "mmvp": mmvp,
}


def markdown_table(records: list[dict]) -> str:
    """One row per model, one column per metric."""
    metrics = list(
        dict.fromkeys(
            key for record in records for key, value in record["metrics"].items() if isinstance(value, float)
        )
    )
    lines = ["| model | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for record in records:
        values = [record["metrics"].get(metric) for metric in metrics]
        lines.append(f"| {record['model']} | " + " | ".join("" if v is None else f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    cache = FeatureCache(args.cache_dir, enabled=not args.no_cache)
    records = []
    for name in args.model:
        encoder = DualEncoder(name, args.device, args.trust_remote_code)
        metrics, counts = RUNNERS[args.task](encoder, args, cache)
        records.append(
            {
                "model": name,
                "model_type": encoder.model.config.model_type,
                "dataset": args.dataset,
                "split": args.split,
                "task": args.task,
                "protocol": PROTOCOLS[args.task],
                "main_metric": "main" if "main" in metrics else MAIN_METRICS[args.task],
                "metrics": metrics,
                "counts": counts,
                "versions": {
                    "torch": torch.__version__,
                    "transformers": transformers.__version__,
                    "modeling_diffclip": modeling_diffclip.__version__,
                },
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )
    print(f"\n{args.task} on {args.dataset} ({args.split})\n")
    print(markdown_table(records))
    if args.output:
        atomic_write_text(args.output, json.dumps(records, indent=2))
    return records


if __name__ == "__main__":
    try:
        main()
    except (EvalError, DataError) as error:
        sys.exit(f"error: {error}")
