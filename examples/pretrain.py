"""Pretrain CLIP, DiffCLIP and the paper's ablations with 🤗 Accelerate, on one CPU or many GPUs.

    accelerate launch examples/pretrain.py            # the demo: captioned shapes, a few minutes on a 2-core CPU
    accelerate launch examples/pretrain.py --recipe paper --dataset pixparse/cc3m-wds --streaming --max_steps 28000
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 examples/pretrain.py   # 2 CPU processes

The contrastive loss is computed over the global batch: every process gathers the features of all the others, with
gradients, so N processes with per-device batch B train exactly as one process with batch N·B.
"""

import argparse
import json
import math
import os
import re
import shutil
import time
from pathlib import Path

import datasets
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from datasets.distributed import split_dataset_by_node
from image_text_data import (
    IMAGE_COLUMNS,
    Collator,
    DataError,
    ExampleEncoder,
    ImageTransform,
    MapStyleImageText,
    StreamingImageText,
    decode_image,
    find_column,
    load_image_text_dataset,
    resolve_columns,
    without_image_decoding,
)
from protocols import classification_metrics, zero_shot_prompts, zero_shot_weights
from shapes import CLASSNAMES as SHAPE_CLASSNAMES
from shapes import ZEROSHOT_TEMPLATES as SHAPE_TEMPLATES
from shapes import load_shapes
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from modeling_diffclip import DiffCLIPAttention, DiffCLIPConfig, DiffCLIPModel, DiffCLIPProcessor
from modeling_diffclip.configuration_diffclip import VARIANTS, variant_tower_kwargs
from modeling_diffclip.publishing import atomic_directory, atomic_write_text, model_card, push_folder_to_hub


MODEL_CONFIGS = {
    # the demo's model: trains to well above chance on captioned shapes in a few CPU minutes
    "tiny": dict(
        text_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=64,
    ),
    "vit-b-16": {},  # DiffCLIPConfig's defaults are the released ViT-B/16
}
# Values an unset option takes; --recipe paper is the paper's CC3M/CC12M recipe (SLIP's optimiser and crops).
RECIPES = {
    "demo": dict(
        model_config="tiny",
        num_epochs=6,
        per_device_batch_size=128,
        learning_rate=2e-3,
        weight_decay=0.1,
        warmup_ratio=0.1,
        adam_epsilon=1e-6,
        crop_scale=1.0,
    ),
    "paper": dict(
        model_config="vit-b-16",
        num_epochs=40,
        global_batch_size=4096,
        learning_rate=5e-4,
        weight_decay=0.5,
        warmup_epochs=1,
        adam_epsilon=1e-8,
        crop_scale=0.5,
    ),
}
DEMO_TRAIN_EXAMPLES, DEMO_TEST_EXAMPLES = 20_000, 1_000
TRAINING_STATE = "training_state.json"
RUN_CONFIG = "run_config.json"
MAX_LOGIT_SCALE = math.log(100)


