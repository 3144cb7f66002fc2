# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Registers DiffCLIP with the Transformers Auto classes; imported (and so run) by `import modeling_diffclip`.

Each class is also registered for its Auto class, so that `save_pretrained` copies the defining files next to the
weights and writes `auto_map`: a folder saved here loads with `trust_remote_code=True` where this package is absent.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    LlavaProcessor,
)

from .configuration_diffclip import DiffCLIPConfig, DiffCLIPTextConfig, DiffCLIPVisionConfig
from .configuration_diffclip_llava import DiffCLIPLlavaConfig
from .modeling_diffclip import (
    DiffCLIPForImageClassification,
    DiffCLIPModel,
    DiffCLIPTextModel,
    DiffCLIPTextModelWithProjection,
    DiffCLIPVisionModel,
    DiffCLIPVisionModelWithProjection,
)
from .modeling_diffclip_llava import DiffCLIPLlavaForConditionalGeneration
from .processing_diffclip import DiffCLIPProcessor


def register() -> None:
    """Make the Auto classes and the pipelines resolve the model types "diffclip" and "diffclip_llava" to this
    package."""
    for config_class in (DiffCLIPConfig, DiffCLIPTextConfig, DiffCLIPVisionConfig, DiffCLIPLlavaConfig):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        config_class.register_for_auto_class()

    AutoModel.register(DiffCLIPConfig, DiffCLIPModel, exist_ok=True)
    AutoModel.register(DiffCLIPTextConfig, DiffCLIPTextModel, exist_ok=True)
    AutoModel.register(DiffCLIPVisionConfig, DiffCLIPVisionModel, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(DiffCLIPConfig, DiffCLIPModel, exist_ok=True)
    AutoModelForImageClassification.register(DiffCLIPConfig, DiffCLIPForImageClassification, exist_ok=True)
    AutoProcessor.register(DiffCLIPConfig, DiffCLIPProcessor, exist_ok=True)
    AutoModelForImageTextToText.register(DiffCLIPLlavaConfig, DiffCLIPLlavaForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(DiffCLIPLlavaConfig, LlavaProcessor, exist_ok=True)

    for model_class in (
        DiffCLIPModel,
        DiffCLIPTextModel,
        DiffCLIPVisionModel,
        DiffCLIPTextModelWithProjection,
        DiffCLIPVisionModelWithProjection,
    ):
        model_class.register_for_auto_class("AutoModel")
    DiffCLIPForImageClassification.register_for_auto_class("AutoModelForImageClassification")
    DiffCLIPLlavaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
    DiffCLIPProcessor.register_for_auto_class("AutoProcessor")
