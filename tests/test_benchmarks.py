"""The benchmarks' reference implementation against every attention backend, and the benchmark scripts end to end."""

import json

import pytest
import torch
from conftest import REPO_ROOT, load_script, tiny_config_kwargs
from test_attention import causal_padding_mask, make_attention
from transformers.masking_utils import create_causal_mask

from diffclip_lab.benchmarking.harness import peak_memory, randomise
from diffclip_lab.conversion.official import reference_from, to_official_state_dict
from diffclip_lab.core.errors import UserError
from diffclip_lab.core.files import write_json
from modeling_diffclip import DiffCLIPAttention, DiffCLIPConfig, DiffCLIPModel, DiffCLIPVisionConfig


bench_attention = load_script("benchmarks/bench_attention.py")
bench_model = load_script("benchmarks/bench_model.py")
bench_accumulation = load_script("benchmarks/bench_accumulation.py")


def assert_grads_close(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for name, grad in expected.items():
        # fp32 sums over the batch and sequence: compare at 1e-5 of each gradient's own scale
        scale = max(1.0, grad.abs().max().item())
        assert (actual[name] - grad).abs().max().item() <= 1e-5 * scale, name


@pytest.mark.slow  # compiles flex_attention's kernel
def test_attention_backends_and_reference_agree_forward_and_backward():
    """
    Causal and padding masks, each backend's as the text model builds it; flex_attention has no backward on CPU,
    so its forward only.
    """
    torch.manual_seed(0)
    x = torch.randn(3, 7, 48)
    probe = torch.randn(3, 7, 48)
    padding = (torch.arange(7)[None, :] < torch.tensor([7, 5, 2])[:, None]).long()
    reference = reference_from(make_attention("eager"))
    inputs = x.clone().requires_grad_(True)
    expected = reference(inputs, causal_padding_mask([7, 5, 2], 7))
    expected.backward(probe)
    expected_grads = {name: p.grad for name, p in reference.official().items()}
    for implementation in ("eager", "sdpa", "flex_attention"):
        attention = make_attention(implementation)
        mask = create_causal_mask(config=attention.config, inputs_embeds=x, attention_mask=padding, cache=None)
        if implementation == "flex_attention":
            with torch.no_grad():
                out, _ = attention(x, attention_mask=mask, is_causal=True)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
            continue
        leaf = x.clone().requires_grad_(True)
        out, _ = attention(leaf, attention_mask=mask, is_causal=True)
        out.backward(probe)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5, msg=implementation)
        torch.testing.assert_close(leaf.grad, inputs.grad, atol=1e-5, rtol=1e-5, msg=implementation)
        assert_grads_close({name: p.grad for name, p in attention.named_parameters()}, expected_grads)


def test_fused_attention_memory_grows_linearly_with_tokens():
    """Peak memory of a training step at 4× the tokens: ~4× with sdpa (no N×N map), ~16× with eager maps."""
    growth = {}
    for implementation in ("sdpa", "eager"):
        config = DiffCLIPVisionConfig(hidden_size=64, num_attention_heads=4)
        config._attn_implementation = implementation
        attention = DiffCLIPAttention(config, layer_idx=0)
        peaks = []
        for tokens in (64, 256):
            x = torch.randn(2, tokens, 64, requires_grad=True)
            peaks.append(peak_memory(lambda attention=attention, x=x: attention(x)[0].sum().backward(), "cpu"))
            attention.zero_grad(set_to_none=True)
        growth[implementation] = peaks[1] / peaks[0]
    assert growth["sdpa"] < 4.5, growth
    assert growth["eager"] > 10, growth


def test_models_and_reference_agree_forward_and_backward():
    """DiffCLIPModel with eager and sdpa and the reference dual encoder: logits, loss and every gradient."""
    config = DiffCLIPConfig(**tiny_config_kwargs(vision=dict(pre_layernorm=True)))
    torch.manual_seed(0)
    model = DiffCLIPModel(config)
    randomise(model)
    batch = bench_model.inputs(config, batch_size=3, images=True, device="cpu", dtype=torch.float32)
    reference = reference_from(model)
    logits, loss = reference(batch["input_ids"], batch["pixel_values"])
    loss.backward()
    expected_grads = reference.diffclip_grads()
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        model.zero_grad(set_to_none=True)
        out = model(**batch, return_loss=True)
        out.loss.backward()
        torch.testing.assert_close(out.logits_per_image, logits, atol=1e-5, rtol=1e-5, msg=implementation)
        torch.testing.assert_close(out.loss, loss, atol=1e-5, rtol=1e-5, msg=implementation)
        assert_grads_close({name: p.grad for name, p in model.named_parameters()}, expected_grads)


