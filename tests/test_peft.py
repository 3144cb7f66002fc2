"""Fine-tuning DiffCLIP with PEFT LoRA, the differential-attention parameters included (docs/model.md's recipe)."""

import pytest
import torch
from conftest import tiny_config_kwargs
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from test_modeling import batch

from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel


# The recipe of docs/model.md: LoRA on the attention projections; the λ vectors and the sub-layer norm trained in full.
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["diff_lambda", "diff_norm"])


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("peft") / "base"
    DiffCLIPModel(DiffCLIPConfig.for_variant("diffclip", **tiny_config_kwargs())).save_pretrained(path)
    return path


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch()).logits_per_image


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_lora_with_lambda_and_norm_saves_reloads_and_merges_to_the_same_logits(base_folder, tmp_path, backend):
    base = DiffCLIPModel.from_pretrained(base_folder, attn_implementation=backend)
    untouched = logits(base.eval())
    model = get_peft_model(base, LoraConfig(**LORA))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    attention = "base_model.model.vision_model.encoder.layers.0.self_attn"
    assert f"{attention}.diff_lambda.modules_to_save.default.lambda_q1" in trainable
    assert f"{attention}.diff_norm.modules_to_save.default.weight" in trainable
    assert f"{attention}.q_proj.lora_A.default.weight" in trainable
    assert not any("k_proj" in name or "out_proj" in name or "mlp" in name for name in trainable)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    for _ in range(3):
        loss = model(**batch(), return_loss=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    trained = logits(model)
    layer = model.base_model.model.vision_model.encoder.layers[0].self_attn
    assert not torch.equal(
        layer.diff_lambda.modules_to_save["default"].lambda_q1, layer.diff_lambda.original_module.lambda_q1
    )
    assert not torch.equal(layer.diff_norm.modules_to_save["default"].weight, layer.diff_norm.original_module.weight)
    assert (trained - untouched).abs().max() > 1e-3  # training moved the logits

    model.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any("diff_lambda" in key and key.endswith("lambda_k2") for key in saved)
    assert any(key.endswith("diff_norm.weight") for key in saved)

    # On a fresh base model: only the adapter folder carries what training changed (fp32, the same kernels).
    fresh = DiffCLIPModel.from_pretrained(base_folder, attn_implementation=backend)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(reloaded), trained, atol=1e-6, rtol=0)
    # Merged: W + BA rounded once in fp32, then a logit scale of 1/0.07 on cosines (measured up to 5e-6 on logits ~10).
    merged = reloaded.merge_and_unload()
    assert type(merged) is DiffCLIPModel
    assert not any("lora" in name or "modules_to_save" in name for name in merged.state_dict())
    torch.testing.assert_close(logits(merged), trained, atol=5e-5, rtol=0)
