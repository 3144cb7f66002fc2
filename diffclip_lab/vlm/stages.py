# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
LLaVA-1.5's two training stages as runs of `examples/train_vlm.py`: a stage's options (the recipe's where the command
line left them unset), what it trains, its data loader, and the stage itself through the one training loop.
"""

import argparse
import os
from functools import partial

import torch
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, set_seed

from ..core.errors import UserError
from ..training.contrastive import parameter_groups
from ..training.loop import finish, train
from ..training.recipes import VLM_RECIPES, apply_recipe
from ..training.runs import BatchPlan, Run, make_accelerator, plain_options, prepare_training
from .composition import VLMForTraining, save_vlm, training_dtypes
from .conversations import (
    Conversation,
    ConversationDataset,
    ConversationEncoder,
    ModalityGroupedSampler,
    collate_conversations,
)


logger = get_logger(__name__)


def stage_options(args, stage: str) -> argparse.Namespace:
    """The options of one stage: the command line's, the recipe's for that stage where it left them unset."""
    options = argparse.Namespace(**vars(args))
    explicit = apply_recipe(options, VLM_RECIPES[args.recipe][stage])
    if {"per_device_batch_size", "global_batch_size"} <= explicit:
        raise UserError("give --per_device_batch_size or --global_batch_size, not both")
    if options.template == "plain" and stage != "align":
        raise UserError("--template plain is stage 1's (image and caption): the instruct stage uses --template chat")
    if args.recipe == "llava15" and torch.cuda.is_available():  # LLaVA's scripts: --bf16 --gradient_checkpointing
        options.mixed_precision = options.mixed_precision or "bf16"
        options.gradient_checkpointing = True
    if options.mixed_precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise UserError("--mixed_precision bf16: this GPU has no bfloat16; give --mixed_precision fp16 or no")
    precision = options.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")  # or the launch's
    if precision == "fp16" and not torch.cuda.is_available():  # Accelerate would silently compute in float32
        raise UserError("--mixed_precision fp16 has no effect without a GPU: give bf16 (which works on CPU) or no")
    return options


def check_lengths(options, model) -> None:
    """A length that cannot hold an image's tokens is refused before anything is written."""
    image_tokens = model.config.image_seq_length
    for name in ("max_length", "model_max_length"):
        value = getattr(options, name)
        if value is not None and value <= image_tokens:
            raise UserError(
                f"--{name} {value} cannot hold an image's {image_tokens} tokens and a text: give more than "
                f"{image_tokens}."
            )


def freeze(model, stage: str, unfreeze_vision: bool) -> int:
    """Train the projector (align), or projector and language model (instruct, and the vision tower if asked);
    returns the number of trainable parameters."""
    trained = {"align": ("multi_modal_projector",), "instruct": ("multi_modal_projector", "language_model", "lm_head")}
    trained = trained[stage] + (("vision_tower",) if stage == "instruct" and unfreeze_vision else ())
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(part in name for part in trained))
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def conversation_loader(options, data, conversations, plan: BatchPlan, pad_token_id: int):
    """Shuffled batches of a process, or LLaVA's batches of one modality (`--group_by_modality`)."""
    sampler = (
        ModalityGroupedSampler(conversations, plan.per_device_batch_size, plan.num_processes, options.seed)
        if options.group_by_modality
        else None
    )
    return torch.utils.data.DataLoader(
        data,
        batch_size=plan.per_device_batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=options.drop_last,
        collate_fn=partial(collate_conversations, pad_token_id=pad_token_id),
        num_workers=options.num_workers,
    )


def language_model_step(accelerator, module):
    """The step function of `diffclip_lab.training.loop.train` for a VLM: a micro-batch's loss over its answers'
    tokens, back-propagated; Accelerate's accumulation sums a step's micro-batches and synchronises at the last."""

    def step(batch: dict) -> tuple[torch.Tensor, dict]:
        with accelerator.accumulate(module):
            loss = module(**batch)
            accelerator.backward(loss)
        return loss, {}

    return step