def test_reference_refuses_a_state_dict_it_cannot_fill():
    model = DiffCLIPModel(DiffCLIPConfig(**tiny_config_kwargs()))
    state_dict = model.state_dict()
    del state_dict["vision_model.encoder.layers.0.self_attn.diff_norm.weight"]
    with pytest.raises(KeyError, match="vision_model.encoder.layers.0.self_attn.diff_norm.weight"):
        to_official_state_dict(state_dict, model.config)


def test_reference_of_plain_towers_is_the_model():
    """CLIP's attention in the official layouts (fused qkv), against the model with differential attention off."""
    config = DiffCLIPConfig.for_variant("clip", **tiny_config_kwargs())
    torch.manual_seed(0)
    model = DiffCLIPModel(config).eval()
    batch = bench_model.inputs(config, batch_size=3, images=True, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        logits, loss = reference_from(model)(batch["input_ids"], batch["pixel_values"])
        out = model(**batch, return_loss=True)
    torch.testing.assert_close(out.logits_per_image, logits, atol=1e-5, rtol=1e-5)


RESULT_KEYS = {
    "shape",
    "section",
    "mode",
    "candidate",
    "batch_size",
    "tokens",
    "times_s",
    "median_s",
    "q1_s",
    "q3_s",
    "min_s",
    "max_s",
    "samples_per_s",
    "peak_memory_bytes",
    "max_abs_error",
}
RATIO_KEYS = {
    "shape",
    "section",
    "mode",
    "numerator",
    "denominator",
    "time_ratio_median",
    "time_ratio_q1",
    "time_ratio_q3",
    "time_ratio_min",
    "time_ratio_max",
    "memory_ratio",
}


def check_payload(path, script, candidates, sections):
    payload = json.loads(path.read_text())
    assert payload["script"] == script
    assert {"date", "torch", "transformers", "device", "cpu", "cpu_threads"} <= payload["environment"].keys()
    assert payload["settings"]["repeats"] == 1
    for result in payload["results"]:
        assert result.keys() == RESULT_KEYS
        assert len(result["times_s"]) == 1
        assert result["median_s"] > 0
        assert result["peak_memory_bytes"] > 0
        if result["candidate"].startswith("diffclip"):
            assert result["max_abs_error"] < 1e-4, result
    for ratio in payload["ratios"]:
        assert ratio.keys() == RATIO_KEYS
        assert ratio["time_ratio_median"] > 0
        assert ratio["memory_ratio"] > 0
    found = {(r["section"], r["mode"], r["candidate"]) for r in payload["results"]}
    assert found == {(s, m, c) for s in sections for m in ("forward", "train") for c in candidates[s]}
    assert {(r["numerator"], r["denominator"]) for r in payload["ratios"]} >= {
        ("diffclip-sdpa", "clip-sdpa"),
        ("diffclip-sdpa", "reference"),
    }
    return payload


def test_bench_attention_runs_and_writes_json(tmp_path, capsys):
    output = tmp_path / "attention.json"
    assert (
        bench_attention.main(
            [
                "--shapes",
                "tiny-vision",
                "tiny-text",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--formulations",
                "--output",
                str(output),
            ]
        )
        == 0
    )
    formulations = [bench_attention.formulation_name(f) for f in bench_attention.FORMULATIONS]
    candidates = {
        "attention layer": ["diffclip-eager", "diffclip-sdpa", "clip-sdpa", "reference"],
        "differential core": formulations,
    }
    payload = check_payload(output, "bench_attention", candidates, candidates)
    assert {r["shape"] for r in payload["results"]} == {"tiny-vision", "tiny-text"}
    assert "| forward | diffclip-sdpa / clip-sdpa |" in capsys.readouterr().out


def test_bench_model_runs_and_writes_json(tmp_path):
    output = tmp_path / "model.json"
    assert (
        bench_model.main(
            ["--shapes", "tiny", "--batch_size", "4", "--repeats", "1", "--warmup", "0", "--output", str(output)]
        )
        == 0
    )
    candidates = {"model": ["diffclip-eager", "diffclip-sdpa", "clip-sdpa", "reference"]}
    payload = check_payload(output, "bench_model", candidates, candidates)
    assert {r["batch_size"] for r in payload["results"]} == {4}


def test_bench_accumulation_runs_and_writes_json(tmp_path):
    output = tmp_path / "accumulation.json"
    args = ["--shapes", "tiny", "--global_batch_size", "64", "--micro_batches", "4", "--repeats", "1", "--warmup", "0"]
    assert bench_accumulation.main([*args, "--output", str(output)]) == 0
    results = {r["way"]: r for r in json.loads(output.read_text())["results"]}
    assert results.keys() == {"one batch", "exact accumulation", "per-micro-batch loss"}
    assert results["one batch"]["vs_one_batch"] == 1
    assert all(r["seconds"]["median"] > 0 and r["peak_mib"] > 0 for r in results.values())


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("bench_model", ["--shapes", "vit-b-99"], "argument --shapes: invalid choice: 'vit-b-99'"),
        ("bench_model", ["--device", "cuda"], "--device cuda: torch.cuda.is_available() is False on this machine."),
        ("bench_attention", ["--repeats", "0"], "argument --repeats: 0 is below 1"),
        ("bench_attention", ["--batch_size", "x"], "argument --batch_size: 'x' is not a whole number"),
        ("bench_onnx", ["--warmup", "-1"], "argument --warmup: -1 is below 0"),
        ("bench_onnx", ["--candidates", "onnxruntime"], "--candidates must include pytorch"),
    ],
)
def test_a_wrong_benchmark_option_is_one_line(script, argv, message, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stopped:
        load_script(f"benchmarks/{script}.py").main(argv)
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert ": error: " in line
    assert message in line


def test_write_json_writes_valid_json(tmp_path):
    """NaN and infinities, which JSON lacks, become strings (`json.loads` with Python's default would accept NaN)."""
    path = tmp_path / "results.json"
    write_json(path, {"median": float("nan"), "ratios": [float("inf"), -float("inf"), 1.5], "none": None})
    strict = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert strict == {"median": "nan", "ratios": ["inf", "-inf", 1.5], "none": None}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left
    write_json(None, {"ignored": True})  # no --output: nothing written
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


bench_demo = load_script("benchmarks/bench_demo.py")


def test_the_demo_check_flags_a_clear_drop_not_a_seeds_luck():
    reference = {"seeds": 5, "mean": 70.0, "std": 3.0, "min": 66.0, "max": 74.0}
    # standard error of the difference: sqrt(9/5 + 9/5) = 1.90, so the bar is a drop of 5.69 points
    assert not bench_demo.clearly_below({**reference, "mean": 64.4}, reference)
    assert bench_demo.clearly_below({**reference, "mean": 64.2}, reference)
    assert not bench_demo.clearly_below({**reference, "mean": 80.0}, reference)
    # with no spread at all, a drop must still exceed one point
    exact = {"seeds": 3, "mean": 70.0, "std": 0.0, "min": 70.0, "max": 70.0}
    assert not bench_demo.clearly_below({**exact, "mean": 69.2}, exact)
    assert bench_demo.clearly_below({**exact, "mean": 68.9}, exact)


def test_the_readme_quotes_the_committed_demo_measurement():
    summary = json.loads((REPO_ROOT / "docs" / "results" / "demo.json").read_text())["summary"]
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"{summary['mean']:.0f} ± {summary['std']:.0f} %" in readme
    assert f"over {summary['seeds']} seeds" in readme


@pytest.mark.slow  # two short demo runs
def test_bench_demo_runs_seeds_and_checks_against_a_result_file(tmp_path):
    reference = tmp_path / "reference.json"
    reference.write_text(json.dumps({"summary": {"seeds": 3, "mean": 99.0, "std": 0.5, "min": 98.5, "max": 99.5}}))
    output = tmp_path / "demo.json"
    short = ["--", "--max_steps", "2", "--num_workers", "0"]
    status = bench_demo.main(["--seeds", "3", "4", "--output", str(output), "--check", str(reference), *short])
    assert status == 1  # two steps of training are clearly below 99 %
    payload = json.loads(output.read_text())
    assert [run["seed"] for run in payload["runs"]] == [3, 4]
    top1 = [100 * run["zeroshot_top1"] for run in payload["runs"]]
    assert payload["summary"]["mean"] == pytest.approx(sum(top1) / 2)
    assert payload["summary"]["min"] == min(top1)
    assert payload["summary"]["max"] == max(top1)


def test_bench_accumulation_refuses_a_batch_that_does_not_divide():
    with pytest.raises(UserError, match="a global batch of 10 does not divide into 4 micro-batches"):
        bench_accumulation.main(["--shapes", "tiny", "--global_batch_size", "10", "--micro_batches", "4"])
