# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The machinery of a training run with Accelerate, shared by the training scripts: the batch and step plan, the run
folder and its fingerprint, checkpoints that are complete or absent and resume exactly, the trackers and
`metrics.jsonl`, `eval_results.json`, the final model folder and its upload. The loop that drives them is `loop.py`.

A run folder holds `run_config.json` (the run's fingerprint and settings), `checkpoint-N/` (full training state,
the last K kept), `metrics.jsonl`, `logs/` (trackers), `model/` and `eval_results.json`.
"""

import argparse
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
from torch.distributed.tensor import DTensor
from transformers import get_cosine_schedule_with_warmup

from ..core.cli import fraction, non_negative_float, non_negative_int, positive_float, positive_int, random_seed
from ..core.errors import UserError
from ..core.files import atomic_directory, atomic_write_text
from ..core.publishing import push_folder_to_hub


logger = get_logger(__name__)

TRAINING_STATE = "training_state.json"
RUN_CONFIG = "run_config.json"


@dataclass(frozen=True)
class BatchPlan:
    """How many samples a step takes and how many steps the run makes, fixed before training starts."""

    num_processes: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    steps_per_epoch: int | None  # None for a stream, whose length is unknown
    max_steps: int
    warmup_steps: int

    @property
    def global_batch_size(self) -> int:
        return self.per_device_batch_size * self.num_processes * self.gradient_accumulation_steps

    @classmethod
    def build(
        cls,
        num_processes: int,
        gradient_accumulation_steps: int,
        per_device_batch_size: int | None,
        global_batch_size: int | None,
        dataset_length: int | None,
        max_steps: int | None,
        num_epochs: int | None,
        warmup_ratio: float | None = None,
        warmup_epochs: float | None = None,
        drop_last: bool = True,
    ) -> "BatchPlan":
        """
        The plan of a run from its options: the per-device batch is given or derived from the global one; the
        number of steps is `max_steps`, or `num_epochs` passes over a dataset of `dataset_length` samples (None for
        a stream); the warm-up is `warmup_epochs` (a stream: the same share of the run as the epochs would be) or
        `warmup_ratio` of the steps. Without `drop_last` an epoch ends with a smaller batch (one step more).
        """
        devices = num_processes * gradient_accumulation_steps
        if global_batch_size is not None:
            if global_batch_size % devices:
                raise UserError(
                    f"--global_batch_size {global_batch_size} does not divide into {num_processes} processes × "
                    f"{gradient_accumulation_steps} accumulation steps; choose a multiple of {devices}."
                )
            per_device_batch_size = global_batch_size // devices
        global_batch = per_device_batch_size * devices
        steps_per_epoch = None
        if dataset_length is not None:
            steps_per_epoch = dataset_length // global_batch if drop_last else -(-dataset_length // global_batch)
            if steps_per_epoch == 0:
                raise UserError(
                    f"the dataset has {dataset_length} examples, fewer than one global batch of {global_batch}."
                )
        if max_steps is None:
            if steps_per_epoch is None:
                raise UserError("a streamed dataset has no known length: give --max_steps.")
            max_steps = num_epochs * steps_per_epoch
        if warmup_epochs is None:
            warmup_steps = round(warmup_ratio * max_steps)
        elif steps_per_epoch:
            warmup_steps = round(warmup_epochs * steps_per_epoch)
        elif num_epochs:
            warmup_steps = round(warmup_epochs / num_epochs * max_steps)
        else:
            raise UserError(
                "a streamed dataset has no epochs to count the warm-up in: give --warmup_ratio, or --num_epochs for "
                "--warmup_epochs to be a share of."
            )
        if warmup_steps > max_steps:
            raise UserError(
                f"the warm-up ({warmup_steps} steps) is longer than the run ({max_steps} steps): shorten "
                "--warmup_epochs / --warmup_ratio or train longer."
            )
        return cls(
            num_processes, per_device_batch_size, gradient_accumulation_steps, steps_per_epoch, max_steps, warmup_steps
        )

    @classmethod
    def from_options(cls, options, num_processes: int, dataset_length: int | None) -> "BatchPlan":
        """`build` from a training script's options (`add_run_arguments`, and `warmup_epochs` where it has one)."""
        return cls.build(
            num_processes,
            options.gradient_accumulation_steps,
            options.per_device_batch_size,
            options.global_batch_size,
            dataset_length,
            options.max_steps,
            options.num_epochs,
            options.warmup_ratio,
            getattr(options, "warmup_epochs", None),
            getattr(options, "drop_last", True),
        )


