# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The vision-language demo of `examples/train_vlm.py`: a VLM built from the demo DiffCLIP and a tiny language model,
both LLaVA stages trained on scenes of captioned shapes, POPE on held-out scenes.
"""

import json
import subprocess
import sys
from pathlib import Path

from accelerate import PartialState
from accelerate.logging import get_logger

from ..core.files import atomic_directory, atomic_write_text
from ..core.loading import load_vlm
from ..demo.language_model import pretrain_language_model, tiny_language_model
from . import pope, scenes
from .composition import build_llava, save_vlm
from .conversations import load_conversations
from .stages import run_stage, stage_options


logger = get_logger(__name__)
DEMO_DIFFCLIP = Path("outputs/diffclip-shapes/model")  # examples/pretrain.py's default output
DEMO_SCENES = {"align": 3000, "instruct": 6000, "test": 300}


def demo_model(output_dir: Path, pretrain_script: Path) -> Path:
    """The demo's untrained VLM: the demo DiffCLIP (pretrained first by `pretrain_script` if absent) and a tiny
    language model that has read the demo's text, joined by `build_llava`. Built by the main process; the path of
    its folder."""
    state = PartialState()
    folder = output_dir / "vlm-untrained"
    with state.main_process_first():
        if state.is_main_process and not (folder / "config.json").is_file():
            if not (DEMO_DIFFCLIP / "config.json").is_file():
                logger.info(f"No demo DiffCLIP in {DEMO_DIFFCLIP}: pretraining it first (examples/pretrain.py).")
                command = [sys.executable, str(pretrain_script), "--output_dir", str(DEMO_DIFFCLIP.parent)]
                subprocess.run(command, check=True)
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


def demo(args, pretrain_script: Path) -> dict:
    """The whole vision-language demo with `train_vlm.py`'s options: build, align, instruct, POPE."""
    output_dir = Path(args.output_dir)
    model_folder = demo_model(output_dir, pretrain_script)
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