class RunError(ValueError):
    """A run that cannot start as asked; raised before any training."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--output_dir", default="outputs/diffclip-shapes", help="where checkpoints, the model and results go")
    add("--overwrite", action="store_true", help="replace a run already in --output_dir")
    add("--recipe", choices=list(RECIPES), default="demo", help="defaults for the options left unset")
    add("--variant", choices=list(VARIANTS), default="diffclip")
    add("--model_config", help="tiny, vit-b-16, or a path to a DiffCLIP config.json (recipe default)")
    add("--init_from", help="start from the weights of a saved DiffCLIP folder (e.g. from convert_clip_to_diffclip)")
    add("--dataset", help="Hub dataset id or local path (see image_text_data.py); default: the captioned-shapes demo")
    add("--dataset_split", default="train")
    add("--image_column", help="default: the first of image, jpg, jpeg, png, webp, img")
    add("--caption_column", help="default: the first of caption, text, txt, sentence, sentences")
    add("--streaming", action="store_true", help="stream the dataset (needs --max_steps)")
    add("--shuffle_buffer", type=int, default=10_000, help="shuffle buffer of a streamed dataset")
    add("--eval_dataset", help="held-out image classification dataset for the final zero-shot evaluation")
    add("--eval_split", default="test")
    add("--eval_label_column", default="label", help="a ClassLabel column; its names are the class names")
    add("--eval_template", action="append", help="zero-shot prompt with {c} (repeatable; default 'a photo of a {c}.')")
    add("--max_steps", type=int, help="optimizer steps; overrides --num_epochs")
    add("--num_epochs", type=int)
    add("--per_device_batch_size", type=int)
    add("--global_batch_size", type=int, help="per-device batch × processes × accumulation steps")
    add(
        "--gradient_accumulation_steps",
        type=int,
        default=1,
        help="micro-batches per step; each micro-batch's loss uses its own negatives",
    )
    add("--learning_rate", type=float)
    add("--weight_decay", type=float)
    add("--warmup_ratio", type=float, help="warm-up as a fraction of all steps")
    add("--warmup_epochs", type=float, help="warm-up in epochs (overrides --warmup_ratio)")
    add("--adam_beta1", type=float, default=0.9)
    add("--adam_beta2", type=float, default=0.98)
    add("--adam_epsilon", type=float)
    add("--crop_scale", type=float, help="random crops of this fraction of the area or more; 1 = centre crop")
    add("--seed", type=int, default=0)
    add("--mixed_precision", choices=["no", "fp16", "bf16"], help="default: what accelerate launch was given")
    add("--gradient_checkpointing", action="store_true")
    add("--torch_compile", action="store_true")
    add("--num_workers", type=int, default=1, help="data loading processes per training process")
    add("--checkpointing_steps", type=int, help="save the full training state every N steps")
    add("--checkpoints_total_limit", type=int, default=2, help="keep only the last K checkpoints")
    add("--resume_from_checkpoint", help="a checkpoint folder, or 'latest' in --output_dir")
    add("--report_to", default="none", help="tensorboard, wandb, ... or all (accelerate trackers)")
    add("--logging_steps", type=int, default=10)
    add("--push_to_hub", action="store_true")
    add("--hub_model_id", help="Hub repo id for --push_to_hub")
    add("--hub_private", action="store_true")
    args = parser.parse_args(argv)
    explicit = {key for key, value in vars(args).items() if value is not None}
    for key, value in RECIPES[args.recipe].items():
        if key not in explicit:
            setattr(args, key, value)
    # an option given on the command line beats the recipe's way of setting the same quantity
    if "warmup_ratio" in explicit and "warmup_epochs" not in explicit:
        args.warmup_epochs = None
    if "per_device_batch_size" in explicit and "global_batch_size" not in explicit:
        args.global_batch_size = None
    if {"per_device_batch_size", "global_batch_size"} <= explicit:
        parser.error("give --per_device_batch_size or --global_batch_size, not both")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    if args.overwrite and args.resume_from_checkpoint:
        parser.error("--overwrite deletes the run that --resume_from_checkpoint would continue; give one of them")
    return args


def build_config(args) -> DiffCLIPConfig:
    """The model's config: a named size or a config.json, with the variant's attention."""
    if args.model_config in MODEL_CONFIGS:
        config = DiffCLIPConfig(**MODEL_CONFIGS[args.model_config])
    elif Path(args.model_config).is_file():
        config = DiffCLIPConfig.from_json_file(args.model_config)
    else:
        raise RunError(f"--model_config {args.model_config!r}: not one of {list(MODEL_CONFIGS)} nor a config file.")
    text_kwargs, vision_kwargs = variant_tower_kwargs(args.variant)
    for tower, kwargs in ((config.text_config, text_kwargs), (config.vision_config, vision_kwargs)):
        for key, value in kwargs.items():
            setattr(tower, key, value)
        tower.validate()
    return config


class DualEncoderForTraining(nn.Module):
    """
    The training step's forward: both towers and the temperature in one call, so that FSDP and DeepSpeed gather the
    parameters they shard. Returns the raw image and text embeddings, exp(logit_scale), and every λ.
    """

    def __init__(self, model: DiffCLIPModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, pixel_values):
        image = self.model.get_image_features(pixel_values=pixel_values).pooler_output
        text = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        lambdas = {}
        for tower, model in (("text", self.model.text_model), ("vision", self.model.vision_model)):
            for index, layer in enumerate(model.encoder.layers):
                if isinstance(layer.self_attn, DiffCLIPAttention):
                    lambdas[f"{tower}/layer_{index}"] = layer.self_attn.lambda_full().detach()
        return image, text, self.model.logit_scale.exp(), lambdas


def gather_with_grad(features: torch.Tensor) -> torch.Tensor:
    """All processes' rows in process order, differentiable; processes may hold different numbers of rows."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return features
    size = torch.tensor([features.shape[0]], device=features.device)
    sizes = funcol.all_gather_single(size, 0, dist.group.WORLD).tolist()
    padded = F.pad(features, (0, 0, 0, max(sizes) - features.shape[0]))
    gathered = funcol.all_gather_single_autograd(padded, 0, dist.group.WORLD)
    return torch.cat([chunk[:n] for chunk, n in zip(gathered.split(max(sizes)), sizes)])


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch (the same value on every process)."""
    image = F.normalize(gather_with_grad(image.float()), dim=-1)
    text = F.normalize(gather_with_grad(text.float()), dim=-1)
    logits = logit_scale.float() * image @ text.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def build_optimizer(model: DiffCLIPModel, args) -> torch.optim.AdamW:
    """AdamW, with no weight decay on biases, norms, λ vectors and the temperature (all < 2-D)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "logit_scale" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )


