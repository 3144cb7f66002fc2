# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The parts of `examples/pretrain.py` a run is made of: the model to train, its data and loader, the optimizer and
training forward, the held-out split of the final zero-shot evaluation, and the saved model with its card and
results.
"""

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel, DiffCLIPProcessor

from ..core.cli import path_or_repo_id
from ..core.data import (
    ImageTransform,
    image_text_loader,
    load_image_text_dataset,
    resolve_columns,
    without_image_decoding,
)
from ..core.errors import UserError
from ..core.loading import load_diffclip
from ..core.publishing import describe_variant, model_card
from ..demo import shapes
from ..evaluation.datasets import EvalSplit, load_split, split_from_dataset
from ..evaluation.tasks import DualEncoder, EvalOptions, FeatureCache, zero_shot
from .contrastive import DualEncoderForTraining, parameter_groups
from .recipes import MODEL_CONFIGS
from .runs import BatchPlan, Run, Training, prepare_training


logger = get_logger(__name__)
DEMO_TRAIN_EXAMPLES, DEMO_TEST_EXAMPLES = 20_000, 1_000


def build_model(args) -> tuple[DiffCLIPModel, DiffCLIPProcessor]:
    """A saved DiffCLIP (`--init_from`), or a new one of a named size or config.json with the variant's attention."""
    if args.init_from:
        return load_diffclip(path_or_repo_id(args.init_from, "--init_from"), "--init_from", args.variant)
    if args.model_config in MODEL_CONFIGS:
        config = DiffCLIPConfig(**MODEL_CONFIGS[args.model_config])
    elif Path(args.model_config).is_file():
        config = DiffCLIPConfig.from_json_file(args.model_config)
    else:
        raise UserError(f"--model_config {args.model_config!r}: not one of {list(MODEL_CONFIGS)} nor a config file.")
    config = config.with_variant(args.variant or "diffclip")
    processor = DiffCLIPProcessor.from_defaults(
        image_size=config.vision_config.image_size, context_length=config.text_config.max_position_embeddings
    )
    return DiffCLIPModel(config), processor


def model_variant(config: DiffCLIPConfig) -> str:
    return config.variant or "custom"


def run_fingerprint(args, config: DiffCLIPConfig, plan: BatchPlan) -> dict:
    """What makes a run the same run (`Run`): a checkpoint of another is refused."""
    return {
        "model_config": config.to_diff_dict(),
        "variant": model_variant(config),
        "dataset": args.dataset,
        "global_batch_size": plan.global_batch_size,
        "seed": args.seed,
        "max_steps": plan.max_steps,
        "learning_rate": args.learning_rate,
    }


def run_results(args, training: Training, plan: BatchPlan, accelerator: Accelerator) -> dict:
    """`eval_results.json`'s account of the run (the evaluation and the options added when saving)."""
    return {
        "global_step": training.state.global_step,
        "num_processes": plan.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "global_batch_size": plan.global_batch_size,
        "variant": model_variant(accelerator.unwrap_model(training.module).model.config),
        "images_seen": training.state.images_seen,
        "skipped_samples": training.state.skipped,
        "seed": args.seed,
    }


def load_training_data(args, image_size: int, accelerator: Accelerator):
    """The raw training examples (images undecoded), their image and caption columns, and their count (a stream:
    None)."""
    if args.dataset is None:
        with accelerator.main_process_first():  # one process renders and caches the demo data, the others read it
            raw = shapes.load_shapes("train", DEMO_TRAIN_EXAMPLES, image_size=image_size)
    else:
        raw = load_image_text_dataset(args.dataset, split=args.dataset_split, streaming=args.streaming)
    image_column, caption_column = resolve_columns(raw, args.image_column, args.caption_column)
    return without_image_decoding(raw, image_column), image_column, caption_column


def training_loader(args, raw, columns, plan: BatchPlan, processor, accelerator: Accelerator):
    """The dataset the loop sets the epoch of, and its loader: decoding, augmentation and tokenization in workers."""
    return image_text_loader(
        raw,
        *columns,
        ImageTransform.for_processor(processor.image_processor, args.crop_scale),
        processor.tokenizer,
        plan.per_device_batch_size,
        args.num_workers,
        seed=args.seed,
        shuffle_buffer=args.shuffle_buffer,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        pin_memory=accelerator.device.type == "cuda",
    )


