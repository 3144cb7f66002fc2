"""Evaluation datasets in the layouts the evaluation protocols use.

- CLIP Benchmark webdataset (`clip-benchmark/wds_*` on the Hub, or a local copy): `<root>/<split>/nshards.txt` and
  `0.tar ... N-1.tar`; per sample an image under `webp`/`png`/`jpg`/`jpeg`, `cls` (class index) for classification,
  `txt` (all captions of the image, one per line) for retrieval; `<root>/classnames.txt` and
  `<root>/zeroshot_classification_templates.txt` (one entry per line, templates with `{c}`), and
  `<root>/dataset_type.txt` saying `retrieval` for retrieval datasets.
- Any `datasets` image dataset (Hub id, `save_to_disk` folder, parquet, imagefolder, ...) with a ClassLabel (or
  integer) label column, or a caption column (a string or a list of strings per image).
- MMVP-VLM: `Questions.csv` (`Question ID`, `Type`, `Statement`) and `MLLM_VLM Images/<Type>/<id>.jpg`; consecutive
  question ids form a pair.
"""

import csv
import hashlib
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from PIL import Image

from ..core.data import (
    CAPTION_COLUMNS,
    IMAGE_COLUMNS,
    find_column,
    load_image_text_dataset,
    without_image_decoding,
)
from ..core.errors import UserError
from ..core.images import UnreadableImage, decode_image, read_image


IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # the order CLIP Benchmark looks for them
DEFAULT_TEMPLATES = ["a photo of a {c}."]


class LazyImages(Sequence):
    """Images decoded on access, so that a dataset never has to fit in memory decoded."""

    def __init__(self, length: int, load: Callable[[int], object], source: str):
        self.length, self.load, self.source = length, load, source

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Image.Image:
        """The image as displayed (`diffclip_lab/core/images.py`); one that does not decode stops the evaluation."""
        try:
            return read_image(self.load(index))
        except UnreadableImage as error:
            raise UserError(
                f"image {index} of {self.source} does not decode ({error}); evaluation data must be clean."
            ) from None


@dataclass
class EvalSplit:
    """One split of an evaluation dataset: images, and labels (classification) or captions (retrieval)."""

    name: str
    images: LazyImages
    fingerprint: str  # identifies the images' content, for the feature cache
    labels: list[int] | None = None
    captions: list[list[str]] | None = None
    skipped_captions: int = 0  # empty ones, not scored
    classnames: list[str] | None = None
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))

    def require_labels(self) -> list[int]:
        if self.labels is None:
            raise UserError(
                f"{self.name} has no class labels (a `cls` entry or a label column); this task needs them."
            )
        return self.labels

    def require_captions(self) -> list[list[str]]:
        if self.captions is None:
            raise UserError(f"{self.name} has no captions (a `txt` entry or a caption column); retrieval needs them.")
        return self.captions


def _captions(per_image: list[list]) -> dict:
    """Each image's captions, stripped; empty ones are dropped and counted, as training skips them."""
    captions = [[c.strip() for c in image if isinstance(c, str) and c.strip()] for image in per_image]
    skipped = sum(len(image) for image in per_image) - sum(len(image) for image in captions)
    return {"captions": captions, "skipped_captions": skipped}


