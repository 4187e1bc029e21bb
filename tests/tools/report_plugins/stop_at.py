"""Test plugin: sends this process SIGTERM at the end of step `at` (the trainer then stops, interrupted)."""

import os
import signal
from dataclasses import dataclass

import golfcore as golf


@dataclass
class Config(golf.Section):
    at: int = golf.option(2, "the step after which SIGTERM arrives")


class StopAt(golf.Plugin):
    name = "stop_at"
    description = "test plant: SIGTERM after step `at`"
    Config = Config

    @golf.hookimpl
    def golf_step_end(self, model, step, lr_scale):
        if step == self.config.at:
            os.kill(os.getpid(), signal.SIGTERM)
