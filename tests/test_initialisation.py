"""A from-scratch DiffCLIP starts as the official code's model does (hammoudhasan/DiffCLIP; its CLIP baseline is SLIP's
CLIP): per parameter group, the initial mean and standard deviation within sampling error of the rule, written here
from the official code's rules: OpenAI CLIP's `initialize_parameters` for the text tower, timm's ViT `init_weights`
for the vision tower (whose differential blocks the official code builds after timm's initialisation, so that they
keep PyTorch's default `nn.Linear` initialisation), λ vectors N(0, 0.1), logit scale log(1/0.07)."""

import math
import re
from collections import defaultdict

import pytest
import torch
from conftest import tiny_config_kwargs

from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel


SIZES = {
    "width 32, 2 layers": {},
    "width 64, 3 layers": dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=8),
}


def rule(name: str, config: DiffCLIPConfig) -> tuple[str, float]:
    """The official rule of a parameter: ("normal", std), ("uniform", bound), ("constant", value)."""
    tower = config.text_config if name.startswith("text_model") else config.vision_config
    width, depth, hidden = tower.hidden_size, tower.num_hidden_layers, tower.intermediate_size
    differential = tower.use_differential_attention
    if name == "logit_scale":
        return "constant", math.log(1 / 0.07)
    if name == "text_projection.weight":
        return "normal", config.text_config.hidden_size**-0.5
    if name == "visual_projection.weight":
        return "normal", config.vision_config.hidden_size**-0.5
    if re.search(r"(layer_norm\d|final_layer_norm|post_layernorm|pre_layrnorm|diff_norm)\.weight$", name):
        return "constant", 1.0
    if re.search(r"(layer_norm\d|final_layer_norm|post_layernorm|pre_layrnorm)\.bias$", name):
        return "constant", 0.0
    if "lambda_" in name:
        return "normal", 0.1
    if name.startswith("text_model"):  # OpenAI CLIP's initialize_parameters
        residual = width**-0.5 * (2 * depth) ** -0.5
        stds = {
            "token_embedding.weight": 0.02,
            "position_embedding.weight": 0.01,
            "q_proj.weight": width**-0.5,
            "k_proj.weight": width**-0.5,
            "v_proj.weight": width**-0.5,
            "out_proj.weight": residual,
            "fc1.weight": (2 * width) ** -0.5,
            "fc2.weight": residual,
        }
        for suffix, std in stds.items():
            if name.endswith(suffix):
                return "normal", std
        if name.endswith("fc2.bias"):  # nn.Linear's default: U(±fan_in^-1/2)
            return "uniform", hidden**-0.5
        if name.endswith("fc1.bias") or differential:  # the official differential attention's nn.Linear biases
            return "uniform", width**-0.5
        return "constant", 0.0  # nn.MultiheadAttention's in_proj_bias and out_proj.bias
    # the vision tower: timm's ViT
    if name.endswith("class_embedding"):
        return "normal", 1e-6
    if name.endswith("position_embedding.weight"):
        return "normal", 0.02
    if "patch_embedding" in name:  # timm leaves the patch convolution to PyTorch's default
        return "uniform", (tower.num_channels * tower.patch_size**2) ** -0.5
    if differential:  # blocks built after timm's init_weights ran: PyTorch's default U(±fan_in^-1/2)
        return "uniform", (hidden if ".fc2." in name else width) ** -0.5
    return ("normal", 0.02) if name.endswith("weight") else ("constant", 0.0)


@pytest.mark.parametrize("variant", ["diffclip", "clip"])
@pytest.mark.parametrize("size", SIZES)
def test_each_parameter_group_starts_as_the_official_code_draws_it(size, variant):
    config = DiffCLIPConfig(**tiny_config_kwargs(text=SIZES[size], vision=SIZES[size])).with_variant(variant)
    torch.manual_seed(0)
    model = DiffCLIPModel(config)
    groups = defaultdict(list)  # one group per rule and tensor kind, pooled over the layers
    for name, parameter in model.named_parameters():
        groups[(re.sub(r"layers\.\d+\.", "", name), rule(name, config))].append(parameter.detach().flatten())
    checked = set()
    for (group, (kind, value)), tensors in groups.items():
        values = torch.cat(tensors).double()
        n = values.numel()
        checked.add(group)
        if kind == "constant":
            atol = 1e-4 if group == "logit_scale" else 1e-6  # the config's 2.6592 is log(1/0.07) to 4 decimals
            torch.testing.assert_close(values, torch.full_like(values, value), atol=atol, rtol=0, msg=group)
            continue
        # the rule's standard deviation, and the sampling errors of the mean and the std (5 sigma)
        std = value if kind == "normal" else value / math.sqrt(3)
        kurtosis = 3.0 if kind == "normal" else 1.8
        assert abs(values.mean().item()) < 5 * std / math.sqrt(n), (group, kind, value)
        assert abs(values.std().item() - std) < 5 * std * math.sqrt((kurtosis - 1) / (4 * n)), (group, kind, value)
        if kind == "uniform":  # the shape, not only the spread
            assert values.abs().max().item() <= value, group
        else:
            assert values.abs().max().item() > math.sqrt(3) * std or n < 200, group
    assert len(checked) == len({re.sub(r"layers\.\d+\.", "", n) for n, _ in model.named_parameters()})
