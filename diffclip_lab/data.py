"""Image-text data for pretraining: loading any `datasets` layout or webdataset shards, decoding, and batching.

Supported sources (`load_image_text_dataset`):
- a Hub dataset id (`pixparse/cc3m-wds`, `nlphuji/flickr30k`, ...), with `streaming=True` for data larger than disk;
- a local folder written by `Dataset.save_to_disk`;
- webdataset shards as written by img2dataset (`*.tar` holding `{key}.jpg` and `{key}.txt`): a folder of them (the
  folder is the split), a folder with one subfolder of them per split (`<root>/<split>/*.tar`), a shard file, a brace
  pattern (`shards/{00000..00099}.tar`) or a `::`-separated list of these;
- any local folder or files `datasets.load_dataset` understands: parquet, arrow, csv/json with image paths, or an
  `imagefolder` with a `metadata.jsonl`/`metadata.csv` caption column.

Images are decoded here, not by `datasets`, so that a sample whose image does not decode, or whose caption is empty,
is skipped and counted instead of stopping the run.
"""

import io
import math
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import datasets
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .cli import UserError


IMAGE_COLUMNS = ("image", "jpg", "jpeg", "png", "webp", "img")
CAPTION_COLUMNS = ("caption", "text", "txt", "sentence", "sentences")


def load_image_text_dataset(
    name_or_path: str, split: str = "train", streaming: bool = False
) -> datasets.Dataset | datasets.IterableDataset:
    """Open `name_or_path` in whichever of the supported layouts it is (see the module docstring)."""
    path = Path(name_or_path)
    try:
        if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise UserError(f"{name_or_path} has no split {split!r}; its splits are {list(dataset)}.")
                dataset = dataset[split]
            return dataset.to_iterable_dataset() if streaming else dataset
        if (shards := webdataset_shards(name_or_path, split)) is not None:
            return datasets.load_dataset("webdataset", data_files={split: shards}, split=split, streaming=streaming)
        return datasets.load_dataset(name_or_path, split=split, streaming=streaming)
    except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as error:
        raise UserError(
            f"dataset {name_or_path!r} not found: give a Hub dataset id, a folder written by save_to_disk, webdataset "
            f".tar shards (a folder, files, 'a.tar::b.tar' or a brace pattern), or files datasets.load_dataset reads "
            f"({error})."
        ) from None
    except ValueError as error:  # e.g. an unknown split
        raise UserError(f"dataset {name_or_path!r} cannot be read as asked: {error}") from None


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion, as img2dataset users write shard lists: `{00000..00003}` (zero padding kept) and
    `{a,b}`, any number of them."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body, (head, tail) = match.group(1), (pattern[: match.start()], pattern[match.end() :])
    if numbers := re.fullmatch(r"(\d+)\.\.(\d+)", body):
        first, last = numbers.groups()
        width = len(first) if first.startswith("0") else 0
        items = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
    else:
        items = body.split(",")
    return [expanded for item in items for expanded in expand_braces(head + item + tail)]


def webdataset_shards(name_or_path: str, split: str) -> list[str] | None:
    """
    The `.tar` shards of `split`, or None when `name_or_path` is not webdataset shards. `name_or_path` is a shard, a
    brace pattern or a '::'-separated list of them, or a folder: of shards (img2dataset's flat layout, whose one split
    is the folder itself), or of one subfolder of shards per split (`<root>/<split>/*.tar`).
    """
    parts = [shard for part in name_or_path.split("::") for shard in expand_braces(part)]
    if len(parts) > 1 or parts[0].endswith(".tar"):
        if not all(part.endswith(".tar") for part in parts):
            return None
        if missing := [part for part in parts if not Path(part).is_file()]:
            raise UserError(f"webdataset shard(s) not found: {', '.join(missing[:5])}{' ...' * (len(missing) > 5)}")
        return parts
    root = Path(name_or_path)
    if not root.is_dir():
        return None
    splits = {child.name: child for child in root.iterdir() if child.is_dir() and any(child.glob("*.tar"))}
    if splits:
        if split not in splits:
            raise UserError(f"{root} has no split {split!r} of shards; its splits are {sorted(splits)}.")
        return sorted(str(p) for p in splits[split].glob("*.tar"))
    shards = sorted(str(p) for p in root.glob("*.tar"))
    if not shards:
        return None
    if split != "train":
        raise UserError(
            f"{root} holds one set of shards and no split subfolders, so it has no split {split!r}: point the "
            "dataset at that split's own folder (its shards are read as 'train'), or give <root>/<split>/*.tar."
        )
    return shards


def find_column(dataset, given: str | None, candidates: tuple[str, ...], kind: str) -> str:
    """The `kind` column: `given`, or the first of the usual `candidates` the dataset has."""
    columns = list(dataset.column_names or dataset.features or [])
    column = given or next((c for c in candidates if c in columns), None)
    if column is None or column not in columns:
        raise UserError(
            f"the dataset has no {kind} column {given or ' / '.join(candidates)!r}; its columns are {columns}. "
            f"Name it with --{kind}_column."
        )
    return column


def resolve_columns(dataset, image_column: str | None, caption_column: str | None) -> tuple[str, str]:
    """The image and caption columns: as given, or the first of the usual names the dataset has."""
    return (
        find_column(dataset, image_column, IMAGE_COLUMNS, "image"),
        find_column(dataset, caption_column, CAPTION_COLUMNS, "caption"),
    )