class TrainingState:
    """Where the run is (step, epoch, batches of the epoch done, samples trained on and skipped), saved with every
    checkpoint."""

    def __init__(self, run_fingerprint: dict):
        self.run_fingerprint = run_fingerprint
        self.global_step, self.epoch, self.batches_in_epoch, self.images_seen, self.skipped = 0, 0, 0, 0, 0

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every training script takes for what `BatchPlan`, `make_accelerator`, `Run` and the loop do: the
    schedule, precision, memory, loader workers, checkpoints and resuming, trackers, the Hub."""
    add = parser.add_argument
    add("--overwrite", action="store_true", help="replace a run already in --output_dir")
    add("--max_steps", type=positive_int, help="optimizer steps; overrides --num_epochs")
    add("--num_epochs", type=positive_int)
    add("--per_device_batch_size", type=positive_int)
    add("--global_batch_size", type=positive_int, help="per-device batch × processes × accumulation steps")
    add("--gradient_accumulation_steps", type=positive_int, default=1, help="micro-batches per optimizer step")
    add("--learning_rate", type=positive_float)
    add("--weight_decay", type=non_negative_float)
    add("--warmup_ratio", type=fraction, help="warm-up as a fraction of all steps")
    add("--seed", type=random_seed, default=0)
    add("--mixed_precision", choices=["no", "fp16", "bf16"], help="default: what accelerate launch was given")
    add("--gradient_checkpointing", action="store_true")
    add("--num_workers", type=non_negative_int, default=1, help="data loading processes per training process")
    add("--checkpointing_steps", type=positive_int, help="save the full training state every N steps")
    add("--checkpoints_total_limit", type=positive_int, default=2, help="keep only the last K checkpoints")
    add("--resume_from_checkpoint", help="a checkpoint folder, or 'latest' in --output_dir")
    add("--report_to", default="none", help="tensorboard, wandb, ... or all (accelerate trackers)")
    add("--logging_steps", type=positive_int, default=10)
    add("--push_to_hub", action="store_true")
    add("--hub_model_id", help="Hub repo id for --push_to_hub")
    add("--hub_private", action="store_true")


def check_run_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    if args.overwrite and args.resume_from_checkpoint:
        parser.error("--overwrite deletes the run that --resume_from_checkpoint would continue; give one of them")


def make_accelerator(args) -> Accelerator:
    """The Accelerator of a training script's options (`gradient_accumulation_steps`, `mixed_precision`, `report_to`,
    `output_dir`, `seed`). Refused: a launch whose processes would each train alone, and machines that launched
    different numbers of processes (torch's rendezvous would join them into a world of another size)."""
    check_launch()
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=f"{args.output_dir}/logs"),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise UserError(
            f"{launched} processes were launched but each trains alone: on a CPU-only machine set "
            "ACCELERATE_USE_CPU=true (ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ..., "
            "or before torchrun)"
        )
    return accelerator


def check_launch() -> None:
    """A multi-machine launch must have as many processes on every machine: each process checks that the world is
    its machine's processes times the machines."""
    world, machines = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("GROUP_WORLD_SIZE", "1"))
    here = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if world != here * machines:
        raise UserError(
            f"the {machines} machines launched different numbers of processes ({here} on machine "
            f"{os.environ.get('GROUP_RANK', '?')}, {world} in all): give every machine the same --num_processes "
            "(the total over all machines) and --num_machines."
        )


@dataclass
class Training:
    """What a training loop works on, after `accelerator.prepare`."""

    module: torch.nn.Module  # the prepared training forward
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: torch.utils.data.DataLoader
    data: torch.utils.data.Dataset  # has `set_epoch`
    state: TrainingState


def prepare_training(
    accelerator: Accelerator,
    run: "Run",
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data,
    loader,
    plan: BatchPlan,
    resume_from: Path | None,
    split_loader: bool = True,
) -> Training:
    """
    The module, optimizer and loader prepared by Accelerate (the loader left as it is with `split_loader=False`, for
    a stream whose shards are split already), a warm-up-then-cosine schedule, and the training state; the state of
    `resume_from` restored.
    """
    # stepped by the loop once per optimizer step (not by accelerate, which would step it once per process)
    scheduler = get_cosine_schedule_with_warmup(optimizer, plan.warmup_steps, plan.max_steps)
    if split_loader:
        module, optimizer, loader = accelerator.prepare(module, optimizer, loader)
    else:
        module, optimizer = accelerator.prepare(module, optimizer)
    state = TrainingState(run.fingerprint)
    accelerator.register_for_checkpointing(scheduler, state)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        logger.info(f"Resumed from {resume_from} at step {state.global_step}")
    return Training(module, optimizer, scheduler, loader, data, state)


