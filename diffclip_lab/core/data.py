"""Image-text data for pretraining: loading any `datasets` layout or webdataset shards, decoding, and batching.

Supported sources (`load_image_text_dataset`):
- a Hub dataset id (`pixparse/cc3m-wds`, `nlphuji/flickr30k`, ...), with `streaming=True` for data larger than disk;
- a local folder written by `Dataset.save_to_disk`;
- webdataset shards as written by img2dataset (`*.tar` holding `{key}.jpg` and `{key}.txt`): a folder of them (the
  folder is the split), a folder with one subfolder of them per split (`<root>/<split>/*.tar`), a shard file, a brace
  pattern (`shards/{00000..00099}.tar`) or a `::`-separated list of these;
- any local folder or files `datasets.load_dataset` understands: parquet, arrow, csv/json with image paths, or an
  `imagefolder` with a `metadata.jsonl`/`metadata.csv` caption column.

Images are decoded here, not by `datasets`, as they are displayed (`diffclip_lab/core/images.py`: EXIF orientation,
16-bit and float scaling, transparency on white), so that a sample whose image does not decode (truncated, corrupt),
or whose caption is empty, is skipped, counted and named instead of stopping the run. Batches carry uint8 pixels,
which the training loop normalises on the device (`model_inputs`); `image_text_loader` builds the training loader.
"""

import math
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from PIL import Image

from .errors import UserError
from .images import UnreadableImage, displayed_size, load_rgb, open_image


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


