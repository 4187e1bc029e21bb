"""Planted violation (C2): an eval adapter whose distributions sum to e^0.5, not 1."""

import golfcore as golf


class Adapter:
    name, history_len = "planted_unnormalized", 0

    def start(self, model, ctx):
        pass

    def adjust(self, logprobs, history, positions):
        return logprobs + 0.5

    def observe(self, tokens):
        pass


class Unnormalized(golf.Plugin):
    name = "planted_unnormalized"
    description = "test plant: unnormalized log-probabilities"

    @golf.hookimpl
    def golf_eval_adapter(self, config):
        return Adapter()
