"""Test plugin: a loss penalty that turns NaN at step `at` (the run diverges)."""

from dataclasses import dataclass

import golfcore as golf


@dataclass
class Config(golf.Section):
    at: int = golf.option(3, "the step whose loss is NaN")


class NanAt(golf.Plugin):
    name = "nan_at"
    description = "test plant: NaN loss at step `at`"
    Config = Config

    def __init__(self, config=None):
        super().__init__(config)
        self.done = 0

    @golf.hookimpl
    def golf_loss_penalty(self, model, config, quantizer):
        weight = next(model.parameters())  # through a weight, so the gradients turn NaN too
        return lambda lr_scale: weight.sum() * (float("nan") if self.done + 1 == self.config.at else 0.0)

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        self.done = step