def caption_text(value) -> str:
    """A caption string; datasets with several captions per image (lists) contribute their first one."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return value.strip() if isinstance(value, str) else ""


class ImageTransform:
    """
    Resize the short side to `image_size` and crop a square: a centre crop (what the model's image processor does),
    or with `crop_scale < 1` a random crop of a fraction of the area in [crop_scale, 1] and aspect ratio in [3/4, 4/3]
    (SLIP's RandomResizedCrop). The result is uint8 pixels, channels first; `normalize` turns them into the model's
    inputs with `mean`/`std`, in the training loop on the device, so that the loader's workers hand over a quarter of
    the bytes of float32 pixels.

    A JPEG not yet decoded is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg's DCT scaling, `Image.draft`) when its
    crop stays at least `draft_gap` × `image_size` on its short side at that size: decoding and resizing then cost a
    fraction, and the pixels differ slightly from those of a full decoding (docs/performance.md, "Input pipeline").
    `draft_gap=None` decodes every image in full.
    """

    def __init__(
        self,
        image_size: int,
        mean,
        std,
        crop_scale: float = 1.0,
        resample=Image.BILINEAR,
        draft_gap: float | None = 2.0,
    ):
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.crop_scale = crop_scale
        self.resample = resample
        self.draft_gap = draft_gap

    @classmethod
    def for_processor(cls, image_processor, crop_scale: float = 1.0, **options) -> "ImageTransform":
        """The transform matching a CLIP image processor's size, resampling and normalisation."""
        return cls(
            image_processor.crop_size["height"],
            image_processor.image_mean,
            image_processor.image_std,
            crop_scale,
            resample=int(image_processor.resample),
            **options,
        )

    def __call__(self, image: Image.Image, rng: random.Random | None = None) -> torch.Tensor:
        """uint8 pixels (3, image_size, image_size) of an opened or decoded image as displayed (crops are drawn on
        the upright image); raises `UnreadableImage` if it does not decode."""
        width, height = displayed_size(image)
        if self.crop_scale < 1 and rng is not None:
            area = width * height * rng.uniform(self.crop_scale, 1.0)
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            crop_w = min(width, round(math.sqrt(area * aspect)))
            crop_h = min(height, round(math.sqrt(area / aspect)))
            left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
            box, resized = (left, top, left + crop_w, top + crop_h), (self.image_size, self.image_size)
        else:
            short, long = sorted((width, height))
            long = int(self.image_size * long / short)  # truncated, as the image processors do
            box = (0, 0, width, height)
            resized = (self.image_size, long) if width <= height else (long, self.image_size)
        factor = self.draft(image, box)  # the shorter side of `box` is the same upright or not
        image = load_rgb(image)
        if factor != 1 or resized != image.size or box != (0, 0, width, height):  # else: already the size asked
            image = image.resize(resized, self.resample, box=tuple(edge * factor for edge in box))
        if resized != (self.image_size, self.image_size):
            left, top = (resized[0] - self.image_size) // 2, (resized[1] - self.image_size) // 2
            image = image.crop((left, top, left + self.image_size, top + self.image_size))
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)

    def draft(self, image: Image.Image, box: tuple[int, int, int, int]) -> float:
        """
        Have a JPEG not yet decoded decode at the largest DCT reduction (1/2, 1/4, 1/8) that keeps `box` at least
        `draft_gap` × `image_size` on its short side. Returns the factor from the image's pixels to the decoded ones:
        that reduction, or 1 for an image decoded in full (no room, not a JPEG, or decoded already).
        """
        if not self.draft_gap:
            return 1
        room = min(box[2] - box[0], box[3] - box[1]) / (self.draft_gap * self.image_size)
        reduction = next((r for r in (8, 4, 2) if r <= room), 1)
        width, height = image.size
        # Pillow picks the largest reduction within size // reduction; None for other formats and decoded images
        drafted = image.draft(None, (width // reduction, height // reduction)) if reduction > 1 else None
        return 1 if drafted is None else drafted[1][2] / width  # drafted: (mode, the full image in decoded pixels)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (..., 3, H, W) on any device as the model takes them: float32 scaled to [0, 1] and normalised
        with `mean`/`std`, by the same operations in the same order wherever it runs, so the same numbers (in place:
        one batch-sized allocation, not three)."""
        return pixels.float().div_(255).sub_(self.mean.to(pixels.device)).div_(self.std.to(pixels.device))


class Skipped(NamedTuple):
    """An example that cannot be trained on: its name (`sample_name`), and why."""

    key: str
    reason: str


def sample_name(example: dict, image_column: str, index: int) -> str:
    """What names an example for the user: a webdataset sample's shard and key, else its image file, else its
    position (the row of a dataset, the place in a stream)."""
    if "__key__" in example:
        shard = example.get("__url__")
        return f"{Path(shard).name}:{example['__key__']}" if shard else str(example["__key__"])
    image = example.get(image_column)
    path = image.get("path") if isinstance(image, dict) else image if isinstance(image, str) else None
    return path or f"example {index}"


class ExampleEncoder:
    """Turns one raw example into uint8 pixels and caption text, or `Skipped`; `model_inputs` finishes a collated
    batch of them on the training device."""

    def __init__(self, image_column: str, caption_column: str, transform: ImageTransform, seed: int = 0):
        self.image_column, self.caption_column = image_column, caption_column
        self.transform, self.seed, self.epoch = transform, seed, 0

    def __call__(self, example: dict, index: int) -> dict | Skipped:
        caption = caption_text(example.get(self.caption_column))
        if not caption:
            return Skipped(sample_name(example, self.image_column, index), "empty caption")
        # augmentation drawn from (seed, epoch, index): the same whichever process, worker or resumed run loads it
        rng = random.Random(f"{self.seed}-{self.epoch}-{index}")
        try:
            pixels = self.transform(open_image(example.get(self.image_column)), rng)
        except UnreadableImage as error:
            return Skipped(sample_name(example, self.image_column, index), f"image does not decode: {error}")
        return {"pixel_values": pixels, "caption": caption}

    def model_inputs(self, batch: dict, device) -> dict:
        """A collated batch (its `skipped` names taken out) moved to `device`, its uint8 pixels normalised there."""
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        batch["pixel_values"] = self.transform.normalize(batch["pixel_values"])
        return batch


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

    def model_inputs(self, batch: dict, device) -> dict:
        return self.encoder.model_inputs(batch, device)


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

    def model_inputs(self, batch: dict, device) -> dict:
        return self.encoder.model_inputs(batch, device)


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
                "pixel_values": torch.zeros(0, 3, self.image_size, self.image_size, dtype=torch.uint8),
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
            # in a loader worker stacked straight into shared memory, which the training process then reads in place
            "pixel_values": torch.utils.data.default_collate([example["pixel_values"] for example in kept]),
            "num_skipped": num_skipped,
            "skipped": skipped,
        }


def image_text_loader(
    raw: datasets.Dataset | datasets.IterableDataset,
    image_column: str,
    caption_column: str,
    transform: ImageTransform,
    tokenizer,
    batch_size: int,
    num_workers: int,
    seed: int = 0,
    shuffle_buffer: int = 10_000,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> tuple[MapStyleImageText | StreamingImageText, torch.utils.data.DataLoader]:
    """
    The training data (the loop sets its epoch and has it finish batches with `model_inputs`) and its loader:
    decoding, augmentation, tokenization and collation in `num_workers` processes (0: in this one). A stream's shards
    are split across the `world_size` training processes here, and shuffled in a buffer of `shuffle_buffer`
    examples; a `datasets.Dataset` is reshuffled every epoch by the loader (which Accelerate splits), its last
    incomplete batch dropped. `pin_memory` (for a GPU) lets batches be copied to the device asynchronously.
    """
    encoder = ExampleEncoder(image_column, caption_column, transform, seed=seed)
    collate = Collator(tokenizer, tokenizer.model_max_length, transform.image_size)
    if isinstance(raw, datasets.IterableDataset):
        raw = split_dataset_by_node(raw, rank, world_size)
        data = StreamingImageText(raw.shuffle(seed=seed, buffer_size=shuffle_buffer), encoder)
        options = {}
    else:
        data = MapStyleImageText(raw, encoder)
        options = dict(shuffle=True, drop_last=True)
    loader = torch.utils.data.DataLoader(
        data, batch_size, collate_fn=collate, num_workers=num_workers, pin_memory=pin_memory, **options
    )
    return data, loader
