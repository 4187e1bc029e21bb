"""Parallel residuals: from physical layer `start` on, attention and MLP read and write two lanes.

docs/techniques.md §12.1 (PR #1529 and #1530; PR #1855 from layer 8). The layer before `start`
hands its output to both lanes; a parallel layer with lanes (a, m) computes

    A = attn_scale ⊙ Attn(RMSNorm(μ₀ ⊙ a + μ₁ ⊙ x0) · s)          (resid_mix reads the attention lane)
    M = mlp_scale ⊙ MLP(RMSNorm(m) · s)                              (the MLP reads the MLP lane, not a + A)
    a ← r₀ · a + P₀₀ · A + P₁₀ · M
    m ← r₁ · m + P₀₁ · A + P₁₁ · M          r ∈ R² init 1.1,  P ∈ R^{2×2} init 1

U-Net skips go into the attention lane; the final norm reads the lanes' mean (`final_lane`, or
one lane). Between layers the lanes travel as one stacked tensor [2,B,T,d]; the plugin wraps
the description's skip connection and final norm (after every other plugin's edit) so that
both see lanes. 6 parameters per parallel layer, scalar (Adam) group, exported float32. The
record allocates r and P for every physical layer and reads those of layers ≥ start only;
`all_layers = true` keeps the unused ones so the parameter count equals its log's (48 at 11
layers, start 8). Needs the parallel layers to be the schedule's last ones and the layer
before them to run once, in the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

import golfcore as golf

RESID_INIT = 1.1  # the record's lane carry at init


@dataclass
class Config(golf.Section):
    start: int = golf.option(8, "first physical layer that runs parallel (every later one does too)")
    final_lane: Literal["mean", "attn", "mlp"] = golf.option("mean", "what the final norm reads: the lanes' mean or one lane")
    all_layers: bool = golf.option(
        False, "give every physical layer r and P as the record did (unused below start; its parameter count)"
    )

    def check(self) -> None:
        if self.start < 1:
            raise self.invalid("start", f"{self.start} must be >= 1 (the layer before it splits the stream)")


class LaneMix(nn.Module):
    """One parallel layer's lane update from its attention and MLP outputs."""

    def __init__(self, resid_init: float = RESID_INIT):
        super().__init__()
        self.resid = golf.declare(nn.Parameter(torch.full((2,), float(resid_init))), "scalar", "float32")  # r [lane]
        self.post = golf.declare(nn.Parameter(torch.ones(2, 2)), "scalar", "float32")  # P [attn/mlp, lane]

    def forward(self, a: Tensor, m: Tensor, attn: Tensor, mlp: Tensor) -> tuple[Tensor, Tensor]:  # all [B,T,d]
        r, P = self.resid.to(a.dtype), self.post.to(a.dtype)
        return r[0] * a + P[0, 0] * attn + P[1, 0] * mlp, r[1] * m + P[0, 1] * attn + P[1, 1] * mlp


class LanedBlock(golf.Block):
    """A sequential block owning lane parameters it does not use (`all_layers`: the record's count)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lanes = LaneMix()


class ParallelBlock(LanedBlock):
    def forward(self, x: Tensor, x0: Tensor, w, ctx: golf.ForwardContext) -> Tensor:  # x [2,B,T,d] lanes (a, m)
        a, m = x.unbind(0)
        mix = self.resid_mix.to(a.dtype)
        attn = self.attn_scale.to(a.dtype) * self.attention(self.attn_norm(mix[0] * a + mix[1] * x0) * self.input_scale, w, ctx)
        mlp = self.mlp_scale.to(m.dtype) * self.mlp(self.mlp_norm(m) * self.input_scale, w)
        return torch.stack(self.lanes(a, m, attn, mlp))


class SplitBlock(golf.Block):
    """The layer before the first parallel one: its output starts both lanes."""

    def forward(self, x: Tensor, x0: Tensor, w, ctx: golf.ForwardContext) -> Tensor:  # -> [2,B,T,d]
        x = super().forward(x, x0, w, ctx)
        return torch.stack((x, x))


class LanedSplitBlock(SplitBlock, LanedBlock):
    """SplitBlock with the record's unused lane parameters."""


class LaneSkips(nn.Module):
    """Wraps the skip connection: with lanes, the skip enters the attention lane only."""

    def __init__(self, connect: nn.Module):
        super().__init__()
        self.connect = connect

    def forward(self, x: Tensor, skip: Tensor, j: int) -> Tensor:  # x [B,T,d] or lanes [2,B,T,d]
        if x.dim() == skip.dim():
            return self.connect(x, skip, j)
        return torch.stack((self.connect(x[0], skip, j), x[1]))


class LaneMerge(nn.Module):
    """Wraps the final norm: lanes merge first (`final_lane`)."""

    def __init__(self, norm: nn.Module, final_lane: str):
        super().__init__()
        self.norm, self.final_lane = norm, final_lane

    def forward(self, x: Tensor) -> Tensor:  # [2,B,T,d] (or [B,T,d] when no layer ran parallel) -> [B,T,d]
        if x.dim() == 4:
            a, m = x.unbind(0)
            x = a if self.final_lane == "attn" else m if self.final_lane == "mlp" else 0.5 * (a + m)
        return self.norm(x)

    def extra_repr(self) -> str:
        return f"final_lane={self.final_lane!r}"


class ParallelResiduals(golf.Plugin):
    name = "parallel_residuals"
    description = "two residual lanes from layer `start`: attention and MLP in parallel, learned lane mix (PR #1529/#1855)"
    Config = Config

    @golf.hookimpl
    def golf_check_config(self, config, schedule):
        start, L = self.config.start, config.model.num_layers
        where = "[plugins.parallel_residuals] start"
        if start >= L:
            raise golf.ConfigError(f"{where}: {start} is not among the model's {L} physical layers (1..{L - 1})")
        for sched in (schedule, list(range(L))):  # with the full schedule and with every layer once (a delayed loop off)
            split = [i for i, p in enumerate(sched) if p == start - 1]
            if len(split) != 1 or split[0] < len(sched) // 2 or any(p < start for p in sched[split[0] + 1 :]):
                raise golf.ConfigError(
                    f"{where}: {start} needs layer {start - 1} to run once, in the decoder, with only layers >= {start} after it"
                )

    @golf.hookimpl(trylast=True)  # wraps the skip connection and final norm whatever others set
    def golf_edit_model(self, description):
        c = self.config
        for layer in description.layers:
            p = layer.info.physical
            if p >= c.start:
                layer.block = ParallelBlock
            elif p == c.start - 1:
                layer.block = LanedSplitBlock if c.all_layers else SplitBlock
            elif c.all_layers:
                layer.block = LanedBlock
        description.skips.connect = golf.Part(LaneSkips, description.skips.connect)
        description.head.norm = golf.Part(LaneMerge, description.head.norm, c.final_lane)
