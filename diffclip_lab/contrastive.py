# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Contrastive image-text training: the global-batch InfoNCE loss, the training forward, the optimizer's groups."""

import math

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
    image, text = (F.normalize(features, dim=-1) for features in gather_with_grad(image.float(), text.float()))
    logits = logit_scale.float() * image @ text.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


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
