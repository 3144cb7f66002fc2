# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
POPE, the object-hallucination benchmark of Li et al., "Evaluating Object Hallucination in Large Vision-Language
Models" (EMNLP 2023), which the DiffCLIP paper reports in Table 3 for LLaVA-style models built on each vision
encoder: yes/no questions "Is there a {object} in the image?", half about objects in the image, half about objects
that are not, in three splits that differ in how the absent objects are chosen (random, popular, adversarial).

- Questions: the official files (`coco_pope_random.json`, ... in the POPE repository, JSON lines), read strictly.
- Answers: any `AutoModelForImageTextToText`, prompted and decoded as LLaVA-1.5 evaluates POPE
  (`scripts/v1_5/eval/pope.sh` → `model_vqa_loader.py --conv-mode vicuna_v1`: LLaVA's system prompt, the question and
  the short-answer prompt, greedy decoding; see `pope_chat_template`), and scored exactly as LLaVA's
  `llava/eval/eval_pope.py` (`parse_answer`, `pope_metrics`), with the answers that rule reads as "yes" without a
  "yes" in them counted (`is_unknown_answer`).
- Building new splits from any object-annotated image set, as the POPE authors' code does (`build_pope_splits`).
"""

import functools
import json
import os
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..core.errors import UserError
from ..core.files import atomic_write_text
from ..core.formatting import article, markdown_table
from ..core.images import UnreadableImage, read_image
from ..core.provenance import provenance
from .composition import CHAT_TEMPLATES


SPLITS = ("random", "popular", "adversarial")
# LLaVA-1.5's short-answer prompt (its docs/Evaluation.md), which its POPE question file (llava_pope_test.jsonl)
# appends to every question: "Is there a chair in the image?\nAnswer the question using a single word or phrase."
SHORT_ANSWER_PROMPT = "\nAnswer the question using a single word or phrase."
QUESTION = "Is there {} in the image?"  # POPE's, with an article before the object
QUESTION_KEYS = ("question_id", "image", "text", "label")
OPTIONAL_KEYS = ("image_id",)  # the COCO image id, in the official files
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
PROTOCOL = (
    "POPE (Li et al., EMNLP 2023) as LLaVA-1.5 evaluates it: question + '\\nAnswer the question using a single word "
    "or phrase.' in LLaVA's vicuna_v1 conversation (a stock llava model) or the model's chat template, greedy "
    "decoding; an answer is 'no' when its first sentence, commas removed, split on spaces, holds the word 'No', 'no' "
    "or 'not', else 'yes' (those with no 'yes' either are counted as unknown_answers); yes is the positive class"
)
PROMPTS = ("auto", "vicuna_v1", "processor")


# ------------------------------------------------------------------------------------------------ questions


@dataclass(frozen=True)
class PopeQuestion:
    question_id: int | str
    image: str  # file name, relative to the images folder
    text: str  # "Is there a {object} in the image?", without the answer prompt
    label: str  # "yes" or "no"


@dataclass(frozen=True)
class PopeSplit:
    name: str  # random, popular or adversarial
    path: Path
    questions: list[PopeQuestion]


def split_from_file_name(path: str | os.PathLike) -> str | None:
    """The split a question file's name gives: `coco_pope_random.json`, `aokvqa_pope_popular.jsonl`,
    `adversarial.jsonl` ...; None when the name gives none."""
    stem = Path(path).name.removesuffix(".jsonl").removesuffix(".json")
    return next((split for split in SPLITS if stem == split or stem.endswith("_" + split)), None)


def read_questions(path: str | os.PathLike, split: str | None = None) -> PopeSplit:
    """
    One POPE question file: JSON lines, one object per line with exactly the keys `question_id`, `image`, `text` and
    `label` ("yes"/"no"), and optionally `image_id` (the official files carry the COCO id). Anything else is refused
    with the file, the line and the keys, so that a file of another format is never scored as POPE. The split is
    `split` when given, else the file name's (`split_from_file_name`).
    """
    path = Path(path)
    if split is None:
        split = split_from_file_name(path)
        if split is None:
            raise UserError(
                f"cannot tell the POPE split of {path} from its name (expected ..._random.json, ..._popular.json or "
                "..._adversarial.json); give it with --split random|popular|adversarial."
            )
    elif split not in SPLITS:
        raise UserError(f"POPE split {split!r} is not one of {', '.join(SPLITS)}.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the POPE question file {path}: {error}") from None
    questions, seen = [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{where}: not JSON ({error}); POPE files hold one JSON object per line.") from None
        if not isinstance(entry, dict):
            raise UserError(f"{where}: a {type(entry).__name__}, not a JSON object.")
        missing = [key for key in QUESTION_KEYS if key not in entry]
        unknown = sorted(set(entry) - set(QUESTION_KEYS) - set(OPTIONAL_KEYS))
        if missing or unknown:
            problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unknown {', '.join(unknown)}"] if unknown else []
            )
            raise UserError(
                f"{where}: keys {', '.join(entry)} ({'; '.join(problems)}); a POPE question has exactly "
                f"{', '.join(QUESTION_KEYS)} (and optionally {', '.join(OPTIONAL_KEYS)})."
            )
        if entry["label"] not in ("yes", "no"):
            raise UserError(f"{where}: label {entry['label']!r} is neither 'yes' nor 'no'.")
        if not isinstance(entry["question_id"], (int, str)) or isinstance(entry["question_id"], bool):
            raise UserError(f"{where}: question_id {entry['question_id']!r} is neither a number nor a string.")
        for key in ("image", "text"):
            if not isinstance(entry[key], str) or not entry[key]:
                raise UserError(f"{where}: {key} {entry[key]!r} is not a non-empty string.")
        key = str(entry["question_id"])  # 1 and "1" are one question, as LLaVA's JSON round trips make them
        if key in seen:
            raise UserError(f'{where}: question_id {entry["question_id"]!r} appears twice (1 and "1" are the same).')
        seen.add(key)
        questions.append(PopeQuestion(entry["question_id"], entry["image"], entry["text"], entry["label"]))
    if not questions:
        raise UserError(f"{path} holds no questions.")
    return PopeSplit(split, path, questions)


def check_images(questions: Iterable[PopeQuestion], images_dir: str | os.PathLike) -> None:
    """Refuse, before any model runs, questions whose image file is not in `images_dir`."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise UserError(f"the images folder {images_dir} does not exist.")
    missing = sorted(image for image in {q.image for q in questions} if not (images_dir / image).is_file())
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(f"{len(missing)} image(s) of the questions are not in {images_dir}: {shown}.")


