# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The GPU check's report (`python benchmarks/gpu_check.py report OUTPUT_DIR --work DIR`): each step's verdict from its
exit status (the shell script's steps.tsv) and what it wrote, gathered into OUTPUT_DIR/gpu_check.json, and
OUTPUT_DIR/gpu_check.md, the same as Markdown for docs/performance.md. Imports no PyTorch: it has 20 seconds.
"""

import json
from pathlib import Path

from ..core.files import atomic_write_text, write_json
from ..core.formatting import format_measurement, markdown_table
from .gpu_backends import BFLOAT16_KEYS, error_cell
from .gpu_plan import DEMO_STEPS


PAPER_IMAGES_PER_S = 370  # the paper's pretraining throughput per A100 (ViT-B/16)
LOG_TAIL_LINES = 30


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
    atomic_write_text(output / "gpu_check.md", markdown)
    print(markdown, end="")
    return 0 if payload["passed"] else 1


def _percent(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def _table(headers: list[str], rows: list[list]) -> str:
    return markdown_table(headers, rows, format_measurement)


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
    lines += ["## Environment", "", _table(["", ""], [[key, value] for key, value in env.items()]), ""]
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
            speeds = [train["diffclip-sdpa"], train.get("clip-sdpa", {})]
            ours, clip_speed = (format_measurement(record.get("samples_per_s")) for record in speeds)
            clip_time, clip_memory, reference_time, reference_memory = (
                format_measurement(ratio and ratio[key])
                for ratio in (clip, reference)
                for key in ("time_ratio_median", "memory_ratio")
            )
            lines.append(
                f"- Training step at batch {bench['batch_size']} ({bench['shape']}, {bench['dtype']}): DiffCLIP sdpa "
                f"{ours} pairs/s, CLIP {clip_speed}; DiffCLIP / CLIP time {clip_time}, memory {clip_memory}; "
                f"DiffCLIP / reference time {reference_time}, memory {reference_memory} (paper: "
                f"~{PAPER_IMAGES_PER_S} images/s per A100)."
            )
    for name, label in (("pretrain", "Demo pretraining"), ("pretrain_compile", "`--torch_compile` run")):
        summary = payload.get(name)
        results = (summary or {}).get("eval_results") or {}
        if "zeroshot_top1" in results:
            lines.append(
                f"- {label}: zero-shot top-1 {_percent(results['zeroshot_top1'])} after {results.get('global_step')} "
                f"steps; {format_measurement(summary.get('seconds_to_first_logged_step'))} s to step "
                f"{summary.get('first_logged_step')}, then "
                f"{format_measurement(summary.get('steady_images_per_s'))} images/s."
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
                error_cell(errors.get("output")),
                error_cell(errors.get("input_grad")),
                error_cell(errors.get("param_grads")),
                error_cell(errors.get("worst_param_grad"))
                + (f" ({errors['worst_param']})" if errors.get("worst_param") else ""),
                " / ".join(error_cell(versus32.get(key)) for key in BFLOAT16_KEYS if key in versus32) or "–",
                " / ".join(error_cell(limits[key]) for key in (*BFLOAT16_KEYS, "worst_param_grad") if key in limits)
                or "–",
                ("pass" if case["passed"] else "FAIL") + (f": {case['error']}" if case["error"] else ""),
                format_measurement(case["seconds"]),
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
            return f"ran (output {error_cell(f['output_error'])}, input grad {error_cell(f['input_grad_error'])})"

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
                error_cell(r["max_abs_error"]),
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
