"""diffclip_lab/data.py: every documented dataset layout, decoding failures, and the image transform."""

import io
import json
import random
import tarfile

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from diffclip_lab.cli import UserError
from diffclip_lab.data import (
    Collator,
    ExampleEncoder,
    ImageTransform,
    MapStyleImageText,
    Skipped,
    caption_text,
    decode_image,
    load_image_text_dataset,
    resolve_columns,
    without_image_decoding,
)
from modeling_diffclip import DiffCLIPProcessor, clip_tokenizer


def png_bytes(color, size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


CAPTIONS = ["a red image", "a green image", "a blue image"]
COLORS = ["red", "green", "blue"]


def layouts(tmp_path):
    """The same three captioned images in each layout the README documents."""
    images = [png_bytes(color) for color in COLORS]
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in images], "caption": CAPTIONS},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )
    (tmp_path / "parquet").mkdir()
    table.to_parquet(str(tmp_path / "parquet" / "train.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    folder = tmp_path / "imagefolder"
    folder.mkdir()
    for name, image in zip(COLORS, images, strict=True):
        (folder / f"{name}.png").write_bytes(image)
    (folder / "metadata.jsonl").write_text(
        "".join(
            json.dumps({"file_name": f"{name}.png", "text": caption}) + "\n"
            for name, caption in zip(COLORS, CAPTIONS, strict=True)
        )
    )
    return {"parquet": tmp_path / "parquet", "save_to_disk": tmp_path / "saved", "imagefolder": folder}


@pytest.mark.parametrize("layout", ["parquet", "save_to_disk", "imagefolder"])
@pytest.mark.parametrize("streaming", [False, True])
def test_documented_layouts_load(tmp_path, layout, streaming):
    path = layouts(tmp_path)[layout]
    dataset = load_image_text_dataset(str(path), streaming=streaming)
    image_column, caption_column = resolve_columns(dataset, None, None)
    dataset = without_image_decoding(dataset, image_column)
    rows = list(dataset)
    assert sorted(row[caption_column] for row in rows) == sorted(CAPTIONS)
    by_caption = {row[caption_column]: decode_image(row[image_column]) for row in rows}
    assert by_caption["a green image"].getpixel((3, 3)) == (0, 128, 0)


def test_unknown_dataset_and_missing_columns(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_image_text_dataset(str(tmp_path / "absent"))
    dataset = datasets.Dataset.from_dict({"picture": [b""], "label": [1]})
    with pytest.raises(UserError, match=r"no image column.*\['picture', 'label'\].*--image_column"):
        resolve_columns(dataset, None, None)
    assert resolve_columns(dataset, "picture", "label") == ("picture", "label")


def test_broken_samples_are_skipped_and_counted():
    transform = ImageTransform(16, [0.5] * 3, [0.5] * 3)
    encoder = ExampleEncoder("image", "caption", transform)
    rows = [
        {"image": {"bytes": png_bytes("red"), "path": None}, "caption": "ok"},
        {"image": {"bytes": b"\x89PNG broken", "path": None}, "caption": "bad image"},
        {"image": {"bytes": png_bytes("blue"), "path": None}, "caption": "   "},
        {"image": {"bytes": png_bytes("blue"), "path": None}, "caption": "also ok"},
    ]
    dataset = MapStyleImageText(datasets.Dataset.from_list(rows), encoder)
    batch = Collator(clip_tokenizer(8), 8, 16)([dataset[i] for i in range(len(dataset))])
    assert batch["num_skipped"].item() == 2
    assert batch["skipped"] == ["1 (image does not decode)", "2 (empty caption)"]  # named for the log
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert batch["input_ids"].shape == (2, 8)
    assert caption_text(["the first of several captions", "second"]) == "the first of several captions"
    empty = Collator(clip_tokenizer(8), 8, 16)([Skipped("a", "empty caption"), Skipped("b", "empty caption")])
    assert empty["num_skipped"].item() == 2
    assert empty["pixel_values"].shape == (0, 3, 16, 16)


def test_centre_transform_is_the_image_processor():
    processor = DiffCLIPProcessor.from_defaults(image_size=24)
    rng = np.random.default_rng(0)
    for size in ((50, 37), (37, 50), (24, 24), (101, 99)):
        image = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
        expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
        actual = ImageTransform.for_processor(processor.image_processor)(image)
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_random_crops_are_reproducible_per_sample():
    transform = ImageTransform(16, [0.5] * 3, [0.5] * 3, crop_scale=0.3)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(40, 60, 3), dtype=np.uint8))
    first = transform(image, random.Random("0-0-5"))
    assert torch.equal(first, transform(image, random.Random("0-0-5")))
    assert not torch.equal(first, transform(image, random.Random("0-1-5")))
    assert first.shape == (3, 16, 16)


def write_shards(folder, counts: list[int]) -> list:
    """img2dataset's layout: shards of {key}.jpg and {key}.txt, `counts[i]` samples in shard i."""
    folder.mkdir(parents=True)
    paths = []
    for shard, count in enumerate(counts):
        paths.append(folder / f"{shard:05d}.tar")
        with tarfile.open(paths[-1], "w") as tar:
            for index in range(count):
                for name, payload in (
                    (f"{shard}{index:04d}.png", png_bytes("red")),
                    (f"{shard}{index:04d}.txt", b"red"),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return paths


def test_webdataset_splits_shard_files_lists_and_brace_patterns(tmp_path):
    root = tmp_path / "shards"
    write_shards(root / "train", [2, 2])
    write_shards(root / "validation", [1])
    assert len(load_image_text_dataset(str(root), split="train")) == 4
    assert len(load_image_text_dataset(str(root), split="validation")) == 1  # no leak from the other split
    with pytest.raises(UserError, match=r"has no split 'test' of shards; its splits are \['train', 'validation'\]"):
        load_image_text_dataset(str(root), split="test")
    flat = write_shards(tmp_path / "flat", [2, 3, 1])  # img2dataset's own layout: the folder is the split
    assert len(load_image_text_dataset(str(tmp_path / "flat"))) == 6
    with pytest.raises(UserError, match="no split subfolders, so it has no split 'validation'"):
        load_image_text_dataset(str(tmp_path / "flat"), split="validation")
    assert len(load_image_text_dataset(str(flat[1]))) == 3  # one shard file
    assert len(load_image_text_dataset(f"{flat[0]}::{flat[2]}")) == 3  # a list
    assert len(load_image_text_dataset(str(tmp_path / "flat" / "{00000..00001}.tar"))) == 5  # a brace pattern
    with pytest.raises(UserError, match=r"shard\(s\) not found: .*00003.tar"):
        load_image_text_dataset(str(tmp_path / "flat" / "{00000..00003}.tar"))