# ------------------------------------------------------------------------------------------------- scoring


def parse_answer(text: str) -> str:
    """
    "yes" or "no" for a model's answer, exactly as LLaVA's `llava/eval/eval_pope.py` (and the POPE authors'
    `evaluate.py`) decide: keep the text before the first '.' if there is one, remove every ',', split on single
    spaces (not on other whitespace), and answer "no" when one of the words is exactly "No", "no" or "not", else
    "yes". So "Not sure", "NO", "Nope", "no!" and "" are "yes" (none of the three words), "not sure" and
    "There is no dog" are "no", and "Yes. No." is "yes" (first sentence only). LLaVA strips the generated text before
    storing it; `answer_questions` does the same, and this function takes the text as it is.
    """
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if {"No", "no", "not"} & set(words) else "yes"


def is_unknown_answer(text: str) -> bool:
    """Whether `parse_answer` reads the answer as "yes" only because it found no "no": no word of its first
    sentence (commas and other punctuation stripped, any case) is "yes". LLaVA's rule counts such answers as "yes";
    a model answering garbage would score a plausible F1 of 0.667, so they are counted."""
    if parse_answer(text) == "no":
        return False
    first = text.split(".")[0] if "." in text else text
    return "yes" not in {word.strip(".,!?;:'\"()").lower() for word in first.split()}


