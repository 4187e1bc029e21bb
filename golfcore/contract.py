"""The types a plugin meets: where a layer sits, what a forward pass shares, what an eval
adapter is given, and the quantizer, compressor and adapter protocols.

This module and `golfcore.hookspecs` are the contract between golf and its plugins. Neither
imports anything else from golf, so the core can be refactored behind them without breaking a
third party. Plugins import these names from `golfcore` (see docs/hooks.md, "The public surface").

Shapes: B batch, T sequence, d model width, G KV heads, D head dim, V vocab, N scored positions.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class LayerInfo:
    """Where a block sits: its virtual index (execution order) and the physical weights it uses."""

    virtual: int
    physical: int
    num_virtual: int
    num_physical: int


@dataclass
class ForwardContext:
    """What one forward pass shares across its layers; made fresh by every `GPT.hidden` call.

    Value transforms, attention kernels and attention-output transforms receive it as `ctx`. Fields:
    - `tokens` [B,T]: the input ids of this forward pass;
    - `v0` [B,T,G,D] or None: the values of virtual layer 0, once a transform stored them
      (value residual learning reads them in later layers);
    - `cache`: per-forward tensors a plugin computes once and reuses in later layers, keyed by
      the plugin's name (e.g. value embeddings), so plugins never collide.
    """

    tokens: Tensor
    v0: Tensor | None = None
    cache: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalContext:
    """What an eval adapter is given at `start`: the evaluation it takes part in.

    Targets are numbered 0..num_targets-1 (target i is val[i+1]); the eval loop scores them in
    chunks of `chunk_tokens` and calls `observe` once per chunk, in order.
    """

    vocab_size: int
    num_targets: int
    chunk_tokens: int
    seq_len: int  # the evaluation window length
    rank: int
    world_size: int
    device: torch.device
    compile: bool  # whether the run compiles its models (adapters that train should too)
    autocast: Callable[[], AbstractContextManager]  # the run's mixed-precision context for forward passes

    @classmethod
    def local(cls, vocab_size: int, num_targets: int, chunk_tokens: int = 32768, seq_len: int = 1024,
              rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu") -> EvalContext:
        """A context for running an adapter outside a golf run (tests, notebooks): eager, fp32."""
        return cls(vocab_size, num_targets, chunk_tokens, seq_len, rank, world_size, torch.device(device),
                   compile=False, autocast=nullcontext)

    @property
    def num_chunks(self) -> int:
        return max(1, -(-self.num_targets // self.chunk_tokens))

    def chunk_of(self, target: int) -> int:
        """The chunk that scores target `target` (the eval loop's own numbering)."""
        return target // self.chunk_tokens

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """Reduce `tensor` in place across the evaluation's ranks ("sum" or "max"); a no-op alone."""
        if self.world_size > 1:
            ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX}
            torch.distributed.all_reduce(tensor, op=ops[op])
        return tensor

    def step(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grad_clip: float) -> None:
        """One update of weights every rank holds alike (test-time training): the gradients (None
        counts as zero) summed across ranks, then clipped to a global norm of `grad_clip` (0 = off),
        then the step; so the clip sees the global batch and every rank applies the same update."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        if self.world_size > 1:
            flat = self.all_reduce(torch.cat([g.reshape(-1) for g in grads]))
            grads = [g.view_as(p) for g, p in zip(torch.split(flat, [p.numel() for p in params]), params)]
        for p, g in zip(params, grads):
            p.grad = g
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()


IGNORE = -100
"""A target that is not one (padding, or not scored in a round): F.cross_entropy's ignore_index."""


