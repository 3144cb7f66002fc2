"""A CPU stand-in for FlashAttention that enforces what Transformers' `flash_attention_forward` accepts from a model
and computes what FlashAttention computes, through SDPA, so that the model's calls are checked without a GPU.

The contract, from `transformers.integrations.flash_attention.flash_attention_forward` (Transformers 5.x): queries,
keys and values of shape (batch, heads, seq, head_dim), which it transposes to FlashAttention's (batch, seq, heads,
head_dim); half precision (float16 or bfloat16: FlashAttention has no float32 kernel); no additive or 4-D mask, only
a boolean (batch, seq) padding mask or none, from Transformers' `flash_attention_mask`, which is unpadded into
variable-length sequences; causality as a flag (`is_causal`, else the module's own `is_causal`); the output in
(batch, seq, heads, head_dim), zero at padded positions. Stricter than Transformers, which pads values to the query
head size: DiffCLIP promises one head size for queries, keys and values, and as many key as query heads.
"""

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask
from transformers.models.clip.configuration_clip import CLIPTextConfig


NAME = "fa_contract_standin"  # no "flash" in it: Transformers would look for a real FlashAttention kernel
CALLS: list[dict] = []  # one record per call, for tests to count and inspect


def flash_contract_standin(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
) -> tuple[torch.Tensor, None]:
    assert query.ndim == key.ndim == value.ndim == 4, "(batch, heads, seq, head_dim) tensors"
    assert query.shape == key.shape == value.shape, (query.shape, key.shape, value.shape)
    assert query.dtype in (torch.float16, torch.bfloat16), f"FlashAttention has no {query.dtype} kernel"
    assert key.dtype == value.dtype == query.dtype
    assert attention_mask is None or (
        attention_mask.dtype == torch.bool and attention_mask.shape == (query.shape[0], query.shape[2])
    ), "only a boolean (batch, seq) padding mask"
    is_causal = module.is_causal if is_causal is None else is_causal
    assert is_causal == isinstance(module.config, CLIPTextConfig), "causal in the text tower only"
    assert not kwargs.get("output_attentions"), "FlashAttention has no maps"
    CALLS.append({"shape": tuple(query.shape), "dtype": query.dtype, "causal": is_causal, "padded": attention_mask})

    seq = query.shape[2]
    allowed = torch.ones(seq, seq, dtype=torch.bool, device=query.device)
    if is_causal:
        allowed = allowed.tril()
    allowed = allowed[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=allowed, dropout_p=dropout, scale=scaling
    )
    if attention_mask is not None:  # unpadded, computed, re-padded with zeros
        out = out * attention_mask[:, None, :, None]
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Registers the stand-in and FlashAttention's masks under `NAME`, returns `NAME`."""
    AttentionInterface.register(NAME, flash_contract_standin)
    AttentionMaskInterface.register(NAME, flash_attention_mask)
    return NAME
