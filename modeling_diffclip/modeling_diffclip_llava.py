# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""LLaVA with a DiffCLIP vision tower: Transformers' `LlavaForConditionalGeneration` on a [`DiffCLIPLlavaConfig`].

LLaVA builds its vision tower with `AutoModel.from_config(vision_config)`. This file is copied next to every saved
DiffCLIP-LLaVA and runs there without the package (`trust_remote_code=True`), so the model registers the DiffCLIP
vision tower with `AutoModel` itself before LLaVA's constructor asks for it.
"""

from transformers import AutoModel, LlavaForConditionalGeneration
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming

from .configuration_diffclip_llava import DiffCLIPLlavaConfig
from .modeling_diffclip import _LAMBDA_RENAMINGS, _NESTED_MODULES, _NESTED_TOWERS, DiffCLIPVisionModel


class DiffCLIPLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """
    LLaVA-1.5 with a DiffCLIP vision tower: `forward(input_ids (batch, seq), pixel_values (batch, 3, size, size),
    attention_mask, labels)` returns `logits` (batch, seq, vocab) and, with `labels`, the language-modelling loss;
    every `<image>` token of `input_ids` is replaced by one projected patch feature of the vision tower's layer
    `vision_feature_layer` (`image_seq_length` of them per image). Generation as any `LlavaForConditionalGeneration`.
    """

    config: DiffCLIPLlavaConfig

    def __init__(self, config: DiffCLIPLlavaConfig):
        # The class of this very config: a folder loaded with trust_remote_code may hold two copies of its module.
        AutoModel.register(type(config.vision_config), DiffCLIPVisionModel, exist_ok=True)
        super().__init__(config)


# Releases that rename checkpoint keys by model type (before 5.18) rename LLaVA's under `llava` only, those that
# nest the vision tower's modules in its `vision_model` (before 5.6, see `_tower_modules`) need that prefix added, and
# those that look up the top-level model's mapping only (as 5.0) need the λ vectors' renaming here too: this model
# type gets all three, or its weights would load as random ones there. (Not anchored: some releases strip the
# `model.` prefix before renaming.)
_mapping = (get_checkpoint_conversion_mapping("llava") or []) + _LAMBDA_RENAMINGS
if _NESTED_TOWERS:
    _mapping += [
        WeightRenaming(f"vision_tower.{m}", f"vision_tower.vision_model.{m}") for m in _NESTED_MODULES["vision_model"]
    ]
register_checkpoint_conversion_mapping(DiffCLIPLlavaConfig.model_type, _mapping, overwrite=True)


__all__ = ["DiffCLIPLlavaForConditionalGeneration"]
