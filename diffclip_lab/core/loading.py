# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
Models loaded by name (a folder or a Hub id) for every script, with one rule for what goes wrong: a name that does
not load, or loads as the wrong kind of model, is one `UserError` line that says which and what to give instead.

- `load_pretrained`: any model class and its processor (the evaluations: DiffCLIP, CLIP, SigLIP, ...).
- `load_dual_encoder`: a CLIP-family dual encoder (DiffCLIP or CLIP) with its processor (ONNX export).
- `load_diffclip`: a saved DiffCLIP to continue training (`pretrain.py --init_from`).
- `load_vlm`: an image-text-to-text model and its processor (VLM training, POPE).
"""

from contextlib import contextmanager

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, CLIPModel

import modeling_diffclip  # noqa: F401  (registers DiffCLIP with the Auto classes)
from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel, DiffCLIPProcessor

from .errors import UserError


@contextmanager
def refused_as(what: str):
    """`from_pretrained`'s errors for a name that is not there or not a model (OSError, ValueError) as one line:
    `<what>: <the error's first line>`."""
    try:
        yield
    except (OSError, ValueError) as error:
        raise UserError(f"{what}: {str(error).strip().splitlines()[0]}") from None


def load_pretrained(name: str, trust_remote_code: bool = False, model_class=AutoModel, **model_kwargs):
    """A model (`model_class`) and its processor (`AutoProcessor`) from a folder or Hub id, or one clear error."""
    with refused_as(f"could not load model {name!r}"):
        model = model_class.from_pretrained(name, trust_remote_code=trust_remote_code, **model_kwargs)
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
    return model, processor


def load_dual_encoder(name: str, **model_kwargs):
    """A CLIP-family dual encoder (DiffCLIPModel or CLIPModel, in eval mode) and its processor; anything else, or a
    model saved without its processor, is refused."""
    with refused_as(f"could not load a model from {name}"):
        model = AutoModel.from_pretrained(name, **model_kwargs)
    # DiffCLIPModel is a CLIPModel; its zero-shot rule, softmax(exp(logit_scale) · cosine), is CLIP's.
    if not isinstance(model, CLIPModel):
        raise UserError(
            f"{name} holds a {type(model).__name__}, not a CLIP-family dual encoder (DiffCLIPModel or CLIPModel, "
            "with get_image_features and get_text_features); give a DiffCLIP or CLIP model folder."
        )
    try:
        processor = AutoProcessor.from_pretrained(name)
    except (OSError, ValueError):
        raise UserError(
            f"{name} has no processor (image processor and tokenizer files); save the model's processor next to it."
        ) from None
    return model.eval(), processor


def load_diffclip(name: str, option: str, variant: str | None = None) -> tuple[DiffCLIPModel, DiffCLIPProcessor]:
    """A saved DiffCLIP and its processor, given as `option`; a Transformers CLIP or another model is refused (with
    the conversion that makes one a DiffCLIP), as is a `variant` the model is not."""
    with refused_as(f"{option} {name}"):
        config = AutoConfig.from_pretrained(name)
    if not isinstance(config, DiffCLIPConfig):
        raise UserError(
            f"{option} {name} is a {config.model_type!r} model, not a DiffCLIP: convert a Transformers CLIP first "
            f"with python convert/convert_clip_to_diffclip.py --model {name} --output_dir DIR, then {option} DIR."
        )
    if variant is not None and variant != config.variant:
        raise UserError(
            f"--variant {variant} contradicts {option} {name}, which is {config.variant or 'another combination'}: "
            "leave --variant out to train it as it is."
        )
    return DiffCLIPModel.from_pretrained(name), DiffCLIPProcessor.from_pretrained(name)


def load_vlm(name: str, option: str = "--model", llava: bool = False, chat_template: bool = False, **model_kwargs):
    """
    An image-text-to-text model (`AutoModelForImageTextToText`) and its processor, given as `option`. `llava=True`
    refuses a model without LLaVA's multi-modal projector (what `examples/train_vlm.py` trains); `chat_template=True`
    one whose processor has no chat template (what POPE prompts through).
    """
    model, processor = load_pretrained(name, model_class=AutoModelForImageTextToText, **model_kwargs)
    if llava and not any(module.endswith("multi_modal_projector") for module, _ in model.named_modules()):
        raise UserError(f"{option} {name} ({type(model).__name__}) is not a LLaVA-style model; build one first.")
    if chat_template and getattr(processor, "chat_template", None) is None:
        raise UserError(f"the processor of {name} has no chat template; POPE prompts the model through it.")
    return model, processor
