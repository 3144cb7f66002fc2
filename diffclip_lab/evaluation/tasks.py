# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The DiffCLIP paper's evaluations of a dual encoder, the same way for every model: features computed in batches and
cached on disk, then scored by the protocols of `protocols.py`.

Models: anything `AutoModel` and `AutoProcessor` load as a dual encoder (`get_image_features`/`get_text_features`):
DiffCLIP and its ablations, Transformers CLIP, SigLIP. Datasets: the layouts of `eval_data.py`.
"""

import hashlib
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.utils import cached_file

from ..core.cli import non_negative_int, positive_int, random_seed
from ..core.errors import UserError
from ..core.files import atomic_file
from ..core.formatting import markdown_table
from ..core.loading import load_pretrained
from ..core.provenance import provenance
from .datasets import EvalSplit, load_mmvp, load_split
from .protocols import (
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


@dataclass(frozen=True)
class EvalOptions:
    """How a task reads its dataset and scores it; the defaults are the protocols'."""

    dataset: str
    split: str = "test"
    train_split: str = "train"
    validation_split: str | None = None
    label_column: str = "label"
    caption_column: str | None = None
    classnames: str | None = None
    templates: str | None = None
    features: str = "pooled"
    mean_per_class: bool = False
    max_iter: int = 1000
    episodes: int = 5000
    ways: int = 5
    shots: int = 5
    queries: int = 6
    seed: int = 0
    batch_size: int = 64
    num_workers: int = 0


# evaluate.py's option for each `EvalOptions` field: how the command line gives it (the checked type) and what it does;
# the default is the field's unless given here
EVAL_OPTION_ARGUMENTS = {
    "split": {"help": "the split scored (zeroshot, retrieval) or tested (linear_probe, few_shot)"},
    "train_split": {"help": "the linear probe's and few-shot's training split"},
    "validation_split": {"help": "linear_probe validation split (default: the dataset's, else 20%% of train)"},
    "label_column": {},
    "caption_column": {},
    "classnames": {"help": "a file of class names, one per line (default: the dataset's)"},
    "templates": {"help": "a file of zero-shot templates with {c}, one per line (default: the dataset's)"},
    "features": {
        "choices": ["pooled", "projected"],
        "help": "linear_probe / few_shot features: the vision tower's pooled output, or the projected embedding",
    },
    "mean_per_class": {
        "action": "store_true",
        "help": "score the linear probe by mean per-class accuracy (automatic for Aircraft, Pets, Caltech-101, "
        "Flowers)",
    },
    "max_iter": {"type": positive_int, "help": "L-BFGS iterations per linear-probe fit"},
    "episodes": {"type": positive_int, "help": "few-shot episodes per evaluation"},
    "ways": {"type": positive_int, "help": "classes per few-shot episode (at least 2)"},
    "shots": {"type": positive_int},
    "queries": {"type": positive_int, "help": "test images per class and episode (all if fewer)"},
    "seed": {"type": random_seed},
    "batch_size": {"type": positive_int},
    # image decoding workers; they are forked, which only Linux does by default
    "num_workers": {"type": non_negative_int, "default": 2 if sys.platform == "linux" else 0},
}


def add_eval_options(parser, names=tuple(EVAL_OPTION_ARGUMENTS)) -> None:
    """Adds the evaluation options `names` (`EvalOptions` fields; all by default) to `parser`, as `--name` with
    their checked types and the protocols' defaults: evaluate.py takes them all, the study those it sets."""
    defaults = {field.name: field.default for field in fields(EvalOptions)}
    for name in names:
        parser.add_argument(f"--{name}", **{"default": defaults[name], **EVAL_OPTION_ARGUMENTS[name]})


