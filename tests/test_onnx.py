"""ONNX Runtime export: convert/export_onnx.py, examples/onnx_zero_shot.py and benchmarks/bench_onnx.py."""

import io
import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from conftest import REPO_ROOT, load_script, run_script, tiny_config_kwargs
from PIL import Image
from transformers import AutoModel, AutoProcessor, BertConfig, BertModel
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from diffclip_lab.conversion.onnx_export import FP16_RELATIVE_TOLERANCE, export_onnx, inference_config
from modeling_diffclip import (
    DiffCLIPConfig,
    DiffCLIPModel,
    DiffCLIPProcessor,
    DiffCLIPVisionConfig,
    DiffCLIPVisionModel,
    clip_tokenizer,
)


EXPORTER = load_script("convert/export_onnx.py")
EXAMPLE = load_script("examples/onnx_zero_shot.py")
BENCHMARK = load_script("benchmarks/bench_onnx.py")


# case -> (DiffCLIP variant, or None for the Transformers CLIP of conftest; OpenAI CLIP's vision layout; opset).
# DiffCLIP* in OpenAI CLIP's layout is exported in float16, by test_fp16_export.
CASES = {
    "clip-baseline-openai-layout": ("clip", True, 18),
    "diffclip": ("diffclip", False, 18),
    "diffclip-vision": ("diffclip-vision", False, 20),
    "transformers-clip": (None, False, 18),
}
CAPTIONS = ["a cat", "a photo of a dog", "a red square on a blue background", "two people riding bicycles", "a"]
LABELS = ["cat", "dog", "red square", "bicycle"]


def save_tiny_diffclip(path, variant="diffclip", openai_layout=False, with_processor=True):
    # OpenAI CLIP's vision layout, as convert/convert_clip_to_diffclip.py writes it
    vision = dict(pre_layernorm=True, patch_embedding_bias=False) if openai_layout else {}
    torch.manual_seed(0)
    model = DiffCLIPModel(DiffCLIPConfig.for_variant(variant, **tiny_config_kwargs(vision=vision)))
    model.save_pretrained(path)
    if with_processor:
        DiffCLIPProcessor.from_defaults(image_size=32, context_length=16).save_pretrained(path)
    return path


def random_images(count, seed=0):
    """RGB images of several sizes, smaller and larger than the model's 32 px."""
    rng = np.random.default_rng(seed)
    sizes = [(48, 40), (40, 56), (32, 32), (20, 28), (90, 64), (33, 77)]
    return [
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for width, height in sizes[:count]
    ]


@pytest.fixture(scope="module")
def exports(tmp_path_factory, saved_tiny_models):
    """case -> (source folder, exported folder), each exported once, through the command line."""
    root = tmp_path_factory.mktemp("onnx-exports")
    done = {}

    def export(case):
        if case not in done:
            variant, openai_layout, opset = CASES[case]
            if variant is None:
                source = saved_tiny_models["clip"]
            else:
                source = save_tiny_diffclip(root / f"{case}-source", variant, openai_layout)
            output = root / case
            assert run_script(EXPORTER, ["--model", source, "--output_dir", output, "--opset", opset]) == 0
            done[case] = source, output
        return done[case]

    return export