def run_stage(options, stage: str, model, processor, conversations: list[Conversation], source: str) -> dict:
    """One stage, as its own run in `options.output_dir`: returns its results."""
    check_lengths(options, model)
    if options.template == "plain" and (text_only := next((c for c in conversations if c.image is None), None)):
        raise UserError(f"conversation {text_only.id!r} has no image: the plain template (stage 1) needs one")
    accelerator = make_accelerator(options)
    set_seed(options.seed)
    trainable = freeze(model, stage, options.unfreeze_vision)
    saved_dtype = model.dtype  # the folder's; trained in float32 master weights, saved back in it
    sharded = accelerator.distributed_type == DistributedType.FSDP
    if changed := training_dtypes(model, accelerator.mixed_precision, sharded):
        logger.info(f"Training in float32: {', '.join(changed)} (mixed precision: {accelerator.mixed_precision})")
    if options.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    encoder = ConversationEncoder(
        processor,
        model.config.image_seq_length,
        options.max_length,
        options.template,
        options.model_max_length,
        options.pad_to_square,
    )
    data = ConversationDataset(conversations, encoder)
    plan = BatchPlan.from_options(options, accelerator.num_processes, len(data))
    loader = conversation_loader(options, data, conversations, plan, processor.tokenizer.pad_token_id)
    fingerprint = stage_fingerprint(options, stage, plan, source)
    run = Run(accelerator, options.output_dir, fingerprint, options.checkpoints_total_limit)
    resume_from = run.check(options.resume_from_checkpoint, options.overwrite)
    optimizer = torch.optim.AdamW(parameter_groups(model, options.weight_decay), lr=options.learning_rate)
    run.record(vars(options), options.overwrite)  # the folder's first file, once nothing can refuse the run
    training = prepare_training(accelerator, run, VLMForTraining(model), optimizer, data, loader, plan, resume_from)
    if accelerator.is_main_process:
        accelerator.init_trackers(f"vlm-{stage}", config=plain_options(options))
    logger.info(
        f"Stage {stage}: {trainable:,} trainable parameters, {plan.max_steps} steps of {plan.global_batch_size} "
        f"conversations on {plan.num_processes} process(es); warm-up {plan.warmup_steps} steps."
    )
    loss = train(
        accelerator,
        training,
        plan,
        run,
        language_model_step(accelerator, training.module),
        description=stage,
        samples="conversations",
        logging_steps=options.logging_steps,
        checkpointing_steps=options.checkpointing_steps,
    )
    results = {
        "stage": stage,
        "global_step": training.state.global_step,
        "num_processes": plan.num_processes,
        "global_batch_size": plan.global_batch_size,
        "final_loss": loss,
        "seed": options.seed,
    }

    def save(state_dict: dict) -> None:
        """The model in the folder's dtype, with its processor and card."""
        state_dict = {name: t.to(saved_dtype) if t.is_floating_point() else t for name, t in state_dict.items()}
        trained = accelerator.unwrap_model(training.module).model
        if not sharded:
            trained.to(saved_dtype)  # save_pretrained records the dtype of the parameters in the config
        provenance = (
            f"Trained from `{source}` with `examples/train_vlm.py --stage {stage}` ({options.recipe} recipe) on "
            f"{options.dataset or 'the demo conversations about scenes of shapes'} for {training.state.global_step} "
            f"steps of {plan.global_batch_size} conversations"
            + ("; the vision tower trained too." if stage == "instruct" and options.unfreeze_vision else ".")
        )
        save_vlm(trained, processor, run.output_dir / "model", provenance, overwrite=True, state_dict=state_dict)

    finish(accelerator, training, run, options, results, save)
    accelerator.end_training()
    return results


def stage_fingerprint(options, stage: str, plan: BatchPlan, source: str) -> dict:
    """What makes a stage's run the same run (`Run`): a checkpoint of another is refused."""
    return {
        "model": source,
        "stage": stage,
        "dataset": options.dataset,
        "unfreeze_vision": options.unfreeze_vision,
        "global_batch_size": plan.global_batch_size,
        "seed": options.seed,
        "max_steps": plan.max_steps,
        "learning_rate": options.learning_rate,
        "template": options.template,
        "model_max_length": options.model_max_length,
        "group_by_modality": options.group_by_modality,
        "pad_to_square": options.pad_to_square,
    }
