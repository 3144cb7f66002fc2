"""Evaluate an image-text-to-text model on POPE (object hallucination; the DiffCLIP paper's Table 3).

    python examples/evaluate_pope.py --model PATH_OR_REPO --questions coco_pope_random.json \\
        [--questions coco_pope_popular.json ...] --images val2014 --output results.json

Models: anything `AutoModelForImageTextToText` and `AutoProcessor` load with a chat template (LLaVA and its kind,
DiffCLIP-based ones included). Questions: the official POPE files (JSON lines with question_id, image, text, label);
the split is read from the file name (..._random, ..._popular, ..._adversarial) or given with one --split per file.
Prompting and scoring follow LLaVA-1.5 (see diffclip_lab/vlm/pope.py): a stock `llava` checkpoint is prompted in
LLaVA's vicuna_v1 conversation (system prompt included) as LLaVA's model_vqa_loader.py does, whatever its
processor's template (--prompt processor to use that instead). Writes one record per split, with every answer;
prints the scores, the answers LLaVA's rule counts as "yes" without a "yes" in them, and the mean F1 over the three
splits (the number LLaVA-1.5 reports: 85.9 for llava-v1.5-7b, see docs/vlm.md).
"""

import argparse
import json

import torch

import modeling_diffclip  # noqa: F401  (registers DiffCLIP with the Auto classes)
from diffclip_lab.core.cli import ArgumentParser, path_or_repo_id, positive_int, run_main, setup_logging
from diffclip_lab.core.errors import UserError
from diffclip_lab.core.files import atomic_write_text
from diffclip_lab.core.loading import load_vlm
from diffclip_lab.vlm.pope import (
    PROMPTS,
    answer_questions,
    check_images,
    pope_chat_template,
    pope_record,
    read_questions,
    results_table,
)


def parse_args(argv=None):
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", required=True, help="a folder or Hub id of an image-text-to-text model")
    add("--questions", action="append", required=True, help="a POPE question file (JSON lines); repeat for splits")
    add("--images", required=True, help="the folder the questions' image files are in (COCO val2014 for COCO)")
    add("--output", help="write the results (a JSON list, one record per split) here")
    add("--split", action="append", help="the split of each --questions file, in order (default: from its name)")
    add("--batch_size", type=positive_int, default=1, help="questions per forward pass (LLaVA: 1)")
    add("--max_new_tokens", type=positive_int, default=128, help="the longest answer generated (LLaVA: 128)")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="weights' dtype")
    add("--prompt", default="auto", choices=PROMPTS, help="see diffclip_lab.vlm.pope.pope_chat_template")
    add("--trust_remote_code", action="store_true")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    setup_logging()
    split_names = args.split or [None] * len(args.questions)
    if len(split_names) != len(args.questions):
        raise UserError(f"{len(split_names)} --split for {len(args.questions)} --questions: one per file, or none.")
    splits = [read_questions(path, name) for path, name in zip(args.questions, split_names, strict=True)]
    names = [split.name for split in splits]
    if len(set(names)) < len(names):
        raise UserError(f"two question files are the same split ({', '.join(names)}); give each split once.")
    check_images([question for split in splits for question in split.questions], args.images)
    name = path_or_repo_id(args.model, "--model")
    model, processor = load_vlm(name, chat_template=True, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    model = model.to(args.device).eval()
    prompt, chat_template = pope_chat_template(model, processor, args.prompt)
    settings = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "prompt": prompt}
    records = []
    for split in splits:
        answers = answer_questions(
            model,
            processor,
            split.questions,
            args.images,
            args.max_new_tokens,
            args.batch_size,
            f"POPE {split.name}",
            chat_template,
        )
        records.append(pope_record(args.model, model.config.model_type, split, answers, settings))
    print(f"\nPOPE, {args.model} (prompt: {prompt})\n")
    print(results_table(records))
    if args.output:
        atomic_write_text(args.output, json.dumps(records, indent=2))
    return records


if __name__ == "__main__":
    run_main(main)
