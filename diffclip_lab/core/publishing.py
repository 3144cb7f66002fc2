# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Describing model folders with a model card, and publishing them on the Hub."""

import logging
import os
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from modeling_diffclip import DiffCLIPConfig

from .errors import UserError
from .files import atomic_directory
from .formatting import PAPER_NAMES


logger = logging.getLogger(__name__)


PAPER_CITATION = """@misc{hammoud2025diffclip,
  title={DiffCLIP: Differential Attention Meets CLIP},
  author={Hasan Abed Al Kader Hammoud and Bernard Ghanem},
  year={2025},
  eprint={2503.06626},
  archivePrefix={arXiv},
  primaryClass={cs.CV},
  url={https://arxiv.org/abs/2503.06626}
}"""


def model_card(
    config: DiffCLIPConfig,
    title: str,
    provenance: str,
    license: str = "other",
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
        "---",
        "",
        f"# {title}",
        "",
        _summary(config),
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
    ]
    return "\n".join(lines + card_ending(provenance))


def card_ending(provenance: str) -> list[str]:
    """The last sections of every model card this project writes: where the weights come from, and the paper."""
    return ["## Provenance", "", provenance, "", "## Citation", "", "```bibtex", PAPER_CITATION, "```", ""]


def describe_variant(config: DiffCLIPConfig) -> str:
    """The paper's name for a config (CLIP, DiffCLIP, DiffCLIP† (vision only), DiffCLIP*), or its towers' attention."""
    if config.variant is not None:
        return PAPER_NAMES[config.variant] + (" (vision only)" if config.variant == "diffclip-vision" else "")
    towers = [name for name in ("text", "vision") if getattr(config, f"{name}_config").use_differential_attention]
    return f"DiffCLIP (differential attention in the {' and '.join(towers)} tower{'s' * (len(towers) - 1)})"


def _summary(config: DiffCLIPConfig) -> str:
    papers = "[Hammoud & Ghanem, 2025](https://arxiv.org/abs/2503.06626)"
    if config.variant == "clip":
        return (
            f"CLIP with softmax attention in both towers: the baseline of DiffCLIP ({papers}), packaged with "
            "DiffCLIP's code for Hugging Face Transformers so that both are compared the same way."
        )
    return (
        f"{describe_variant(config)}: CLIP whose self-attention is differential attention ({papers}; "
        "[Ye et al., 2024](https://arxiv.org/abs/2410.05258)), packaged for Hugging Face Transformers."
    )


def _attention_summary(tower_config) -> str:
    if not tower_config.use_differential_attention:
        return "no (softmax attention)"
    if tower_config.lambda_schedule == "dynamic":
        return "yes, λ_init(l) = 0.8 − 0.6·exp(−0.3·l)"
    return f"yes, λ_init = {tower_config.lambda_init}"


def save_model_folder(
    output_dir: str | os.PathLike, model, processor, card: str, overwrite: bool = False, state_dict: dict | None = None
) -> None:
    """`model` (with `state_dict` if given), its `processor` and its model `card` (README.md), written under a
    temporary name and renamed."""
    with atomic_directory(output_dir, overwrite=overwrite) as staging:
        model.save_pretrained(staging, state_dict=state_dict)
        processor.save_pretrained(staging)
        (staging / "README.md").write_text(card, encoding="utf-8")


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


def push_output(args, commit_message: str) -> None:
    """Upload `args.output_dir` when `--push_to_hub` (`cli.add_output_arguments`) was given, and say where."""
    if args.push_to_hub:
        url = push_folder_to_hub(args.output_dir, args.push_to_hub, args.private, commit_message)
        logger.info(f"Uploaded to {url}")


def check_can_push(repo_id: str) -> None:
    """Before any work that ends with a push: the repo id is valid, a token is set and the Hub answers with it."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UserError(f"cannot push to {repo_id!r}: {error}") from None
    later = "or push the folder later with python examples/push_to_hub.py FOLDER --repo_id ID"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise UserError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set; unset it, {later}.")
    if get_token() is None:
        raise UserError(f"cannot push to {repo_id}: no Hub token; run `hf auth login` or set HF_TOKEN, {later}.")
    try:
        HfApi().whoami()
    except Exception as error:  # refused token, or no network: the HTTP client's own errors, whatever it is
        reason = str(error).strip().splitlines()[0]
        raise UserError(
            f"cannot push to {repo_id}: the Hub does not answer with this token ({reason}); {later}."
        ) from None
