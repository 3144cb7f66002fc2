"""convert/convert_clip_to_diffclip.py: a DiffCLIP initialised from a Transformers CLIP checkpoint."""

import pytest
import torch
from conftest import DYNAMIC_LAMBDA_INIT, load_script, run_script, tiny_config_kwargs
from transformers import AutoModel, AutoProcessor, CLIPConfig, CLIPModel, CLIPProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from modeling_diffclip import DiffCLIPAttention, DiffCLIPModel, DiffCLIPProcessor, clip_tokenizer


CONVERTER = load_script("convert/convert_clip_to_diffclip.py")


def save_tiny_clip(path, with_processor=True, **text_overrides):
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(**tiny_config_kwargs(text=text_overrides))).eval()
    clip.save_pretrained(path)
    if with_processor:
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer()).save_pretrained(path)
    return clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-clip")
    return save_tiny_clip(path), path


def inputs(processor):
    return processor(
        text=["a photo of a cat", "a dog"],
        images=[torch.rand(32, 32, 3).numpy()] * 2,
        padding=True,
        return_tensors="pt",
        do_rescale=False,
    )


@pytest.mark.parametrize("variant", ["diffclip", "diffclip-vision", "diffclip-dynamic"])
def test_every_clip_tensor_is_copied_and_new_parameters_follow_the_paper(tiny_clip, tmp_path, variant):
    clip, path = tiny_clip
    assert (
        run_script(CONVERTER, ["--model", str(path), "--output_dir", str(tmp_path / "out"), "--variant", variant]) == 0
    )
    model = AutoModel.from_pretrained(tmp_path / "out")
    assert type(model) is DiffCLIPModel
    ours = model.state_dict()
    for name, tensor in clip.state_dict().items():
        torch.testing.assert_close(ours[name], tensor, atol=0, rtol=0, msg=name)
    new = sorted(set(ours) - set(clip.state_dict()))
    assert new
    assert all(
        name.rsplit(".", 2)[-2:][-1] in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2")
        or name.endswith("diff_norm.weight")
        for name in new
    )
    text_differential = variant != "diffclip-vision"
    assert isinstance(model.text_model.encoder.layers[0].self_attn, DiffCLIPAttention) == text_differential
    for layer_idx, layer in enumerate(model.vision_model.encoder.layers):
        attn = layer.self_attn
        torch.testing.assert_close(attn.diff_norm.weight, torch.ones_like(attn.diff_norm.weight))
        lambdas = torch.cat(list(attn.diff_lambda.parameters()))
        assert 0.02 < lambdas.std().item() < 0.3  # drawn from N(0, 0.1)
        expected_init = DYNAMIC_LAMBDA_INIT[layer_idx] if variant.endswith("dynamic") else 0.8
        assert attn.lambda_init == pytest.approx(expected_init, abs=1e-6)


def test_conversion_is_reproducible(tiny_clip, tmp_path):
    _, path = tiny_clip
    for name in ("a", "b"):
        assert run_script(CONVERTER, ["--model", str(path), "--output_dir", str(tmp_path / name)]) == 0
    a, b = (DiffCLIPModel.from_pretrained(tmp_path / name).state_dict() for name in ("a", "b"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


def test_clip_variant_is_the_same_network_and_processor(tiny_clip, tmp_path):
    clip, path = tiny_clip
    assert (
        run_script(CONVERTER, ["--model", str(path), "--output_dir", str(tmp_path / "out"), "--variant", "clip"]) == 0
    )
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert type(processor) is DiffCLIPProcessor
    assert list(processor.image_processor.image_mean) == list(OPENAI_CLIP_MEAN)
    clip_processor = AutoProcessor.from_pretrained(path)
    batch = inputs(processor)
    assert torch.equal(batch["input_ids"], inputs(clip_processor)["input_ids"])
    with torch.no_grad():
        # another model object on the same weights: equal up to kernel rounding (fp32 logits of magnitude ~10)
        torch.testing.assert_close(
            model(**batch).logits_per_image, clip(**batch).logits_per_image, atol=1e-5, rtol=1e-5
        )
    assert "clip initialised from" in (tmp_path / "out" / "README.md").read_text()


def test_bad_sources_get_clear_errors(tmp_path, capsys, saved_tiny_models):
    save_tiny_clip(tmp_path / "no-processor", with_processor=False)
    save_tiny_clip(tmp_path / "odd-heads", hidden_size=24, num_attention_heads=3)
    cases = {
        tmp_path / "no-processor": "has no processor to carry over",
        tmp_path / "odd-heads": "num_attention_heads` must be even",
        tmp_path / "absent": "no such file or folder",
        # a DiffCLIP would load as CLIP with its trained λ and norms dropped and re-drawn
        saved_tiny_models["diffclip"]: "is a 'diffclip' model, not a Transformers CLIP",
    }
    for source, message in cases.items():
        output = tmp_path / f"out-{source.name}-{len(str(source))}"
        capsys.readouterr()
        assert run_script(CONVERTER, ["--model", str(source), "--output_dir", str(output)]) == 1
        last_line = capsys.readouterr().err.strip().split("\n")[-1].split("\r")[-1]
        assert message in last_line
        assert last_line.startswith("error: ")
        assert not output.exists()
