"""Pretrain CLIP, DiffCLIP and the paper's ablations with 🤗 Accelerate, on one CPU or many GPUs.

    accelerate launch examples/pretrain.py            # the demo: captioned shapes, a few minutes on a 2-core CPU
    accelerate launch examples/pretrain.py --recipe paper --dataset pixparse/cc3m-wds --streaming --max_steps 28000
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 examples/pretrain.py   # 2 CPU processes

The contrastive loss is computed over the global batch: every process gathers the features of all the others, with
gradients, so N processes with per-device batch B train exactly as one process with batch N·B; with
--gradient_accumulation_steps K, each of the K micro-batches of a step too (exact accumulation, one more forward pass
per micro-batch: see `diffclip_lab.training.contrastive.accumulated_step`).
"""

import argparse
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from diffclip_lab.core.cli import (
    ArgumentParser,
    area_fraction,
    beta,
    non_negative_float,
    path_or_repo_id,
    positive_float,
    positive_int,
    run_main,
    setup_logging,
)
from diffclip_lab.core.errors import UserError
from diffclip_lab.core.loading import load_diffclip
from diffclip_lab.core.publishing import check_can_push, describe_variant, model_card
from diffclip_lab.demo import shapes
from diffclip_lab.evaluation.datasets import EvalSplit, load_split, split_from_dataset
from diffclip_lab.evaluation.tasks import DualEncoder, EvalOptions, FeatureCache, zero_shot
from diffclip_lab.training.contrastive import (
    DualEncoderForTraining,
    accumulated_step,
    cap_logit_scale,
    contrastive_loss,
    parameter_groups,
)
from diffclip_lab.training.data import (
    ImageTransform,
    image_text_loader,
    load_image_text_dataset,
    resolve_columns,
    without_image_decoding,
)
from diffclip_lab.training.recipes import MODEL_CONFIGS, PRETRAINING_RECIPES, apply_recipe
from diffclip_lab.training.runs import (
    BatchPlan,
    Run,
    Training,
    add_run_arguments,
    batches,
    check_finite,
    check_run_arguments,
    make_accelerator,
    plain_options,
    prepare_training,
)
from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel, DiffCLIPProcessor
from modeling_diffclip.configuration_diffclip import VARIANTS


logger = get_logger(__name__)
DEMO_TRAIN_EXAMPLES, DEMO_TEST_EXAMPLES = 20_000, 1_000
SKIPS_LOGGED = 10  # samples skipped that each process names in the log; the progress bar counts them all


def parse_args(argv=None):
    # named, so that the study's check of the options it passes on (examples/study.py) names this script too
    parser = ArgumentParser(
        prog="pretrain.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--output_dir", default="outputs/diffclip-shapes", help="where checkpoints, the model and results go")
    add("--recipe", choices=list(PRETRAINING_RECIPES), default="demo", help="defaults for the options left unset")
    add("--variant", choices=list(VARIANTS), help="default: diffclip, or with --init_from the model's own")
    add("--model_config", help="tiny, vit-b-16, or a path to a DiffCLIP config.json (recipe default)")
    add("--init_from", help="start from the weights of a saved DiffCLIP folder (e.g. from convert_clip_to_diffclip)")
    add(
        "--dataset",
        help="Hub dataset id or local path (see diffclip_lab/training/data.py); default: the captioned-shapes demo",
    )
    add("--dataset_split", default="train")
    add("--image_column", help="default: the first of image, jpg, jpeg, png, webp, img")
    add("--caption_column", help="default: the first of caption, text, txt, sentence, sentences")
    add("--streaming", action="store_true", help="stream the dataset (needs --max_steps)")
    add("--shuffle_buffer", type=positive_int, default=10_000, help="shuffle buffer of a streamed dataset")
    add(
        "--eval_dataset",
        help="held-out classification data for the final zero-shot evaluation, in any layout evaluate.py reads",
    )
    add("--eval_split", default="test")
    add(
        "--eval_label_column", default="label", help="label column of a datasets layout (ClassLabel names the classes)"
    )
    add("--eval_template", action="append", help="zero-shot prompt with {c} (repeatable; default 'a photo of a {c}.')")
    add("--warmup_epochs", type=non_negative_float, help="warm-up in epochs (overrides --warmup_ratio)")
    add("--adam_beta1", type=beta, default=0.9)
    add("--adam_beta2", type=beta, default=0.98)
    add("--adam_epsilon", type=positive_float)
    add("--crop_scale", type=area_fraction, help="random crops of this share of the area or more; 1 = centre crop")
    add("--torch_compile", action="store_true")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    explicit = apply_recipe(args, PRETRAINING_RECIPES[args.recipe])
    if {"per_device_batch_size", "global_batch_size"} <= explicit:
        parser.error("give --per_device_batch_size or --global_batch_size, not both")
    check_run_arguments(parser, args)
    return args


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