def pope_metrics(predictions: Sequence[str], labels: Sequence[str]) -> tuple[dict[str, float], dict[str, int]]:
    """
    POPE's scores of "yes"/"no" predictions against labels, yes being the positive class, as LLaVA's
    `eval_pope.py` computes them: accuracy (TP+TN)/all, precision TP/(TP+FP), recall TP/(TP+FN),
    F1 2·P·R/(P+R) and yes_ratio, the fraction of "yes" predictions. Where the reference would divide by zero (no
    "yes" prediction for precision, no "yes" label for recall, P+R = 0 for F1) the score is 0 here.
    Returns (metrics, counts: questions, TP, FP, TN, FN).
    """
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels.")
    pairs = Counter(zip(predictions, labels, strict=True))
    tp, fp, tn, fn = pairs["yes", "yes"], pairs["yes", "no"], pairs["no", "no"], pairs["no", "yes"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    metrics = {
        "accuracy": (tp + tn) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": (tp + fp) / len(labels),
    }
    return metrics, {"questions": len(labels), "TP": tp, "FP": fp, "TN": tn, "FN": fn}


# --------------------------------------------------------------------------------------------------- models


def pope_chat_template(model, processor, prompt: str = "auto") -> tuple[str, str | None]:
    """
    The conversation POPE prompts a model in: (name, template; None for the processor's own). `vicuna_v1` is
    LLaVA-1.5's (`model_vqa_loader.py --conv-mode vicuna_v1`, with its system prompt), which the processors of
    stock `llava` checkpoints (llava-hf/llava-1.5-7b-hf: "USER: <image>\\n... ASSISTANT:") leave out; `processor`
    is the model's own; `auto` is the processor's where it is one of this project's templates (`build_llava`),
    vicuna_v1 for any other `llava` model, and the processor's otherwise.
    """
    if prompt not in PROMPTS:
        raise UserError(f"--prompt {prompt!r} is not one of {', '.join(PROMPTS)}.")
    own = getattr(processor, "chat_template", None)
    if prompt == "auto":
        known = {template: name for name, template in CHAT_TEMPLATES.items()}
        if own in known:
            return known[own], None
        prompt = "vicuna_v1" if model.config.model_type == "llava" else "processor"
    return (prompt, CHAT_TEMPLATES["vicuna_v1"]) if prompt == "vicuna_v1" else ("processor", None)


def _load_image(path: Path) -> Image.Image:
    """The image as displayed (`diffclip_lab/core/images.py`)."""
    try:
        return read_image(path)
    except UnreadableImage as error:  # missing, not an image, truncated or corrupt
        raise UserError(f"{path} does not decode as an image: {error}") from None


@torch.no_grad()
def answer_questions(
    model,
    processor,
    questions: Sequence[PopeQuestion],
    images_dir: str | os.PathLike,
    max_new_tokens: int = 128,
    batch_size: int = 1,
    label: str = "POPE",
    chat_template: str | None = None,
) -> list[str]:
    """
    The model's raw answer to every question, in order: one user turn of `chat_template` (default: the
    processor's) holding the image (RGB) and the question + `SHORT_ANSWER_PROMPT`, with the generation prompt;
    greedy decoding of at most `max_new_tokens` tokens (LLaVA's default, 128); the new tokens decoded without
    special tokens and stripped, as LLaVA's `model_vqa_loader.py` stores them. Every image file is checked before
    the model runs. LLaVA answers one question at a time; with `batch_size` > 1 prompts are padded on the left,
    which gives the same greedy answers up to numerical noise (in half precision a near-tie can flip).
    """
    images_dir = Path(images_dir)
    check_images(questions, images_dir)
    tokenizer = getattr(processor, "tokenizer", processor)
    if batch_size > 1 and tokenizer.pad_token is None:
        raise UserError("the tokenizer has no padding token, so questions cannot be batched: use --batch_size 1.")
    answers = []
    load_image = functools.lru_cache(maxsize=8)(_load_image)  # POPE asks each image its questions in a row
    batches = range(0, len(questions), batch_size)
    for start in tqdm(batches, desc=label, unit="batch", leave=False):
        batch = questions[start : start + batch_size]
        conversations = [
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": load_image(images_dir / question.image)},
                        {"type": "text", "text": question.text + SHORT_ANSWER_PROMPT},
                    ],
                }
            ]
            for question in batch
        ]
        inputs = processor.apply_chat_template(
            conversations,
            chat_template=chat_template,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            processor_kwargs={"padding": len(batch) > 1, "padding_side": "left"},
        ).to(model.device, dtype=model.dtype)
        output = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
        if not model.config.is_encoder_decoder:  # decoder-only models return the prompt too
            output = output[:, inputs["input_ids"].shape[1] :]
        answers += [answer.strip() for answer in processor.batch_decode(output, skip_special_tokens=True)]
    return answers


