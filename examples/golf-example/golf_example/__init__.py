"""A third-party golf plugin, packaged on its own: GELU as the MLP activation.

Installed with `pip install -e examples/golf-example`, it is discovered through the
`golf.plugins` entry point and runs only where a recipe says `[plugins.gelu_mlp]`.
"""

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import nn

import golfcore as golf


@dataclass
class Config(golf.Section):
    approximate: Literal["none", "tanh"] = golf.option("none", "GELU form: exact erf, or the tanh approximation")


class Gelu(nn.Module):
    def __init__(self, approximate: str):
        super().__init__()
        self.approximate = approximate

    def forward(self, u):  # [B,T,F]
        return F.gelu(u, approximate=self.approximate)


class GeluMLP(golf.Plugin):
    name = "gelu_mlp"
    description = "GELU MLP activation instead of relu² (example third-party plugin)"
    Config = Config
    conflicts = ("leaky_relu2",)  # both would be the MLP activation

    @golf.hookimpl
    def golf_edit_model(self, description):
        for layer in description.layers:
            layer.activation = golf.Part(Gelu, self.config.approximate)
