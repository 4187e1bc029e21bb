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

The table is tensors on the evaluation's device, updated per observed chunk with sorts and
scatters (no Python loop over tokens). A context is a 64-bit key, a chain of splitmix64 over
its tokens: two distinct contexts share a key with probability 2^-64, so among n contexts any
collision has probability <= n^2 / 2^65 (6e-5 at the 47.9M validation targets); a collision
would merge two contexts' counts. A context gets an id in order of first sight; (id, y) pairs
are exact keys id * V + y. Within a chunk, the occurrence that reaches the largest running
count earliest in the stream is the top, which is the same "first to reach" rule, counted
target by target. Every rank observes the whole chunk, so the tables are identical on every
rank. Cost: `python -m golf_tools.bench_ngram_tilt` (docs/techniques.md §14).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

import golfcore as golf

_MIX = (0xBF58476D1CE4E5B9 - (1 << 64), 0x94D049BB133111EB - (1 << 64))  # splitmix64's multipliers, as int64


def _splitmix(x: Tensor) -> Tensor:
    """splitmix64's finalizer on int64 (wrapping products; >> made logical by masking)."""
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _MIX[0]
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _MIX[1]
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def context_keys(contexts: Tensor) -> Tensor:
    """[N, K] tokens -> [N] int64 keys."""
    key = torch.zeros(contexts.size(0), dtype=torch.long, device=contexts.device)
    for j in range(contexts.size(1)):
        key = _splitmix(key ^ (contexts[:, j].long() + 1))
    return key


def _find(sorted_keys: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(index into sorted_keys, found, the value there or -1), each [N], of each key."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(keys), torch.zeros_like(keys, dtype=torch.bool), torch.full_like(keys, -1)
    at = torch.searchsorted(sorted_keys, keys).clamp_max(sorted_keys.numel() - 1)
    found = sorted_keys[at] == keys
    return at, found, torch.where(found, values[at], -1)


def _merge(sorted_keys: Tensor, values: Tensor, new_keys: Tensor, new_values: Tensor) -> tuple[Tensor, Tensor]:
    """Insert sorted `new_keys` (none present) and their values into sorted_keys / values."""
    at = torch.searchsorted(sorted_keys, new_keys) + torch.arange(new_keys.numel(), device=new_keys.device)
    old = torch.ones(sorted_keys.numel() + new_keys.numel(), dtype=torch.bool, device=new_keys.device)
    old[at] = False
    keys, vals = sorted_keys.new_empty(old.numel()), values.new_empty(old.numel())
    keys[at], vals[at] = new_keys, new_values
    keys[old], vals[old] = sorted_keys, values
    return keys, vals


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
        long = dict(dtype=torch.long, device=ctx.device)
        self.vocab_size = ctx.vocab_size
        self.keys, self.ids = torch.empty(0, **long), torch.empty(0, **long)  # [C] sorted context keys, their ids
        self.total, self.top_token, self.top_count = (torch.empty(0, **long) for _ in range(3))  # [C] by id
        self.pair_keys, self.pair_counts = torch.empty(0, **long), torch.empty(0, **long)  # [P] sorted id*V+y, n(c, y)
        self.carry = torch.full((self.history_len,), -1, **long)  # the last k-1 observed targets (-1: unknown)

    def lookup(self, contexts: Tensor) -> Tensor:
        """[N, K] contexts -> [N] ids, -1 for an unseen one (or one holding a -1: before the stream)."""
        ids = _find(self.keys, context_keys(contexts), self.ids)[2]
        return torch.where((contexts >= 0).all(1), ids, -1)

    def hints(self, history: Tensor) -> Tensor:
        """[N] hint token per position, -1 where none."""
        ids = self.lookup(history.to(self.keys.device))
        if self.total.numel() == 0:
            return ids.to(history.device)
        i = ids.clamp_min(0)
        ok = (ids >= 0) & (self.top_count[i].double() >= self.cfg.threshold * self.total[i].double())
        return torch.where(ok, self.top_token[i], -1).to(history.device)

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
        k = self.history_len
        stream = torch.cat([self.carry, tokens.to(self.carry.device).long()])  # [k+T]
        contexts, targets = stream.unfold(0, k, 1)[:-1], stream[k:]  # [T,k], [T]
        self.carry = stream[-k:]
        known = contexts[:, 0] >= 0  # -1s only lead the stream
        contexts, targets = contexts[known], targets[known]
        if targets.numel() == 0:
            return
        keys = context_keys(contexts)
        _, found, ids = _find(self.keys, keys, self.ids)  # [M]
        new = torch.unique(keys[~found])  # sorted
        if new.numel():
            n = self.total.numel()
            self.keys, self.ids = _merge(self.keys, self.ids, new, torch.arange(n, n + new.numel(), device=new.device))
            zeros = torch.zeros(new.numel(), dtype=torch.long, device=new.device)
            self.total, self.top_token, self.top_count = (torch.cat([t, zeros]) for t in (self.total, self.top_token, self.top_count))
            ids = _find(self.keys, keys, self.ids)[2]
        self.total.index_add_(0, ids, torch.ones_like(ids))
        # running count of each occurrence's (context, token) pair: its count before the chunk + its rank within it
        pairs, order = torch.sort(ids * self.vocab_size + targets, stable=True)  # [M], stream position of each
        unique, inverse, counts = torch.unique_consecutive(pairs, return_inverse=True, return_counts=True)
        rank = torch.arange(pairs.numel(), device=pairs.device) - (torch.cumsum(counts, 0) - counts)[inverse]
        at, seen, before = _find(self.pair_keys, unique, self.pair_counts)  # [U]
        running = before.clamp_min(0)[inverse] + rank + 1  # [M]
        self.pair_counts[at[seen]] += counts[seen]
        if (~seen).any():
            self.pair_keys, self.pair_counts = _merge(self.pair_keys, self.pair_counts, unique[~seen], counts[~seen])
        # top: per context, the occurrence with the largest running count, the earliest among equals
        m = pairs.numel()
        score = running * (m + 1) + (m - order)
        best = torch.full_like(self.total, -1).scatter_reduce_(0, ids[order], score, "amax")
        touched = (best >= 0).nonzero().squeeze(1)
        count, first = best[touched] // (m + 1), m - best[touched] % (m + 1)
        better = count > self.top_count[touched]
        self.top_count[touched[better]] = count[better]
        self.top_token[touched[better]] = targets[first[better]]


class NgramTiltPlugin(golf.Plugin):
    name = "ngram_tilt"
    description = "causal token n-gram proposes one hint per position, boosted by exp(beta) and renormalized (PR #2135)"
    Config = Config

    @golf.hookimpl
    def golf_eval_adapter(self, config):
        return NgramTilt(self.config)

