"""convert/convert_official_diffclip.py: exact conversion of the released checkpoints, any size, and bad input."""

import json
import pathlib

import pytest
import torch
from conftest import load_script, run_script
from official_layout import random_official_state_dict, save_official_checkpoint
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor, pipeline

from diffclip_lab.conversion.checkpoints import infer_config
from diffclip_lab.conversion.official import (
    image_embeddings,
    official_key_map,
    text_embeddings,
    to_diffclip_state_dict,
    to_official_state_dict,
)
from modeling_diffclip import DiffCLIPModel


CONVERTER = load_script("convert/convert_official_diffclip.py")


@pytest.fixture(scope="module")
def converted_official(tmp_path_factory, official_tiny):
    """The tiny official fixture, converted once through the command line."""
    fixture = official_tiny
    output = tmp_path_factory.mktemp("converted") / "diffclip-tiny"
    assert (
        run_script(CONVERTER, ["--checkpoint", str(fixture / "checkpoint_best.pt"), "--output_dir", str(output)]) == 0
    )
    return fixture, output


def test_official_fixture_converts_exactly(converted_official):
    fixture, output = converted_official
    reference = load_file(fixture / "reference.safetensors")
    model = AutoModel.from_pretrained(output).eval()
    assert type(model) is DiffCLIPModel
    with torch.no_grad():
        image = model.get_image_features(pixel_values=reference["pixel_values"]).pooler_output
        text = model.get_text_features(input_ids=reference["input_ids"]).pooler_output
    torch.testing.assert_close(image, reference["image_embed"], atol=1e-5, rtol=0)
    torch.testing.assert_close(text, reference["text_embed"], atol=1e-5, rtol=0)
    assert model.logit_scale.exp().item() == pytest.approx(reference["logit_scale"].item(), abs=1e-5)


def test_saved_processor_gives_official_ids_and_normalisation(converted_official):
    fixture, output = converted_official
    official = json.loads((fixture / "reference.json").read_text())
    processor = AutoProcessor.from_pretrained(output)
    ids = processor(text=official["captions"], padding="max_length", truncation=True)["input_ids"]
    assert ids == official["official_token_ids"]
    assert list(processor.image_processor.image_mean) == official["image_mean"]
    assert list(processor.image_processor.image_std) == official["image_std"]
    assert processor.image_processor.crop_size == {"height": 64, "width": 64}
    # and the processor's ids through the model give the official text embeddings
    model = AutoModel.from_pretrained(output).eval()
    with torch.no_grad():
        text = model.get_text_features(**processor(text=official["captions"], padding=True, return_tensors="pt"))
    reference = load_file(fixture / "reference.safetensors")
    torch.testing.assert_close(text.pooler_output, reference["text_embed"], atol=1e-5, rtol=0)


def test_output_folder_is_complete(converted_official):
    _, output = converted_official
    names = {p.name for p in output.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "processor_config.json",
        "tokenizer.json",
        "README.md",
        "modeling_diffclip.py",
        "configuration_diffclip.py",
        "processing_diffclip.py",
    } <= names
    card = (output / "README.md").read_text()
    metadata = card.split("---")[1]
    for line in (
        "pipeline_tag: zero-shot-image-classification",
        "library_name: transformers",
        "license:",
        "- diffclip",
    ):
        assert line in metadata
    assert "2503.06626" in card
    assert "official-diffclip-tiny" in card
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".")]  # no staging left behind
    classify = pipeline("zero-shot-image-classification", model=str(output))
    scores = classify(Image.new("RGB", (80, 64), "green"), candidate_labels=["a", "b"])
    assert abs(sum(s["score"] for s in scores) - 1) < 1e-5


