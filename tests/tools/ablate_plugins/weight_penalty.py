"""A plugin with a real, harmful effect: a strong L2 penalty on every matrix keeps the model
close to its initialisation, so removing it lowers the loss (its Δ is negative)."""

from __future__ import annotations

from dataclasses import dataclass

import golfcore as golf


@dataclass
class Config(golf.Section):
    lam: float = golf.option(1.0, "penalty weight on the sum of squared matrix entries")


class WeightPenalty(golf.Plugin):
    name = "weight_penalty"
    description = "strong L2 penalty on all matrices (hurts)"
    Config = Config

    @golf.hookimpl
    def golf_loss_penalty(self, model, config, quantizer):
        matrices = [p for p in model.parameters() if p.ndim == 2]
        return lambda lr_scale: self.config.lam * sum((p.float() ** 2).sum() for p in matrices)
