"""val_bpb: byte lookup tables, sliding windows and the score-first adapter loop.

The metric is the challenge's: NLL in nats summed in float64 over every validation
target, divided by ln 2 and by the number of UTF-8 bytes those targets decode to.
The eval loop owns the token stream, so the legality conditions hold by construction
rather than by review (docs/architecture.md, "The eval adapter contract"):

- C2: every distribution that is scored is checked to be normalized over V;
- C3: adapters see a target only in ``observe``, after the chunk holding it was scored;
- C4: one left-to-right pass, every target scored exactly once (counted and checked).

Two ways through the stream: sliding windows in global chunks (the default), or, when an
adapter declares `documents` (golf.DocumentMode), document mode: the stream split at the BOS,
documents scored in pieces, `slots` documents at a time, one batch row each (DocumentPlan).
"""

from __future__ import annotations

import copy
import heapq
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import torch
from torch import Tensor

from .contract import IGNORE, DocumentMode, EvalAdapter, Round
from .errors import ComplianceError, ConfigError, DataError

if TYPE_CHECKING:
    import sentencepiece

NORMALIZATION_TOL = 1e-3
"""Largest |logsumexp| accepted for a scored distribution (C2)."""

_SPACE = "\u2581"  # sentencepiece's whitespace marker "▁"


@dataclass
class ByteLUTs:
    """Per-token byte accounting tables, indexed by token id (size max(|sp|, V))."""

    base_bytes: Tensor  # [V'] int16
    has_leading_space: Tensor  # [V'] bool
    is_boundary: Tensor  # [V'] bool

    def to(self, device) -> ByteLUTs:
        return ByteLUTs(
            self.base_bytes.to(device), self.has_leading_space.to(device), self.is_boundary.to(device)
        )

    def count_bytes(self, prev_tokens: Tensor, targets: Tensor) -> Tensor:
        """Bytes each target decodes to; a leading space is dropped after a boundary token,
        as sentencepiece drops it when decoding a document start."""
        space = self.has_leading_space[targets] & ~self.is_boundary[prev_tokens]
        return self.base_bytes[targets].long() + space.long()


