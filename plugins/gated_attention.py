"""Gated attention: a learned head-wise sigmoid gate on the attention output, before W_o.

docs/techniques.md §6 (PR #638; Qiu et al. 2025, the Qwen "G1" gate, head-specific form):

    y_{t,h} ← σ(w_h·x̃_t + b_h) · y_{t,h}        W = [w_h] ∈ R^{H×d} init 0,  b ∈ R^H init 4 (σ ≈ 0.982)

x̃ is the attention input the block passes to output transforms: RMSNorm(x_in) times any
sublayer input scale (ln_scale's 1/√(i+1)), so in deep layers the bias dominates, as in the
reference. An attention-output transform at order 10: after XSA (order 0); a head-wise scalar
gate commutes with XSA anyway. One gate per virtual layer (under recurrence each repeat owns its
gate). Reproduces the reference; fixes no defect.

Parameters: H·d + H per gated layer (4,104 at d=512, H=8; 53,352 over 13 virtual layers), in
the scalar (Adam) group as in the reference. Export: W as float16, as the reference stored it
(zero-initialised, small entries; 4,096 values); b as float32: 8 values, where fp16 would round a
bias near 4 to steps of 2^-8 (gate errors up to ~3.5e-5 at σ ≈ 0.98) to save 16 bytes.

`layers` selects the gated layers as in the xsa plugin: "all" (default), "last:N", or a list of
indices read as `index` says (virtual by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import golfcore as golf

@dataclass
class Config(golf.LayerSelection):
    """`layers`/`index` as golf.LayerSelection ("all" virtual layers by default), plus the bias."""

    bias_init: float = golf.option(4.0, "initial gate bias b_h (4 = σ ≈ 0.982, near pass-through)")

    def check(self) -> None:
        super().check()
        if not math.isfinite(self.bias_init):
            raise self.invalid("bias_init", "must be finite")


class HeadGate(nn.Module):
    """y_h ← σ(w_h·x̃ + b_h)·y_h for one virtual layer."""

    order = 10

    def __init__(self, model_dim: int, num_heads: int, bias_init: float):
        super().__init__()
        self.weight = golf.declare(nn.Parameter(torch.zeros(num_heads, model_dim)), "scalar", "float16")  # W [H,d]
        self.bias = golf.declare(nn.Parameter(torch.full((num_heads,), float(bias_init))), "scalar", "float32")  # b [H]

    def forward(self, y: Tensor, v: Tensor, x: Tensor, ctx: golf.ForwardContext) -> Tensor:  # y [B,T,H,D], x [B,T,d] -> [B,T,H,D]
        g = torch.sigmoid(F.linear(x, self.weight.to(x.dtype), self.bias.to(x.dtype)))  # [B,T,H]
        return y * g.to(y.dtype).unsqueeze(-1)


class GatedAttention(golf.Plugin):
    name = "gated_attention"
    description = "head-wise sigmoid gate on the attention output before W_o (PR #638, Qwen G1)"
    Config = Config

    @golf.hookimpl
    def golf_edit_model(self, description, config):
        for layer in description.layers:
            if self.config.selects(layer.info):
                layer.output_transforms.append(golf.Part(HeadGate, config.model.model_dim, config.model.num_heads, self.config.bias_init))