class DualEncoder:
    """A model and its processor, with the calls every protocol needs, and a fingerprint of its weights."""

    def __init__(self, model, processor, name: str, fingerprint: str | None = None, label: str | None = None):
        if not all(hasattr(model, method) for method in ("get_image_features", "get_text_features")):
            raise UserError(
                f"{name} ({type(model).__name__}) is not a dual encoder: it has no "
                "get_image_features/get_text_features. The evaluations score CLIP-like models."
            )
        self.model, self.processor, self.name, self.fingerprint = model.eval(), processor, name, fingerprint
        self.label = label or name  # what progress bars call it
        self.device = model.device
        tokenizer = processor.tokenizer
        self.context_length = tokenizer.model_max_length if tokenizer.model_max_length < 10_000 else None

    @classmethod
    def from_pretrained(
        cls, name: str, device: str, trust_remote_code: bool = False, label: str | None = None
    ) -> "DualEncoder":
        model, processor = load_pretrained(name, trust_remote_code)
        return cls(model.to(device), processor, name, weights_fingerprint(name), label)

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
        """(images, dim): the projected embeddings, or with `kind="pooled"` the vision tower's pooled output."""
        pixel_values = pixel_values.to(self.device, self.model.dtype)
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
    """Features on disk, keyed by everything they depend on, written atomically; `directory=None` keeps nothing."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = None if directory is None else Path(directory)

    def get_or_compute(self, key: dict, compute):
        if self.directory is None or key.get("model") is None:  # no cache, or a model without a fingerprint
            return compute()
        path = self.directory / (hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest() + ".pt")
        if path.is_file():
            return torch.load(path)
        value = compute()
        with atomic_file(path) as staging:
            torch.save(value, staging)
        return value


def image_features(
    encoder: DualEncoder, data: EvalSplit, options: EvalOptions, cache: FeatureCache, kind: str
) -> torch.Tensor:
    """(images, dim) features of a split, computed in batches with a progress bar, or read from the cache."""
    key = {
        "model": encoder.fingerprint,
        "dtype": str(encoder.model.dtype),
        "images": data.fingerprint,
        "kind": kind,
        "image_processor": encoder.processor.image_processor.to_json_string(),
    }

    def preprocess(indices: list[int]) -> torch.Tensor:
        return encoder.processor.image_processor([data.images[i] for i in indices], return_tensors="pt")[
            "pixel_values"
        ]

    def compute():
        loader = torch.utils.data.DataLoader(
            range(len(data.images)),
            batch_size=options.batch_size,
            num_workers=options.num_workers,
            collate_fn=preprocess,
        )
        features = []
        for pixel_values in tqdm(loader, desc=f"{encoder.label}: {data.name} images", leave=False):
            features.append(encoder.encode_images(pixel_values, kind))
        return torch.cat(features)

    return cache.get_or_compute(key, compute)


def text_features(encoder: DualEncoder, texts: list[str], options: EvalOptions, cache: FeatureCache) -> torch.Tensor:
    """(texts, dim) embeddings, computed in batches or read from the cache."""
    key = {
        "model": encoder.fingerprint,
        "dtype": str(encoder.model.dtype),
        "texts": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
        "context_length": encoder.context_length,
    }

    def compute():
        batches = range(0, len(texts), options.batch_size)
        return torch.cat(
            [
                encoder.encode_text(texts[i : i + options.batch_size])
                for i in tqdm(batches, desc=f"{encoder.label}: texts", leave=False)
            ]
        )

    return cache.get_or_compute(key, compute)


def zero_shot(encoder: DualEncoder, data: EvalSplit, options: EvalOptions, cache: FeatureCache) -> tuple[dict, dict]:
    """Zero-shot classification of a labelled split by its class names and templates: metrics and counts."""
    labels = torch.tensor(data.require_labels())
    if not data.classnames:
        raise UserError(f"{data.name} has no class names: give --classnames FILE (one name per line).")
    if int(labels.max()) >= len(data.classnames):
        raise UserError(f"labels go up to {int(labels.max())} but there are {len(data.classnames)} class names.")
    prompts = zero_shot_prompts(data.classnames, data.templates)
    classifier = zero_shot_weights(text_features(encoder, prompts, options, cache), len(data.classnames))
    images = F.normalize(image_features(encoder, data, options, cache, "projected"), dim=-1)
    metrics = classification_metrics(images @ classifier.T, labels)
    return metrics, {"images": len(labels), "classes": len(data.classnames), "templates": len(data.templates)}


def zeroshot_task(encoder: DualEncoder, options: EvalOptions, cache: FeatureCache) -> tuple[dict, dict]:
    data = load_split(
        options.dataset,
        options.split,
        options.label_column,
        options.caption_column,
        options.classnames,
        options.templates,
    )
    return zero_shot(encoder, data, options, cache)


def retrieval_task(encoder: DualEncoder, options: EvalOptions, cache: FeatureCache) -> tuple[dict, dict]:
    data = load_split(options.dataset, options.split, options.label_column, options.caption_column)
    captions = data.require_captions()
    texts = [caption for image_captions in captions for caption in image_captions]
    text_to_image = torch.tensor([image for image, image_captions in enumerate(captions) for _ in image_captions])
    if not texts:
        raise UserError(f"{data.name} has no captions to retrieve with.")
    metrics = retrieval_metrics(
        text_features(encoder, texts, options, cache),
        image_features(encoder, data, options, cache, "projected"),
        text_to_image,
    )
    counts = {
        "images": len(captions),  # the gallery text→image recall searches
        "image_queries": sum(1 for image_captions in captions if image_captions),  # image→text recall's images
        "captions": len(texts),
        "skipped_captions": data.skipped_captions,
    }
    return metrics, counts


def labelled_features(encoder, options: EvalOptions, cache, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_split(options.dataset, split, options.label_column)
    labels = torch.tensor(data.require_labels())  # before encoding: a split without labels costs nothing
    return image_features(encoder, data, options, cache, options.features), labels


def train_validation_features(encoder, options: EvalOptions, cache):
    """The training split and a validation split: the dataset's own, or a stratified 20% of train."""
    train = labelled_features(encoder, options, cache, options.train_split)
    if options.validation_split:
        return train, labelled_features(encoder, options, cache, options.validation_split), options.validation_split
    for split in VALIDATION_SPLITS:
        try:
            return train, labelled_features(encoder, options, cache, split), split
        except UserError:
            pass
    fit, held_out = split_train_validation(train[1].tolist())
    if not held_out:
        raise UserError(
            f"{options.dataset}:{options.train_split} has too few images per class for a validation share (20 % of "
            "each class, so at least 5 per class): give more, or a --validation_split."
        )
    return (train[0][fit], train[1][fit]), (train[0][held_out], train[1][held_out]), f"20% of {options.train_split}"