def build_byte_luts(sp: sentencepiece.SentencePieceProcessor, vocab_size: int) -> ByteLUTs:
    """The challenge's byte tables (docs/techniques.md §1), so val_bpb compares with its leaderboard.

    Control, unknown and unused pieces and ids beyond the sentencepiece vocab are
    boundaries worth 0 bytes; byte-fallback pieces ``<0xNN>`` are 1 byte; any other piece
    is the UTF-8 length of its text after removing one leading "▁", which becomes the
    conditional space byte. A "▁" elsewhere in the piece (whitespace-only pieces such as
    "▁▁▁▁", which code tokenizers trained with allow_whitespace_only_pieces have) is
    counted as the one space byte it decodes to, not as its 3 UTF-8 bytes. The challenge
    counts 3, but its FineWeb tokenizer has no such piece, so the tables agree there
    and this rule stays exact on code.
    """
    sp_size = sp.get_piece_size()
    size = max(sp_size, vocab_size)
    base_bytes = torch.zeros(size, dtype=torch.int16)
    has_leading_space = torch.zeros(size, dtype=torch.bool)
    is_boundary = torch.ones(size, dtype=torch.bool)
    for i in range(sp_size):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        is_boundary[i] = False
        if sp.is_byte(i):
            base_bytes[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(_SPACE):
            has_leading_space[i] = True
            piece = piece[1:]
        base_bytes[i] = len(piece.replace(_SPACE, " ").encode("utf-8"))
    return ByteLUTs(base_bytes, has_leading_space, is_boundary)


@dataclass(frozen=True)
class Window:
    """One forward pass: inputs val[start : start+length], targets val[start+1 : start+length+1];
    the targets at offsets score_from..length-1 are scored, the rest is context."""

    start: int
    length: int
    score_from: int

    @property
    def first_target(self) -> int:
        return self.start + self.score_from

    @property
    def end_target(self) -> int:
        return self.start + self.length


@dataclass(frozen=True)
class WindowPlan:
    """The windows scoring targets 0..num_targets-1 each exactly once, in stream order, by
    arithmetic rather than as a list (a full-scale eval has about a million of them).

    Window 0 scores the first seq_len targets, window i >= 1 the next ``stride``:
    [lo(i), hi(i)). With stride == seq_len the windows do not overlap (the challenge's plain
    eval) and start at their first scored target; otherwise a window's inputs end at its last
    scored target, so every scored target past the start sees at least seq_len - stride
    tokens of context. The tail window scores only the targets left (the reference re-scored
    its last ``stride`` targets, D12).
    """

    num_targets: int
    seq_len: int
    stride: int

    def __post_init__(self):
        if self.seq_len < 1 or not 1 <= self.stride <= self.seq_len:
            raise ConfigError(f"eval: need 1 <= stride <= seq_len, got stride={self.stride}, seq_len={self.seq_len}")

    def __len__(self) -> int:
        if self.num_targets <= 0:
            return 0
        return 1 + -(-max(0, self.num_targets - self.seq_len) // self.stride)

    def lo(self, i: int) -> int:
        return 0 if i == 0 else self.seq_len + (i - 1) * self.stride

    def hi(self, i: int) -> int:
        return min(self.num_targets, self.seq_len if i == 0 else self.lo(i) + self.stride)

    def start(self, i: int) -> int:
        return self.lo(i) if self.stride == self.seq_len else max(0, self.hi(i) - self.seq_len)

    def width(self, i: int) -> int:
        """How many of the window's last positions the model is asked for (a static shape):
        seq_len for window 0 and non-overlapping windows, stride for the others."""
        return self.stride if i > 0 else self.seq_len

    def window(self, i: int) -> Window:
        start = self.start(i)
        return Window(start, self.hi(i) - start, self.lo(i) - start)

    def first_at(self, target: int) -> int:
        """Index of the first window whose first scored target is >= target."""
        if target <= 0:
            return 0
        return min(len(self), 1 + -(-max(0, target - self.seq_len) // self.stride))

    def chunks(self, chunk_tokens: int) -> list[range]:
        """Window ranges grouped by the chunk holding each window's first scored target; chunks
        in which no window starts are skipped (their targets belong to the previous window)."""
        groups = []
        for c in range(-(-self.num_targets // chunk_tokens)):
            group = range(self.first_at(c * chunk_tokens), self.first_at((c + 1) * chunk_tokens))
            if group:
                groups.append(group)
        return groups


@dataclass(frozen=True)
class Piece:
    """One batch row of a document-mode round: `targets` of document `doc`, scored in slot
    `slot` by the window of inputs val[start : targets.stop] (its first scored input at
    targets.start - start)."""

    slot: int
    doc: int
    targets: range
    start: int


@dataclass(frozen=True)
class DocumentPlan:
    """Document mode's arithmetic (every rank knows every boundary and every rank's schedule).

    Document d's targets are starts[d] .. starts[d+1]-1: its first input is a BOS (or val[0])
    and its last target the next document's BOS, so the documents partition the targets. Its
    piece k is the next `piece_len` of them; the window scoring it holds only the document's
    inputs, from max(doc start, piece start + chunk - seq_len) to the piece's last, so every
    piece's first scored position is at most seq_len - chunk and the scored positions
    [at, at + chunk) fit one row. Rank r takes documents r, r + W, r + 2W, ... in order; each of
    its `slots` rows takes the rank's next document as soon as its previous one is scored (so
    rows stay busy), and piece k of a document that entered a slot at round t is scored in
    round t + k. Every rank runs the same number of rounds (the longest rank's)."""

    starts: tuple[int, ...]
    num_targets: int
    seq_len: int
    mode: DocumentMode

    def __post_init__(self):
        m = self.mode
        if not 1 <= m.chunk <= self.seq_len or m.slots < 1 or m.short_chunk < 0 or m.short_chunk > m.chunk or m.short_len < 0:
            raise ConfigError(f"eval: document mode needs 1 <= chunk <= seq_len ({self.seq_len}), slots >= 1 and "
                              f"0 <= short_chunk <= chunk; got {m}")

    @classmethod
    def split(cls, val: Tensor, bos_id: int, seq_len: int, mode: DocumentMode) -> DocumentPlan:
        """The documents of the stream `val` [N+1]: one at target 0 and one at every BOS input after it."""
        num_targets = val.numel() - 1
        bos = (val[1:num_targets] == bos_id).nonzero().flatten() + 1  # one device read
        return cls((0, *bos.tolist()), num_targets, seq_len, mode)

    def __len__(self) -> int:
        return len(self.starts)

    def span(self, d: int) -> range:
        return range(self.starts[d], self.starts[d + 1] if d + 1 < len(self.starts) else self.num_targets)

    def piece_len(self, d: int) -> int:
        return self.mode.piece_len(len(self.span(d)))

    def pieces(self, d: int) -> int:
        return -(-len(self.span(d)) // self.piece_len(d))

    def piece(self, slot: int, d: int, k: int) -> Piece:
        span, n = self.span(d), self.piece_len(d)
        lo = span.start + k * n
        return Piece(slot, d, range(lo, min(span.stop, lo + n)), max(span.start, lo + self.mode.chunk - self.seq_len))

    def schedule(self, world_size: int) -> tuple[list[int], list[int]]:
        """(round, slot) at which each document enters its rank's slot: the slot free soonest
        (the lowest-numbered on a tie) takes the rank's next document."""
        entry, slot = [0] * len(self), [0] * len(self)
        for r in range(world_size):
            free = [(0, s) for s in range(self.mode.slots)]  # (round the slot is free from, slot)
            for d in range(r, len(self), world_size):
                t, s = heapq.heappop(free)
                entry[d], slot[d] = t, s
                heapq.heappush(free, (t + self.pieces(d), s))
        return entry, slot


class _DocumentScorer:
    """Scores document-mode rounds at a static shape [slots, L], L among a few lengths
    (DocumentMode.lengths), and returns the scored targets' positions and log-probabilities,
    gathered at each row's offset before the head (never [S,L,V]). A batch is a list of
    pieces of one round, run at the shortest length that holds them all; rows it leaves out
    are zeros (a row's index is its slot, whatever the batching)."""

    def __init__(self, logprob_fn, val: Tensor, plan: DocumentPlan, batch_seqs: int):
        self.logprob_fn, self.val, self.plan, self.batch_seqs = logprob_fn, val, plan, batch_seqs
        self.lengths = plan.mode.lengths(plan.seq_len)

    def on(self, val: Tensor) -> _DocumentScorer:
        return _DocumentScorer(self.logprob_fn, val, self.plan, self.batch_seqs)

    def positions(self, pieces: Sequence[Piece]) -> Tensor:
        return torch.cat([torch.arange(p.targets.start, p.targets.stop) for p in pieces])

    def length(self, pieces: Sequence[Piece]) -> int:
        need = max(p.targets.start - p.start for p in pieces) + self.plan.mode.chunk
        return next(n for n in self.lengths if n >= need)

    def batches(self, pieces: Sequence[Piece], first: int | None = None):
        """Runs of at most batch_seqs pieces (the first of at most `first`)."""
        i = 0
        while i < len(pieces):
            end = min(len(pieces), i + (first if i == 0 and first else self.batch_seqs))
            yield pieces[i:end]
            i = end

    def warm_up(self) -> None:
        with torch.inference_mode(False):
            at = torch.zeros(self.plan.mode.slots, dtype=torch.long, device=self.val.device)
        for n in self.lengths:
            with torch.inference_mode(False):
                dummy = torch.zeros(self.plan.mode.slots, n, dtype=torch.long, device=self.val.device)
            self.logprob_fn(dummy, self.plan.mode.chunk, at)

    @torch.inference_mode(False)
    def inputs(self, pieces: Sequence[Piece], length: int) -> tuple[Tensor, Tensor]:
        """([S,L] windows, zeros after each one's last scored input, [S] first scored positions)."""
        S, device = self.plan.mode.slots, self.val.device
        start, stop, at = (torch.zeros(S, dtype=torch.long) for _ in range(3))
        for p in pieces:
            start[p.slot], stop[p.slot], at[p.slot] = p.start, p.targets.stop, p.targets.start - p.start
        start, stop = start.to(device), stop.to(device)
        idx = start[:, None] + torch.arange(length, device=device)  # [S,L]
        x = torch.where(idx < stop[:, None], self.val[idx.clamp_max(self.val.numel() - 1)], 0)
        return x.contiguous(), at.to(device)

    def targets(self, pieces: Sequence[Piece]) -> Tensor:
        """[S,W] the targets of each row's scored positions, IGNORE where none was scored."""
        S, W = self.plan.mode.slots, self.plan.mode.chunk
        y = torch.full((S, W), IGNORE, dtype=torch.long, device=self.val.device)
        for p in pieces:
            y[p.slot, : len(p.targets)] = self.val[p.targets.start + 1 : p.targets.stop + 1]
        return y

    def rows(self, pieces: Sequence[Piece]) -> Tensor:
        """[N] the flat indices into [S*W] of the pieces' scored positions, in piece order."""
        W = self.plan.mode.chunk
        return torch.cat([torch.arange(p.slot * W, p.slot * W + len(p.targets)) for p in pieces])

    def __call__(self, pieces: Sequence[Piece]) -> tuple[Tensor, Tensor]:  # [N] target indices, [N,V]
        x, at = self.inputs(pieces, self.length(pieces))
        lp = self.logprob_fn(x, self.plan.mode.chunk, at)  # [S,W,V]
        lp = lp.reshape(-1, lp.size(-1))[self.rows(pieces).to(lp.device)]
        return self.positions(pieces).to(self.val.device), lp


def plan_windows(num_targets: int, seq_len: int, stride: int) -> list[Window]:
    """Every window of WindowPlan(num_targets, seq_len, stride), as a list."""
    plan = WindowPlan(num_targets, seq_len, stride)
    return [plan.window(i) for i in range(len(plan))]


@dataclass
class EvalResult:
    val_loss: float  # mean NLL in nats per target
    val_bpb: float  # total NLL / ln 2 / total bytes
    targets: int  # scored targets (== number of validation targets: C4)
    bytes: int
    seconds: float  # the scoring loop, after the warm-up
    checks: dict = field(default_factory=dict)  # compliance facts measured during this eval
    warmup_seconds: float = 0.0  # compiling and running each batch shape once, before the clock starts
    phase_seconds: dict = field(default_factory=dict)  # "score" and "observe:<adapter>" shares of `seconds`


def _history(val: Tensor, positions: Tensor, k: int) -> Tensor:
    """[N] input positions -> [N,K]: val[j-K+1..j], -1 before the stream start."""
    idx = positions[:, None] + torch.arange(1 - k, 1, device=val.device)  # [N,K]
    return torch.where(idx >= 0, val[idx.clamp_min(0)], -1)


def _slice(windows: range, rank: int, world_size: int) -> range:
    """Rank `rank`'s contiguous share of `windows`."""
    n = len(windows)
    return windows[rank * n // world_size : (rank + 1) * n // world_size]


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a host clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Scorer:
    """Runs one batch of windows through the model at a static shape [batch_seqs, seq_len]
    (when `static`) and returns the scored targets' input positions and log-probabilities.

    The scored targets of consecutive windows are consecutive, so a batch's positions are one
    range built on the device and its targets a slice of the stream: no index tensor crosses
    from the host except for the few batches holding a partial window (the first, the tail)."""

    def __init__(self, logprob_fn, val: Tensor, plan: WindowPlan, batch_seqs: int, static: bool):
        self.logprob_fn, self.val, self.plan = logprob_fn, val, plan
        self.batch_seqs, self.static = batch_seqs, static

    def batches(self, windows: range, first: int | None = None):
        """Runs of at most batch_seqs consecutive windows of one width (the first run of at
        most `first`: another batching of the same windows, for the in-pass C3 probe)."""
        i = windows.start
        while i < windows.stop:
            end = min(windows.stop, i + (first if i == windows.start and first else self.batch_seqs))
            if i == 0 and self.plan.width(0) != self.plan.stride:
                end = 1  # window 0 is wider than the overlapping windows after it
            yield range(i, end)
            i = end

    def on(self, val: Tensor) -> _Scorer:
        """The same scorer on another stream of the same length (a probe's perturbed copy)."""
        return _Scorer(self.logprob_fn, val, self.plan, self.batch_seqs, self.static)

    def positions(self, windows: range) -> Tensor:
        """[M] the targets `windows` score, ascending."""
        return torch.arange(self.plan.lo(windows.start), self.plan.hi(windows.stop - 1))

    def shapes(self, windows: range) -> set[int]:
        return {self.plan.width(i) for i in (windows.start, windows.stop - 1)} if windows else set()

    def warm_up(self, widths: set[int]) -> None:
        """Run every (batch, width) shape once, so compiling happens before the clock starts."""
        with torch.inference_mode(False):
            dummy = torch.zeros(self.batch_seqs, self.plan.seq_len, dtype=torch.long, device=self.val.device)
        for width in sorted(widths):
            self.logprob_fn(dummy, width)

    @torch.inference_mode(False)
    def inputs(self, batch: range) -> Tensor:  # [B,T], B = batch_seqs when static
        """Contiguous and never an inference tensor, however it is built: a compiled graph guards
        on the input's strides and dispatch keys, so every batch must match the warm-up's."""
        plan, T, n = self.plan, self.plan.seq_len, len(batch)
        s0 = plan.start(batch.start)
        if plan.hi(batch.stop - 1) - s0 == (n - 1) * plan.stride + T:  # every window full length
            x = self.val[s0 : s0 + (n - 1) * plan.stride + T].unfold(0, T, plan.stride).contiguous()
        else:  # a window shorter than seq_len (the stream is short, or non-overlapping tail): pad the end
            x = torch.zeros(n, T, dtype=self.val.dtype, device=self.val.device)
            for b, i in enumerate(batch):
                s, e = plan.start(i), plan.hi(i)
                x[b, : e - s] = self.val[s:e]
        if self.static and n < self.batch_seqs:
            x = torch.cat([x, x.new_zeros(self.batch_seqs - n, T)])
        return x

    def __call__(self, batch: range) -> tuple[Tensor, Tensor]:  # positions [N], logprobs [N,V]
        plan, n = self.plan, len(batch)
        width = plan.width(batch.start)
        lo, hi = plan.lo(batch.start), plan.hi(batch.stop - 1)
        lp = self.logprob_fn(self.inputs(batch), width)[:n]  # [n,width,V]
        lp = lp.reshape(n * width, -1)
        if hi - lo != n * width:  # some window scores fewer than `width` targets
            rows = []
            for b, i in enumerate(batch):
                count = plan.hi(i) - plan.lo(i)
                first = plan.lo(i) - plan.start(i) - (plan.seq_len - width)  # offset among the last `width`
                rows.append(torch.arange(b * width + first, b * width + first + count))
            lp = lp[torch.cat(rows).to(lp.device)]
        return torch.arange(lo, hi, device=self.val.device), lp


def _adjust(lp: Tensor, pos: Tensor, val: Tensor, adapters: Sequence[EvalAdapter], max_dev: Tensor) -> Tensor:
    """The eval adapters, in order, on one batch's log-probabilities [N,V]; max_dev[s] keeps
    stage s's largest |logsumexp| (C2)."""
    max_dev[0] = torch.maximum(max_dev[0], torch.logsumexp(lp, -1).abs().max())
    histories: dict[int, Tensor] = {}
    for s, adapter in enumerate(adapters, start=1):
        k = adapter.history_len
        if k not in histories:
            histories[k] = _history(val, pos, k)
        out = adapter.adjust(lp, histories[k], pos)
        if out.shape != lp.shape:
            raise ComplianceError(
                f"eval adapter {adapter.name!r} returned shape {tuple(out.shape)}, "
                f"expected {tuple(lp.shape)} (C2)", condition="C2", culprit=adapter.name
            )
        lp = out.float()
        max_dev[s] = torch.maximum(max_dev[s], torch.logsumexp(lp, -1).abs().max())
    return lp


class Unit:
    """A few windows of the real pass that an in-pass probe re-scores (golfcore.audit.PassProbe):
    the first windows of a batch, with adapters a batch of a drawn chunk; in document mode the
    first rows of a drawn round. `reference` [M,V] holds the distributions of its targets
    `positions` [M] (ascending; `targets` the range they span) as the pass scored them; `rows`
    scores the same windows again, on another stream or with another batching, with copies of
    the adapters as they were before the chunk or round (adjust may not change an adapter's
    state; a probe must not depend on that)."""

    WINDOWS = 4  # a unit's windows: a small share of a batch, so probing is cheap

    def __init__(self, index: int, windows: Sequence, score: _Scorer | _DocumentScorer, val: Tensor,
                 adapters: Sequence[EvalAdapter]):
        self.index, self.windows, self.val, self.score = index, windows, val, score
        self.positions = score.positions(windows)
        self.targets = range(int(self.positions[0]), int(self.positions[-1]) + 1)
        self.reference: Tensor | None = None
        self.copy_error: str | None = None
        try:
            self.saved = copy.deepcopy(list(adapters))
        except Exception as e:  # an adapter holding what cannot be copied: the unit cannot be probed
            self.saved, self.copy_error = [], f"{type(e).__name__}: {e}"

    def keep(self, lp: Tensor) -> None:
        """Keep the unit's rows [M,V] of the scored batch [N,V] that holds it (the unit starts it)."""
        self.reference = lp[: len(self.positions)].clone()

    def rows(self, stream: Tensor | None = None, first: int | None = None, adapters: int | None = None,
             twice: bool = False) -> Tensor:
        """[M,V] the unit's distributions scored again (`stream`: a perturbed copy of the
        validation tokens; `first`: the first batch's size; `adapters`: only the first k;
        `twice`: scored twice by the same adapter copies, the second time returned)."""
        val = self.val if stream is None else stream
        score = self.score.on(val)
        adapters = copy.deepcopy(self.saved[:adapters])
        scratch = torch.zeros(len(adapters) + 1, device=val.device)
        for _ in range(1 + twice):
            out = []
            with torch.inference_mode():
                for batch in score.batches(self.windows, first):
                    pos, lp = score(batch)
                    out.append(_adjust(lp, pos, val, adapters, scratch))
        return torch.cat(out)


class PassProbe(Protocol):
    """Checks drawn units of the real pass (implemented by golfcore.audit.PassProbe)."""

    def draw(self, units: int) -> list[int]: ...  # candidate unit indices (chunks or batches), drawn at this call

    def pick(self, batches: int) -> int: ...  # which of a drawn chunk's batches holds the unit

    def admit(self, unit_seconds: float, elapsed: float, done: int, units: int, spent: float) -> bool: ...

    def check(self, unit: Unit) -> None: ...


def _check_normalized(max_dev: Tensor, stages: list[str], world_size: int) -> None:
    """C2: raise when any stage's largest |logsumexp| so far exceeds the tolerance. Reduced
    across ranks first, so that every rank stops together. Reads the device (a sync)."""
    if world_size > 1:
        torch.distributed.all_reduce(max_dev, op=torch.distributed.ReduceOp.MAX)
    for name, dev in zip(stages, max_dev.tolist()):
        if not dev <= NORMALIZATION_TOL:  # also catches NaN
            raise ComplianceError(
                f"eval: {name!r} returned unnormalized log-probabilities: "
                f"max |logsumexp| = {dev:.3g} > {NORMALIZATION_TOL} (C2)",
                condition="C2", culprit=None if name == "logprob_fn" else name,
            )


def evaluate(
    logprob_fn: Callable[[Tensor, int], Tensor],
    val_tokens: Tensor,
    luts: ByteLUTs,
    *,
    seq_len: int,
    stride: int,
    batch_seqs: int = 32,
    adapters: Sequence[EvalAdapter] = (),
    chunk_tokens: int = 32768,
    rank: int = 0,
    world_size: int = 1,
    static: bool = False,
    progress: Callable[[int, int], None] | None = None,
    record: Callable[[Tensor, Tensor], None] | None = None,
    token_bytes: Tensor | None = None,
    probe: PassProbe | None = None,
    bos_id: int | None = None,
) -> EvalResult:
    """Score every target of ``val_tokens`` once and return val_loss/val_bpb with its checks.

    ``logprob_fn(inputs [B,T] int64, width)`` returns normalized log-probabilities
    [B,width,V] float32 of the inputs' last ``width`` positions (GPT.logprobs) and runs under
    torch.inference_mode; val_tokens ([N+1] ids) must be on its device. With ``static``
    (compiled models) every batch is padded to [batch_seqs, seq_len], so there are at most two
    shapes, both run once before the clock starts. Without adapters, rank r scores a
    contiguous slice of all windows and the device is read once, at the end. With adapters,
    the targets are split into chunks of chunk_tokens; each window belongs to the chunk
    holding its first scored target; each chunk is scored (rank r taking a contiguous slice of
    its windows), its C2 check is read (so no adapter observes a chunk whose normalization
    failed), then every adapter, on every rank, observes the chunk's targets. Sums are
    all-reduced when world_size > 1. ``progress(done, total)`` counts this rank's targets.
    ``record(positions [N], logprobs [N,V])``, when given, receives every scored distribution
    as scored, after all adapters (the legality probes compare them, golfcore.audit).
    ``token_bytes`` ([N+1], a corpus's byte sidecar, golfcore.data.load_val_bytes), when given,
    is what each target is charged instead of ``luts``: the original bytes of a transformed text.
    ``probe``, when given, re-checks C1 and C3 on units of the pass it draws (the first few
    windows of a drawn batch; with adapters, of a random batch of a drawn chunk, the adapters
    copied before it): each unit is kept as scored and, before any adapter observes it, handed
    to ``probe.check``; its time is left out of ``seconds`` and reported as
    ``checks["probe_seconds"]`` (docs/compliance.md, "Probes across the whole pass").

    Document mode, when an adapter declares ``documents`` (a golf.DocumentMode; at most one):
    the stream is split at ``bos_id`` and scheduled (DocumentPlan); each round, the document
    adapter's ``start_round`` gets the documents entering a slot, the next piece of every
    slot's document is scored (``logprob_fn(inputs [S,L], chunk, at [S])``, at most
    ``batch_seqs`` rows per call, ``stride`` unused), the C2 check is read, the document
    adapter observes the round (golf.Round), and every adapter observes, in stream order, the
    targets by which the scored prefix of the stream grew. Units are rounds (their first rows).
    """
    if val_tokens.dim() != 1 or val_tokens.is_floating_point() or val_tokens.numel() < 2:
        raise DataError(
            f"eval: validation tokens must be a 1-D integer tensor of >= 2 ids, got {tuple(val_tokens.shape)}"
        )
    if batch_seqs < 1 or chunk_tokens < 1:
        raise ConfigError(f"eval: batch_seqs and chunk_tokens must be >= 1, got {batch_seqs}, {chunk_tokens}")
    val = val_tokens.long()
    device = val.device
    luts = luts.to(device)
    if token_bytes is not None:
        if token_bytes.shape != val.shape:
            raise DataError(f"eval: {token_bytes.numel()} byte counts for {val.numel()} validation tokens")
        token_bytes = token_bytes.to(device)
    num_targets = val.numel() - 1
    stages = ["logprob_fn"] + [a.name for a in adapters]
    by_documents = [a for a in adapters if getattr(a, "documents", None) is not None]
    if len(by_documents) > 1 or (by_documents and bos_id is None):
        raise ConfigError(f"eval: document mode needs one document adapter and the BOS id; got adapters "
                          f"{[a.name for a in by_documents]}, bos_id {bos_id}")
    if by_documents:
        docs = DocumentPlan.split(val, bos_id, seq_len, by_documents[0].documents)
        entry, slot_of = docs.schedule(world_size)
        finish = [entry[d] + docs.pieces(d) for d in range(len(docs))]  # the round after each document's last
        arrivals: dict[int, list[int]] = {}  # round -> this rank's documents entering a slot then
        for d in range(rank, len(docs), world_size):
            arrivals.setdefault(entry[d], []).append(d)
        score = _DocumentScorer(logprob_fn, val, docs, batch_seqs)
    else:
        plan = WindowPlan(num_targets, seq_len, stride)
        chunks = plan.chunks(chunk_tokens) if adapters else [range(len(plan))]
        mine = [_slice(chunk, rank, world_size) for chunk in chunks]  # this rank's windows of each chunk
        score = _Scorer(logprob_fn, val, plan, batch_seqs, static)

    t0 = time.perf_counter()
    if static:
        with torch.inference_mode():
            score.warm_up() if by_documents else score.warm_up(set().union(*(score.shapes(w) for w in mine)))
        _sync(device)
    warmup_seconds = time.perf_counter() - t0

    # Accumulated on device, so no batch waits for the host: nll, bytes, targets, batches.
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    max_dev = torch.zeros(len(stages), dtype=torch.float32, device=device)  # per stage, |logsumexp|
    if by_documents:
        total = sum(len(docs.span(d)) for d in range(rank, len(docs), world_size))
    else:
        total = sum(plan.hi(w.stop - 1) - plan.lo(w.start) for w in mine if w)
    done = 0
    phases = dict.fromkeys(["score", *(f"observe:{a.name}" for a in adapters)], 0.0)
    # what the probe draws from: the rounds in document mode, the chunks with adapters, else the batches
    if by_documents:
        units = max(finish, default=0)  # every rank's rounds
    else:
        units = len(chunks) if adapters else sum(1 for _ in score.batches(mine[0]))
    drawn = set(probe.draw(units)) if probe is not None else set()
    probe_seconds, probed = 0.0, 0

    def check(unit: Unit | None, unit_seconds: float | None, done_units: int) -> None:
        """Probe `unit` when the budget admits it. Every rank calls this at the same drawn units;
        a rank without a unit there (None) makes the budget refuse it on every rank."""
        nonlocal probe_seconds, probed
        _sync(device)
        t_probe = time.perf_counter()
        elapsed = t_probe - t0 - probe_seconds
        seconds = 0.0 if unit is None else unit_seconds if unit_seconds is not None else elapsed / done_units
        if probe.admit(seconds, elapsed, done_units, units, probe_seconds):
            probe.check(unit)
            probed += 1
        _sync(device)
        probe_seconds += time.perf_counter() - t_probe

    def add(pos: Tensor, lp: Tensor) -> Tensor:
        """Score one batch: the adapters, the record, the sums ([N] target indices, [N,V])."""
        nonlocal done
        lp = _adjust(lp, pos, val, adapters, max_dev)
        if record is not None:
            record(pos, lp)
        targets = val[pos + 1]  # [N]
        sums[0] -= lp.gather(1, targets[:, None]).double().sum()
        sums[1] += luts.count_bytes(val[pos], targets).sum() if token_bytes is None else token_bytes[pos + 1].sum()
        sums[2] += pos.numel()
        sums[3] += 1
        done += pos.numel()
        if progress is not None:
            progress(done, total)
        return lp

    def observe(lo: int, hi: int) -> None:
        """Every adapter observes targets lo..hi-1, in stream order (a copy: no adapter can
        rewrite the stream it is scored on)."""
        if hi > lo:
            observed = val[lo + 1 : hi + 1].clone()
            for adapter in adapters:
                t_obs = time.perf_counter()
                adapter.observe(observed)
                _sync(device)
                phases[f"observe:{adapter.name}"] += time.perf_counter() - t_obs

    t0 = time.perf_counter()
    if by_documents:
        document_adapter, key = by_documents[0], f"observe:{by_documents[0].name}"
        active: dict[int, int] = {}  # slot -> the document it scores
        scored_to, frontier = 0, 0  # the scored prefix: targets < scored_to; the first document not all scored
        for k in range(units):
            t_round = time.perf_counter()
            entering = {slot_of[d]: d for d in arrivals.get(k, [])}
            active.update(entering)
            document_adapter.start_round({s: docs.span(d) for s, d in entering.items()})
            _sync(device)
            phases[key] += time.perf_counter() - t_round
            t_round = time.perf_counter()
            pieces = [docs.piece(s, d, k - entry[d]) for s, d in sorted(active.items(), key=lambda sd: sd[1])]  # stream order
            unit = None
            if k in drawn:
                unit = Unit(k, pieces[: Unit.WINDOWS], score, val, adapters) if pieces else None
                probe_seconds += time.perf_counter() - t_round  # copying the adapters is the probe's cost
            with torch.inference_mode():
                for b, batch in enumerate(score.batches(pieces)):
                    lp = add(*score(batch))
                    if b == 0 and unit is not None:
                        unit.keep(lp)
            if k in drawn:
                _check_normalized(max_dev, stages, world_size)
                check(unit, time.perf_counter() - t_round, k + 1)
            _check_normalized(max_dev, stages, world_size)  # before any adapter observes the round
            phases["score"] += time.perf_counter() - t_round
            if pieces:
                t_obs = time.perf_counter()
                x, at = score.inputs(pieces, score.length(pieces))
                more = [False] * docs.mode.slots
                for p in pieces:
                    more[p.slot] = finish[p.doc] > k + 1
                document_adapter.observe_round(Round(x, at, score.targets(pieces), more))
                _sync(device)
                phases[key] += time.perf_counter() - t_obs
            active = {s: d for s, d in active.items() if finish[d] > k + 1}
            while frontier < len(docs) and finish[frontier] <= k + 1:
                frontier += 1
            if frontier == len(docs):
                grown = num_targets
            else:
                span = docs.span(frontier)
                grown = min(span.stop, span.start + max(0, k + 1 - entry[frontier]) * docs.piece_len(frontier))
            observe(scored_to, grown)
            scored_to = grown
    else:
        for c, (chunk, windows) in enumerate(zip(chunks, mine)):
            t_chunk = time.perf_counter()
            unit, at = None, None  # a probe's unit and the batch that starts it
            if adapters and c in drawn:
                batches = list(score.batches(windows))
                if batches:
                    at = batches[probe.pick(len(batches))]
                    unit = Unit(c, at[: Unit.WINDOWS], score, val, adapters)
                probe_seconds += time.perf_counter() - t_chunk  # copying the adapters is the probe's cost
            with torch.inference_mode():
                for b, batch in enumerate(score.batches(windows)):
                    if not adapters and b in drawn:
                        unit, at = Unit(b, batch[: Unit.WINDOWS], score, val, ()), batch
                    lp = add(*score(batch))  # [N] input positions j (target j+1), [N,V]
                    if batch == at:
                        unit.keep(lp)
                    if not adapters and unit is not None:
                        check(unit, None, b + 1)
                        unit = at = None
            if adapters and c in drawn:
                _check_normalized(max_dev, stages, world_size)  # a probe re-scores only a normalized chunk
                check(unit, time.perf_counter() - t_chunk, c + 1)
            if adapters:
                _check_normalized(max_dev, stages, world_size)  # before any adapter observes the chunk
                phases["score"] += time.perf_counter() - t_chunk
                observe(plan.lo(chunk.start), plan.hi(chunk.stop - 1))
    if not adapters:
        _check_normalized(max_dev, stages, world_size)
        phases["score"] = time.perf_counter() - t0 - probe_seconds
    else:
        phases["score"] -= probe_seconds

    if world_size > 1:
        torch.distributed.all_reduce(sums)
    nll, nbytes, scored, batches = sums.tolist()
    if int(scored) != num_targets:
        raise ComplianceError(f"eval: scored {int(scored)} targets, expected {num_targets} (C4)", condition="C4")
    if nbytes == 0:
        raise DataError(f"eval: the {num_targets} validation targets decode to 0 bytes (all boundary tokens?)")
    return EvalResult(
        val_loss=nll / scored,
        val_bpb=nll / math.log(2) / nbytes,
        targets=int(scored),
        bytes=int(nbytes),
        seconds=time.perf_counter() - t0 - probe_seconds,
        warmup_seconds=warmup_seconds,
        phase_seconds=phases,
        checks={
            "c2_normalized_batches": int(batches),
            "c2_max_deviation": max(max_dev.tolist()),
            "c4_targets_scored": int(scored),
            "c4_targets_expected": num_targets,
            "adapters": [a.name for a in adapters],
            "bytes_from": "tokenizer byte table" if token_bytes is None else "sidecar",
            "probe_seconds": probe_seconds,
            "probed_units": probed,
        },
    )


def unigram_entropy_bpb(tokens: Tensor, luts: ByteLUTs, token_bytes: Tensor | None = None) -> float:
    """Bits per byte of the best context-free code for `tokens`: the entropy of their own
    unigram distribution, spread over the bytes they decode to (or the byte sidecar's). A
    reference point, not a score: a model that learned anything beyond token frequencies lands
    well below it."""
    targets = tokens[1:]
    counts = torch.bincount(targets, minlength=luts.base_bytes.numel()).double()
    p = counts[counts > 0] / targets.numel()
    nats = float(-(p * p.log()).sum()) * targets.numel()
    nbytes = luts.count_bytes(tokens[:-1], targets).sum() if token_bytes is None else token_bytes[1:].sum()
    return nats / math.log(2) / float(nbytes)
