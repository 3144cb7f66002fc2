# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
LLaVA-1.5-style vision-language models from a DiffCLIP (or Transformers CLIP) checkpoint and any causal language
model: the composition, its processor and chat template.

A DiffCLIP vision tower gives a `diffclip_llava` model (`DiffCLIPLlavaForConditionalGeneration`, whose code the
saved folder carries), a CLIP one Transformers' own `llava`. Either way: the vision tower and the language model
copied exactly, a fresh two-layer GELU projector (`mlp2x_gelu`), the penultimate vision layer's patch features
(class token dropped), and a `LlavaProcessor` whose tokenizer has an `<image>` token.
"""

import os
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    CLIPConfig,
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from modeling_diffclip import (
    DiffCLIPConfig,
    DiffCLIPLlavaConfig,
    DiffCLIPLlavaForConditionalGeneration,
    DiffCLIPVisionConfig,
)

from ..core.errors import UserError
from ..core.files import check_output_directory
from ..core.loading import refused_as
from ..core.publishing import card_ending, save_model_folder


IMAGE_TOKEN = "<image>"
# LLaVA-1.5's conversation in stage 2 and evaluation, `vicuna_v1` of LLaVA's `llava/conversation.py`: the system
# prompt, a space, then "USER: <image>\n{question} ASSISTANT: {answer}</s>" per round, `</s>` directly followed by
# the next "USER:"; a prompt for generation ends in "ASSISTANT:". A system message replaces the system prompt.
# A prompt rendered with `add_generation_prompt` is a prefix of the conversation with the answer, so answer tokens
# can be told from prompt tokens (see `vlm_data.ConversationEncoder.answer_spans`).
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_TURNS = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': ' }}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image>\\n' }}{% endif %}{% endfor %}"
    "{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{{ END }}{% else %}{{ ' ' }}{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
CHAT_TEMPLATES = {
    "vicuna_v1": (
        "{{ (messages[0]['content'][0]['text'] if messages[0]['role'] == 'system' else '"
        + VICUNA_V1_SYSTEM.replace("'", "\\'")
        + "') + ' ' }}"
        + _TURNS.replace("{{ END }}", "")
    ),
    # the earlier short form: no system prompt unless one is given, a space after each `</s>`; the demo's (its tiny
    # language model knows none of the system prompt's words)
    "short": (
        "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'][0]['text'] + ' ' }}{% endif %}"
        + _TURNS.replace("{{ END }}", "{{ ' ' }}")
    ),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_vision_tower(name_or_path: str):
    """The vision tower of a DiffCLIP or Transformers CLIP checkpoint (dual encoder or vision tower alone), and the
    checkpoint's image processor. Anything else is refused."""
    with refused_as(f"--vision_model {name_or_path}"):
        config = AutoConfig.from_pretrained(name_or_path)
    if not isinstance(config, (DiffCLIPConfig, DiffCLIPVisionConfig, CLIPConfig, CLIPVisionConfig)):
        raise UserError(
            f"--vision_model {name_or_path} is a {config.model_type!r} model, not CLIP-family: give a DiffCLIP or "
            "Transformers CLIP checkpoint (a dual encoder or its vision tower)."
        )
    model = AutoModel.from_pretrained(name_or_path)
    tower = model.vision_model if hasattr(model, "text_model") else model
    try:
        image_processor = AutoProcessor.from_pretrained(name_or_path).image_processor
    except (OSError, ValueError, AttributeError):
        raise UserError(f"--vision_model {name_or_path} has no image processor saved beside the weights.") from None
    return tower, image_processor


def load_language_model(name_or_path: str):
    """A causal language model and its tokenizer; a model that is not causal (e.g. BERT) is refused."""
    with refused_as(f"--language_model {name_or_path} is not a causal language model Transformers can load"):
        model = AutoModelForCausalLM.from_pretrained(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if not is_causal(model):
        raise UserError(
            f"--language_model {name_or_path} ({type(model).__name__}) is not causal: its outputs depend on later "
            "tokens. LLaVA generates with a decoder-only language model (Llama, Qwen, Mistral, GPT-2, ...)."
        )
    return model, tokenizer


@torch.no_grad()
def is_causal(model) -> bool:
    """Whether changing the last token of a sequence leaves the logits of the earlier positions unchanged."""
    generator = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, 8), generator=generator)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % vocab
    model.eval()
    before, after = model(input_ids=ids).logits, model(input_ids=changed).logits
    return torch.allclose(before[:, :-1], after[:, :-1], atol=1e-5, rtol=1e-4)