def load_eval_split(args, image_size: int) -> EvalSplit | None:
    """The held-out split of the final zero-shot evaluation: the demo's test shapes, or `--eval_dataset` in any
    layout `examples/evaluate.py` reads; None when training on a dataset without one."""
    if args.eval_dataset is not None:
        split = load_split(args.eval_dataset, args.eval_split, args.eval_label_column)
    elif args.dataset is None:
        dataset = shapes.load_shapes("test", DEMO_TEST_EXAMPLES, image_size=image_size)
        split = split_from_dataset(dataset, "captioned shapes:test")
        split.templates = list(shapes.ZEROSHOT_TEMPLATES)
    else:
        return None
    split.templates = args.eval_template or split.templates
    split.require_labels()
    return split


def prepare(args, model, data, loader, plan: BatchPlan, run: Run, resume_from, accelerator) -> Training:
    """Optimizer and the training forward, prepared by Accelerate with the schedule; the state restored when
    resuming."""
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    optimizer = torch.optim.AdamW(
        parameter_groups(model, args.weight_decay),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    trainer = DualEncoderForTraining(model)
    if args.torch_compile:
        trainer = torch.compile(trainer)
    # a stream's shards are split across processes already: its loader is not to be split again
    split = not args.streaming
    return prepare_training(accelerator, run, trainer, optimizer, data, loader, plan, resume_from, split)


def save_model(args, training: Training, processor, plan: BatchPlan, eval_split: EvalSplit | None, run: Run):
    """`loop.finish`'s `save_model`: the model with its processor and card in `run.output_dir / "model"`, evaluated
    zero-shot from the saved weights (right under any sharding) before the folder is complete; returns the
    evaluation's results."""
    accelerator = run.accelerator
    model = accelerator.unwrap_model(training.module).model

    def save(state_dict: dict) -> dict:
        results = {}
        with run.model_folder() as staging:
            model.save_pretrained(staging, state_dict=state_dict)
            processor.save_pretrained(staging)
            if eval_split is not None:
                results = evaluate_saved_model(staging, eval_split, plan.per_device_batch_size, accelerator)
            start = f"Fine-tuned from `{args.init_from}`" if args.init_from else "Pretrained from scratch"
            provenance = (
                f"{start} with `examples/pretrain.py` ({args.recipe} recipe) on "
                f"{args.dataset or 'the captioned-shapes demo dataset'} for {training.state.global_step} steps of "
                f"{plan.global_batch_size} pairs."
            )
            metrics = {k: results[k] for k in ("zeroshot_top1", "zeroshot_top5") if k in results}
            title = f"{describe_variant(model.config)} trained with examples/pretrain.py"
            (staging / "README.md").write_text(model_card(model.config, title, provenance, results=metrics))
        return results

    return save


def evaluate_saved_model(folder: Path, eval_split: EvalSplit, batch_size: int, accelerator) -> dict:
    """Zero-shot top-1/top-5 accuracy and mean per-class recall of the model saved in `folder`."""
    encoder = DualEncoder(
        DiffCLIPModel.from_pretrained(folder).to(accelerator.device),
        DiffCLIPProcessor.from_pretrained(folder),
        "model",
    )
    options = EvalOptions(dataset=eval_split.name, batch_size=batch_size)
    metrics, counts = zero_shot(encoder, eval_split, options, FeatureCache(None))
    logger.info(
        f"Zero-shot top-1 on the held-out split: {metrics['acc1']:.1%} ({counts['classes']} classes, chance "
        f"{1 / counts['classes']:.1%})"
    )
    return {
        "zeroshot_top1": metrics["acc1"],
        "zeroshot_top5": metrics["acc5"],
        "zeroshot_mean_per_class_recall": metrics["mean_per_class_recall"],
        "num_classes": counts["classes"],
        "num_eval_examples": counts["images"],
    }
