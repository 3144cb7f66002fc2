"""Offloaded DiffCLIP models (weights on disk or in CPU memory, loaded by Accelerate's hooks per module call) compute
what the in-memory model computes, on every attention backend."""

import pytest
import torch
from accelerate import cpu_offload
from conftest import tiny_config_kwargs
from test_modeling import batch

from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel, DiffCLIPTextModel, DiffCLIPVisionModel


BACKENDS = ["eager", "sdpa", pytest.param("flex_attention", marks=pytest.mark.slow)]  # flex compiles its kernel
MODEL_CLASSES = [DiffCLIPModel, DiffCLIPTextModel, DiffCLIPVisionModel]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny dual encoder whose every weight is perturbed: the sub-layer norms' weights are not ones and λ is not
    λ_init, so a weight that never reaches the computation changes the outputs."""
    config = DiffCLIPConfig.for_variant("diffclip", **tiny_config_kwargs())
    config.text_config.num_hidden_layers = config.vision_config.num_hidden_layers = 2
    torch.manual_seed(0)
    model = DiffCLIPModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    path = tmp_path_factory.mktemp("offload") / "diffclip"
    model.save_pretrained(path)
    return path


def outputs(model, model_class) -> dict[str, torch.Tensor]:
    inputs = batch()
    with torch.no_grad():
        if model_class is DiffCLIPModel:
            out = model(**inputs)
            return {name: out[name] for name in ("logits_per_image", "text_embeds", "image_embeds")}
        if model_class is DiffCLIPTextModel:
            out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        else:
            out = model(pixel_values=inputs["pixel_values"])
    return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}


def split_device_map(model) -> dict[str, str]:
    """Every module holding parameters of its own (and every parameter held by a model itself) on "cpu", except those
    of each tower's first encoder layer, which go to "disk": attention, λ module and norm included."""
    device_map = {}
    for name, module in model.named_modules():
        for parameter_name, _ in module.named_parameters(recurse=False):
            device_map[name or parameter_name] = "disk" if "layers.0." in f"{name}." else "cpu"
    return device_map


def offloaded(model_class, path, placement, backend, offload_folder):
    if placement == "cpu":
        # Accelerate's CPU offload: the weights stay in a CPU state dict and move to the execution device (here the
        # CPU itself) module by module, through the same hooks as a `device_map` with "cpu" beside a GPU.
        model = model_class.from_pretrained(path, attn_implementation=backend)
        return cpu_offload(model, execution_device=torch.device("cpu")).eval()
    if placement == "disk":
        device_map, max_memory = "auto", {"cpu": "10KB"}  # less than any tower: Accelerate offloads it all to disk
    else:
        device_map, max_memory = split_device_map(model_class.from_pretrained(path)), None
    model = model_class.from_pretrained(
        path, attn_implementation=backend, device_map=device_map, max_memory=max_memory, offload_folder=offload_folder
    )
    assert "disk" in set(model.hf_device_map.values())
    return model.eval()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("placement", ["disk", "cpu", "cpu+disk"])
@pytest.mark.parametrize("model_class", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_offloaded_model_computes_what_the_in_memory_model_computes(saved, tmp_path, model_class, placement, backend):
    """The same fp32 kernels on the same weights: equal to 1e-6 (the towers load the dual encoder's checkpoint)."""
    expected = outputs(model_class.from_pretrained(saved, attn_implementation=backend).eval(), model_class)
    model = offloaded(model_class, saved, placement, backend, tmp_path / "offload")
    assert any(p.device.type == "meta" for p in model.parameters())  # the weights are really elsewhere
    actual = outputs(model, model_class)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-6, rtol=0, msg=name)


def test_lambda_and_softmax_maps_of_an_offloaded_layer(saved, tmp_path):
    """λ and the two softmax maps, read outside the model's forward, load their weights too."""
    expected = DiffCLIPVisionModel.from_pretrained(saved).eval()
    model = offloaded(DiffCLIPVisionModel, saved, "disk", "sdpa", tmp_path / "offload")
    hidden_states = torch.randn(2, 17, 32, generator=torch.Generator().manual_seed(1))
    for layer, expected_layer in zip(model.encoder.layers, expected.encoder.layers, strict=True):
        lambda_full = layer.self_attn.lambda_full()
        torch.testing.assert_close(lambda_full, expected_layer.self_attn.lambda_full(), atol=0, rtol=0)
        assert lambda_full.item() != layer.self_attn.lambda_init
        with torch.no_grad():
            maps, expected_maps = (
                layer.self_attn.softmax_maps(hidden_states),
                expected_layer.self_attn.softmax_maps(hidden_states),
            )
        for a, b in zip(maps, expected_maps, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
