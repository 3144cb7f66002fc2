"""Images read as displayed (diffclip_lab/core/images.py): each kind of file made with Pillow here, its pixels checked
against expectations computed independently with NumPy, and every reader of the project (training loader,
evaluation reader, onnx_zero_shot.py, attention maps) against each other and against Transformers' `load_image` and
zero-shot pipeline."""

import io
import json
import random

import numpy as np
import pytest
import torch
from conftest import load_script
from PIL import Image
from transformers import pipeline
from transformers.image_utils import load_image

from diffclip_lab.core.data import (
    ImageTransform,
    image_text_loader,
    load_image_text_dataset,
    without_image_decoding,
)
from diffclip_lab.core.errors import UserError
from diffclip_lab.core.images import UnreadableImage, decode_image, open_image, read_image
from diffclip_lab.evaluation.datasets import load_split
from modeling_diffclip import DiffCLIPModel, DiffCLIPProcessor, clip_tokenizer


ONNX_EXAMPLE = load_script("examples/onnx_zero_shot.py")
SIZE = 24  # square files, so that the training transform at this size neither resizes nor crops
RNG = np.random.default_rng(0)
ORIENTATION = 0x0112


def asymmetric_rgb(height=SIZE, width=SIZE) -> np.ndarray:
    """Smooth colours (JPEG keeps them) that differ under every rotation and mirror."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x * y) % 200], axis=-1).astype(np.uint8)


def encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def phone_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encoded(Image.fromarray(asymmetric_rgb(SIZE, SIZE)), "JPEG", quality=95, exif=exif.tobytes())


def stored_pixels(data: bytes) -> np.ndarray:
    """The pixels as stored in the file, no orientation applied (an 8-bit RGB file)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# EXIF orientation -> what turns the stored pixels into the displayed ones (the EXIF 2.3 definitions)
UPRIGHT = {
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: np.rot90(a, 2),
    6: lambda a: np.rot90(a, -1),  # stored turned 90° anticlockwise: shown turned clockwise
    8: lambda a: np.rot90(a, 1),
}


