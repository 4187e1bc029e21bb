"""LN scale: the normalized inputs of both sublayers of layer i are multiplied by 1/sqrt(i+1).

docs/techniques.md §3.6 (the PR #549 stack; with partial RoPE −0.0023 bpb in the 2026-03-21
record). s_i = 1/√(i+1) with i the *virtual* index (execution depth), as the reference did
under recurrence; `index = "physical"` uses the physical layer instead. The factor is a
build-time constant folded into each block (the description's `Layer.input_scale`).

Effects worth knowing: q and k are re-normalized per head, so in attention s_i only scales
v (and any gate reading the attention input); the MLP is 2-homogeneous (relu², leaky relu²),
so its output is scaled by s_i². No parameters. Fixes no reference defect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import golfcore as golf


@dataclass
class Config(golf.Section):
    index: Literal["virtual", "physical"] = golf.option(
        "virtual", "layer index i in 1/sqrt(i+1): virtual (execution depth, the reference) or physical"
    )


class LnScale(golf.Plugin):
    name = "ln_scale"
    description = "scale layer i's normalized sublayer inputs by 1/sqrt(i+1) (PR #549 stack)"
    Config = Config

    @golf.hookimpl
    def golf_edit_model(self, description):
        for layer in description.layers:
            i = layer.info.virtual if self.config.index == "virtual" else layer.info.physical
            layer.input_scale *= 1.0 / math.sqrt(i + 1)
