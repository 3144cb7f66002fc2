# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Conversations for training LLaVA-style models, tokenised with the answers as the only targets.

LLaVA's format: a JSON list (or JSON lines) of records `{"id", "image", "conversations": [{"from": "human",
"value": "<image>\\nWhat is ...?"}, {"from": "gpt", "value": "..."}, ...]}`, the image a path relative to an image
folder; or any `datasets` layout with those columns (the image a path, bytes or an image). Turns alternate, human
first. An image conversation's first human turn holds its one `<image>` (moved to the front, as LLaVA's
`preprocess_multimodal` does); a text-only one (no `image`, no `<image>`: the ShareGPT part of LLaVA-1.5's
mix665k) trains the language model alone, with no image tokens and no pixels.

Two templates, as LLaVA-1.5's two stages: `plain` (stage 1, LLaVA's `preprocess_plain`: the image tokens, then the
answer and "\\n", the human turn dropped, the answer and "\\n" supervised) and `chat` (stage 2: the processor's chat
template, LLaVA-1.5's `vicuna_v1` as `build_llava` writes it; each answer and its end-of-sequence token supervised,
as LLaVA's `preprocess_v1`). Sequences longer than `model_max_length` are cut to it, as LLaVA cuts them.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from ..core.data import load_image_text_dataset
from ..core.errors import UserError
from ..core.images import decode_image
from .composition import IMAGE_TOKEN as IMAGE


ROLES = {"human": "user", "gpt": "assistant"}
IGNORE = -100  # the label of a token that is no target


@dataclass
class Conversation:
    """One training example: its id, its image (a path, bytes or an image; None for a text-only conversation) and
    its chat-template messages."""

    id: str
    image: object
    messages: list[dict]

    @property
    def modality_length(self) -> int:
        """LLaVA's `modality_lengths`: the number of words of the conversation, negative for a text-only one."""
        texts = [item["text"] for message in self.messages for item in message["content"] if item["type"] == "text"]
        words = max(sum(len(text.split()) for text in texts), 1)  # 0 would have no sign
        return words if self.image is not None else -words


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
    image = record.get("image")
    messages = []
    for number, turn in enumerate(turns):
        speaker, value = turn.get("from"), turn.get("value")
        if speaker != ("human", "gpt")[number % 2] or not isinstance(value, str):
            raise UserError(f"{where}: turn {number} must be from {('human', 'gpt')[number % 2]!r} with a text value.")
        images = value.count(IMAGE)
        if image is None and images:
            raise UserError(f"{where}: turn {number} holds {IMAGE} but the conversation has no image.")
        if image is not None and images != (number == 0):
            raise UserError(
                f"{where}: an image conversation's first human turn must hold one {IMAGE}, and no other turn any "
                f"({value!r}); a text-only conversation has neither an image nor {IMAGE}."
            )
        content = [{"type": "text", "text": value.replace(IMAGE, "").strip()}]
        messages.append({"role": ROLES[speaker], "content": [{"type": "image"}, *content] if images else content})
    if isinstance(image, str):
        image = Path(image) if folder is None else folder / image
        if not image.is_file():
            raise UserError(f"{where}: its image {image} does not exist.")
    return Conversation(key, image, messages)


class ConversationEncoder:
    """
    A conversation as the model trains on it: `input_ids` (tokens, the `<image>` expanded to `image_seq_length`
    image tokens), `labels` (the supervised tokens, -100 elsewhere: see the module's templates) and, for an image
    conversation, `pixel_values` (3, size, size) as the processor prepares them for inference. `template` is
    "plain" or "chat"; a sequence longer than `model_max_length` is cut to it (LLaVA's truncation), one longer than
    `max_length` refused. `pad_to_square` overrides the processor's padding of images to a square (LLaVA-1.5 pads
    in stage 2 only).
    """

    def __init__(
        self,
        processor,
        image_seq_length: int,
        max_length: int | None = None,
        template: str = "chat",
        model_max_length: int | None = None,
        pad_to_square: bool | None = None,
    ):
        if template not in ("plain", "chat"):
            raise ValueError(f"template {template!r} is neither 'plain' nor 'chat'")
        self.processor, self.image_seq_length, self.max_length = processor, image_seq_length, max_length
        self.template, self.model_max_length = template, model_max_length
        self.image_options = {} if pad_to_square is None else {"do_pad": pad_to_square}

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
                spans.append((len(prompt), len(upto.rstrip(" "))))
        return text, spans

    def plain_spans(self, conversation: Conversation) -> tuple[str, list[tuple[int, int]]]:
        """LLaVA's `plain`: the image, then the answer (the caption) and "\\n"; the answer and "\\n" supervised."""
        if conversation.image is None or len(conversation.messages) != 2:
            raise UserError(
                f"conversation {conversation.id!r}: the plain template (stage 1) takes an image and one "
                "human/gpt pair (a caption); use the chat template for other conversations."
            )
        prefix = IMAGE * self.image_seq_length
        answer = conversation.messages[1]["content"][0]["text"] + "\n"
        return prefix + answer, [(len(prefix), len(prefix) + len(answer))]

    def __call__(self, conversation: Conversation) -> dict:
        if self.template == "plain":
            text, spans = self.plain_spans(conversation)
        else:
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
        input_ids = tokens["input_ids"][: self.model_max_length]
        labels = labels[: self.model_max_length]
        image_token = self.processor.tokenizer.convert_tokens_to_ids(IMAGE)
        if conversation.image is not None and input_ids.count(image_token) != self.image_seq_length:
            raise UserError(
                f"conversation {conversation.id!r}: --model_max_length {self.model_max_length} cuts through its "
                f"{self.image_seq_length} image tokens; raise it."
            )
        example = {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels)}
        if conversation.image is not None:
            image = decode_image(conversation.image)
            if image is None:
                raise UserError(f"the image of conversation {conversation.id!r} does not decode.")
            pixels = self.processor.image_processor(images=image, return_tensors="pt", **self.image_options)
            example["pixel_values"] = pixels["pixel_values"][0]
        return example


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
    `pixel_values` of the image conversations stacked in order (absent when there are none: the model reads each
    image where its tokens are)."""
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
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
    pixels = [example["pixel_values"] for example in examples if "pixel_values" in example]
    if pixels:
        batch["pixel_values"] = torch.stack(pixels)
    return batch


def modality_grouped_indices(lengths: list[int], batch_size: int, num_processes: int, generator) -> list[int]:
    """
    The sample order of LLaVA's `group_by_modality_length` (`LengthGroupedSampler`): image conversations (positive
    `lengths`) and text-only ones (negative) each shuffled and cut into megabatches of `batch_size` × `num_processes`,
    each megabatch sorted by length and dealt to the processes in chunks of about equal total length; the
    megabatches of one modality (all but each modality's last) shuffled together; the two last ones joined at the end.
    So every process's batch holds one modality, except in that final megabatch.
    """
    megabatch = batch_size * num_processes

    def grouped(indices: list[int]) -> list[list[int]]:
        shuffled = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        groups = []
        for start in range(0, len(shuffled), megabatch):
            group = sorted(shuffled[start : start + megabatch], key=lambda i: abs(lengths[i]), reverse=True)
            groups.append([i for chunk in _even_chunks(group, lengths, num_processes) for i in chunk])
        return groups

    image = [i for i, length in enumerate(lengths) if length > 0]
    text = [i for i, length in enumerate(lengths) if length < 0]
    if not image or not text:
        return [i for group in grouped(image or text) for i in group]
    image_groups, text_groups = grouped(image), grouped(text)
    groups = image_groups[:-1] + text_groups[:-1]
    groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
    return [i for group in groups for i in group] + sorted(image_groups[-1] + text_groups[-1])


def _even_chunks(indices: list[int], lengths: list[int], chunks: int) -> list[list[int]]:
    """LLaVA's `split_to_even_chunks`: each index (longest first) to the chunk of least total length that is not
    full; a megabatch that does not divide evenly is dealt round-robin."""
    if len(indices) % chunks:
        return [indices[i::chunks] for i in range(chunks)]
    size, result, totals = len(indices) // chunks, [[] for _ in range(chunks)], [0] * chunks
    for index in indices:
        shortest = totals.index(min(totals))
        result[shortest].append(index)
        totals[shortest] += abs(lengths[index])
        if len(result[shortest]) == size:
            totals[shortest] = float("inf")
    return result


class ModalityGroupedSampler(torch.utils.data.Sampler):
    """`modality_grouped_indices` of the conversations, reshuffled each epoch from `seed` and the epoch number (the
    loader's `set_epoch`); give the loader `batch_size` as the per-device batch."""

    def __init__(self, conversations: list[Conversation], batch_size: int, num_processes: int, seed: int):
        self.lengths = [conversation.modality_length for conversation in conversations]
        self.batch_size, self.num_processes, self.seed, self.epoch = batch_size, num_processes, seed, 0

    def __len__(self) -> int:
        return len(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(modality_grouped_indices(self.lengths, self.batch_size, self.num_processes, generator))