def rgba_png() -> tuple[bytes, np.ndarray]:
    rgb = RNG.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    alpha = RNG.choice(np.array([0, 64, 128, 255], dtype=np.uint8), (SIZE, SIZE, 1))
    expected = rgb * (alpha / 255) + 255 * (1 - alpha / 255)  # over white
    return encoded(Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA"), "PNG"), expected


def la_png() -> tuple[bytes, np.ndarray]:
    grey = RNG.integers(0, 256, (SIZE, SIZE, 1), dtype=np.uint8)
    alpha = RNG.choice(np.array([0, 100, 255], dtype=np.uint8), (SIZE, SIZE, 1))
    expected = np.repeat(grey * (alpha / 255) + 255 * (1 - alpha / 255), 3, axis=-1)
    return encoded(Image.fromarray(np.concatenate([grey, alpha], -1), "LA"), "PNG"), expected


def palette_png(transparent: bool) -> tuple[bytes, np.ndarray]:
    colours = np.array([[0, 0, 0], [200, 30, 40], [10, 220, 90], [50, 60, 250]], dtype=np.uint8)
    indices = RNG.integers(0, 4, (SIZE, SIZE), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(colours.flatten().tolist())
    expected = colours[indices].astype(float)
    if transparent:  # index 0 (black) is transparent: white where shown
        expected[indices == 0] = 255
    return encoded(image, "PNG", **({"transparency": 0} if transparent else {})), expected


def png_16_bit() -> tuple[bytes, np.ndarray]:
    values = RNG.integers(1028, 49859, (SIZE, SIZE), dtype=np.uint16)
    values[0, :3] = (0, 65535, 257 * 100 + 128)  # the ends, and a value halfway between two 8-bit levels
    expected = np.repeat(np.floor(values / 257 + 0.5)[..., None], 3, axis=-1)
    return encoded(Image.fromarray(values), "PNG"), expected


def float_tiff() -> tuple[bytes, np.ndarray]:
    values = RNG.uniform(-0.2, 1.2, (SIZE, SIZE)).astype(np.float32)
    expected = np.repeat(np.floor(np.clip(values, 0, 1) * 255 + 0.5)[..., None], 3, axis=-1)
    return encoded(Image.fromarray(values, "F"), "TIFF"), expected


def cmyk_jpeg() -> tuple[bytes, np.ndarray]:
    cmyk = RNG.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8)
    cmyk[..., :] = cmyk[:1, :1]  # one colour: JPEG keeps it
    data = encoded(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=100)
    stored = np.asarray(Image.open(io.BytesIO(data))).astype(int)  # C, M, Y, K as decoded
    # Pillow's CMYK -> RGB, as Transformers' load_image uses it: each of R, G, B is (255 - C/M/Y)(255 - K) / 255
    return data, (255 - stored[..., :3]) * (255 - stored[..., 3:]) / 255


def kinds() -> dict[str, tuple[bytes, np.ndarray, int]]:
    """name -> (file bytes, expected RGB pixels, tolerance in levels)."""
    found = {}
    for orientation, turn in UPRIGHT.items():
        data = phone_jpeg(orientation)
        found[f"jpeg-exif-{orientation}"] = (data, turn(stored_pixels(data)), 0)
    upright = encoded(Image.fromarray(asymmetric_rgb()), "JPEG", quality=95)
    found["jpeg"] = (upright, stored_pixels(upright), 0)
    # alpha_composite and Pillow's CMYK conversion work in integers: within one level of the exact values
    found["rgba-png"] = (*rgba_png(), 1)
    found["la-png"] = (*la_png(), 1)
    found["palette-png"] = (*palette_png(False), 0)
    found["palette-png-transparent"] = (*palette_png(True), 0)
    found["png-16-bit"] = (*png_16_bit(), 0)
    found["tiff-float"] = (*float_tiff(), 0)
    found["jpeg-cmyk"] = (*cmyk_jpeg(), 1)
    return found


KINDS = kinds()
EXTENSIONS = {"png": "png", "tiff": "tiff", "jpeg": "jpg"}


def extension(kind: str) -> str:
    return next(e for prefix, e in EXTENSIONS.items() if prefix in kind)


def truncated_jpeg() -> bytes:
    data = encoded(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    return data[: len(data) // 2]


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_file_is_read_as_displayed(kind):
    data, expected, tolerance = KINDS[kind]
    image = decode_image(data)
    assert image.mode == "RGB"
    assert image.size == (SIZE, SIZE)
    difference = np.abs(np.asarray(image).astype(float) - expected)
    assert difference.max() <= tolerance, (kind, difference.max())


def test_sixteen_bit_and_float_modes_in_memory():
    values = np.array([[-5, 0, 128, 65535, 70000]], dtype=np.int32)  # Pillow's "I": clipped to 0..65535, / 257
    assert np.asarray(read_image(Image.fromarray(values, "I")))[0, :, 0].tolist() == [0, 0, 0, 255, 255]
    big_endian = Image.fromarray(np.array([[514, 65535]], dtype=">u2"))
    assert big_endian.mode == "I;16B"
    assert np.asarray(read_image(big_endian))[0, :, 0].tolist() == [2, 255]
    floats = Image.fromarray(np.array([[np.nan, 0.5, 2.0]], dtype=np.float32), "F")
    assert np.asarray(read_image(floats))[0, :, 0].tolist() == [0, 128, 255]


def test_truncated_or_broken_files_are_refused_not_filled_in(tmp_path):
    with pytest.raises(UnreadableImage, match="truncated"):
        read_image(truncated_jpeg())
    assert decode_image(truncated_jpeg()) is None
    assert decode_image(b"not an image") is None
    assert decode_image(tmp_path / "absent.png") is None


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Every kind, plus a truncated JPEG, as an imagefolder with captions: a layout both training and evaluation
    read."""
    root = tmp_path_factory.mktemp("kinds")
    (root / "train").mkdir()
    rows = []
    for kind, (data, _, _) in KINDS.items():
        (root / "train" / f"{kind}.{extension(kind)}").write_bytes(data)
        rows.append({"file_name": f"{kind}.{extension(kind)}", "caption": kind})
    (root / "train" / "truncated-jpeg.jpg").write_bytes(truncated_jpeg())
    rows.append({"file_name": "truncated-jpeg.jpg", "caption": "truncated-jpeg"})
    (root / "train" / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def training_pixels(image_folder) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """caption -> the training loader's uint8 pixels (H, W, 3), and the skipped samples' names -> reasons."""
    raw = without_image_decoding(load_image_text_dataset(str(image_folder), "train"), "image")  # as pretrain.py
    transform = ImageTransform(SIZE, [0.5] * 3, [0.5] * 3, draft_gap=None)
    data, _ = image_text_loader(raw, "image", "caption", transform, clip_tokenizer(8), 1, 0)
    pixels, skipped = {}, {}
    for index in range(len(data)):
        example = data[index]
        if isinstance(example, dict):
            pixels[example["caption"]] = example["pixel_values"].permute(1, 2, 0).numpy()
        else:
            skipped[example.key] = example.reason
    return pixels, skipped


def test_every_reader_gives_the_same_pixels(image_folder):
    trained, skipped = training_pixels(image_folder)
    evaluated = load_split(str(image_folder), "train", label_column=None, caption_column="caption")
    assert len(evaluated.images) == len(KINDS) + 1
    for index, captions in enumerate(evaluated.captions):
        kind = captions[0]
        path = image_folder / "train" / f"{kind}.{extension(kind)}"
        if kind == "truncated-jpeg":  # training skips it, naming the file; evaluation refuses it
            assert list(skipped) == [str(path)]
            assert skipped[str(path)].startswith("image does not decode: image file is truncated")
            with pytest.raises(UserError, match=f"image {index} of .* does not decode \\(image file is truncated"):
                evaluated.images[index]
            continue
        expected = np.asarray(read_image(path))
        np.testing.assert_array_equal(trained[kind], expected, err_msg=f"training loader, {kind}")
        np.testing.assert_array_equal(np.asarray(evaluated.images[index]), expected, err_msg=f"evaluation, {kind}")
        assert ONNX_EXAMPLE.read_image is read_image  # onnx_zero_shot.py reads its image with this very function


# Transformers' load_image (which its pipelines call) clips 16-bit and float images at 255 instead of scaling them,
# and drops alpha where the image processors composite it on white (the rule of diffclip_lab/core/images.py)
TRANSFORMERS_CLIPS = {"png-16-bit", "tiff-float"}
TRANSFORMERS_DROPS_ALPHA = {"rgba-png", "la-png", "palette-png-transparent"}


@pytest.mark.parametrize("kind", sorted(set(KINDS) - TRANSFORMERS_CLIPS))
def test_the_project_reads_files_as_transformers_load_image_does(kind, image_folder):
    path = image_folder / "train" / f"{kind}.{extension(kind)}"
    ours, theirs = np.asarray(read_image(path)), np.asarray(load_image(str(path)))
    if kind in TRANSFORMERS_DROPS_ALPHA:  # the same wherever the image is opaque
        alpha = np.asarray(Image.open(path).convert("RGBA"))[..., 3]
        assert 0 < (alpha == 255).sum() < alpha.size
        np.testing.assert_array_equal(ours[alpha == 255], theirs[alpha == 255])
    else:
        np.testing.assert_array_equal(ours, theirs)


def test_the_zero_shot_pipeline_on_a_phone_photo_gives_the_project_s_probabilities(saved_tiny_models, tmp_path):
    """A sideways-stored phone JPEG: the pipeline (load_image → processor → model) and the model on the project's
    reading of the file agree; reading the stored pixels instead would not."""
    folder = saved_tiny_models["diffclip"]
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(asymmetric_rgb(40, 64)).save(path, quality=95, exif=exif.tobytes())
    labels = ["red", "green", "blue"]
    classify = pipeline("zero-shot-image-classification", model=str(folder))
    expected = {row["label"]: row["score"] for row in classify(str(path), candidate_labels=labels)}

    model, processor = DiffCLIPModel.from_pretrained(folder).eval(), DiffCLIPProcessor.from_pretrained(folder)
    template = "This is a photo of {}."  # the pipeline's default hypothesis_template

    def probabilities(image):
        inputs = processor(
            text=[template.format(x) for x in labels], images=image, padding="max_length", return_tensors="pt"
        )
        with torch.no_grad():
            return dict(zip(labels, model(**inputs).logits_per_image.softmax(-1)[0].tolist(), strict=True))

    assert probabilities(read_image(path)) == pytest.approx(expected, abs=1e-6)
    assert probabilities(Image.open(path).convert("RGB")) != pytest.approx(expected, abs=1e-6)


def test_training_crops_are_drawn_on_the_upright_photo_decoded_at_reduced_size_or_not():
    """A 256 × 192 photo stored sideways (EXIF 6): random crops, and their JPEG decoding at reduced size, as on the
    upright 192 × 256 image."""
    y, x = np.mgrid[0:192, 0:256]
    stored = np.stack([x, y, (x + y) // 2], axis=-1).astype(np.uint8)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    data = encoded(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    upright = read_image(data)
    assert upright.size == (192, 256)
    full = ImageTransform(16, [0.5] * 3, [0.5] * 3, crop_scale=0.3, draft_gap=None)
    draft = ImageTransform(16, [0.5] * 3, [0.5] * 3, crop_scale=0.3)
    for index in range(6):
        expected = full(upright, random.Random(index))
        assert torch.equal(full(open_image(data), random.Random(index)), expected)
        assert draft.draft(open_image(data), (0, 0, 192, 256)) == 1 / 4  # the crops below are decoded reduced
        difference = (draft(open_image(data), random.Random(index)).int() - expected.int()).abs().float()
        assert difference.mean() <= 1, index  # as close as for an upright JPEG (test_image_text_data.py)


def test_a_decompression_bomb_is_refused_not_a_crash(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses images over twice this
    with pytest.raises(UnreadableImage, match="decompression bomb"):
        read_image(encoded(Image.new("RGB", (20, 20)), "PNG"))
