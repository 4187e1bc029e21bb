"""Sparse attention gate: a head-wise sigmoid gate on the attention output, read from the first
`window` dims of the attention input only.

docs/techniques.md §12.3 (PR #1787, modded-nanogpt's narrow gate; in PR #1855 with window 12 and
scale 0.5). For the normalized attention input x̃_t (RMSNorm and any sublayer input scale, as
the block passes it to output transforms) and per-head output y_{t,h}:

    y_{t,h} ← σ(s · w_h·x̃_t[:window]) · y_{t,h}        W = [w_h] ∈ R^{H×window} init 0 (σ = 0.5)

Gated attention (docs/techniques.md §6) reads all d dims and has a bias; this gate reads
`window` dims, has no bias and starts at one half. An attention-output transform at order 10, after XSA (order 0).
One gate per virtual layer; selected by `layers`/`index` (golf.LayerSelection).

Parameters: H·window per gated layer (96 at H=8, window 12), scalar (Adam) group. Export:
float16 (the record stored it int8 per row with an fp16 scale per head: 8 bytes fewer per layer).
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
    """`layers`/`index` as golf.LayerSelection ("all" virtual layers by default), the window and scale."""

    window: int = golf.option(12, "leading dims of the attention input the gate reads")
    scale: float = golf.option(0.5, "s in σ(s·W x̃[:window]) (PR #1855: 0.5; PR #1787: 1.0)")
    init_std: float = golf.option(0.0, "std of W's normal init (0 = zeros, the record)")

    def check(self) -> None:
        super().check()
        if self.window < 1:
            raise self.invalid("window", f"{self.window} must be >= 1")
        if not math.isfinite(self.scale):
            raise self.invalid("scale", "must be finite")
        if not (math.isfinite(self.init_std) and self.init_std >= 0):
            raise self.invalid("init_std", f"{self.init_std} must be >= 0")


class SparseHeadGate(nn.Module):
    """y_h ← σ(s · w_h·x̃[:window])·y_h for one virtual layer."""

    order = 10

    def __init__(self, num_heads: int, window: int, scale: float, init_std: float):
        super().__init__()
        self.window, self.scale = window, scale
        w = torch.zeros(num_heads, window)
        if init_std > 0:
            nn.init.normal_(w, std=init_std)
        self.weight = golf.declare(nn.Parameter(w), "scalar", "float16")  # W [H,window]

    def forward(self, y: Tensor, v: Tensor, x: Tensor, ctx: golf.ForwardContext) -> Tensor:  # y [B,T,H,D], x [B,T,d]
        g = torch.sigmoid(self.scale * F.linear(x[..., : self.window], self.weight.to(x.dtype)))  # [B,T,H]
        return y * g.to(y.dtype).unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"window={self.window}, scale={self.scale}"


class SparseAttentionGate(golf.Plugin):
    name = "sparse_attention_gate"
    description = "head-wise sigmoid gate on the attention output from the first `window` input dims (PR #1787/#1855)"
    Config = Config

    @golf.hookimpl
    def golf_check_config(self, config):
        if self.config.window > config.model.model_dim:
            raise golf.ConfigError(
                f"[plugins.sparse_attention_gate] window: {self.config.window} exceeds model_dim {config.model.model_dim}"
            )

    @golf.hookimpl
    def golf_edit_model(self, description, config):
        c = self.config
        for layer in description.layers:
            if c.selects(layer.info):
                layer.output_transforms.append(golf.Part(SparseHeadGate, config.model.num_heads, c.window, c.scale, c.init_std))