def plain_options(args, with_none: bool = False) -> dict:
    """The options a tracker or a results file can hold: numbers, strings and booleans (and unset ones, if asked)."""
    kinds = (int, float, str, bool, type(None)) if with_none else (int, float, str, bool)
    return {key: value for key, value in vars(args).items() if isinstance(value, kinds)}


def fingerprint_differences(saved: dict, current: dict) -> str:
    """The settings two runs do not share, as 'name (saved vs now)', or '' when they are the same run."""
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    return ", ".join(f"{key} ({saved.get(key)!r} vs {current.get(key)!r})" for key in keys)


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Completed checkpoints of a run, oldest first (a checkpoint is only named so once fully written)."""
    found = [p for p in output_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def batches(accelerator: Accelerator, loader, dataset, state: TrainingState) -> Iterator[dict]:
    """
    The micro-batches of a run from where `state` is, epoch after epoch until the caller stops: each epoch reshuffled
    by its number (`set_epoch` of the dataset and of the loader), a resumed epoch without the batches already trained
    on; `state.epoch` and `state.batches_in_epoch` kept up to date, so that a checkpoint resumes exactly.
    """
    while True:
        dataset.set_epoch(state.epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(state.epoch)
        epoch = loader
        if state.batches_in_epoch:  # resuming mid-epoch: the same batches, minus those already trained on
            epoch = accelerator.skip_first_batches(loader, state.batches_in_epoch)
        batches_before = state.batches_in_epoch
        for batch in epoch:
            state.batches_in_epoch += 1
            yield batch
        if state.batches_in_epoch == batches_before:
            raise UserError("the dataset yielded no batch in a whole epoch; is it empty?")
        state.epoch, state.batches_in_epoch = state.epoch + 1, 0


def check_finite(accelerator: Accelerator, loss: torch.Tensor, module: torch.nn.Module, state, output_dir) -> None:
    """
    After a micro-batch's backward, on every process: stop the run at once, in one line naming the step, what was
    not finite and the last good checkpoint, when the loss or (at an optimizer step) a gradient is NaN or infinite
    on any process. With float16 loss scaling the gradients are the scaler's to check (it skips such steps).
    """
    gradients = []
    if accelerator.sync_gradients and accelerator.scaler is None:  # each process its shard (FSDP), then summed
        gradients = [p.grad for p in module.parameters() if p.grad is not None]
        gradients = [g.to_local() if isinstance(g, DTensor) else g for g in gradients]
    bad = torch.tensor(
        [
            float(not torch.isfinite(loss.detach()).all()),
            float(bool(gradients) and not torch.isfinite(torch.nn.utils.get_total_norm(gradients)).item()),
        ],
        device=accelerator.device,
    )
    bad = accelerator.reduce(bad, reduction="sum")
    if bad.any():
        what = " and ".join(name for name, flag in zip(("the loss", "a gradient"), bad.tolist(), strict=True) if flag)
        checkpoints = list_checkpoints(Path(output_dir))
        last = (
            f"the last good checkpoint is {checkpoints[-1]} (--resume_from_checkpoint)"
            if checkpoints
            else "no checkpoint was saved"
        )
        raise UserError(
            f"step {state.global_step + 1}: {what} {'are' if bad.all() else 'is'} not finite (NaN or infinite); "
            f"training stopped, {last}. "
            "Lower the learning rate, or train in float32 or bf16."
        )


class Run:
    """
    One training run's folder. `check` checks it (another run there is refused unless resuming it or overwriting
    it) and finds the checkpoint to resume from, `record` writes the run's first file when training starts (`start`
    does both); then `save_checkpoint`, `log`, `model_folder`, `write_results` and
    `push` write into it. Every method is called on all processes; only the main process writes.
    """

    def __init__(self, accelerator: Accelerator, output_dir: str | Path, fingerprint: dict, checkpoints_total_limit=2):
        self.accelerator, self.output_dir = accelerator, Path(output_dir)
        self.fingerprint, self.checkpoints_total_limit = fingerprint, checkpoints_total_limit

    def check(self, resume_from_checkpoint: str | None = None, overwrite: bool = False) -> Path | None:
        """Whether the folder can take this run, writing nothing; returns the checkpoint to resume from, if any."""
        resume_from = self._checkpoint_to_resume(resume_from_checkpoint)
        run_file = self.output_dir / RUN_CONFIG
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise UserError(f"--output_dir {self.output_dir} is a file; give a folder (new, or empty).")
        if self.output_dir.is_dir() and any(self.output_dir.iterdir()) and not run_file.exists() and not overwrite:
            raise UserError(
                f"{self.output_dir} holds files that are not a run of this script; choose a new or empty "
                "--output_dir, or pass --overwrite to replace them."
            )
        if run_file.exists() and not resume_from_checkpoint and not overwrite:
            raise UserError(
                f"{self.output_dir} already holds a run ({RUN_CONFIG}); continue it with --resume_from_checkpoint "
                "latest, choose another --output_dir, or pass --overwrite to start afresh."
            )
        if run_file.exists() and resume_from_checkpoint and not overwrite:
            saved = json.loads(run_file.read_text())["run_fingerprint"]
            if differences := fingerprint_differences(saved, self.fingerprint):
                raise UserError(
                    f"{self.output_dir} holds another run, with other {differences}; use another --output_dir."
                )
        return resume_from

    def record(self, settings: dict, overwrite: bool = False) -> None:
        """The run's first file, `run_config.json` (after the folder's old content with `overwrite`): written when
        training starts, so that a run refused before then leaves the folder as it was."""
        run_file = self.output_dir / RUN_CONFIG
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            if overwrite and self.output_dir.exists():
                shutil.rmtree(self.output_dir)
            self.output_dir.mkdir(parents=True, exist_ok=True)
            record = {"run_fingerprint": self.fingerprint, "args": settings}
            atomic_write_text(run_file, json.dumps(record, indent=2, default=str))
        self.accelerator.wait_for_everyone()

    def _checkpoint_to_resume(self, resume_from_checkpoint: str | None) -> Path | None:
        """The checkpoint to resume from, checked to belong to this run; None to start from the beginning."""
        if not resume_from_checkpoint:
            return None
        if resume_from_checkpoint == "latest":
            checkpoints = list_checkpoints(self.output_dir)
            if not checkpoints:  # nothing saved yet (e.g. killed early): start from the beginning
                return None
            path = checkpoints[-1]
        else:
            path = Path(resume_from_checkpoint)
        if not (path / TRAINING_STATE).is_file():
            raise UserError(f"{path} is not a checkpoint of this script (it has no {TRAINING_STATE}).")
        saved = json.loads((path / TRAINING_STATE).read_text())["run_fingerprint"]
        if differences := fingerprint_differences(saved, self.fingerprint):
            raise UserError(f"{path} is a checkpoint of another run or model, with other {differences}.")
        return path

    def save_checkpoint(self, state: TrainingState) -> None:
        """Save the full training state under a temporary name, then rename it: a killed run never leaves half of
        one. Keeps the last `checkpoints_total_limit`."""
        accelerator = self.accelerator
        final = self.output_dir / f"checkpoint-{state.global_step}"
        staging = self.output_dir / f".checkpoint-{state.global_step}.tmp"
        if accelerator.is_main_process and staging.exists():
            shutil.rmtree(staging)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            atomic_write_text(staging / TRAINING_STATE, json.dumps(state.state_dict(), indent=2))
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            for old in list_checkpoints(self.output_dir)[: -self.checkpoints_total_limit]:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()

    @staticmethod
    def is_logging_step(state: TrainingState, plan: "BatchPlan", logging_steps: int) -> bool:
        return state.global_step % logging_steps == 0 or state.global_step == plan.max_steps

    def end_step(self, state: TrainingState, plan: "BatchPlan", checkpointing_steps: int | None) -> bool:
        """After an optimizer step: a checkpoint every `checkpointing_steps` (if set); whether the run is done."""
        if checkpointing_steps and state.global_step % checkpointing_steps == 0:
            self.save_checkpoint(state)
        return state.global_step >= plan.max_steps

    def log(self, logs: dict, step: int) -> None:
        """To the trackers (`--report_to`) and, whatever they are, as a line of `metrics.jsonl`."""
        self.accelerator.log(logs, step=step)
        if self.accelerator.is_main_process:
            with open(self.output_dir / "metrics.jsonl", "a") as log_file:
                log_file.write(json.dumps({"step": step, **logs}) + "\n")

    @contextmanager
    def model_folder(self) -> Iterator[Path]:
        """On the main process, a staging folder that becomes `model/` in one rename when the block succeeds."""
        with atomic_directory(self.output_dir / "model", overwrite=True) as staging:
            yield staging

    def write_results(self, results: dict) -> Path:
        """`eval_results.json`, written atomically by the main process."""
        path = self.output_dir / "eval_results.json"
        if self.accelerator.is_main_process:
            atomic_write_text(path, json.dumps(results, indent=2, default=str))
        return path

    def push(self, repo_id: str, private: bool = False) -> None:
        """Upload `model/` to the Hub repo `repo_id` (main process)."""
        if self.accelerator.is_main_process:
            url = push_folder_to_hub(self.output_dir / "model", repo_id, private)
            logger.info(f"Uploaded to {url}")
