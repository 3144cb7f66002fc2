# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Conversations for training LLaVA-style models, tokenised with the answers as the only targets.

LLaVA's format: a JSON list (or JSON lines) of records `{"id", "image", "conversations": [{"from": "human",
"value": "<image>\\nWhat is ...?"}, {"from": "gpt", "value": "..."}, ...]}`, the image a path relative to an image
folder; or any `datasets` layout with those columns (the image a path, bytes or an image). The first human turn holds
the one `<image>`; turns alternate, human first.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from .cli import UserError
from .data import decode_image, load_image_text_dataset
from .vlm import IMAGE_TOKEN as IMAGE


ROLES = {"human": "user", "gpt": "assistant"}
IGNORE = -100  # the label of a token that is no target


@dataclass
class Conversation:
    """One training example: its id, its image (a path, bytes or an image) and its chat-template messages."""

    id: str
    image: object
    messages: list[dict]


def load_conversations(name_or_path: str, image_folder: str | None = None, split: str = "train") -> list[Conversation]:
    """Every conversation of a LLaVA JSON(-lines) file or a `datasets` layout, checked before any training."""
    path = Path(name_or_path)
    if path.suffix in (".json", ".jsonl"):
        if not path.is_file():
            raise UserError(f"{path}: no such conversation file.")
        text = path.read_text(encoding="utf-8")
        try:
            records = json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x]
        except json.JSONDecodeError as error:
            raise UserError(f"{path} is not valid JSON: {error}") from None
        folder = Path(image_folder) if image_folder else path.parent
    else:
        records = load_image_text_dataset(name_or_path, split=split)
        if "conversations" not in records.column_names:
            raise UserError(f"{name_or_path} has no 'conversations' column; its columns are {records.column_names}.")
        if isinstance(records.features.get("image"), datasets.Image):
            records = records.cast_column("image", datasets.Image(decode=False))
        folder = Path(image_folder) if image_folder else None
    conversations = [_conversation(record, index, folder, name_or_path) for index, record in enumerate(records)]
    if not conversations:
        raise UserError(f"{name_or_path} holds no conversations.")
    return conversations


def _conversation(record: dict, index: int, folder: Path | None, source: str) -> Conversation:
    key = str(record.get("id", index))
    where = f"{source}, conversation {key!r}"
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns or len(turns) % 2:
        raise UserError(f"{where}: 'conversations' must be a non-empty list of human/gpt turn pairs.")
    messages = []
    for number, turn in enumerate(turns):
        speaker, value = turn.get("from"), turn.get("value")
        if speaker != ("human", "gpt")[number % 2] or not isinstance(value, str):
            raise UserError(f"{where}: turn {number} must be from {('human', 'gpt')[number % 2]!r} with a text value.")
        images = value.count(IMAGE)
        if images != (number == 0):
            raise UserError(f"{where}: the first human turn must hold one {IMAGE}, and no other turn any ({value!r}).")
        content = [{"type": "text", "text": value.replace(IMAGE, "").strip()}]
        messages.append({"role": ROLES[speaker], "content": [{"type": "image"}, *content] if images else content})
    image = record.get("image")
    if isinstance(image, str):
        image = Path(image) if folder is None else folder / image
        if not image.is_file():
            raise UserError(f"{where}: its image {image} does not exist.")
    elif image is None:
        raise UserError(f"{where} has no image.")
    return Conversation(key, image, messages)


class ConversationEncoder:
    """
    A conversation as the model trains on it: `input_ids` (tokens, the `<image>` expanded to `image_seq_length`
    image tokens), `labels` (the tokens of the assistant's answers, eos included; -100 elsewhere) and
    `pixel_values` (3, size, size), as the processor prepares them for inference.
    """

    def __init__(self, processor, image_seq_length: int, max_length: int | None = None):
        self.processor, self.image_seq_length, self.max_length = processor, image_seq_length, max_length

    def _render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        text = self.processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        return text.replace(IMAGE, IMAGE * self.image_seq_length)

    def answer_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character span of each answer: the prompt rendered for generation is
        a prefix of the conversation up to the answer, and what follows it up to the next turn is the answer."""
        text, spans = self._render(messages), []
        for index, message in enumerate(messages):
            if message["role"] == "assistant":
                prompt, upto = self._render(messages[:index], True), self._render(messages[: index + 1])
                if not (upto.startswith(prompt) and text.startswith(upto)):
                    raise UserError("the chat template does not render a prompt as a prefix of its answer.")
                spans.append((len(prompt), len(upto.rstrip())))
        return text, spans

    def __call__(self, conversation: Conversation) -> dict:
        text, spans = self.answer_spans(conversation.messages)
        tokens = self.processor.tokenizer(text, return_offsets_mapping=True)
        labels = [
            token if any(start <= begin and end <= stop and begin < end for start, stop in spans) else IGNORE
            for token, (begin, end) in zip(tokens["input_ids"], tokens["offset_mapping"], strict=True)
        ]
        if self.max_length and len(labels) > self.max_length:
            raise UserError(
                f"conversation {conversation.id!r} is {len(labels)} tokens long, more than --max_length "
                f"{self.max_length}; raise it or shorten the conversation."
            )
        image = decode_image(conversation.image)
        if image is None:
            raise UserError(f"the image of conversation {conversation.id!r} does not decode.")
        pixel_values = self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        return {
            "input_ids": torch.tensor(tokens["input_ids"]),
            "labels": torch.tensor(labels),
            "pixel_values": pixel_values,
        }


class ConversationDataset(torch.utils.data.Dataset):
    """Conversations encoded on access (in the loader's workers)."""

    def __init__(self, conversations: list[Conversation], encoder: ConversationEncoder):
        self.conversations, self.encoder = conversations, encoder

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> dict:
        return self.encoder(self.conversations[index])

    def set_epoch(self, epoch: int) -> None:
        """Nothing depends on the epoch here (no augmentation): the loader's sampler reshuffles."""


def collate_conversations(examples: list[dict], pad_token_id: int) -> dict:
    """Right-padded `input_ids` and `labels` (padding: `pad_token_id` and -100), their `attention_mask`, and the
    stacked `pixel_values`."""
    length = max(len(example["input_ids"]) for example in examples)
    input_ids = torch.full((len(examples), length), pad_token_id)
    labels = torch.full((len(examples), length), IGNORE)
    attention_mask = torch.zeros(len(examples), length, dtype=torch.long)
    for row, example in enumerate(examples):
        size = len(example["input_ids"])
        input_ids[row, :size], labels[row, :size], attention_mask[row, :size] = (
            example["input_ids"],
            example["labels"],
            1,
        )
    pixel_values = torch.stack([example["pixel_values"] for example in examples])
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask, "pixel_values": pixel_values}