def linear_probe_task(encoder: DualEncoder, options: EvalOptions, cache: FeatureCache) -> tuple[dict, dict]:
    train, validation, validation_name = train_validation_features(encoder, options, cache)
    test = labelled_features(encoder, options, cache, options.split)
    mean_per_class = options.mean_per_class or any(name in options.dataset.lower() for name in MEAN_PER_CLASS_DATASETS)
    progress = tqdm(desc=f"{encoder.label}: cost sweep", unit="fit", leave=False)
    metrics = linear_probe(
        train, validation, test, options.max_iter, mean_per_class, on_fit=lambda cost, score: progress.update(1)
    )
    progress.close()
    counts = {
        "train": len(train[1]),
        "validation": len(validation[1]),
        "test": len(test[1]),
        "classes": int(torch.cat([train[1], test[1]]).max()) + 1,
        "validation_split": validation_name,
        "scored_by": "mean_per_class_recall" if mean_per_class else "acc1",
        "features": options.features,
    }
    return metrics, counts


def few_shot_task(encoder: DualEncoder, options: EvalOptions, cache: FeatureCache) -> tuple[dict, dict]:
    train = labelled_features(encoder, options, cache, options.train_split)
    test = labelled_features(encoder, options, cache, options.split)
    try:
        metrics = few_shot(train, test, options.episodes, options.ways, options.shots, options.queries, options.seed)
    except ValueError as error:
        raise UserError(str(error)) from None
    # a class with fewer test images than --queries is queried with all of them: record what was used
    used = sorted({min(options.queries, int((test[1] == c).sum())) for c in train[1].unique().tolist()})
    counts = {
        "train": len(train[1]),
        "test": len(test[1]),
        "ways": options.ways,
        "shots": options.shots,
        "queries": used[0] if len(used) == 1 else {"min": used[0], "max": used[-1]},
        **({"queries_asked": options.queries} if used != [options.queries] else {}),
        "seed": options.seed,
        "features": options.features,
    }
    return metrics, counts


def mmvp_task(encoder: DualEncoder, options: EvalOptions, cache: FeatureCache) -> tuple[dict, dict]:
    pairs = load_mmvp(options.dataset)
    correct = []
    for pair in tqdm(pairs, desc=f"{encoder.label}: MMVP pairs", leave=False):
        pixel_values = encoder.processor.image_processor(list(pair.images), return_tensors="pt")["pixel_values"]
        texts = encoder.encode_text(["a photo of " + statement for statement in pair.statements])
        correct.append(mmvp_pair_correct(encoder.encode_images(pixel_values), texts))
    scores = mmvp_scores([pair.category for pair in pairs], correct)
    return scores, {"pairs": len(pairs), "categories": len(scores) - 1}


RUNNERS = {
    "zeroshot": zeroshot_task,
    "retrieval": retrieval_task,
    "linear_probe": linear_probe_task,
    "few_shot": few_shot_task,
    "mmvp": mmvp_task,
}


def evaluate(encoder: DualEncoder, task: str, options: EvalOptions, cache: FeatureCache) -> dict:
    """One result record: the model, the data, the protocol, the metrics and what they were computed on."""
    metrics, counts = RUNNERS[task](encoder, options, cache)
    return {
        "model": encoder.name,
        "model_type": encoder.model.config.model_type,
        "dataset": options.dataset,
        "split": options.split,
        "task": task,
        "protocol": PROTOCOLS[task],
        "main_metric": counts.get("scored_by", MAIN_METRICS[task]),
        "metrics": metrics,
        "counts": counts,
        **provenance(),
    }


def results_table(records: list[dict]) -> str:
    """One row per model, one column per metric."""
    metrics = list(
        dict.fromkeys(
            key for record in records for key, value in record["metrics"].items() if isinstance(value, float)
        )
    )
    rows = [[record["model"], *(record["metrics"].get(metric) for metric in metrics)] for record in records]
    return markdown_table(["model", *metrics], rows)
