"""Parallel residuals: from physical layer `start` on, attention and MLP read and write two lanes.

docs/techniques.md §12.1 (PR #1529 and #1530; PR #1855 from layer 8). At the first parallel
layer both lanes start as the stream x. A parallel layer with lanes (a, m):

    A = attn_scale ⊙ Attn(RMSNorm(μ₀ ⊙ a + μ₁ ⊙ x0) · s)          (resid_mix reads the attention lane)
    M = mlp_scale ⊙ MLP(RMSNorm(m) · s)                              (the MLP reads the MLP lane, not a + A)
    a ← r₀ · a + P₀₀ · A + P₁₀ · M
    m ← r₁ · m + P₀₁ · A + P₁₁ · M          r ∈ R² init 1.1,  P ∈ R^{2×2} init 1

U-Net skips go into the attention lane. After the last layer the lanes merge (`final_lane`:
their mean, the record; or one lane) before the final norm. 6 parameters per parallel layer,
scalar (Adam) group, exported float32. The record allocates r and P for every physical layer
and uses those of layers ≥ start only; `all_layers = true` keeps the unused ones so that the
parameter count equals its log's (48 dead parameters at 11 layers, start 8).
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
    start: int = golf.option(8, "first physical layer that runs parallel (every later one does too)")
    final_lane: Literal["mean", "attn", "mlp"] = golf.option("mean", "what leaves the last layer: the lanes' mean or one lane")
    resid_init: float = golf.option(1.1, "initial lane carry r (the record: 1.1)")
    all_layers: bool = golf.option(
        False, "allocate r and P for every physical layer as the record did (unused below start; its parameter count)"
    )

    def check(self) -> None:
        if self.start < 0:
            raise self.invalid("start", f"{self.start} must be >= 0")
        if not math.isfinite(self.resid_init):
            raise self.invalid("resid_init", "must be finite")


class LaneMix(nn.Module):
    """One parallel layer's lane update from its attention and MLP outputs."""

    def __init__(self, resid_init: float):
        super().__init__()
        self.resid = golf.declare(nn.Parameter(torch.full((2,), float(resid_init))), "scalar", "float32")  # r [lane]
        self.post = golf.declare(nn.Parameter(torch.ones(2, 2)), "scalar", "float32")  # P [attn/mlp, lane]

    def forward(self, a: Tensor, m: Tensor, attn: Tensor, mlp: Tensor) -> tuple[Tensor, Tensor]:  # all [B,T,d]
        r, P = self.resid.to(a.dtype), self.post.to(a.dtype)
        return r[0] * a + P[0, 0] * attn + P[1, 0] * mlp, r[1] * m + P[0, 1] * attn + P[1, 1] * mlp


def merge_lanes(a: Tensor, m: Tensor, final_lane: str) -> Tensor:
    if final_lane == "attn":
        return a
    if final_lane == "mlp":
        return m
    return 0.5 * (a + m)


class ParallelResiduals(golf.Plugin):
    name = "parallel_residuals"
    description = "two residual lanes from layer `start`: attention and MLP in parallel, learned lane mix (PR #1529/#1855)"
    Config = Config
