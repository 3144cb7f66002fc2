# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Time the whole input pipeline of examples/pretrain.py on webdataset shards: read the shards (streaming), decode the
JPEGs, crop at random (SLIP's random resized crop), tokenize, collate, cross from the loader's workers to the training
process and hand over to the training loop (moved to --device, pixels normalised there); with 0, 1, 2 ... N loader
workers, JPEGs decoded in full or at reduced size, and how many workers one GPU needs at a given training rate.

    python benchmarks/bench_data.py                                  # 256, 384, 512, 1024-px shards, 0..N workers
    python benchmarks/bench_data.py --resolutions 256 1024 --workers 1 2 --batch_size 128 --output data.json
    python benchmarks/bench_data.py --shards "/data/cc3m/{00000..00007}.tar" --workers 1 2 4 8   # your own shards

The shards are written as img2dataset writes them ({key}.jpg, short side at each of --resolutions, aspect ratio
kept, JPEG quality 95; {key}.txt) from the five colour photographs scikit-image ships (astronaut, chelsea, coffee,
rocket and the left view of stereo_motorcycle; `pip install scikit-image`), each in random crops, every other one
mirrored, with captions of 6 to 20 words drawn from a fixed vocabulary. The photographs are 300–512 px on their short
side, so shards above that are upscaled (Lanczos): fewer JPEG bytes per pixel than camera originals, so slightly
faster to decode. `--shards` times shards of your own instead (they need at least as many shards as workers).

Timing: per candidate (shards, decoding, workers) a fresh loader; the first batch of every worker (starting it,
filling the shuffle buffer) is not timed, then `--batches` batches per worker are; rounds go over all candidates in
turn, `--repeats` times, so that a slow spell of a shared machine hits all of them alike. Besides wall-clock
images/s, the CPU time of the workers and of the training process is read from /proc: images per worker CPU-second
is what one worker delivers on a core of its own, which is what the workers one GPU needs are computed from (a
shared machine slows the wall clock far more than it inflates CPU time). Prints Markdown tables; `--output` writes
JSON (keys in docs/performance.md).
"""

import argparse
import functools
import io
import math
import os
import random
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from diffclip_lab.benchmarking.harness import spread
from diffclip_lab.core.cli import ArgumentParser, non_negative_int, positive_int, run_main
from diffclip_lab.core.data import (
    ExampleEncoder,
    ImageTransform,
    image_text_loader,
    load_image_text_dataset,
    resolve_columns,
    webdataset_shards,
    without_image_decoding,
)
from diffclip_lab.core.errors import UserError
from diffclip_lab.core.files import write_json
from diffclip_lab.core.formatting import format_measurement, markdown_table
from diffclip_lab.core.provenance import command_and_machine, environment
from modeling_diffclip import DiffCLIPProcessor


PHOTOGRAPHS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")
CROPS_PER_PHOTOGRAPH = 4
JPEG_QUALITY = 95  # img2dataset's default
# the training rates one GPU consumes: the paper's (about 370 images/s per A100) and an H100-class bf16 ViT-B/16 step
TARGETS = {"paper, A100": 370, "H100, bf16 ViT-B/16": 1500}
DECODING = ("full", "draft")  # every JPEG in full; at reduced size where the crop allows (ImageTransform.draft_gap)
WORDS = (
    "a photo of the man woman dog cat car street house tree river mountain city beach old new red blue green white "
    "black small large young sitting standing walking in on at near with under over front view from above during "
    "summer winter night day sunset portrait close-up illustration vector background table coffee cup rocket bike"
).split()


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--resolutions", nargs="+", type=positive_int, default=[256, 384, 512, 1024], help="short sides to write")
    add("--shards", help="time these webdataset shards instead: a folder, a shard, a brace pattern or an a::b list")
    add(
        "--workers",
        nargs="+",
        type=non_negative_int,
        help="loader worker counts, 0 = in the training process (default: 0, 1, 2, 4 ... and the number of CPUs)",
    )
    add("--decoding", nargs="+", choices=DECODING, default=list(DECODING), help="JPEG decoding (default: both)")
    add("--draft_gap", type=float, default=2.0, help="decoding 'draft': ImageTransform's draft_gap (default: 2)")
    add("--batch_size", type=positive_int, default=64, help="images per batch (default: 64)")
    add("--batches", type=positive_int, default=4, help="timed batches per worker and round (default: 4)")
    add("--repeats", type=positive_int, default=3, help="rounds over all candidates (default: 3)")
    add("--image_size", type=positive_int, default=224, help="the crop the model takes (default: 224)")
    add("--crop_scale", type=float, default=0.5, help="random crops of this fraction of the area or more (0.5)")
    add("--shuffle_buffer", type=positive_int, default=64, help="shuffle buffer of the stream (default: 64)")
    add("--compare", type=positive_int, default=128, help="images whose draft and full decodings are compared")
    add("--device", choices=("cpu", "cuda"), default="cpu", help="where batches are handed over (default: cpu)")
    add("--data_dir", type=Path, help="write the shards here and keep them (default: a temporary folder)")
    add("--output", type=Path, help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False on this machine.")
    if not 0 < args.crop_scale <= 1:
        parser.error(f"--crop_scale {args.crop_scale}: give a fraction of the area in (0, 1].")
    if args.draft_gap < 1:
        parser.error(f"--draft_gap {args.draft_gap}: below 1 a crop would be upscaled from a reduced decoding.")
    if args.workers is None:
        cpus = len(os.sched_getaffinity(0))
        args.workers = [0, *(2**k for k in range(cpus.bit_length()) if 2**k < cpus), cpus]
    args.workers = sorted(set(args.workers))
    return args


def photographs() -> list[Image.Image]:
    """The colour photographs scikit-image ships."""
    try:
        from skimage import data
    except ImportError:
        raise UserError(
            "the shards are written from scikit-image's sample photographs: pip install scikit-image, or time shards "
            "of your own with --shards."
        ) from None
    images = []
    for name in PHOTOGRAPHS:
        pixels = getattr(data, name)()
        images.append(Image.fromarray(pixels[0] if isinstance(pixels, tuple) else pixels).convert("RGB"))
    return images


def jpeg_crops(photos: list[Image.Image], short_side: int, rng: random.Random) -> list[bytes]:
    """Random crops (80–100 % of the area, the photograph's aspect ratio) of each photograph, every other one
    mirrored, resized to `short_side` on the short side and encoded as img2dataset does."""
    crops = []
    for photo in photos:
        for index in range(CROPS_PER_PHOTOGRAPH):
            scale = math.sqrt(rng.uniform(0.8, 1.0))
            width, height = round(photo.width * scale), round(photo.height * scale)
            left, top = rng.randint(0, photo.width - width), rng.randint(0, photo.height - height)
            image = photo.crop((left, top, left + width, top + height))
            if index % 2:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            factor = short_side / min(width, height)
            image = image.resize((round(width * factor), round(height * factor)), Image.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
            crops.append(buffer.getvalue())
    return crops


def write_shards(folder: Path, jpegs: list[bytes], num_shards: int, per_shard: int) -> list[str]:
    """img2dataset's layout: `num_shards` tar shards of `per_shard` samples, {key}.jpg and {key}.txt."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard in range(num_shards):
        paths.append(str(folder / f"{shard:05d}.tar"))
        with tarfile.open(paths[-1], "w") as tar:
            for index in range(per_shard):
                key = f"{shard:05d}{index:04d}"
                caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20)))
                for name, payload in ((f"{key}.jpg", rng.choice(jpegs)), (f"{key}.txt", caption.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    return paths


def prepare_shards(args, root: Path) -> dict[str, str]:
    """name -> shards ('::'-separated): --shards, or shards written for each of --resolutions. Every worker reads at
    least one shard, which holds its untimed and timed batches and the shuffle buffer it fills first."""
    if args.shards is not None:
        if (paths := webdataset_shards(args.shards, "train")) is None:  # shards that do not exist: refused there
            raise UserError(
                f"--shards {args.shards}: no webdataset .tar shards there (give a folder of them, a shard, a brace "
                "pattern or an a.tar::b.tar list)."
            )
        return {"given": "::".join(paths)}
    photos = photographs()
    per_shard = (1 + args.batches) * args.batch_size + args.shuffle_buffer
    return {
        str(resolution): "::".join(
            write_shards(
                root / str(resolution),
                jpeg_crops(photos, resolution, random.Random(resolution)),
                max(1, *args.workers),
                per_shard,
            )
        )
        for resolution in args.resolutions
    }


@functools.cache
def processor_for(image_size: int) -> DiffCLIPProcessor:
    """One processor per size for every loader of the run (building one reads the BPE vocabulary)."""
    return DiffCLIPProcessor.from_defaults(image_size=image_size)


def transform(decoding: str, args) -> ImageTransform:
    processor = processor_for(args.image_size)
    draft_gap = args.draft_gap if decoding == "draft" else None
    return ImageTransform.for_processor(processor.image_processor, args.crop_scale, draft_gap=draft_gap)


def raw_stream(shards: str):
    raw = load_image_text_dataset(shards, streaming=True)
    image_column, caption_column = resolve_columns(raw, None, None)
    return without_image_decoding(raw, image_column), image_column, caption_column


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) that process `pid` has used, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def batch_bytes(batch: dict) -> int:
    """Bytes of the tensors of a batch as the loader yields it: what crosses from a worker to the training process."""
    return sum(value.nbytes for value in batch.values() if isinstance(value, torch.Tensor))


def time_loader(shards: str, decoding: str, workers: int, args) -> dict:
    """
    One pass of examples/pretrain.py's loader (one training process): seconds to the first batch of every worker,
    then the seconds, images and CPU time (the workers', the training process's) of `args.batches` batches per
    worker, each handed over as the training loop takes it.
    """
    raw, image_column, caption_column = raw_stream(shards)
    processor = processor_for(args.image_size)
    data, loader = image_text_loader(
        raw,
        image_column,
        caption_column,
        transform(decoding, args),
        processor.tokenizer,
        args.batch_size,
        workers,
        shuffle_buffer=args.shuffle_buffer,
        pin_memory=args.device == "cuda",
    )

    def hand_over(batch: dict) -> dict:  # examples/pretrain.py's train()
        batch.pop("skipped")
        return data.model_inputs(batch, args.device)

    per_round = max(workers, 1)  # workers deliver in turn: whole rounds of batches are timed
    start = time.perf_counter()
    batches = iter(loader)
    for _ in range(per_round):
        nbytes = batch_bytes(batch := next(batches))
        hand_over(batch)
    pids = [worker.pid for worker in getattr(batches, "_workers", [])]  # the loader's worker processes
    worker_cpu, main_cpu, warm = sum(map(cpu_seconds, pids)), time.process_time(), time.perf_counter()
    images = 0
    for _ in range(per_round * args.batches):
        images += len(hand_over(next(batches))["pixel_values"])
    if args.device == "cuda":
        torch.cuda.synchronize()
    end = time.perf_counter()
    worker_cpu, main_cpu = sum(map(cpu_seconds, pids)) - worker_cpu, time.process_time() - main_cpu
    del batches  # stops the workers
    return {
        "first_batches_s": warm - start,
        "seconds": end - warm,
        "images": images,
        "worker_cpu_s": worker_cpu,
        "main_cpu_s": main_cpu,
        "batch_bytes": nbytes,
    }


def summarise(shards: str, decoding: str, workers: int, passes: list[dict], args) -> dict:
    """One candidate's record: wall-clock rate (median and quartiles over rounds), CPU time per image of the
    workers and of the training process, time to the first batches, bytes per batch."""
    per_image = [run["seconds"] / run["images"] for run in passes]
    wall = spread(per_image)
    # the pipeline's own work: the workers', or with 0 workers the training process's
    worker_cpu = [run["worker_cpu_s" if workers else "main_cpu_s"] for run in passes]
    work = spread([cpu / run["images"] for cpu, run in zip(worker_cpu, passes, strict=True)])
    busy = spread([cpu / run["seconds"] for cpu, run in zip(worker_cpu, passes, strict=True)])
    return {
        "shards": shards,
        "decoding": decoding,
        "workers": workers,
        "batch_size": args.batch_size,
        "images_timed": passes[0]["images"],
        "seconds_per_image": per_image,
        "images_per_s": 1 / wall["median"],
        "images_per_s_q1": 1 / wall["q3"],
        "images_per_s_q3": 1 / wall["q1"],
        "worker_cpu_s_per_image": [run["worker_cpu_s"] / run["images"] for run in passes],
        "main_cpu_s_per_image": [run["main_cpu_s"] / run["images"] for run in passes],
        "images_per_worker_cpu_s": 1 / work["median"] if work["median"] else None,  # below /proc's 10-ms ticks
        "worker_cores_busy": busy["median"],  # below the worker count: the workers waited for a core
        "first_batches_s": spread([run["first_batches_s"] for run in passes])["median"],
        "batch_bytes": passes[0]["batch_bytes"],
        "bytes_per_image": passes[0]["batch_bytes"] / args.batch_size,
    }


def workers_needed(results: list[dict]) -> list[dict]:
    """Per shards and decoding: the images one worker makes per CPU-second (with the fewest workers measured, at
    least one) and the workers one GPU needs at each of TARGETS, each worker on a core of its own."""
    needs = {}
    for result in sorted(results, key=lambda r: -r["workers"]):
        if result["workers"] >= 1:
            rate = result["images_per_worker_cpu_s"]
            needs[result["shards"], result["decoding"]] = {
                "shards": result["shards"],
                "decoding": result["decoding"],
                "images_per_worker_cpu_s": result["images_per_worker_cpu_s"],
                "training_process_cpu_s_per_image": spread(result["main_cpu_s_per_image"])["median"],
                "workers": {
                    name: None if rate is None else math.ceil(target / rate) for name, target in TARGETS.items()
                },
            }
    return list(needs.values())


def draft_difference(shards: str, args) -> dict:
    """How far the pixels of reduced-size decoding are from those of full decoding, over the first `args.compare`
    images of `shards` with their training crops: the share of images decoded at reduced size and the absolute
    differences in uint8 levels (mean, 99th percentile, largest; share of values more than 2 levels off)."""
    raw, image_column, caption_column = raw_stream(shards)
    full, draft = (ExampleEncoder(image_column, caption_column, transform(d, args)) for d in DECODING)
    differences, drafted = [], 0
    for index, example in enumerate(raw.take(args.compare)):
        expected, actual = full(example, index), draft(example, index)
        if isinstance(expected, dict):
            difference = (actual["pixel_values"].int() - expected["pixel_values"].int()).abs().flatten()
            differences.append(difference)
            drafted += bool(difference.any())
    if not differences:
        return {"images": 0}
    levels = torch.cat(differences).float()
    return {
        "images": len(differences),
        "share_decoded_at_reduced_size": drafted / len(differences),
        "mean_abs_levels": levels.mean().item(),
        "p99_abs_levels": levels.kthvalue(math.ceil(0.99 * len(levels))).values.item(),
        "max_abs_levels": levels.max().item(),
        "share_over_2_levels": (levels > 2).float().mean().item(),
    }


def jpeg_bytes(shards: str) -> float:
    """Mean bytes of the images of `shards`."""
    sizes = []
    for path in shards.split("::"):
        with tarfile.open(path) as tar:
            sizes += [member.size for member in tar.getmembers() if member.name.endswith(".jpg")]
    return sum(sizes) / max(len(sizes), 1)


RESULT_HEADERS = [
    "shards",
    "decoding",
    "workers",
    "images/s",
    "IQR",
    "images per worker CPU-s",
    "worker cores busy",
    "training process CPU ms/image",
    "first batches s",
    "MiB per batch",
]
NEED_HEADERS = [
    "shards",
    "decoding",
    "images per worker CPU-s",
    *(f"workers at {n}/s ({k})" for k, n in TARGETS.items()),
]
DIFFERENCE_HEADERS = ["shards", "JPEG KiB", "decoded at reduced size", "mean |Δ| levels", "p99", "max", "> 2 levels"]


def result_row(result: dict) -> list:
    return [
        result["shards"],
        result["decoding"],
        result["workers"],
        result["images_per_s"],
        f"{result['images_per_s_q1']:.0f}–{result['images_per_s_q3']:.0f}",
        result["images_per_worker_cpu_s"],
        result["worker_cores_busy"],
        1e3 * spread(result["main_cpu_s_per_image"])["median"],
        result["first_batches_s"],
        result["batch_bytes"] / 2**20,
    ]


def need_row(need: dict) -> list:
    return [need["shards"], need["decoding"], need["images_per_worker_cpu_s"], *need["workers"].values()]


def difference_row(difference: dict, jpeg_size: float) -> list:
    return [
        difference["shards"],
        jpeg_size / 2**10,
        f"{difference['share_decoded_at_reduced_size']:.0%}",
        difference["mean_abs_levels"],
        difference["p99_abs_levels"],
        difference["max_abs_levels"],
        f"{difference['share_over_2_levels']:.2%}",
    ]


def main(argv=None) -> int:
    args = parse_args(argv)
    # one thread, as in a loader worker: with 0 workers the rows measure the pipeline's work, not thread contention
    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="bench-data-") as temporary:
        shard_sets = prepare_shards(args, args.data_dir or Path(temporary))
        candidates = [(name, d, w) for name in shard_sets for d in args.decoding for w in args.workers]
        passes = {candidate: [] for candidate in candidates}
        for _ in range(args.repeats):
            for name, decoding, workers in candidates:
                passes[name, decoding, workers].append(time_loader(shard_sets[name], decoding, workers, args))
        results = [summarise(name, d, w, passes[name, d, w], args) for name, d, w in candidates]
        differences = [{"shards": name, **draft_difference(shards, args)} for name, shards in shard_sets.items()]
        sizes = {name: jpeg_bytes(shards) for name, shards in shard_sets.items()}
    needs = workers_needed(results)
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    payload = {
        "script": "bench_data",
        **command_and_machine("bench_data"),
        "environment": environment(args.device),
        "settings": settings,
        "jpeg_bytes_per_image": sizes,
        "results": results,
        "workers_needed": needs,
        "draft_difference": differences,
    }
    print(markdown_table(RESULT_HEADERS, [result_row(result) for result in results], format_measurement))
    print("\n" + markdown_table(NEED_HEADERS, [need_row(need) for need in needs], format_measurement))
    rows = [difference_row(d, sizes[d["shards"]]) for d in differences if d["images"]]
    print("\n" + markdown_table(DIFFERENCE_HEADERS, rows, format_measurement), flush=True)
    write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    run_main(main)
