"""Captioned shapes: the demo's image-text dataset, generated deterministically and cached with `datasets`.

Each image is one coloured shape (COLORS × SHAPES classes) of random size, position and tilt on a cluttered
background of random muted strokes and blobs; its caption comes from one of several templates. The train and test
splits are drawn from disjoint seeds, so zero-shot accuracy on "test" measures held-out images.
"""

import math
import random

import datasets
from PIL import Image, ImageDraw

from ..core.formatting import article


COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 70, 230),
    "yellow": (240, 220, 20),
    "purple": (150, 40, 190),
    "orange": (250, 140, 10),
}
SHAPES = ("circle", "square", "triangle", "cross", "star")
CLASSNAMES = [f"{color} {shape}" for color in COLORS for shape in SHAPES]
CAPTION_TEMPLATES = (
    "a {size} {color} {shape}",
    "a {color} {shape} on a cluttered background",
    "{color} {shape}",
    "a picture of a {shape} that is {color}",
    "there is a {size} {color} {shape} in the {position}",
    "a {shape} coloured {color}",
)
ZEROSHOT_TEMPLATES = ("a photo of a {c}.", "a {c}.")
SPLIT_SEEDS = {"train": 0, "test": 1_000_003}
# `datasets` caches by the generator's arguments, not by the drawing code it calls: bump when `render` changes.
RENDER_VERSION = 2


def _polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [angle + math.pi / 4 + k * math.pi / 2 for k in range(4)]
        return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in corners]
    if shape == "triangle":
        return [
            (cx + radius * math.cos(angle + k * 2 * math.pi / 3), cy + radius * math.sin(angle + k * 2 * math.pi / 3))
            for k in range(3)
        ]
    if shape == "star":
        return [
            (
                cx + (radius if k % 2 == 0 else radius * 0.45) * math.cos(angle + k * math.pi / 5),
                cy + (radius if k % 2 == 0 else radius * 0.45) * math.sin(angle + k * math.pi / 5),
            )
            for k in range(10)
        ]
    # cross: a plus sign, its arms a third of the size wide
    arm, half = radius, radius / 3
    outline = [
        (-half, -arm),
        (half, -arm),
        (half, -half),
        (arm, -half),
        (arm, half),
        (half, half),
        (half, arm),
        (-half, arm),
        (-half, half),
        (-arm, half),
        (-arm, -half),
        (-half, -half),
    ]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in outline]


def cluttered_background(rng: random.Random, image_size: int) -> Image.Image:
    """A muted background with random strokes and blobs, never saturated like the shapes."""
    background = tuple(rng.randrange(90, 170) for _ in range(3))
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randrange(4, 9)):
        clutter = tuple(min(255, max(0, c + rng.randrange(-50, 51))) for c in background)
        x0, y0 = rng.uniform(0, image_size), rng.uniform(0, image_size)
        x1, y1 = x0 + rng.uniform(-image_size / 2, image_size / 2), y0 + rng.uniform(-image_size / 2, image_size / 2)
        if rng.random() < 0.5:
            draw.line([(x0, y0), (x1, y1)], fill=clutter, width=rng.randrange(1, 4))
        else:
            draw.ellipse([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=clutter)
    return image


def draw_shape(
    image: Image.Image, rng: random.Random, classname: str, cx: float, cy: float, radius: float, turn: float = 0.0
) -> None:
    """One shape of `classname` ("red circle") centred at (cx, cy), its colour jittered a little, turned by `turn`
    radians from upright (a triangle upside down: `turn=math.pi`)."""
    color, shape = classname.split(" ")
    draw = ImageDraw.Draw(image)
    fill = tuple(min(255, max(0, c + rng.randrange(-20, 21))) for c in COLORS[color])
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    else:
        # upright, tilted by at most ±15°: the demo's few minutes of training need not learn rotation invariance
        upright = -math.pi / 2 if shape in ("triangle", "star") else 0.0
        draw.polygon(_polygon(shape, cx, cy, radius, upright + turn + rng.uniform(-0.26, 0.26)), fill=fill)


def render(rng: random.Random, image_size: int, label: int | None = None) -> tuple[Image.Image, str, int]:
    """One image, its caption and its class index (drawn at random unless given)."""
    label = rng.randrange(len(CLASSNAMES)) if label is None else label
    color, shape = CLASSNAMES[label].split(" ")
    image = cluttered_background(rng, image_size)
    radius = rng.uniform(0.24, 0.4) * image_size
    cx, cy = rng.uniform(radius, image_size - radius), rng.uniform(radius, image_size - radius)
    draw_shape(image, rng, CLASSNAMES[label], cx, cy, radius)
    size = "small" if radius < 0.32 * image_size else "large"
    position = ("top" if cy < image_size / 2 else "bottom") + (" left" if cx < image_size / 2 else " right")
    caption = rng.choice(CAPTION_TEMPLATES).format(size=size, color=color, shape=shape, position=position)
    return image, caption, label


def _generate(split: str, num_examples: int, image_size: int, version: int):
    for index in range(num_examples):
        image, caption, label = render(random.Random(SPLIT_SEEDS[split] + index), image_size)
        yield {"image": image, "caption": caption, "label": label}


def load_shapes(split: str, num_examples: int, image_size: int = 48, cache_dir: str | None = None) -> datasets.Dataset:
    """The `split` ("train" or "test") of captioned shapes, built once and then read from the `datasets` cache."""
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "label": datasets.ClassLabel(names=CLASSNAMES),
        }
    )
    return datasets.Dataset.from_generator(
        _generate,
        features=features,
        gen_kwargs={"split": split, "num_examples": num_examples, "image_size": image_size, "version": RENDER_VERSION},
        cache_dir=cache_dir,
        split=datasets.Split.TRAIN if split == "train" else datasets.Split.TEST,
    )


