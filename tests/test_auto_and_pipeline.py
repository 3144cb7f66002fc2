"""Auto classes, the zero-shot pipeline, and loading a saved folder where this package is not installed."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import WITHOUT_MODELING_DIFFCLIP, tiny_config_kwargs
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    pipeline,
)
from transformers.models.clip import modeling_clip
from transformers.pipelines import base as pipeline_base
from transformers.testing_utils import CaptureLogger

from modeling_diffclip import (
    DiffCLIPConfig,
    DiffCLIPForImageClassification,
    DiffCLIPModel,
    DiffCLIPProcessor,
    DiffCLIPVisionModel,
)


LABELS = ["a photo of a cat", "a photo of a dog", "a red square"]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny random DiffCLIP saved with its processor, as a user would publish it."""
    path = tmp_path_factory.mktemp("diffclip-tiny")
    torch.manual_seed(0)
    DiffCLIPModel(DiffCLIPConfig(**tiny_config_kwargs())).eval().save_pretrained(path)
    DiffCLIPProcessor.from_defaults(image_size=32).save_pretrained(path)
    return path


def make_image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8))


def expected_probabilities(path) -> torch.Tensor:
    model = DiffCLIPModel.from_pretrained(path).eval()
    processor = DiffCLIPProcessor.from_pretrained(path)
    inputs = processor(text=LABELS, images=make_image(), padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits_per_image.softmax(-1)[0]


def test_auto_classes_resolve_to_diffclip(saved_model):
    assert type(AutoConfig.from_pretrained(saved_model)) is DiffCLIPConfig
    assert type(AutoModel.from_pretrained(saved_model)) is DiffCLIPModel
    assert type(AutoModelForZeroShotImageClassification.from_pretrained(saved_model)) is DiffCLIPModel
    assert type(AutoProcessor.from_pretrained(saved_model)) is DiffCLIPProcessor
    classifier = AutoModelForImageClassification.from_pretrained(saved_model, num_labels=3)
    assert type(classifier) is DiffCLIPForImageClassification
    assert classifier.classifier.out_features == 3


def test_auto_model_on_a_tower_config():
    config = DiffCLIPConfig(**tiny_config_kwargs()).vision_config
    assert type(AutoModel.from_config(config)) is DiffCLIPVisionModel


def test_a_missing_input_gets_a_value_error_naming_what_to_pass(saved_model):
    """The feature-extraction pipeline runs the dual encoder on text only."""
    extractor = pipeline("feature-extraction", model=str(saved_model))
    message = r"`pixel_values` is missing: pass images .*get_text_features\(input_ids\)"
    if hasattr(modeling_clip, "CLIPTextTransformer"):  # before 5.6, CLIP's vision transformer checks first
        message = "You have to specify pixel_values"
    with pytest.raises(ValueError, match=message):
        extractor("a photo of a cat")
    model = DiffCLIPModel.from_pretrained(saved_model)
    with pytest.raises(ValueError, match="input_ids"):  # CLIP's own check
        model(pixel_values=torch.zeros(1, 3, 32, 32))


def test_zero_shot_pipeline_scores_are_the_models(saved_model):
    with CaptureLogger(pipeline_base.logger) as captured:
        classifier = pipeline("zero-shot-image-classification", model=str(saved_model))
    assert "not supported" not in captured.out
    result = classifier(make_image(), candidate_labels=LABELS, hypothesis_template="{}")
    assert sorted(r["label"] for r in result) == sorted(LABELS)
    expected = dict(zip(LABELS, expected_probabilities(saved_model).tolist(), strict=True))
    for entry in result:
        assert entry["score"] == pytest.approx(expected[entry["label"]], abs=1e-6)
    assert [r["score"] for r in result] == sorted((r["score"] for r in result), reverse=True)


@pytest.mark.slow  # a fresh interpreter
def test_saved_folder_loads_without_this_package(saved_model, tmp_path):
    """A fresh interpreter that cannot import `modeling_diffclip` loads the folder with `trust_remote_code`."""
    assert {"modeling_diffclip.py", "configuration_diffclip.py", "processing_diffclip.py"} <= {
        p.name for p in saved_model.iterdir()
    }
    auto_map = json.loads((saved_model / "config.json").read_text())["auto_map"]
    assert (
        auto_map["AutoModel"]
        == auto_map["AutoModelForZeroShotImageClassification"]
        == "modeling_diffclip.DiffCLIPModel"
    )

    script = WITHOUT_MODELING_DIFFCLIP + textwrap.dedent(
        f"""
        import json, sys
        import numpy as np, torch
        from PIL import Image
        from transformers import AutoModel, AutoProcessor, pipeline

        path = {str(saved_model)!r}
        model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
        assert "modeling_diffclip" not in sys.modules
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(40, 56, 3), dtype=np.uint8))
        inputs = processor(text={LABELS!r}, images=image, padding=True, return_tensors="pt")
        with torch.no_grad():
            probabilities = model(**inputs).logits_per_image.softmax(-1)[0].tolist()
        classifier = pipeline("zero-shot-image-classification", model=path, trust_remote_code=True)
        results = classifier(image, candidate_labels={LABELS!r}, hypothesis_template="{{}}")
        scores = {{r["label"]: r["score"] for r in results}}
        print(json.dumps({{"model": type(model).__module__, "probabilities": probabilities, "pipeline": scores}}))
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    assert "not supported" not in completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["model"].startswith("transformers_modules.")
    # another process: the same numbers up to its kernels' rounding (fp32 probabilities of a 2-layer model)
    expected = expected_probabilities(saved_model).tolist()
    assert result["probabilities"] == pytest.approx(expected, abs=1e-6)
    assert [result["pipeline"][label] for label in LABELS] == pytest.approx(expected, abs=1e-6)
