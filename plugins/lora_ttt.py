"""Phased LoRA test-time training per document, score-first (docs/techniques.md §9b; PR #1530,
#1610, #1626, #1953).

`start` wraps the chosen golf.Projection modules of every physical layer in `LoraProjection`
(same call: x -> base(x) + (alpha/rank)·x Aᵀ Bᵀ, B zero-initialised), so the base weights are
untouched and the model scores exactly as before until an adapter trains. The eval loop
(golf.eval.evaluate) scores `[eval] chunk_tokens` targets, then hands them to `observe`:

- the observed targets are cut at the model's BOS id: a BOS ends the current document, which
  resets every adapter (A re-drawn, B zeroed, Adam's state cleared) before the next document's
  first scored token trains anything;
- each piece of a document is trained on right after it was scored: `epochs` Adam steps on the
  adapters only, cross-entropy over the piece's targets, with the document's previous scored
  tokens as context (the last `train_len` inputs, one fixed shape [1, train_len]);
- phases (`phase_docs = N > 0`): after every N finished documents, `phase_epochs` passes of SGD
  with momentum on the base weights over every finished document (cut into `train_len`
  sequences, `phase_batch_seqs` per step, split across ranks, gradients all-reduced before the
  clip, so every rank applies the same update); adapters are at zero then.

So every token an adapter or a phase learns from was scored first (C3), and C1/C4 hold by
construction. Limits against the records (docs/techniques.md §9b): chunks are the loop's global
chunks, so the first tokens of a document that starts inside a chunk are scored with the
previous document's adapter (still score-first, only staler); one document is adapted at a time
(the factors carry a batch dimension `slots`, but the loop scores one stream, so slots = 1);
the tied head is not adapted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import golfcore as golf

IGNORE = -100  # F.cross_entropy's ignore_index
TARGETS = ("q", "k", "v", "o", "up", "down")  # the LayerWeights projections an adapter may wrap


@dataclass
class Config(golf.Section):
    rank: int = golf.option(8, "LoRA rank r")
    alpha: float = golf.option(16.0, "LoRA scale numerator: the update is (alpha / rank) · x Aᵀ Bᵀ")
    targets: list[str] = golf.option(["k", "o", "up", "down"], f"projections to adapt, among {list(TARGETS)} (default: no Q/V, as PR #1953)")
    lr: float = golf.option(1e-3, "Adam learning rate on the adapters")
    beta1: float = golf.option(0.0, "Adam beta1 (the records ran 0)")
    beta2: float = golf.option(0.999, "Adam beta2")
    epochs: int = golf.option(1, "Adam steps on each scored piece of a document")
    train_len: int = golf.option(0, "context + piece tokens per training sequence (0 = the eval window length)")
    phase_docs: int = golf.option(0, "global SGD on the base weights after every N finished documents (0 = no phases)")
    phase_lr: float = golf.option(1e-3, "phase SGD learning rate")
    phase_momentum: float = golf.option(0.9, "phase SGD momentum (the buffer persists across phases)")
    phase_epochs: int = golf.option(1, "passes over the finished documents per phase")
    phase_batch_seqs: int = golf.option(32, "sequences per phase step (across all ranks)")
    phase_grad_clip: float = golf.option(1.0, "clip the phase gradient's global norm (0 = off)")

    def check(self) -> None:
        if self.rank < 1:
            raise self.invalid("rank", f"{self.rank} must be >= 1")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets or len(set(self.targets)) != len(self.targets):
            raise self.invalid("targets", f"{self.targets}: a non-empty list of distinct names from {list(TARGETS)}")
        for key in ("lr", "alpha", "phase_lr"):
            if not getattr(self, key) > 0:
                raise self.invalid(key, f"{getattr(self, key)} must be > 0")
        for key in ("beta1", "beta2", "phase_momentum"):
            if not 0 <= getattr(self, key) < 1:
                raise self.invalid(key, f"{getattr(self, key)} is not in [0, 1)")
        for key in ("epochs", "phase_epochs", "phase_batch_seqs"):
            if getattr(self, key) < 1:
                raise self.invalid(key, f"{getattr(self, key)} must be >= 1")
        for key in ("train_len", "phase_docs"):
            if getattr(self, key) < 0:
                raise self.invalid(key, f"{getattr(self, key)} must be >= 0")
        if not self.phase_grad_clip >= 0:
            raise self.invalid("phase_grad_clip", f"{self.phase_grad_clip} must be >= 0 (0 = off)")


class LoraProjection(nn.Module):
    """base(x) + scale · x Aᵀ Bᵀ with per-slot factors A [S,r,in], B [S,out,r]; x [S or 1 rows, T, in].
    B starts at zero, so a fresh adapter leaves the base output unchanged."""

    def __init__(self, base: nn.Module, rank: int, scale: float, slots: int = 1):
        super().__init__()
        out_features, in_features = base.weight.shape
        self.base, self.scale = base, scale
        self.a = nn.Parameter(torch.empty(slots, rank, in_features, device=base.weight.device))
        self.b = nn.Parameter(torch.empty(slots, out_features, rank, device=base.weight.device))
        self.reset(torch.Generator().manual_seed(0))

    @torch.no_grad()
    def reset(self, generator: torch.Generator | None = None) -> None:
        """A ~ U(±1/√in) (nn.Linear's bound), drawn on the CPU so a seeded draw is the same on every device; B = 0."""
        bound = 1 / math.sqrt(self.a.size(-1))
        self.a.copy_(torch.empty(self.a.shape).uniform_(-bound, bound, generator=generator))
        self.b.zero_()

    def forward(self, x: Tensor) -> Tensor:  # [B,T,in] -> [B,T,out]
        delta = (x.to(self.a.dtype) @ self.a.mT) @ self.b.mT  # [B,T,r] -> [B,T,out]
        y = self.base(x)
        return y + (self.scale * delta).to(y.dtype)


class LoraTttAdapter:
    """One evaluation's per-document adapters and phases (fresh per evaluation)."""

    name = "lora_ttt"
    history_len = 0
    order = 0  # before mixers: they mix the adapted model's distribution

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.log: list[dict] = []  # per finished document: tokens, adapter steps; per phase: its steps

    def start(self, model: nn.Module, ctx: golf.EvalContext) -> None:
        cfg = self.cfg
        self.model, self.ctx, self.bos = model, ctx, model.bos_id
        self.train_len = cfg.train_len or ctx.seq_len
        self.base_params = [p for p in model.parameters() if p.is_floating_point() and p.requires_grad]
        self.loras: list[LoraProjection] = []
        for layer in model.layers:
            for t in cfg.targets:
                lora = LoraProjection(getattr(layer, t), cfg.rank, cfg.alpha / cfg.rank)
                setattr(layer, t, lora)
                self.loras.append(lora)
        self.lora_params = [p for lora in self.loras for p in (lora.a, lora.b)]
        self.adam = torch.optim.Adam(self.lora_params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.sgd = torch.optim.SGD(self.base_params, lr=cfg.phase_lr, momentum=cfg.phase_momentum)
        self.loss = torch.compile(self._loss, fullgraph=True, dynamic=False) if ctx.compile else self._loss
        self.doc: list[Tensor] = []  # the current document's observed tokens (from its BOS)
        self.finished: list[Tensor] = []  # every finished document, for the phases
        self.steps = 0  # adapter steps on the current document
        if ctx.compile:
            self.warm_up()

    def _loss(self, x: Tensor, y: Tensor) -> Tensor:  # [R,T] -> mean CE over non-IGNORE targets
        return F.cross_entropy(self.model.logits(x).flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE)

    def warm_up(self) -> None:
        """Compile the adapter step and the phase step before the eval clock: forward and backward
        on one real token each (no update)."""
        for rows in (1, self.phase_rows()):
            x = torch.zeros(rows, self.train_len, dtype=torch.long, device=self.ctx.device)
            y = torch.full_like(x, IGNORE)
            y[0, 0] = 0
            self.model.train()
            try:
                with self.ctx.autocast():
                    self.loss(x, y).backward()
            finally:
                self.model.eval()
        self.adam.zero_grad(set_to_none=True)
        self.sgd.zero_grad(set_to_none=True)

    def adjust(self, logprobs: Tensor, history: Tensor, positions: Tensor) -> Tensor:
        return logprobs  # the wrapped model already carries every update made on scored tokens

    def observe(self, tokens: Tensor) -> None:
        starts = (tokens == self.bos).nonzero().flatten().tolist()  # one device read per chunk
        cuts = [0, *starts, tokens.numel()]
        for lo, hi in zip(cuts, cuts[1:]):
            if hi == lo:
                continue
            if lo in starts:
                self.end_document()
            self.doc.append(tokens[lo:hi].to(self.ctx.device))
            self.train_piece(hi - lo)

    def end_document(self) -> None:
        if self.doc:
            self.finished.append(torch.cat(self.doc))
            self.log.append({"document": len(self.finished) - 1, "tokens": self.finished[-1].numel(), "steps": self.steps})
        self.doc, self.steps = [], 0
        generator = torch.Generator().manual_seed(len(self.finished))  # every rank and re-run draws the same A
        for lora in self.loras:
            lora.reset(generator)
        self.adam.state.clear()
        if self.cfg.phase_docs and self.finished and len(self.finished) % self.cfg.phase_docs == 0:
            self.phase()

    def piece_sequence(self, new: int) -> tuple[Tensor, Tensor] | None:
        """([1,train_len] inputs, targets): the document's last train_len + 1 observed tokens,
        targets IGNORE except the last `new` (the piece just scored) and the padding."""
        stream = torch.cat(self.doc)[-(self.train_len + 1) :]
        n = stream.numel() - 1
        if n < 1:
            return None
        x = torch.zeros(1, self.train_len, dtype=torch.long, device=stream.device)
        y = torch.full_like(x, IGNORE)
        x[0, :n] = stream[:-1]
        first = max(0, n - new)
        y[0, first:n] = stream[1 + first :]
        return x, y

    def train_piece(self, new: int) -> None:
        seq = self.piece_sequence(new)
        if seq is None:
            return
        self.model.train()
        try:
            for _ in range(self.cfg.epochs):
                self.adam.zero_grad(set_to_none=True)
                with self.ctx.autocast():
                    loss = self.loss(*seq)
                loss.backward(inputs=self.lora_params)
                self.adam.step()
                self.steps += 1
        finally:
            self.model.eval()

    def phase_rows(self) -> int:
        return -(-self.cfg.phase_batch_seqs // self.ctx.world_size)

    def phase(self) -> None:
        """SGD on the base weights over every finished document; the adapters are at zero."""
        t, bs, world, rank = self.train_len, self.cfg.phase_batch_seqs, self.ctx.world_size, self.ctx.rank
        stream = torch.cat(self.finished)
        n = stream.numel() - 1
        s = -(-n // t)
        x = torch.zeros(s * t, dtype=torch.long, device=stream.device)
        y = torch.full((s * t,), IGNORE, dtype=torch.long, device=stream.device)
        x[:n], y[:n] = stream[:-1], stream[1:]
        x, y = x.view(s, t), y.view(s, t)
        rows, steps = self.phase_rows(), 0
        self.model.train()
        try:
            for _ in range(self.cfg.phase_epochs):
                for b in range(0, s, bs):
                    xb, yb = x[b : b + bs], y[b : b + bs]
                    count = min(n, (b + bs) * t) - b * t  # the step's targets on all ranks
                    lo, hi = rank * xb.size(0) // world, (rank + 1) * xb.size(0) // world
                    local = max(0, min(n, (b + hi) * t) - (b + lo) * t)  # this rank's share, without a device read
                    self.phase_step(*_pad_rows(xb[lo:hi], yb[lo:hi], rows), local, count)
                    steps += 1
        finally:
            self.model.eval()
        self.log.append({"phase_after_documents": len(self.finished), "steps": steps, "targets": n})

    def phase_step(self, x: Tensor, y: Tensor, local: int, count: int) -> None:
        self.sgd.zero_grad(set_to_none=True)
        if local:
            with self.ctx.autocast():
                loss = self.loss(x, y) * (local / count)  # mean over this rank's targets -> share of the step's
            loss.backward(inputs=self.base_params)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.base_params]
        if self.ctx.world_size > 1:
            flat = self.ctx.all_reduce(torch.cat([g.reshape(-1) for g in grads]))
            grads = [g.view_as(p) for g, p in zip(torch.split(flat, [p.numel() for p in self.base_params]), self.base_params)]
        for p, g in zip(self.base_params, grads):
            p.grad = g
        if self.cfg.phase_grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.base_params, self.cfg.phase_grad_clip)
        self.sgd.step()


def _pad_rows(x: Tensor, y: Tensor, rows: int) -> tuple[Tensor, Tensor]:
    """Pad [r,T] inputs and targets to [rows,T]; padded targets are IGNORE."""
    missing = rows - x.size(0)
    if missing <= 0:
        return x, y
    return torch.cat([x, x.new_zeros(missing, x.size(1))]), torch.cat([y, y.new_full((missing, y.size(1)), IGNORE)])


class LoraTtt(golf.Plugin):
    name = "lora_ttt"
    description = "phased LoRA test-time training per document, score-first (PR #1530/#1610/#1626/#1953)"
    Config = Config

    @golf.hookimpl
    def golf_eval_adapter(self, config):
        return LoraTttAdapter(self.config)
