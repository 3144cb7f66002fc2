# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Configuration of a LLaVA whose vision tower is a DiffCLIP vision tower.

Transformers' `llava` config resolves its vision config through `AutoConfig`, which knows `diffclip_vision_model`
only where this package is imported. This model type of its own names the vision config's class directly, so a
saved folder (which carries this file) loads with `trust_remote_code=True` anywhere.
"""

from transformers import AutoConfig, LlavaConfig
from transformers.configuration_utils import PreTrainedConfig

from .configuration_diffclip import _DATACLASS_CONFIGS, DiffCLIPVisionConfig, SubConfigSpec, _config_class


@_config_class
class DiffCLIPLlavaConfig(LlavaConfig):
    r"""
    A [`~transformers.LlavaConfig`] with a [`DiffCLIPVisionConfig`] vision tower and any causal language model
    (`text_config`, resolved by `AutoConfig`). The fields are LLaVA's: `image_token_index`, `image_seq_length`
    (patches of the vision tower, class token dropped by `vision_feature_select_strategy="default"`),
    `vision_feature_layer` (-2: the penultimate layer, as LLaVA-1.5), `projector_hidden_act` (the two-layer GELU
    projector, `mlp2x_gelu`).
    """

    model_type = "diffclip_llava"
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            "vision_config": SubConfigSpec(config_class=DiffCLIPVisionConfig),
            "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        }
    else:  # before 5.20, the config classes only: `__post_init__` creates the vision config, LLaVA the text config
        sub_configs = {"vision_config": DiffCLIPVisionConfig, "text_config": AutoConfig}

    def __post_init__(self, **kwargs):
        if not isinstance(self.vision_config, PreTrainedConfig):
            self.vision_config = DiffCLIPVisionConfig(**(self.vision_config or {}))
        if _DATACLASS_CONFIGS:
            super().__post_init__(**kwargs)


__all__ = ["DiffCLIPLlavaConfig"]
