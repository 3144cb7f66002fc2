"""The GPU check (benchmarks/gpu_check.sh and gpu_check.py) on CPU: its arguments, its one-line refusal without a
GPU, the exact command lines of its steps against each script's own parser, the backend comparison and the report;
the whole driver end to end at CPU sizes (slow)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import flash_contract
import pytest
import torch
from conftest import REPO_ROOT, load_script

from diffclip_lab.benchmarking import gpu_backends, gpu_plan, gpu_report
from diffclip_lab.training.recipes import PRETRAINING_RECIPES
from diffclip_lab.training.runs import BatchPlan
from modeling_diffclip.modeling_diffclip import DifferentialNorm


gpu_check = load_script("benchmarks/gpu_check.py")
bench_model = load_script("benchmarks/bench_model.py")
pretrain = load_script("examples/pretrain.py")
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.sh"


def run_driver(*args, tmp_path, extra_env=None, timeout=60):
    """`bash benchmarks/gpu_check.sh ARGS` from the repository root, as a user runs it; no GPU visible."""
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    env.update(extra_env or {})
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def scratch_folders(tmp_path):
    return list(tmp_path.glob("gpu_check.*"))


# ---------------------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("args", [[], ["a", "b"], [""], ["-x"], ["--output", "x"]])
def test_a_wrong_argument_is_one_usage_line(tmp_path, args):
    result = run_driver(*args, tmp_path=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["usage: bash benchmarks/gpu_check.sh OUTPUT_DIR"]
    assert result.stdout == ""
    assert not scratch_folders(tmp_path)


def test_help_prints_the_usage(tmp_path):
    result = run_driver("--help", tmp_path=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == "usage: bash benchmarks/gpu_check.sh OUTPUT_DIR"


def test_an_output_dir_that_is_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "taken").write_text("")
    result = run_driver(tmp_path / "taken", tmp_path=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("usage: bash benchmarks/gpu_check.sh OUTPUT_DIR (")
    assert "is not a folder" in lines[0]
    assert not scratch_folders(tmp_path)


def test_check_output_dir(tmp_path):
    with pytest.raises(gpu_plan.UsageError, match="not an output folder"):
        gpu_plan.check_output_dir("-o")
    (tmp_path / "file").write_text("")
    with pytest.raises(gpu_plan.UsageError, match="file is not a writable folder"):
        gpu_plan.check_output_dir(str(tmp_path / "file" / "out"))
    assert gpu_plan.check_output_dir("relative/new/folder") == Path("relative/new/folder")


def test_without_a_gpu_the_check_stops_at_once_in_one_line(tmp_path):
    result = run_driver(tmp_path / "out", tmp_path=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: no CUDA GPU: torch.cuda.is_available() is False"]
    assert result.stdout == ""
    assert not (tmp_path / "out").exists()  # nothing written
    assert not scratch_folders(tmp_path)


def run_gpu_check(*args):
    """`python benchmarks/gpu_check.py ARGS` as the shell script runs it; no GPU visible."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_backends_alone_refuses_a_machine_without_cuda_in_one_line(tmp_path):
    result = run_gpu_check("backends", "--output", tmp_path / "b.json")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: no CUDA GPU: torch.cuda.is_available() is False"]
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["backends", "--output", "b.json", "--backends", "fast"], "argument --backends: invalid choice: 'fast'"),
        (["backends", "--output", "b.json", "--layer_batch", "0"], "argument --layer_batch: 0 is below 1"),
        (["plan", "out"], "the following arguments are required: --work"),
        (["check"], "argument command: invalid choice: 'check'"),
    ],
)
def test_a_wrong_option_of_a_command_is_one_line(args, message):
    result = run_gpu_check(*args)
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert message in line
    assert not (REPO_ROOT / "b.json").exists()