def train(args, training: Training, plan: BatchPlan, run: Run, accelerator: Accelerator) -> None:
    """The loop: micro-batches until `plan.max_steps` optimizer steps, logging and checkpointing."""
    state = training.state
    progress = tqdm(total=plan.max_steps, initial=state.global_step, disable=not accelerator.is_local_main_process)
    progress.set_description("pretrain")
    images_at_start, clock = state.images_seen, time.perf_counter()
    skipped_in_step = skips_logged = 0
    micro_batches = []  # of the optimizer step under way, with gradient accumulation

    def model_inputs(batch: dict) -> dict:
        return training.data.model_inputs(batch, accelerator.device)  # pixels normalised on the device

    training.module.train()
    for batch in batches(accelerator, training.loader, training.data, state):
        for sample in batch.pop("skipped")[: max(0, SKIPS_LOGGED - skips_logged)]:
            logger.warning(f"Skipped sample {sample}", main_process_only=False)
            skips_logged += 1
        skipped_in_step += accelerator.reduce(batch.pop("num_skipped"), reduction="sum").item()
        if plan.gradient_accumulation_steps == 1:
            with accelerator.accumulate(training.module):
                image, text, logit_scale, lambdas = training.module(**model_inputs(batch))
                loss = contrastive_loss(image, text, logit_scale)
                accelerator.backward(loss)
        else:  # the whole global batch as negatives (never checkpointed between the micro-batches of a step)
            micro_batches.append(batch)
            if len(micro_batches) < plan.gradient_accumulation_steps:
                continue
            loss, logit_scale, lambdas = accumulated_step(accelerator, training.module, micro_batches, model_inputs)
            micro_batches = []
        check_finite(accelerator, loss, training.module, state, run.output_dir)
        training.optimizer.step()
        training.optimizer.zero_grad()
        training.scheduler.step()
        cap_logit_scale(accelerator, accelerator.unwrap_model(training.module).model)
        state.global_step += 1
        state.skipped += skipped_in_step
        state.images_seen += plan.global_batch_size - skipped_in_step
        progress.update(1)
        if skipped_in_step:
            progress.set_postfix(skipped=state.skipped)
        skipped_in_step = 0
        if run.is_logging_step(state, plan, args.logging_steps):
            throughput = (state.images_seen - images_at_start) / (time.perf_counter() - clock)
            progress.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{throughput:.0f}", skipped=state.skipped)
            logs = {
                "loss": loss.item(),
                "learning_rate": training.scheduler.get_last_lr()[0],
                "logit_scale": logit_scale.item(),
                "images_per_second": throughput,
                "images_seen": state.images_seen,
                "skipped_samples": state.skipped,
                "epoch": state.epoch,
            }
            run.log({**logs, **{f"lambda/{name}": value.item() for name, value in lambdas.items()}}, state.global_step)
        if run.end_step(state, plan, args.checkpointing_steps):
            break
    progress.close()


