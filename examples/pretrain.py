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
from functools import partial

from accelerate.logging import get_logger
from accelerate.utils import set_seed

from diffclip_lab.core.cli import (
    ArgumentParser,
    area_fraction,
    beta,
    non_negative_float,
    positive_float,
    positive_int,
    run_main,
    setup_logging,
)
from diffclip_lab.core.publishing import check_can_push, describe_variant
from diffclip_lab.training import pretraining
from diffclip_lab.training.contrastive import cap_logit_scale, contrastive_step
from diffclip_lab.training.loop import finish, train
from diffclip_lab.training.pretraining import DEMO_TRAIN_EXAMPLES  # noqa: F401  (the demo's size, read by tests)
from diffclip_lab.training.recipes import PRETRAINING_RECIPES, apply_recipe
from diffclip_lab.training.runs import (
    BatchPlan,
    Run,
    add_run_arguments,
    check_run_arguments,
    make_accelerator,
    plain_options,
)
from modeling_diffclip.configuration_diffclip import VARIANTS


logger = get_logger(__name__)


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
        help="Hub dataset id or local path (see diffclip_lab/core/data.py); default: the captioned-shapes demo",
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


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.push_to_hub:  # before any work, not after it
        check_can_push(args.hub_model_id)
    setup_logging()
    accelerator = make_accelerator(args)
    set_seed(args.seed)
    model, processor = pretraining.build_model(args)
    config = model.config
    raw, *columns = pretraining.load_training_data(args, config.vision_config.image_size, accelerator)
    plan = BatchPlan.from_options(args, accelerator.num_processes, None if args.streaming else len(raw))
    data, loader = pretraining.training_loader(args, raw, columns, plan, processor, accelerator)
    eval_split = pretraining.load_eval_split(args, config.vision_config.image_size)
    fingerprint = pretraining.run_fingerprint(args, config, plan)
    run = Run(accelerator, args.output_dir, fingerprint, args.checkpoints_total_limit)
    resume_from = run.check(args.resume_from_checkpoint, args.overwrite)
    training = pretraining.prepare(args, model, data, loader, plan, run, resume_from, accelerator)
    run.record(vars(args), args.overwrite)  # the run folder's first file, now that training starts
    if accelerator.is_main_process:
        accelerator.init_trackers("diffclip-pretrain", config=plain_options(args))
    logger.info(
        f"Training {describe_variant(config)} ({args.init_from or args.model_config}) for {plan.max_steps} steps of "
        f"{plan.global_batch_size} image-text pairs on {plan.num_processes} process(es) ({accelerator.device}); "
        f"warm-up {plan.warmup_steps} steps."
    )
    model_inputs = partial(training.data.model_inputs, device=accelerator.device)  # pixels normalised on the device
    step = contrastive_step(accelerator, training.module, plan.gradient_accumulation_steps, model_inputs)
    train(
        accelerator,
        training,
        plan,
        run,
        step,
        description="pretrain",
        samples="images",
        logging_steps=args.logging_steps,
        checkpointing_steps=args.checkpointing_steps,
        after_step=lambda: cap_logit_scale(accelerator, accelerator.unwrap_model(training.module).model),
    )
    results = pretraining.run_results(args, training, plan, accelerator)
    save = pretraining.save_model(args, training, processor, plan, eval_split, run)
    finish(accelerator, training, run, args, results, save)
    accelerator.end_training()
    return results


if __name__ == "__main__":
    run_main(main)