def test_the_commands_import_no_torch_until_they_need_it():
    """The plan reports a missing or broken torch in one line (it imports torch after checking it) and the report
    has 20 seconds: loading gpu_check.py and the lab's GPU modules imports neither torch nor the model."""
    code = (
        "import runpy, sys; runpy.run_path('benchmarks/gpu_check.py'); "
        "print(sorted(m for m in ('torch', 'transformers', 'modeling_diffclip') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -------------------------------------------------------------------------------------------------------------- plan


def test_every_step_parses_with_its_scripts_own_parser(tmp_path, monkeypatch):
    """The GPU plan's exact command lines, through bench_model's, pretrain's and gpu_check's parsers."""
    steps = {step.name: step for step in gpu_plan.plan_steps(tmp_path, gpu_memory_gib=139.8, cpu_count=16)}
    assert list(steps) == ["backends", "pretrain", "pretrain_compile", "bench_model"]
    assert [step.group for step in steps.values()] == [1, 1, 1, 2]
    for step in steps.values():
        assert (REPO_ROOT / step.script).is_file()
        assert step.command().startswith(sys.executable)

    backends = gpu_check.parse_args(steps["backends"].args)
    assert backends.command == "backends"
    assert backends.size == "full"
    assert not backends.allow_cpu
    assert backends.backends == [
        "eager",
        "sdpa",
        "flex_attention",
        "flash_attention_2",
        "flash_attention_3",
        "kernels-community/flash-attn2",
        "kernels-community/vllm-flash-attn3",
    ]
    assert backends.dtypes == ["float32", "bfloat16"]

    # bench_model's parser refuses --device cuda where CUDA is missing: this machine stands in for a GPU machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    bench = bench_model.parse_args(bench_model.__doc__, bench_model.SHAPES, steps["bench_model"].args, flex="")
    assert (bench.device, bench.dtype, bench.shapes, bench.batch_size) == ("cuda", torch.bfloat16, ["vit-b-16"], 256)
    assert bench.modes == ["forward", "train"]
    assert bench.output == tmp_path / "bench_model.json"
    assert bench.repeats >= 10
    assert not bench.compile

    demo = pretrain.parse_args(steps["pretrain"].args)
    assert (demo.mixed_precision, demo.max_steps, demo.torch_compile) == ("bf16", gpu_plan.DEMO_STEPS, False)
    assert (demo.model_config, demo.per_device_batch_size, demo.dataset) == ("tiny", 128, None)
    assert demo.num_workers == 8
    assert demo.output_dir == str(tmp_path / "pretrain")

    compiled = pretrain.parse_args(steps["pretrain_compile"].args)
    assert (compiled.mixed_precision, compiled.torch_compile) == ("bf16", True)
    assert compiled.max_steps == gpu_plan.COMPILE_STEPS
    assert compiled.logging_steps == 1


def test_the_cpu_test_plan_parses_too(tmp_path):
    for step in gpu_plan.plan_steps(tmp_path, cpu_test=True):
        if step.script == "examples/pretrain.py":
            pretrain.parse_args(step.args)
        elif step.script == "benchmarks/bench_model.py":
            bench_model.parse_args(bench_model.__doc__, bench_model.SHAPES, step.args, flex="")
        else:
            assert gpu_check.parse_args(step.args).allow_cpu


def test_the_plan_fits_eight_minutes_and_runs_the_demo_schedule(tmp_path):
    steps = gpu_plan.plan_steps(tmp_path)
    assert gpu_plan.worst_case_seconds(steps) <= gpu_plan.TOTAL_LIMIT_S == 8 * 60
    # the shell script's own limits are the ones counted
    script = SCRIPT.read_text()
    assert f"kill_after={gpu_plan.KILL_AFTER_S} " in script
    assert f"--kill-after=$kill_after {gpu_plan.PLAN_LIMIT_S} " in script
    assert f"--kill-after=$kill_after {gpu_plan.REPORT_LIMIT_S} " in script
    # --max_steps DEMO_STEPS is the demo's own schedule (6 epochs), whose accuracy the README quotes
    demo = PRETRAINING_RECIPES["demo"]
    plan = BatchPlan.build(
        1, 1, demo["per_device_batch_size"], None, pretrain.DEMO_TRAIN_EXAMPLES, None, demo["num_epochs"], 0.1
    )
    assert plan.max_steps == gpu_plan.DEMO_STEPS


def test_missing_requirements_are_named():
    """The Transformers floor is the one pyproject.toml declares, not a copy that drifts from it."""
    floor = re.search(r'"transformers>=(\d+)\.(\d+)[,"]', (REPO_ROOT / "pyproject.toml").read_text())
    major, minor = map(int, floor.groups())
    assert gpu_plan.missing_requirements(f"{major}.{minor}.0") == []
    below = f"{major}.{minor - 1}.9" if minor else f"{major - 1}.99.0"
    assert gpu_plan.missing_requirements(below) == [
        f"transformers {below} is installed; this project needs >= {major}.{minor}"
    ]
    assert gpu_plan.missing_requirements(None)[0].startswith("transformers None")


def test_bench_batch_follows_gpu_memory():
    """bench_model's batch: 256 (the paper's per-GPU scale), halved down to 32 until the eager path's N×N maps (about
    35 GiB at 256, in proportion to the batch) take at most half the card; the other half holds the weights, the
    other activations and the allocator's slack."""

    def fits(batch: int, gib: float) -> bool:
        return 35 * batch / 256 <= gib / 2

    cards = [tenths / 10 for tenths in range(80, 1600, 5)]  # 8 to 160 GiB
    batches = [gpu_plan.bench_batch_size(gib) for gib in cards]
    assert batches == sorted(batches)  # more memory, never a smaller batch
    for gib, batch in zip(cards, batches, strict=True):
        assert batch in (32, 64, 128, 256)
        assert fits(batch, gib) or batch == 32, gib
    for gib in (139.8, 79.2, 39.4, 23.6, 15.8):  # H200, H100, A100 40 GB, 24 GB and 16 GB cards as torch reports them
        batch = gpu_plan.bench_batch_size(gib)
        assert batch == 256 or not fits(2 * batch, gib), gib  # the largest batch that fits
    assert gpu_plan.bench_batch_size(None) == 256  # no GPU to size for: the plan as on a large card


def test_plan_records_the_environment_and_prints_the_steps(tmp_path, capsys):
    output, work = tmp_path / "out", tmp_path / "work"
    assert gpu_check.main(["plan", str(output), "--work", str(work), "--allow_cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [
        ["1", "backends"],
        ["1", "pretrain"],
        ["1", "pretrain_compile"],
        ["2", "bench_model"],
    ]
    assert all(line.split("\t")[3].startswith(sys.executable) for line in lines)
    assert (output / "logs").is_dir()
    env = json.loads((work / "environment.json").read_text())
    assert env["device"] == "cpu"
    assert env["torch"] == torch.__version__
    for key in ("python", "transformers", "modeling_diffclip", "accelerate", "torch_cuda", "git_commit", "cpu"):
        assert key in env
    settings = json.loads((work / "plan.json").read_text())
    assert settings["cpu_test"]
    assert settings["min_demo_top1"] is None
    assert [step["name"] for step in settings["steps"]] == ["backends", "pretrain", "pretrain_compile", "bench_model"]


# ---------------------------------------------------------------------------------------------- backends against eager


@pytest.fixture(scope="module")
def backends_json(tmp_path_factory):
    """The backend comparison at tiny sizes on CPU, eager and sdpa (flex_attention compiles: its own slow test)."""
    path = tmp_path_factory.mktemp("backends") / "backends.json"
    status = gpu_check.main(
        ["backends", "--output", str(path), "--allow_cpu", "--size", "tiny", "--backends", "eager", "sdpa"]
    )
    return status, path


def test_backends_agree_with_eager_on_cpu(backends_json):
    status, path = backends_json
    payload = json.loads(path.read_text())
    assert payload["passed"], [c for c in payload["cases"] if not c["passed"]]
    assert status == 0
    assert payload["device"] == "cpu"
    found = {(c["target"], c["dtype"], c["backend"]) for c in payload["cases"]}
    assert found == {
        (t, d, b)
        for t in ("attention layer", "tiny model")
        for d in ("float32", "bfloat16")
        for b in ("eager", "sdpa")
    }
    for case in payload["cases"]:
        assert case["mode"] == "forward + backward"
        errors = case["errors"]
        assert errors["param_count"] == (13 if case["target"] == "attention layer" else 97)
        if case["dtype"] == "float32":
            assert max(errors[k] for k in gpu_backends.FLOAT32_KEYS) < 1e-5, case
        else:
            assert set(case["limits"]) == set(gpu_backends.BFLOAT16_KEYS)
            assert 1e-3 < case["errors_vs_eager_float32"]["output"] < 0.05


def test_the_fused_path_reaches_the_flash_kernel_on_cpu(backends_json):
    _, path = backends_json
    kernels = json.loads(path.read_text())["kernels"]
    assert len(kernels) == 4
    for record in kernels:
        assert record["passed"], record
        calls = 4 if record["target"] == "attention layer" else 16  # 4 per layer: a call per map and value half
        assert record["forward"] == {"flash (CPU)": calls}
        assert record["backward"] == {"flash (CPU)": calls}
        forced = {f["kernel"]: f for f in record["forced"]}
        assert forced["FLASH_ATTENTION"]["ran"]
        assert forced["MATH"]["ran"]
        assert not forced["EFFICIENT_ATTENTION"]["ran"]
        assert forced["EFFICIENT_ATTENTION"]["reason"]
        limit = gpu_backends.FLOAT32_LIMIT if record["dtype"] == "float32" else 0.05
        assert forced["FLASH_ATTENTION"]["output_error"] < limit


def test_flash_backends_run_where_available_and_are_recorded_where_not(tmp_path, monkeypatch):
    """On CPU the real FlashAttention backends are recorded as not run; a stand-in enforcing FlashAttention's contract
    (tests/flash_contract.py), in their place, runs in bfloat16 only, forward and backward, and passes."""
    name = flash_contract.register()
    monkeypatch.setattr(gpu_backends, "FLASH_BACKENDS", (*gpu_backends.FLASH_BACKENDS, name))
    real = gpu_backends.flash_unavailable
    monkeypatch.setattr(gpu_backends, "flash_unavailable", lambda b, device: None if b == name else real(b, device))
    path = tmp_path / "backends.json"
    argv = ["backends", "--output", str(path), "--allow_cpu", "--size", "tiny"]
    assert gpu_check.main([*argv, "--backends", "eager", "flash_attention_2", name]) == 0
    payload = json.loads(path.read_text())
    assert payload["passed"]
    assert payload["not_run"] == {"flash_attention_2": "needs a CUDA GPU"}
    assert payload["planned_cases"] == 2 * 2 + 2  # eager: 2 targets × 2 dtypes; the stand-in: bfloat16 only
    flash = [case for case in payload["cases"] if case["backend"] == name]
    assert {(case["target"], case["dtype"]) for case in flash} == {
        ("attention layer", "bfloat16"),
        ("tiny model", "bfloat16"),
    }
    for case in flash:
        assert case["passed"], case
        assert case["mode"] == "forward + backward"
    markdown = gpu_report.backends_markdown(payload)
    assert "Not run, unavailable here: `flash_attention_2` (needs a CUDA GPU)." in markdown


def test_the_backend_check_catches_a_wrong_gradient(tmp_path, monkeypatch, capsys):
    """A fault in the fused path's λ gradient (eager is untouched) fails the float32 comparison, naming λ."""
    backward = DifferentialNorm.backward

    def wrong_lambda_gradient(ctx, grad_output):
        grad_lambda, *rest = backward(ctx, grad_output)
        return 1.01 * grad_lambda, *rest

    monkeypatch.setattr(DifferentialNorm, "backward", staticmethod(wrong_lambda_gradient))
    path = tmp_path / "backends.json"
    argv = ["backends", "--output", str(path), "--allow_cpu", "--size", "tiny", "--dtypes", "float32"]
    assert gpu_check.main([*argv, "--backends", "eager", "sdpa"]) == 1
    payload = json.loads(path.read_text())
    failed = [case for case in payload["cases"] if not case["passed"]]
    assert {case["backend"] for case in failed} == {"sdpa"}
    assert len(failed) == 2
    for case in failed:
        assert case["errors"]["output"] < 1e-5  # the forward is right
        assert "lambda" in case["errors"]["worst_param"]
    assert "FAILED" in capsys.readouterr().out


def test_relative_errors_and_the_gradient_floor():
    zero, ones = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    assert gpu_backends.relative_error(zero, zero) == 0
    assert gpu_backends.relative_error(ones, zero) == float("inf")
    assert gpu_backends.relative_error(2 * ones, ones) == pytest.approx(1.0)
    big = torch.full((100,), 10.0, dtype=torch.float64)
    noise = torch.full((3,), 1e-9, dtype=torch.float64)
    expected = {"output": ones, "input_grad": ones, "params": {"w": big, "k_proj.bias": noise}}
    actual = {"output": ones, "input_grad": ones, "params": {"w": big, "k_proj.bias": -noise}}
    errors = gpu_backends.compare(actual, expected)
    # the bias's gradient is all noise (error 2 relative to itself), tiny against the module's gradients
    assert errors["worst_param_grad"] < 1e-9
    missing = gpu_backends.compare({**actual, "params": {"w": big}}, expected)
    assert missing["param_grads"] == float("inf")
    assert missing["worst_param"] == "k_proj.bias"


@pytest.mark.slow  # compiles flex_attention's kernels for CPU
def test_flex_attention_forward_agrees_on_cpu(tmp_path):
    path = tmp_path / "backends.json"
    argv = [
        "backends",
        "--output",
        str(path),
        "--allow_cpu",
        "--size",
        "tiny",
        "--backends",
        "eager",
        "flex_attention",
        "--dtypes",  # each dtype compiles its own kernels; bfloat16 on CPU is not what a GPU would run
        "float32",
    ]
    assert gpu_check.main(argv) == 0
    flex = [case for case in json.loads(path.read_text())["cases"] if case["backend"] == "flex_attention"]
    assert len(flex) == 2  # an attention layer and a whole model
    for case in flex:
        assert case["mode"] == "forward (no backward on CPU)"
        assert case["passed"]
        assert "input_grad" not in case["errors"]


# ------------------------------------------------------------------------------------------------------------ report


def write_run(folder: Path, top1: float, steps: int, seconds_per_step: float):
    """What examples/pretrain.py leaves in its output folder: eval_results.json and metrics.jsonl (cumulative
    images/s since the loop's start, which includes the first step's start-up)."""
    folder.mkdir(parents=True)
    results = {"global_step": steps, "global_batch_size": 128, "zeroshot_top1": top1, "zeroshot_top5": 0.9}
    (folder / "eval_results.json").write_text(json.dumps({**results, "num_classes": 30, "args": {}}))
    records = []
    for step in (1, steps):
        elapsed = 5.0 + (step - 1) * seconds_per_step  # 5 s to the first step
        records.append(
            {"step": step, "loss": 1.0 / step, "images_seen": 128 * step, "images_per_second": 128 * step / elapsed}
        )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def test_the_report_collects_the_steps_and_records_a_failure(tmp_path, backends_json, capsys):
    output, work = tmp_path / "out", tmp_path / "work"
    assert gpu_check.main(["plan", str(output), "--work", str(work), "--allow_cpu"]) == 0
    settings = json.loads((work / "plan.json").read_text())
    settings["min_demo_top1"] = 0.3  # as on a GPU
    (work / "plan.json").write_text(json.dumps(settings))
    (work / "backends.json").write_bytes(backends_json[1].read_bytes())
    argv = ["--shapes", "tiny", "--batch_size", "4", "--repeats", "2", "--warmup", "0"]
    assert bench_model.main([*argv, "--output", str(work / "bench_model.json")]) == 0
    write_run(work / "pretrain", top1=0.71, steps=11, seconds_per_step=0.5)
    # pretrain_compile ran out of time: no results, and a log whose progress bar ends in carriage returns
    (output / "logs" / "pretrain_compile.log").write_text("compiling\n" + "".join(f"\rstep {i}/10" for i in range(3)))
    (work / "steps.tsv").write_text(
        "backends\t0\t12\npretrain_compile\t124\t150\nbench_model\t0\t40\npretrain\t0\t30\n"
    )
    capsys.readouterr()

    assert gpu_check.main(["report", str(output), "--work", str(work)]) == 1
    payload = json.loads((output / "gpu_check.json").read_text())
    assert not payload["passed"]
    status = {step["name"]: step["status"] for step in payload["steps"]}
    assert status == {
        "backends": "passed",
        "pretrain_compile": "timed out",
        "bench_model": "passed",
        "pretrain": "passed",
    }
    compiled = next(step for step in payload["steps"] if step["name"] == "pretrain_compile")
    assert compiled["log_tail"] == ["compiling", "step 0/10", "step 1/10", "step 2/10"]
    assert compiled["exit_status"] == 124
    assert compiled["log"] == "logs/pretrain_compile.log"
    assert payload["environment"]["device"] == "cpu"
    assert payload["pretrain"]["eval_results"]["zeroshot_top1"] == 0.71
    assert payload["pretrain"]["steady_images_per_s"] == pytest.approx(256)  # 128 images per 0.5 s
    assert payload["pretrain"]["seconds_to_first_logged_step"] == pytest.approx(5)
    bench = payload["bench_model"]
    assert bench["batch_size"] == 4
    assert len(bench["targets"]) == 6
    assert {r["candidate"] for r in bench["results"]} == {"diffclip-eager", "diffclip-sdpa", "clip-sdpa", "reference"}

    markdown = (output / "gpu_check.md").read_text()
    assert markdown == capsys.readouterr().out
    for heading in ("## Environment", "## Steps", "## Attention backends against eager", "### SDPA kernels",
                    "## Whole model (`bench_model.py`)", "## Pretraining", "## Failures"):  # fmt: skip
        assert heading in markdown
    assert "| pretrain_compile | " in markdown
    assert "timed out: stopped at its limit of 600 s" in markdown
    assert "| demo | 11 | 128 | 71.0% |" in markdown
    assert "370 images/s per A100" in markdown
    assert "Ran on CPU" in markdown


def test_step_verdicts():
    settings = {"min_demo_top1": 0.3}
    run = {"eval_results": {"zeroshot_top1": 0.12}}
    assert gpu_report.step_verdict("pretrain", (0, 30), run, settings, 90) == (
        "failed",
        "zero-shot top-1 12.0% is below 30%",
    )
    assert gpu_report.step_verdict("pretrain_compile", (0, 30), run, settings, 90)[0] == "passed"
    assert gpu_report.step_verdict("pretrain", (137, 95), None, settings, 90)[0] == "timed out"
    assert gpu_report.step_verdict("bench_model", (1, 3), None, settings, 90) == ("failed", "exit status 1")
    assert gpu_report.step_verdict("bench_model", (0, 3), None, settings, 90)[0] == "failed"
    assert gpu_report.step_verdict("backends", None, None, settings, 90)[0] == "did not run"
    assert gpu_report.step_verdict("backends", (0, 9), {"passed": False}, settings, 90)[0] == "failed"


# ------------------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow  # the whole driver: four steps at CPU sizes, two of them training runs
def test_the_driver_runs_every_step_and_writes_the_report(tmp_path):
    output = tmp_path / "out"
    result = run_driver(output, tmp_path=tmp_path, extra_env={"GPU_CHECK_ALLOW_CPU": "1"}, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    payload = json.loads((output / "gpu_check.json").read_text())
    assert payload["passed"]
    assert [step["name"] for step in payload["steps"]] == ["backends", "pretrain", "pretrain_compile", "bench_model"]
    assert all(step["status"] == "passed" and step["seconds"] is not None for step in payload["steps"])
    assert payload["pretrain"]["eval_results"]["global_step"] == 3
    assert payload["bench_model"]["results"]
    assert payload["backends"]["passed"]
    assert "# GPU check: CPU (test run" in result.stdout
    # what comes back from a device machine: at most 8 files, at most 2 folders down
    files = sorted(str(path.relative_to(output)) for path in output.rglob("*") if path.is_file())
    assert files == [
        "gpu_check.json",
        "gpu_check.md",
        "logs/backends.log",
        "logs/bench_model.log",
        "logs/pretrain.log",
        "logs/pretrain_compile.log",
    ]
    assert not scratch_folders(tmp_path)  # removed when every step passed
