"""Train a LLaVA-style vision-language model in LLaVA-1.5's two stages with 🤗 Accelerate.

    accelerate launch examples/train_vlm.py        # the demo: both stages and POPE on shapes, minutes on 2 CPU cores
    python convert/build_llava.py --vision_model runs/diffclip/model --language_model lmsys/vicuna-7b-v1.5 \\
        --output_dir vlm
    accelerate launch examples/train_vlm.py --model vlm --stage align --recipe llava15 \\
        --dataset blip_laion_cc_sbu_558k.json --image_folder images --output_dir runs/vlm-align
    accelerate launch examples/train_vlm.py --model runs/vlm-align/model --stage instruct --recipe llava15 \\
        --dataset llava_v1_5_mix665k.json --image_folder data --output_dir runs/vlm-instruct

`--stage align` trains the projector only (vision tower and language model frozen) on image-caption conversations;
`--stage instruct` trains the projector and the language model on conversations, image and text-only ones (the
vision tower too with --unfreeze_vision). The loss covers the answers' tokens only. `--recipe llava15` is LLaVA-1.5's
(scripts/v1_5/pretrain.sh, finetune.sh): the `plain` template in stage 1 (image, caption, "\n"), the model's
`vicuna_v1` chat template in stage 2, sequences cut at 2048 tokens, the last smaller batch kept (2,181 steps of 256
on 558k captions), no padding to a square in stage 1, stage 2's batches grouped by modality, and bf16 with gradient
checkpointing where CUDA is.
Trainable weights are float32 master weights whatever the model folder's dtype (mixed precision computes in half
precision); the model is saved in the folder's dtype. A non-finite loss or gradient stops the run in one line.
With no --dataset, the demo builds a VLM from the demo DiffCLIP of examples/pretrain.py (trained first if
absent) and a tiny language model made offline, trains both stages on scenes of captioned shapes and ends with POPE
on held-out scenes.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

import modeling_diffclip  # noqa: F401  (registers DiffCLIP-LLaVA with the Auto classes)
from diffclip_lab.core.cli import ArgumentParser, path_or_repo_id, positive_int, run_main, setup_logging
from diffclip_lab.core.errors import UserError
from diffclip_lab.core.files import atomic_directory, atomic_write_text
from diffclip_lab.core.loading import load_vlm
from diffclip_lab.core.publishing import check_can_push
from diffclip_lab.demo import scenes
from diffclip_lab.demo.language_model import pretrain_language_model, tiny_language_model
from diffclip_lab.training.contrastive import parameter_groups
from diffclip_lab.training.recipes import VLM_RECIPES, apply_recipe
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
from diffclip_lab.vlm import pope
from diffclip_lab.vlm.composition import (
    VLMForTraining,
    build_llava,
    save_vlm,
    training_dtypes,
)
from diffclip_lab.vlm.conversations import (
    Conversation,
    ConversationDataset,
    ConversationEncoder,
    ModalityGroupedSampler,
    collate_conversations,
    load_conversations,
)


logger = get_logger(__name__)
DEMO_DIFFCLIP = Path("outputs/diffclip-shapes/model")  # examples/pretrain.py's default output
DEMO_SCENES = {"align": 3000, "instruct": 6000, "test": 300}


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", help="a VLM folder (convert/build_llava.py, or a previous stage's model/); the demo builds one")
    add("--stage", choices=["align", "instruct"], help="align: the projector only; instruct: projector and LM")
    add("--dataset", help="LLaVA conversations: a .json/.jsonl file or a datasets layout; default: the demo")
    add("--image_folder", help="where the conversations' image paths start (default: the file's folder)")
    add("--dataset_split", default="train")
    add("--unfreeze_vision", action="store_true", help="also train the vision tower in the instruct stage")
    add("--recipe", choices=list(VLM_RECIPES), help="defaults for unset options (default: llava15, the demo's demo)")
    add("--output_dir", default="outputs/vlm-shapes")
    add("--max_length", type=positive_int, help="refuse conversations longer than this many tokens")
    add("--model_max_length", type=positive_int, help="cut longer sequences to this many tokens (llava15: 2048)")
    add("--template", choices=["plain", "chat"], help="plain: stage 1's image+caption; chat: the model's template")
    add("--group_by_modality", action=argparse.BooleanOptionalAction, help="batches of one modality (LLaVA's)")
    add("--drop_last", action=argparse.BooleanOptionalAction, help="drop an epoch's last smaller batch")
    add("--pad_to_square", action=argparse.BooleanOptionalAction, help="default: the processor's (llava15 align: no)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.dataset and not (args.model and args.stage):
        parser.error("--dataset needs --model (a built VLM) and --stage")
    if (args.model or args.stage) and not args.dataset:
        parser.error("--model and --stage train on a --dataset; leave all three out for the demo")
    check_run_arguments(parser, args)
    args.recipe = args.recipe or ("llava15" if args.dataset else "demo")
    return args


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
    sampler = (
        ModalityGroupedSampler(conversations, plan.per_device_batch_size, accelerator.num_processes, options.seed)
        if options.group_by_modality
        else None
    )
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=plan.per_device_batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=options.drop_last,
        collate_fn=partial(collate_conversations, pad_token_id=processor.tokenizer.pad_token_id),
        num_workers=options.num_workers,
    )
    fingerprint = {
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
    loss = train(options, stage, training, plan, run, accelerator)
    results = finish(options, stage, training, processor, plan, run, accelerator, source, loss, saved_dtype)
    accelerator.end_training()
    return results


def train(options, stage: str, training: Training, plan: BatchPlan, run: Run, accelerator) -> float:
    """The loop: micro-batches until `plan.max_steps` optimizer steps; returns the last logged loss."""
    state = training.state
    progress = tqdm(total=plan.max_steps, initial=state.global_step, disable=not accelerator.is_local_main_process)
    progress.set_description(stage)
    clock, steps_at_start = time.perf_counter(), state.global_step
    training.module.train()
    loss = torch.tensor(float("nan"))
    for batch in batches(accelerator, training.loader, training.data, state):
        with accelerator.accumulate(training.module):
            loss = training.module(**batch)
            accelerator.backward(loss)
            check_finite(accelerator, loss, training.module, state, run.output_dir)
            training.optimizer.step()
            training.optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        training.scheduler.step()
        state.global_step += 1
        progress.update(1)
        if run.is_logging_step(state, plan, options.logging_steps):
            rate = (state.global_step - steps_at_start) * plan.global_batch_size / (time.perf_counter() - clock)
            progress.set_postfix(loss=f"{loss.item():.4f}", conv_s=f"{rate:.0f}")
            logs = {"loss": loss.item(), "learning_rate": training.scheduler.get_last_lr()[0], "epoch": state.epoch}
            run.log({**logs, "conversations_per_second": rate}, state.global_step)
        if run.end_step(state, plan, options.checkpointing_steps):
            break
    progress.close()
    return accelerator.reduce(loss.detach(), reduction="mean").item()


def finish(options, stage, training: Training, processor, plan, run: Run, accelerator, source, loss, dtype) -> dict:
    """Save the model in `dtype` with its processor and card, write `eval_results.json`, and push when asked."""
    results = {
        "stage": stage,
        "global_step": training.state.global_step,
        "num_processes": plan.num_processes,
        "global_batch_size": plan.global_batch_size,
        "final_loss": loss,
        "seed": options.seed,
    }
    state_dict = accelerator.get_state_dict(training.module)
    if accelerator.is_main_process:
        state_dict = {
            name.removeprefix("model."): t.to(dtype) if t.is_floating_point() else t for name, t in state_dict.items()
        }
        model = accelerator.unwrap_model(training.module).model
        if accelerator.distributed_type != DistributedType.FSDP:
            model.to(dtype)  # save_pretrained records the dtype of the parameters in the config
        provenance = (
            f"Trained from `{source}` with `examples/train_vlm.py --stage {stage}` ({options.recipe} recipe) on "
            f"{options.dataset or 'the demo conversations about scenes of shapes'} for {training.state.global_step} "
            f"steps of {plan.global_batch_size} conversations"
            + ("; the vision tower trained too." if stage == "instruct" and options.unfreeze_vision else ".")
        )
        save_vlm(model, processor, run.output_dir / "model", provenance, overwrite=True, state_dict=state_dict)
        results["args"] = plain_options(options, with_none=True)
        run.write_results(results)
        logger.info(f"Saved the {stage} model to {run.output_dir / 'model'}")
    if options.push_to_hub:
        run.push(options.hub_model_id, options.hub_private)
    accelerator.wait_for_everyone()
    return results


def demo_model(output_dir: Path) -> Path:
    """The demo's untrained VLM: the demo DiffCLIP (pretrained first if absent) and a tiny language model that has
    read the demo's text, joined by `build_llava`. Built by the main process; the path of its folder."""
    state = PartialState()
    folder = output_dir / "vlm-untrained"
    with state.main_process_first():
        if state.is_main_process and not (folder / "config.json").is_file():
            if not (DEMO_DIFFCLIP / "config.json").is_file():
                logger.info(f"No demo DiffCLIP in {DEMO_DIFFCLIP}: pretraining it first (examples/pretrain.py).")
                pretrain = Path(__file__).with_name("pretrain.py")
                subprocess.run([sys.executable, str(pretrain), "--output_dir", str(DEMO_DIFFCLIP.parent)], check=True)
            language_model, tokenizer = tiny_language_model(scenes.vocabulary())
            pretrain_language_model(language_model, tokenizer, scenes.language_texts(2000), steps=300)
            with atomic_directory(output_dir / "language-model", overwrite=True) as staging:
                language_model.save_pretrained(staging)
                tokenizer.save_pretrained(staging)
            model, processor = build_llava(
                str(DEMO_DIFFCLIP), str(output_dir / "language-model"), chat_template="short"
            )
            provenance = "The demo's: the DiffCLIP of examples/pretrain.py and a tiny Llama that read the demo's text."
            save_vlm(model, processor, folder, provenance, overwrite=True)
    return folder


