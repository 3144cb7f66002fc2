# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The GPU check's backend comparison (`python benchmarks/gpu_check.py backends --output FILE`): eager, sdpa and
flex_attention in float32 and bfloat16, FlashAttention 2/3 and the Hub's flash kernels in bfloat16 where the machine
has them, forward and backward, against eager, on a DiffCLIP attention layer of ViT-B/16 width and on the demo's tiny
model; and which SDPA kernel the fused path reaches. `tolerance_rule` says what passes.

PyTorch is imported inside the functions: gpu_check.py's parser (which names the backends) also serves the plan
command, which must report a missing or broken torch in one line.
"""

import copy
import importlib.util
import math
import time
import warnings
from dataclasses import dataclass

from ..core.errors import UserError
from ..core.files import write_json


# Pass limits of the backend comparison (see `tolerance_rule`): relative errors ‖x − x_ref‖ / ‖x_ref‖.
FLOAT32_LIMIT = 1e-4
BFLOAT16_LIMIT = 2e-2
BFLOAT16_SLACK = 2.0
# A parameter whose gradient vanishes in exact arithmetic (the key bias: softmax ignores a shift of a query's scores)
# has a gradient of rounding noise: each parameter's error is taken relative to its gradient's norm or to this
# multiple of the module's RMS gradient (× √size), whichever is larger.
GRADIENT_FLOOR = 1.0


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

    from modeling_diffclip import DiffCLIPAttention, DiffCLIPVisionConfig

    from .harness import randomise

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

    from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel

    from ..training.recipes import MODEL_CONFIGS
    from .harness import randomise

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
    from modeling_diffclip import DiffCLIPConfig, DiffCLIPModel

    from ..training.recipes import MODEL_CONFIGS

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
        raise UserError("no CUDA GPU: torch.cuda.is_available() is False")
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
                case = run_case(target, backend, dtype_name, device, backward_on.get(backend, True), references)
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


def run_case(target: Target, backend: str, dtype_name: str, device: str, backward: bool, references: dict) -> dict:
    """One backend on one target in one dtype against eager in the same dtype (and, in bfloat16, against eager
    float32), timed; eager's results are kept in `references`, (target, dtype) -> result. An exception is recorded
    in the case, so that the next case runs."""
    import torch

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
            references[target.name, dtype_name] = result
        case["errors"] = compare(result, references[target.name, dtype_name])
        if dtype_name != "float32" and (target.name, "float32") in references:
            case["errors_vs_eager_float32"] = compare(result, references[target.name, "float32"])
        case["error"] = None
    except Exception as error:
        case["errors"], case["error"] = None, f"{type(error).__name__}: {error}".splitlines()[0][:500]
        if device == "cuda":
            torch.cuda.empty_cache()
    case["seconds"] = round(time.perf_counter() - start, 2)
    return case


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


def error_cell(value) -> str:
    """A relative error in a table or a line: 2 significant digits, in scientific notation."""
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
    parts = against + ": " + ", ".join(f"{key} {error_cell(errors.get(key))}" for key in FLOAT32_KEYS if key in errors)
    status = "ok" if case["passed"] else "FAILED"
    what = case["error"] or parts
    return f"{case['target']}, {case['dtype']}, {case['backend']}: {status} ({what}; {case['seconds']} s)"


def kernel_line(record: dict) -> str:
    forced = ", ".join(f"{f['kernel']} {'ran' if f['ran'] else 'refused'}" for f in record["forced"])
    return (
        f"sdpa kernels, {record['target']}, {record['dtype']}: forward {record['forward']}, backward "
        f"{record['backward']}; forced: {forced}; {'fused' if record['passed'] else 'NOT FUSED'}"
    )
