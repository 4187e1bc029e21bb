"""val_bpb: byte lookup tables, sliding windows and the score-first adapter loop.

The metric is the challenge's: NLL in nats summed in float64 over every validation
target, divided by ln 2 and by the number of UTF-8 bytes those targets decode to.
The eval loop owns the token stream, so the legality conditions hold by construction
rather than by review (docs/architecture.md, "The eval adapter contract"):

- C2: every distribution that is scored is checked to be normalized over V;
- C3: adapters see a target only in ``observe``, after the chunk holding it was scored;
- C4: one left-to-right pass, every target scored exactly once (counted and checked).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import Tensor

from .contract import EvalAdapter
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


def plan_windows(num_targets: int, seq_len: int, stride: int) -> list[Window]:
    """Windows scoring targets 0..num_targets-1 each exactly once, in stream order.

    stride == seq_len gives non-overlapping windows (the challenge's plain eval). Otherwise
    the first window scores its first seq_len targets and each later window the next
    ``stride``, with its context ending at its last scored target, so every scored target
    past the start sees at least seq_len - stride tokens of context. The tail window scores
    only the targets left (the reference re-scored its last ``stride`` targets, D12).
    """
    if seq_len < 1 or not 1 <= stride <= seq_len:
        raise ConfigError(f"eval: need 1 <= stride <= seq_len, got stride={stride}, seq_len={seq_len}")
    windows = []
    end = 0
    while end < num_targets:
        lo = end
        end = min(num_targets, lo + (seq_len if lo == 0 else stride))
        start = lo if stride == seq_len else max(0, end - seq_len)
        windows.append(Window(start, end - start, lo - start))
    return windows


@dataclass
class EvalResult:
    val_loss: float  # mean NLL in nats per target
    val_bpb: float  # total NLL / ln 2 / total bytes
    targets: int  # scored targets (== number of validation targets: C4)
    bytes: int
    seconds: float
    checks: dict = field(default_factory=dict)  # compliance facts measured during this eval


def _history(val: Tensor, positions: Tensor, k: int) -> Tensor:
    """[N] input positions -> [N,K]: val[j-K+1..j], -1 before the stream start."""
    idx = positions[:, None] + torch.arange(1 - k, 1, device=val.device)  # [N,K]
    return torch.where(idx >= 0, val[idx.clamp_min(0)], -1)


def _batches(windows: Sequence[Window], batch_seqs: int):
    """Consecutive windows of equal length, at most batch_seqs at a time (no padding)."""
    batch: list[Window] = []
    for w in windows:
        if batch and (len(batch) == batch_seqs or w.length != batch[0].length):
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch


def _rank_slice(items: Sequence, rank: int, world_size: int) -> Sequence:
    n = len(items)
    return items[rank * n // world_size : (rank + 1) * n // world_size]


def _chunks(windows: list[Window], chunk_tokens: int, chunked: bool) -> list[list[Window]]:
    """Group windows by the chunk holding their first scored target (one group if unchunked)."""
    if not chunked:
        return [windows]
    groups: list[list[Window]] = []
    last = -1
    for w in windows:
        c = w.first_target // chunk_tokens
        if c != last:
            groups.append([])
            last = c
        groups[-1].append(w)
    return groups


def evaluate(
    logprob_fn: Callable[[Tensor], Tensor],
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
    progress: Callable[[int, int], None] | None = None,
    record: Callable[[Tensor, Tensor], None] | None = None,
) -> EvalResult:
    """Score every target of ``val_tokens`` once and return val_loss/val_bpb with its checks.

    logprob_fn maps inputs [B,T] int64 to normalized log-probabilities [B,T,V] float32 and
    runs under torch.inference_mode; val_tokens ([N+1] ids) must be on its device. Without
    adapters, rank r scores a contiguous slice of all windows. With adapters, the targets
    are split into chunks of chunk_tokens; each window belongs to the chunk holding its
    first scored target; each chunk is scored (rank r taking a contiguous slice of its
    windows), then every adapter, on every rank, observes the chunk's targets. Sums are
    all-reduced when world_size > 1. ``progress(done, total)`` counts this rank's targets.
    ``record(positions [N], logprobs [N,V])``, when given, receives every scored distribution
    as scored, after all adapters (the legality probes compare them, golfcore.audit).
    """
    t0 = time.perf_counter()
    if val_tokens.dim() != 1 or val_tokens.is_floating_point() or val_tokens.numel() < 2:
        raise DataError(
            f"eval: validation tokens must be a 1-D integer tensor of >= 2 ids, got {tuple(val_tokens.shape)}"
        )
    if batch_seqs < 1 or chunk_tokens < 1:
        raise ConfigError(f"eval: batch_seqs and chunk_tokens must be >= 1, got {batch_seqs}, {chunk_tokens}")
    val = val_tokens.long()
    device = val.device
    luts = luts.to(device)
    num_targets = val.numel() - 1
    chunks = _chunks(plan_windows(num_targets, seq_len, stride), chunk_tokens, bool(adapters))
    stages = ["logprob_fn"] + [a.name for a in adapters]

    # Accumulated on device, so no batch waits for the host: nll, bytes, targets, batches.
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    max_dev = torch.zeros(len(stages), dtype=torch.float32, device=device)  # per stage, |logsumexp|
    total = sum(w.length - w.score_from for c in chunks for w in _rank_slice(c, rank, world_size))
    done = 0

    for chunk in chunks:
        with torch.inference_mode():
            for batch in _batches(_rank_slice(chunk, rank, world_size), batch_seqs):
                length = batch[0].length
                rows = torch.cat([b * length + torch.arange(w.score_from, length) for b, w in enumerate(batch)])
                pos = torch.cat([torch.arange(w.first_target, w.end_target) for w in batch])
                rows, pos = rows.to(device), pos.to(device)  # [N] flat row, [N] input position j
                inputs = torch.stack([val[w.start : w.start + length] for w in batch])  # [B,T]
                lp = logprob_fn(inputs).float().flatten(0, 1)[rows]  # [N,V]
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
                if record is not None:
                    record(pos, lp)
                targets = val[pos + 1]  # [N]
                sums[0] -= lp.gather(1, targets[:, None]).double().sum()
                sums[1] += luts.count_bytes(val[pos], targets).sum()
                sums[2] += targets.numel()
                sums[3] += 1
                done += targets.numel()
                if progress is not None:
                    progress(done, total)
        # C2 is checked before any adapter observes the chunk, so no state is built on a bad
        # score; the deviation is reduced first so that every rank stops together.
        if world_size > 1:
            torch.distributed.all_reduce(max_dev, op=torch.distributed.ReduceOp.MAX)
        for name, dev in zip(stages, max_dev.tolist()):
            if not dev <= NORMALIZATION_TOL:  # also catches NaN
                raise ComplianceError(
                    f"eval: {name!r} returned unnormalized log-probabilities: "
                    f"max |logsumexp| = {dev:.3g} > {NORMALIZATION_TOL} (C2)",
                    condition="C2", culprit=None if name == "logprob_fn" else name,
                )
        if adapters:
            # [M] this chunk's targets; a copy, so no adapter can rewrite the stream it is scored on
            observed = val[chunk[0].first_target + 1 : chunk[-1].end_target + 1].clone()
            for adapter in adapters:
                adapter.observe(observed)

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
        seconds=time.perf_counter() - t0,
        checks={
            "c2_normalized_batches": int(batches),
            "c2_max_deviation": max(max_dev.tolist()),
            "c4_targets_scored": int(scored),
            "c4_targets_expected": num_targets,
            "adapters": [a.name for a in adapters],
        },
    )


def unigram_entropy_bpb(tokens: Tensor, luts: ByteLUTs) -> float:
    """Bits per byte of the best context-free code for `tokens`: the entropy of their own
    unigram distribution, spread over the bytes they decode to. A reference point, not a score:
    a model that learned anything beyond token frequencies lands well below it."""
    targets = tokens[1:]
    counts = torch.bincount(targets, minlength=luts.base_bytes.numel()).double()
    p = counts[counts > 0] / targets.numel()
    nats = float(-(p * p.log()).sum()) * targets.numel()
    return nats / math.log(2) / float(luts.count_bytes(tokens[:-1], targets).sum())
