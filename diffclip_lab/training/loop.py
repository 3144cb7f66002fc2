# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""
The one training loop of the training scripts, and the end of a run: what differs between pretraining and the
vision-language stages is the step function (a micro-batch's forward and backward) and what it logs.
"""

import time
from collections.abc import Callable

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from .runs import BatchPlan, Run, Training, batches, check_finite, plain_options


logger = get_logger(__name__)
SKIPS_LOGGED = 10  # samples skipped that each process names in the log; the progress bar counts them all

# A micro-batch in, its forward and backward done: its loss and more values to log (tensors of one element); None
# while it only holds the micro-batch for a later step (exact accumulation).
Step = Callable[[dict], tuple[torch.Tensor, dict] | None]


def train(
    accelerator: Accelerator,
    training: Training,
    plan: BatchPlan,
    run: Run,
    step: Step,
    *,
    description: str,
    samples: str,
    logging_steps: int,
    checkpointing_steps: int | None,
    after_step: Callable[[], None] | None = None,
) -> float:
    """
    Micro-batches from where `training.state` is until `plan.max_steps` optimizer steps: `step` does each one's
    forward and backward, and every loss it returns is checked to be finite on every process (the gradients too,
    once complete); when the gradients of an optimizer step are complete (`accelerator.sync_gradients`), the
    optimizer and the schedule step, then `after_step` (e.g. a cap on a parameter). Every `logging_steps` the loss,
    learning rate, what `step` returned, `samples` per second and the counts go to `run.log`; every
    `checkpointing_steps` a checkpoint. A loader that cannot read a sample reports it in the batch (`skipped`,
    names; `num_skipped`): named in the log, counted.
    Returns the last step's loss, averaged over processes.
    """
    state = training.state
    progress = tqdm(total=plan.max_steps, initial=state.global_step, disable=not accelerator.is_local_main_process)
    progress.set_description(description)
    samples_at_start, clock = state.images_seen, time.perf_counter()
    skipped_in_step = skips_logged = 0
    loss = torch.tensor(float("nan"), device=accelerator.device)
    training.module.train()
    for batch in batches(accelerator, training.loader, training.data, state):
        for sample in batch.pop("skipped", [])[: max(0, SKIPS_LOGGED - skips_logged)]:
            logger.warning(f"Skipped sample {sample}", main_process_only=False)
            skips_logged += 1
        if "num_skipped" in batch:
            skipped_in_step += accelerator.reduce(batch.pop("num_skipped"), reduction="sum").item()
        outputs = step(batch)
        if outputs is None:
            continue
        loss, logs = outputs
        check_finite(accelerator, loss, training.module, state, run.output_dir)
        if not accelerator.sync_gradients:  # a micro-batch of a step under way (Accelerate's accumulation)
            continue
        training.optimizer.step()
        training.optimizer.zero_grad()
        training.scheduler.step()
        if after_step is not None:
            after_step()
        state.global_step += 1
        state.skipped += skipped_in_step
        state.images_seen += plan.global_batch_size - skipped_in_step
        progress.update(1)
        if skipped_in_step:
            progress.set_postfix(skipped=state.skipped)
        skipped_in_step = 0
        if run.is_logging_step(state, plan, logging_steps):
            rate = (state.images_seen - samples_at_start) / (time.perf_counter() - clock)
            postfix = {"loss": f"{loss.item():.4f}", f"{samples}/s": f"{rate:.0f}"}
            progress.set_postfix(postfix | ({"skipped": state.skipped} if state.skipped else {}))
            record = {"loss": loss.item(), "learning_rate": training.scheduler.get_last_lr()[0]}
            record |= {name: value.item() for name, value in logs.items()}
            record |= {f"{samples}_per_second": rate, f"{samples}_seen": state.images_seen}
            record |= {"skipped_samples": state.skipped, "epoch": state.epoch}
            run.log(record, state.global_step)
        if run.end_step(state, plan, checkpointing_steps):
            break
    progress.close()
    return accelerator.reduce(loss.detach(), reduction="mean").item()


def finish(
    accelerator: Accelerator,
    training: Training,
    run: Run,
    options,
    results: dict,
    save_model: Callable[[dict], dict | None],
) -> dict:
    """
    The end of a run: the trained weights gathered from every process (whole under any sharding), named as in the
    model (the training wrapper's `model.` and torch.compile's `_orig_mod.` dropped), given to `save_model`, which
    writes `run.output_dir / "model"` on the main process and may return more results; then `eval_results.json`
    (`results` and the options) and the upload if `options.push_to_hub`.
    """
    state_dict = accelerator.get_state_dict(training.module)
    if accelerator.is_main_process:
        state_dict = {name.removeprefix("_orig_mod.").removeprefix("model."): t for name, t in state_dict.items()}
        results.update(save_model(state_dict) or {})
        results["args"] = plain_options(options, with_none=True)
        path = run.write_results(results)
        logger.info(f"Saved the model to {run.output_dir / 'model'} and the results to {path}")
    if options.push_to_hub:
        run.push(options.hub_model_id, options.hub_private)
    accelerator.wait_for_everyone()
    return results
