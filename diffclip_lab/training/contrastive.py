# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Contrastive image-text training: the global-batch InfoNCE loss, the training forward, the step function of the
training loop with exact gradient accumulation, the optimizer's groups."""

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from accelerate.utils import DistributedType
from torch import nn

from modeling_diffclip import DiffCLIPAttention, DiffCLIPModel


MAX_LOGIT_SCALE = math.log(100)  # the paper's cap on the temperature


class DualEncoderForTraining(nn.Module):
    """
    The training step's forward: both towers and the temperature in one call, so that FSDP and DeepSpeed gather the
    parameters they shard. Returns the raw image and text embeddings, exp(logit_scale), and every λ.
    """

    def __init__(self, model: DiffCLIPModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, pixel_values):
        image = self.model.get_image_features(pixel_values=pixel_values).pooler_output
        text = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        lambdas = {}
        for tower, model in (("text", self.model.text_model), ("vision", self.model.vision_model)):
            for index, layer in enumerate(model.encoder.layers):
                if isinstance(layer.self_attn, DiffCLIPAttention):
                    lambdas[f"{tower}/layer_{index}"] = layer.self_attn.lambda_full().detach()
        return image, text, self.model.logit_scale.exp(), lambdas


def gather_with_grad(*features: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All processes' rows of each tensor in process order, differentiable. Processes may hold different numbers of
    rows; the tensors given together hold the same number, which is gathered once."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return features
    size = torch.tensor([features[0].shape[0]], device=features[0].device)
    sizes = funcol.all_gather_single(size, 0, dist.group.WORLD).tolist()
    gathered = []
    for tensor in features:
        padded = F.pad(tensor, (0, 0, 0, max(sizes) - tensor.shape[0]))
        chunks = funcol.all_gather_single_autograd(padded, 0, dist.group.WORLD).split(max(sizes))
        gathered.append(torch.cat([chunk[:n] for chunk, n in zip(chunks, sizes, strict=True)]))
    return tuple(gathered)


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch (the same value on every process)."""
    return info_nce(*gather_with_grad(image.float(), text.float()), logit_scale)


def info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of matching rows of `image` and `text` (batch, dim), in float32, against all other rows."""
    image, text = (F.normalize(features.float(), dim=-1) for features in (image, text))
    logits = logit_scale.float() * image @ text.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def accumulated_step(
    accelerator, module: nn.Module, micro_batches: list, model_inputs: Callable[[object], dict]
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """
    The gradients of one optimizer step over this process's `micro_batches` (as the loader gives them;
    `model_inputs` makes the training forward's inputs of one), equal to those of one batch of the global size
    (processes × micro-batches × rows), as GradCache and open_clip's `--accum-freq`: first the features of every
    micro-batch without gradients, gathered from all processes; then, per micro-batch, its features again with
    gradients, and the loss of the global batch with them in place of their cached rows, back-propagated. Costs one
    more forward pass per micro-batch; keeps the activations of one micro-batch and the global batch's features.

    Both passes of a micro-batch draw the same random numbers (dropout): the second restores the generators' state
    of the first. Returns the global batch's loss, exp(logit scale) and the λ (`DualEncoderForTraining`'s).
    """
    states, images, texts = [], [], []
    with torch.no_grad():
        for batch in micro_batches:
            states.append(_rng_state(accelerator.device))
            image, text, _, _ = module(**model_inputs(batch))
            images.append(image.float())
            texts.append(text.float())
    all_images, all_texts = gather_with_grad(torch.cat(images), torch.cat(texts))
    start = _first_row(sum(len(image) for image in images), all_images.device)
    # Each process differentiates the loss through its own rows only: the sum over processes is the gradient, and
    # DDP averages, hence × processes; `accelerator.backward` divides by the accumulation steps, hence × steps. The
    # temperature's gradient is taken once, from every process's first pass, weighted 1/processes.
    factor = accelerator.num_processes * len(micro_batches)
    for index, (batch, state) in enumerate(zip(micro_batches, states, strict=True)):
        last = index == len(micro_batches) - 1
        accelerator.sync_gradients = last  # the optimizer steps, and DDP reduces the gradients, after the last
        with _rng_restored(state, accelerator.device), nullcontext() if last else accelerator.no_sync(module):
            image, text, logit_scale, lambdas = module(**model_inputs(batch))
            rows = slice(start, start + len(image))
            image = torch.cat([all_images[: rows.start], image.float(), all_images[rows.stop :]])
            text = torch.cat([all_texts[: rows.start], text.float(), all_texts[rows.stop :]])
            weight = 1 / accelerator.num_processes if index == 0 else 0.0
            scale = logit_scale * weight + (logit_scale * (1 - weight)).detach()  # the parameter stays in the graph
            loss = info_nce(image, text, scale)
            accelerator.backward(loss * factor)
        start = rows.stop
    return loss.detach(), logit_scale.detach(), lambdas


def contrastive_step(
    accelerator, module: nn.Module, gradient_accumulation_steps: int, model_inputs: Callable[[object], dict]
) -> Callable[[object], tuple[torch.Tensor, dict] | None]:
    """
    The step function of `diffclip_lab.training.loop.train` for contrastive pretraining: the loss of the global
    batch back-propagated, one micro-batch per step, or with accumulation the micro-batches of a step held until the
    last and then `accumulated_step` (so a step is never checkpointed between its micro-batches). Logs exp(logit
    scale) and every λ.
    """
    micro_batches = []

    def step(batch) -> tuple[torch.Tensor, dict] | None:
        if gradient_accumulation_steps == 1:
            with accelerator.accumulate(module):
                image, text, logit_scale, lambdas = module(**model_inputs(batch))
                loss = contrastive_loss(image, text, logit_scale)
                accelerator.backward(loss)
        else:
            micro_batches.append(batch)
            if len(micro_batches) < gradient_accumulation_steps:
                return None
            loss, logit_scale, lambdas = accumulated_step(accelerator, module, micro_batches, model_inputs)
            micro_batches.clear()
        return loss, {"logit_scale": logit_scale, **{f"lambda/{name}": value for name, value in lambdas.items()}}

    return step


def _first_row(rows: int, device: torch.device) -> int:
    """The index of this process's first row in the rows gathered from all processes (`gather_with_grad`'s order)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return 0
    counts = funcol.all_gather_single(torch.tensor([rows], device=device), 0, dist.group.WORLD)
    return int(counts[: dist.get_rank()].sum())


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


@contextmanager
def _rng_restored(state: tuple, device: torch.device) -> Iterator[None]:
    """The random generators in `state` (`_rng_state`) inside the block, as they were before it afterwards."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=[device] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW's groups: weight decay on matrices only, not on biases, norms, λ vectors and the temperature (< 2-D)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "logit_scale" in name else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def cap_logit_scale(accelerator, model: DiffCLIPModel) -> None:
    """The paper's cap on the temperature after each step: logit scale at most 100. Under DeepSpeed ZeRO the optimizer
    keeps its own fp32 copy of every parameter and writes it back after each step, so that copy is capped too (not
    run here: DeepSpeed does not train on this project's CPU machines, see examples/configs/deepspeed_zero2.yaml)."""
    model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

        master = safe_get_full_fp32_param(model.logit_scale)
        safe_set_full_fp32_param(model.logit_scale, master.clamp(0, MAX_LOGIT_SCALE))
