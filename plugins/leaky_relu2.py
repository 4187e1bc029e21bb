"""LeakyReLU(slope)² MLP activation (docs/techniques.md §3.2).

`h = leaky_relu(u, slope)² = (max(u, 0) + slope·min(u, 0))²` replaces the baseline's relu(u)²
in every virtual layer's MLP; slope 0.5 is the PR #549 stack's value (from PR #493, reported
−0.002 to −0.003 bpb). Negative pre-activations keep a gradient, so no hidden unit dies.
The activation is 2-homogeneous, which is why LN scale's s_i reaches the MLP output as s_i².

No parameters. Fixes no reference defect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

import golfcore as golf


@dataclass
class Config(golf.Section):
    slope: float = golf.option(0.5, "negative slope of the leaky ReLU before squaring (0 = the baseline's relu²)")

    def check(self) -> None:
        if not (math.isfinite(self.slope) and 0.0 <= self.slope <= 1.0):
            raise self.invalid("slope", f"{self.slope} must be in [0, 1]")


class LeakyReluSquared(nn.Module):
    def __init__(self, slope: float):
        super().__init__()
        self.slope = slope

    def forward(self, u: Tensor) -> Tensor:  # u [B,T,F] -> [B,T,F]
        return F.leaky_relu(u, negative_slope=self.slope).square()

    def extra_repr(self) -> str:
        return f"slope={self.slope}"


class LeakyRelu2(golf.Plugin):
    name = "leaky_relu2"
    description = "MLP activation leaky_relu(u, 0.5)² instead of relu(u)² (PR #549 stack)"
    Config = Config

    @golf.hookimpl
    def golf_edit_model(self, description):
        for layer in description.layers:
            layer.activation = golf.Part(LeakyReluSquared, self.config.slope)
