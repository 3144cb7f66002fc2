# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Writing model folders safely, describing them with a model card, and publishing them on the Hub."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import HfApi

from .configuration_diffclip import DiffCLIPConfig


PAPER_CITATION = """@misc{hammoud2025diffclip,
  title={DiffCLIP: Differential Attention Meets CLIP},
  author={Hasan Abed Al Kader Hammoud and Bernard Ghanem},
  year={2025},
  eprint={2503.06626},
  archivePrefix={arXiv},
  primaryClass={cs.CV},
  url={https://arxiv.org/abs/2503.06626}
}"""


class OutputDirectoryError(ValueError):
    """The output directory cannot be written as asked (it holds something and overwriting was not allowed)."""


def check_output_directory(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Refuse, with [`OutputDirectoryError`], a `path` that is a file, or a non-empty directory without `overwrite`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirectoryError(f"{path} exists and is not a directory; choose another output directory.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputDirectoryError(
            f"{path} exists and is not empty; choose another output directory or pass --overwrite to replace it."
        )


@contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """
    Yield an empty temporary directory beside `path` to fill. When the block succeeds it takes `path`'s place with a
    rename, so readers never see a half-written folder; when it fails it is deleted and `path` is left as it was.

    A non-empty `path` is refused with [`OutputDirectoryError`] unless `overwrite=True`.
    """
    path = Path(path)
    check_output_directory(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's private 0700 would otherwise become the folder's mode
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous = None
    if path.exists():
        previous = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(previous)
    staging.rename(path)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temporary sibling and a rename, so `path` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def variant_name(config: DiffCLIPConfig) -> str:
    """The paper's name for a config: CLIP, DiffCLIP, DiffCLIP† (vision only) or DiffCLIP* (dynamic λ_init)."""
    text, vision = config.text_config, config.vision_config
    if not (text.use_differential_attention or vision.use_differential_attention):
        return "CLIP"
    dynamic = "dynamic" in (text.lambda_schedule, vision.lambda_schedule)
    if text.use_differential_attention:
        return "DiffCLIP*" if dynamic else "DiffCLIP"
    return "DiffCLIP† (vision only)" + (" with dynamic λ_init" if dynamic else "")


def model_card(
    config: DiffCLIPConfig,
    title: str,
    provenance: str,
    license: str = "other",
    datasets: list[str] | None = None,
    results: dict[str, float] | None = None,
) -> str:
    """A model card (README.md with Hub metadata) describing a DiffCLIP folder and how to load it."""
    text, vision = config.text_config, config.vision_config
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: zero-shot-image-classification",
        f"license: {license}",
        "tags:",
        *(f"- {tag}" for tag in ("diffclip", "clip", "differential-attention", "vision", "custom_code")),
    ]
    if datasets:
        lines += ["datasets:", *(f"- {name}" for name in datasets)]
    lines += [
        "---",
        "",
        f"# {title}",
        "",
        f"{variant_name(config)}: CLIP whose self-attention is differential attention "
        "([Hammoud & Ghanem, 2025](https://arxiv.org/abs/2503.06626); "
        "[Ye et al., 2024](https://arxiv.org/abs/2410.05258)), packaged for Hugging Face Transformers.",
        "",
        "| | vision | text |",
        "| --- | --- | --- |",
        f"| width × layers × heads | {vision.hidden_size} × {vision.num_hidden_layers} × {vision.num_attention_heads} "
        f"| {text.hidden_size} × {text.num_hidden_layers} × {text.num_attention_heads} |",
        f"| input | {vision.image_size} px, patch {vision.patch_size} | {text.max_position_embeddings} tokens, "
        f"vocabulary {text.vocab_size} |",
        f"| differential attention | {_attention_summary(vision)} | {_attention_summary(text)} |",
        "",
        f"Joint embedding dimension: {config.projection_dim}.",
        "",
        'With `attn_implementation="eager"`, `output_attentions=True` returns, for each differential layer, the '
        "maps A1 − λ·A2 the layer applies: one per differential head, of shape (batch, num_attention_heads / 2, "
        "tokens, tokens), rows summing to 1 − λ. `DiffCLIPAttention.softmax_maps` gives the two softmax maps A1 "
        "and A2.",
        "",
    ]
    if results:
        lines += ["## Results", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {value:.4f} |" for name, value in results.items()] + [""]
    lines += [
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModel, AutoProcessor, pipeline",
        "",
        "# trust_remote_code runs the modeling code stored in this repository;",
        "# with `pip install diffclip-transformers` and `import modeling_diffclip` it is not needed.",
        'model = AutoModel.from_pretrained("<this repo>", trust_remote_code=True)',
        'processor = AutoProcessor.from_pretrained("<this repo>", trust_remote_code=True)',
        'classify = pipeline("zero-shot-image-classification", model="<this repo>", trust_remote_code=True)',
        'print(classify("image.jpg", candidate_labels=["a photo of a cat", "a photo of a dog"]))',
        "```",
        "",
        "## Provenance",
        "",
        provenance,
        "",
        "## Citation",
        "",
        "```bibtex",
        PAPER_CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


def _attention_summary(tower_config) -> str:
    if not tower_config.use_differential_attention:
        return "no (softmax attention)"
    if tower_config.lambda_schedule == "dynamic":
        return "yes, λ_init(l) = 0.8 − 0.6·exp(−0.3·l)"
    return f"yes, λ_init = {tower_config.lambda_init}"


def push_folder_to_hub(
    folder: str | os.PathLike, repo_id: str, private: bool = False, commit_message: str = ""
) -> str:
    """Create `repo_id` if needed and upload every file of `folder` in one commit; returns the commit URL."""
    api = HfApi()
    api.create_repo(repo_id, private=private or None, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), commit_message=commit_message or f"Upload {Path(folder).name}"
    )
    return commit.commit_url