def demo_pope(model_folder: Path, output_dir: Path) -> list[dict]:
    """POPE on held-out scenes: its three splits built from their annotations, answered by the trained model."""
    images = output_dir / "pope" / "images"
    annotations = scenes.write_scenes("test", DEMO_SCENES["test"], images)
    files = pope.write_pope_splits(
        pope.build_pope_splits(annotations, num_images=DEMO_SCENES["test"], objects_per_image=1), output_dir / "pope"
    )
    model, processor = load_vlm(str(model_folder), chat_template=True, dtype="float32")
    model = model.to(PartialState().device).eval()
    records = []
    for path in files:
        split = pope.read_questions(path)
        answers = pope.answer_questions(model, processor, split.questions, images, max_new_tokens=4)
        records.append(pope.pope_record(str(model_folder), model.config.model_type, split, answers))
    return records


def demo(args) -> dict:
    """The whole vision-language demo: build, align, instruct, POPE."""
    output_dir = Path(args.output_dir)
    model_folder = demo_model(output_dir)
    results = {}
    for stage in ("align", "instruct"):
        options = stage_options(args, stage)
        options.output_dir = str(output_dir / stage)
        options.push_to_hub = args.push_to_hub and stage == "instruct"  # the finished model only
        model, processor = load_vlm(str(model_folder), llava=True)
        with PartialState().main_process_first():  # the main process writes the data, the others read it
            if PartialState().is_main_process:
                scenes.write_conversations(stage, DEMO_SCENES[stage], output_dir / "scenes" / stage)
        conversations = load_conversations(str(output_dir / "scenes" / stage / "conversations.json"))
        results[stage] = run_stage(options, stage, model, processor, conversations, str(model_folder))
        model_folder = output_dir / stage / "model"
    if PartialState().is_main_process:
        records = demo_pope(model_folder, output_dir)
        results["pope"] = {record["split"]: record["metrics"] for record in records}
        print(pope.results_table(records))
        atomic_write_text(output_dir / "pope" / "results.json", json.dumps(records, indent=2))  # for compare.py
        atomic_write_text(output_dir / "eval_results.json", json.dumps(results, indent=2, default=str))
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logging()
    if args.push_to_hub:  # before any work, not after it
        check_can_push(args.hub_model_id)
    if args.dataset is None:
        return demo(args)
    options = stage_options(args, args.stage)
    model, processor = load_vlm(path_or_repo_id(args.model, "--model"), llava=True)
    conversations = load_conversations(args.dataset, args.image_folder, args.dataset_split)
    return run_stage(options, args.stage, model, processor, conversations, args.model)


if __name__ == "__main__":
    run_main(main)
