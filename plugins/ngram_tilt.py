"""Token n-gram tilt: a causal order-k token n-gram proposes at most one hint token per
scored position, whose probability is boosted by exp(beta), the distribution renormalized
(docs/techniques.md §14; PR #1514 -> #2130 -> #2135).

Table: for every context c (the k-1 tokens before a target), the count n(c, y) of each next
token y, the total n(c) and the top token h(c), the first to reach the largest count. It
holds only targets already observed (scored); `observe` counts each target once, in stream
order, with the k-1 tokens before it, those carried over from the previous chunk included.
The adapter never sees val[0] (the first input is no target), so the first k-1 targets have
a context with an unknown token: they are not counted.

Hint at a scored position with context c (the eval loop's history, exactly the k-1 inputs
up to and including its own): h(c) when n(c, h) / n(c) >= `threshold`, none otherwise (an
unseen context, or one whose history reaches before the stream start, has none).

Tilt, with p the incoming distribution and beta = `boost`:

    q(y) = p(y) * exp(beta * [y == h]) / Z,    Z = 1 + p(h) * (exp(beta) - 1)

so q sums to 1 exactly (C2); positions without a hint pass through unchanged. Contexts span
documents, as in the reference. Token channel only: the reference's within-word and
word-start channels predicted from the current word and were ruled out (PR #1420); this
adapter declares `ngram_channel = "token"` for the compliance record.

Every rank observes the whole chunk, so the tables are identical on every rank. The table
is a Python dict of exact contexts (no hashing, no collisions), one entry per distinct
context. Cost on a loaded CPU (docs/techniques.md §14): ~5 us per observed target and ~55 us
per scored position, minutes at the 47.9M validation targets; full scale needs the table on
the accelerator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

import golfcore as golf


@dataclass
class Config(golf.Section):
    order: int = golf.option(16, "n-gram order k: the context is the k-1 previous tokens (PR #2135: 16)", at_least=2)
    boost: float = golf.option(2.625, "beta: the hint's probability is multiplied by exp(beta), then renormalized")
    threshold: float = golf.option(0.8, "propose h(c) only when n(c, h) / n(c) >= threshold", above=0, at_most=1)


class NgramTilt:
    """One evaluation's n-gram table (fresh per evaluation)."""

    name = "ngram_tilt"
    order = 20  # after TTT (0) and the Hedge mixer (10): it tilts the final distribution
    ngram_channel = "token"  # hints come from the previous tokens only (docs/compliance.md)

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.history_len = cfg.order - 1

    def start(self, model, ctx: golf.EvalContext) -> None:
        self.table: dict[tuple[int, ...], list] = {}  # context -> [counts {y: n}, total, top token, top count]
        self.carry = [-1] * self.history_len  # the last k-1 observed targets (-1: unknown)

    def hints(self, history: Tensor) -> Tensor:
        """[N] hint token per position, -1 where none."""
        out = []
        for context in map(tuple, history.tolist()):
            entry = self.table.get(context)
            out.append(entry[2] if entry is not None and entry[3] >= self.cfg.threshold * entry[1] else -1)
        return torch.tensor(out, dtype=torch.long, device=history.device)

    def adjust(self, logprobs: Tensor, history: Tensor, positions: Tensor) -> Tensor:
        hint = self.hints(history)  # [N]
        hinted = hint >= 0
        if not hinted.any():
            return logprobs
        rows = hinted.nonzero().squeeze(1)
        lp = logprobs[rows]  # [n,V]
        hint_lp = lp.gather(1, hint[rows, None])  # [n,1] log p(h)
        log_z = torch.log1p(hint_lp.exp() * math.expm1(self.cfg.boost))  # [n,1]
        tilted = (lp - log_z).scatter_add(1, hint[rows, None], torch.full_like(hint_lp, self.cfg.boost))
        return logprobs.index_copy(0, rows, tilted)

    def observe(self, tokens: Tensor) -> None:
        stream = self.carry + tokens.tolist()
        k = self.history_len
        for i in range(k, len(stream)):
            context, y = tuple(stream[i - k : i]), stream[i]
            if context[0] < 0:
                continue
            entry = self.table.get(context)
            if entry is None:
                entry = self.table[context] = [{}, 0, y, 0]
            counts = entry[0]
            n = counts[y] = counts.get(y, 0) + 1
            entry[1] += 1
            if n > entry[3]:
                entry[2], entry[3] = y, n
        self.carry = stream[-k:]


class NgramTiltPlugin(golf.Plugin):
    name = "ngram_tilt"
    description = "causal token n-gram proposes one hint per position, boosted by exp(beta) and renormalized (PR #2135)"
    Config = Config

    @golf.hookimpl
    def golf_eval_adapter(self, config):
        return NgramTilt(self.config)
