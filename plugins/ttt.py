"""Score-first test-time training as an eval adapter (docs/techniques.md §9; PR #461 -> #549, used by #733).

The eval loop (golf.eval.evaluate) scores the validation targets chunk by chunk
(`eval.chunk_tokens`, default 32,768) and hands each chunk's targets to `observe` only after
every one of them was scored. Here `observe` trains the model on exactly those tokens, so the
next chunk is scored by a model that has seen the past and nothing else (C1-C4 hold by
construction; `adjust` returns the model's log-probabilities unchanged).

Per chunk ci (0-based, = index of the chunk's first target // chunk_tokens), unless it is the
last one (no target is left to score, so training there could not help):

- the stream is the previous chunk's last target followed by this chunk's targets (the
  adapter never sees val[0], the first input, so the first chunk starts at target 0); it is
  cut into sequences of `seq_len` inputs (0 = the eval window length), the last one
  shorter and padded (padding is never a target);
- `epochs` passes over those sequences in order, `batch_seqs` sequences per optimizer step,
  plain cross-entropy averaged over the step's targets, gradient clipped to a global norm
  of `grad_clip`, SGD with momentum `momentum` whose buffer persists across chunks;
- lr = lr0 * (1 + cos(pi * ci / (N - 1))) / 2 with N = ceil(num_targets / chunk_tokens);
- under the run's autocast (`ctx.autocast`, bf16 on CUDA, as the trainer); the model is
  put back in eval mode afterwards;
- when the run compiles (`ctx.compile`), forward and loss are compiled (fullgraph) at one
  shape: every step runs ceil(min(batch_seqs, S) / W) rows per rank (its slice, padded with
  ignored targets; S = the chunk's sequences), and `start` runs that shape once, before
  the eval clock starts. The step's target count comes from arithmetic, not a device read.

Several ranks (torch.distributed initialised, world size W > 1): every rank observes the full
chunk; each optimizer step's `batch_seqs` sequences are split into W contiguous slices, one
per rank; each rank backpropagates its slice's summed CE divided by the step's total target
count, and the gradients are all-reduced with SUM, i.e. the average over the step's targets,
before clipping. So the clip sees the global-batch norm (D17) and every rank applies the
same update: the weights stay identical, and the result does not depend on W (up to float
summation order). `batch_seqs` is thus global; the reference's 32 were per rank, which is
the same at its 16 sequences per chunk (one step per epoch either way).

Freezing (`freeze_blocks = k`): a parameter is frozen when every virtual block that uses it
is among the first k. Block i uses the parameters inside `model.blocks[i]` (its scalars and
the plugin modules it holds) and the matrices of its physical layer `model.layers[v2p[i]]`.
So the first k blocks' scalars and the physical layers only they use are frozen; a
physical layer shared with a later, unfrozen block (depth recurrence without untying), or a
plugin module shared with one (e.g. the value-embedding table), stays trainable: it is one
tensor, and freezing it would freeze the later block's weights too. Untie the recurrence
first (golf_before_eval runs before `start`) for a strict freeze. Embeddings, skip weights
and other model-level tensors are never frozen.

Defects fixed against the reference:
- D14: freezing by the name `blocks.{i}.` froze only per-block scalars; the matrices lived
  in top-level banks and kept training. Here the physical layers are frozen too.
- D17: the reference clipped before averaging across ranks; here the clip follows the
  all-reduce.

Every scored target but target 0 is trained on once per epoch, including the one crossing
each chunk boundary and those in a partial last sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import golfcore as golf

IGNORE = golf.IGNORE  # padding positions are not targets


@dataclass
class Config(golf.Section):
    lr: float = golf.option(0.002, "SGD learning rate at the first chunk (cosine to 0 over the chunks)")
    momentum: float = golf.option(0.9, "SGD momentum; the buffer persists across chunks")
    epochs: int = golf.option(3, "passes over each scored chunk")
    seq_len: int = golf.option(0, "training sequence length (0 = the eval window length)")
    batch_seqs: int = golf.option(32, "sequences per optimizer step (across all ranks)")
    grad_clip: float = golf.option(1.0, "clip the global gradient norm to this (0 = off)")
    freeze_blocks: int = golf.option(0, "freeze the first N virtual blocks and the physical layers only they use")

    def check(self) -> None:
        if not self.lr > 0:
            raise self.invalid("lr", f"{self.lr} must be > 0")
        if not 0 <= self.momentum < 1:
            raise self.invalid("momentum", f"{self.momentum} is not in [0, 1)")
        if self.epochs < 1:
            raise self.invalid("epochs", f"{self.epochs} must be >= 1")
        if self.seq_len < 0:
            raise self.invalid("seq_len", f"{self.seq_len} must be >= 0 (0 = eval seq_len)")
        if self.batch_seqs < 1:
            raise self.invalid("batch_seqs", f"{self.batch_seqs} must be >= 1")
        if not self.grad_clip >= 0:
            raise self.invalid("grad_clip", f"{self.grad_clip} must be >= 0 (0 = off)")
        if self.freeze_blocks < 0:
            raise self.invalid("freeze_blocks", f"{self.freeze_blocks} must be >= 0")


def frozen_parameters(model: nn.Module, freeze_blocks: int) -> list[nn.Parameter]:
    """The parameters `freeze_blocks` freezes, each once: those used only by the first
    `freeze_blocks` virtual blocks (see the module docstring)."""
    blocks, v2p = model.blocks, list(model.v2p)
    if freeze_blocks > len(blocks):
        raise golf.ConfigError(f"[plugins.ttt] freeze_blocks: {freeze_blocks} exceeds the model's {len(blocks)} blocks")
    users: dict[int, set[int]] = {}  # id(param) -> the virtual blocks using it
    params: dict[int, nn.Parameter] = {}
    for i, block in enumerate(blocks):
        for p in (*block.parameters(), *model.layers[v2p[i]].parameters()):
            users.setdefault(id(p), set()).add(i)
            params[id(p)] = p
    return [params[k] for k, used_by in users.items() if max(used_by) < freeze_blocks]


def lr_at(lr0: float, ci: int, num_chunks: int) -> float:
    """lr0 * (1 + cos(pi * ci / (num_chunks - 1))) / 2; lr0 when there is a single chunk."""
    if num_chunks <= 1:
        return lr0
    return lr0 * 0.5 * (1 + math.cos(math.pi * ci / (num_chunks - 1)))


class TttAdapter:
    """One evaluation's test-time training (fresh per evaluation)."""

    name = "ttt"
    history_len = 0
    order = 0  # before mixers, which mix the (already adapted) model's distribution

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.log: list[dict] = []  # per observed chunk: ci, lr, steps, targets trained on

    def start(self, model: nn.Module, ctx: golf.EvalContext) -> None:
        self.model = model
        self.ctx = ctx
        self.seq_len = self.cfg.seq_len or ctx.seq_len
        frozen = {id(p) for p in frozen_parameters(model, self.cfg.freeze_blocks)}
        self.params = [p for p in model.parameters() if id(p) not in frozen and p.is_floating_point() and p.requires_grad]
        self.frozen = [p for p in model.parameters() if id(p) in frozen]
        for p in self.frozen:
            p.requires_grad_(False)  # the eval model is the adapter's; no gradient work for frozen weights
        self.optimizer = torch.optim.SGD(self.params, lr=self.cfg.lr, momentum=self.cfg.momentum)
        self.loss_sum = torch.compile(self._loss_sum, fullgraph=True, dynamic=False) if ctx.compile else self._loss_sum
        self.seen = 0  # targets observed so far
        self.prev: Tensor | None = None  # the last observed target: first input of the next chunk
        if ctx.compile:
            self.warm_up()

    def _loss_sum(self, x: Tensor, y: Tensor) -> Tensor:  # [R,T] inputs and targets -> summed CE over non-padding
        return F.cross_entropy(self.model.logits(x).flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")

    def rows_per_rank(self, sequences: int) -> int:
        """The fixed number of rows each rank's step runs (its slice, padded): one compiled shape."""
        return -(-min(self.cfg.batch_seqs, sequences) // self.ctx.world_size)

    def warm_up(self) -> None:
        """Compile a full chunk's step shape before the eval clock starts: one forward and
        backward on padding (zero loss), no update."""
        rows = self.rows_per_rank(math.ceil(self.ctx.chunk_tokens / self.seq_len))
        x = torch.zeros(rows, self.seq_len, dtype=torch.long, device=self.ctx.device)
        self.model.train()
        try:
            with self.ctx.autocast():
                loss = self.loss_sum(x, torch.full_like(x, IGNORE))
            loss.backward()
        finally:
            self.model.eval()
        self.optimizer.zero_grad(set_to_none=True)

    def adjust(self, logprobs: Tensor, history: Tensor, positions: Tensor) -> Tensor:
        return logprobs  # the model already reflects every update made on scored tokens

    def observe(self, tokens: Tensor) -> None:
        ci = self.ctx.chunk_of(self.seen)
        self.seen += tokens.numel()
        stream = tokens if self.prev is None else torch.cat([self.prev, tokens])
        self.prev = tokens[-1:].clone()
        if self.seen >= self.ctx.num_targets:  # the final chunk: nothing is left to score
            self.log.append({"chunk": ci, "lr": 0.0, "steps": 0, "targets": 0})
            return
        lr = lr_at(self.cfg.lr, ci, self.ctx.num_chunks)
        steps = self.train(stream.to(self.ctx.device), lr) if stream.numel() > 1 else 0
        self.log.append({"chunk": ci, "lr": lr, "steps": steps, "targets": stream.numel() - 1})

    def sequences(self, stream: Tensor) -> tuple[Tensor, Tensor]:
        """(inputs, targets) [S, seq_len]: the stream cut into sequences; padding targets are IGNORE."""
        n, t = stream.numel() - 1, self.seq_len
        s = math.ceil(n / t)
        x = torch.zeros(s * t, dtype=torch.long, device=stream.device)
        y = torch.full((s * t,), IGNORE, dtype=torch.long, device=stream.device)
        x[:n], y[:n] = stream[:-1], stream[1:]
        return x.view(s, t), y.view(s, t)

    def train(self, stream: Tensor, lr: float) -> int:
        x, y = self.sequences(stream.long())  # [S,T]
        n, t, bs = stream.numel() - 1, self.seq_len, self.cfg.batch_seqs
        rank, world = self.ctx.rank, self.ctx.world_size
        rows = self.rows_per_rank(x.size(0))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        steps = 0
        self.model.train()
        try:
            for _ in range(self.cfg.epochs):
                for b in range(0, x.size(0), bs):
                    xb, yb = x[b : b + bs], y[b : b + bs]
                    count = min(n, (b + bs) * t) - b * t  # the step's targets on all ranks, known without a sync
                    lo, hi = rank * xb.size(0) // world, (rank + 1) * xb.size(0) // world
                    self.step(*golf.pad_rows(xb[lo:hi], yb[lo:hi], rows), count)
                    steps += 1
        finally:
            self.model.eval()
        return steps

    def step(self, x: Tensor, y: Tensor, count: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.ctx.autocast():
            loss = self.loss_sum(x, y)
        (loss / count).backward()
        self.ctx.step(self.optimizer, self.params, self.cfg.grad_clip)


class Ttt(golf.Plugin):
    name = "ttt"
    description = "score-first test-time training: SGD on each chunk after it is scored (PR #461/#549; D14, D17 fixed)"
    Config = Config

    @golf.hookimpl
    def golf_eval_adapter(self, config):
        return TttAdapter(self.config)