def pad_rows(x: Tensor, y: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """Pad [r,T] inputs and targets to [rows,T] (one static shape); padded targets are IGNORE."""
    missing = rows - x.size(0)
    if missing <= 0:
        return x, y
    return torch.cat([x, x.new_zeros(missing, x.size(1))]), torch.cat([y, y.new_full((missing, y.size(1)), IGNORE)])


@dataclass(frozen=True)
class DocumentMode:
    """How a document adapter (one declaring `documents`) wants the validation stream scored
    (golfcore.eval, "document mode"; docs/architecture.md, "The eval adapter contract").

    The stream is split at the BOS into documents; each is scored in pieces of `chunk` targets
    (`short_chunk` for a document of at most `short_len` targets, when both are set), each
    piece by a window holding only its own document's inputs (at most the eval seq_len);
    `slots` documents are scored together, one batch row (slot) each, a slot taking the next
    document as soon as its own is scored."""

    chunk: int
    slots: int
    short_len: int = 0
    short_chunk: int = 0

    def piece_len(self, targets: int) -> int:
        """The piece length of a document of `targets` targets."""
        return self.short_chunk if self.short_chunk and targets <= self.short_len else self.chunk

    def lengths(self, seq_len: int) -> list[int]:
        """The input lengths a round may run at (static shapes, ascending): seq_len and up to three
        halvings of it, none shorter than a piece; a round runs at the shortest that holds it."""
        return sorted({max(self.chunk, seq_len >> i) for i in range(4)})


@dataclass(frozen=True)
class Round:
    """One round of document mode, handed to the document adapter's `observe_round` after it
    was scored and checked (C2): row b is slot b's window, and its scored targets.

    `inputs` [S,L] the windows as scored (zeros after the last scored input); `at` [S] each row's
    first scored position; `targets` [S,W] the targets of positions at..at+W-1 (W = chunk),
    IGNORE where nothing was scored; `more` [S] whether the slot's document has targets left."""

    inputs: Tensor
    at: Tensor
    targets: Tensor
    more: list[bool]


class EvalAdapter(Protocol):
    """Changes the scored distributions from what it has observed (TTT, n-gram mixers).

    The eval loop calls `start` once, before anything is scored. `adjust` receives the
    model's log-probabilities of the scored positions, their histories (the `history_len`
    most recent input tokens up to and including each position's own input, -1 before the
    stream start) and their target indices; never the targets. It must return normalized
    log-probabilities and must not change its own state: a position's score may depend only
    on the model, what was observed, and that position's own row (the eval loop checks this
    by scoring with different batchings). `observe` receives each target exactly once, in
    stream order, after it was scored; the first token it ever receives is target 0.
    Adapters are ordered by their `order` attribute (default 0). An n-gram adapter declares
    the channel its tables predict through as `ngram_channel`: "token" (the next token from
    previous tokens) is the only one the challenge allows (docs/compliance.md, "Rulings").

    Document mode (optional): an adapter that declares `documents` (a DocumentMode; None or
    absent otherwise; at most one per evaluation) makes the loop score the stream document by
    document, and also implements `start_round(entering)` (before every round, on every rank
    together: {slot: the targets of the document entering that slot, a range of target
    indices}, often empty) and `observe_round(round)` (a golf.Round, after each round was
    scored and checked). Every adapter still receives `observe` in stream order: the loop hands
    over the scored prefix of the stream as it grows, so an adapter's state when a target is
    scored depends only on earlier stream tokens (stream-order adapters lag behind the
    documents in flight).
    """

    name: str
    history_len: int  # K

    def start(self, model: nn.Module, ctx: EvalContext) -> None: ...

    def adjust(self, logprobs: Tensor, history: Tensor, positions: Tensor) -> Tensor: ...  # [N,V], [N,K], [N] -> [N,V]

    def observe(self, tokens: Tensor) -> None: ...  # [M]


@dataclass(frozen=True)
class Calibration:
    """Where a quantizer's calibration data came from, as it declares it after `quantize`."""

    source: str  # "train": batches of the training stream, the only legal source
    tokens: int  # tokens its forward passes saw
    seconds: float  # its time
    in_train_clock: bool  # whether `seconds` ran inside the training time cap


class Quantizer(Protocol):
    """Turns one state tensor into stored tensors and back; chosen by the export hook.

    Stored tensor names must start with the state key (e.g. "blocks.0.w.q", "blocks.0.w.scale")
    so names never collide in the container.

    Optional, read with getattr (a quantizer without them neither calibrates nor prepares):
    - `calibration_batches: int`: training micro-batches, taken after the last step, whose
      projection inputs it wants (golfcore.calibration); then `calibrate(stats)` receives
      {weight name: golf.InputStats} before export, and `calibration_reserve_seconds: float` is
      kept back from the training wallclock cap for it (the time counts as training time); the
      run then sets the quantizer's `calibration` (a Calibration: source "train", tokens,
      seconds, in_train_clock: what the compliance record reads); a quantizer without it is
      data-free;
    - `prepare(state, specs)`: called by the exporter with every tensor to store before the
      per-tensor `quantize` calls, for choices across tensors (LQER's top-K, AWQ-lite's groups).
    """

    name: str

    def quantize(self, name: str, tensor: Tensor, export: str) -> tuple[dict[str, Tensor], dict]:
        """(stored tensors, JSON-able scheme info) for `tensor` with declared export kind `export`."""
        ...

    def dequantize(self, name: str, stored: dict[str, Tensor], info: dict) -> Tensor:
        """The tensor back from what `quantize` stored (any float dtype; the caller restores dtype)."""
        ...

    def row_step(self, weight: Tensor) -> Tensor:
        """[rows] quantization step the exporter would use for a "quantize" matrix, differentiable
        w.r.t. `weight` where meaningful (CROWN-Q penalises it; QAT uses the exporter's grid)."""
        ...

    def fake_quantize(self, weight: Tensor) -> Tensor:
        """What a "quantize" weight becomes after the artifact round trip (no straight-through
        estimator here; callers write w + (fake_quantize(w) - w).detach())."""
        ...


class Compressor(Protocol):
    """Bytes in, bytes out; the artifact records its `name` so loading picks the same one."""

    name: str

    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, data: bytes) -> bytes: ...
