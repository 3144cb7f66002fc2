# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""DiffCLIP (CLIP with differential attention) for Hugging Face Transformers.

Importing this package registers DiffCLIP with `AutoConfig`, `AutoModel`, `AutoModelForZeroShotImageClassification`,
`AutoModelForImageClassification` and `AutoProcessor`, and DiffCLIP-LLaVA with `AutoModelForImageTextToText`.
"""

from .configuration_diffclip import DiffCLIPConfig, DiffCLIPTextConfig, DiffCLIPVisionConfig
from .configuration_diffclip_llava import DiffCLIPLlavaConfig
from .modeling_diffclip import (
    DiffCLIPAttention,
    DiffCLIPForImageClassification,
    DiffCLIPModel,
    DiffCLIPPreTrainedModel,
    DiffCLIPTextModel,
    DiffCLIPTextModelWithProjection,
    DiffCLIPVisionModel,
    DiffCLIPVisionModelWithProjection,
)
from .modeling_diffclip_llava import DiffCLIPLlavaForConditionalGeneration
from .processing_diffclip import DiffCLIPProcessor, clip_bpe_vocabulary, clip_tokenizer
from .registration import register


register()

__version__ = "0.1.0"

__all__ = [
    "DiffCLIPAttention",
    "DiffCLIPConfig",
    "DiffCLIPForImageClassification",
    "DiffCLIPLlavaConfig",
    "DiffCLIPLlavaForConditionalGeneration",
    "DiffCLIPModel",
    "DiffCLIPPreTrainedModel",
    "DiffCLIPProcessor",
    "DiffCLIPTextConfig",
    "DiffCLIPTextModel",
    "DiffCLIPTextModelWithProjection",
    "DiffCLIPVisionConfig",
    "DiffCLIPVisionModel",
    "DiffCLIPVisionModelWithProjection",
    "clip_bpe_vocabulary",
    "clip_tokenizer",
]
