"""diffclip_lab/core/data.py: every documented dataset layout, decoding failures, and the image transform."""

import io
import json
import random
import tarfile

import datasets
import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from diffclip_lab.core.data import (
    Collator,
    ExampleEncoder,
    ImageTransform,
    MapStyleImageText,
    Skipped,
    caption_text,
    load_image_text_dataset,
    resolve_columns,
    without_image_decoding,
)
from diffclip_lab.core.errors import UserError
from diffclip_lab.core.images import decode_image, open_image
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
    # named for the log: by their file, or else by their row
    assert batch["skipped"] == [
        "example 1 (image does not decode: not an image file Pillow can read)",
        "example 2 (empty caption)",
    ]
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert batch["pixel_values"].dtype == torch.uint8  # normalised on the device, by model_inputs
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
        transform = ImageTransform.for_processor(processor.image_processor)
        torch.testing.assert_close(transform.normalize(transform(image)), expected, atol=1e-5, rtol=0)


def test_random_crops_are_reproducible_per_sample():
    transform = ImageTransform(16, [0.5] * 3, [0.5] * 3, crop_scale=0.3)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(40, 60, 3), dtype=np.uint8))
    first = transform(image, random.Random("0-0-5"))
    assert torch.equal(first, transform(image, random.Random("0-0-5")))
    assert not torch.equal(first, transform(image, random.Random("0-1-5")))
    assert first.shape == (3, 16, 16)


def test_normalising_on_the_device_gives_the_inputs_the_loader_gave_before():
    """Batches carry uint8 pixels; `model_inputs` normalises them where the model runs, with the float32 operations
    the loader's workers used to run on each image, so the model's inputs are the same numbers, bit for bit."""
    processor = DiffCLIPProcessor.from_defaults(image_size=16)
    transform = ImageTransform.for_processor(processor.image_processor, crop_scale=0.5)
    encoder = ExampleEncoder("image", "caption", transform)
    rows = [
        {"image": {"bytes": jpeg_bytes(photo_like(seed)), "path": None}, "caption": "a photo"} for seed in range(3)
    ]
    examples = [encoder(row, index) for index, row in enumerate(rows)]
    batch = Collator(clip_tokenizer(8), 8, 16)(examples)
    batch.pop("skipped")
    inputs = encoder.model_inputs(batch, "cpu")
    mean, std = torch.tensor(processor.image_processor.image_mean), torch.tensor(processor.image_processor.image_std)
    for example, pixel_values in zip(examples, inputs["pixel_values"], strict=True):
        before = (example["pixel_values"].float().div_(255) - mean.view(3, 1, 1)) / std.view(3, 1, 1)
        assert torch.equal(pixel_values, before)
    assert inputs["pixel_values"].dtype == torch.float32
    assert torch.equal(inputs["input_ids"], batch["input_ids"])


def photo_like(seed: int, size=(256, 192)) -> Image.Image:
    """A stand-in for a photograph: smooth colour regions with fine detail."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    fine = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    detail = Image.fromarray(fine).filter(ImageFilter.GaussianBlur(1.5))
    return Image.blend(Image.fromarray(coarse).resize(size, Image.BICUBIC), detail, 0.3)


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_jpeg_draft_decoding_is_close_to_full_decoding_and_deterministic():
    full = ImageTransform(16, [0.5] * 3, [0.5] * 3, crop_scale=0.5, draft_gap=None)
    draft = ImageTransform(16, [0.5] * 3, [0.5] * 3, crop_scale=0.5)  # the default: draft_gap=2
    # the largest DCT reduction that keeps the crop at least 2 × 16 pixels on its short side
    assert draft.draft(open_image(jpeg_bytes(photo_like(0))), (0, 0, 256, 192)) == 1 / 4
    assert draft.draft(open_image(jpeg_bytes(photo_like(0))), (0, 0, 100, 70)) == 1 / 2
    assert draft.draft(open_image(jpeg_bytes(photo_like(0))), (0, 0, 60, 70)) == 1
    assert draft.draft(decode_image(jpeg_bytes(photo_like(0))), (0, 0, 256, 192)) == 1  # decoded already
    differences = []
    for seed in range(4):
        data = jpeg_bytes(photo_like(seed))
        for index in range(4):
            actual = draft(open_image(data), random.Random(f"0-0-{index}"))
            assert torch.equal(actual, draft(open_image(data), random.Random(f"0-0-{index}")))  # same seed, same crop
            expected = full(open_image(data), random.Random(f"0-0-{index}"))
            differences.append((actual.int() - expected.int()).abs().float())
    differences = torch.stack(differences)
    assert (differences.flatten(1).amax(1) > 0).all()  # every crop here was decoded at reduced size
    # DCT scaling filters a little differently from the resize it replaces: on this image 0.6 levels of 255 on
    # average and at most 4 (on the photographs of benchmarks/bench_data.py at 1024 px: 0.18 and 10)
    assert differences.mean() <= 1
    assert differences.max() <= 8
    png = io.BytesIO()
    photo_like(0).save(png, format="PNG")  # other formats are always decoded in full
    assert torch.equal(draft(open_image(png.getvalue())), full(open_image(png.getvalue())))
    small = jpeg_bytes(photo_like(0, size=(60, 45)))  # no room for a reduction: decoded in full
    assert torch.equal(draft(open_image(small), random.Random("1")), full(open_image(small), random.Random("1")))


@pytest.mark.slow  # starts loader worker processes
def test_the_same_seed_and_index_give_the_same_tensors_in_a_worker():
    """The crops, their decoding at reduced size and the tokens depend on (seed, epoch, index) only: a loader worker
    makes exactly the tensors the training process makes itself, and hands them over in shared memory."""
    rows = [
        {"image": {"bytes": jpeg_bytes(photo_like(seed, size)), "path": None}, "caption": f"photo {seed}"}
        for seed, size in enumerate([(256, 192), (60, 45), (192, 256), (130, 131)] * 2)
    ]
    transform = ImageTransform(16, [0.5] * 3, [0.5] * 3, crop_scale=0.5)
    dataset = MapStyleImageText(
        datasets.Dataset.from_list(rows), ExampleEncoder("image", "caption", transform, seed=7)
    )
    dataset.set_epoch(3)
    collate = Collator(clip_tokenizer(8), 8, 16)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate, num_workers=2)
    for start, batch in zip(range(0, len(rows), 4), loader, strict=True):
        expected = collate([dataset[index] for index in range(start, start + 4)])
        assert torch.equal(batch["pixel_values"], expected["pixel_values"])
        assert torch.equal(batch["input_ids"], expected["input_ids"])
        assert batch["pixel_values"].is_shared()
    first = dataset[0]["pixel_values"]
    dataset.set_epoch(4)
    assert not torch.equal(dataset[0]["pixel_values"], first)  # another epoch, other crops


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