def pope_record(
    model_name: str, model_type: str, split: PopeSplit, answers: Sequence[str], settings: dict | None = None
) -> dict:
    """
    One result record in the shape `evaluation.evaluate` writes (model, model_type, dataset, split, task, protocol,
    main_metric, metrics, counts, versions, date), plus `answers`: every question's id, label, raw answer and parsed
    prediction, so that any score can be recomputed from the file. `settings` (generation options) join the counts.
    """
    predictions = [parse_answer(answer) for answer in answers]
    labels = [question.label for question in split.questions]
    metrics, counts = pope_metrics(predictions, labels)
    counts["images"] = len({question.image for question in split.questions})
    counts["unknown_answers"] = sum(map(is_unknown_answer, answers))
    return {
        "model": model_name,
        "model_type": model_type,
        "dataset": str(split.path),
        "split": split.name,
        "task": "pope",
        "protocol": PROTOCOL,
        "main_metric": "accuracy",
        "metrics": metrics,
        "counts": {**counts, **(settings or {})},
        **provenance(),
        "answers": [
            {
                "question_id": q.question_id,
                "label": q.label,
                "answer": answer,
                "prediction": prediction,
                "unknown": is_unknown_answer(answer),
            }
            for q, answer, prediction in zip(split.questions, answers, predictions, strict=True)
        ],
    }


def results_table(records: list[dict]) -> str:
    """One row per split (in POPE's order), its scores (0-1), the number of questions and of answers read as "yes"
    with no "yes" in them (`is_unknown_answer`), and a last row with the mean F1 over the splits (LLaVA-1.5's
    reported POPE number) when all three are there."""
    records = sorted(records, key=lambda record: SPLITS.index(record["split"]))
    rows = [
        [r["split"], *(r["metrics"][m] for m in METRICS), r["counts"]["questions"], r["counts"]["unknown_answers"]]
        for r in records
    ]
    if [r["split"] for r in records] == list(SPLITS):
        mean_f1 = sum(r["metrics"]["f1"] for r in records) / len(records)
        rows.append(["mean F1", "", "", "", mean_f1, "", sum(r[-2] for r in rows), sum(r[-1] for r in rows)])
    return markdown_table(["split", *METRICS, "questions", "unknown"], rows)


# ------------------------------------------------------------------------------------------- building splits