def llava_image_processor(image_processor, pad_to_square: bool = True) -> LlavaImageProcessorPil:
    """The vision checkpoint's preprocessing (size, crop, resampling, mean/std), optionally after LLaVA-1.5's padding
    of the image to a square with the mean colour, which keeps the whole image in the crop."""
    return LlavaImageProcessorPil(
        size=dict(image_processor.size),
        crop_size=dict(image_processor.crop_size),
        resample=image_processor.resample,
        image_mean=list(image_processor.image_mean),
        image_std=list(image_processor.image_std),
        do_pad=pad_to_square,
    )


def build_llava(
    vision_model: str,
    language_model: str,
    pad_to_square: bool = True,
    seed: int = 0,
    chat_template: str = "vicuna_v1",
    dtype: str = "float32",
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """
    A LLaVA-1.5-style model and its processor: the vision tower and the language model copied exactly, a fresh
    projector (drawn with `seed`, in float32), the `<image>` token added to the tokenizer and the embeddings, every
    size derived from the two checkpoints, then the whole model in `dtype` (a saved folder loads in one dtype:
    float32 keeps every part exact and trainable; bfloat16 is how LLaVA-1.5 holds a 7B model). `chat_template`:
    a name of `CHAT_TEMPLATES`.
    """
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
    if chat_template not in CHAT_TEMPLATES:
        raise UserError(f"--chat_template {chat_template!r} is not one of {', '.join(CHAT_TEMPLATES)}.")
    tower, image_processor = load_vision_tower(vision_model)
    lm, tokenizer = load_language_model(language_model)
    if tower.config.num_hidden_layers < 2:
        raise UserError(f"--vision_model {vision_model} has one layer: LLaVA reads the penultimate one's features.")
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    if tokenizer.pad_token is None:  # LLaVA pads batches of conversations
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    lm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    vision_config = tower.config
    llava_class, config_class = (
        (DiffCLIPLlavaForConditionalGeneration, DiffCLIPLlavaConfig)
        if isinstance(vision_config, DiffCLIPVisionConfig)
        else (LlavaForConditionalGeneration, LlavaConfig)
    )
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    config = config_class(
        vision_config=vision_config.to_dict(),
        text_config=lm.config.to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=patches,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=lm.config.tie_word_embeddings,
    )
    with torch.random.fork_rng(devices=[]):  # only the projector is new: make it reproducible
        torch.manual_seed(seed)
        model = llava_class(config).float()  # the parts are copied in below, cast exactly (up to `dtype`)
    model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    model.model.language_model.load_state_dict(lm.base_model.state_dict(), strict=True)
    model.lm_head.load_state_dict(lm.get_output_embeddings().state_dict(), strict=True)
    model.to(DTYPES[dtype])
    model.generation_config = lm.generation_config
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = LlavaProcessor(
        image_processor=llava_image_processor(image_processor, pad_to_square),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the class token, which "default" drops again
        chat_template=CHAT_TEMPLATES[chat_template],
    )
    return model, processor


def training_dtypes(model, mixed_precision: str, sharded: bool = False) -> list[str]:
    """
    Put a model whose trainable parameters are chosen in the dtypes it trains in; returns what changed, for the log.
    Trainable parameters become float32 master weights whatever the checkpoint's dtype (AdamW's updates and eps
    vanish in float16), with mixed precision (`fp16`/`bf16` autocast) doing the half-precision compute, as LLaVA's
    bf16 training keeps float32 master weights. Frozen parameters keep their dtype where the compute can read it:
    float32, or the mixed-precision dtype; a half dtype otherwise (no mixed precision, or float16 under bf16 autocast,
    which cannot mix the two half types) becomes float32, exactly. Sharded (FSDP), every parameter is float32 and
    FSDP's mixed precision computes.
    """
    compute = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    changed = {}
    for name, parameter in model.named_parameters():
        keep = parameter.dtype in (torch.float32, compute) and not parameter.requires_grad and not sharded
        if parameter.dtype != torch.float32 and not keep:
            changed.setdefault(str(parameter.dtype).removeprefix("torch."), []).append(name)
            parameter.data = parameter.data.float()
    return [f"{len(names)} {dtype} parameters" for dtype, names in changed.items()]


class VLMForTraining(torch.nn.Module):
    """
    The training forward of a LLaVA-style `model`: the loss of a batch. A batch without images (text-only
    conversations) also runs one blank image through the vision tower and the projector and adds 0 × their output,
    as LLaVA feeds zero images for text-only conversations: every process then uses every trained parameter at every
    step, which DDP and FSDP need to reduce the gradients together (those parameters' gradient is 0 there).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, **batch) -> torch.Tensor:
        loss = self.model(**batch).loss
        if "pixel_values" in batch:
            return loss
        size = self.model.config.vision_config.image_size
        projector = self.model.model.multi_modal_projector
        blank = torch.zeros(1, 3, size, size, device=loss.device, dtype=next(projector.parameters()).dtype)
        features = self.model.get_image_features(pixel_values=blank).pooler_output
        return loss + 0.0 * sum(feature.sum() for feature in features)


def save_vlm(
    model,
    processor,
    output_dir: str | os.PathLike,
    provenance: str,
    overwrite: bool = False,
    state_dict: dict | None = None,
) -> None:
    """The model (with `state_dict` if given), its processor (with the chat template), the code a `diffclip_llava`
    model needs, and a card, written under a temporary name and renamed."""
    save_model_folder(output_dir, model, processor, vlm_card(model, provenance), overwrite, state_dict)


def vlm_card(model, provenance: str) -> str:
    """A model card for a LLaVA-style model built here."""
    vision, text = model.config.vision_config, model.config.text_config
    remote = model.config.model_type == "diffclip_llava"
    tower = "DiffCLIP (differential attention)" if remote else "CLIP"
    load = ", trust_remote_code=True" if remote else ""
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-text-to-text",
        "tags:",
        *(f"- {tag}" for tag in ("llava", "diffclip", "vision-language", *(["custom_code"] if remote else []))),
        "---",
        "",
        f"# LLaVA-1.5-style model with a {tower} vision tower",
        "",
        f"Vision tower: {vision.hidden_size} wide, {vision.num_hidden_layers} layers, {vision.image_size} px, patch "
        f"{vision.patch_size} ({model.config.image_seq_length} image tokens from the penultimate layer, class token "
        f"dropped). Language model: {text.model_type}, {text.hidden_size} wide, {text.num_hidden_layers} layers. "
        "Projector: two linear layers with a GELU.",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'chat = pipeline("image-text-to-text", model="<this repo>"{load})',
        'messages = [{"role": "user", "content": [{"type": "image", "url": "image.jpg"}, '
        '{"type": "text", "text": "Is there a dog in the image?"}]}]',
        "print(chat(text=messages, max_new_tokens=20))",
        "```",
        "",
    ]
    return "\n".join(lines + card_ending(provenance))


def build_and_save(
    vision_model: str,
    language_model: str,
    output_dir: str | Path,
    pad_to_square: bool = True,
    overwrite: bool = False,
    chat_template: str = "vicuna_v1",
    dtype: str = "float32",
) -> LlavaForConditionalGeneration:
    """`build_llava`, then `save_vlm` with a card that says where the parts came from."""
    check_output_directory(output_dir, overwrite)  # before the slow work
    model, processor = build_llava(vision_model, language_model, pad_to_square, 0, chat_template, dtype)
    provenance = (
        f"Built with `convert/build_llava.py` of DiffCLIP for Transformers from the vision tower of `{vision_model}` "
        f"and the language model `{language_model}`, both copied exactly; the projector is untrained. Train it with "
        "`examples/train_vlm.py --stage align`, then `--stage instruct`."
    )
    save_vlm(model, processor, output_dir, provenance, overwrite)
    return model
