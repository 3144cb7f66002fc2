# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Image files read as they are displayed, by one rule in every reader of the project (training, evaluation, attention
maps, the study, POPE, the VLM data, ONNX zero-shot). Pillow and NumPy only, so that `examples/onnx_zero_shot.py`
uses it without PyTorch.

The rule (`load_rgb`):
- EXIF orientation is applied, as Transformers' `load_image` does (`ImageOps.exif_transpose`): a phone photo stored
  sideways is read upright.
- 16-bit greyscale (`I;16`, `I;16B`, `I;16L`, and `I`, Pillow's 32-bit integer mode, in which it opens 16-bit
  PNG/TIFF files too) is scaled to 8 bits as round(value / 257), values outside 0..65535 clipped, so 65535 → 255;
  Pillow's own `convert` clips at 255 instead, which makes almost every 16-bit image white.
- Floating-point images (`F`) hold intensities in [0, 1], the convention of float images: round(value × 255), values
  outside clipped, NaN read as 0.
- Transparency (an alpha band: RGBA, LA, PA, ...; or a palette, greyscale or RGB image's `transparency` colour) is
  composited on white, as Transformers' image processors do (`convert_to_rgb`). Transformers' pipelines call
  `load_image` first, which drops alpha and so shows whatever colour a file stores under its transparent pixels
  (often black); the two agree wherever an image is opaque.
- Other modes (CMYK, palette, greyscale, bilevel, YCbCr) are converted by Pillow, as Transformers does.
- A truncated or corrupt file is not an image: `UnreadableImage` (or None from `decode_image`), never pixels filled in.
"""

import io
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError


# what Pillow raises for bytes that are no image, a truncated or corrupt one, or one of over 2 × MAX_IMAGE_PIXELS
DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ROTATED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
WHITE = (255, 255, 255, 255)


class UnreadableImage(OSError):
    """An image file that is missing, not an image, truncated or corrupt; the message says which."""


def open_image(value) -> Image.Image:
    """An image from a PIL image, bytes, a path, or `datasets`' {"bytes", "path"} dict, with only its header read,
    so that a JPEG can still be decoded at reduced size (`Image.draft`)."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    try:
        if isinstance(value, (bytes, bytearray)):
            return Image.open(io.BytesIO(value))
        if isinstance(value, (str, Path)):
            return Image.open(value)
    except UnidentifiedImageError:
        raise UnreadableImage("not an image file Pillow can read") from None
    except DECODE_ERRORS as error:  # a missing file, a broken header
        raise UnreadableImage(str(error) or type(error).__name__) from None
    if isinstance(value, Image.Image):
        return value
    raise UnreadableImage(f"not an image but {type(value).__name__}")


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as displayed, its EXIF orientation applied; reads the header only."""
    width, height = image.size
    return (height, width) if orientation(image) in ROTATED_ORIENTATIONS else (width, height)


def orientation(image: Image.Image) -> int:
    return image.getexif().get(ExifTags.Base.Orientation, 1)


def load_rgb(image: Image.Image) -> Image.Image:
    """An opened image decoded as displayed, in RGB, by the rule of this module (an upright RGB image is returned
    as it is, not copied)."""
    try:
        image.load()
        if orientation(image) != 1:
            image = ImageOps.exif_transpose(image)
        if image.mode in SIXTEEN_BIT_MODES:
            levels = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257
            image = Image.fromarray(np.round(levels).astype(np.uint8), "L")
        elif image.mode == "F":
            levels = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0), 0, 1) * 255
            image = Image.fromarray(np.round(levels).astype(np.uint8), "L")
        if {"A", "a"} & set(image.getbands()) or image.info.get("transparency") is not None:
            image = Image.alpha_composite(Image.new("RGBA", image.size, WHITE), image.convert("RGBA"))
        return image if image.mode == "RGB" else image.convert("RGB")
    except DECODE_ERRORS as error:
        raise UnreadableImage(str(error) or type(error).__name__) from None


def read_image(value) -> Image.Image:
    """An RGB image as displayed from a PIL image, bytes, a path or `datasets`' {"bytes", "path"} dict; raises
    `UnreadableImage` saying why when it is none."""
    return load_rgb(open_image(value))


def decode_image(value) -> Image.Image | None:
    """`read_image`, or None when the value is not a readable image (for readers that skip and count those)."""
    try:
        return read_image(value)
    except UnreadableImage:
        return None
