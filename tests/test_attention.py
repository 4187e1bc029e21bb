"""The attention kernel choice: SDPA off Hopper (here), with GQA, equal to attention written out."""

import math

import torch

from golfcore.attention import attention_kernel, causal_attention


def test_sdpa_on_cpu_matches_written_out_causal_gqa_attention():
    g = torch.Generator().manual_seed(0)
    B, T, H, G, D = 2, 7, 4, 2, 8
    q, k, v = torch.randn(B, T, H, D, generator=g), torch.randn(B, T, G, D, generator=g), torch.randn(B, T, G, D, generator=g)
    assert attention_kernel(torch.device("cpu"), torch.bfloat16) == "sdpa"
    kh, vh = k.repeat_interleave(H // G, dim=2), v.repeat_interleave(H // G, dim=2)  # query head h reads kv head h // (H/G)
    scores = torch.einsum("bthd,bshd->bhts", q, kh) / math.sqrt(D)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    expected = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), vh)
    assert torch.allclose(causal_attention(q, k, v), expected, atol=1e-5)