def _lines(path: Path) -> list[str] | None:
    return (
        [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if path.is_file()
        else None
    )


def _given_lines(file: str, option: str) -> list[str]:
    if not Path(file).is_file():
        raise UserError(f"{option} {file}: no such file.")
    return _lines(Path(file))


def _dataset_root(name_or_path: str, allow_patterns: list[str] | None = None) -> Path:
    """A local folder, or a Hub dataset repo's snapshot (only the files matching `allow_patterns`)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path, repo_type="dataset", allow_patterns=allow_patterns))


def is_clip_benchmark(name_or_path: str) -> bool:
    path = Path(name_or_path)
    return (
        (path / "classnames.txt").is_file()
        or any(path.glob("*/nshards.txt"))
        or (not path.exists() and name_or_path.split("/")[-1].startswith("wds_"))
    )


def load_clip_benchmark(name_or_path: str, split: str) -> EvalSplit:
    """A split of a CLIP Benchmark webdataset (see the module docstring)."""
    root = _dataset_root(name_or_path, [f"{split}/*", "*.txt"])  # only the split and the text files
    split_dir = root / split
    nshards = _lines(split_dir / "nshards.txt")
    if nshards is None:
        raise UserError(
            f"{split_dir}/nshards.txt is missing: {name_or_path} has no split {split!r} in the CLIP "
            "Benchmark layout (<root>/<split>/nshards.txt and 0.tar ... N-1.tar)."
        )
    samples: dict[str, dict[str, bytes]] = {}
    for shard in range(int(nshards[0])):
        with tarfile.open(split_dir / f"{shard}.tar") as tar:
            for member in tar:
                if member.isfile():
                    key, _, extension = member.name.rpartition("/")[2].partition(".")
                    samples.setdefault(f"{shard}/{key}", {})[extension.lower()] = tar.extractfile(member).read()
    if not samples:
        raise UserError(f"{split_dir} holds no samples; the split is empty.")
    keys = sorted(samples)
    image_extension = {key: next((e for e in IMAGE_EXTENSIONS if e in samples[key]), None) for key in keys}
    if missing := [key for key in keys if image_extension[key] is None]:
        raise UserError(
            f"{len(missing)} samples of {split_dir} have no image ({'/'.join(IMAGE_EXTENSIONS)}), e.g. {missing[0]}."
        )
    images = LazyImages(len(keys), lambda i: samples[keys[i]][image_extension[keys[i]]], str(split_dir))
    content = hashlib.sha256()
    for key in keys:
        content.update(f"{key}.{image_extension[key]}:".encode())
        content.update(samples[key][image_extension[key]])
    has_labels = all("cls" in samples[key] for key in keys)
    has_captions = all("txt" in samples[key] for key in keys)
    return EvalSplit(
        name=f"{name_or_path}:{split}",
        images=images,
        fingerprint=content.hexdigest(),
        labels=[int(samples[key]["cls"].decode().strip()) for key in keys] if has_labels else None,
        **(_captions([samples[key]["txt"].decode("utf-8").splitlines() for key in keys]) if has_captions else {}),
        classnames=_lines(root / "classnames.txt"),
        templates=_lines(root / "zeroshot_classification_templates.txt") or list(DEFAULT_TEMPLATES),
    )


def load_hf_split(
    name_or_path: str, split: str, label_column: str | None = "label", caption_column: str | None = None
) -> EvalSplit:
    """A split of any `datasets` image dataset with a label and/or caption column."""
    dataset = load_image_text_dataset(name_or_path, split=split)
    return split_from_dataset(dataset, f"{name_or_path}:{split}", label_column, caption_column)


def split_from_dataset(
    dataset: datasets.Dataset, name: str, label_column: str | None = "label", caption_column: str | None = None
) -> EvalSplit:
    """A `datasets.Dataset` with an image column and a ClassLabel (or integer) label and/or caption column."""
    if len(dataset) == 0:
        raise UserError(f"{name} is empty.")
    image_column = find_column(dataset, None, IMAGE_COLUMNS, "image")
    dataset = without_image_decoding(dataset, image_column)
    columns = dataset.column_names
    labels = classnames = captions = None
    if label_column in columns:
        labels = list(dataset[label_column])
        feature = dataset.features[label_column]
        classnames = feature.names if isinstance(feature, datasets.ClassLabel) else None
    caption_column = caption_column or next((c for c in CAPTION_COLUMNS if c in columns), None)
    if caption_column in columns:
        captions = [[c] if isinstance(c, str) else list(c or []) for c in dataset[caption_column]]
    # the Arrow fingerprint, and the files behind it: a dataset rebuilt in place gets new ones
    files = [Path(entry["filename"]) for entry in dataset.cache_files]
    stats = [f"{path}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in files if path.exists()]
    return EvalSplit(
        name=name,
        images=LazyImages(len(dataset), lambda i: dataset[i][image_column], name),
        fingerprint=hashlib.sha256("|".join([dataset._fingerprint, image_column, *stats]).encode()).hexdigest(),
        labels=labels,
        **(_captions(captions) if captions is not None else {}),
        classnames=classnames,
    )


def load_split(
    name_or_path: str,
    split: str,
    label_column: str = "label",
    caption_column: str | None = None,
    classnames_file: str | None = None,
    templates_file: str | None = None,
) -> EvalSplit:
    """Any supported layout; class names and templates from the dataset, overridden by the given files."""
    if is_clip_benchmark(name_or_path):
        data = load_clip_benchmark(name_or_path, split)
    else:
        data = load_hf_split(name_or_path, split, label_column, caption_column)
    if classnames_file:
        data.classnames = _given_lines(classnames_file, "--classnames")
    if templates_file:
        data.templates = _given_lines(templates_file, "--templates")
    if data.templates and not all("{c}" in template for template in data.templates):
        raise UserError("every zero-shot template needs a {c} placeholder for the class name.")
    return data


@dataclass
class MMVPPair:
    category: str
    images: tuple[Image.Image, Image.Image]
    statements: tuple[str, str]


def load_mmvp(root: str) -> list[MMVPPair]:
    """MMVP-VLM pairs: question ids 2k+1 and 2k+2 share a category; statement 2k+1 describes the first image."""
    root_path = _dataset_root(root)
    questions = root_path / "Questions.csv"
    if not questions.is_file():
        raise UserError(f"{root} is not in the MMVP-VLM layout: it has no Questions.csv.")
    with questions.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"Question ID", "Type", "Statement"} <= set(rows[0]):
        raise UserError(f"{questions} needs the columns 'Question ID', 'Type' and 'Statement'.")
    if len(rows) % 2:
        raise UserError(f"{questions} has an odd number of questions; MMVP questions come in pairs.")

    pairs = []
    for first, second in zip(rows[0::2], rows[1::2], strict=True):
        folder = root_path / "MLLM_VLM Images" / first["Type"]
        loaded = []
        for row in (first, second):
            path = folder / f"{int(row['Question ID'])}.jpg"
            decoded = decode_image(path) if path.is_file() else None
            if decoded is None:
                raise UserError(f"{path} is missing or does not decode.")
            loaded.append(decoded)
        pairs.append(MMVPPair(first["Type"], tuple(loaded), (first["Statement"], second["Statement"])))
    return pairs
