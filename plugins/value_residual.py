"""Value residual learning (VRL): every later layer blends in the first layer's values.

docs/techniques.md §5 (ResFormer, arXiv 2410.17897; PR #657; PR #733's version via PR #413/#638 and
PR #549). Virtual layer 0 stores its value v0 [B,T,G,D] in the per-forward context (`ctx.v0`)
(not detached: later layers' losses train layer 0's value path too) and leaves its own v
unchanged. Every virtual layer i ≥ 1 then uses, by `mode`:

    "mix"  (default; PR #733's run):  v ← λ_{i,0}·v0 + λ_{i,1}·v,      λ_i ∈ R² unconstrained, init (0.5, 0.5)
    "gate" (PR #657's description):   v ← (1−σ(γ_i))·v + σ(γ_i)·v0,     γ_i ∈ R init −1.5 (an 18% blend)

A value transform at order 10, after value embeddings (order 0): v0 is layer 0's value after
any VE addition, as in PR #733 (PR #657 took v_first before VE; with VE off layer 0, as in
every reference recipe, the two agree). XSA then projects out the mixed value, so the token's
own v0 component goes too.

Defect D7 fixed: layer 0 gets no parameters. The reference gave block 0 a λ pair that was
never used (v0 is None there) yet was still weight-decayed by AdamW. "gate" is offered because
the #733 README described sigmoid gates while its code ran the linear mix.

Under recurrence v0 is virtual layer 0's value. With the schedules golf builds (recurrence's
v2p starts [0, 1, ...]) that is physical layer 0; with any other schedule the first executed
layer still provides v0. Parameters: scalar group, exported float32. 2 per layer i ≥ 1 for
"mix" (24 at 13 virtual layers), 1 for "gate" (12).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

import golfcore as golf


@dataclass
class Config(golf.Section):
    mode: Literal["mix", "gate"] = golf.option(
        "mix", 'mix: v ← λ0·v0 + λ1·v (PR #733); gate: v ← (1−σ(γ))·v + σ(γ)·v0 (PR #657)'
    )
    mix_init: list[float] = golf.option([0.5, 0.5], "initial (λ0, λ1) of every layer >= 1 in mix mode")
    gate_init: float = golf.option(-1.5, "initial gate logit γ of every layer >= 1 in gate mode (σ(−1.5) ≈ 0.18)")

    def check(self) -> None:
        if len(self.mix_init) != 2 or not all(math.isfinite(x) for x in self.mix_init):
            raise self.invalid("mix_init", f"{self.mix_init} must be two finite numbers (λ0, λ1)")
        if not math.isfinite(self.gate_init):
            raise self.invalid("gate_init", "must be finite")


class CaptureFirstValue(nn.Module):
    """Virtual layer 0: store v in ctx.v0 (not detached); v passes through unchanged. No parameters."""

    order = 10

    def forward(self, v: Tensor, ctx: golf.ForwardContext) -> Tensor:  # v [B,T,G,D] -> same
        ctx.v0 = v
        return v


class ValueMix(nn.Module):
    """v ← λ0·v0 + λ1·v (mode "mix")."""

    order = 10

    def __init__(self, init: list[float]):
        super().__init__()
        self.lambdas = golf.declare(nn.Parameter(torch.tensor([float(x) for x in init])), "scalar", "float32")  # (λ0, λ1) [2]

    def forward(self, v: Tensor, ctx: golf.ForwardContext) -> Tensor:  # v [B,T,G,D] -> same
        lam = self.lambdas.to(v.dtype)
        return lam[0] * ctx.v0.to(v.dtype) + lam[1] * v


class ValueGate(nn.Module):
    """v ← (1−σ(γ))·v + σ(γ)·v0 (mode "gate")."""

    order = 10

    def __init__(self, init: float):
        super().__init__()
        self.gate = golf.declare(nn.Parameter(torch.tensor(float(init))), "scalar", "float32")  # γ []

    def forward(self, v: Tensor, ctx: golf.ForwardContext) -> Tensor:  # v [B,T,G,D] -> same
        s = torch.sigmoid(self.gate).to(v.dtype)
        return (1 - s) * v + s * ctx.v0.to(v.dtype)


class ValueResidual(golf.Plugin):
    name = "value_residual"
    description = "later layers blend in layer 0's values: λ mix or sigmoid gate (PR #657 / #733; D7 fixed)"
    Config = Config

    @golf.hookimpl
    def golf_edit_model(self, description):
        c = self.config
        for layer in description.layers:
            if layer.info.virtual == 0:  # the first executed layer provides v0, whatever physical layer it runs
                layer.value_transforms.append(golf.Part(CaptureFirstValue))
            elif c.mode == "mix":
                layer.value_transforms.append(golf.Part(ValueMix, c.mix_init))
            else:
                layer.value_transforms.append(golf.Part(ValueGate, c.gate_init))
