"""The shipped multi-node config, run for real as two "machines" on 127.0.0.1: two `accelerate launch` invocations
with --num_machines 2 and their own --machine_rank, one CPU process each (gloo), joined by torch's rendezvous."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import BAD_KEYS, COMMON, PRETRAIN, REPO_ROOT, STREAMED, run_metrics
from safetensors.torch import load_file


pytestmark = pytest.mark.slow  # every test runs `accelerate launch`

MULTI_NODE = REPO_ROOT / "examples" / "configs" / "multi_node.yaml"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_machines(*args, processes=(1, 1), timeout=600) -> list[subprocess.CompletedProcess]:
    """One `accelerate launch` per machine, as on a cluster: the shipped config, each machine's rank and process
    count, rank 0's address and port. Returns every machine's completed launcher."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    port = free_port()
    machines = []
    for rank, count in enumerate(processes):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(MULTI_NODE)]
        command += ["--num_machines", str(len(processes)), "--machine_rank", str(rank)]
        command += ["--num_processes", str(count * len(processes)), "--main_process_ip", "127.0.0.1"]
        command += ["--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no"]
        machines.append(
            subprocess.Popen(
                [*command, PRETRAIN, *map(str, args)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [machine.communicate(timeout=timeout)[0] for machine in machines]
    return [
        subprocess.CompletedProcess(m.args, m.returncode, output) for m, output in zip(machines, outputs, strict=True)
    ]


def train_on_two_machines(*args):
    for machine in launch_machines(*args):
        assert machine.returncode == 0, machine.stdout[-5000:]


def test_two_machines_train_like_one_process_checkpoint_once_and_resume(webdataset, one_process_run, tmp_path):
    reference, _ = one_process_run
    output = tmp_path / "two-machines"
    two_machines = ["--dataset", webdataset, "--output_dir", output, "--per_device_batch_size", 4]
    train_on_two_machines(*two_machines, "--checkpointing_steps", 4, *COMMON)
    results = json.loads((output / "eval_results.json").read_text())
    assert (results["num_processes"], results["global_batch_size"], results["distributed_type"]) == (2, 8, "MULTI_CPU")
    single, double = run_metrics(reference), run_metrics(output)
    assert sorted(double) == list(range(1, 13))
    for step in single:  # the same global batches and gradients as one process with the whole batch
        assert double[step]["loss"] == pytest.approx(single[step]["loss"], rel=1e-4, abs=1e-5), step
    # written once, by the first process of the first machine, and rotated
    assert sorted(p.name for p in output.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]
    assert not list(output.glob(".checkpoint-*"))
    finished = load_file(output / "model" / "model.safetensors")

    train_on_two_machines(
        *two_machines, "--checkpointing_steps", 4, *COMMON, "--resume_from_checkpoint", output / "checkpoint-8"
    )
    resumed = load_file(output / "model" / "model.safetensors")
    # other processes than the first run's, whose kernels may round differently (fp32, 4 AdamW steps of lr 1e-3)
    for name, tensor in finished.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-5, rtol=1e-5, msg=name)


def test_a_stream_gives_each_machine_its_own_samples(webdataset, tmp_path):
    output = tmp_path / "streamed"
    train_on_two_machines("--dataset", webdataset, "--output_dir", output, *STREAMED)
    results = json.loads((output / "eval_results.json").read_text())
    # one epoch of 48 samples over the two machines' shards: every broken sample met exactly once
    assert results["skipped_samples"] == len(BAD_KEYS)
    assert results["num_processes"] == 2


def test_machines_that_launch_different_numbers_of_processes_are_refused(webdataset, tmp_path):
    """torch's rendezvous would join 1 + 2 processes into a world of 3, which neither machine asked for."""
    machines = launch_machines("--dataset", webdataset, "--output_dir", tmp_path / "out", *COMMON, processes=(1, 2))
    for machine in machines:
        assert machine.returncode != 0
        assert "error: the 2 machines launched different numbers of processes" in machine.stdout
    assert not (tmp_path / "out").exists()


def torchrun_machines(*args, use_cpu=True) -> list[subprocess.CompletedProcess]:
    """Two `torchrun` nodes meeting at a c10d rendezvous on 127.0.0.1, one process each, no Accelerate launcher."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_USE_CPU", None)
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    command += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "--rdzv_id", "test"]
    nodes = [
        subprocess.Popen(
            [*command, PRETRAIN, *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    return [
        subprocess.CompletedProcess(n.args, n.returncode, output) for n, output in zip(nodes, outputs, strict=True)
    ]


def test_torchrun_rendezvous_trains_as_one_world_and_needs_accelerate_use_cpu_on_cpus(tmp_path):
    demo = ["--max_steps", 2, "--per_device_batch_size", 4, "--num_workers", 0]
    for node in torchrun_machines("--output_dir", tmp_path / "alone", *demo, use_cpu=False):
        assert node.returncode != 0
        assert "error: 2 processes were launched but each trains alone" in node.stdout
    assert not (tmp_path / "alone").exists()

    for node in torchrun_machines("--output_dir", tmp_path / "run", *demo):
        assert node.returncode == 0, node.stdout[-5000:]
    results = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert (results["num_processes"], results["global_batch_size"], results["distributed_type"]) == (2, 8, "MULTI_CPU")
