# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""DiffCLIP model configuration.

The tower configs extend their CLIP counterparts, so every CLIP field keeps its name and meaning; the additions
describe differential attention and the few architectural switches the released checkpoints need.
"""

import copy
import dataclasses
import math

import transformers
from huggingface_hub.dataclasses import strict
from transformers import configuration_utils


if not hasattr(configuration_utils, "PreTrainedConfig"):  # Transformers 4 (`PretrainedConfig`)
    raise ImportError(
        f"DiffCLIP needs Transformers 5.0 or newer, this is {transformers.__version__}: "
        "pip install 'transformers>=5.0,<6'"
    )

from transformers.configuration_utils import PreTrainedConfig  # noqa: E402
from transformers.models.clip.configuration_clip import CLIPTextConfig, CLIPVisionConfig  # noqa: E402


try:  # 5.20 and newer: a composite config creates its sub-configs from these specs
    from transformers.configuration_utils import SubConfigSpec
except ImportError:
    SubConfigSpec = None

# Transformers' configs are `@strict` dataclasses from 5.4 on; before, they take their fields as `__init__` arguments.
_DATACLASS_CONFIGS = dataclasses.is_dataclass(PreTrainedConfig)


def _config_class(cls):
    """
    Declare the config class `cls`, whose fields are annotated class attributes with defaults, as the installed
    Transformers declares its own: `@strict` where configs are dataclasses; elsewhere with an `__init__` that passes
    the fields, and the sub-configs built from them, as keyword arguments to the parent's `__init__` (which keeps
    those it does not know as attributes), then runs `cls.__post_init__` and this file's `validate_*` checks, as a
    strict dataclass does.
    """
    if _DATACLASS_CONFIGS:
        return strict(cls)
    defaults = {name: getattr(cls, name) for name in cls.__dict__.get("__annotations__", {})}
    validators = {name for klass in cls.__mro__ if klass.__module__ == __name__ for name in vars(klass)}

    def __init__(self, **kwargs):
        kwargs = {**copy.deepcopy(defaults), **kwargs}
        # This file's sub-configs are built first: a parent's `__init__` (LLaVA's) looks dicts up in `AutoConfig`.
        for key, config_class in cls.sub_configs.items():
            if config_class.__module__ == __name__ and not isinstance(kwargs.get(key), PreTrainedConfig):
                kwargs[key] = config_class(**(kwargs.get(key) or {}))
        super(cls, self).__init__(**kwargs)
        if "__post_init__" in cls.__dict__:
            cls.__post_init__(self)
        for name in sorted(validators):
            if name.startswith("validate_"):
                getattr(self, name)()

    cls.__init__ = __init__
    return cls


LAMBDA_SCHEDULES = ("constant", "dynamic")

# The paper's models as (text tower differential, vision tower differential, λ_init schedule), and their names there.
VARIANTS = {
    "clip": (False, False, "constant"),
    "diffclip": (True, True, "constant"),
    "diffclip-vision": (False, True, "constant"),
    "diffclip-dynamic": (True, True, "dynamic"),
}


class _DifferentialAttentionConfigMixin:
    """Fields and checks shared by both tower configs (declared on each dataclass, validated here)."""

    def layer_lambda_init(self, layer_idx: int) -> float:
        """λ_init of the 0-based layer `layer_idx`: constant, or the DiffCLIP* schedule 0.8 − 0.6·exp(−0.3·l)."""
        if self.lambda_schedule == "dynamic":
            return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)
        return self.lambda_init

    def validate_differential_attention(self):
        """Part of `@strict`-powered validation: differential attention pairs heads, so it needs an even count."""
        if self.use_differential_attention and self.num_attention_heads % 2 != 0:
            raise ValueError(
                f"Differential attention pairs heads 2i and 2i+1, so `num_attention_heads` must be even, got "
                f"{self.num_attention_heads}. Use an even number of heads, or set `use_differential_attention=False`."
            )
        if self.lambda_schedule not in LAMBDA_SCHEDULES:
            raise ValueError(
                f"`lambda_schedule` must be one of {LAMBDA_SCHEDULES}, got {self.lambda_schedule!r}: 'constant' uses "
                "`lambda_init` in every layer, 'dynamic' uses 0.8 - 0.6 * exp(-0.3 * layer_idx)."
            )


@_config_class
class DiffCLIPTextConfig(_DifferentialAttentionConfigMixin, CLIPTextConfig):
    r"""
    Configuration of the DiffCLIP text tower: a causal CLIP text transformer (EOT-token pooling) whose self-attention
    layers may be differential. The defaults are the text tower of the released DiffCLIP ViT-B/16 checkpoints.

    Args:
        use_differential_attention (`bool`, *optional*, defaults to `True`):
            Replace softmax attention by differential attention (Ye et al., 2024) in every layer. `False` gives
            exactly CLIP's text tower.
        lambda_init (`float`, *optional*, defaults to 0.8):
            The constant λ_init added to the learned λ re-parameterisation (with `lambda_schedule="constant"`).
        lambda_schedule (`str`, *optional*, defaults to `"constant"`):
            `"constant"` uses `lambda_init` in every layer; `"dynamic"` uses the DiffCLIP* schedule
            λ_init(l) = 0.8 − 0.6·exp(−0.3·l) for the 0-based layer index l.
        lambda_std_dev (`float`, *optional*, defaults to 0.1):
            Standard deviation of the normal initialisation of the λ vectors.

    The remaining fields are those of [`~transformers.CLIPTextConfig`].
    """

    model_type = "diffclip_text_model"
    base_config_key = "text_config"

    # The official tokenizer pads with id 0; the model never looks at padding (causal mask, EOT pooling).
    pad_token_id: int | None = 0
    use_differential_attention: bool = True
    lambda_init: float = 0.8
    lambda_schedule: str = "constant"
    lambda_std_dev: float = 0.1


@_config_class
class DiffCLIPVisionConfig(_DifferentialAttentionConfigMixin, CLIPVisionConfig):
    r"""
    Configuration of the DiffCLIP vision tower: a ViT with a class token whose self-attention layers may be
    differential. The defaults are the vision tower of the released DiffCLIP ViT-B/16 checkpoints (timm-style
    ViT-B/16: biased patch embedding, no pre-encoder LayerNorm, exact GELU).

    Args:
        use_differential_attention (`bool`, *optional*, defaults to `True`):
            Replace softmax attention by differential attention in every layer. `False` gives a CLIP vision tower.
        lambda_init (`float`, *optional*, defaults to 0.8):
            The constant λ_init (with `lambda_schedule="constant"`).
        lambda_schedule (`str`, *optional*, defaults to `"constant"`):
            `"constant"` or `"dynamic"` (λ_init(l) = 0.8 − 0.6·exp(−0.3·l)).
        lambda_std_dev (`float`, *optional*, defaults to 0.1):
            Standard deviation of the normal initialisation of the λ vectors.
        pre_layernorm (`bool`, *optional*, defaults to `False`):
            Apply a LayerNorm to the embeddings before the encoder, as OpenAI CLIP does (`True`) or not, as the
            released DiffCLIP checkpoints (`False`).
        patch_embedding_bias (`bool`, *optional*, defaults to `True`):
            Give the patch-embedding convolution a bias, as the released checkpoints (`True`); OpenAI CLIP has none.

    The remaining fields are those of [`~transformers.CLIPVisionConfig`].
    """

    model_type = "diffclip_vision_model"
    base_config_key = "vision_config"

    patch_size: int | list[int] | tuple[int, int] | None = 16
    hidden_act: str = "gelu"
    use_differential_attention: bool = True
    lambda_init: float = 0.8
    lambda_schedule: str = "constant"
    lambda_std_dev: float = 0.1
    pre_layernorm: bool = False
    patch_embedding_bias: bool = True


@_config_class
class DiffCLIPConfig(PreTrainedConfig):
    r"""
    Configuration of a [`DiffCLIPModel`]: a text tower, a vision tower and their projections into a shared space.
    The defaults reproduce the released DiffCLIP ViT-B/16 architecture (Hammoud & Ghanem, 2025).

    Args:
        text_config (`dict` or [`DiffCLIPTextConfig`], *optional*):
            The text tower's configuration.
        vision_config (`dict` or [`DiffCLIPVisionConfig`], *optional*):
            The vision tower's configuration.
        projection_dim (`int`, *optional*, defaults to 512):
            Dimension of the shared text-image embedding space.
        logit_scale_init_value (`float`, *optional*, defaults to 2.6592):
            Initial value of the learnable log temperature, log(1/0.07) as in CLIP.
        initializer_factor (`float`, *optional*, defaults to 1.0):
            Scale of all weight initialisations (kept at 1 except for testing).

    Example:

    ```python
    >>> from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel

    >>> config = DiffCLIPConfig()  # DiffCLIP ViT-B/16, both towers differential
    >>> clip_baseline = DiffCLIPConfig(
    ...     text_config={"use_differential_attention": False}, vision_config={"use_differential_attention": False}
    ... )
    >>> model = DiffCLIPModel(config)
    ```
    """

    model_type = "diffclip"
    if SubConfigSpec is not None:
        sub_configs_defaults = {
            "text_config": SubConfigSpec(config_class=DiffCLIPTextConfig),
            "vision_config": SubConfigSpec(config_class=DiffCLIPVisionConfig),
        }
    else:  # before 5.20, the config classes only: `__post_init__` creates the sub-configs
        sub_configs = {"text_config": DiffCLIPTextConfig, "vision_config": DiffCLIPVisionConfig}

    text_config: dict | DiffCLIPTextConfig | None = None
    vision_config: dict | DiffCLIPVisionConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float | int = 2.6592
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        # Before 5.20 (no `sub_configs_defaults`), creating the sub-configs is left to the composite config.
        for key, config_class in self.sub_configs.items():
            if not isinstance(getattr(self, key), PreTrainedConfig):
                setattr(self, key, config_class(**(getattr(self, key) or {})))
        if _DATACLASS_CONFIGS:
            super().__post_init__(**kwargs)
        # One shared embedding space: the towers' own projections (used alone by the *WithProjection models) match it.
        self.text_config.projection_dim = self.projection_dim
        self.vision_config.projection_dim = self.projection_dim

    @classmethod
    def for_variant(cls, variant: str, **kwargs) -> "DiffCLIPConfig":
        """The config of one of the paper's models (a key of `VARIANTS`); `kwargs` as for `DiffCLIPConfig`."""
        return cls(**kwargs).with_variant(variant)

    def with_variant(self, variant: str) -> "DiffCLIPConfig":
        """A copy of this config with the towers' attention set as in `variant`, a key of `VARIANTS`."""
        if variant not in VARIANTS:
            raise ValueError(f"Unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}.")
        text_differential, vision_differential, schedule = VARIANTS[variant]
        config = copy.deepcopy(self)
        for tower, differential in (
            (config.text_config, text_differential),
            (config.vision_config, vision_differential),
        ):
            tower.use_differential_attention, tower.lambda_schedule = differential, schedule
            tower.validate_differential_attention()
        return config

    @property
    def variant(self) -> str | None:
        """Which of the paper's models this is (a key of `VARIANTS`), or None for another combination."""
        text, vision = self.text_config, self.vision_config
        differential = (text.use_differential_attention, vision.use_differential_attention)
        schedules = {tower.lambda_schedule for tower in (text, vision) if tower.use_differential_attention}
        for name, (text_differential, vision_differential, schedule) in VARIANTS.items():
            if differential == (text_differential, vision_differential) and schedules <= {schedule}:
                return name
        return None

    @classmethod
    def from_clip_config(cls, clip_config, variant: str = "diffclip", **kwargs) -> "DiffCLIPConfig":
        """
        The DiffCLIP config of a Transformers `CLIPConfig`: every CLIP field kept (OpenAI CLIP's pre-encoder
        LayerNorm and bias-free patch embedding included), differential attention set by `variant`, one of
        `VARIANTS`. With `variant="clip"` the model is exactly the CLIP model.
        """
        shared = dict(
            projection_dim=clip_config.projection_dim,
            logit_scale_init_value=clip_config.logit_scale_init_value,
            initializer_factor=clip_config.initializer_factor,
        )
        vision_config = {
            **_tower_fields(clip_config.vision_config),
            "pre_layernorm": True,
            "patch_embedding_bias": False,
        }
        return cls.for_variant(
            variant,
            text_config=_tower_fields(clip_config.text_config),
            vision_config=vision_config,
            **{**shared, **kwargs},
        )


def _tower_fields(tower_config) -> dict:
    """A CLIP tower config's own fields, without the bookkeeping that `to_dict` adds."""
    fields = tower_config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "_name_or_path", "dtype"):
        fields.pop(key, None)
    return fields


__all__ = ["VARIANTS", "DiffCLIPConfig", "DiffCLIPTextConfig", "DiffCLIPVisionConfig"]