def finish(args, training: Training, processor, plan: BatchPlan, eval_split, run: Run, accelerator) -> dict:
    """Save the final model with its processor and card, evaluate it zero-shot from the saved weights (right under
    any sharding), and write `eval_results.json`; push when asked."""
    state = training.state
    results = {
        "global_step": state.global_step,
        "num_processes": plan.num_processes,
        "distributed_type": str(accelerator.distributed_type.value),
        "global_batch_size": plan.global_batch_size,
        "variant": model_variant(accelerator.unwrap_model(training.module).model.config),
        "images_seen": state.images_seen,
        "skipped_samples": state.skipped,
        "seed": args.seed,
    }
    state_dict = accelerator.get_state_dict(training.module)
    if accelerator.is_main_process:
        state_dict = {key.removeprefix("_orig_mod.").removeprefix("model."): v for key, v in state_dict.items()}
        model = accelerator.unwrap_model(training.module).model
        with run.model_folder() as staging:
            model.save_pretrained(staging, state_dict=state_dict)
            processor.save_pretrained(staging)
            if eval_split is not None:
                results.update(evaluate_saved_model(staging, eval_split, plan.per_device_batch_size, accelerator))
            start = f"Fine-tuned from `{args.init_from}`" if args.init_from else "Pretrained from scratch"
            provenance = (
                f"{start} with `examples/pretrain.py` ({args.recipe} recipe) on "
                f"{args.dataset or 'the captioned-shapes demo dataset'} for {state.global_step} steps of "
                f"{plan.global_batch_size} pairs."
            )
            metrics = {k: results[k] for k in ("zeroshot_top1", "zeroshot_top5") if k in results}
            title = f"{describe_variant(model.config)} trained with examples/pretrain.py"
            card = model_card(model.config, title, provenance, results=metrics)
            (staging / "README.md").write_text(card)
        results["args"] = plain_options(args, with_none=True)
        path = run.write_results(results)
        logger.info(f"Saved the model to {run.output_dir / 'model'} and the results to {path}")
    if args.push_to_hub:
        run.push(args.hub_model_id, args.hub_private)
    accelerator.wait_for_everyone()
    return results


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


def model_variant(config: DiffCLIPConfig) -> str:
    return config.variant or "custom"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.push_to_hub:  # before any work, not after it
        check_can_push(args.hub_model_id)
    setup_logging()
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    model, processor = build_model(args)
    config = model.config
    raw, *columns = load_training_data(args, config.vision_config.image_size, accelerator)
    plan = BatchPlan.from_options(args, accelerator.num_processes, None if args.streaming else len(raw))
    data, loader = training_loader(args, raw, columns, plan, processor, accelerator)
    eval_split = load_eval_split(args, config.vision_config.image_size)
    fingerprint = {
        "model_config": config.to_diff_dict(),
        "variant": model_variant(config),
        "dataset": args.dataset,
        "global_batch_size": plan.global_batch_size,
        "seed": args.seed,
        "max_steps": plan.max_steps,
        "learning_rate": args.learning_rate,
    }
    run = Run(accelerator, args.output_dir, fingerprint, args.checkpoints_total_limit)
    resume_from = run.check(args.resume_from_checkpoint, args.overwrite)
    training = prepare(args, model, data, loader, plan, run, resume_from, accelerator)
    run.record(vars(args), args.overwrite)  # the run folder's first file, now that training starts
    if accelerator.is_main_process:
        accelerator.init_trackers("diffclip-pretrain", config=plain_options(args))
    logger.info(
        f"Training {describe_variant(config)} ({args.init_from or args.model_config}) for {plan.max_steps} steps of "
        f"{plan.global_batch_size} image-text pairs on {plan.num_processes} process(es) ({accelerator.device}); "
        f"warm-up {plan.warmup_steps} steps."
    )
    train(args, training, plan, run, accelerator)
    results = finish(args, training, processor, plan, eval_split, run, accelerator)
    accelerator.end_training()
    return results


if __name__ == "__main__":
    run_main(main)
