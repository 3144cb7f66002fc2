"""DiffCLIP configs: released-architecture defaults, variants, validation, serialisation."""

import dataclasses
import math

import pytest
from conftest import DYNAMIC_LAMBDA_INIT
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig

from modeling_diffclip import DiffCLIPConfig, DiffCLIPTextConfig, DiffCLIPVisionConfig


def test_defaults_are_the_released_vit_b16():
    config = DiffCLIPConfig()
    text, vision = config.text_config, config.vision_config
    assert isinstance(text, DiffCLIPTextConfig)
    assert isinstance(vision, DiffCLIPVisionConfig)
    assert (text.hidden_size, text.num_attention_heads, text.num_hidden_layers) == (512, 8, 12)
    assert (text.max_position_embeddings, text.vocab_size, text.hidden_act) == (77, 49408, "quick_gelu")
    assert (vision.hidden_size, vision.num_attention_heads, vision.num_hidden_layers) == (768, 12, 12)
    assert (vision.image_size, vision.patch_size, vision.hidden_act) == (224, 16, "gelu")
    assert vision.pre_layernorm is False
    assert vision.patch_embedding_bias is True
    assert text.layer_norm_eps == vision.layer_norm_eps == 1e-5
    assert text.use_differential_attention
    assert vision.use_differential_attention
    assert text.lambda_init == vision.lambda_init == 0.8
    assert config.projection_dim == text.projection_dim == vision.projection_dim == 512
    assert config.logit_scale_init_value == pytest.approx(math.log(1 / 0.07), abs=1e-4)


def test_dynamic_schedule():
    config = DiffCLIPVisionConfig(lambda_schedule="dynamic", lambda_init=0.3)
    assert [config.layer_lambda_init(layer) for layer in range(12)] == pytest.approx(DYNAMIC_LAMBDA_INIT, abs=1e-6)
    assert DiffCLIPVisionConfig(lambda_init=0.3).layer_lambda_init(7) == 0.3


def test_odd_head_count_with_differential_attention_is_refused():
    with pytest.raises((ValueError, StrictDataclassError), match="num_attention_heads` must be even.*got 3"):
        DiffCLIPTextConfig(hidden_size=48, num_attention_heads=3)
    with pytest.raises((ValueError, StrictDataclassError), match="must be even"):
        DiffCLIPConfig(vision_config=dict(hidden_size=60, num_attention_heads=5))
    # plain attention has no pairs, so CLIP's odd head counts stay valid
    assert DiffCLIPTextConfig(hidden_size=48, num_attention_heads=3, use_differential_attention=False)


def test_unknown_lambda_schedule_is_refused():
    with pytest.raises((ValueError, StrictDataclassError), match="lambda_schedule.*'constant', 'dynamic'.*'cosine'"):
        DiffCLIPVisionConfig(lambda_schedule="cosine")


@pytest.mark.skipif(not dataclasses.is_dataclass(PreTrainedConfig), reason="configs are typed dataclasses from 5.4 on")
def test_fields_are_typed():
    with pytest.raises(StrictDataclassError, match="use_differential_attention"):
        DiffCLIPTextConfig(use_differential_attention="yes")


def test_round_trip_through_auto_config(tmp_path):
    config = DiffCLIPConfig(
        text_config=dict(use_differential_attention=False, num_hidden_layers=3),
        vision_config=dict(lambda_schedule="dynamic", image_size=336),
        projection_dim=256,
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is DiffCLIPConfig
    assert loaded.text_config.use_differential_attention is False
    assert loaded.text_config.num_hidden_layers == 3
    assert loaded.vision_config.lambda_schedule == "dynamic"
    assert loaded.vision_config.image_size == 336
    assert loaded.vision_config.projection_dim == 256
    assert (tmp_path / "configuration_diffclip.py").is_file()
    assert loaded.auto_map["AutoConfig"] == "configuration_diffclip.DiffCLIPConfig"
