# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The logic of the GPU check, `benchmarks/gpu_check.sh OUTPUT_DIR`, which runs its three commands:

    python benchmarks/gpu_check.py plan OUTPUT_DIR --work DIR     # check the argument and the GPU, record the
                                                                  # environment, print the steps to run
    python benchmarks/gpu_check.py backends --output FILE         # every attention backend against eager
    python benchmarks/gpu_check.py report OUTPUT_DIR --work DIR   # OUTPUT_DIR/gpu_check.json and gpu_check.md

The steps (`plan_steps`): the backend comparison (`backends`: eager, sdpa and flex_attention in float32 and bfloat16,
FlashAttention 2/3 and the Hub's flash kernels in bfloat16 where the machine has them, forward and backward, on a
DiffCLIP attention layer of ViT-B/16 width and on the demo's tiny model, and which SDPA kernel the fused path
reaches), `bench_model.py` at ViT-B/16 in bfloat16, the demo pretraining in bf16 and a `--torch_compile` training
run. Each step has a time limit; together they stay under 8 minutes.
"""

import argparse
import copy
import importlib.util
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]
USAGE = "usage: bash benchmarks/gpu_check.sh OUTPUT_DIR"
# The demo's own length (6 epochs of 20,000 captioned shapes in batches of 128), so that its zero-shot accuracy
# compares with the README's (about 75 % over 30 classes on CPU in float32).
DEMO_STEPS = 936
MIN_DEMO_TOP1 = 0.30  # 9 × chance: far below the demo's ~75 %, far above what a broken bf16 run reaches
COMPILE_STEPS = 10
PAPER_IMAGES_PER_S = 370  # the paper's pretraining throughput per A100 (ViT-B/16)
TOTAL_LIMIT_S = 480  # the whole check, limits of every step and the plan and report included
PLAN_LIMIT_S, REPORT_LIMIT_S, KILL_AFTER_S = 60, 20, 5  # must match gpu_check.sh
# Pass limits of the backend comparison (see `tolerance_rule`): relative errors ‖x − x_ref‖ / ‖x_ref‖.
FLOAT32_LIMIT = 1e-4
BFLOAT16_LIMIT = 2e-2
BFLOAT16_SLACK = 2.0
# A parameter whose gradient vanishes in exact arithmetic (the key bias: softmax ignores a shift of a query's scores)
# has a gradient of rounding noise: each parameter's error is taken relative to its gradient's norm or to this
# multiple of the module's RMS gradient (× √size), whichever is larger.
GRADIENT_FLOOR = 1.0
LOG_TAIL_LINES = 30


def tolerance_rule() -> str:
    return (
        "errors are relative, ‖x − x_ref‖ / ‖x_ref‖ (Frobenius norms, in float64), of the output, the input gradient, "
        "all parameter gradients together and each parameter gradient (relative to its norm or to the "
        "module's RMS gradient × √size, whichever is larger, since some gradients are rounding noise: the key "
        "bias's, which softmax ignores). **float32** (TF32 off): every one of them within "
        f"{FLOAT32_LIMIT:g} of eager float32. **bfloat16**: the output, the input gradient and all parameter "
        "gradients together no further from eager *float32* than "
        f"max({BFLOAT16_LIMIT:g}, {BFLOAT16_SLACK:g} × eager bfloat16's own error); the errors against eager "
        "bfloat16 are shown too, but do not decide: with 8 bits of mantissa, two exact backends round differently, "
        "and a small gradient (a λ vector's, after cancellation) can be mostly rounding in both"
    )


# ------------------------------------------------------------------------------------------------------------ plan


@dataclass
class Step:
    """One command of the check: steps of the same `group` run at the same time, groups one after the other."""

    name: str
    group: int
    limit_s: int
    script: str  # relative to the repository root
    args: list[str]
    title: str

    def command(self) -> str:
        return shlex.join([sys.executable, self.script, *self.args])


def bench_batch_size(gpu_memory_gib: float | None) -> int:
    """The ViT-B/16 training batch of bench_model: 256 (the paper's per-GPU batch scale) where memory allows; eager
    and the reference keep both N×N maps of every layer (about 35 GiB at 256)."""
    if gpu_memory_gib is None or gpu_memory_gib >= 70:
        return 256
    return 128 if gpu_memory_gib >= 35 else 64 if gpu_memory_gib >= 18 else 32


def data_workers(cpu_count: int | None) -> int:
    return min(8, max(1, (cpu_count or 2) // 2))


def plan_steps(work: Path, cpu_test: bool = False, gpu_memory_gib: float | None = None, cpu_count=None) -> list[Step]:
    """The steps and their exact command lines (tests parse them with each script's own parser). Group 1 runs at
    once: the backend comparison and the compiled run spend most of their time compiling on the CPU, and the demo's
    accuracy does not depend on its speed; bench_model then has the machine to itself."""
    workers = str(data_workers(cpu_count))
    if cpu_test:  # tests only: the same steps at CPU sizes, to run the driver end to end
        return [
            Step("backends", 1, 600, "benchmarks/gpu_check.py", ["backends", "--output", str(work / "backends.json"),
                 "--allow_cpu", "--size", "tiny", "--backends", "eager", "sdpa"], "attention backends"),
            Step("pretrain", 1, 600, "examples/pretrain.py", ["--output_dir", str(work / "pretrain"),
                 "--mixed_precision", "no", "--max_steps", "3", "--logging_steps", "1", "--num_workers", "0",
                 "--per_device_batch_size", "32"], "demo pretraining"),
            # compiling takes minutes on a small CPU: the step runs uncompiled there
            Step("pretrain_compile", 1, 600, "examples/pretrain.py", ["--output_dir", str(work / "pretrain-compile"),
                 "--mixed_precision", "no", "--max_steps", "2", "--logging_steps", "1", "--num_workers", "0",
                 "--per_device_batch_size", "32"], "training (uncompiled on CPU)"),
            Step("bench_model", 2, 600, "benchmarks/bench_model.py", ["--device", "cpu", "--dtype", "bfloat16",
                 "--shapes", "tiny", "--batch_size", "4", "--modes", "forward", "train", "--repeats", "2",
                 "--warmup", "0", "--output", str(work / "bench_model.json")], "whole model"),
        ]  # fmt: skip
    return [
        Step("backends", 1, 175, "benchmarks/gpu_check.py", ["backends", "--output", str(work / "backends.json")],
             "attention backends against eager, SDPA kernels"),
        Step("pretrain", 1, 175, "examples/pretrain.py", ["--output_dir", str(work / "pretrain"), "--mixed_precision",
             "bf16", "--max_steps", str(DEMO_STEPS), "--num_workers", workers], "demo pretraining (bf16)"),
        Step("pretrain_compile", 1, 175, "examples/pretrain.py", ["--output_dir", str(work / "pretrain-compile"),
             "--mixed_precision", "bf16", "--torch_compile", "--max_steps", str(COMPILE_STEPS), "--logging_steps",
             "1", "--num_workers", "2"], "torch.compile training (bf16, tiny model)"),
        Step("bench_model", 2, 205, "benchmarks/bench_model.py", ["--device", "cuda", "--dtype", "bfloat16",
             "--shapes", "vit-b-16", "--batch_size", str(bench_batch_size(gpu_memory_gib)), "--modes", "forward",
             "train", "--repeats", "20", "--warmup", "3", "--output", str(work / "bench_model.json")],
             "whole model at ViT-B/16 (bench_model.py)"),
    ]  # fmt: skip


def worst_case_seconds(steps: list[Step]) -> int:
    """The check's longest possible run: plan and report, and each group's longest limit (with the kill grace)."""
    groups = {}
    for step in steps:
        groups[step.group] = max(groups.get(step.group, 0), step.limit_s + KILL_AFTER_S)
    return PLAN_LIMIT_S + REPORT_LIMIT_S + 2 * KILL_AFTER_S + sum(groups.values())


class UsageError(Exception):
    """A wrong OUTPUT_DIR: reported as one line, exit status 2."""


def check_output_dir(path: str) -> Path:
    """OUTPUT_DIR must be a folder or creatable as one; it is created later, once the GPU is there."""
    if not path or path.startswith("-") or "\n" in path:
        raise UsageError(f"{USAGE} (not an output folder: {path!r})")
    output = Path(path)
    if output.exists() and not output.is_dir():
        raise UsageError(f"{USAGE} ({path} exists and is not a folder)")
    parent = next((p for p in [output, *output.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{USAGE} ({path}: {parent} is not a writable folder)")
    return output


def cuda_status() -> tuple[bool, str]:
    """Whether CUDA works, and a line that says why not."""
    try:
        with warnings.catch_warnings():  # a CUDA build without a driver warns on its first query
            warnings.simplefilter("ignore")
            import torch

            if torch.cuda.is_available():
                return True, ""
            return False, "torch.cuda.is_available() is False"
    except Exception as error:  # torch missing or broken
        return False, f"torch does not import: {type(error).__name__}: {error}".splitlines()[0]


def nvidia_smi() -> dict:
    """Driver version, GPU name and memory as nvidia-smi reports them, where it is installed."""
    fields = ["name", "driver_version", "memory.total", "compute_mode"]
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return {"error": f"nvidia-smi: {error}".splitlines()[0]}
    if out.returncode != 0:
        return {"error": f"nvidia-smi exited {out.returncode}: {(out.stderr or out.stdout).strip()[:200]}"}
    first = out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""
    values = [value.strip() for value in first.split(",")]
    return dict(zip(["gpu", "driver_version", "memory_total_mib", "compute_mode"], values, strict=False))


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict:
    """The machine and software the check ran on."""
    import datetime

    import torch

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        **{name: package_version(name) for name in ("transformers", "accelerate", "datasets", "triton")},
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "git_commit": _git("rev-parse", "--short=12", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(properties.total_memory / 2**30, 1),
            compute_capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            multiprocessors=properties.multi_processor_count,
        )
        smi = nvidia_smi()
        info["driver_version"] = smi.get("driver_version")
        info["compute_mode"] = smi.get("compute_mode")
        if "error" in smi:
            info["nvidia_smi"] = smi["error"]
    return info


def missing_requirements(env: dict) -> list[str]:
    """What the steps need and this Python lacks (pyproject.toml's versions), one line each."""
    import importlib.util

    lines = []
    if not _at_least(env.get("transformers"), (5, 0)):
        lines.append(f"transformers {env.get('transformers')} is installed; this project needs >= 5.0")
    for name, steps in (("accelerate", "pretrain, pretrain_compile"), ("datasets", "pretrain, pretrain_compile")):
        if importlib.util.find_spec(name) is None:
            lines.append(f"{name} is not installed: {steps} will fail (pip install -e '.[dev]')")
    return lines


def _at_least(version: str | None, minimum: tuple) -> bool:
    try:
        return tuple(int(part) for part in version.split(".")[:2]) >= minimum
    except (AttributeError, ValueError):
        return False


def _git(*args) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def plan(args) -> int:
    """Check OUTPUT_DIR and CUDA, record the environment and the plan in --work, print the steps (tab-separated:
    group, name, limit in seconds, command)."""
    output = check_output_dir(args.output_dir)
    available, why = cuda_status()
    if not available and not args.allow_cpu:
        print(f"error: no CUDA GPU: {why}", file=sys.stderr)
        return 1
    device = "cuda" if available else "cpu"
    (output / "logs").mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    steps = plan_steps(
        work, cpu_test=device == "cpu", gpu_memory_gib=env.get("gpu_memory_gib"), cpu_count=os.cpu_count()
    )
    settings = {
        "device": device,
        "cpu_test": device == "cpu",
        "min_demo_top1": MIN_DEMO_TOP1 if device == "cuda" else None,
        "demo_steps": DEMO_STEPS,
        "worst_case_s": worst_case_seconds(steps),
        "limit_s": TOTAL_LIMIT_S,
        "steps": [asdict(step) | {"command": step.command()} for step in steps],
    }
    for line in missing_requirements(env):  # the steps that need them will fail, and say so; the others run
        print(f"warning: {line}", file=sys.stderr)
    write_json(work / "environment.json", env)
    write_json(work / "plan.json", settings)
    for step in steps:
        print(f"{step.group}\t{step.name}\t{step.limit_s}\t{step.command()}")
    return 0


def write_json(path: Path, payload) -> None:
    from diffclip_lab.core.files import atomic_write_text

    atomic_write_text(path, json.dumps(_finite(payload), indent=2) + "\n")


def _finite(value):
    """JSON has no NaN or infinity: such floats become the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


# -------------------------------------------------------------------------------------------- backends against eager


BACKENDS = ("eager", "sdpa", "flex_attention")
# FlashAttention as Transformers runs it (bfloat16 only: it has no float32 kernel): the flash-attn packages, else the
# Hub's kernels (which need the `kernels` package and the Hub, or its cache). Recorded as not run where unavailable.
FLASH_BACKENDS = (
    "flash_attention_2",
    "flash_attention_3",
    "kernels-community/flash-attn2",
    "kernels-community/vllm-flash-attn3",
)
DTYPES = ("float32", "bfloat16")
# aten operators behind F.scaled_dot_product_attention, by the kernel they run
SDPA_KERNELS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cuDNN",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_attention_math_for_mps": "math",
}
FUSED_KERNELS = {"flash", "flash (CPU)", "memory-efficient", "cuDNN"}


@dataclass
class Target:
    """What the backends are compared on: a module per backend (one set of weights), its inputs, and a step that
    returns (output, scalar loss)."""

    name: str
    description: str
    build: object  # backend -> module (float32, CPU)
    inputs: dict  # name -> CPU float32 or integer tensor
    input_name: str  # the floating input whose gradient is compared
    run: object  # (module, inputs on device) -> (output, loss)


def layer_target(size: str, batch_size: int) -> Target:
    """One DiffCLIPAttention of ViT-B/16's vision width (768, 12 heads of 64, 197 tokens) or a tiny one."""
    import torch

    from diffclip_lab.benchmarking.harness import randomise
    from modeling_diffclip import DiffCLIPAttention, DiffCLIPVisionConfig

    width, heads, tokens = (768, 12, 197) if size == "full" else (64, 4, 17)

    def make(backend):
        config = DiffCLIPVisionConfig(hidden_size=width, num_attention_heads=heads)
        config._attn_implementation = backend
        return DiffCLIPAttention(config, layer_idx=3)

    torch.manual_seed(0)
    base = make("eager")
    randomise(base)
    weights = base.state_dict()

    def build(backend):
        module = make(backend)
        module.load_state_dict(weights)
        return module

    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(batch_size, tokens, width, generator=generator)
    probe = torch.randn(batch_size, tokens, width, generator=generator)

    def run(module, inputs):
        out = module(inputs["hidden_states"])[0]
        return out, (out.float() * probe.to(out.device)).sum()

    description = f"DiffCLIPAttention, width {width}, {heads} heads, batch {batch_size} × {tokens} tokens"
    return Target("attention layer", description, build, {"hidden_states": hidden}, "hidden_states", run)


def model_target(batch_size: int) -> Target:
    """The demo's tiny DiffCLIPModel (examples/pretrain.py), captions of several lengths (padding masked), with its
    contrastive loss."""
    import torch

    from diffclip_lab.benchmarking.harness import randomise
    from diffclip_lab.training.recipes import MODEL_CONFIGS
    from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel

    config = DiffCLIPConfig(**MODEL_CONFIGS["tiny"])
    torch.manual_seed(0)
    base = DiffCLIPModel(config)
    randomise(base)
    weights = base.state_dict()

    def build(backend):
        model = DiffCLIPModel._from_config(copy.deepcopy(config), attn_implementation=backend)
        model.load_state_dict(weights)
        return model

    text, vision = config.text_config, config.vision_config
    generator = torch.Generator().manual_seed(1)
    context = text.max_position_embeddings
    input_ids = torch.randint(1, text.bos_token_id, (batch_size, context), generator=generator)
    lengths = torch.randint(3, context + 1, (batch_size,), generator=generator)
    lengths[0] = context  # one full-length caption
    positions = torch.arange(context)[None, :]
    attention_mask = (positions < lengths[:, None]).long()
    input_ids[:, 0] = text.bos_token_id
    input_ids[torch.arange(batch_size), lengths - 1] = text.eos_token_id
    input_ids = input_ids.masked_fill(attention_mask == 0, text.pad_token_id or 0)
    pixels = torch.randn(batch_size, vision.num_channels, vision.image_size, vision.image_size, generator=generator)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixels}

    def run(model, inputs):
        out = model(**inputs, return_loss=True)
        return out.logits_per_image, out.loss

    description = (
        f"DiffCLIPModel, the demo's tiny config (width 64, 4 heads, 2 layers per tower), batch {batch_size}: "
        f"{(vision.image_size // vision.patch_size) ** 2 + 1} image tokens, captions of {context} tokens with padding"
    )
    return Target("tiny model", description, build, inputs, "pixel_values", run)


def _on(inputs: dict, device: str, dtype, grad: bool) -> dict:
    """Fresh copies of the inputs on `device`, floating ones in `dtype` (leaves that require grad when `grad`)."""
    return {
        name: (
            value.to(device=device, dtype=dtype, copy=True).requires_grad_(grad)
            if value.is_floating_point()
            else value.to(device=device, copy=True)
        )
        for name, value in inputs.items()
    }


def run_backend(target: Target, backend: str, dtype_name: str, device: str, backward: bool) -> dict:
    """Output, input gradient and parameter gradients (float64, on the CPU) of one step of `backend`."""
    import torch

    dtype = getattr(torch, dtype_name)
    module = target.build(backend).to(device=device, dtype=dtype)
    module.train(backward)  # no dropout in these configs: train mode changes nothing but what flex compiles
    inputs = _on(target.inputs, device, dtype, backward)
    with torch.set_grad_enabled(backward):
        output, loss = target.run(module, inputs)
        if backward:
            loss.backward()
    result = {"output": output.detach().double().cpu()}
    if backward:
        result["input_grad"] = inputs[target.input_name].grad.double().cpu()
        result["params"] = {
            name: parameter.grad.double().cpu()
            for name, parameter in module.named_parameters()
            if parameter.grad is not None
        }
    return result


def relative_error(actual, expected) -> float:
    """‖actual − expected‖ / ‖expected‖ (0 when both are zero, inf when only `expected` is)."""
    difference = (actual - expected).norm().item()
    reference = expected.norm().item()
    if reference == 0:
        return 0.0 if difference == 0 else math.inf
    return difference / reference


def compare(result: dict, expected: dict) -> dict:
    """Relative errors of the output, the input gradient, all parameter gradients together, and the worst single
    parameter gradient (with the `GRADIENT_FLOOR`) and its name."""
    import torch

    errors = {"output": relative_error(result["output"], expected["output"])}
    if "input_grad" not in result or "input_grad" not in expected:
        return errors
    errors["input_grad"] = relative_error(result["input_grad"], expected["input_grad"])
    names = sorted(expected["params"].keys() | result["params"].keys())
    missing = [name for name in names if name not in result["params"] or name not in expected["params"]]
    if missing:  # a gradient one backend computes and the other does not
        errors.update(param_grads=math.inf, worst_param_grad=math.inf, worst_param=missing[0])
        return errors
    flat = [torch.cat([grads[name].flatten() for name in names]) for grads in (result["params"], expected["params"])]
    errors["param_grads"] = relative_error(*flat)
    rms = flat[1].norm().item() / math.sqrt(flat[1].numel())
    worst_name, worst = None, -1.0
    for name in names:
        actual, reference = result["params"][name], expected["params"][name]
        scale = max(reference.norm().item(), GRADIENT_FLOOR * rms * math.sqrt(reference.numel()))
        difference = (actual - reference).norm().item()
        error = difference / scale if scale > 0 else (0.0 if difference == 0 else math.inf)
        if not error <= worst:  # NaN counts as the worst
            worst_name, worst = name, error
    errors.update(worst_param_grad=worst, worst_param=worst_name, param_count=len(names))
    return errors


FLOAT32_KEYS = ("output", "input_grad", "param_grads", "worst_param_grad")
BFLOAT16_KEYS = ("output", "input_grad", "param_grads")


def sdpa_kernels_used(step) -> dict:
    """The SDPA operators one call of `step` dispatches to, counted, from the profiler's CPU-side operator events
    (which name the kernel on every device; no CUPTI needed)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    counts = {}
    for event in prof.events():
        if event.name.startswith("aten::_scaled_dot_product"):
            counts[event.name] = counts.get(event.name, 0) + 1
    forward = {SDPA_KERNELS.get(name, name): n for name, n in counts.items() if not name.endswith("_backward")}
    backward = {
        SDPA_KERNELS.get(name.removesuffix("_backward"), name): n
        for name, n in counts.items()
        if name.endswith("_backward")
    }
    return {"forward": forward, "backward": backward, "operators": counts}


def forced_kernel(target: Target, dtype_name: str, device: str, kernel: str, expected: dict) -> dict:
    """Run the sdpa backend (forward and backward) with SDPA restricted to one kernel: whether it accepts these
    tensors (and why not, from PyTorch's warnings), and its error against eager."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, kernel, None)
    if backend is None:
        return {"kernel": kernel, "ran": False, "reason": "not in this torch"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel([backend]):
                result = run_backend(target, "sdpa", dtype_name, device, backward=True)
        except Exception as error:  # RuntimeError where no kernel is left; any other: recorded all the same
            # On CUDA, PyTorch warns why each kernel refused the tensors (sdp_utils), then raises "no available
            # kernel"; on CPU, it only raises
            messages = [str(w.message) for w in caught if "sdp_utils" in str(w.message)]
            reasons = list(dict.fromkeys(" ".join(m.split("(Triggered internally")[0].split()) for m in messages))
            reason = " / ".join(r for r in reasons if r) or f"{type(error).__name__}: {error}".splitlines()[0]
            return {"kernel": kernel, "ran": False, "reason": reason[:300]}
    errors = compare(result, expected)
    return {"kernel": kernel, "ran": True, "output_error": errors["output"], "input_grad_error": errors["input_grad"]}


def flash_unavailable(backend: str, device: str) -> str | None:
    """Why a FlashAttention backend cannot run here, in one line (Transformers' own check names what is missing), or
    None when it can."""
    if device != "cuda":
        return "needs a CUDA GPU"
    if "/" in backend and importlib.util.find_spec("kernels") is None:
        return "needs the kernels package (and the Hub, or its cache)"
    from diffclip_lab.training.recipes import MODEL_CONFIGS
    from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel

    try:
        DiffCLIPModel._from_config(DiffCLIPConfig(**MODEL_CONFIGS["tiny"]), attn_implementation=backend)
    except Exception as error:
        return f"{type(error).__name__}: {error}".splitlines()[0][:300]
    return None


def backends_check(args) -> int:
    """Every backend against eager, per target and dtype, written to --output after each case (a time limit keeps
    what is done); exit status 0 when every case ran and passed."""
    import torch
    import torch._dynamo

    available = torch.cuda.is_available()
    if not available and not args.allow_cpu:
        print("error: no CUDA GPU: torch.cuda.is_available() is False", file=sys.stderr)
        return 1
    device = "cuda" if available else "cpu"
    torch.set_float32_matmul_precision("highest")  # float32 is float32: no TF32 in matrix products or convolutions
    torch.backends.cudnn.allow_tf32 = False
    for name in ("recompile_limit", "cache_size_limit"):  # flex_attention compiles once per shape and dtype
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    full = args.size == "full"
    targets = [
        layer_target(args.size, args.layer_batch or (32 if full else 2)),
        model_target(args.model_batch or (16 if full else 4)),
    ]
    unavailable = {b: reason for b in args.backends if b in FLASH_BACKENDS if (reason := flash_unavailable(b, device))}
    backends = [backend for backend in args.backends if backend not in unavailable]
    # FlashAttention has no float32 kernel
    dtypes_of = {b: [d for d in args.dtypes if b not in FLASH_BACKENDS or d != "float32"] for b in backends}
    # flex_attention has no backward on CPU
    backward_on = {backend: not (device == "cpu" and backend == "flex_attention") for backend in backends}
    payload = {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if available else None,
        "torch": torch.__version__,
        "size": args.size,
        "targets": {target.name: target.description for target in targets},
        "limits": {"float32": FLOAT32_LIMIT, "bfloat16": BFLOAT16_LIMIT, "bfloat16_slack": BFLOAT16_SLACK},
        "gradient_floor": GRADIENT_FLOOR,
        "tolerance_rule": tolerance_rule(),
        "cases": [],
        "kernels": [],
        "planned_cases": len(targets) * sum(len(dtypes) for dtypes in dtypes_of.values()),
        "not_run": unavailable,
        "passed": False,
    }

    def save():
        cases_ok = all(case["passed"] for case in payload["cases"])
        kernels_ok = all(kernel["passed"] for kernel in payload["kernels"])
        complete = len(payload["cases"]) == payload["planned_cases"]
        payload["passed"] = bool(cases_ok and kernels_ok and complete)
        write_json(args.output, payload)

    references, done = {}, []  # (target, dtype) -> eager's result; every case run, eager's too when not asked for
    # eager and sdpa first, flex_attention (which compiles) last: a time limit then costs the flex cases only
    order = [b for b in backends if b != "flex_attention"] + [b for b in backends if b == "flex_attention"]
    if "eager" not in order:
        order.insert(0, "eager")
    for backend in order:
        for dtype_name in dtypes_of.get(backend, args.dtypes):
            for target in targets:
                key = (target.name, dtype_name)
                backward = backward_on.get(backend, True)
                case = {
                    "target": target.name,
                    "dtype": dtype_name,
                    "backend": backend,
                    "device": device,
                    "mode": "forward + backward" if backward else "forward (no backward on CPU)",
                }
                start = time.perf_counter()
                try:
                    result = run_backend(target, backend, dtype_name, device, backward)
                    if backend == "eager":
                        references[key] = result
                    case["errors"] = compare(result, references[key])
                    if dtype_name != "float32" and (target.name, "float32") in references:
                        case["errors_vs_eager_float32"] = compare(result, references[(target.name, "float32")])
                    case["error"] = None
                except Exception as error:  # recorded; the next case runs
                    case["errors"], case["error"] = None, f"{type(error).__name__}: {error}".splitlines()[0][:500]
                    if device == "cuda":
                        torch.cuda.empty_cache()
                case["seconds"] = round(time.perf_counter() - start, 2)
                case["passed"] = case_passed(case, done)
                done.append(case)
                if backend in backends:
                    payload["cases"].append(case)
                    print(case_line(case), flush=True)
                    save()
        if backend == "sdpa":
            for dtype_name in args.dtypes:
                for target in targets:
                    payload["kernels"].append(kernel_check(target, dtype_name, device, references))
                    print(kernel_line(payload["kernels"][-1]), flush=True)
                    save()
    save()
    print(f"backends check {'passed' if payload['passed'] else 'FAILED'}: {args.output}")
    return 0 if payload["passed"] else 1


def case_passed(case: dict, previous: list[dict]) -> bool:
    """Sets `case["limits"]` and says whether the case is within them (`tolerance_rule`)."""
    if case["error"] is not None or case["errors"] is None:
        return False
    if case["dtype"] == "float32" or "errors_vs_eager_float32" not in case:
        limit = FLOAT32_LIMIT if case["dtype"] == "float32" else BFLOAT16_LIMIT
        case["limits"] = {key: limit for key in FLOAT32_KEYS if key in case["errors"]}
        return all(case["errors"][key] <= limit for key in case["limits"])
    eager = next(
        (c for c in previous if (c["backend"], c["target"], c["dtype"]) == ("eager", case["target"], case["dtype"])),
        case if case["backend"] == "eager" else None,
    )
    if eager is None or "errors_vs_eager_float32" not in eager:
        return False
    own, eagers = case["errors_vs_eager_float32"], eager["errors_vs_eager_float32"]
    case["limits"] = {
        key: max(BFLOAT16_LIMIT, BFLOAT16_SLACK * eagers[key]) for key in BFLOAT16_KEYS if key in own and key in eagers
    }
    return all(own[key] <= limit for key, limit in case["limits"].items())


def kernel_check(target: Target, dtype_name: str, device: str, references: dict) -> dict:
    """Which SDPA kernel the fused path reaches by default (profiled), and which kernels accept its tensors."""
    record = {"target": target.name, "dtype": dtype_name, "device": device}
    try:
        record.update(sdpa_kernels_used(lambda: run_backend(target, "sdpa", dtype_name, device, backward=True)))
        record["error"] = None
    except Exception as error:
        record.update(forward={}, backward={}, operators={})
        record["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:500]
    expected = references.get((target.name, dtype_name))
    kernels = ["FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"]
    record["forced"] = (
        [] if expected is None else [forced_kernel(target, dtype_name, device, k, expected) for k in kernels]
    )
    forward = record["forward"]
    record["fused"] = bool(forward) and set(forward) <= FUSED_KERNELS
    record["passed"] = record["error"] is None and record["fused"]
    return record


def _number(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return "0" if value == 0 else f"{value:.1e}"


def case_line(case: dict) -> str:
    errors = case.get("errors_vs_eager_float32") or case["errors"] or {}
    against = "vs eager float32" if "errors_vs_eager_float32" in case else "vs eager"
    parts = against + ": " + ", ".join(f"{key} {_number(errors.get(key))}" for key in FLOAT32_KEYS if key in errors)
    status = "ok" if case["passed"] else "FAILED"
    what = case["error"] or parts
    return f"{case['target']}, {case['dtype']}, {case['backend']}: {status} ({what}; {case['seconds']} s)"


def kernel_line(record: dict) -> str:
    forced = ", ".join(f"{f['kernel']} {'ran' if f['ran'] else 'refused'}" for f in record["forced"])
    return (
        f"sdpa kernels, {record['target']}, {record['dtype']}: forward {record['forward']}, backward "
        f"{record['backward']}; forced: {forced}; {'fused' if record['passed'] else 'NOT FUSED'}"
    )


# ------------------------------------------------------------------------------------------------------------ report


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of a log, progress bars' carriage returns taken as line ends, long lines cut."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    rows = [row.rstrip() for row in text.replace("\r", "\n").split("\n")]
    rows = [row if len(row) <= 300 else row[:300] + " …" for row in rows if row.strip()]
    return rows[-lines:]


def read_steps(work: Path) -> dict:
    """name -> (exit status, seconds) from the driver's steps.tsv."""
    steps = {}
    try:
        lines = (work / "steps.tsv").read_text().splitlines()
    except OSError:
        return steps
    for line in lines:
        fields = line.split("\t")
        if len(fields) >= 3:
            try:
                steps[fields[0]] = (int(fields[1]), float(fields[2]))
            except ValueError:
                continue
    return steps


def training_summary(run_dir: Path) -> dict | None:
    """A pretrain.py run: its eval_results.json, the last logged loss and its throughput once past the first logged
    step (compilation, the loaders' start), from metrics.jsonl."""
    results = read_json(run_dir / "eval_results.json")
    records = []
    try:
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            records.append(json.loads(line))
    except (OSError, ValueError):
        pass
    if results is None and not records:
        return None
    summary = {"eval_results": results and {k: v for k, v in results.items() if k != "args"}}
    # images_per_second is cumulative from the loop's start: images_seen / elapsed
    elapsed = [
        (r["step"], r["images_seen"], r["images_seen"] / r["images_per_second"])
        for r in records
        if r.get("images_per_second") and r.get("images_seen") is not None and "step" in r
    ]
    if elapsed:
        summary["first_logged_step"], _, summary["seconds_to_first_logged_step"] = elapsed[0]
        summary["loop_seconds"] = elapsed[-1][2]
        summary["final_loss"] = records[-1].get("loss")
    if len(elapsed) >= 2:
        (step0, seen0, t0), (step1, seen1, t1) = elapsed[0], elapsed[-1]
        summary["steady_images_per_s"] = (seen1 - seen0) / (t1 - t0) if t1 > t0 else None
        summary["steady_seconds_per_step"] = (t1 - t0) / (step1 - step0) if step1 > step0 else None
    return summary


def bench_summary(payload: dict | None) -> dict | None:
    """bench_model.json in the report's terms: per candidate and mode, samples/s, time and peak memory; the ratios;
    the targets of docs/performance.md."""
    if payload is None:
        return None
    results = {(r["mode"], r["candidate"]): r for r in payload["results"]}
    ratios = {(r["mode"], r["numerator"], r["denominator"]): r for r in payload["ratios"]}

    def ratio(mode, numerator, denominator, key="time_ratio_median"):
        record = ratios.get((mode, numerator, denominator))
        return None if record is None else record[key]

    targets = []
    for label, value, limit in [
        ("forward ≤ 1.05 × CLIP", ratio("forward", "diffclip-sdpa", "clip-sdpa"), 1.05),
        ("forward + backward ≤ 1.10 × CLIP", ratio("train", "diffclip-sdpa", "clip-sdpa"), 1.10),
        ("peak memory ≤ 1.05 × CLIP, inference", ratio("forward", "diffclip-sdpa", "clip-sdpa", "memory_ratio"), 1.05),
        ("peak memory ≤ 1.05 × CLIP, training", ratio("train", "diffclip-sdpa", "clip-sdpa", "memory_ratio"), 1.05),
        ("never slower than the reference, forward", ratio("forward", "diffclip-sdpa", "reference"), 1.0),
        ("never slower than the reference, training", ratio("train", "diffclip-sdpa", "reference"), 1.0),
    ]:
        targets.append({"target": label, "value": value, "met": None if value is None else value <= limit})
    train = results.get(("train", "diffclip-sdpa"))
    first = next(iter(results.values()), {})
    return {
        "batch_size": first.get("batch_size"),
        "shape": first.get("shape"),
        "tokens": first.get("tokens"),
        "repeats": payload.get("settings", {}).get("repeats"),
        "dtype": str(payload.get("settings", {}).get("dtype")).removeprefix("torch."),
        "results": payload["results"],
        "ratios": payload["ratios"],
        "targets": targets,
        "diffclip_sdpa_train_images_per_s": train and train["samples_per_s"],
        "paper_images_per_s_per_a100": PAPER_IMAGES_PER_S,
    }


def step_verdict(name: str, status: tuple | None, data, settings: dict, limit_s: int) -> tuple[str, str]:
    """(passed | failed | timed out | did not run, why) of one step from its exit status and what it wrote."""
    if status is None:
        return "did not run", "no exit status recorded"
    code, _ = status
    if code in (124, 137):
        return "timed out", f"stopped at its limit of {limit_s} s (exit {code})"
    if code != 0:
        return "failed", f"exit status {code}"
    if data is None:
        return "failed", "exited 0 but wrote no results"
    if name == "backends" and not data.get("passed"):
        return "failed", "a comparison or the kernel check failed"
    if name in ("pretrain", "pretrain_compile"):
        results = data.get("eval_results") or {}
        if "zeroshot_top1" not in results:
            return "failed", "no zero-shot accuracy in eval_results.json"
        minimum = settings.get("min_demo_top1")
        if name == "pretrain" and minimum is not None and results["zeroshot_top1"] < minimum:
            return "failed", f"zero-shot top-1 {results['zeroshot_top1']:.1%} is below {minimum:.0%}"
    return "passed", ""


def report(args) -> int:
    """Collect the steps' results into OUTPUT_DIR/gpu_check.json and gpu_check.md; print the Markdown; exit status
    0 when every step passed."""
    output, work = Path(args.output_dir), Path(args.work)
    settings = read_json(work / "plan.json") or {"steps": []}
    statuses = read_steps(work)
    data = {
        "backends": read_json(work / "backends.json"),
        "bench_model": bench_summary(read_json(work / "bench_model.json")),
        "pretrain": training_summary(work / "pretrain"),
        "pretrain_compile": training_summary(work / "pretrain-compile"),
    }
    steps = []
    for step in settings["steps"]:
        name = step["name"]
        verdict, why = step_verdict(name, statuses.get(name), data.get(name), settings, step["limit_s"])
        record = {
            "name": name,
            "title": step["title"],
            "status": verdict,
            "why": why,
            "exit_status": statuses[name][0] if name in statuses else None,
            "seconds": statuses[name][1] if name in statuses else None,
            "limit_s": step["limit_s"],
            "command": step["command"],
            "log": f"logs/{name}.log",
        }
        if verdict != "passed":
            record["log_tail"] = log_tail(output / "logs" / f"{name}.log")
        steps.append(record)
    payload = {
        "script": "gpu_check",
        "passed": bool(steps) and all(step["status"] == "passed" for step in steps),
        "environment": read_json(work / "environment.json"),
        "settings": {key: value for key, value in settings.items() if key != "steps"},
        "steps": steps,
        **data,
    }
    write_json(output / "gpu_check.json", payload)
    markdown = render_markdown(payload)
    from diffclip_lab.core.files import atomic_write_text

    atomic_write_text(output / "gpu_check.md", markdown)
    print(markdown, end="")
    return 0 if payload["passed"] else 1


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"


def _percent(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def _table(headers: list[str], rows: list[list]) -> str:
    from diffclip_lab.core.formatting import markdown_table

    return markdown_table(headers, rows, _fmt)


def render_markdown(payload: dict) -> str:
    env = payload.get("environment") or {}
    on_cpu = env.get("device") != "cuda"
    lines = [f"# GPU check: {env.get('gpu') or 'CPU (test run, not a GPU result)'}, {env.get('date', '')[:10]}", ""]
    lines += [
        f"**{'All steps passed' if payload['passed'] else 'Some steps did not pass'}.** Written by "
        "`bash benchmarks/gpu_check.sh OUTPUT_DIR` (`benchmarks/gpu_check.py`); every number below is in "
        "`gpu_check.json`, every step's output in `logs/`.",
        "",
    ]
    if on_cpu:
        lines += ["> Ran on CPU with `--allow_cpu` (the tests' mode), at CPU sizes: no GPU result.", ""]
    lines += ["## Summary", "", *summary_lines(payload), ""]
    lines += ["## Environment", "", _table(["", ""], [[key, _fmt(value)] for key, value in env.items()]), ""]
    lines += ["## Steps", ""]
    lines.append(
        _table(
            ["step", "what", "status", "seconds", "limit s"],
            [[s["name"], s["title"], s["status"] + (f": {s['why']}" if s["why"] else ""), s["seconds"], s["limit_s"]]
             for s in payload["steps"]],
        )
    )  # fmt: skip
    lines.append("")
    lines += backends_markdown(payload.get("backends"))
    lines += bench_markdown(payload.get("bench_model"), env)
    lines += training_markdown(payload.get("pretrain"), payload.get("pretrain_compile"), payload.get("settings", {}))
    failed = [step for step in payload["steps"] if step["status"] != "passed"]
    if failed:
        lines += ["## Failures", ""]
        for step in failed:
            lines += [f"**{step['name']}**: {step['status']}, {step['why']}. `{step['command']}`", ""]
            lines += ["```", *(step.get("log_tail") or ["(empty log)"]), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def summary_lines(payload: dict) -> list[str]:
    """The headline numbers, one bullet per step."""
    lines = []
    backends = payload.get("backends")
    if backends is not None:
        cases = backends["cases"]
        failed = [f"{c['target']} {c['dtype']} {c['backend']}" for c in cases if not c["passed"]]
        kernels = sorted({k for record in backends["kernels"] for k in record["forward"]})
        lines.append(
            f"- Backends against eager: {len(cases) - len(failed)} of {backends['planned_cases']} cases within their "
            f"limits{' (failed: ' + ', '.join(failed) + ')' if failed else ''}; the fused path ran "
            f"{', '.join(kernels) or 'no SDPA kernel'}"
            f"{'' if all(r['passed'] for r in backends['kernels']) else ', NOT always a fused kernel'}."
        )
    bench = payload.get("bench_model")
    if bench is not None:
        train = {r["candidate"]: r for r in bench["results"] if r["mode"] == "train"}
        ratios = {(r["mode"], r["numerator"], r["denominator"]): r for r in bench["ratios"]}
        clip = ratios.get(("train", "diffclip-sdpa", "clip-sdpa"))
        reference = ratios.get(("train", "diffclip-sdpa", "reference"))
        if "diffclip-sdpa" in train:
            lines.append(
                f"- Training step at batch {bench['batch_size']} ({bench['shape']}, {bench['dtype']}): DiffCLIP sdpa "
                f"{_fmt(train['diffclip-sdpa']['samples_per_s'])} pairs/s, CLIP "
                f"{_fmt(train.get('clip-sdpa', {}).get('samples_per_s'))}; DiffCLIP / CLIP time "
                f"{_fmt(clip and clip['time_ratio_median'])}, memory {_fmt(clip and clip['memory_ratio'])}; "
                f"DiffCLIP / reference time {_fmt(reference and reference['time_ratio_median'])}, memory "
                f"{_fmt(reference and reference['memory_ratio'])} (paper: ~{PAPER_IMAGES_PER_S} images/s per A100)."
            )
    for name, label in (("pretrain", "Demo pretraining"), ("pretrain_compile", "`--torch_compile` run")):
        summary = payload.get(name)
        results = (summary or {}).get("eval_results") or {}
        if "zeroshot_top1" in results:
            lines.append(
                f"- {label}: zero-shot top-1 {_percent(results['zeroshot_top1'])} after {results.get('global_step')} "
                f"steps; {_fmt(summary.get('seconds_to_first_logged_step'))} s to step "
                f"{summary.get('first_logged_step')}, then {_fmt(summary.get('steady_images_per_s'))} images/s."
            )
    failed = [s["name"] for s in payload["steps"] if s["status"] != "passed"]
    if failed:
        lines.append(f"- Did not pass: {', '.join(failed)} (see Failures).")
    return lines


def backends_markdown(backends: dict | None) -> list[str]:
    lines = ["## Attention backends against eager", ""]
    if backends is None:
        return lines + ["No results (see the step's log).", ""]
    lines += [f"On {backends['device']}{' (' + backends['gpu'] + ')' if backends.get('gpu') else ''}. Targets:", ""]
    lines += [f"- {name}: {description}" for name, description in backends["targets"].items()]
    lines += ["", f"Pass: {backends['tolerance_rule']}.", ""]
    rows = []
    for case in backends["cases"]:
        errors = case["errors"] or {}
        versus32 = case.get("errors_vs_eager_float32") or {}
        limits = case.get("limits") or {}
        rows.append(
            [
                case["target"],
                case["dtype"],
                case["backend"],
                case["mode"],
                _number(errors.get("output")),
                _number(errors.get("input_grad")),
                _number(errors.get("param_grads")),
                _number(errors.get("worst_param_grad"))
                + (f" ({errors['worst_param']})" if errors.get("worst_param") else ""),
                " / ".join(_number(versus32.get(key)) for key in BFLOAT16_KEYS if key in versus32) or "–",
                " / ".join(_number(limits[key]) for key in (*BFLOAT16_KEYS, "worst_param_grad") if key in limits)
                or "–",
                ("pass" if case["passed"] else "FAIL") + (f": {case['error']}" if case["error"] else ""),
                _fmt(case["seconds"]),
            ]
        )
    lines += [
        "Columns *output* to *worst param grad*: against eager in the same dtype; *vs eager fp32*: output / input "
        "grad / all param grads of a bfloat16 run against eager float32; *limits*: what decides, in that order.",
        "",
    ]
    lines.append(
        _table(
            ["target", "dtype", "backend", "mode", "output", "input grad", "param grads", "worst param grad",
             "vs eager fp32", "limits", "verdict", "s"],
            rows,
        )
    )  # fmt: skip
    done, planned = len(backends["cases"]), backends["planned_cases"]
    if done < planned:
        lines += ["", f"Only {done} of {planned} cases ran (the step stopped)."]
    for backend, reason in backends.get("not_run", {}).items():
        lines += ["", f"Not run, unavailable here: `{backend}` ({reason})."]
    lines += ["", "### SDPA kernels of the fused path", ""]
    lines += [
        "The kernel each `F.scaled_dot_product_attention` call of the `sdpa` backend dispatches to by default "
        "(profiled operators; calls per forward and backward step), and whether each kernel accepts the same "
        "tensors when SDPA is restricted to it (`torch.nn.attention.sdpa_kernel`), with its errors against eager "
        "in the same dtype. The fused path passes when every forward call reaches a fused kernel (flash, "
        "memory-efficient or cuDNN; on CPU, the CPU flash kernel), which fixes its backward kernel too.",
        "",
    ]
    rows = []
    for record in backends["kernels"]:
        forced = {f["kernel"]: f for f in record["forced"]}

        def cell(kernel, forced=forced):
            f = forced.get(kernel)
            if f is None:
                return "–"
            if not f["ran"]:
                reason = f["reason"] if len(f["reason"]) <= 120 else f["reason"][:120] + " …"
                return f"no: {reason}"
            return f"ran (output {_number(f['output_error'])}, input grad {_number(f['input_grad_error'])})"

        rows.append(
            [
                record["target"],
                record["dtype"],
                ", ".join(f"{k} × {n}" for k, n in record["forward"].items()) or (record["error"] or "none"),
                ", ".join(f"{k} × {n}" for k, n in record["backward"].items()) or "–",
                cell("FLASH_ATTENTION"),
                cell("EFFICIENT_ATTENTION"),
                cell("CUDNN_ATTENTION"),
                cell("MATH"),
                "fused" if record["passed"] else "NOT FUSED",
            ]
        )
    lines.append(
        _table(["target", "dtype", "forward kernel", "backward kernel", "flash only", "efficient only", "cuDNN only",
                "math only", "verdict"], rows)
    )  # fmt: skip
    return lines + [""]


def bench_markdown(bench: dict | None, env: dict) -> list[str]:
    lines = ["## Whole model (`bench_model.py`)", ""]
    if bench is None:
        return lines + ["No results (see the step's log).", ""]
    memory = (
        "`torch.cuda.max_memory_allocated` during one step, above what was allocated before"
        if env.get("device") == "cuda"
        else "tensors created during one step and alive at once (CPU tracking, see docs/performance.md)"
    )
    lines += [
        f"DiffCLIPModel (both towers differential, each attention backend) against CLIPModel of the same dimensions "
        f"and the reference implementation: shape `{bench['shape']}` ({bench['tokens']} image tokens, full-length "
        f"captions), batch {bench['batch_size']} image-text pairs, {bench['dtype']}, `--repeats "
        f"{bench['repeats']}`, interleaved. forward: inference; train: forward, contrastive loss, backward (no "
        f"optimizer). Peak memory: {memory}.",
        "",
    ]
    rows = []
    for r in bench["results"]:
        peak = r["peak_memory_bytes"]
        rows.append(
            [
                r["candidate"],
                r["mode"],
                r["samples_per_s"],
                1e3 * r["median_s"],
                f"{1e3 * r['q1_s']:.3g}–{1e3 * r['q3_s']:.3g}",
                None if peak is None else peak / 2**30,
                _number(r["max_abs_error"]),
            ]
        )
    lines.append(_table(["candidate", "mode", "pairs/s", "median ms", "IQR ms", "peak GiB", "max |Δ| vs eager"], rows))
    lines += [""]
    rows = [
        [
            r["mode"],
            f"{r['numerator']} / {r['denominator']}",
            r["time_ratio_median"],
            f"{r['time_ratio_q1']:.3f}–{r['time_ratio_q3']:.3f}",
            r["memory_ratio"],
        ]
        for r in bench["ratios"]
    ]
    lines.append(_table(["mode", "ratio", "time (median of paired ratios)", "IQR", "peak memory"], rows))
    lines += ["", "Targets (docs/performance.md), DiffCLIP `sdpa`:", ""]
    rows = [
        [t["target"], t["value"], "met" if t["met"] else "–" if t["met"] is None else "not met"]
        for t in bench["targets"]
    ]
    lines.append(_table(["target", "value", "verdict"], rows))
    ours = bench["diffclip_sdpa_train_images_per_s"]
    if ours:
        lines += [
            "",
            f"DiffCLIP `sdpa` trains at {ours:.0f} pairs/s on {env.get('gpu', 'this device')} "
            f"({ours / PAPER_IMAGES_PER_S:.2f} × the paper's ~{PAPER_IMAGES_PER_S} images/s per A100). Not like for "
            "like: the paper's figure is its whole pretraining (data loading, mixed precision, optimizer, 8 GPUs) "
            "on A100s; this is the model's forward and backward alone, in pure bfloat16.",
        ]
    return lines + [""]


def training_markdown(pretrain: dict | None, compiled: dict | None, settings: dict) -> list[str]:
    lines = ["## Pretraining (`examples/pretrain.py`, bf16)", ""]
    rows = []
    for name, summary in (("demo", pretrain), ("`--torch_compile`", compiled)):
        if summary is None:
            rows.append([name] + ["–"] * 8)
            continue
        results = summary.get("eval_results") or {}
        classes = results.get("num_classes")
        rows.append(
            [
                name,
                results.get("global_step"),
                results.get("global_batch_size"),
                _percent(results.get("zeroshot_top1")),
                _percent(results.get("zeroshot_top5")),
                _percent(None if not classes else 1 / classes),
                summary.get("final_loss"),
                summary.get("seconds_to_first_logged_step"),
                summary.get("steady_images_per_s"),
            ]
        )
    lines.append(
        _table(["run", "steps", "batch", "zero-shot top-1", "top-5", "chance", "final loss",
                "s to first logged step", "images/s after it"], rows)
    )  # fmt: skip
    minimum = settings.get("min_demo_top1")
    if settings.get("cpu_test"):
        lines += ["", "At CPU test sizes (a few steps, float32, uncompiled): no accuracy to compare."]
        return lines + [""]
    lines += [
        "",
        f"The demo run is the demo's whole schedule ({settings.get('demo_steps', DEMO_STEPS)} steps of 128 captioned "
        "shapes, 30 classes), in bf16 mixed precision: the README's float32 CPU run reaches about 75 % top-1"
        + (f"; the check fails it below {minimum:.0%}." if minimum else ".")
        + " Both runs shared the machine with the backend comparison (compiling), so their speeds are indicative.",
        "The `--torch_compile` run's first logged step includes compiling the training step; its zero-shot accuracy "
        "after so few steps only shows that the saved model loads and runs.",
    ]
    return lines + [""]


# -------------------------------------------------------------------------------------------------------------- CLI


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    # tests only: run on a machine without CUDA, at CPU sizes (not a GPU check)
    allow_cpu = dict(action="store_true", help=argparse.SUPPRESS)

    sub = commands.add_parser("plan", help="check OUTPUT_DIR and the GPU, record the environment, print the steps")
    sub.add_argument("output_dir")
    sub.add_argument("--work", required=True, help="scratch folder of this run")
    sub.add_argument("--allow_cpu", **allow_cpu)

    sub = commands.add_parser("backends", help="every attention backend against eager, and the SDPA kernel used")
    sub.add_argument("--output", type=Path, required=True, help="JSON file to write")
    all_backends = [*BACKENDS, *FLASH_BACKENDS]
    sub.add_argument("--backends", nargs="+", choices=all_backends, default=all_backends)
    sub.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    sub.add_argument("--size", choices=("full", "tiny"), default="full", help="full: ViT-B/16 width; tiny: tests")
    sub.add_argument("--layer_batch", type=int, help="batch of the attention layer (default 32; tiny 2)")
    sub.add_argument("--model_batch", type=int, help="batch of the tiny model (default 16; tiny 4)")
    sub.add_argument("--allow_cpu", **allow_cpu)

    sub = commands.add_parser("report", help="write OUTPUT_DIR/gpu_check.json and gpu_check.md from the steps")
    sub.add_argument("output_dir")
    sub.add_argument("--work", required=True)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "plan":
            return plan(args)
        if args.command == "backends":
            return backends_check(args)
        return report(args)
    except UsageError as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
