"""Differential attention against an independent, straightforward implementation of the paper's formula."""

import math

import pytest
import torch
from conftest import DYNAMIC_LAMBDA_INIT

from diffclip_lab.conversion.official import attention, official_attention_tensors
from modeling_diffclip import DiffCLIPAttention, DiffCLIPTextConfig
from modeling_diffclip.modeling_diffclip import DifferentialNorm


def reference_differential_attention(attn: DiffCLIPAttention, x: torch.Tensor, mask: torch.Tensor | None):
    """
    The official attention (`diffclip_lab.conversion.official`, written from the paper's code) on the module's
    tensors, in float64: heads 2i and 2i+1 of Q and K give A1 and A2, value slice i has width 2·d,
    out_i = (1 − λ_init) · RMSNorm((A1 − λ A2) V_i) with a learned weight. Returns the output, the maps
    A1 − λ A2 and λ.
    """
    p = {name: t.detach().double() for name, t in official_attention_tensors(attn.state_dict()).items()}
    lam = (
        math.exp(float(p["lambda_q1"] @ p["lambda_k1"]))
        - math.exp(float(p["lambda_q2"] @ p["lambda_k2"]))
        + attn.lambda_init
    )
    mask = None if mask is None else mask.double()
    out, maps = attention(x.double(), p, attn.num_heads, attn.lambda_init, mask, return_maps=True)
    return out, maps, lam


def make_attention(implementation: str, layer_idx: int = 3, **config_kwargs) -> DiffCLIPAttention:
    config = DiffCLIPTextConfig(hidden_size=48, num_attention_heads=6, **config_kwargs)
    config._attn_implementation = implementation
    torch.manual_seed(0)
    attn = DiffCLIPAttention(config, layer_idx=layer_idx).eval()
    with torch.no_grad():  # non-trivial λ vectors and norm weight, so every term of the formula matters
        for name, param in attn.named_parameters():
            if name.startswith("diff_lambda."):
                param.normal_(0, 0.3)
            elif name == "diff_norm.weight":
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0, 0.2)
    return attn


def causal_padding_mask(lengths: list[int], seq_len: int) -> torch.Tensor:
    """Additive (batch, 1, seq, seq) mask: causal, and keys past each sequence's length masked."""
    causal = torch.tril(torch.ones(seq_len, seq_len, dtype=torch.bool))
    keys_kept = torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]
    allowed = causal[None] & keys_kept[:, None, :]
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("with_mask", [False, True])
def test_matches_reference_formula(implementation, with_mask):
    attn = make_attention(implementation)
    torch.manual_seed(1)
    x = torch.randn(3, 7, 48)
    mask = causal_padding_mask([7, 5, 2], 7) if with_mask else None
    expected, expected_maps, lam = reference_differential_attention(attn, x, mask)
    out, maps = attn(x, attention_mask=mask, output_attentions=True)
    assert out.shape == (3, 7, 48)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn.lambda_full().item(), lam, atol=1e-6, rtol=1e-6)
    if implementation == "eager":  # fused backends return no maps, as in Transformers' CLIP
        assert maps.shape == (3, 3, 7, 7)
        torch.testing.assert_close(maps.double(), expected_maps, atol=1e-6, rtol=1e-5)
    else:
        assert maps is None


def test_eager_and_sdpa_agree_forward_and_backward():
    torch.manual_seed(2)
    x = torch.randn(2, 9, 48)
    mask = causal_padding_mask([9, 4], 9)
    results = {}
    for implementation in ("eager", "sdpa"):
        attn = make_attention(implementation).train()
        inputs = x.clone().requires_grad_(True)
        out, _ = attn(inputs, attention_mask=mask)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads = {name: param.grad for name, param in attn.named_parameters()}
        results[implementation] = (out, inputs.grad, grads)
    eager, sdpa = results["eager"], results["sdpa"]
    torch.testing.assert_close(sdpa[0], eager[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa[1], eager[1], atol=1e-5, rtol=1e-5)
    for name in eager[2]:
        torch.testing.assert_close(sdpa[2][name], eager[2][name], atol=1e-5, rtol=1e-5, msg=name)
    assert eager[2]["diff_lambda.lambda_q1"].abs().sum() > 0  # λ is learned through the differential term


def test_rows_of_differential_maps_sum_to_one_minus_lambda():
    attn = make_attention("eager")
    x = torch.randn(2, 5, 48)
    _, maps = attn(x, attention_mask=causal_padding_mask([5, 3], 5), output_attentions=True)
    lam = attn.lambda_full().item()
    torch.testing.assert_close(maps.sum(-1), torch.full((2, 3, 5), 1 - lam), atol=1e-5, rtol=0)


def test_dynamic_schedule_sets_lambda_init_per_layer():
    for layer_idx in (0, 1, 5, 11):
        attn = make_attention("eager", layer_idx=layer_idx, lambda_schedule="dynamic")
        assert attn.lambda_init == pytest.approx(DYNAMIC_LAMBDA_INIT[layer_idx], abs=1e-6)
        x = torch.randn(1, 4, 48)
        expected, _, _ = reference_differential_attention(attn, x, None)
        torch.testing.assert_close(attn(x)[0].double(), expected, atol=1e-5, rtol=1e-5)
    constant = make_attention("eager", layer_idx=7, lambda_init=0.5)
    assert constant.lambda_init == 0.5


@pytest.mark.parametrize("ranges", [1, 2])
def test_differential_norm_gradients(ranges):
    """The fused difference-and-norm node against numerical gradients, for one or two column ranges (float64)."""
    generator = torch.Generator().manual_seed(4)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_(True)

    outputs = [leaf(2, 3, 2, 8 // ranges) for _ in range(2 * ranges)]
    args = (leaf(()), leaf(8), 0.2, 1e-5, *outputs)
    assert torch.autograd.gradcheck(DifferentialNorm.apply, args)
    first = torch.cat(outputs[0::2], -1)
    second = torch.cat(outputs[1::2], -1)
    diff = first - args[0] * second
    expected = diff / torch.sqrt(diff.pow(2).mean(-1, keepdim=True) + 1e-5) * args[1] * 0.2
    torch.testing.assert_close(DifferentialNorm.apply(*args), expected)
