# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Processor class for DiffCLIP: a CLIP image processor and the CLIP BPE tokenizer."""

import gzip
from pathlib import Path

from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling
from transformers.models.clip.tokenization_clip import CLIPTokenizer
from transformers.processing_utils import ProcessorMixin


try:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
except ImportError:  # before 5.4, the PIL-backed CLIP image processor is `CLIPImageProcessor`
    from transformers.models.clip.image_processing_clip import CLIPImageProcessor as CLIPImageProcessorPil


# OpenAI CLIP's BPE merges (MIT License, see data/LICENSE-CLIP-BPE.txt), as shipped by `open_clip_torch`.
CLIP_BPE_PATH = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
CLIP_NUM_MERGES = 49152 - 256 - 2
CLIP_CONTEXT_LENGTH = 77
_ABSENT = object()


def _byte_level_alphabet() -> list[str]:
    """The 256 byte stand-ins of byte-level BPE, in OpenAI's `bytes_to_unicode` order (printable bytes first)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    return [chr(byte) for byte in printable] + [chr(256 + n) for n in range(256 - len(printable))]


def clip_bpe_vocabulary(bpe_path: str | Path = CLIP_BPE_PATH) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """
    The CLIP vocabulary (49,408 tokens) and BPE merges, derived from OpenAI's `bpe_simple_vocab_16e6.txt.gz` as its
    `SimpleTokenizer` does: the byte alphabet, its end-of-word forms, one token per merge, then `<|startoftext|>`
    and `<|endoftext|>`.
    """
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : CLIP_NUM_MERGES + 1]]
    alphabet = _byte_level_alphabet()
    tokens = alphabet + [token + "</w>" for token in alphabet] + ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def clip_tokenizer(context_length: int = CLIP_CONTEXT_LENGTH) -> CLIPTokenizer:
    """
    The CLIP tokenizer built offline from the packaged vocabulary, giving the same ids as the official DiffCLIP
    (OpenAI `SimpleTokenizer`) tokenizer: `<|startoftext|>` text `<|endoftext|>`, padded with id 0 by
    `padding="max_length"`.
    """
    vocab, merges = clip_bpe_vocabulary()
    # The official tokenizer pads with id 0 ("!"). `split_special_tokens` keeps "!" in captions ordinary text
    # (e.g. "!!" stays one token); <|startoftext|> and <|endoftext|> are added by id, so nothing else changes.
    return CLIPTokenizer(
        vocab=vocab, merges=merges, pad_token="!", split_special_tokens=True, model_max_length=context_length
    )


class DiffCLIPProcessor(ProcessorMixin):
    r"""
    Constructs a DiffCLIP processor: a CLIP image processor and a CLIP tokenizer in one object.

    `processor(text=..., images=..., return_tensors="pt")` returns `input_ids`/`attention_mask` of shape
    (texts, sequence_length) and `pixel_values` of shape (images, 3, height, width).

    Args:
        image_processor ([`~transformers.CLIPImageProcessorPil`] or any image processor):
            Resizes, crops and normalises images.
        tokenizer ([`~transformers.CLIPTokenizer`]):
            Tokenizes captions.

    With no network, build the processor of the released checkpoints with [`DiffCLIPProcessor.from_defaults`].
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer)

    def save_pretrained(self, save_directory, **kwargs):
        """
        Save as [`~transformers.ProcessorMixin.save_pretrained`] does, with `auto_map` in `processor_config.json`
        for `trust_remote_code` loads, and without side effects: Transformers writes `auto_map` onto the processor
        and its image processor to serialise it, and it is removed from them again here.
        """
        objects = [self, *(getattr(self, name) for name in self.get_attributes())]
        before = [obj.__dict__.get("auto_map", _ABSENT) for obj in objects]
        try:
            return super().save_pretrained(save_directory, **kwargs)
        finally:
            for obj, auto_map in zip(objects, before, strict=True):
                if auto_map is _ABSENT:
                    obj.__dict__.pop("auto_map", None)
                else:
                    obj.auto_map = auto_map

    def to_dict(self) -> dict:
        # `auto_map` names this processor class; the image processor's copy of it (written while saving) is noise that
        # would come back as an attribute of the loaded image processor.
        output = super().to_dict()
        for name in self.get_attributes():
            if isinstance(output.get(name), dict):
                output[name].pop("auto_map", None)
        return output

    @classmethod
    def from_defaults(
        cls,
        image_size: int = 224,
        image_mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
        image_std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
        context_length: int = CLIP_CONTEXT_LENGTH,
    ) -> "DiffCLIPProcessor":
        """
        The processor the released DiffCLIP checkpoints were trained and evaluated with, built with no download:
        bilinear resize of the short side to `image_size`, centre crop, ImageNet mean/std, and the CLIP tokenizer
        from the vocabulary packaged with `modeling_diffclip`.
        """
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            resample=PILImageResampling.BILINEAR,
            image_mean=list(image_mean),
            image_std=list(image_std),
        )
        return cls(image_processor=image_processor, tokenizer=clip_tokenizer(context_length))


__all__ = ["DiffCLIPProcessor", "clip_bpe_vocabulary", "clip_tokenizer"]
