"""examples/attention_maps.py: text-conditioned relevance from the (differential) attention maps, drawn in a grid."""

import random

import pytest
import torch
from conftest import load_script
from PIL import Image
from transformers import AutoModel, AutoProcessor

from diffclip_lab.demo.shapes import render
from diffclip_lab.evaluation.relevance import centre_crop_box, relevance_map
from modeling_diffclip import DiffCLIPModel, DiffCLIPProcessor


attention_maps = load_script("examples/attention_maps.py")


@pytest.fixture(scope="module")
def saved(saved_tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("attention")
    for name, path in saved_tiny_models.items():
        (root / name).symlink_to(path)
    image, _, _ = render(random.Random(3), 96)
    image.save(root / "shapes.png")
    return root


def test_grid_of_relevance_maps(saved):
    output = saved / "figure.png"
    maps = attention_maps.main(
        [
            "--model",
            str(saved / "diffclip"),
            "--model",
            str(saved / "clip"),
            "--image",
            str(saved / "shapes.png"),
            "--query",
            "a green triangle",
            "--query",
            "the background",
            "--output",
            str(output),
        ]
    )
    image = Image.open(saved / "shapes.png")
    for name, per_query in maps.items():
        assert [relevance.query for relevance in per_query] == ["a green triangle", "the background"]
        model, processor = AutoModel.from_pretrained(name).eval(), AutoProcessor.from_pretrained(name)
        for relevance in per_query:
            assert relevance.patches.shape == (4, 4)  # 32 px / patch 8
            assert relevance.patches.min() >= 0
            inputs = processor(text=[relevance.query], images=image, padding=True, return_tensors="pt")
            with torch.no_grad():
                outputs = model(**inputs)
            cosine = torch.nn.functional.cosine_similarity(outputs.image_embeds, outputs.text_embeds).item()
            assert relevance.similarity == pytest.approx(cosine, abs=1e-5), (name, relevance.query)
        assert not torch.equal(per_query[0].patches, per_query[1].patches)  # conditioned on the text
    with Image.open(output) as figure:
        figure.verify()
        assert figure.format == "PNG"
    with Image.open(output) as figure:
        assert figure.size[0] > figure.size[1] > 200  # 2 rows of 3 panels


def test_relevance_is_the_chefer_rule_on_differential_maps(saved):
    """Recompute the map by hand from the eager model's differential maps and their gradients."""
    model = DiffCLIPModel.from_pretrained(saved / "diffclip", attn_implementation="eager").eval()
    processor = DiffCLIPProcessor.from_pretrained(saved / "diffclip")
    image = Image.open(saved / "shapes.png")
    inputs = processor(text=["a green triangle"], images=image, padding=True, return_tensors="pt")
    outputs = model(**inputs, output_attentions=True)
    maps = outputs.vision_model_output.attentions
    gradients = torch.autograd.grad(outputs.logits_per_image[0, 0], maps)
    relevance = torch.eye(17)
    for attention, gradient in zip(maps, gradients, strict=True):
        assert attention.shape == (1, 2, 17, 17)
        assert gradient.abs().sum() > 0
        relevance = relevance + (gradient * attention).clamp(min=0).mean(dim=1)[0] @ relevance
    expected = relevance[0, 1:].view(4, 4)
    actual = relevance_map(model, processor, image, "a green triangle")
    torch.testing.assert_close(actual.patches, expected.detach(), atol=1e-6, rtol=1e-6)
    cosine = torch.nn.functional.cosine_similarity(outputs.image_embeds, outputs.text_embeds).item()
    assert actual.similarity == pytest.approx(cosine, abs=1e-6)


def test_the_crop_box_is_what_the_processor_keeps():
    processor = DiffCLIPProcessor.from_defaults(image_size=32)
    assert centre_crop_box(processor, Image.new("RGB", (96, 64))) == (16, 0, 80, 64)  # short side 64 -> 32 px
    assert centre_crop_box(processor, Image.new("RGB", (40, 40))) == (0, 0, 40, 40)
