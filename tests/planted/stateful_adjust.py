"""Planted violation (C3): `adjust` counts the inputs of the rows it was given into its own
table after using it, so a score depends on how the positions were batched."""

import math

import torch

import golfcore as golf


class Adapter:
    name, history_len = "planted_stateful_adjust", 1

    def start(self, model, ctx):
        self.counts = torch.ones(ctx.vocab_size, device=ctx.device)

    def adjust(self, logprobs, history, positions):
        unigram = (self.counts / self.counts.sum()).log()  # [V]
        out = torch.logaddexp(logprobs, unigram.expand_as(logprobs)) - math.log(2)
        self.counts.index_add_(0, history[:, 0].clamp_min(0), torch.ones(history.size(0), device=history.device))
        return out

    def observe(self, tokens):
        pass


class StatefulAdjust(golf.Plugin):
    name = "planted_stateful_adjust"
    description = "test plant: changes its state inside adjust"

    @golf.hookimpl
    def golf_eval_adapter(self, config):
        return Adapter()
