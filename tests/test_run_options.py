"""Run options checked before anything is written or loaded: the argparse types of diffclip_lab/core/cli.py, the
schedule checks of `BatchPlan`, `Run.check` writing nothing, and each script's own options."""

import argparse
import math
import re
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator
from conftest import REPO_ROOT, load_script

from diffclip_lab.core.cli import (
    area_fraction,
    beta,
    device,
    fraction,
    non_negative_float,
    positive_float,
    random_seed,
)
from diffclip_lab.core.errors import UserError
from diffclip_lab.training.runs import RUN_CONFIG, BatchPlan, Run


def test_number_types_take_their_range_and_refuse_the_rest():
    accepted = {
        positive_float: ["1e-3", "5"],
        non_negative_float: ["0", "0.5"],
        fraction: ["0", "1", "0.03"],
        beta: ["0", "0.98"],
        area_fraction: ["1", "0.08"],
        random_seed: ["0", str(2**32 - 1)],
    }
    refused = {
        positive_float: ["0", "-1", "nan", "inf", "fast"],
        non_negative_float: ["-0.1", "nan", "-inf"],
        fraction: ["-0.01", "1.5", "nan"],
        beta: ["1", "-0.1", "1.2"],
        area_fraction: ["0", "1.01"],
        random_seed: ["-1", str(2**32), "1.5"],
    }
    for kind, texts in accepted.items():
        for text in texts:
            assert kind(text) == float(text)
    for kind, texts in refused.items():
        for text in texts:
            with pytest.raises(argparse.ArgumentTypeError):
                kind(text)
    assert math.isclose(positive_float("1e-3"), 0.001)


PRETRAIN = "examples/pretrain.py"
TRAIN_VLM = "examples/train_vlm.py"


@pytest.mark.parametrize(
    ("script", "option", "value", "message"),
    [
        (PRETRAIN, "--learning_rate", "-1", "-1 is not above 0"),
        (PRETRAIN, "--learning_rate", "nan", "nan is not a finite number"),
        (PRETRAIN, "--weight_decay", "-0.1", "-0.1 is below 0"),
        (PRETRAIN, "--warmup_ratio", "1.5", r"1.5 is outside \[0, 1\]"),
        (PRETRAIN, "--warmup_epochs", "-1", "-1 is below 0"),
        (PRETRAIN, "--adam_beta1", "1", r"1 is outside \[0, 1\)"),
        (PRETRAIN, "--adam_beta2", "-0.5", r"-0.5 is outside \[0, 1\)"),
        (PRETRAIN, "--adam_epsilon", "0", "0 is not above 0"),
        (PRETRAIN, "--crop_scale", "0", r"0 is outside \(0, 1\]"),
        (PRETRAIN, "--seed", "-3", "-3 is below 0"),
        (PRETRAIN, "--num_workers", "-1", "-1 is below 0"),
        (PRETRAIN, "--gradient_accumulation_steps", "0", "0 is below 1"),
        (PRETRAIN, "--checkpoints_total_limit", "0", "0 is below 1"),
        (PRETRAIN, "--shuffle_buffer", "0", "0 is below 1"),
        (TRAIN_VLM, "--learning_rate", "0", "0 is not above 0"),
        (TRAIN_VLM, "--warmup_ratio", "2", r"2 is outside \[0, 1\]"),
        (TRAIN_VLM, "--model_max_length", "0", "0 is below 1"),
        (TRAIN_VLM, "--num_workers", "-2", "-2 is below 0"),
    ],
)
def test_training_scripts_refuse_out_of_range_options_before_anything_else(
    script, option, value, message, tmp_path, capsys
):
    with pytest.raises(SystemExit) as exit:
        load_script(script).main([option, value, "--output_dir", str(tmp_path / "run")])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert re.search(f"argument {option}: {message}", err)
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def plan(**options) -> BatchPlan:
    defaults = dict(
        num_processes=1,
        gradient_accumulation_steps=1,
        per_device_batch_size=4,
        global_batch_size=None,
        dataset_length=40,
        max_steps=None,
        num_epochs=2,
        warmup_ratio=0.1,
        warmup_epochs=None,
    )
    return BatchPlan.build(**{**defaults, **options})


def test_the_schedule_is_checked_as_a_whole():
    assert plan().warmup_steps == 2  # 10 % of 2 epochs of 10 steps
    assert plan(warmup_epochs=1.0).warmup_steps == 10
    assert plan(warmup_ratio=1.0).warmup_steps == 20  # all warm-up: allowed
    with pytest.raises(UserError, match=r"the warm-up \(30 steps\) is longer than the run \(20 steps\)"):
        plan(warmup_epochs=3.0)
    with pytest.raises(UserError, match=r"the warm-up \(15 steps\) is longer than the run \(5 steps\)"):
        plan(max_steps=5, warmup_epochs=1.5)
    # a stream: warm-up epochs are a share of --num_epochs, and without them there is nothing to count in
    assert plan(dataset_length=None, max_steps=100, num_epochs=4, warmup_epochs=1.0).warmup_steps == 25
    with pytest.raises(UserError, match="no epochs to count the warm-up in"):
        plan(dataset_length=None, max_steps=100, num_epochs=None, warmup_epochs=1.0)
    with pytest.raises(UserError, match="fewer than one global batch"):
        plan(dataset_length=3)


def test_checking_a_run_folder_writes_nothing(tmp_path):
    accelerator = Accelerator(cpu=True)
    fresh = Run(accelerator, tmp_path / "fresh", {"seed": 0})
    assert fresh.check() is None
    assert not (tmp_path / "fresh").exists()
    fresh.record({"seed": 0})
    assert [path.name for path in (tmp_path / "fresh").iterdir()] == [RUN_CONFIG]
    with pytest.raises(UserError, match="already holds a run"):
        Run(accelerator, tmp_path / "fresh", {"seed": 0}).check()
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(UserError, match="is a file"):
        Run(accelerator, tmp_path / "a-file", {"seed": 0}).check()
    assert (tmp_path / "a-file").read_text() == "mine"


def test_devices_are_checked_against_this_machine():
    assert device("cpu") == "cpu"
    with pytest.raises(argparse.ArgumentTypeError, match="not a torch device"):
        device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(argparse.ArgumentTypeError, match="no such device"):
            device("cuda")
    with pytest.raises(argparse.ArgumentTypeError, match="no such device"):
        device(f"cuda:{torch.cuda.device_count()}")  # one past the last


def test_attention_maps_refuses_an_output_format_before_loading_anything(tmp_path, capsys):
    script = load_script("examples/attention_maps.py")
    with pytest.raises(SystemExit) as exit:
        script.main(["--model", "absent", "--image", "absent.png", "--query", "q", "--output", "maps.xyz"])
    assert exit.value.code == 2
    assert "--output maps.xyz: matplotlib writes no 'xyz' files" in capsys.readouterr().err


def test_an_option_error_is_one_line_not_the_usage(tmp_path):
    """The first round's finding: pretrain.py's 25 lines of usage before the error."""
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "pretrain.py"), "--learning_rate", "-1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        "pretrain.py: error: argument --learning_rate: -1 is not above 0 (--help lists the options)"
    ]
    assert list(tmp_path.iterdir()) == []
