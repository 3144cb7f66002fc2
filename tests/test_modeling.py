"""DiffCLIP models: variants, CLIP equivalence, backends, outputs, saving, and input errors."""

import pytest
import torch
from conftest import DYNAMIC_LAMBDA_INIT, tiny_config_kwargs
from transformers import CLIPConfig, CLIPModel
from transformers.models.clip import modeling_clip
from transformers.models.clip.modeling_clip import (
    CLIPAttention,
    CLIPEncoderLayer,
    CLIPForImageClassification,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

from modeling_diffclip import (
    DiffCLIPAttention,
    DiffCLIPConfig,
    DiffCLIPForImageClassification,
    DiffCLIPModel,
    DiffCLIPTextModel,
    DiffCLIPTextModelWithProjection,
    DiffCLIPVisionModel,
    DiffCLIPVisionModelWithProjection,
)
from modeling_diffclip.configuration_diffclip import VARIANTS


# Before 5.6, CLIP's dual model holds its towers' `CLIPTextTransformer`/`CLIPVisionTransformer`, which record no
# attentions or hidden states (CLIP's own behaviour there): tests that read them from those towers run from 5.6 on.
towers_record_outputs = pytest.mark.skipif(
    hasattr(modeling_clip, "CLIPTextTransformer"), reason="this Transformers' CLIP towers record no outputs"
)


def enable_checkpointing(model):
    """`activation_checkpointing_enable`, called `gradient_checkpointing_enable` in older releases."""
    (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()


def is_checkpointing(model) -> bool:
    """`is_activation_checkpointing`, called `is_gradient_checkpointing` in older releases."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing


def variant_config(variant: str, **kwargs) -> DiffCLIPConfig:
    return DiffCLIPConfig.for_variant(variant, **tiny_config_kwargs(**kwargs))


def comparable(config) -> dict:
    """A config's fields without those that saving fills in (path, dtype)."""

    def strip(d):
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items() if k not in ("_name_or_path", "dtype")}

    return strip(config.to_dict())


def batch(with_padding=True):
    """Two captions (the second padded with id 0 after its end-of-text token) and two 32-px images."""
    input_ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407], [49406, 320, 1929, 49407, 0, 0, 0]])
    attention_mask = (input_ids != 0).long() if with_padding else None
    generator = torch.Generator().manual_seed(0)
    return dict(
        input_ids=input_ids, attention_mask=attention_mask, pixel_values=torch.randn(2, 3, 32, 32, generator=generator)
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variants_build_the_right_attention(variant):
    text_diff, vision_diff, schedule = VARIANTS[variant]
    model = DiffCLIPModel(variant_config(variant)).eval()
    for tower, differential in ((model.text_model, text_diff), (model.vision_model, vision_diff)):
        for layer_idx, layer in enumerate(tower.encoder.layers):
            attn = layer.self_attn
            assert isinstance(attn, DiffCLIPAttention) == differential
            assert isinstance(attn, CLIPAttention)
            if differential:
                expected = DYNAMIC_LAMBDA_INIT[layer_idx] if schedule == "dynamic" else 0.8
                assert attn.lambda_init == pytest.approx(expected, abs=1e-6)
    has_lambda = any("lambda_q1" in name for name in model.state_dict())
    assert has_lambda == (text_diff or vision_diff)
    with torch.no_grad():
        out = model(**batch(), return_loss=True)
    assert out.logits_per_image.shape == (2, 2)
    assert torch.isfinite(out.loss)


def test_without_differential_attention_it_is_clip():
    """Both towers off, CLIP's vision switches on: a Transformers CLIPModel state dict loads one to one."""
    kwargs = tiny_config_kwargs(
        text=dict(use_differential_attention=False),
        vision=dict(
            use_differential_attention=False, pre_layernorm=True, patch_embedding_bias=False, hidden_act="quick_gelu"
        ),
    )
    clip_kwargs = tiny_config_kwargs()
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(**clip_kwargs)).eval()
    model = DiffCLIPModel(DiffCLIPConfig(**kwargs)).eval()
    result = model.load_state_dict(clip.state_dict(), strict=True)
    assert not result.missing_keys
    assert not result.unexpected_keys
    inputs = batch()
    with torch.no_grad():
        expected, actual = clip(**inputs), model(**inputs)
    # two model objects on the same weights: equal up to kernel rounding (fp32, 2 layers)
    torch.testing.assert_close(actual.logits_per_image, expected.logits_per_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(actual.text_embeds, expected.text_embeds, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(actual.image_embeds, expected.image_embeds, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", ["diffclip", "diffclip-vision"])
def test_eager_and_sdpa_models_agree_forward_and_backward(variant):
    results = {}
    for implementation in ("eager", "sdpa"):
        torch.manual_seed(0)
        model = DiffCLIPModel(variant_config(variant))
        model.set_attn_implementation(implementation)
        out = model(**batch(), return_loss=True)
        out.loss.backward()
        results[implementation] = (out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (eager, eager_grads), (sdpa, sdpa_grads) = results["eager"], results["sdpa"]
    torch.testing.assert_close(sdpa.logits_per_image, eager.logits_per_image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa.loss, eager.loss, atol=1e-5, rtol=1e-5)
    assert eager_grads.keys() == sdpa_grads.keys()
    assert any("lambda" in name for name in eager_grads)
    for name, grad in eager_grads.items():
        # fp32 sums over the batch and sequence: compare at 1e-5 of each gradient's own scale
        scale = max(1.0, grad.abs().max().item())
        assert (sdpa_grads[name] - grad).abs().max().item() <= 1e-5 * scale, name


@towers_record_outputs
def test_output_attentions_returns_differential_maps():
    model = DiffCLIPModel._from_config(variant_config("diffclip-vision"), attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(**batch(), output_attentions=True)
    vision_maps = out.vision_model_output.attentions
    text_maps = out.text_model_output.attentions
    assert len(vision_maps) == len(text_maps) == 2
    for layer, maps in zip(model.vision_model.encoder.layers, vision_maps, strict=True):
        assert maps.shape == (2, 2, 17, 17)  # 4 heads pair into 2 differential heads; 16 patches + class token
        lam = layer.self_attn.lambda_full().item()
        torch.testing.assert_close(maps.sum(-1), torch.full_like(maps.sum(-1), 1 - lam), atol=1e-5, rtol=0)
    for maps in text_maps:  # plain CLIP attention in the text tower of DiffCLIP†
        assert maps.shape == (2, 4, 7, 7)
        torch.testing.assert_close(maps.sum(-1), torch.ones_like(maps.sum(-1)), atol=1e-5, rtol=0)
        assert maps[1, :, 0, 1:].abs().max() == 0  # causal: the first token attends only to itself


def test_save_and_load_round_trip_in_safetensors(tmp_path):
    torch.manual_seed(0)
    model = DiffCLIPModel(variant_config("diffclip-dynamic")).eval()
    with torch.no_grad():
        model.text_model.encoder.layers[1].self_attn.diff_lambda.lambda_q2.fill_(0.25)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert not list(tmp_path.glob("*.bin"))
    loaded = DiffCLIPModel.from_pretrained(tmp_path).eval()
    assert comparable(loaded.config) == comparable(model.config)
    for (name, expected), (_, actual) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(actual, expected, atol=0, rtol=0, msg=name)
    assert loaded.vision_model.encoder.layers[1].self_attn.lambda_init == pytest.approx(
        DYNAMIC_LAMBDA_INIT[1], abs=1e-6
    )
    # the same weights in other tensors: kernels may round differently with another memory layout (fp32, 2 layers)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(**batch()).logits_per_image, model(**batch()).logits_per_image, atol=1e-6, rtol=1e-5
        )


def test_lambda_vectors_keep_their_first_names_in_checkpoints(tmp_path):
    """The λ vectors live in `self_attn.diff_lambda` (a module PEFT can name) but are saved under the names that
    checkpoints and their shipped code have always used, `self_attn.lambda_q1` etc.; a file holding the new names
    (as written where Transformers does not reverse renamings on save) loads too, as do the towers from either."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    model = DiffCLIPModel(variant_config("diffclip")).eval()
    model.save_pretrained(tmp_path / "first")
    saved = load_file(tmp_path / "first" / "model.safetensors")
    lambda_keys = sorted(key for key in saved if "lambda" in key)
    assert lambda_keys[:4] == [f"text_model.encoder.layers.0.self_attn.lambda_{v}" for v in ("k1", "k2", "q1", "q2")]
    assert len(lambda_keys) == 4 * 2 * 2  # four vectors, two layers, two towers
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "config.json").write_bytes((tmp_path / "first" / "config.json").read_bytes())
    renamed = {key.replace("self_attn.lambda_", "self_attn.diff_lambda.lambda_"): t for key, t in saved.items()}
    save_file(renamed, tmp_path / "new" / "model.safetensors", metadata={"format": "pt"})
    expected = model.state_dict()
    for folder in ("first", "new"):
        loaded = DiffCLIPModel.from_pretrained(tmp_path / folder).state_dict()
        assert loaded.keys() == expected.keys()
        for name, tensor in expected.items():
            torch.testing.assert_close(loaded[name], tensor, atol=0, rtol=0, msg=f"{folder}: {name}")
        vision = DiffCLIPVisionModel.from_pretrained(tmp_path / folder).state_dict()
        for name, tensor in vision.items():
            # (before 5.6 the tower's own names start with `vision_model.` too, see `_tower_modules`)
            expected_name = f"vision_model.{name.removeprefix('vision_model.')}"
            torch.testing.assert_close(tensor, expected[expected_name], atol=0, rtol=0, msg=name)


def test_towers_load_from_a_dual_encoder_checkpoint(tmp_path):
    """As CLIP's towers load a CLIPModel checkpoint (LLaVA loads its vision tower so), with and without projection."""
    torch.manual_seed(0)
    model = DiffCLIPModel(variant_config("diffclip")).eval()
    model.save_pretrained(tmp_path)
    inputs = batch()
    text_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    pixels = {"pixel_values": inputs["pixel_values"]}
    with torch.no_grad():
        towers = {
            "text": (model.text_model(**text_inputs), DiffCLIPTextModel.from_pretrained(tmp_path)(**text_inputs)),
            "vision": (model.vision_model(**pixels), DiffCLIPVisionModel.from_pretrained(tmp_path)(**pixels)),
        }
        text_embeds = DiffCLIPTextModelWithProjection.from_pretrained(tmp_path)(**text_inputs).text_embeds
        image_embeds = DiffCLIPVisionModelWithProjection.from_pretrained(tmp_path)(**pixels).image_embeds
        expected_text = model.get_text_features(**text_inputs)
        expected_image = model.get_image_features(**pixels)
    for name, (expected, loaded) in towers.items():
        # the same weights in other tensors: kernels may round differently with another memory layout (fp32, 2 layers)
        torch.testing.assert_close(
            loaded.last_hidden_state, expected.last_hidden_state, atol=1e-6, rtol=1e-5, msg=name
        )
    torch.testing.assert_close(text_embeds, expected_text.pooler_output)
    torch.testing.assert_close(image_embeds, expected_image.pooler_output)


def test_image_classification_head():
    config = variant_config("diffclip", num_labels=5)
    model = DiffCLIPForImageClassification(config)
    out = model(pixel_values=batch()["pixel_values"], labels=torch.tensor([1, 4]))
    assert out.logits.shape == (2, 5)
    out.loss.backward()
    assert model.vision_model.encoder.layers[0].self_attn.diff_lambda.lambda_q1.grad is not None


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = DiffCLIPModel(variant_config("diffclip")).train()
        if checkpointing:
            enable_checkpointing(model)
            assert model.vision_model.encoder.layers[0].gradient_checkpointing
        model(**batch(), return_loss=True).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


@pytest.mark.parametrize(
    ("model_class", "clip_class", "tower"),
    [
        (DiffCLIPModel, CLIPModel, None),
        (DiffCLIPTextModel, CLIPTextModel, "text_config"),
        (DiffCLIPVisionModel, CLIPVisionModel, "vision_config"),
    ],
)
def test_gradient_checkpointing_from_the_config_as_clip(model_class, clip_class, tower):
    """Transformers' common `test_gradient_checkpointing_backward_compatibility`: a config with
    `gradient_checkpointing = True` builds a model that checkpoints, every encoder layer of it, as CLIP does."""
    models = []
    for cls, config in ((clip_class, CLIPConfig(**tiny_config_kwargs())), (model_class, variant_config("diffclip"))):
        config = getattr(config, tower) if tower else config
        config.gradient_checkpointing = True
        models.append(cls(config))
    for model in models:
        assert is_checkpointing(model), type(model).__name__
        layers = [m for m in model.modules() if isinstance(m, CLIPEncoderLayer)]
        assert layers, type(model).__name__
        assert all(layer.gradient_checkpointing for layer in layers), type(model).__name__
        assert not hasattr(model.config, "gradient_checkpointing")  # consumed, so not saved


def test_interpolate_pos_encoding():
    model = DiffCLIPModel(variant_config("diffclip")).eval()
    pixel_values = batch()["pixel_values"]
    with torch.no_grad():
        native = model.get_image_features(pixel_values=pixel_values).pooler_output
        same_size = model.get_image_features(pixel_values=pixel_values, interpolate_pos_encoding=True).pooler_output
        larger = model.get_image_features(pixel_values=torch.randn(2, 3, 48, 64), interpolate_pos_encoding=True)
    torch.testing.assert_close(same_size, native)
    assert larger.pooler_output.shape == (2, 16)
    assert larger.last_hidden_state.shape == (2, 1 + 6 * 8, 32)
    with pytest.raises(ValueError, match="doesn't match model"):
        model.get_image_features(pixel_values=torch.randn(2, 3, 48, 48))


def test_wrong_inputs_get_clear_errors():
    model = DiffCLIPModel(variant_config("diffclip")).eval()
    inputs = batch()
    with pytest.raises(ValueError, match="input_ids.*integer tensor of token ids"):
        model.get_text_features(input_ids=inputs["input_ids"].float())
    with pytest.raises(ValueError, match=r"pixel_values.*\(batch_size, 3, height, width\)"):
        model.get_image_features(pixel_values=inputs["pixel_values"][:, :1])
    with pytest.raises(ValueError, match="pixel_values.*float tensor"):
        model.get_image_features(pixel_values=(inputs["pixel_values"] * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="pixel_values"):
        model.get_image_features(pixel_values=inputs["pixel_values"][0])


@pytest.mark.slow  # compiles flex_attention's kernel
def test_flex_attention_backend_matches_eager():
    """flex_attention compiles its kernel on first use (about 15 s on 2 CPU cores), so one small model only."""
    config = variant_config("diffclip")
    config.text_config.num_hidden_layers = config.vision_config.num_hidden_layers = 1
    torch.manual_seed(0)
    model = DiffCLIPModel(config).eval()
    with torch.no_grad():
        expected = model(**batch()).logits_per_image
        model.set_attn_implementation("flex_attention")
        actual = model(**batch()).logits_per_image
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


# (DiffCLIP class, its CLIP parent, the config it is built from)
CLIP_PARENTS = [
    (DiffCLIPModel, CLIPModel, lambda config: config),
    (DiffCLIPForImageClassification, CLIPForImageClassification, lambda config: config),
    (DiffCLIPTextModel, CLIPTextModel, lambda config: config.text_config),
    (DiffCLIPVisionModel, CLIPVisionModel, lambda config: config.vision_config),
    (DiffCLIPTextModelWithProjection, CLIPTextModelWithProjection, lambda config: config.text_config),
    (DiffCLIPVisionModelWithProjection, CLIPVisionModelWithProjection, lambda config: config.vision_config),
]


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(
    ("diffclip_class", "clip_class", "tower"), CLIP_PARENTS, ids=lambda c: getattr(c, "__name__", "")
)
def test_every_module_has_what_its_clip_parents_constructor_sets(variant, diffclip_class, clip_class, tower):
    """
    Built from the same config, the DiffCLIP model has every module of the CLIP model at the same path, and every
    module that is (a subclass of) the CLIP module's class has all of its attributes, parameters, buffers and
    children: what CLIP's forward passes read is there, whatever a later CLIP constructor adds.
    """
    config = variant_config(variant)
    if variant == "clip":  # and OpenAI CLIP's vision layout
        config.vision_config.pre_layernorm, config.vision_config.patch_embedding_bias = True, False
    config = tower(config)
    torch.manual_seed(0)
    clip, ours = clip_class(config), diffclip_class(config)
    assert isinstance(ours, clip_class)
    for path, clip_module in clip.named_modules():
        module = ours.get_submodule(path)
        if not isinstance(module, type(clip_module)):  # replaced on purpose (e.g. no pre-encoder LayerNorm)
            continue
        missing = vars(clip_module).keys() - vars(module).keys()
        for table in ("_parameters", "_buffers", "_modules"):
            missing |= {f"{table}.{key}" for key in getattr(clip_module, table).keys() - getattr(module, table).keys()}
        assert not missing, f"{path or type(ours).__name__} lacks {sorted(missing)}"
    # and the construction initialised everything it kept from CLIP's constructor
    for name, tensor in ours.state_dict().items():
        assert torch.isfinite(tensor).all(), name
        assert tensor.abs().max() < 100, name


@towers_record_outputs
@pytest.mark.parametrize("tower", ["text", "vision"])
def test_softmax_maps_are_the_two_maps_each_differential_head_combines(tower):
    model = DiffCLIPModel._from_config(variant_config("diffclip"), attn_implementation="eager").eval()
    inputs = batch()
    with torch.no_grad():
        if tower == "text":
            mask = inputs["attention_mask"]
            out = model.text_model(
                input_ids=inputs["input_ids"], attention_mask=mask, output_attentions=True, output_hidden_states=True
            )
            layers = model.text_model.encoder.layers
        else:
            mask = None
            out = model.vision_model(
                pixel_values=inputs["pixel_values"], output_attentions=True, output_hidden_states=True
            )
            layers = model.vision_model.encoder.layers
        for index, layer in enumerate(layers):
            a1, a2 = layer.self_attn.softmax_maps(layer.layer_norm1(out.hidden_states[index]), mask)
            tokens = out.attentions[index].shape[-1]
            assert a1.shape == a2.shape == out.attentions[index].shape == (2, 2, tokens, tokens)
            for maps in (a1, a2):
                torch.testing.assert_close(maps.sum(-1), torch.ones(2, 2, tokens), atol=1e-6, rtol=0)
            combined = a1 - layer.self_attn.lambda_full() * a2
            torch.testing.assert_close(combined, out.attentions[index], atol=1e-6, rtol=1e-5)
            if tower == "text":  # causal, and padding (the second caption's last 3 tokens) is never attended to
                assert a1[:, :, 0, 1:].abs().max() == 0
                assert a2[1, :, :, 4:].abs().max() == 0