class TrainingState:
    """Where the run is (step, epoch, batches of the epoch done, samples skipped), saved with every checkpoint."""

    def __init__(self, run_fingerprint: dict):
        self.run_fingerprint = run_fingerprint
        self.global_step, self.epoch, self.batches_in_epoch, self.skipped = 0, 0, 0, 0

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def fingerprint_differences(saved: dict, current: dict) -> str:
    """The settings two runs do not share, as 'name (saved vs now)', or '' when they are the same run."""
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    return ", ".join(f"{key} ({saved.get(key)!r} vs {current.get(key)!r})" for key in keys)


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Completed checkpoints of a run, oldest first (a checkpoint is only named so once fully written)."""
    found = [p for p in output_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(accelerator: Accelerator, state: TrainingState, output_dir: Path, limit: int) -> None:
    """Save the full training state under a temporary name, then rename it: a killed run never leaves half of one."""
    final = output_dir / f"checkpoint-{state.global_step}"
    staging = output_dir / f".checkpoint-{state.global_step}.tmp"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        atomic_write_text(staging / TRAINING_STATE, json.dumps(state.state_dict(), indent=2))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        for old in list_checkpoints(output_dir)[:-limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def prepare_output_dir(args, run_fingerprint: dict, accelerator: Accelerator) -> Path:
    """Refuse to mix runs in one folder: a folder holding another run needs --resume_from_checkpoint or --overwrite."""
    output_dir = Path(args.output_dir)
    run_file = output_dir / RUN_CONFIG
    if run_file.exists() and not args.resume_from_checkpoint and not args.overwrite:
        raise RunError(
            f"{output_dir} already holds a run ({RUN_CONFIG}); continue it with --resume_from_checkpoint latest, "
            "choose another --output_dir, or pass --overwrite to start afresh."
        )
    if run_file.exists() and args.resume_from_checkpoint and not args.overwrite:
        differences = fingerprint_differences(json.loads(run_file.read_text())["run_fingerprint"], run_fingerprint)
        if differences:
            raise RunError(f"{output_dir} holds another run, with other {differences}; use another --output_dir.")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if args.overwrite and output_dir.exists():
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_file, json.dumps({"run_fingerprint": run_fingerprint, "args": vars(args)}, indent=2))
    accelerator.wait_for_everyone()
    return output_dir


def resolve_resume(args, output_dir: Path, run_fingerprint: dict) -> Path | None:
    """The checkpoint to resume from, checked to belong to this run; None to start from the beginning."""
    if not args.resume_from_checkpoint:
        return None
    if args.resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:  # nothing saved yet (e.g. killed early): start from the beginning
            return None
        path = checkpoints[-1]
    else:
        path = Path(args.resume_from_checkpoint)
    if not (path / TRAINING_STATE).is_file():
        raise RunError(f"{path} is not a checkpoint of this script (it has no {TRAINING_STATE}).")
    saved = json.loads((path / TRAINING_STATE).read_text())["run_fingerprint"]
    differences = fingerprint_differences(saved, run_fingerprint)
    if differences:
        raise RunError(f"{path} is a checkpoint of another run or model, with other {differences}.")
    return path


def load_eval_split(args):
    """The held-out split for zero-shot evaluation: images, labels, class names and prompt templates."""
    templates = args.eval_template or (list(SHAPE_TEMPLATES) if args.dataset is None else ["a photo of a {c}."])
    if args.eval_dataset is None:
        if args.dataset is not None:
            return None
        dataset = load_shapes("test", DEMO_TEST_EXAMPLES, image_size=args.image_size)
        return dataset, "image", "label", SHAPE_CLASSNAMES, templates
    dataset = load_image_text_dataset(args.eval_dataset, split=args.eval_split)
    label = dataset.features.get(args.eval_label_column)
    if not isinstance(label, datasets.ClassLabel):
        raise RunError(
            f"--eval_dataset needs a ClassLabel column {args.eval_label_column!r} (its names are the class names); "
            f"its columns are {list(dataset.features)}. Name it with --eval_label_column."
        )
    image_column = find_column(dataset, None, IMAGE_COLUMNS, "image")
    return without_image_decoding(dataset, image_column), image_column, args.eval_label_column, label.names, templates


@torch.no_grad()
def evaluate_zero_shot(model, processor, eval_split, transform, batch_size: int) -> dict:
    """Zero-shot top-1/top-5 accuracy and mean per-class recall on the held-out split."""
    dataset, image_column, label_column, classnames, templates = eval_split
    model.eval()
    device = model.device
    context_length = model.config.text_config.max_position_embeddings

    prompts = processor.tokenizer(
        zero_shot_prompts(classnames, templates),
        padding="max_length",
        max_length=context_length,
        truncation=True,
        return_tensors="pt",
    ).to(device)
    classifier = zero_shot_weights(model.get_text_features(**prompts).pooler_output, len(classnames))
    logits = []
    for start in range(0, len(dataset), batch_size):
        images = [decode_image(value) for value in dataset[start : start + batch_size][image_column]]
        if any(image is None for image in images):
            raise DataError("an evaluation image does not decode; the held-out split must be clean.")
        pixel_values = torch.stack([transform(image) for image in images]).to(device)
        features = model.get_image_features(pixel_values=pixel_values).pooler_output.float()
        logits.append(F.normalize(features, dim=-1) @ classifier.T)
    metrics = classification_metrics(torch.cat(logits).cpu(), torch.tensor(dataset[label_column]))
    return {
        "zeroshot_top1": metrics["acc1"],
        "zeroshot_top5": metrics["acc5"],
        "zeroshot_mean_per_class_recall": metrics["mean_per_class_recall"],
        "num_classes": len(classnames),
        "num_eval_examples": len(dataset),
    }


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=f"{args.output_dir}/logs"),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise RunError(
            f"{launched} processes were launched but each trains alone: on a CPU-only machine launch with "
            "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ..."
        )
    print(f"process {accelerator.process_index} of {accelerator.num_processes} on {accelerator.device}", flush=True)
    set_seed(args.seed)

    # ----- sizes and batches, checked before anything heavy
    processes, accumulation = accelerator.num_processes, args.gradient_accumulation_steps
    if args.global_batch_size is not None:
        if args.global_batch_size % (processes * accumulation):
            raise RunError(
                f"--global_batch_size {args.global_batch_size} does not divide into {processes} processes × "
                f"{accumulation} accumulation steps; choose a multiple of {processes * accumulation}."
            )
        args.per_device_batch_size = args.global_batch_size // (processes * accumulation)
    global_batch = args.per_device_batch_size * processes * accumulation
    if args.streaming and args.max_steps is None:
        raise RunError("a streamed dataset has no known length: give --max_steps.")

    if args.init_from:
        model = DiffCLIPModel.from_pretrained(args.init_from)
        config = model.config
    else:
        config = build_config(args)
        model = DiffCLIPModel(config)
    args.image_size = config.vision_config.image_size
    context_length = config.text_config.max_position_embeddings
    processor = (
        DiffCLIPProcessor.from_pretrained(args.init_from)
        if args.init_from
        else DiffCLIPProcessor.from_defaults(image_size=args.image_size, context_length=context_length)
    )

    # ----- data
    if args.dataset is None:
        with accelerator.main_process_first():  # one process renders and caches the demo data, the others read it
            raw = load_shapes("train", DEMO_TRAIN_EXAMPLES, image_size=args.image_size)
    else:
        raw = load_image_text_dataset(args.dataset, split=args.dataset_split, streaming=args.streaming)
    image_column, caption_column = resolve_columns(raw, args.image_column, args.caption_column)
    raw = without_image_decoding(raw, image_column)
    transform = ImageTransform.for_processor(processor.image_processor, args.crop_scale)
    encoder = ExampleEncoder(image_column, caption_column, transform, seed=args.seed)
    collate = Collator(processor.tokenizer, context_length, args.image_size)
    if args.streaming:
        raw = split_dataset_by_node(raw, accelerator.process_index, processes)
        train_data = StreamingImageText(raw.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer), encoder)
        train_dataloader = torch.utils.data.DataLoader(
            train_data, batch_size=args.per_device_batch_size, collate_fn=collate, num_workers=args.num_workers
        )
        steps_per_epoch = None
    else:
        train_data = MapStyleImageText(raw, encoder)
        train_dataloader = torch.utils.data.DataLoader(
            train_data,
            batch_size=args.per_device_batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=collate,
            num_workers=args.num_workers,
        )
        steps_per_epoch = len(raw) // global_batch
        if steps_per_epoch == 0:
            raise RunError(f"the dataset has {len(raw)} examples, fewer than one global batch of {global_batch}.")
    max_steps = args.max_steps or args.num_epochs * steps_per_epoch
    if args.warmup_epochs is None:
        warmup_steps = round(args.warmup_ratio * max_steps)
    elif steps_per_epoch:
        warmup_steps = round(args.warmup_epochs * steps_per_epoch)
    else:  # a stream has no epochs: warm up for the same share of the run as the recipe's epochs would
        warmup_steps = round(args.warmup_epochs / args.num_epochs * max_steps)
    eval_split = load_eval_split(args)

    run_fingerprint = {
        "model_config": config.to_diff_dict(),
        "variant": args.variant,
        "dataset": args.dataset,
        "global_batch_size": global_batch,
        "seed": args.seed,
        "max_steps": max_steps,
        "learning_rate": args.learning_rate,
    }
    resume_from = resolve_resume(args, Path(args.output_dir), run_fingerprint)
    output_dir = prepare_output_dir(args, run_fingerprint, accelerator)

    # ----- model, optimiser, schedule
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    optimizer = build_optimizer(model, args)
    # stepped here once per optimizer step (not by accelerate, which would step it once per process)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, max_steps)
    trainer = DualEncoderForTraining(model)
    if args.torch_compile:
        trainer = torch.compile(trainer)
    if args.streaming:
        trainer, optimizer = accelerator.prepare(trainer, optimizer)
    else:
        trainer, optimizer, train_dataloader = accelerator.prepare(trainer, optimizer, train_dataloader)
    state = TrainingState(run_fingerprint)
    accelerator.register_for_checkpointing(scheduler, state)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        accelerator.print(f"Resumed from {resume_from} at step {state.global_step}")

    if accelerator.is_main_process:
        accelerator.init_trackers(
            "diffclip-pretrain", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        )
    accelerator.print(
        f"Training {args.variant} ({args.model_config or args.init_from}) for {max_steps} steps of {global_batch} "
        f"image-text pairs on {processes} process(es) ({accelerator.device}); warm-up {warmup_steps} steps."
    )
    progress = tqdm(
        total=max_steps,
        initial=state.global_step,
        disable=not accelerator.is_local_main_process,
        desc="pretrain",
        unit="step",
    )
    images_seen, clock = 0, time.perf_counter()
    trainer.train()
    while state.global_step < max_steps:
        train_data.set_epoch(state.epoch)
        if hasattr(train_dataloader, "set_epoch"):
            train_dataloader.set_epoch(state.epoch)
        loader = train_dataloader
        if state.batches_in_epoch:  # resuming mid-epoch: the same batches, minus those already trained on
            loader = accelerator.skip_first_batches(train_dataloader, state.batches_in_epoch)
        batches_before = state.batches_in_epoch
        for batch in loader:
            state.batches_in_epoch += 1
            batch = {key: value.to(accelerator.device) for key, value in batch.items()}
            skipped = accelerator.reduce(batch.pop("num_skipped"), reduction="sum").item()
            state.skipped += skipped
            with accelerator.accumulate(trainer):
                image, text, logit_scale, lambdas = trainer(**batch)
                loss = contrastive_loss(image, text, logit_scale)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            with torch.no_grad():  # the paper's cap on the temperature: logit scale at most 100
                accelerator.unwrap_model(trainer).model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            state.global_step += 1
            images_seen += global_batch - skipped
            progress.update(1)
            if state.global_step % args.logging_steps == 0 or state.global_step == max_steps:
                throughput = images_seen / (time.perf_counter() - clock)
                progress.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{throughput:.0f}")
                logs = {
                    "loss": loss.item(),
                    "learning_rate": scheduler.get_last_lr()[0],
                    "logit_scale": logit_scale.item(),
                    "images_per_second": throughput,
                    "skipped_samples": state.skipped,
                    "epoch": state.epoch,
                }
                logs.update({f"lambda/{name}": value.item() for name, value in lambdas.items()})
                accelerator.log(logs, step=state.global_step)
                if accelerator.is_main_process:  # a plain record too, whatever --report_to says
                    with open(output_dir / "metrics.jsonl", "a") as log_file:
                        log_file.write(json.dumps({"step": state.global_step, **logs}) + "\n")
            if args.checkpointing_steps and state.global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, state, output_dir, args.checkpoints_total_limit)
            if state.global_step >= max_steps:
                break
        else:
            if state.batches_in_epoch == batches_before:
                raise DataError("the dataset yielded no batch in a whole epoch; is it empty?")
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    progress.close()

    # ----- the final model, then its zero-shot evaluation (from the saved weights: right under any sharding)
    results = {
        "global_step": state.global_step,
        "num_processes": processes,
        "global_batch_size": global_batch,
        "variant": args.variant,
        "skipped_samples": state.skipped,
        "seed": args.seed,
    }
    state_dict = accelerator.get_state_dict(trainer)
    if accelerator.is_main_process:
        state_dict = {key.removeprefix("_orig_mod.").removeprefix("model."): v for key, v in state_dict.items()}
        with atomic_directory(output_dir / "model", overwrite=True) as staging:
            accelerator.unwrap_model(trainer).model.save_pretrained(staging, state_dict=state_dict)
            processor.save_pretrained(staging)
            if eval_split is not None:
                final = DiffCLIPModel.from_pretrained(staging).to(accelerator.device)
                eval_transform = ImageTransform.for_processor(processor.image_processor)
                results.update(
                    evaluate_zero_shot(final, processor, eval_split, eval_transform, args.per_device_batch_size)
                )
                print(
                    f"Zero-shot top-1 on the held-out split: {results['zeroshot_top1']:.1%} "
                    f"({results['num_classes']} classes, chance {1 / results['num_classes']:.1%})"
                )
            metrics = {k: results[k] for k in ("zeroshot_top1", "zeroshot_top5") if k in results}
            provenance = (
                f"Pretrained from scratch with `examples/pretrain.py` ({args.recipe} recipe) on "
                f"{args.dataset or 'the captioned-shapes demo dataset'} for {state.global_step} steps of "
                f"{global_batch} pairs."
            )
            title = f"{args.variant} pretrained with examples/pretrain.py"
            (staging / "README.md").write_text(model_card(config, title, provenance, results=metrics))
        results["args"] = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}
        atomic_write_text(output_dir / "eval_results.json", json.dumps(results, indent=2))
        print(f"Saved the model to {output_dir / 'model'} and the results to {output_dir / 'eval_results.json'}")
        if args.push_to_hub:
            print(f"Uploaded to {push_folder_to_hub(output_dir / 'model', args.hub_model_id, args.hub_private)}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


if __name__ == "__main__":
    try:
        main()
    except (RunError, DataError) as error:
        raise SystemExit(f"error: {error}") from None