def onnx_embeddings(folder, pixel_values, text_inputs):
    image = onnxruntime.InferenceSession(str(folder / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    text = onnxruntime.InferenceSession(str(folder / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    image_embeds = image.run(None, {"pixel_values": pixel_values.numpy()})[0]
    text_embeds = text.run(None, {key: value.numpy() for key, value in text_inputs.items()})[0]
    return image_embeds, text_embeds


def pytorch_embeddings(model, pixel_values, text_inputs):
    with torch.no_grad():
        image_embeds = model.get_image_features(pixel_values=pixel_values).pooler_output.numpy()
        text_embeds = model.get_text_features(**text_inputs).pooler_output.numpy()
    return image_embeds, text_embeds


def top1(image_embeds, text_embeds):
    image_embeds = image_embeds / np.linalg.norm(image_embeds, axis=-1, keepdims=True)
    text_embeds = text_embeds / np.linalg.norm(text_embeds, axis=-1, keepdims=True)
    return (image_embeds @ text_embeds.T).argmax(-1)


def other_shapes(source):
    """4 images (the export traced 2 and verified 1 and 3) and 5 captions at 9 tokens and at the context, 16."""
    processor = AutoProcessor.from_pretrained(source)
    pixel_values = processor(images=random_images(4, seed=1), return_tensors="pt")["pixel_values"]
    texts = [
        dict(processor.tokenizer(CAPTIONS, padding=padding, truncation=True, max_length=16, return_tensors="pt"))
        for padding in ("longest", "max_length")
    ]
    assert [text["input_ids"].shape[1] for text in texts] == [9, 16]
    return pixel_values, texts


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_every_variant_and_layout_matches_pytorch(exports, case):
    """fp32: max |Δ| ≤ 1e-4 on the embeddings at batch sizes and text lengths other than the export's."""
    source, folder = exports(case)
    config = json.loads((folder / "onnx_config.json").read_text())
    assert config["opset"] == CASES[case][2]
    assert config["dtype"] == "float32"
    assert config["verification"]["image_batch_sizes"] == [3, 1]
    assert max(config["verification"]["max_abs_difference"].values()) <= 1e-4
    for name in ("image_encoder.onnx", "text_encoder.onnx"):
        opsets = {opset.domain: opset.version for opset in onnx.load(folder / name).opset_import}
        assert opsets[""] == CASES[case][2]

    pixel_values, texts = other_shapes(source)
    model = AutoModel.from_pretrained(source).eval()  # as users load it: default (SDPA) attention
    for text_inputs in texts:
        actual = onnx_embeddings(folder, pixel_values, text_inputs)
        expected = pytorch_embeddings(model, pixel_values, text_inputs)
        for a, e in zip(actual, expected, strict=True):
            assert a.shape == e.shape
            np.testing.assert_allclose(a, e, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(top1(*actual), top1(*expected))


@pytest.mark.slow
def test_exported_folder(exports):
    source, folder = exports("diffclip")
    files = {path.name for path in folder.iterdir()}
    assert {"image_encoder.onnx", "text_encoder.onnx", "onnx_config.json", "README.md", "tokenizer.json"} <= files
    assert not [name for name in files if name.endswith((".safetensors", ".data"))]
    assert not [path for path in folder.parent.iterdir() if path.name.startswith(".")]  # no staging left

    config = json.loads((folder / "onnx_config.json").read_text())
    model = DiffCLIPModel.from_pretrained(source)
    assert config["logit_scale"] == pytest.approx(model.logit_scale.item())
    assert (config["image_size"], config["context_length"], config["projection_dim"]) == (32, 16, 16)
    assert (config["pad_token_id"], config["pad_token"], config["split_special_tokens"]) == (0, "!", True)
    assert config["preprocessing"]["resample"] == 2
    assert config["preprocessing"]["image_mean"] == [0.485, 0.456, 0.406]
    assert config["source_model"] == str(source)
    assert config["attn_implementation"] == "eager"
    assert type(AutoProcessor.from_pretrained(folder)) is DiffCLIPProcessor  # the processor files are all there
    assert "examples/onnx_zero_shot.py" in (folder / "README.md").read_text()

    image = onnxruntime.InferenceSession(str(folder / "image_encoder.onnx"), providers=["CPUExecutionProvider"])
    text = onnxruntime.InferenceSession(str(folder / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    graph_inputs = [(i.name, i.type, i.shape) for session in (image, text) for i in session.get_inputs()]
    assert graph_inputs == [
        ("pixel_values", "tensor(float)", ["batch", 3, 32, 32]),
        ("input_ids", "tensor(int64)", ["batch", "tokens"]),
        ("attention_mask", "tensor(int64)", ["batch", "tokens"]),
    ]
    outputs = [(o.name, o.shape) for session in (image, text) for o in session.get_outputs()]
    assert outputs == [("image_embeds", ["batch", 16]), ("text_embeds", ["batch", 16])]


@pytest.mark.slow
def test_fp16_export(tmp_path):
    """
    DiffCLIP* in OpenAI CLIP's layout, fp16 weights, fp32 inputs and outputs: max |Δ| ≤ 1 % of the largest embedding
    component, same top-1, at batch sizes and text lengths other than the export's.
    """
    source = save_tiny_diffclip(tmp_path / "source", "diffclip-dynamic", openai_layout=True)
    folder = tmp_path / "fp16"
    report = export_onnx(str(source), folder, fp16=True)
    for output, difference in report["max_abs_difference"].items():
        assert 0 < difference <= report["tolerance"][output]
    assert json.loads((folder / "onnx_config.json").read_text())["dtype"] == "float16"
    for name in ("image_encoder.onnx", "text_encoder.onnx"):
        matrices = {tensor.data_type for tensor in onnx.load(folder / name).graph.initializer if len(tensor.dims) == 2}
        assert onnx.TensorProto.FLOAT16 in matrices
        assert onnx.TensorProto.FLOAT not in matrices

    pixel_values, texts = other_shapes(source)
    model = AutoModel.from_pretrained(source).eval()
    for text_inputs in texts:
        actual = onnx_embeddings(folder, pixel_values, text_inputs)
        expected = pytorch_embeddings(model, pixel_values, text_inputs)
        for a, e in zip(actual, expected, strict=True):
            assert a.dtype == np.float32
            assert np.abs(a - e).max() <= FP16_RELATIVE_TOLERANCE * np.abs(e).max()
        np.testing.assert_array_equal(top1(*actual), top1(*expected))


@pytest.mark.slow
def test_a_graph_that_differs_from_pytorch_writes_nothing(tmp_path, capsys):
    """Embeddings past float16's range (65504) become inf in the fp16 graph: refused after export, nothing kept."""
    torch.manual_seed(0)
    model = DiffCLIPModel(DiffCLIPConfig(**tiny_config_kwargs()))
    with torch.no_grad():
        model.visual_projection.weight.mul_(1e7)
    model.save_pretrained(tmp_path / "source")
    DiffCLIPProcessor.from_defaults(image_size=32, context_length=16).save_pretrained(tmp_path / "source")
    capsys.readouterr()
    assert run_script(EXPORTER, ["--model", tmp_path / "source", "--output_dir", tmp_path / "out", "--fp16"]) == 1
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("error: the ONNX Runtime image_embeds differ from PyTorch's by up to ")
    assert last_line.endswith("float16 overflows past ±65504: export in float32; nothing was written.")
    assert [path.name for path in tmp_path.iterdir()] == ["source"]


def test_bad_inputs_get_one_clear_line_and_write_nothing(tmp_path, capsys):
    source = save_tiny_diffclip(tmp_path / "diffclip")
    save_tiny_diffclip(tmp_path / "no-processor", with_processor=False)
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99)
    ).save_pretrained(tmp_path / "bert")
    vision_config = DiffCLIPVisionConfig(**tiny_config_kwargs()["vision_config"])
    DiffCLIPVisionModel(vision_config).save_pretrained(tmp_path / "vision-only")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    cases = [
        ([tmp_path / "absent"], "no such file or folder"),
        ([tmp_path / "bert"], "holds a BertModel, not a CLIP-family dual encoder"),
        ([tmp_path / "vision-only"], "holds a DiffCLIPVisionModel, not a CLIP-family dual encoder"),
        ([tmp_path / "no-processor"], "has no processor"),
        ([source, "--opset", "17"], "opset 17 is too old for this graph: use >= 18"),
        ([source, "--output_dir", tmp_path / "taken"], "exists and is not empty"),
    ]
    for arguments, message in cases:
        capsys.readouterr()
        argv = ["--model", *arguments]
        if "--output_dir" not in argv:
            argv += ["--output_dir", tmp_path / "out"]
        assert run_script(EXPORTER, argv) == 1
        last_line = capsys.readouterr().err.strip().splitlines()[-1]
        assert last_line.startswith("error: "), last_line
        assert message in last_line, last_line
        assert not (tmp_path / "out").exists()
    assert [path.name for path in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


@pytest.mark.slow
def test_command_line_error_is_one_line_and_exit_status_1(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "convert" / "export_onnx.py"),
            "--model",
            str(save_tiny_diffclip(tmp_path / "diffclip")),
            "--output_dir",
            str(tmp_path / "out"),
            "--opset",
            "13",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: opset 13 is too old for this graph: use >= 18"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("processor_kind", ["diffclip", "openai-clip", "fixed-size"])
def test_example_preprocessing_and_token_ids_equal_the_transformers_processor(tmp_path, processor_kind):
    """PIL + NumPy pixels and `tokenizers` ids, from what export_onnx.py records, against the processor's."""
    processor = DiffCLIPProcessor.from_defaults(image_size=32, context_length=16)
    if processor_kind == "openai-clip":  # bicubic, OpenAI's mean and std, no `split_special_tokens`
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor = DiffCLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer(16))
        processor.tokenizer.split_special_tokens = False
    elif processor_kind == "fixed-size":  # squashed to 32 × 32, no crop
        processor.image_processor = CLIPImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False)
    processor.save_pretrained(tmp_path)
    model = DiffCLIPModel(DiffCLIPConfig(**tiny_config_kwargs()))
    config = inference_config(model, processor, "tiny", opset=18, fp16=False)

    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (45, 70, 4), dtype=np.uint8), "RGBA")
    images = [*random_images(6), rgba, rgba.convert("L"), rgba.convert("P"), rgba.convert("LA")]
    for image in images:
        expected = processor.image_processor(images=image, return_tensors="np")["pixel_values"][0]
        actual = EXAMPLE.preprocess(image, config["preprocessing"])
        assert actual.dtype == np.float32
        np.testing.assert_allclose(actual, expected, atol=1e-6, rtol=0, err_msg=f"{image.mode} {image.size}")

    captions = [
        *CAPTIONS,
        "Hello!! Wörld, naïve café…",
        "literal <|endoftext|> and <|startoftext|> in a caption",
        "",
        "a caption much longer than the sixteen tokens of this tiny context, which must be truncated",
    ]
    actual = EXAMPLE.tokenize(EXAMPLE.load_tokenizer(tmp_path, config), captions)
    expected = processor.tokenizer(captions, padding="max_length", truncation=True, max_length=16, return_tensors="np")
    np.testing.assert_array_equal(actual["input_ids"], expected["input_ids"])
    np.testing.assert_array_equal(actual["attention_mask"], expected["attention_mask"])


@pytest.mark.slow
@pytest.mark.parametrize("case", ["diffclip", "transformers-clip"])
def test_zero_shot_example_gives_the_pytorch_probabilities(exports, case, tmp_path):
    source, folder = exports(case)
    image = random_images(5)[-1]  # 90 × 64: resized and cropped
    model = AutoModel.from_pretrained(source).eval()
    processor = AutoProcessor.from_pretrained(source)
    captions = [f"a photo of a {label}" for label in LABELS]
    inputs = processor(text=captions, images=image, padding="max_length", truncation=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits_per_image.softmax(-1)[0].numpy()

    probabilities = EXAMPLE.ZeroShotClassifier(folder).classify(image, LABELS, "a photo of a {}")
    assert list(probabilities) == LABELS
    np.testing.assert_allclose(list(probabilities.values()), expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_zero_shot_example_runs_without_torch(exports, tmp_path):
    source, folder = exports("diffclip")
    random_images(5)[-1].save(tmp_path / "image.png")
    script = f"""
        import json, runpy, sys
        sys.argv = ["onnx_zero_shot.py", {str(folder)!r}, {str(tmp_path / "image.png")!r},
                    "--labels", *{LABELS!r}, "--template", "a photo of a {{}}"]
        try:
            runpy.run_path({str(REPO_ROOT / "examples" / "onnx_zero_shot.py")!r}, run_name="__main__")
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "transformers"))))
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-4000:]
    *lines, imported = result.stdout.strip().splitlines()
    assert json.loads(imported) == []
    printed = {line.split("  ", 1)[1]: float(line.split("  ", 1)[0]) for line in lines}
    expected = EXAMPLE.ZeroShotClassifier(folder).classify(
        Image.open(tmp_path / "image.png"), LABELS, "a photo of a {}"
    )
    assert printed == pytest.approx(expected, abs=1e-6)
    assert list(printed.values()) == sorted(printed.values(), reverse=True)


@pytest.mark.slow
def test_bench_onnx_at_the_tiny_shape(tmp_path):
    argv = ["--shapes", "tiny", "--repeats", "1", "--warmup", "0", "--batch_size", "3"]
    argv += ["--candidates", "pytorch", "onnxruntime", "--output", str(tmp_path / "onnx.json")]
    assert BENCHMARK.main(argv) == 0
    payload = json.loads((tmp_path / "onnx.json").read_text())
    assert payload["environment"]["onnxruntime"] == onnxruntime.__version__
    results = {(r["encoder"], r["candidate"]): r for r in payload["results"]}
    assert set(results) == {(e, c) for e in ("image", "text") for c in ("pytorch", "onnxruntime")}
    assert all(r["median_s"] > 0 and r["batch_size"] == 3 for r in results.values())
    assert results["image", "onnxruntime"]["max_abs_error"] <= 1e-4
    assert results["text", "onnxruntime"]["max_abs_error"] <= 1e-4


def test_zero_shot_example_refuses_an_unreadable_image_and_repeated_labels_in_one_line(tmp_path, capsys):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "onnx_config.json").write_text("{}")  # both are refused before the graphs are opened
    image = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(image.getvalue()[: len(image.getvalue()) // 2])
    (tmp_path / "photo.jpg").write_bytes(image.getvalue())
    cases = [
        ([tmp_path / "cut.jpg", "--labels", "cat", "dog"], "cannot read the image .*cut.jpg: image file is truncated"),
        ([tmp_path / "absent.jpg", "--labels", "cat", "dog"], "cannot read the image .*absent.jpg: .*No such file"),
        ([tmp_path / "photo.jpg", "--labels", "cat", "cat", "dog", "dog"], "--labels names .cat., .dog. more than"),
    ]
    for arguments, message in cases:
        capsys.readouterr()
        assert run_script(EXAMPLE, [folder, *arguments]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert re.match(f"error: {message}", err[0]), err[0]
