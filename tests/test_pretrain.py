"""examples/pretrain.py, run for real with `accelerate launch`: 1 and 2 CPU processes, resuming after SIGKILL,
streaming, bad samples, the demo, and the errors raised before training."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from conftest import (
    BAD_KEYS,
    CHECKPOINTED,
    COMMON,
    PRETRAIN,
    REPO_ROOT,
    STREAMED,
    accelerate_launch,
    load_script,
    run_metrics,
)
from eval_fixtures import write_clip_benchmark_classification
from safetensors.torch import load_file

from diffclip_lab.core.errors import UserError
from diffclip_lab.demo.shapes import render


pytestmark = pytest.mark.slow  # every test runs `accelerate launch` or uses a run it made


def launch(*args, **kwargs):
    return accelerate_launch(PRETRAIN, *args, **kwargs)


metrics = run_metrics


def test_two_processes_train_exactly_like_one(webdataset, one_process_run, tmp_path):
    one, _ = one_process_run
    two = tmp_path / "two"
    launch("--dataset", webdataset, "--output_dir", two, "--per_device_batch_size", 4, *COMMON, processes=2)
    results = json.loads((two / "eval_results.json").read_text())
    assert results["num_processes"] == 2
    assert results["distributed_type"] == "MULTI_CPU"
    assert results["global_batch_size"] == 8
    assert results["global_step"] == 12
    single, double = metrics(one), metrics(two)
    assert sorted(single) == sorted(double) == list(range(1, 13))
    for step in single:  # the same global batches and the same gradients, so the same losses
        assert double[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-4, abs=1e-5), step
    assert double[12]["skipped_samples"] == single[12]["skipped_samples"]


def test_fsdp_config_trains_like_one_process(webdataset, one_process_run, tmp_path):
    """The shipped FSDP config (with 2 CPU processes instead of 8 GPUs): parameters sharded, same training."""
    one, _ = one_process_run
    output = tmp_path / "fsdp"
    launch(
        "--dataset",
        webdataset,
        "--output_dir",
        output,
        "--per_device_batch_size",
        4,
        *COMMON,
        "--mixed_precision",
        "no",
        processes=2,
        config_file=REPO_ROOT / "examples/configs/fsdp.yaml",
    )
    assert json.loads((output / "eval_results.json").read_text())["num_processes"] == 2
    single, sharded = metrics(one), metrics(output)
    for step in (1, 6, 12):
        assert sharded[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-4, abs=1e-5), step
    full = load_file(output / "model" / "model.safetensors")  # gathered into one full state dict
    assert full.keys() == load_file(one / "model" / "model.safetensors").keys()


def test_bad_samples_are_skipped_and_counted(one_process_run):
    output, log = one_process_run
    # named by shard and key (24 samples per shard), with the reason
    assert "Skipped sample 00000.tar:000005 (image does not decode: not an image file Pillow can read)" in log
    assert "Skipped sample 00001.tar:000030 (image does not decode: " in log
    assert "Skipped sample 00000.tar:000017 (empty caption)" in log
    results = json.loads((output / "eval_results.json").read_text())
    # 12 steps of 8 = 96 samples = two epochs over 48, each epoch skipping the 3 broken samples
    assert results["skipped_samples"] == 2 * len(BAD_KEYS)
    assert results["global_step"] == 12
    assert results["num_processes"] == 1


def test_accumulated_micro_batches_train_as_one_batch_count_samples_and_resume(webdataset, one_process_run, tmp_path):
    one, _ = one_process_run
    output = tmp_path / "accumulated"
    args = ["--dataset", webdataset, "--output_dir", output, "--per_device_batch_size", 4]
    args += ["--gradient_accumulation_steps", 2, "--checkpointing_steps", 4, *COMMON]
    launch(*args)
    results = json.loads((output / "eval_results.json").read_text())
    # 12 steps of 2 micro-batches of 4 = 96 samples, two epochs over 48, each skipping the 3 broken samples
    assert results["global_batch_size"] == 8
    assert results["skipped_samples"] == 2 * len(BAD_KEYS)
    assert results["images_seen"] == 96 - 2 * len(BAD_KEYS) == metrics(output)[12]["images_seen"]
    single, accumulated = metrics(one), metrics(output)
    for step in single:  # the whole global batch as negatives: the losses and gradients of batches of 8
        assert accumulated[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-4, abs=1e-5), step

    finished = load_file(output / "model" / "model.safetensors")
    launch(*args, "--resume_from_checkpoint", output / "checkpoint-8")  # its steps 9 to 12 again
    for name, tensor in load_file(output / "model" / "model.safetensors").items():
        torch.testing.assert_close(tensor, finished[name], atol=1e-5, rtol=1e-5, msg=name)


def test_fine_tuning_a_saved_diffclip_says_where_it_came_from(webdataset, saved_tiny_models, tmp_path):
    """`--init_from` a DiffCLIP folder, evaluated at the end on CLIP Benchmark folders (what evaluate.py reads)."""
    colours = write_clip_benchmark_classification(tmp_path / "wds_colours")
    output = tmp_path / "tuned"
    source = saved_tiny_models["diffclip"]
    args = ["--init_from", source, "--dataset", webdataset, "--output_dir", output, "--per_device_batch_size", 8]
    launch(*args, "--max_steps", 2, "--num_workers", 0, "--eval_dataset", colours, "--eval_split", "test")
    results = json.loads((output / "eval_results.json").read_text())
    assert results["variant"] == "diffclip"
    assert results["num_classes"] == 3
    assert results["num_eval_examples"] == 12
    card = (output / "model" / "README.md").read_text()
    assert f"Fine-tuned from `{source}`" in card
    assert "from scratch" not in card


def test_loss_learning_rate_temperature_and_every_lambda_are_logged(one_process_run):
    output, _ = one_process_run
    record = metrics(output)[12]
    lambdas = {key for key in record if key.startswith("lambda/")}
    assert lambdas == {f"lambda/{tower}/layer_{i}" for tower in ("text", "vision") for i in range(2)}
    assert {"loss", "learning_rate", "logit_scale", "images_per_second"} <= set(record)
    assert metrics(output)[1]["loss"] > record["loss"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((output / "logs").rglob("events.out.tfevents.*")).parent)).Reload()
    assert {"loss", "lambda/vision/layer_1", "logit_scale"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("lambda/text/layer_0")) == 12


def test_checkpoints_are_complete_and_rotated(one_process_run):
    output, _ = one_process_run
    checkpoints = sorted(p.name for p in output.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-12", "checkpoint-8"]  # --checkpoints_total_limit 2
    assert not list(output.glob(".checkpoint-*"))
    state = json.loads((output / "checkpoint-12" / "training_state.json").read_text())
    assert state["global_step"] == 12
    assert state["epoch"] == 1


def test_a_run_killed_with_sigkill_resumes_to_the_same_model(webdataset, one_process_run, tmp_path):
    reference, _ = one_process_run
    output = tmp_path / "killed"
    args = ["--dataset", webdataset, "--output_dir", output, *CHECKPOINTED]
    killed = launch(*args, kill_at=".checkpoint-8", tmp_path=tmp_path)
    assert (output / "checkpoint-4").is_dir(), killed.stderr[-3000:]
    assert (output / ".checkpoint-8.tmp").is_dir()
    assert not (output / "checkpoint-8").exists()
    assert not (output / "eval_results.json").exists()

    launch(*args, "--resume_from_checkpoint", "latest")
    assert not list(output.glob(".checkpoint-*"))
    # The same batches, learning rates and optimizer state from step 5 on. Both runs are separate processes, whose
    # kernels may round differently, so the fp32 weights after 8 more AdamW steps (lr 1e-3) are compared at 1e-5:
    # a resume that changed the data, the schedule or the optimizer state moves them by 1e-4 or more.
    expected = load_file(reference / "model" / "model.safetensors")
    actual = load_file(output / "model" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)
    resumed, uninterrupted = metrics(output), metrics(reference)
    assert sorted(resumed) == list(range(1, 13))
    for step in range(5, 13):
        assert resumed[step]["loss"] == pytest.approx(uninterrupted[step]["loss"], rel=1e-5), step


def test_streaming_splits_shards_across_processes(webdataset, tmp_path):
    output = tmp_path / "streamed"
    launch("--dataset", webdataset, "--output_dir", output, *STREAMED, processes=2)
    results = json.loads((output / "eval_results.json").read_text())
    # one epoch: each process reads its own shard of 24, so every broken sample is met exactly once
    assert results["skipped_samples"] == len(BAD_KEYS)
    assert results["num_processes"] == 2


def test_demo_output_loads_in_the_pipeline(tmp_path):
    output = tmp_path / "demo"
    log = launch("--output_dir", output, "--max_steps", 20)
    results = json.loads((output / "eval_results.json").read_text())
    assert {"zeroshot_top1", "num_classes", "num_processes", "global_step", "args"} <= set(results)
    assert results["num_classes"] == 30
    assert results["global_step"] == 20
    assert "Zero-shot top-1 on the held-out split" in log
    from transformers import AutoProcessor, pipeline

    import modeling_diffclip  # noqa: F401  (registers the Auto classes)

    classify = pipeline("zero-shot-image-classification", model=str(output / "model"))
    image, _, _ = render(random.Random(7), 32)
    scores = classify(image, candidate_labels=["a red circle", "a blue star"])
    assert abs(sum(s["score"] for s in scores) - 1) < 1e-5
    assert AutoProcessor.from_pretrained(output / "model").tokenizer.model_max_length == 16
    card = (output / "model" / "README.md").read_text()
    assert "zeroshot_top1" in card
    assert "pipeline_tag: zero-shot-image-classification" in card


def test_errors_before_training(webdataset, one_process_run, saved_tiny_models, tmp_path):
    run, _ = one_process_run
    pretrain = load_script("examples/pretrain.py")
    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "holiday.jpg").write_bytes(b"precious")
    cases = [
        (["--dataset", str(tmp_path / "nowhere")], UserError, "not found"),
        (["--dataset", str(webdataset), "--caption_column", "caption"], UserError, r"no caption column.*__key__"),
        (
            ["--dataset", str(webdataset), "--global_batch_size", "10", "--gradient_accumulation_steps", "3"],
            UserError,
            "does not divide into 1 processes × 3 accumulation steps",
        ),
        (["--dataset", str(webdataset), "--streaming"], UserError, "give --max_steps"),
        (
            ["--dataset", str(webdataset), "--output_dir", str(run), "--per_device_batch_size", "8", *COMMON],
            UserError,
            "already holds a run",
        ),
        (
            [
                "--dataset",
                str(webdataset),
                "--output_dir",
                str(run),
                "--per_device_batch_size",
                "8",
                "--variant",
                "clip",
                "--resume_from_checkpoint",
                "latest",
                *COMMON,
            ],
            UserError,
            r"another run or model.*variant \('diffclip' vs 'clip'\)",
        ),
        (["--resume_from_checkpoint", str(webdataset)], UserError, "not a checkpoint of this script"),
        (
            ["--dataset", str(webdataset), "--per_device_batch_size", "8", "--max_steps", "2", "--warmup_epochs", "5"],
            UserError,
            r"the warm-up \(30 steps\) is longer than the run \(2 steps\)",
        ),
        (["--model_config", "vit-h-14"], UserError, "not one of"),
        (["--init_from", str(tmp_path / "runs/x/model")], UserError, "no such file or folder"),
        (
            ["--init_from", str(saved_tiny_models["clip"])],
            UserError,
            "is a 'clip' model, not a DiffCLIP: convert a Transformers CLIP first with python "
            "convert/convert_clip_to_diffclip.py",
        ),
        (
            ["--init_from", str(saved_tiny_models["diffclip"]), "--variant", "clip"],
            UserError,
            "--variant clip contradicts --init_from .*, which is diffclip",
        ),
        (["--push_to_hub", "--hub_model_id", "me/shapes"], UserError, "cannot push to me/shapes: HF_HUB_OFFLINE"),
        (
            ["--dataset", str(webdataset), "--output_dir", str(unrelated), "--per_device_batch_size", "8", *COMMON],
            UserError,
            "holds files that are not a run of this script",
        ),
    ]
    for argv, error, message in cases:
        output = ["--output_dir", str(tmp_path / "out")] if "--output_dir" not in argv else []
        with pytest.raises(error, match=message):
            pretrain.main([*argv, *output])
    assert not (tmp_path / "out").exists()  # the run folder gets its first file when training starts
    assert (unrelated / "holiday.jpg").read_bytes() == b"precious"
    assert list(unrelated.iterdir()) == [unrelated / "holiday.jpg"]


@pytest.mark.parametrize("option", ["--max_steps", "--num_epochs", "--per_device_batch_size", "--logging_steps"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_counts_below_one_are_refused(option, value, capsys):
    pretrain = load_script("examples/pretrain.py")
    with pytest.raises(SystemExit) as exit:
        pretrain.main([option, value])
    assert exit.value.code == 2
    assert f"argument {option}: {value} is below 1" in capsys.readouterr().err


def test_command_line_errors_are_one_line(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            PRETRAIN,
            "--output_dir",
            str(tmp_path),
            "--global_batch_size",
            "10",
            "--gradient_accumulation_steps",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1].startswith("error: --global_batch_size 10 does not divide")


def test_a_refused_run_leaves_no_folder_and_the_corrected_command_runs(webdataset, tmp_path):
    """The first round's finding: a run refused before training (here its warm-up) wrote run_config.json, and the
    corrected command was then refused as "already holds a run"."""
    pretrain = load_script("examples/pretrain.py")
    argv = ["--dataset", str(webdataset), "--output_dir", str(tmp_path / "run"), "--per_device_batch_size", "8"]
    argv += ["--max_steps", "1", "--num_workers", "0"]
    with pytest.raises(UserError, match="longer than the run"):
        pretrain.main([*argv, "--warmup_ratio", "0", "--warmup_epochs", "1"])
    assert not (tmp_path / "run").exists()
    assert pretrain.main(argv)["global_step"] == 1


@pytest.mark.parametrize("processes", [1, 2])
def test_a_user_error_under_accelerate_launch_quiet_is_its_one_line(processes, tmp_path):
    """`accelerate launch -q` (README, "When a run stops"): the script's line, without Accelerate's traceback of the
    launcher (a CalledProcessError repeating the child's stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--num_processes", str(processes)]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--multi_gpu", "--main_process_port", "0"] if processes > 1 else []
    command += [PRETRAIN, "--dataset", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "run")]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert 1 <= len(errors) <= processes  # each process says it once, unless stopped by torch as another fails
    assert all(f"dataset '{tmp_path / 'nowhere'}' not found" in line for line in errors)
    assert "Traceback (most recent call last)" not in completed.stderr
    assert "CalledProcessError" not in completed.stderr
    if processes == 1:
        assert lines == errors  # nothing else at all
    assert not (tmp_path / "run").exists()