def test_reference_implementation_reproduces_the_official_outputs(official_tiny):
    """The converter's check is only as good as its reference: anchor it on the official implementation."""
    checkpoint = torch.load(official_tiny / "checkpoint_best.pt", weights_only=False)
    sd = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    reference = load_file(official_tiny / "reference.safetensors")
    config = infer_config(sd)
    torch.testing.assert_close(
        image_embeddings(sd, config, reference["pixel_values"]), reference["image_embed"], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        text_embeddings(sd, config, reference["input_ids"]), reference["text_embed"], atol=1e-5, rtol=0
    )


def test_full_size_layout_is_read_as_vit_b16(official_tiny):
    shapes = json.loads((official_tiny.parent / "official-diffclip-vitb16-keys.json").read_text())
    sd = {k.removeprefix("module."): torch.empty(shape, device="meta") for k, shape in shapes.items()}
    config = infer_config(sd)
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (768, 12, 12)
    assert (vision.image_size, vision.patch_size, vision.intermediate_size) == (224, 16, 3072)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (512, 12, 8)
    assert (text.max_position_embeddings, text.vocab_size, config.projection_dim) == (77, 49408, 512)
    assert vision.use_differential_attention
    assert text.use_differential_attention
    assert vision.patch_embedding_bias
    assert not vision.pre_layernorm
    assert official_key_map(config).keys() == sd.keys()  # every released tensor is mapped, none is invented


LAYOUTS = {
    "diffclip-other-size": dict(),
    "diffclip-vision-only": dict(text_differential=False),
    "clip-baseline": dict(text_differential=False, vision_differential=False),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_other_sizes_and_layouts_convert(layout, tmp_path):
    sd = random_official_state_dict(**LAYOUTS[layout])
    save_official_checkpoint(sd, tmp_path / "checkpoint_best.pt")
    output = tmp_path / "out"
    heads = {
        "diffclip-vision-only": ["--text_heads", "4"],
        "clip-baseline": ["--vision_heads", "6", "--text_heads", "4"],
    }
    assert (
        run_script(
            CONVERTER,
            [
                "--checkpoint",
                str(tmp_path / "checkpoint_best.pt"),
                "--output_dir",
                str(output),
                *heads.get(layout, []),
            ],
        )
        == 0
    )
    model = DiffCLIPModel.from_pretrained(output).eval()
    config = model.config
    assert (config.vision_config.hidden_size, config.vision_config.num_attention_heads) == (48, 6)
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (24, 8)
    assert (config.text_config.max_position_embeddings, config.projection_dim) == (20, 24)
    assert config.text_config.use_differential_attention == LAYOUTS[layout].get("text_differential", True)
    # inputs unlike the converter's own check: other images, a caption with padding
    pixel_values = torch.rand(3, 3, 24, 24) * 4 - 2
    input_ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407] + [0] * 13] * 2)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixel_values).pooler_output
        text = model.get_text_features(input_ids=input_ids).pooler_output
    torch.testing.assert_close(image, image_embeddings(sd, config, pixel_values), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text, text_embeddings(sd, config, input_ids), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_layout_mapping_goes_both_ways(layout):
    """The benchmarks and tests build the reference from a DiffCLIP model through the inverse mapping."""
    sd = random_official_state_dict(**LAYOUTS[layout])
    heads = {"vision_heads": 6, "text_heads": 4}
    config = infer_config(
        sd, **{k: v for k, v in heads.items() if not LAYOUTS[layout].get(k.split("_")[0] + "_differential", True)}
    )
    back = to_official_state_dict(to_diffclip_state_dict(sd, config), config)
    assert back.keys() == sd.keys()
    for key, tensor in sd.items():
        torch.testing.assert_close(back[key], tensor, atol=0, rtol=0, msg=key)  # the same numbers, moved


def run_converter(capsys, *args) -> tuple[int, str]:
    code = run_script(CONVERTER, args)
    return code, capsys.readouterr().err.strip()


def test_bad_checkpoints_get_one_clear_line_and_no_output(official_tiny, tmp_path, capsys):
    good = (official_tiny / "checkpoint_best.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good[: len(good) // 2])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(range(256)) * 100)
    other_model = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}}, other_model)
    cases = {
        truncated: "not a readable PyTorch checkpoint",
        corrupt: "not a readable PyTorch checkpoint",
        other_model: "not a DiffCLIP checkpoint",
        tmp_path / "missing.pt": "no such checkpoint file",
    }
    for path, message in cases.items():
        output = tmp_path / f"out-{path.stem}"
        code, err = run_converter(capsys, "--checkpoint", path, "--output_dir", output)
        assert code == 1
        assert message in err
        assert err.startswith("error: ")
        assert "\n" not in err
        assert not output.exists()


