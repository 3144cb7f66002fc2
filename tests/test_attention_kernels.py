"""Attention kernels: the fused path meets FlashAttention's contract (checked on CPU by a stand-in that enforces it,
tests/flash_contract.py; benchmarks/gpu_check.py runs the real kernels), FlashAttention is not refused, and an
implementation DiffCLIP does not support is refused in one line naming those it does."""

import copy

import flash_contract
import pytest
import torch
from conftest import tiny_config_kwargs
from test_modeling import batch

from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel, DiffCLIPTextModel, DiffCLIPVisionModel


@pytest.fixture(scope="module")
def weights():
    """A tiny dual encoder with every weight perturbed (λ and the sub-layer norms away from their initial values)."""
    config = DiffCLIPConfig.for_variant("diffclip", **tiny_config_kwargs())
    torch.manual_seed(0)
    model = DiffCLIPModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return config, model.state_dict()


def build(weights, implementation, dtype=torch.bfloat16):
    config, state_dict = weights
    model = DiffCLIPModel._from_config(copy.deepcopy(config), attn_implementation=implementation)
    model.load_state_dict(state_dict)
    return model.to(dtype).eval()


def test_the_fused_path_meets_the_flash_contract_and_matches_sdpa(weights):
    name = flash_contract.register()
    inputs = {**batch(), "pixel_values": batch()["pixel_values"].bfloat16()}
    flash_contract.CALLS.clear()
    with torch.no_grad():
        actual = build(weights, name)(**inputs)
        expected = build(weights, "sdpa")(**inputs)
    # 4 calls per differential layer (a map and a value half each), 2 layers per tower; half the heads in each
    calls = flash_contract.CALLS
    assert len(calls) == 16
    text = [call for call in calls if call["causal"]]
    assert len(text) == 8
    assert all(call["shape"] == (2, 2, 7, 8) for call in text)  # (batch, heads / 2, tokens, head_dim)
    assert all(call["shape"] == (2, 2, 17, 8) and call["padded"] is None for call in calls if not call["causal"])
    assert all(torch.equal(call["padded"], inputs["attention_mask"].bool()) for call in text)
    assert all(call["dtype"] == torch.bfloat16 for call in calls)
    # The same SDPA kernel on the same bfloat16 tensors, the mask given in another form: within bfloat16 rounding.
    # FlashAttention leaves padded positions at zero, so the text's hidden states are compared where there is text.
    for key in ("logits_per_image", "text_embeds", "image_embeds"):
        torch.testing.assert_close(actual[key].float(), expected[key].float(), atol=1e-2, rtol=1e-2, msg=key)
    tokens = inputs["attention_mask"].bool()
    torch.testing.assert_close(
        actual.text_model_output.last_hidden_state[tokens].float(),
        expected.text_model_output.last_hidden_state[tokens].float(),
        atol=1e-2,
        rtol=1e-2,
    )


def test_the_stand_in_enforces_half_precision(weights):
    """The contract is really checked: FlashAttention has no float32 kernel, and the stand-in says so."""
    with torch.no_grad(), pytest.raises(AssertionError, match="no torch.float32 kernel"):
        build(weights, flash_contract.register(), dtype=torch.float32)(**batch())


@pytest.mark.parametrize(
    "model_class", [DiffCLIPModel, DiffCLIPTextModel, DiffCLIPVisionModel], ids=lambda c: c.__name__
)
def test_flash_attention_is_not_refused(weights, model_class):
    """On a machine without flash-attn (which needs CUDA), Transformers' own check stops it for the missing package
    (before its flags would: "... does not support Flash Attention"), not DiffCLIP's support flags."""
    config = weights[0] if model_class is DiffCLIPModel else weights[0].vision_config
    with pytest.raises(ImportError, match="FlashAttention2 has been toggled on.*package .* installed"):
        model_class._from_config(copy.deepcopy(config), attn_implementation="flash_attention_2")


@pytest.mark.parametrize("implementation", ["paged|eager", "flash_attn"])
def test_an_unsupported_implementation_is_one_line_naming_the_supported_ones(weights, implementation):
    config = weights[0]
    for attempt in (
        lambda: DiffCLIPModel._from_config(copy.deepcopy(config), attn_implementation=implementation),
        lambda: DiffCLIPModel(copy.deepcopy(config)).set_attn_implementation(implementation),
    ):
        with pytest.raises(ValueError, match="DiffCLIP does not support") as error:
            attempt()
        message = str(error.value)
        assert len(message.splitlines()) == 1
        assert message.startswith(f'DiffCLIP does not support attn_implementation="{implementation}": use "sdpa"')
        for supported in ("eager", "flex_attention", "flash_attention_2", "flash_attention_3", "kernels-community/"):
            assert supported in message
        assert "paged" not in message.split(":", 1)[1]