def read_object_annotations(path: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """
    Object annotations in the POPE repository's format (`segmentation/coco_ground_truth_segmentation.json`): JSON
    lines `{"image": "COCO_val2014_000000131089.jpg", "objects": ["person", "baseball bat"], ...}`, other keys
    allowed as there. Returns (image, objects) pairs in file order.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the object annotations {path}: {error}") from None
    annotations = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}, line {number}: not JSON ({error}).") from None
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("image"), str)
            or not isinstance(entry.get("objects"), list)
            or not all(isinstance(name, str) and name for name in entry["objects"])
        ):
            raise UserError(f"{path}, line {number}: expected {{'image': file name, 'objects': [object names]}}.")
        annotations.append((entry["image"], entry["objects"]))
    return annotations


def question_text(object_name: str) -> str:
    """'Is there a {object} in the image?', with 'an' before a name starting with a lower-case vowel, as in the
    released files ("Is there an orange in the image?")."""
    return QUESTION.format(article(object_name))


def build_pope_splits(
    annotations: Iterable[tuple[str, Iterable[str]]],
    num_images: int = 500,
    objects_per_image: int = 3,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """
    The three POPE splits of an object-annotated image set, as the POPE authors' code builds them (RUCAIBox/POPE,
    published as AoiDragon/POPE: `main.py`, `utils.py::pope`).

    `annotations`: (image file, object names present) pairs. An image's objects keep their given order (a set is
    sorted by name, so that the result never depends on hash order); repeated names count once.

    - `num_images` images are drawn at random among those with at least `objects_per_image` objects.
    - Per image, its first `objects_per_image` objects are asked about with label "yes", each followed by one absent
      object with label "no", so yes and no are equally many per image. An absent object is one not in the image's
      annotation and not yet asked about for this image:
      - random: drawn uniformly from the absent objects;
      - popular: the most frequent absent object;
      - adversarial: the absent object that co-occurs (is annotated in the same image) most often with the "yes"
        object just asked about;
      where popular or adversarial finds none (too few co-occurring objects), one drawn uniformly, as in the
      reference. Object frequencies, co-occurrence counts and the objects to choose from are those of the drawn
      images (the reference's, where the paper says "the whole dataset"); ties go to the object seen first.

    Differences to the reference, none of which changes which objects qualify: its random draws repeat
    `random.choice` until an absent object comes up, here one draw among the absent objects (the same distribution,
    another random stream), seeded by `seed` where the reference uses the unseeded global generator; question ids
    run from 0 in each split, as in the released files (the reference's code starts at 1); 'an' is written before
    vowels as in the released files (the reference code's `template.replace("a", "an")` would also turn "image"
    into "imange"); an object set too small to find an absent object is refused (the reference loops forever).

    Returns {split: [{"question_id", "image", "text", "label"}, ...]} for random, popular and adversarial, in the
    official files' format.
    """
    images = []
    for image, objects in annotations:
        names = sorted(objects) if isinstance(objects, (set, frozenset)) else list(objects)
        images.append((image, list(dict.fromkeys(names))))
    eligible = [entry for entry in images if len(entry[1]) >= objects_per_image]
    if len(eligible) < num_images:
        raise UserError(
            f"{len(eligible)} images have at least {objects_per_image} annotated objects; {num_images} are needed."
        )
    chosen = random.Random(seed).sample(eligible, num_images)
    frequency = Counter(name for _, objects in chosen for name in objects)  # keys in the order first seen
    by_frequency = sorted(frequency, key=lambda name: -frequency[name])  # stable: ties stay in first-seen order
    co_occurrence = {name: Counter() for name in frequency}
    for _, objects in chosen:
        for name in objects:
            co_occurrence[name].update(other for other in objects if other != name)
    by_co_occurrence = {name: sorted(count, key=lambda other: -count[other]) for name, count in co_occurrence.items()}
    splits = {}
    for split in SPLITS:
        rng = random.Random(f"{seed}-{split}")
        questions = []
        for image, objects in chosen:
            asked = set(objects)  # never a "no" about an object that is there, nor twice about one
            for positive in objects[:objects_per_image]:
                ranked = {"random": [], "popular": by_frequency, "adversarial": by_co_occurrence[positive]}[split]
                negative = next((name for name in ranked if name not in asked), None)
                if negative is None:
                    absent = [name for name in frequency if name not in asked]
                    if not absent:
                        raise UserError(
                            f"{image}: no object left to ask about that is absent from it; the {len(frequency)} "
                            f"objects of the {num_images} images are too few for {objects_per_image} per image."
                        )
                    negative = rng.choice(absent)
                asked.add(negative)
                for name, label in ((positive, "yes"), (negative, "no")):
                    text = question_text(name)
                    questions.append({"question_id": len(questions), "image": image, "text": text, "label": label})
        splits[split] = questions
    return splits


def write_pope_splits(
    splits: dict[str, list[dict]], output_dir: str | os.PathLike, dataset: str = "coco"
) -> list[Path]:
    """Write each split as `<output_dir>/<dataset>_pope_<split>.json` (JSON lines, as the official files), each file
    atomically; returns the paths."""
    paths = []
    for split, questions in splits.items():
        path = Path(output_dir) / f"{dataset}_pope_{split}.json"
        atomic_write_text(path, "".join(json.dumps(question) + "\n" for question in questions))
        paths.append(path)
    return paths
