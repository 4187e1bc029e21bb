"""Skip gates: a learned sigmoid interpolation between the decoder stream and its U-Net skip.

docs/techniques.md §12.2 (PR #1855 and its parents; SKIP_GATES_ENABLED). Where the core adds
a skip (x ← x + w_j ⊙ s_j, §3.1), a gated model computes

    x ← lerp(w_j ⊙ s_j, x, σ(g_j)) = σ(g_j) ⊙ x + (1 − σ(g_j)) ⊙ w_j ⊙ s_j      g_j ∈ R^d init 0

so at init the stream and the weighted skip are averaged. d parameters per skip (4,096 for
PR #1855's 8 skips), scalar (Adam) group, exported float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

import golfcore as golf


@dataclass
class Config(golf.Section):
    """No options: one gate vector per skip, init 0 (σ = 0.5), as the record."""


class SkipGates(nn.Module):
    def __init__(self, num_skips: int, model_dim: int):
        super().__init__()
        self.gates = golf.declare(nn.Parameter(torch.zeros(num_skips, model_dim)), "scalar", "float32")  # g [n,d]

    def forward(self, x: Tensor, weighted_skip: Tensor, j: int) -> Tensor:  # x, w_j ⊙ s_j [B,T,d] -> [B,T,d]
        return torch.lerp(weighted_skip, x, torch.sigmoid(self.gates[j].to(x.dtype)))


class SkipGatesPlugin(golf.Plugin):
    name = "skip_gates"
    description = "sigmoid-gated U-Net skips: x <- lerp(w*skip, x, sigmoid(g)) (PR #1855)"
    Config = Config
