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
from pathlib import Path

import modeling_diffclip  # noqa: F401  (registers DiffCLIP-LLaVA with the Auto classes)
from diffclip_lab.core.cli import ArgumentParser, path_or_repo_id, positive_int, run_main, setup_logging
from diffclip_lab.core.loading import load_vlm
from diffclip_lab.core.publishing import check_can_push
from diffclip_lab.training.recipes import VLM_RECIPES
from diffclip_lab.training.runs import add_run_arguments, check_run_arguments
from diffclip_lab.vlm.conversations import load_conversations
from diffclip_lab.vlm.demo import demo
from diffclip_lab.vlm.stages import run_stage, stage_options


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


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_logging()
    if args.push_to_hub:  # before any work, not after it
        check_can_push(args.hub_model_id)
    if args.dataset is None:
        return demo(args, pretrain_script=Path(__file__).with_name("pretrain.py"))
    options = stage_options(args, args.stage)
    model, processor = load_vlm(path_or_repo_id(args.model, "--model"), llava=True)
    conversations = load_conversations(args.dataset, args.image_folder, args.dataset_split)
    return run_stage(options, args.stage, model, processor, conversations, args.model)


if __name__ == "__main__":
    run_main(main)