def without_image_decoding(dataset, image_column: str):
    """Let the image column hold raw bytes or paths, so undecodable images can be skipped instead of raised."""
    if isinstance((dataset.features or {}).get(image_column), datasets.Image):
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def decode_image(value) -> Image.Image | None:
    """An RGB image from a PIL image, bytes, a path, or `datasets`' {"bytes", "path"} dict; None if it won't decode."""
    try:
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            value = Image.open(io.BytesIO(value))
        elif isinstance(value, (str, Path)):
            value = Image.open(value)
        if not isinstance(value, Image.Image):
            return None
        value.load()
        return value.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def caption_text(value) -> str:
    """A caption string; datasets with several captions per image (lists) contribute their first one."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return value.strip() if isinstance(value, str) else ""


class ImageTransform:
    """
    Resize the short side to `image_size` and crop a square, then normalise with `mean`/`std`: a centre crop (what
    the model's image processor does), or with `crop_scale < 1` a random crop of a fraction of the area in
    [crop_scale, 1] and aspect ratio in [3/4, 4/3] (SLIP's RandomResizedCrop).
    """

    def __init__(self, image_size: int, mean, std, crop_scale: float = 1.0, resample=Image.BILINEAR):
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.crop_scale = crop_scale
        self.resample = resample

    @classmethod
    def for_processor(cls, image_processor, crop_scale: float = 1.0) -> "ImageTransform":
        """The transform matching a CLIP image processor's size, resampling and normalisation."""
        return cls(
            image_processor.crop_size["height"],
            image_processor.image_mean,
            image_processor.image_std,
            crop_scale,
            resample=int(image_processor.resample),
        )

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        width, height = image.size
        if self.crop_scale < 1 and rng is not None:
            area = width * height * rng.uniform(self.crop_scale, 1.0)
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            crop_w = min(width, round(math.sqrt(area * aspect)))
            crop_h = min(height, round(math.sqrt(area / aspect)))
            left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
            image = image.resize(
                (self.image_size, self.image_size), self.resample, box=(left, top, left + crop_w, top + crop_h)
            )
        else:
            short, long = sorted((width, height))
            long = int(self.image_size * long / short)  # truncated, as the image processors do
            resized = (self.image_size, long) if width <= height else (long, self.image_size)
            if resized != image.size:
                image = image.resize(resized, self.resample)
            left, top = (resized[0] - self.image_size) // 2, (resized[1] - self.image_size) // 2
            image = image.crop((left, top, left + self.image_size, top + self.image_size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return (pixels - self.mean) / self.std


class Skipped(NamedTuple):
    """An example that cannot be trained on: its key (webdataset) or index, and why."""

    key: str
    reason: str


class ExampleEncoder:
    """Turns one raw example into model inputs (pixel values and caption text), or `Skipped`."""

    def __init__(self, image_column: str, caption_column: str, transform: ImageTransform, seed: int = 0):
        self.image_column, self.caption_column = image_column, caption_column
        self.transform, self.seed, self.epoch = transform, seed, 0

    def __call__(self, example: dict, index: int) -> dict | Skipped:
        key = str(example.get("__key__", index))
        caption = caption_text(example.get(self.caption_column))
        if not caption:
            return Skipped(key, "empty caption")
        image = decode_image(example.get(self.image_column))
        if image is None:
            return Skipped(key, "image does not decode")
        # augmentation drawn from (seed, epoch, index): the same whichever process, worker or resumed run loads it
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        return {"pixel_values": self.transform(image, rng), "caption": caption}


class MapStyleImageText(torch.utils.data.Dataset):
    """A `datasets.Dataset` seen through an [`ExampleEncoder`]."""

    def __init__(self, dataset: datasets.Dataset, encoder: ExampleEncoder):
        self.dataset, self.encoder = dataset, encoder

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict | None:
        return self.encoder(self.dataset[index], index)

    def set_epoch(self, epoch: int) -> None:
        self.encoder.epoch = epoch


class StreamingImageText(torch.utils.data.IterableDataset):
    """A `datasets.IterableDataset` (already split across processes) seen through an [`ExampleEncoder`]."""

    def __init__(self, dataset: datasets.IterableDataset, encoder: ExampleEncoder):
        self.dataset, self.encoder = dataset, encoder

    def __iter__(self) -> Iterator[dict | None]:
        worker = torch.utils.data.get_worker_info()
        offset = 0 if worker is None else worker.id
        stride = 1 if worker is None else worker.num_workers
        for position, example in enumerate(self.dataset):  # each worker reads its own shards
            yield self.encoder(example, position * stride + offset)

    def set_epoch(self, epoch: int) -> None:
        self.encoder.epoch = epoch
        self.dataset.set_epoch(epoch)


class Collator:
    """Stacks the examples that decoded and tokenizes their captions; counts and names the ones skipped."""

    def __init__(self, tokenizer, context_length: int, image_size: int):
        self.tokenizer, self.context_length, self.image_size = tokenizer, context_length, image_size

    def __call__(self, examples: list[dict | Skipped]) -> dict:
        kept = [example for example in examples if not isinstance(example, Skipped)]
        skipped = [f"{example.key} ({example.reason})" for example in examples if isinstance(example, Skipped)]
        num_skipped = torch.tensor(len(skipped))
        if not kept:
            return {
                "input_ids": torch.zeros(0, self.context_length, dtype=torch.long),
                "attention_mask": torch.zeros(0, self.context_length, dtype=torch.long),
                "pixel_values": torch.zeros(0, 3, self.image_size, self.image_size),
                "num_skipped": num_skipped,
                "skipped": skipped,
            }
        text = self.tokenizer(
            [example["caption"] for example in kept],
            padding="max_length",
            max_length=self.context_length,
            truncation=True,
            return_tensors="pt",
        )
        return {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "pixel_values": torch.stack([example["pixel_values"] for example in kept]),
            "num_skipped": num_skipped,
            "skipped": skipped,
        }
