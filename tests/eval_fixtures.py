"""Tiny evaluation datasets in each documented layout, written by the tests."""

import csv
import io
import tarfile

import datasets
import numpy as np
from PIL import Image


CLASSNAMES = ["red", "green", "blue"]
RGB = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 70, 230)}
TEMPLATES = ["a {c} image.", "a photo of something {c}."]
# what every record of diffclip_lab.evaluation.tasks.evaluate holds
RECORD_KEYS = {"model", "model_type", "dataset", "split", "task", "protocol", "main_metric", "metrics", "counts"}
RECORD_KEYS |= {"versions", "date"}


def colour_image(colour: str, seed: int, size=(40, 36)) -> Image.Image:
    """A noisy image of one colour, different for every seed."""
    noise = np.random.default_rng(seed).integers(-40, 41, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(np.array(RGB[colour]) + noise, 0, 255).astype(np.uint8))


def encode(image: Image.Image, extension: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format={"jpg": "JPEG", "jpeg": "JPEG"}.get(extension, extension.upper()))
    return buffer.getvalue()


def _write_shards(split_dir, samples: list[dict[str, bytes]], shards: int = 2):
    split_dir.mkdir(parents=True)
    (split_dir / "nshards.txt").write_text(f"{shards}\n")
    for shard in range(shards):
        with tarfile.open(split_dir / f"{shard}.tar", "w") as tar:
            for index in range(shard, len(samples), shards):
                for extension, payload in samples[index].items():
                    info = tarfile.TarInfo(f"s{index:05d}.{extension}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))


def write_clip_benchmark_classification(
    root, per_class=None, extensions=("webp", "png", "jpg"), colour_shift=0, corrupt_sample=None
):
    """`<root>/<split>/{nshards.txt, i.tar}` with image + `cls` samples, class names and templates. Class c shows
    colour c + `colour_shift`; sample `corrupt_sample` of each split, if given, has an image that does not decode."""
    if per_class is None:
        per_class = {"train": 8, "test": 4}
    root.mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(CLASSNAMES) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    for split, count in per_class.items():
        samples = []
        for label in range(len(CLASSNAMES)):
            colour = CLASSNAMES[(label + colour_shift) % len(CLASSNAMES)]
            for i in range(count):
                seed = 10_000 * list(per_class).index(split) + 100 * label + i
                extension = extensions[(label + i) % len(extensions)]
                image = encode(colour_image(colour, seed), extension)
                if len(samples) == corrupt_sample:
                    image = b"not an image at all"
                samples.append({extension: image, "cls": f"{label}\n".encode()})
        _write_shards(root / split, samples)
    return root


def write_clip_benchmark_retrieval(root, images=6):
    """A retrieval split: each image with two captions in `txt`, and `dataset_type.txt` saying so."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_type.txt").write_text("retrieval\n")
    samples = []
    for index in range(images):
        colour = CLASSNAMES[index % 3]
        captions = f"a {colour} picture number {index}\nsomething {colour}, image {index}\n"
        samples.append({"jpg": encode(colour_image(colour, index), "jpg"), "txt": captions.encode()})
    _write_shards(root / "test", samples)
    return root


def write_hf_classification(path, per_class=4):
    """A `save_to_disk` folder with an image column and a ClassLabel label column."""
    rows = {"image": [], "label": []}
    for label, colour in enumerate(CLASSNAMES):
        for i in range(per_class):
            rows["image"].append(colour_image(colour, 1000 + 10 * label + i))
            rows["label"].append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSNAMES)})
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(str(path))
    return path


MMVP_CATEGORIES = ["Color and Appearance", "Quantity and Count"]
MMVP_PAIRS = (("red", "blue"), ("green", "red"))  # the colours of each pair's two images, in every category


def write_mmvp(root):
    """`Questions.csv` and `MLLM_VLM Images/<Type>/<id>.jpg`: two categories of two pairs."""
    rows, question = [], 1
    for category in MMVP_CATEGORIES:
        folder = root / "MLLM_VLM Images" / category
        folder.mkdir(parents=True)
        for first, second in MMVP_PAIRS:
            for colour in (first, second):
                colour_image(colour, question).save(folder / f"{question}.jpg")
                rows.append({"Question ID": question, "Type": category, "Statement": f"the image is {colour}"})
                question += 1
    with open(root / "Questions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["Question ID", "Type", "Statement"])
        writer.writeheader()
        writer.writerows(rows)
    return root
