"""Phased LoRA test-time training per document, score-first (docs/techniques.md §9b; PR #1530,
#1610, #1626, #1953, #2014).

A document adapter (golf.DocumentMode): the eval loop (golf.eval.evaluate, document mode) splits
the stream at the BOS and keeps `slots` documents in flight, one batch row (slot) each, a slot
taking the next document as soon as its own is scored; each round scores the next piece of
`chunk` targets (`short_chunk` for documents of at most `short_len`) of every slot's document.

`start` wraps the chosen golf.Projection modules of every physical layer in `LoraProjection`
(x -> base(x) + (alpha/rank)·x Aᵀ Bᵀ with factors per slot; B = 0, so the model scores as
before until an adapter trains). Then:

- `start_round`: a slot taking a new document gets A back to one seeded draw shared by all
  slots, B zeroed and its Adam state cleared (`SlotAdam`: a step count per slot), so a
  document's scores depend neither on its slot nor on the documents beside it; then a phase,
  when one is due;
- `observe_round` (after each round was scored and checked): `epochs` Adam steps on the
  adapters, the loss the sum over slots of the mean cross-entropy of the slot's piece just
  scored, in the window it was scored with (so each slot's gradient is its own document's);
  a slot whose document has no targets left is not updated;
- phases (`phase_prefix_docs = N > 0`): at the first round after N·(i+1)/`phases` documents
  were observed (the loop hands every adapter the scored prefix of the stream),
  `phase_epochs` passes of SGD with momentum on the base weights over those documents, cut into
  eval-length sequences, `phase_batch_seqs` per step across all ranks (gradients all-reduced
  before the clip), the learning rate cosine from `phase_lr` to 0 over the phase's steps; the
  adapters are off during a phase.

So every token an adapter or a phase learns from was scored first (C3), and a score depends
only on its own document's earlier tokens and on documents earlier in the stream (C1).
Against the records (#1855, #2135; docs/techniques.md §9b): documents enter slots in stream
order, not sorted by length (the records' phases then trained the weights on documents later
in the stream than ones they scored next); documents in flight at a phase finish with the
phase's weights (the records paused until their batches drained); A is reset at every document
(the records kept A across documents); the MLP and O adapters wrap the projections (the records
added a LoRA of the block's normed input to the attention and MLP outputs); the tied head is
not adapted; each round is scored by the loop, then run again forward and backward here (the
records reused one forward); a phase's sequences cross document boundaries (the records masked
attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import golfcore as golf

TARGETS = ("q", "k", "v", "o", "up", "down")  # the LayerWeights projections an adapter may wrap


@dataclass
class Config(golf.Section):
    rank: int = golf.option(8, "LoRA rank r")
    alpha: float = golf.option(16.0, "LoRA scale numerator: the update is (alpha / rank) · x Aᵀ Bᵀ")
    targets: list[str] = golf.option(["k", "o", "up", "down"], f"projections to adapt, among {list(TARGETS)} (default: no Q/V, as PR #1953)")
    lr: float = golf.option(1e-3, "Adam learning rate on the adapters")
    beta1: float = golf.option(0.0, "Adam beta1 (the records ran 0)")
    beta2: float = golf.option(0.999, "Adam beta2")
    eps: float = golf.option(1e-10, "Adam epsilon (the records' 1e-10)")
    weight_decay: float = golf.option(0.0, "Adam's L2 weight decay on the adapters (torch.optim.Adam's, as the records)")
    epochs: int = golf.option(1, "Adam steps on each scored piece")
    chunk: int = golf.option(48, "targets per piece of a document (a round scores one piece of each)")
    slots: int = golf.option(64, "documents adapted together, one batch row each")
    short_len: int = golf.option(0, "documents of at most this many targets are scored in pieces of short_chunk (PR #2014)")
    short_chunk: int = golf.option(0, "piece length for short documents (0 = chunk)")
    phase_prefix_docs: int = golf.option(0, "phases train on the first N documents (0 = no phases)")
    phases: int = golf.option(1, "phases: after N·(i+1)/phases documents, i = 0..phases-1")
    phase_lr: float = golf.option(1e-3, "phase SGD learning rate (cosine to 0 over each phase's steps)")
    phase_momentum: float = golf.option(0.9, "phase SGD momentum (fresh each phase)")
    phase_epochs: int = golf.option(1, "passes over the documents per phase")
    phase_batch_seqs: int = golf.option(16, "eval-length sequences per phase step (across all ranks)")
    phase_grad_clip: float = golf.option(1.0, "clip the phase gradient's global norm (0 = off)")

    def check(self) -> None:
        if self.rank < 1:
            raise self.invalid("rank", f"{self.rank} must be >= 1")
        bad = [t for t in self.targets if t not in TARGETS]
        if bad or not self.targets or len(set(self.targets)) != len(self.targets):
            raise self.invalid("targets", f"{self.targets}: a non-empty list of distinct names from {list(TARGETS)}")
        for key in ("lr", "alpha", "phase_lr", "eps"):
            if not getattr(self, key) > 0:
                raise self.invalid(key, f"{getattr(self, key)} must be > 0")
        for key in ("beta1", "beta2", "phase_momentum"):
            if not 0 <= getattr(self, key) < 1:
                raise self.invalid(key, f"{getattr(self, key)} is not in [0, 1)")
        for key in ("epochs", "chunk", "slots", "phases", "phase_epochs", "phase_batch_seqs"):
            if getattr(self, key) < 1:
                raise self.invalid(key, f"{getattr(self, key)} must be >= 1")
        for key in ("short_len", "short_chunk", "phase_prefix_docs", "weight_decay", "phase_grad_clip"):
            if not getattr(self, key) >= 0:
                raise self.invalid(key, f"{getattr(self, key)} must be >= 0")
        if self.short_chunk > self.chunk:
            raise self.invalid("short_chunk", f"{self.short_chunk} exceeds chunk {self.chunk}")


class LoraProjection(nn.Module):
    """base(x) + scale · x Aᵀ Bᵀ with per-slot factors A [S,r,in], B [S,out,r]; x [S or 1 rows, T, in].
    `reset` puts every slot's A back to one draw (A0 [1,r,in]) and B to zero, which leaves the
    base output unchanged; `active = False` leaves the adapter out (phases train the base)."""

    def __init__(self, base: nn.Module, rank: int, scale: float, slots: int = 1, generator: torch.Generator | None = None):
        super().__init__()
        out_features, in_features = base.weight.shape
        self.base, self.scale, self.active = base, scale, True
        bound = 1 / math.sqrt(in_features)  # nn.Linear's; drawn on the CPU so every device draws the same
        a0 = torch.empty(1, rank, in_features).uniform_(-bound, bound, generator=generator)
        self.register_buffer("a0", a0.to(base.weight.device), persistent=False)
        self.a = nn.Parameter(torch.empty(slots, rank, in_features, device=base.weight.device))
        self.b = nn.Parameter(torch.empty(slots, out_features, rank, device=base.weight.device))
        self.reset()

    @torch.no_grad()
    def reset(self, slots: Tensor | None = None) -> None:
        """Every slot, or those where `slots` [S] (bool) is true."""
        if slots is None:
            self.a.copy_(self.a0.expand_as(self.a))
            self.b.zero_()
        else:
            self.a.copy_(torch.where(slots[:, None, None], self.a0, self.a))
            self.b.masked_fill_(slots[:, None, None], 0.0)

    def forward(self, x: Tensor) -> Tensor:  # [B,T,in] -> [B,T,out]
        y = self.base(x)
        if not self.active:
            return y
        delta = (x.to(self.a.dtype) @ self.a.mT) @ self.b.mT  # [B,T,r] -> [B,T,out]
        return y + (self.scale * delta).to(y.dtype)


class SlotAdam:
    """torch.optim.Adam's update (L2 weight decay added to the gradient) on per-slot factors
    [S,...], with a step count per slot, so one slot's state can be reset while the others keep
    theirs (torch.optim.Adam shares one step count across the tensor)."""

    def __init__(self, params: list[nn.Parameter], lr: float, betas: tuple[float, float], eps: float, weight_decay: float):
        self.params, self.lr, (self.beta1, self.beta2), self.eps, self.wd = params, lr, betas, eps, weight_decay
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = torch.zeros(params[0].size(0), device=params[0].device)  # [S] steps taken

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def reset(self, slots: Tensor) -> None:  # [S] bool
        for m, v in zip(self.m, self.v):
            m.masked_fill_(slots.view(-1, *[1] * (m.dim() - 1)), 0.0)
            v.masked_fill_(slots.view(-1, *[1] * (v.dim() - 1)), 0.0)
        self.t.masked_fill_(slots, 0.0)

    @torch.no_grad()
    def step(self, slots: Tensor) -> None:
        """Update the slots where `slots` [S] (bool) is true; the others keep their factors and state."""
        self.t += slots.float()
        t = self.t.clamp_min(1)
        bias1, bias2 = 1 - self.beta1**t, 1 - self.beta2**t  # [S]
        for p, m, v in zip(self.params, self.m, self.v):
            shape = (-1, *[1] * (p.dim() - 1))
            on = slots.view(shape)
            g = p.grad + self.wd * p if self.wd else p.grad
            m.copy_(torch.where(on, self.beta1 * m + (1 - self.beta1) * g, m))
            v.copy_(torch.where(on, self.beta2 * v + (1 - self.beta2) * g * g, v))
            update = (m / bias1.view(shape)) / ((v / bias2.view(shape)).sqrt() + self.eps)
            p.sub_(torch.where(on, self.lr * update, 0.0))


class LoraTttAdapter:
    """One evaluation's per-document adapters and phases (fresh per evaluation)."""

    name = "lora_ttt"
    history_len = 0
    order = 0  # before mixers: they mix the adapted model's distribution

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.documents = golf.DocumentMode(cfg.chunk, cfg.slots, cfg.short_len, cfg.short_chunk)
        self.log: dict = {"documents": 0, "steps": 0, "phases": []}  # documents started, adapter steps, each phase

    def start(self, model: nn.Module, ctx: golf.EvalContext) -> None:
        cfg = self.cfg
        if cfg.chunk > ctx.seq_len:
            raise golf.ConfigError(f"[plugins.lora_ttt] chunk: {cfg.chunk} exceeds the eval seq_len {ctx.seq_len}")
        self.model, self.ctx, self.bos = model, ctx, model.bos_id
        self.base_params = [p for p in model.parameters() if p.is_floating_point() and p.requires_grad]
        generator = torch.Generator().manual_seed(0)  # every rank and re-run draws the same A0
        self.loras: list[LoraProjection] = []
        for layer in model.layers:
            for t in cfg.targets:
                lora = LoraProjection(getattr(layer, t), cfg.rank, cfg.alpha / cfg.rank, cfg.slots, generator)
                setattr(layer, t, lora)
                self.loras.append(lora)
        self.lora_params = [p for lora in self.loras for p in (lora.a, lora.b)]
        self.adam = SlotAdam(self.lora_params, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps, cfg.weight_decay)
        compiled = (lambda f: torch.compile(f, fullgraph=True, dynamic=False)) if ctx.compile else (lambda f: f)
        self.round_loss, self.phase_loss = compiled(self._round_loss), compiled(self._phase_loss)
        n = cfg.phase_prefix_docs
        self.boundaries = [n * (i + 1) // cfg.phases for i in range(cfg.phases)] if n else []
        self.doc: list[Tensor] = []  # the current document's observed tokens (from its BOS), while phases remain
        self.finished: list[Tensor] = []  # the observed documents, while phases remain
        if ctx.compile:
            self.warm_up()

    def _round_loss(self, x: Tensor, at: Tensor, y: Tensor, weight: Tensor) -> Tensor:
        """Σ_b weight_b · mean CE of row b's targets; x [S,L], at [S], y [S,W] (IGNORE: none), weight [S]."""
        lp = self.model.logprobs(x, y.size(1), at)  # [S,W,V]
        scored = y != golf.IGNORE
        nll = -lp.gather(-1, y.clamp_min(0)[..., None]).squeeze(-1) * scored  # [S,W]
        return (nll.sum(1) / scored.sum(1).clamp_min(1) * weight).sum()

    def _phase_loss(self, x: Tensor, y: Tensor) -> Tensor:  # [R,T] -> mean CE over non-IGNORE targets
        return torch.nn.functional.cross_entropy(self.model.logits(x).flatten(0, 1).float(), y.flatten(),
                                                 ignore_index=golf.IGNORE)

    def warm_up(self) -> None:
        """Compile every round shape and the phase step before the eval clock: forward and
        backward on one target each (no update)."""
        S, W, T, device = self.cfg.slots, self.cfg.chunk, self.ctx.seq_len, self.ctx.device
        self.model.train()
        try:
            for length in self.documents.lengths(T):
                y = torch.full((S, W), golf.IGNORE, dtype=torch.long, device=device)
                y[0, 0] = 0
                with self.ctx.autocast():
                    self.round_loss(torch.zeros(S, length, dtype=torch.long, device=device),
                                    torch.zeros(S, dtype=torch.long, device=device), y, torch.ones(S, device=device)).backward()
            if self.boundaries:
                x = torch.zeros(self.phase_rows(), T, dtype=torch.long, device=device)
                y = torch.full_like(x, golf.IGNORE)
                y[0, 0] = 0
                self.set_active(False)
                with self.ctx.autocast():
                    self.phase_loss(x, y).backward()
                self.set_active(True)
        finally:
            self.model.eval()
        self.model.zero_grad(set_to_none=True)
        self.adam.zero_grad()

    def set_active(self, active: bool) -> None:
        for lora in self.loras:
            lora.active = active

    def adjust(self, logprobs: Tensor, history: Tensor, positions: Tensor) -> Tensor:
        return logprobs  # the wrapped model already carries every update made on scored tokens

    def start_round(self, entering: dict[int, range]) -> None:
        """Reset the slots that take a new document; run a phase when one is due (every rank
        together: every rank observed the same prefix)."""
        if entering:
            slots = torch.zeros(self.cfg.slots, dtype=torch.bool)
            slots[list(entering)] = True
            slots = slots.to(self.ctx.device)
            for lora in self.loras:
                lora.reset(slots)
            self.adam.reset(slots)
            self.log["documents"] += len(entering)
        while self.boundaries and len(self.finished) >= self.boundaries[0]:
            self.phase(self.finished[: self.boundaries.pop(0)])
            if not self.boundaries:
                self.doc, self.finished = [], []

    def observe_round(self, round: golf.Round) -> None:
        if not any(round.more):
            return  # no slot has targets left to score: training could not help
        more = torch.tensor(round.more).to(self.ctx.device)
        self.model.train()
        try:
            for _ in range(self.cfg.epochs):
                self.adam.zero_grad()
                with self.ctx.autocast():
                    loss = self.round_loss(round.inputs, round.at, round.targets, more.float())
                loss.backward(inputs=self.lora_params)
                self.adam.step(more)
                self.log["steps"] += 1
        finally:
            self.model.eval()

    def observe(self, tokens: Tensor) -> None:
        """The scored prefix of the stream, in order: cut into documents at the BOS, for the phases."""
        if not self.boundaries:
            return
        starts = (tokens == self.bos).nonzero().flatten().tolist()  # one device read
        cuts = [0, *starts, tokens.numel()]
        for lo, hi in zip(cuts, cuts[1:]):
            if lo in starts and self.doc:
                self.finished.append(torch.cat(self.doc))
                self.doc = []
            if hi > lo:
                self.doc.append(tokens[lo:hi].to(self.ctx.device))

    def phase_rows(self) -> int:
        return -(-self.cfg.phase_batch_seqs // self.ctx.world_size)

    def phase(self, documents: list[Tensor]) -> None:
        """SGD on the base weights over `documents` (the adapters off)."""
        cfg, t, world, rank = self.cfg, self.ctx.seq_len, self.ctx.world_size, self.ctx.rank
        bs = cfg.phase_batch_seqs
        stream = torch.cat(documents)
        n = stream.numel() - 1
        s = -(-n // t)
        x = torch.zeros(s * t, dtype=torch.long, device=stream.device)
        y = torch.full((s * t,), golf.IGNORE, dtype=torch.long, device=stream.device)
        x[:n], y[:n] = stream[:-1], stream[1:]
        x, y = x.view(s, t), y.view(s, t)
        sgd = torch.optim.SGD(self.base_params, lr=cfg.phase_lr, momentum=cfg.phase_momentum)
        total = cfg.phase_epochs * -(-s // bs)
        steps = 0
        self.set_active(False)
        self.model.train()
        try:
            for _ in range(cfg.phase_epochs):
                for b in range(0, s, bs):
                    sgd.param_groups[0]["lr"] = cfg.phase_lr * 0.5 * (1 + math.cos(math.pi * steps / total))
                    xb, yb = x[b : b + bs], y[b : b + bs]
                    count = min(n, (b + bs) * t) - b * t  # the step's targets on all ranks
                    lo, hi = rank * xb.size(0) // world, (rank + 1) * xb.size(0) // world
                    local = max(0, min(n, (b + hi) * t) - (b + lo) * t)  # this rank's share, without a device read
                    sgd.zero_grad(set_to_none=True)
                    if local:
                        with self.ctx.autocast():
                            loss = self.phase_loss(*golf.pad_rows(xb[lo:hi], yb[lo:hi], self.phase_rows()))
                        (loss * (local / count)).backward(inputs=self.base_params)  # this rank's share of the step's mean
                    self.ctx.step(sgd, self.base_params, cfg.phase_grad_clip)
                    steps += 1
        finally:
            self.model.eval()
            self.set_active(True)
        self.log["phases"].append({"documents": len(documents), "steps": steps, "targets": n})


class LoraTtt(golf.Plugin):
    name = "lora_ttt"
    description = "phased LoRA test-time training per document, score-first (PR #1530/#1610/#1626/#1953)"
    Config = Config

    @golf.hookimpl
    def golf_eval_adapter(self, config):
        return LoraTttAdapter(self.config)
