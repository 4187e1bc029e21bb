"""What only a GPU can show: compiled bf16 models and the attention kernels against eager references.

Marked `cuda` and skipped without a GPU, except under tools/gpu-check.sh --dry
(GOLF_GPU_CHECK_DRY=1), which runs them on the CPU at tiny sizes so they cannot rot.
Tolerances are the bf16 rounding bound of docs/performance.md ("GPU check"): one rounding
of a logit of magnitude at most the softcap changes a log-probability by at most
2 * 2^-8 * softcap nats.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from golfcore import audit
from golfcore.assemble import build_model, check_config
from golfcore.attention import attention_kernel, causal_attention
from golfcore.plugins import Host, discover
from golfcore.recipe import load_recipe
from golfcore.train import autocast_for

DRY = os.environ.get("GOLF_GPU_CHECK_DRY") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(DEVICE.type != "cuda" and not DRY, reason="needs a CUDA GPU (or tools/gpu-check.sh --dry)"),
]
RECIPES = Path(__file__).resolve().parent.parent / "recipes"
DTYPE = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
QUICK = {"baseline.toml": "quickstart.toml", "pr549.toml": "pr549-quick.toml", "v4.toml": "v4-quick.toml"}  # dry: same plugins, small
def logprob_tolerance(softcap: float) -> float:
    """The legality probes' CUDA tolerance: one bf16 rounding of a logit bounded by the softcap."""
    return audit.tolerance(torch.device("cuda"), softcap).c3


@pytest.mark.parametrize("recipe", ["baseline.toml", "pr549.toml", "v4.toml"])
def test_compiled_bf16_model_matches_eager(recipe):
    torch._dynamo.reset()
    available = discover()
    config = load_recipe(RECIPES / (QUICK[recipe] if DRY else recipe), available)
    host = Host(config, available)
    check_config(config, host)
    model = build_model(config, host, host.first("golf_quantizer", config=config)).to(DEVICE)
    model.activation_dtype = DTYPE
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised projections would hide most of the graph
            if p.dim() == 2 and not p.any():
                p.normal_(0, 0.02)
    tokens = torch.randint(0, config.model.vocab_size, (2, 64 if DRY else 1024), device=DEVICE)
    with torch.no_grad(), autocast_for(DEVICE, DTYPE):
        eager = model.logprobs(tokens)
        compiled = torch.compile(model.logprobs, fullgraph=True)(tokens)
    worst = (compiled - eager).abs().max().item()
    assert worst <= logprob_tolerance(config.model.logit_softcap), f"{recipe}: compiled differs from eager by {worst:.3g} nats"


@pytest.mark.parametrize("kv_heads", [8, 4], ids=["mha", "gqa"])
def test_attention_kernel_matches_float32_reference(kv_heads):
    B, T, H, D = 2, 128 if DRY else 2048, 8, 64
    g = torch.Generator(device=DEVICE).manual_seed(0)
    q, k, v = (torch.randn(B, T, h, D, device=DEVICE, generator=g) for h in (H, kv_heads, kv_heads))
    q, k = 0.3 * q, 0.3 * k  # scores of the size a trained model's normalised, gained q and k give
    out = causal_attention(q.to(DTYPE), k.to(DTYPE), v.to(DTYPE)).float()
    repeat = H // kv_heads  # contiguous head grouping, as FlashAttention and SDPA's enable_gqa
    reference = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.repeat_interleave(repeat, 2).transpose(1, 2), v.repeat_interleave(repeat, 2).transpose(1, 2),
        is_causal=True,
    ).transpose(1, 2)
    if DTYPE == torch.bfloat16:
        # bf16 q and k move each score by at most 2u|q||k|/sqrt(D); softmax weights then move by at
        # most twice that (relative), and v and the output are rounded once each
        score_error = 2 * audit.BF16_UNIT_ROUNDOFF * q.norm(dim=-1).max().item() * k.norm(dim=-1).max().item() / D**0.5
        bound = (2 * score_error + 2 * audit.BF16_UNIT_ROUNDOFF) * v.abs().max().item()
    else:
        bound = 1e-5
    worst = (out - reference).abs().max().item()
    assert worst <= bound, f"{attention_kernel(DEVICE, DTYPE)} differs from the fp32 reference by {worst:.3g} (bound {bound:.3g})"