# MMVP-style pairs: two images that differ in one property only, and a statement for each.
PAIR_PROPERTIES = ("colour", "position", "size", "count", "orientation")
QUADRANT_NAMES = {(0, 0): "top left", (1, 0): "top right", (0, 1): "bottom left", (1, 1): "bottom right"}


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def render_pair(
    rng: random.Random, prop: str, image_size: int
) -> tuple[tuple[Image.Image, Image.Image], tuple[str, str]]:
    """Two images on the same background that differ in `prop` (one of PAIR_PROPERTIES), and a statement for each."""
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    background = cluttered_background(rng, image_size)
    images = (background.copy(), background.copy())
    centre, half = image_size / 2, image_size / 2
    jitter = image_size * 0.06

    def centred() -> tuple[float, float]:
        return centre + rng.uniform(-jitter, jitter), centre + rng.uniform(-jitter, jitter)

    if prop == "colour":
        other = rng.choice([c for c in COLORS if c != color])
        radius, (cx, cy) = rng.uniform(0.28, 0.36) * image_size, centred()
        for image, name in zip(images, (color, other), strict=True):
            draw_shape(image, rng, f"{name} {shape}", cx, cy, radius)
        return images, (article(f"{color} {shape}"), article(f"{other} {shape}"))
    if prop == "size":
        cx, cy = centred()
        for image, scale in zip(images, (rng.uniform(0.18, 0.24), rng.uniform(0.36, 0.42)), strict=True):
            draw_shape(image, rng, f"{color} {shape}", cx, cy, scale * image_size)
        return images, (f"a small {color} {shape}", f"a large {color} {shape}")
    if prop == "orientation":
        radius, (cx, cy) = rng.uniform(0.28, 0.36) * image_size, centred()
        for image, turn in zip(images, (0.0, math.pi), strict=True):
            draw_shape(image, rng, f"{color} triangle", cx, cy, radius, turn=turn)
        return images, (article(f"{color} triangle pointing up"), article(f"{color} triangle pointing down"))
    # position and count place shapes in quadrants
    radius = rng.uniform(0.15, 0.2) * image_size

    def in_quadrant(image: Image.Image, quadrant: tuple[int, int]) -> None:
        x = quadrant[0] * half + half / 2 + rng.uniform(-jitter, jitter) / 2
        y = quadrant[1] * half + half / 2 + rng.uniform(-jitter, jitter) / 2
        draw_shape(image, rng, f"{color} {shape}", x, y, radius)

    first, second = rng.sample(list(QUADRANT_NAMES), 2)
    if prop == "position":
        in_quadrant(images[0], first)
        in_quadrant(images[1], second)
        return images, tuple(article(f"{color} {shape} in the {QUADRANT_NAMES[q]}") for q in (first, second))
    if prop == "count":
        in_quadrant(images[0], first)
        in_quadrant(images[1], first)
        in_quadrant(images[1], second)
        return images, (f"one {color} {shape}", f"two {color} {_plural(shape)}")
    raise ValueError(f"unknown property {prop!r}; one of {PAIR_PROPERTIES}")


def draw_in_quadrants(image: Image.Image, rng: random.Random, placed, largest: float = 0.38) -> None:
    """Each (classname, (column, row)) of `placed` drawn inside its quadrant, its radius 0.3 to `largest` of a
    quadrant's side."""
    half = image.width / 2
    for classname, (column, row) in placed:
        radius = rng.uniform(0.3, largest) * half
        cx = column * half + rng.uniform(radius, half - radius)
        cy = row * half + rng.uniform(radius, half - radius)
        draw_shape(image, rng, classname, cx, cy, radius)


def render_objects(rng: random.Random, image_size: int, placed: list[tuple[str, tuple[int, int]]]) -> Image.Image:
    """A cluttered image with each (classname, quadrant) of `placed` drawn in its quadrant."""
    image = cluttered_background(rng, image_size)
    draw_in_quadrants(image, rng, placed)
    return image
