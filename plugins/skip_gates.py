"""Skip gates: a learned sigmoid interpolation between the decoder stream and its U-Net skip.

docs/techniques.md §12.2 (PR #1855 and its parents; SKIP_GATES_ENABLED). Where the core adds
a weighted skip (x ← x + w_j ⊙ s_j, docs/techniques.md §3.1), a gated model computes

    x ← lerp(w_j ⊙ s_j, x, σ(g_j)) = σ(g_j) ⊙ x + (1 − σ(g_j)) ⊙ w_j ⊙ s_j      w_j init 1, g_j ∈ R^d init 0

so at init the stream and the weighted skip are averaged. Replaces the description's skip
connection (`skips.connect`); the weights w keep their core name and init. d more parameters
per skip (4,096 for PR #1855's 8 skips), scalar (Adam) group, exported float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

import golfcore as golf


@dataclass
class Config(golf.Section):
    """No options: one gate vector per skip, init 0 (σ = 0.5), as the record."""


class GatedSkips(nn.Module):
    """U-Net skip j: lerp(w_j ⊙ skip, x, σ(g_j))."""

    def __init__(self, num_skips: int, model_dim: int):
        super().__init__()
        self.weights = golf.declare(nn.Parameter(torch.ones(num_skips, model_dim)), "scalar", "float32")  # w [n,d]
        self.gates = golf.declare(nn.Parameter(torch.zeros(num_skips, model_dim)), "scalar", "float32")  # g [n,d]

    def forward(self, x: Tensor, skip: Tensor, j: int) -> Tensor:  # x, skip [B,T,d] -> [B,T,d]
        return torch.lerp(self.weights[j].to(x.dtype) * skip, x, torch.sigmoid(self.gates[j].to(x.dtype)))


class SkipGates(golf.Plugin):
    name = "skip_gates"
    description = "sigmoid-gated U-Net skips: x <- lerp(w*skip, x, sigmoid(g)) (PR #1855)"
    Config = Config

    @golf.hookimpl
    def golf_edit_model(self, description, config):
        skips = description.skips
        num_skips = min(skips.encoder_layers, len(description.layers) - skips.encoder_layers)
        skips.connect = golf.Part(GatedSkips, num_skips, config.model.model_dim)