def test_missing_and_unexpected_tensors_are_listed(tmp_path, capsys):
    sd = random_official_state_dict(vision_layers=1, text_layers=1)
    del sd["visual.blocks.0.attn.diff_norm.weight"]
    sd["visual.blocks.0.attn.extra_gate"] = torch.zeros(3)
    save_official_checkpoint(sd, tmp_path / "ckpt.pt")
    code, err = run_converter(capsys, "--checkpoint", tmp_path / "ckpt.pt", "--output_dir", tmp_path / "out")
    assert code == 1
    assert "missing 1 (visual.blocks.0.attn.diff_norm.weight)" in err
    assert "unexpected 1 (visual.blocks.0.attn.extra_gate)" in err
    assert not (tmp_path / "out").exists()


def test_head_count_of_a_plain_tower_must_be_given(tmp_path, capsys):
    save_official_checkpoint(random_official_state_dict(text_differential=False), tmp_path / "ckpt.pt")
    code, err = run_converter(capsys, "--checkpoint", tmp_path / "ckpt.pt", "--output_dir", tmp_path / "out")
    assert code == 1
    assert "--text_heads" in err
    assert "width 32" in err
    code, err = run_converter(
        capsys,
        "--checkpoint",
        tmp_path / "ckpt.pt",
        "--output_dir",
        tmp_path / "out",
        "--text_heads",
        "4",
        "--vision_heads",
        "3",
    )
    assert code == 1
    assert "--vision_heads 3 contradicts the λ vectors (6 heads)" in err
    assert not (tmp_path / "out").exists()


def test_arbitrary_pickles_are_refused_unless_trusted(tmp_path, capsys):
    sd = random_official_state_dict(vision_layers=1, text_layers=1)
    torch.save({"state_dict": sd, "args": pathlib.PurePosixPath("/not/allowed")}, tmp_path / "ckpt.pt")
    code, err = run_converter(capsys, "--checkpoint", tmp_path / "ckpt.pt", "--output_dir", tmp_path / "out")
    assert code == 1
    assert "PurePosixPath" in err
    assert "--trust_checkpoint" in err
    assert not (tmp_path / "out").exists()
    code, _ = run_converter(
        capsys, "--checkpoint", tmp_path / "ckpt.pt", "--output_dir", tmp_path / "out", "--trust_checkpoint"
    )
    assert code == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_existing_output_is_kept_unless_overwrite(official_tiny, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "precious.txt").write_text("keep me")
    checkpoint = official_tiny / "checkpoint_best.pt"
    code, err = run_converter(capsys, "--checkpoint", checkpoint, "--output_dir", output)
    assert code == 1
    assert "--overwrite" in err
    assert (output / "precious.txt").read_text() == "keep me"
    code, _ = run_converter(capsys, "--checkpoint", checkpoint, "--output_dir", output, "--overwrite")
    assert code == 0
    assert not (output / "precious.txt").exists()
    assert (output / "model.safetensors").is_file()


def test_a_failure_while_writing_leaves_no_folder(official_tiny, tmp_path, monkeypatch):
    from modeling_diffclip import DiffCLIPProcessor

    def crash(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(DiffCLIPProcessor, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        CONVERTER.main(
            ["--checkpoint", str(official_tiny / "checkpoint_best.pt"), "--output_dir", str(tmp_path / "out")]
        )
    assert list(tmp_path.iterdir()) == []  # neither the output nor the staging folder
