# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""PyTorch DiffCLIP: CLIP whose self-attention layers are differential attention.

DiffCLIP (Hammoud & Ghanem, 2025, https://huggingface.co/papers/2503.06626) replaces every softmax attention of
CLIP by differential attention (Ye et al., 2024, https://huggingface.co/papers/2410.05258). Everything else is CLIP,
so the models below reuse Transformers' CLIP forward passes and change only the modules they are built from.

This file and `configuration_diffclip.py` are copied next to every saved checkpoint: they must import nothing but
`torch`, `transformers` and each other (relatively), so that `trust_remote_code=True` loads work without this package.
"""

from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from transformers import initialization as init
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.integrations.flash_attention import flash_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.clip import modeling_clip
from transformers.models.clip.configuration_clip import CLIPTextConfig
from transformers.models.clip.modeling_clip import (
    CLIPMLP,
    CLIPAttention,
    CLIPEncoder,
    CLIPEncoderLayer,
    CLIPForImageClassification,
    CLIPModel,
    CLIPPreTrainedModel,
    CLIPTextEmbeddings,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionEmbeddings,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    eager_attention_forward,
)
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .configuration_diffclip import DiffCLIPConfig, DiffCLIPTextConfig, DiffCLIPVisionConfig


try:
    from transformers.initialization import no_init_weights
except ImportError:  # only a speed-up (see below): without it, the modules replaced are initialised for nothing
    from contextlib import nullcontext as no_init_weights


# Transformers 5.0-5.5 hold each CLIP tower's modules in a `CLIPTextTransformer`/`CLIPVisionTransformer` (the
# tower's `text_model`/`vision_model`, which is what CLIP's dual and projection models hold); later releases hold them
# in the tower itself. The checkpoint keys of the dual model are the same either way.
_NESTED_TOWERS = hasattr(modeling_clip, "CLIPTextTransformer")
# The modules nested there (top-level checkpoint keys of a bare tower from 5.6 on)
_NESTED_MODULES = {
    "text_model": ("embeddings", "encoder", "final_layer_norm"),
    "vision_model": ("embeddings", "pre_layrnorm", "encoder", "post_layernorm"),
}


def _tower_modules(tower: "DiffCLIPTextModel | DiffCLIPVisionModel") -> nn.Module:
    """The module holding `tower`'s embeddings, encoder and norms, and that CLIP's other models hold as the tower."""
    if not _NESTED_TOWERS:
        return tower
    return tower.text_model if isinstance(tower, CLIPTextModel) else tower.vision_model


def _attention_function(name: str) -> Callable:
    """The attention function registered as `name`, CLIP's own for "eager" (`get_interface` from 5.1; 5.0 looks it
    up as CLIP's attention does)."""
    if hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):
        return ALL_ATTENTION_FUNCTIONS.get_interface(name, eager_attention_forward)
    return eager_attention_forward if name == "eager" else ALL_ATTENTION_FUNCTIONS[name]


class DiffCLIPRMSNorm(nn.Module):
    """RMSNorm over the last dimension, normalised in float32 and scaled by a learnable weight (eps 1e-5)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(
        self, hidden_states: torch.Tensor | list[torch.Tensor], lambda_full: torch.Tensor | None = None, scale=1.0
    ) -> torch.Tensor:
        """
        weight · RMSNorm(`hidden_states`), of the input's shape. With `lambda_full`, `hidden_states` is instead the
        list of attention outputs that [`DifferentialNorm`] takes, and the result its scale · weight · RMSNorm(O1 −
        λ·O2). The weight is read here, in the module's own forward, where hooks such as Accelerate's offloading (which
        loads the weight on call) and PEFT's `modules_to_save` (which swaps the module) take effect.
        """
        if lambda_full is not None:
            return DifferentialNorm.apply(lambda_full, self.weight, scale, self.variance_epsilon, *hidden_states)
        normed = nn.functional.rms_norm(hidden_states.float(), self.weight.shape, eps=self.variance_epsilon)
        return normed.to(hidden_states.dtype) * self.weight * scale

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.variance_epsilon}"


class DifferentialNorm(torch.autograd.Function):
    """
    scale · weight · RMSNorm(O1 − λ·O2) over the last dimension, as one autograd node that keeps for backward only the
    attention outputs (which the attention backend keeps for its own backward anyway), λ, the weight and the per-row
    inverse RMS, and recomputes the difference in backward: autograd would keep the difference and the normed
    tensor too.

    `outputs`: O1 and O2 of each of one or more column ranges of the value slices, in order (O1 of range 0, O2 of
    range 0, O1 of range 1, ...), each of shape (batch, seq, heads / 2, range width). Returns (batch, seq,
    heads / 2, total width). The difference is taken in the outputs' dtype, the norm in at least float32, and the
    result rounded once to the outputs' dtype.
    """

    @staticmethod
    def forward(ctx, lambda_full, weight, scale, eps, *outputs):
        diff = _difference(outputs, lambda_full)
        rstd = torch.rsqrt(diff.square().mean(-1, keepdim=True).add_(eps))
        ctx.save_for_backward(lambda_full, weight, rstd, *outputs)
        ctx.scale = scale
        return diff.mul_(rstd).mul_(weight.to(diff.dtype) * scale).to(outputs[0].dtype)

    @staticmethod
    def backward(ctx, grad_output):
        lambda_full, weight, rstd, *outputs = ctx.saved_tensors
        normed = _difference(outputs, lambda_full).mul_(rstd)
        grad_output = grad_output.to(normed.dtype)
        grad_weight = (grad_output * normed).sum(tuple(range(normed.ndim - 1))).mul_(ctx.scale)
        grad_diff = grad_output * (weight.to(normed.dtype) * ctx.scale)
        projection = (grad_diff * normed).mean(-1, keepdim=True).neg_()
        grad_diff = grad_diff.addcmul_(normed, projection).mul_(rstd)
        grad_lambda = -(grad_diff * _concatenated(outputs[1::2])).sum()
        grad_outputs = []
        for grad_first in grad_diff.split([o.shape[-1] for o in outputs[0::2]], dim=-1):
            grad_outputs += [grad_first.to(outputs[0].dtype), (grad_first * -lambda_full).to(outputs[0].dtype)]
        return grad_lambda.to(lambda_full.dtype), grad_weight.to(weight.dtype), None, None, *grad_outputs


def _concatenated(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=-1)


def _difference(outputs: list[torch.Tensor], lambda_full: torch.Tensor) -> torch.Tensor:
    """O1 − λ·O2 of `DifferentialNorm`'s outputs, taken in their dtype, returned in at least float32."""
    lambda_full = lambda_full.to(outputs[0].dtype)
    diff = _concatenated(
        [torch.addcmul(o1, o2, -lambda_full) for o1, o2 in zip(outputs[0::2], outputs[1::2], strict=True)]
    )
    return diff.to(torch.promote_types(diff.dtype, torch.float32))


class DiffCLIPLambda(nn.Module):
    """
    The λ of one differential-attention layer, λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init, from four learned vectors of
    size `head_dim`. A module of its own, called for λ, so that the vectors reach the computation through a forward
    (Accelerate's offloading hooks load them there) and PEFT's `modules_to_save` can name them (`"diff_lambda"`).
    """

    def __init__(self, head_dim: int, lambda_init: float, std_dev: float):
        super().__init__()
        self.std_dev = std_dev  # of the vectors' normal initialisation
        self.lambda_q1 = nn.Parameter(torch.zeros(head_dim))
        self.lambda_k1 = nn.Parameter(torch.zeros(head_dim))
        self.lambda_q2 = nn.Parameter(torch.zeros(head_dim))
        self.lambda_k2 = nn.Parameter(torch.zeros(head_dim))
        self.lambda_init = lambda_init

    def forward(self) -> torch.Tensor:
        """The scalar λ, in float32."""
        lambda_1 = torch.exp(torch.sum(self.lambda_q1 * self.lambda_k1, dtype=torch.float32))
        lambda_2 = torch.exp(torch.sum(self.lambda_q2 * self.lambda_k2, dtype=torch.float32))
        return lambda_1 - lambda_2 + self.lambda_init

    def extra_repr(self) -> str:
        return f"{self.lambda_q1.shape[0]}, lambda_init={self.lambda_init}"


class DiffCLIPAttention(CLIPAttention):
    """
    Multi-head differential attention with the released DiffCLIP head layout.

    The `num_attention_heads` query/key heads of size `head_dim = hidden_size / num_attention_heads` are taken in
    pairs: heads 2i and 2i+1 give the two softmax maps A1, A2 of differential head i, which reads value slice i of
    width 2·head_dim:

        out_i = (1 − λ_init) · RMSNorm((A1 − λ·A2) · V_i),   λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init

    The projections keep CLIP's names and shapes, so a CLIP checkpoint maps onto this module one to one.

    Fused backends (SDPA, flex attention) never form an N×N map: they get four calls, one per map and value half,
    each over `num_attention_heads / 2` heads of size `head_dim`. Queries, keys and values then share one head size,
    which the fused kernels need (SDPA's flash kernels on CPU and GPU), and are views of the projections, so nothing
    is copied; the λ-weighted difference, the norm and the scale are one autograd node, [`DifferentialNorm`], that
    keeps nothing the kernels do not keep already. The eager backend computes the maps, as the paper's code does, and
    multiplies their difference with the values once; so does attention dropout on any backend, so that each map is
    dropped once for all of its value columns. Measurements behind this choice: `docs/performance.md`.
    """

    def __init__(self, config: DiffCLIPTextConfig | DiffCLIPVisionConfig, layer_idx: int):
        super().__init__(config)
        self.layer_idx = layer_idx
        self.lambda_init = config.layer_lambda_init(layer_idx)
        self.diff_lambda = DiffCLIPLambda(self.head_dim, self.lambda_init, config.lambda_std_dev)
        self.diff_norm = DiffCLIPRMSNorm(2 * self.head_dim, eps=1e-5)

    def lambda_full(self) -> torch.Tensor:
        """The scalar λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init of this layer, in float32."""
        return self.diff_lambda()

    def softmax_maps(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        The two softmax maps of every differential head before they are combined, A1 and A2, each of shape
        `(batch_size, num_attention_heads // 2, seq_len, seq_len)` with rows summing to 1. (`output_attentions=True`
        gives their combination A1 − λ·A2, the map the layer applies.) For layer `i` of a tower run with
        `output_hidden_states=True`:

            a1, a2 = layer.self_attn.softmax_maps(layer.layer_norm1(outputs.hidden_states[i]), attention_mask)

        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, seq_len, hidden_size)`): the attention's input.
            attention_mask (`torch.Tensor` of shape `(batch_size, seq_len)`, *optional*): the text's padding mask
                (1 for tokens, 0 for padding). Text-tower layers also apply their causal mask.
        """
        input_shape = hidden_states.shape[:-1]
        queries = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
        keys = self.k_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
        scores = torch.matmul(queries, keys.transpose(-1, -2)) * self.scale
        masked = torch.zeros(scores.shape[-2:], dtype=torch.bool, device=scores.device)
        if isinstance(self.config, CLIPTextConfig):
            masked = torch.ones_like(masked).triu(1)
        if attention_mask is not None:
            masked = masked | (attention_mask[:, None, None, :] == 0)
        maps = scores.masked_fill(masked, float("-inf")).softmax(dim=-1, dtype=torch.float32).to(queries.dtype)
        return maps[:, 0::2], maps[:, 1::2]

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(batch_size, seq_len, hidden_size)`): the layer input.
            attention_mask (`torch.Tensor`, *optional*): additive or boolean mask broadcastable to
                `(batch_size, 1, seq_len, seq_len)`, as built by the CLIP text model.

        Returns:
            `attn_output` of shape `(batch_size, seq_len, hidden_size)` and, with the eager backend, the differential
            maps A1 − λ·A2 of shape `(batch_size, num_attention_heads // 2, seq_len, seq_len)` (each row sums to
            1 − λ; one map per differential head, half as many heads as CLIP's), else `None`. [`softmax_maps`]
            gives A1 and A2.
        """
        input_shape = hidden_states.shape[:-1]
        queries = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
        keys = self.k_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
        values = self.v_proj(hidden_states).view(*input_shape, -1, 2 * self.head_dim).transpose(1, 2)

        lambda_full = self.lambda_full()
        dropout = 0.0 if not self.training else self.dropout
        # With dropout, each map must be dropped once for all of its value columns: only materialised maps allow that.
        materialised = self.config._attn_implementation == "eager" or dropout > 0
        attention_interface = _attention_function("eager" if materialised else self.config._attn_implementation)
        attend = partial(
            attention_interface, self, attention_mask=attention_mask, scaling=self.scale, dropout=dropout, **kwargs
        )
        if materialised:
            # The paper's formulation: the maps' difference (batch, heads / 2, seq, seq) multiplied with the values
            # once. The backend gets empty values: only its maps are used.
            _, attn_weights = attend(queries, keys, values.new_empty(*queries.shape[:-1], 0))
            attn_weights = attn_weights[:, 0::2] - lambda_full.to(attn_weights.dtype) * attn_weights[:, 1::2]
            attn_output = self.diff_norm(
                torch.matmul(attn_weights, values).transpose(1, 2), scale=1 - self.lambda_init
            )
        else:
            # (batch, heads / 2, seq, head_dim) views: the first and second maps' queries and keys, the value halves
            maps = list(
                zip(queries.unflatten(1, (-1, 2)).unbind(2), keys.unflatten(1, (-1, 2)).unbind(2), strict=True)
            )
            halves = values.unflatten(-1, (2, -1)).unbind(-2)
            outputs = [attend(q, k, half)[0] for half in halves for q, k in maps]
            attn_output = self.diff_norm(outputs, lambda_full=lambda_full, scale=1 - self.lambda_init)
            attn_weights = None
        attn_output = self.out_proj(attn_output.reshape(*input_shape, -1))
        return attn_output, attn_weights


# Every class below calls its CLIP parent's constructor, then replaces only the sub-modules that differ: whatever a
# later CLIP constructor sets up for its `forward` is then there in checkpoints already shipped with this file. Where
# the replaced modules are most of the parent (an encoder's layers, a model's towers), the parent is built without
# initialising its weights, which costs next to nothing; `post_init` then initialises every module that was kept.


class DiffCLIPEncoderLayer(CLIPEncoderLayer):
    """CLIP's pre-norm transformer block, with differential attention when the config asks for it."""

    def __init__(self, config: DiffCLIPTextConfig | DiffCLIPVisionConfig, layer_idx: int):
        super().__init__(config)
        if config.use_differential_attention:
            self.self_attn = DiffCLIPAttention(config, layer_idx)


class DiffCLIPEncoder(CLIPEncoder):
    """A stack of `config.num_hidden_layers` [`DiffCLIPEncoderLayer`], layer `l` knowing its index for λ_init(l)."""

    def __init__(self, config: DiffCLIPTextConfig | DiffCLIPVisionConfig):
        with no_init_weights():
            super().__init__(config)
        self.layers = nn.ModuleList(
            [DiffCLIPEncoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )


class DiffCLIPTextEmbeddings(CLIPTextEmbeddings):
    """CLIP's token + position embeddings, refusing inputs that are not token ids."""

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if input_ids is not None and (input_ids.is_floating_point() or input_ids.is_complex()):
            raise ValueError(
                f"`input_ids` must be an integer tensor of token ids of shape (batch_size, sequence_length), got "
                f"dtype {input_ids.dtype}. Tokenize the text with the model's processor."
            )
        return super().forward(input_ids=input_ids, position_ids=position_ids, inputs_embeds=inputs_embeds)


class DiffCLIPVisionEmbeddings(CLIPVisionEmbeddings):
    """CLIP's class token + patch + position embeddings, with an optional patch-embedding bias; refuses missing or
    malformed pixel values."""

    def __init__(self, config: DiffCLIPVisionConfig):
        super().__init__(config)
        if config.patch_embedding_bias:
            self.patch_embedding = nn.Conv2d(
                config.num_channels, self.embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=True
            )

    def forward(self, pixel_values: torch.Tensor | None, interpolate_pos_encoding=False) -> torch.Tensor:
        # e.g. the dual encoder in the feature-extraction pipeline, which passes text only
        if pixel_values is None:
            raise ValueError(
                "`pixel_values` is missing: pass images preprocessed by the model's processor (`pixel_values`). For "
                "text embeddings alone, call `get_text_features(input_ids)` or load `DiffCLIPTextModelWithProjection`."
            )
        num_channels = self.config.num_channels
        if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels or not pixel_values.is_floating_point():
            raise ValueError(
                f"`pixel_values` must be a float tensor of shape (batch_size, {num_channels}, height, width), got "
                f"dtype {pixel_values.dtype} and shape {tuple(pixel_values.shape)}. Preprocess the images with the "
                "model's processor."
            )
        return super().forward(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)


def _unsupported_attention(name: str) -> ValueError:
    return ValueError(
        f'DiffCLIP does not support attn_implementation="{name}": use "sdpa" (the default), "eager", '
        '"flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4", a Hub FlashAttention '
        'kernel such as "kernels-community/flash-attn2", or a function registered with AttentionInterface.register.'
    )


class DiffCLIPPreTrainedModel(CLIPPreTrainedModel):
    """Weight initialisation and loading conventions shared by all DiffCLIP models."""

    config: DiffCLIPConfig
    _no_split_modules = ["DiffCLIPTextEmbeddings", "DiffCLIPEncoderLayer", "DiffCLIPVisionEmbeddings"]
    # What is tested (tests/test_attention_kernels.py, benchmarks/gpu_check.py on a GPU): the fused path's calls on
    # sdpa, flex attention, and FlashAttention's contract as Transformers' `flash_attention_forward` takes it, which
    # FlashAttention 2/3 and the Hub's flash kernels share; not serving backends (vLLM, TGI) nor paged attention.
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_flash_attn = True
    _supports_attention_backend = False

    def _check_and_adjust_attn_implementation(self, attn_implementation, *args, **kwargs):
        # For a name it does not know, Transformers would list its own names, paged attention among them.
        if isinstance(attn_implementation, str) and "/" not in attn_implementation:
            if attn_implementation.removeprefix("paged|") not in ["eager", *ALL_ATTENTION_FUNCTIONS]:
                raise _unsupported_attention(attn_implementation)
        implementation = super()._check_and_adjust_attn_implementation(attn_implementation, *args, **kwargs)
        # Paged attention reads a paged KV cache, which an encoder has not; a Hub kernel without FlashAttention's
        # varlen interface gets another of Transformers' wrappers, whose calls DiffCLIP has not been tested with.
        flash_wrapped = ALL_ATTENTION_FUNCTIONS.get(implementation) is flash_attention_forward
        if "paged" in implementation or ("/" in implementation and not flash_wrapped):
            raise _unsupported_attention(implementation)
        return implementation

    def _backward_compatibility_gradient_checkpointing(self):
        # Each DiffCLIP constructor runs its CLIP parent's first, whose `post_init` would turn `config.
        # gradient_checkpointing` into checkpointing of the modules about to be replaced, and consume it: the
        # DiffCLIP constructor's own `post_init`, the second, applies it.
        if getattr(self, "_clip_post_init_done", False):
            super()._backward_compatibility_gradient_checkpointing()
        self._clip_post_init_done = True

    def _init_weights(self, module):
        """
        A new model starts as the official code's does (https://github.com/hammoudhasan/DiffCLIP, whose CLIP baseline
        is SLIP's CLIP), tower by tower; every std and bound is scaled by `initializer_factor` (1 by default).

        Text tower, differential or not (OpenAI CLIP's `initialize_parameters`, width w, L layers): token embeddings
        N(0, 0.02), positions N(0, 0.01), q/k/v N(0, w^-1/2), out_proj N(0, w^-1/2 (2L)^-1/2), fc1 N(0, (2w)^-1/2),
        fc2 N(0, w^-1/2 (2L)^-1/2); biases as the official modules leave them: PyTorch's default U(±fan_in^-1/2) for
        the MLP and for differential attention's `nn.Linear`s, zero for CLIP's `nn.MultiheadAttention`.

        Vision tower (a timm ViT): positions trunc-normal(0.02), class token N(0, 1e-6), patch embedding PyTorch's
        default. A plain tower's linear layers are timm's: trunc-normal(0.02) weights, zero biases. The official
        differential ViT builds its blocks after timm's initialisation has run, so their linear layers keep PyTorch's
        default, U(±fan_in^-1/2) for weights and biases; λ vectors N(0, lambda_std_dev) in both towers.

        Norms start at one (zero bias); projections N(0, width^-1/2) as CLIP; logit scale `logit_scale_init_value`
        (log(1/0.07)).
        """
        if isinstance(module, DiffCLIPLambda):
            for parameter in module.parameters():
                init.normal_(parameter, mean=0.0, std=module.std_dev)
            return
        if isinstance(module, (CLIPAttention, CLIPMLP)):  # not CLIP's rules (Transformers' differ from OpenAI's)
            for layer in module.children():
                if isinstance(layer, nn.Linear):
                    _official_linear_init(module, layer)
            return
        super()._init_weights(module)  # norms, buffers, projections and the classifier are CLIP's
        if isinstance(module, CLIPTextEmbeddings):
            factor = self.config.initializer_factor
            init.normal_(module.token_embedding.weight, std=0.02 * factor)
            init.normal_(module.position_embedding.weight, std=0.01 * factor)
        elif isinstance(module, CLIPVisionEmbeddings):
            factor = module.config.initializer_factor
            init.normal_(module.class_embedding, std=1e-6 * factor)
            init.trunc_normal_(module.position_embedding.weight, std=0.02 * factor)
            _torch_default_init(module.patch_embedding, factor)
        elif isinstance(module, nn.Linear):
            # Transformers skips the modules of custom code that own no parameter (CLIP's attention and MLP): their
            # linear layers are also initialised one by one, by the rule of the block they belong to.
            block = next(
                (b for b in self.modules() if isinstance(b, (CLIPAttention, CLIPMLP)) and module in b.children()), None
            )
            if block is not None:
                _official_linear_init(block, module)
        elif isinstance(module, DiffCLIPModel):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


def _torch_default_init(layer: nn.Linear | nn.Conv2d, factor: float) -> None:
    """PyTorch's own initialisation of a linear or convolution layer: weight and bias U(±fan_in^-1/2)."""
    bound = factor * layer.weight[0].numel() ** -0.5
    init.uniform_(layer.weight, -bound, bound)
    if layer.bias is not None:
        init.uniform_(layer.bias, -bound, bound)


def _official_linear_init(block: CLIPAttention | CLIPMLP, layer: nn.Linear) -> None:
    """The official code's initialisation of one linear layer of an attention or MLP block (see
    `DiffCLIPPreTrainedModel._init_weights`)."""
    config = block.config
    factor = config.initializer_factor
    if not isinstance(config, CLIPTextConfig):  # vision: timm's ViT, or PyTorch's default in a differential ViT
        if config.use_differential_attention:
            _torch_default_init(layer, factor)
        else:
            init.trunc_normal_(layer.weight, std=0.02 * factor)
            init.zeros_(layer.bias)
        return
    width, depth = config.hidden_size, config.num_hidden_layers
    name = next(name for name, child in block.named_children() if child is layer)
    # q/k/v and fc1 read the residual stream; out_proj and fc2 write into it
    std = {"q_proj": width**-0.5, "k_proj": width**-0.5, "v_proj": width**-0.5, "fc1": (2 * width) ** -0.5}.get(
        name, width**-0.5 * (2 * depth) ** -0.5
    )
    if isinstance(block, (CLIPMLP, DiffCLIPAttention)):
        _torch_default_init(layer, factor)  # for the bias; the weight is drawn below
    else:  # nn.MultiheadAttention's zero biases
        init.zeros_(layer.bias)
    init.normal_(layer.weight, std=std * factor)


class DiffCLIPTextModel(DiffCLIPPreTrainedModel, CLIPTextModel):
    """
    The DiffCLIP text tower without projection: `forward(input_ids (batch, seq), attention_mask=None)` returns
    `last_hidden_state` (batch, seq, hidden) and `pooler_output` (batch, hidden), the final-norm state at the first
    end-of-text token. With `output_attentions=True` (eager attention), `attentions` holds per layer the
    differential maps A1 − λ·A2, (batch, num_attention_heads // 2, seq, seq), or CLIP's (batch,
    num_attention_heads, seq, seq) where the tower is not differential; see [`DiffCLIPAttention.softmax_maps`].
    """

    config: DiffCLIPTextConfig

    def __init__(self, config: DiffCLIPTextConfig):
        with no_init_weights():
            super().__init__(config)
        modules = _tower_modules(self)
        modules.embeddings = DiffCLIPTextEmbeddings(config)
        modules.encoder = DiffCLIPEncoder(config)
        self.post_init()  # initialises the new modules (those kept from CLIP's constructor are initialised already)


class DiffCLIPVisionModel(DiffCLIPPreTrainedModel, CLIPVisionModel):
    """
    The DiffCLIP vision tower without projection: `forward(pixel_values (batch, channels, height, width))` returns
    `last_hidden_state` (batch, 1 + patches, hidden) and `pooler_output` (batch, hidden), the class token after the
    final LayerNorm. `output_attentions=True` (eager attention) gives per layer the differential maps,
    (batch, num_attention_heads // 2, 1 + patches, 1 + patches), as [`DiffCLIPTextModel`] describes.
    """

    config: DiffCLIPVisionConfig

    def __init__(self, config: DiffCLIPVisionConfig):
        with no_init_weights():
            super().__init__(config)
        modules = _tower_modules(self)
        modules.embeddings = DiffCLIPVisionEmbeddings(config)
        # The released checkpoints (a timm ViT) have no LayerNorm between the embeddings and the encoder.
        if not config.pre_layernorm:
            modules.pre_layrnorm = nn.Identity()
        modules.encoder = DiffCLIPEncoder(config)
        self.post_init()


class DiffCLIPModel(DiffCLIPPreTrainedModel, CLIPModel):
    """
    DiffCLIP dual encoder. `get_text_features(input_ids)` and `get_image_features(pixel_values)` return the projected
    embeddings, of shape (batch, projection_dim), in `pooler_output`; `forward(input_ids, pixel_values,
    return_loss=False)` returns a `CLIPOutput` with `logits_per_image` (images, texts), `logits_per_text`, the
    L2-normalised `image_embeds`/`text_embeds` and, with `return_loss=True`, the symmetric contrastive loss.
    `output_attentions=True` (eager attention) adds each tower's maps to `text_model_output`/`vision_model_output`:
    per differential layer A1 − λ·A2 of shape (batch, num_attention_heads // 2, tokens, tokens), one map per
    differential head (see [`DiffCLIPTextModel`] and [`DiffCLIPAttention.softmax_maps`]).
    """

    config: DiffCLIPConfig

    def __init__(self, config: DiffCLIPConfig):
        with no_init_weights():
            super().__init__(config)
        self.text_model = _tower_modules(DiffCLIPTextModel._from_config(config.text_config))
        self.vision_model = _tower_modules(DiffCLIPVisionModel._from_config(config.vision_config))
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `register_for_auto_class` records one Auto class per model class; the zero-shot pipeline's Auto class must
        # find the same shipped code when this package is absent.
        if self._auto_class is not None:
            module = type(self).__module__.rsplit(".", 1)[-1]
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModelForZeroShotImageClassification": f"{module}.{type(self).__name__}",
            }
        return super().save_pretrained(save_directory, *args, **kwargs)


class DiffCLIPTextModelWithProjection(DiffCLIPPreTrainedModel, CLIPTextModelWithProjection):
    """The DiffCLIP text tower and its projection: `forward(input_ids)` gives `text_embeds` (batch, projection_dim)."""

    config: DiffCLIPTextConfig

    def __init__(self, config: DiffCLIPTextConfig):
        with no_init_weights():
            super().__init__(config)
        self.text_model = _tower_modules(DiffCLIPTextModel._from_config(config))
        self.post_init()


class DiffCLIPVisionModelWithProjection(DiffCLIPPreTrainedModel, CLIPVisionModelWithProjection):
    """
    The DiffCLIP vision tower and its projection: `forward(pixel_values)` gives `image_embeds` (batch, projection_dim).
    """

    config: DiffCLIPVisionConfig

    def __init__(self, config: DiffCLIPVisionConfig):
        with no_init_weights():
            super().__init__(config)
        self.vision_model = _tower_modules(DiffCLIPVisionModel._from_config(config))
        self.post_init()


class DiffCLIPForImageClassification(DiffCLIPPreTrainedModel, CLIPForImageClassification):
    """
    DiffCLIP vision tower with a linear classifier on the mean of the patch tokens' final hidden states:
    `forward(pixel_values, labels=None)` returns `logits` of shape (batch, num_labels).
    """

    config: DiffCLIPConfig

    def __init__(self, config: DiffCLIPConfig):
        with no_init_weights():
            super().__init__(config)
        self.vision_model = _tower_modules(DiffCLIPVisionModel._from_config(config.vision_config))
        self.post_init()


# Transformers renames checkpoint keys by class name (5.18 and newer) or model type: CLIP's bare towers drop the dual
# encoder's `vision_model.` or `text_model.` prefix, so that they load a CLIPModel checkpoint. DiffCLIP's towers get
# the same renaming, under whichever key CLIP's has; without it they would load a DiffCLIPModel checkpoint as random
# weights. Where CLIP nests its towers' modules (5.0-5.5), a bare tower saved by a later release lacks the prefix of
# the nested module instead (a dual-encoder checkpoint has it already). Every DiffCLIP class, and each model type for
# releases that look mappings up by model type only, also maps the λ vectors' first names, `self_attn.lambda_q1` etc.
# (before they moved into `DiffCLIPLambda`), onto the current ones; Transformers reverses the renaming when saving,
# so checkpoints keep the first names. A tower inside a dual model adds its own scoped copy of the renaming, which
# then matches nothing. (Re-registered when trust_remote_code imports a copy.)
_LAMBDA_RENAMINGS = [
    WeightRenaming(f"self_attn.lambda_{vector}", f"self_attn.diff_lambda.lambda_{vector}")
    for vector in ("q1", "k1", "q2", "k2")
]
_TOWER_RENAMINGS = {}
for _tower, _clip_tower, _attribute in (
    (DiffCLIPVisionModel, CLIPVisionModel, "vision_model"),
    (DiffCLIPTextModel, CLIPTextModel, "text_model"),
):
    for _key, _clip_key in (
        (_tower.__name__, _clip_tower.__name__),
        (_tower.config_class.model_type, _clip_tower.config_class.model_type),
    ):
        _TOWER_RENAMINGS[_key] = get_checkpoint_conversion_mapping(_clip_key) or []
    if _NESTED_TOWERS:
        _TOWER_RENAMINGS[_tower.config_class.model_type] += [
            WeightRenaming(f"^{m}", f"{_attribute}.{m}") for m in _NESTED_MODULES[_attribute]
        ]
for _name in (
    DiffCLIPVisionModel.__name__,
    DiffCLIPTextModel.__name__,
    DiffCLIPModel.__name__,
    DiffCLIPTextModelWithProjection.__name__,
    DiffCLIPVisionModelWithProjection.__name__,
    DiffCLIPForImageClassification.__name__,
    DiffCLIPConfig.model_type,
    DiffCLIPTextConfig.model_type,
    DiffCLIPVisionConfig.model_type,
):
    register_checkpoint_conversion_mapping(_name, _TOWER_RENAMINGS.get(_name, []) + _LAMBDA_RENAMINGS, overwrite=True)


__all__ = [
    "DiffCLIPAttention",
    "DiffCLIPForImageClassification",
    "DiffCLIPModel",
    "DiffCLIPPreTrainedModel",
    "DiffCLIPTextModel",
    "DiffCLIPTextModelWithProjection",
    "DiffCLIPVisionModel",
    "DiffCLIPVisionModelWithProjection",
]
