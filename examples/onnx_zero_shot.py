"""Zero-shot image classification with an exported folder, on ONNX Runtime alone: no PyTorch, no Transformers.

    python examples/onnx_zero_shot.py DIR IMAGE --labels "a cat" "a dog" ... [--template "a photo of {}"]

DIR is a folder written by `convert/export_onnx.py`. Needs onnxruntime (1.19 or newer: the graphs are ONNX IR 10),
tokenizers (0.20 or newer, for this `tokenizer.json`), Pillow and NumPy only, and this repository's `diffclip_lab`
for reading the image as every other script does (EXIF orientation, 16-bit scaling, transparency on white: see
diffclip_lab/core/images.py). Prints each label's probability, the
softmax over labels of exp(logit_scale) × the cosine similarity of the image and caption embeddings, as the PyTorch
model's `logits_per_image.softmax(-1)`; the preprocessing and token ids are those of the Transformers processor the
folder was exported with.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image
from tokenizers import Tokenizer

from diffclip_lab.core.cli import ArgumentParser, run_main
from diffclip_lab.core.errors import UserError
from diffclip_lab.core.images import UnreadableImage, read_image


def load_config(folder: str | Path) -> dict:
    """The folder's `onnx_config.json`."""
    return json.loads((Path(folder) / "onnx_config.json").read_text(encoding="utf-8"))


def preprocess(image: Image.Image, preprocessing: dict) -> np.ndarray:
    """
    `image` as the model's input, (3, H, W) float32, as the Transformers (PIL) image processor makes it: RGB (alpha
    composited on white), short side resized with its resampling filter, centre crop, rescale, normalise.
    """
    if preprocessing["do_convert_rgb"]:
        if "A" in image.getbands() or "transparency" in image.info:
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image.convert("RGBA"))
        image = image.convert("RGB")
    if preprocessing["do_resize"]:
        size, (width, height) = preprocessing["size"], image.size
        if "shortest_edge" in size:
            short, long = sorted((width, height))
            new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
            width, height = (new_short, new_long) if width <= height else (new_long, new_short)
        else:
            width, height = size["width"], size["height"]
        image = image.resize((width, height), resample=Image.Resampling(preprocessing["resample"]))
    pixels = np.asarray(image)  # (H, W, 3) uint8
    if preprocessing["do_center_crop"]:
        crop_height, crop_width = preprocessing["crop_size"]["height"], preprocessing["crop_size"]["width"]
        top, left = (pixels.shape[0] - crop_height) // 2, (pixels.shape[1] - crop_width) // 2
        pixels = pixels[top : top + crop_height, left : left + crop_width]
    # the processor's arithmetic: rescale in float64, then float32 throughout
    if preprocessing["do_rescale"]:
        pixels = pixels.astype(np.float64) * preprocessing["rescale_factor"]
    pixels = pixels.astype(np.float32)
    if preprocessing["do_normalize"]:
        mean = np.array(preprocessing["image_mean"], dtype=np.float32)
        std = np.array(preprocessing["image_std"], dtype=np.float32)
        pixels = (pixels - mean) / std
    return pixels.transpose(2, 0, 1)


def load_tokenizer(folder: str | Path, config: dict) -> Tokenizer:
    """`tokenizer.json`, padding and truncating to the context length with the model's padding token."""
    tokenizer = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    # Transformers' `split_special_tokens`: "<|endoftext|>" in a caption is text, not the control token
    tokenizer.encode_special_tokens = config["split_special_tokens"]
    tokenizer.enable_truncation(max_length=config["context_length"])
    tokenizer.enable_padding(
        length=config["context_length"], pad_id=config["pad_token_id"], pad_token=config["pad_token"]
    )
    return tokenizer


def tokenize(tokenizer: Tokenizer, captions: list[str]) -> dict[str, np.ndarray]:
    """`input_ids` and `attention_mask`, (captions, context length) int64."""
    encodings = tokenizer.encode_batch(captions)
    return {
        "input_ids": np.array([encoding.ids for encoding in encodings], dtype=np.int64),
        "attention_mask": np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64),
    }


class ZeroShotClassifier:
    """The two graphs, the tokenizer and the preprocessing of an exported folder."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.config = load_config(folder)
        available = onnxruntime.get_available_providers()
        providers = [name for name in ("CUDAExecutionProvider", "CPUExecutionProvider") if name in available]
        self.image_encoder = onnxruntime.InferenceSession(
            str(folder / self.config["image_encoder"]), providers=providers
        )
        self.text_encoder = onnxruntime.InferenceSession(
            str(folder / self.config["text_encoder"]), providers=providers
        )
        self.tokenizer = load_tokenizer(folder, self.config)

    def image_embeds(self, images: list[Image.Image]) -> np.ndarray:
        """Projected image embeddings, (images, projection_dim)."""
        pixel_values = np.stack([preprocess(image, self.config["preprocessing"]) for image in images])
        return self.image_encoder.run(None, {"pixel_values": pixel_values})[0]

    def text_embeds(self, captions: list[str]) -> np.ndarray:
        """Projected caption embeddings, (captions, projection_dim)."""
        return self.text_encoder.run(None, tokenize(self.tokenizer, captions))[0]

    def classify(self, image: Image.Image, labels: list[str], template: str = "{}") -> dict[str, float]:
        """label -> probability that `image` shows `template.format(label)`, over `labels`."""
        image_embeds = self.image_embeds([image])
        text_embeds = self.text_embeds([template.format(label) for label in labels])
        image_embeds /= np.linalg.norm(image_embeds, axis=-1, keepdims=True)
        text_embeds /= np.linalg.norm(text_embeds, axis=-1, keepdims=True)
        logits = np.exp(self.config["logit_scale"]) * (image_embeds @ text_embeds.T)[0]
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        return dict(zip(labels, probabilities.tolist(), strict=True))


def main(argv=None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a folder written by convert/export_onnx.py")
    parser.add_argument("image", help="an image file")
    parser.add_argument("--labels", nargs="+", required=True, help="the candidate labels")
    parser.add_argument("--template", default="{}", help='caption of each label, e.g. "a photo of {}"')
    args = parser.parse_args(argv)
    if not (Path(args.folder) / "onnx_config.json").is_file():
        parser.error(f"{args.folder} has no onnx_config.json: export a model with convert/export_onnx.py first.")
    if "{}" not in args.template:
        parser.error(f"--template must contain {{}} where the label goes, got {args.template!r}.")
    if duplicates := sorted({label for label in args.labels if args.labels.count(label) > 1}):
        raise UserError(f"--labels names {', '.join(map(repr, duplicates))} more than once: give each label once.")
    try:
        image = read_image(args.image)
    except UnreadableImage as error:
        raise UserError(f"cannot read the image {args.image}: {error}") from None
    probabilities = ZeroShotClassifier(args.folder).classify(image, args.labels, args.template)
    for label, probability in sorted(probabilities.items(), key=lambda item: -item[1]):
        print(f"{probability:.6f}  {label}")
    return 0


if __name__ == "__main__":
    run_main(main)
