# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Scenes of captioned shapes for the vision-language demo: one to three shapes of the demo's 30 classes ("red circle",
...) in the quadrants of a cluttered image, with their object annotations; conversations for LLaVA's two training
stages; and the language model's text.

Objects are not equally frequent (a Zipf-like law over the classes) and some come in pairs (each class has a partner
that joins it in most scenes), so that POPE's popular and adversarial negatives differ from its random ones.
"""

import json
import random
from pathlib import Path

from PIL import Image

from ..core.files import atomic_write_text
from ..core.formatting import article
from ..demo.shapes import CLASSNAMES, COLORS, SHAPES, cluttered_background, draw_in_quadrants
from .pope import QUESTION, SHORT_ANSWER_PROMPT, question_text  # the demo teaches POPE's questions


IMAGE_SIZE = 32
QUADRANTS = [(0, 0), (1, 0), (0, 1), (1, 1)]  # (column, row), read left to right, top to bottom
# A fixed draw of the classes' order, so that frequency and partners do not follow colour or shape.
_ORDER = random.Random(1234).sample(CLASSNAMES, len(CLASSNAMES))
FREQUENCY = {name: 1 / (rank + 1) ** 0.8 for rank, name in enumerate(_ORDER)}
PARTNER = {name: _ORDER[(index + 7) % len(_ORDER)] for index, name in enumerate(_ORDER)}
PARTNER_CHANCE = 0.6
SPLIT_SEEDS = {"align": 0, "instruct": 500_003, "test": 1_000_003}
CAPTION_PROMPTS = ("What is in the image?", "Describe the image briefly.", "List the shapes you see.")
DESCRIBE_PROMPT = "What shapes are in the image?"


def scene_objects(rng: random.Random) -> list[str]:
    """One to three distinct classes: the first by frequency, each next one its predecessor's partner or drawn."""
    objects = [rng.choices(_ORDER, weights=[FREQUENCY[name] for name in _ORDER])[0]]
    for _ in range(rng.choices((0, 1, 2), weights=(0.3, 0.45, 0.25))[0]):
        candidates = [name for name in _ORDER if name not in objects]
        partner = PARTNER[objects[-1]]
        if partner in candidates and rng.random() < PARTNER_CHANCE:
            objects.append(partner)
        else:
            objects.append(rng.choices(candidates, weights=[FREQUENCY[name] for name in candidates])[0])
    return objects


def render_scene(rng: random.Random, image_size: int = IMAGE_SIZE) -> tuple[Image.Image, list[str]]:
    """A scene and its objects, in reading order (left to right, top to bottom)."""
    objects = scene_objects(rng)
    image = cluttered_background(rng, image_size)
    quadrants = sorted(rng.sample(QUADRANTS, len(objects)), key=lambda q: (q[1], q[0]))
    draw_in_quadrants(image, rng, zip(objects, quadrants, strict=True), largest=0.42)
    return image, objects


def caption(objects: list[str]) -> str:
    """'a red circle', 'a red circle and an orange star', 'a red circle, a blue star and a green cross'."""
    names = [article(name) for name in objects]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def scenes(split: str, count: int) -> list[tuple[Image.Image, list[str]]]:
    """`count` scenes of `split` ("align", "instruct" or "test"), drawn from disjoint seeds."""
    return [render_scene(random.Random(SPLIT_SEEDS[split] + index)) for index in range(count)]


def align_conversation(objects: list[str], rng: random.Random) -> list[dict]:
    """Stage 1 (align): the image, a request for a brief description, the caption."""
    return [
        {"from": "human", "value": f"<image>\n{rng.choice(CAPTION_PROMPTS)}"},
        {"from": "gpt", "value": caption(objects) + "."},
    ]


def instruct_conversation(objects: list[str], rng: random.Random) -> list[dict]:
    """
    Stage 2 (instruct): yes/no questions on up to two present classes and as many absent ones, half of them with
    LLaVA-1.5's short-answer prompt (as in its training mixture, and in POPE), and a short description; in random
    order. Absent classes are drawn with the classes' own frequencies, as present ones come, so that the class asked
    about says nothing of the answer: only the image does.
    """
    present = rng.sample(objects, min(2, len(objects)))
    candidates = [name for name in CLASSNAMES if name not in objects]
    absent = []
    for _ in present:
        absent.append(rng.choices(candidates, weights=[FREQUENCY[name] for name in candidates])[0])
        candidates.remove(absent[-1])
    questions = [(name, "Yes.") for name in present] + [(name, "No.") for name in absent]
    turns = [(question_text(name) + rng.choice(("", SHORT_ANSWER_PROMPT)), answer) for name, answer in questions]
    turns.append((DESCRIBE_PROMPT, caption(objects) + "."))
    rng.shuffle(turns)
    conversation = []
    for index, (question, answer) in enumerate(turns):
        conversation += [
            {"from": "human", "value": ("<image>\n" if index == 0 else "") + question},
            {"from": "gpt", "value": answer},
        ]
    return conversation


def vocabulary() -> list[str]:
    """Every word and mark the demo's conversations (and POPE's prompt) use, for the tiny language model."""
    texts = [*CAPTION_PROMPTS, DESCRIBE_PROMPT, QUESTION, SHORT_ANSWER_PROMPT, "a an and yes no"]
    words = {word.strip("?.,{}").lower() for text in texts for word in text.split()}
    return sorted(words - {""} | set(COLORS) | set(SHAPES)) + [",", ".", "?"]


def write_scenes(split: str, count: int, folder: Path) -> list[tuple[str, list[str]]]:
    """Render `count` scenes of `split` into `folder` as PNG files; (file name, objects) of each."""
    folder.mkdir(parents=True, exist_ok=True)
    annotations = []
    for index, (image, objects) in enumerate(scenes(split, count)):
        name = f"{split}-{index:05d}.png"
        image.save(folder / name)
        annotations.append((name, objects))
    return annotations


def write_conversations(stage: str, count: int, folder: Path) -> Path:
    """The demo's `stage` data in LLaVA's format: `folder/conversations.json` and its images beside it."""
    make = align_conversation if stage == "align" else instruct_conversation
    rng = random.Random(stage)
    records = [
        {"id": f"{stage}-{index}", "image": name, "conversations": make(objects, rng)}
        for index, (name, objects) in enumerate(write_scenes(stage, count, folder))
    ]
    path = folder / "conversations.json"
    atomic_write_text(path, json.dumps(records))
    return path


def language_texts(count: int) -> list[str]:
    """Plain text of the demo's conversations (no images), for the tiny language model to read first."""
    rng = random.Random("text")
    texts = []
    for index in range(count):
        objects = scene_objects(random.Random(SPLIT_SEEDS["align"] + index))  # the scenes' objects, not drawn
        for make in (align_conversation, instruct_conversation):
            texts.append(" ".join(turn["value"].replace("<image>\n", "") for turn in make(objects, rng)))
    return texts
