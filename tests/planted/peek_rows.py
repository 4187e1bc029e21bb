"""Planted violation (C1): inside `adjust`, each row reads the next row's history, whose last
token is this row's target, and puts most of its probability there."""

import torch

import golfcore as golf


class Adapter:
    name, history_len = "planted_peek_rows", 1

    def start(self, model, ctx):
        pass

    def adjust(self, logprobs, history, positions):  # [N,V], [N,1], [N]
        nxt = torch.cat([history[1:, 0], history[-1:, 0]])  # the next row's input = this row's target
        follows = torch.cat([positions[1:] == positions[:-1] + 1, positions.new_zeros(1, dtype=torch.bool)])
        boost = torch.zeros_like(logprobs)
        boost[follows, nxt[follows].clamp_min(0)] = 8.0
        return torch.log_softmax(logprobs + boost, -1)

    def observe(self, tokens):
        pass


class PeekRows(golf.Plugin):
    name = "planted_peek_rows"
    description = "test plant: reads other rows' histories inside adjust"

    @golf.hookimpl
    def golf_eval_adapter(self, config):
        return Adapter()
