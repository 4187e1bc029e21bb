"""Planted violation (C1, late): like peek_rows, each row reads the next row's history (its own
target) and moves probability there, but only at stream positions >= `start_at`: half of the
recipe's `data.max_val_tokens`, past any prefix a probe scores. Only probes drawn over the
whole pass see it."""

import torch

import golfcore as golf


class Adapter:
    name, history_len = "planted_late_peek", 1

    def __init__(self, start_at: int = 150):
        self.start_at = start_at

    def start(self, model, ctx):
        pass

    def adjust(self, logprobs, history, positions):  # [N,V], [N,1], [N]
        nxt = torch.cat([history[1:, 0], history[-1:, 0]])  # the next row's input = this row's target
        follows = torch.cat([positions[1:] == positions[:-1] + 1, positions.new_zeros(1, dtype=torch.bool)])
        late = follows & (positions >= self.start_at)
        boost = torch.zeros_like(logprobs)
        boost[late, nxt[late].clamp_min(0)] = 8.0
        return torch.log_softmax(logprobs + boost, -1)

    def observe(self, tokens):
        pass


class LatePeek(golf.Plugin):
    name = "planted_late_peek"
    description = "test plant: reads other rows' histories, only in the second half of the stream"

    @golf.hookimpl
    def golf_eval_adapter(self, config):
        return Adapter(max(config.data.max_val_tokens, 2) // 2)
