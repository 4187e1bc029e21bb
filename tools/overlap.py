"""Training/validation overlap: does any validation document, or any 64-token span of one,
appear in the training shards? (docs/compliance.md, "Training/validation overlap")

Streaming hashes: every span of `span` tokens gets a 64-bit polynomial hash, computed for a
whole block at once from a prefix sum (h(i) = sum_j t[i+j] b^-j, mod 2^64, with b odd so it is
invertible). Spans are sampled by content: only those whose hash is a multiple of SAMPLE are
compared, the same spans in both splits. The sampled validation spans inside one document (never
across a BOS) are kept sorted; the training shards are read block by block, every training span
hashed, the sampled ones tested against a bitmap of the validation hashes' top bits, and only
the few that pass are looked up exactly. Documents shorter than a span are compared whole with
the training documents. A validation document is "copied" when at least half of its sampled
spans (or, when short, itself) appear in training; more copied documents than `max_copied` of
the split fails. The result is cached per corpus fingerprint (golfcore.audit.overlap_cache),
where every run's compliance record reads it.

Run `python -m golf_tools.overlap --bench` for the throughput benchmark (docs/compliance.md).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from golfcore.audit import FAIL, OVERLAP_SPAN, PASS, overlap_cache
import sentencepiece as spm

from golfcore.data import Corpus, SpecialTokens, read_shard, write_shard
from golfcore.files import write_json

BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: invertible mod 2^64
BASE_INV = np.uint64(pow(int(BASE), -1, 1 << 64))
BLOCK = 1 << 22  # training tokens hashed at once
SAMPLE = 8  # spans compared: those whose hash is a multiple of this (content-defined: the same in both splits)
MAX_COPIED = 0.001  # the largest share of validation documents that may be copied into training
EXAMPLES = 5


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """[n] base^0 .. base^(n-1) mod 2^64."""
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(out, dtype=np.uint64)


class Hasher:
    """Prefix sums of token blocks of at most `block` tokens, and the powers that turn their
    differences into hashes (golf_tools.overlap._blocks)."""

    def __init__(self, span: int, block: int):
        self.span = span
        self.inv = _powers(BASE_INV, block)  # b^-k
        self.pow = _powers(BASE, block)  # b^k

    def prefix(self, tokens: np.ndarray) -> np.ndarray:
        """[n+1] S with S[k] = sum_{i<k} (t_i + 1) b^-i (the +1 keeps token 0 from vanishing)."""
        s = np.zeros(tokens.size + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            np.cumsum((tokens.astype(np.uint64) + np.uint64(1)) * self.inv[: tokens.size], out=s[1:])
        return s


def _documents(tokens: np.ndarray, bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the documents of a stream: each starts at a BOS (or the stream start)."""
    starts = np.flatnonzero(tokens == bos_id)
    if starts.size == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    return starts, np.concatenate([starts[1:], [tokens.size]])


def _blocks(hasher: Hasher, tokens: np.ndarray, starts: np.ndarray, ends: np.ndarray):
    """Per block of BLOCK tokens (consecutive blocks overlap by span - 1, so every span lies in
    one): (its offset, its span hashes, the positions and hashes of the ranges [starts, ends),
    each shorter than a span, that start in the block's first BLOCK - span + 1 tokens, or
    anywhere in the last block)."""
    span, step = hasher.span, BLOCK - hasher.span + 1
    for lo in range(0, max(tokens.size - span + 1, 1), step):
        block = tokens[lo : lo + BLOCK]
        prefix = hasher.prefix(block)
        n = max(block.size - span + 1, 0)
        last = lo + BLOCK >= tokens.size
        mine = (starts >= lo) & ((starts < lo + step) | last)
        s, e = starts[mine] - lo, ends[mine] - lo
        with np.errstate(over="ignore"):
            spans = (prefix[span:] - prefix[:n]) * hasher.pow[:n]
            ranges = (prefix[e] - prefix[s]) * hasher.pow[s] ^ (e - s).astype(np.uint64) * BASE
        yield lo, spans, lo + s, ranges


class Overlap:
    """The validation split's span and short-document hashes, and what training matched."""

    def __init__(self, val: np.ndarray, span: int, bos_id: int, sample: int = SAMPLE):
        self.span, self.mask, self.bos_id = span, np.uint64(sample - 1), bos_id
        self.hasher = Hasher(span, BLOCK)
        starts, ends = _documents(val, bos_id)
        self.docs, self.doc_starts, self.val_tokens = starts.size, starts, val.size
        doc_of = np.repeat(np.arange(starts.size), ends - starts)  # [n] document of each token
        short = (ends - starts) < span
        pieces = list(_blocks(self.hasher, val, starts[short], ends[short]))
        hashes = np.concatenate([h for _, h, _, _ in pieces])  # [n - span + 1], in stream order
        inside = doc_of[: hashes.size] == doc_of[span - 1 :] if hashes.size else np.zeros(0, dtype=bool)
        inside &= (hashes & self.mask) == 0
        self.spans_of = np.bincount(doc_of[: hashes.size][inside], minlength=self.docs)  # [docs]
        self.hashes, first = np.unique(hashes[inside], return_index=True)  # sorted
        self.doc_of_hash = doc_of[: hashes.size][inside][first]
        short_hashes = np.concatenate([h for _, _, _, h in pieces])
        order = np.argsort(short_hashes)
        self.short_hashes = short_hashes[order]
        self.short_docs = np.flatnonzero(short)[order]
        self.short_lengths = np.unique((ends - starts)[short])
        bits = int(np.clip(np.ceil(np.log2(max(self.hashes.size, 1) * 16)), 16, 30))
        self.shift = np.uint64(64 - bits)
        self.bitmap = np.zeros(1 << bits, dtype=bool)
        self.bitmap[self.hashes >> self.shift] = True
        self.found = np.zeros(self.hashes.size, dtype=bool)
        self.short_found = np.zeros(self.short_docs.size, dtype=bool)
        self.seen_at: dict[int, tuple[str, int]] = {}  # validation document -> (training shard, offset)
        self.tokens = 0

    def scan(self, name: str, tokens: np.ndarray) -> None:
        """Mark the validation spans and short documents found in one training shard."""
        self.tokens += tokens.size
        starts, ends = _documents(tokens, self.bos_id)
        short = np.isin(ends - starts, self.short_lengths)
        for lo, spans, short_at, short_hashes in _blocks(self.hasher, tokens, starts[short], ends[short]):
            at = np.flatnonzero((spans & self.mask) == 0)
            at = at[self.bitmap[spans[at] >> self.shift]]
            self._mark(name, lo + at, spans[at], self.hashes, self.found, self.doc_of_hash)
            self._mark(name, short_at, short_hashes, self.short_hashes, self.short_found, self.short_docs)

    def _mark(self, name: str, where: np.ndarray, hashes: np.ndarray, table: np.ndarray, found: np.ndarray,
              doc_of: np.ndarray) -> None:
        """Mark the entries of sorted `table` equal to `hashes` (found at training offsets `where`)."""
        if not table.size or not hashes.size:
            return
        at = np.searchsorted(table, hashes).clip(max=table.size - 1)
        hit = table[at] == hashes
        at, where = at[hit], where[hit]
        docs, first = np.unique(doc_of[at], return_index=True)
        for doc, w in zip(docs.tolist(), where[first].tolist()):
            self.seen_at.setdefault(doc, (name, w))  # [docs] at most: where each was first found
        found[at] = True

    def result(self, max_copied: float, seconds: float) -> dict:
        """The compliance entry: counts, the first examples, pass or fail."""
        found_per_doc = np.bincount(self.doc_of_hash[self.found], minlength=self.docs)
        # a span hash shared by several validation documents counts for its first: a lower bound
        copied = found_per_doc * 2 >= np.maximum(self.spans_of, 1)
        copied &= self.spans_of > 0
        copied[self.short_docs[self.short_found]] = True
        lengths = np.diff(np.concatenate([self.doc_starts, [self.val_tokens]]))
        unchecked = int(((self.spans_of == 0) & (lengths >= self.span)).sum())
        count, touched = int(copied.sum()), int((found_per_doc > 0).sum() + self.short_found.sum())
        shown = sorted(self.seen_at, key=lambda d: (not copied[d], d))[:EXAMPLES]  # copied ones first
        examples = [{"val_document": d, "copied": bool(copied[d]), "train_shard": self.seen_at[d][0],
                     "train_offset": self.seen_at[d][1]} for d in shown]
        entry = {"status": PASS, "span_tokens": self.span, "val_documents": self.docs, "copied_documents": count,
                 "documents_with_a_span_in_training": touched, "documents_without_a_sampled_span": unchecked,
                 "span_sample": f"1 in {int(self.mask) + 1} (hash multiple)", "val_spans": int(self.hashes.size),
                 "val_spans_in_training": int(self.found.sum()), "train_tokens": self.tokens,
                 "max_copied_share": max_copied, "seconds": seconds,
                 "tokens_per_second": self.tokens / seconds if seconds > 0 else None, "examples": examples}
        if count > max_copied * self.docs:
            entry.update(status=FAIL, culprit="the corpus (training shards)",
                         message=f"{count} of {self.docs} validation documents ({count / self.docs:.1%}) appear in the "
                                 f"training shards (at least half of their sampled {self.span}-token spans; the most allowed is "
                                 f"{max_copied:.1%}); first: validation document {examples[0]['val_document']} in "
                                 f"{examples[0]['train_shard']} at token {examples[0]['train_offset']:,}; "
                                 f"culprit: the corpus (training shards)")
        return entry


_SHARED: Overlap | None = None  # the parent's tables, inherited by forked workers


def _scan_one(path: Path) -> tuple[np.ndarray, np.ndarray, dict, int]:
    """A worker's scan of one shard, against a fresh copy of the marks: what it found."""
    overlap = _SHARED
    overlap.found[:], overlap.short_found[:], overlap.seen_at, overlap.tokens = False, False, {}, 0
    overlap.scan(path.name, read_shard(path))
    return np.flatnonzero(overlap.found), np.flatnonzero(overlap.short_found), overlap.seen_at, overlap.tokens


def check(corpus: Corpus, span: int = OVERLAP_SPAN, max_copied: float = MAX_COPIED, workers: int | None = None,
          progress=None, bos_id: int | None = None) -> dict:
    """The overlap entry of a corpus (its val split against the train shards it uses), the
    shards scanned by `workers` processes (default: one per CPU). Documents start at the
    tokenizer's BOS (`bos_id`, default: read from the corpus's tokenizer)."""
    if bos_id is None:
        bos_id = SpecialTokens.of(spm.SentencePieceProcessor(model_file=str(corpus.tokenizer_path))).bos_id
    global _SHARED
    t0 = time.perf_counter()
    val = np.concatenate([read_shard(p) for p in corpus.val_files])
    overlap = Overlap(val, span, bos_id)
    workers = min(workers or os.cpu_count() or 1, len(corpus.train_files))
    if workers <= 1:
        results = map(_scan_one, corpus.train_files)
    else:
        _SHARED = overlap
        pool = multiprocessing.get_context("fork").Pool(workers)
        results = pool.imap(_scan_one, corpus.train_files)
    found, short_found, seen_at, tokens = np.zeros_like(overlap.found), np.zeros_like(overlap.short_found), {}, 0
    _SHARED = overlap
    for i, (f, sf, seen, n) in enumerate(results):  # in shard order, so the first place found is kept
        found[f], short_found[sf], tokens = True, True, tokens + n
        for doc, at in seen.items():
            seen_at.setdefault(doc, at)
        if progress is not None:
            progress(i + 1, len(corpus.train_files))
    if workers > 1:
        pool.close()
    _SHARED = None
    overlap.found, overlap.short_found, overlap.seen_at, overlap.tokens = found, short_found, seen_at, tokens
    result = overlap.result(max_copied, time.perf_counter() - t0)
    result["processes"] = workers
    return result


def cached_check(corpus: Corpus, data_root: Path, progress=None) -> tuple[dict, bool]:
    """(the entry, whether it came from the cache); computed and cached when missing."""
    path = overlap_cache(data_root, corpus.fingerprint)
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8")), True
    entry = check(corpus, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, entry)
    return entry, False


BENCH_BOS = 1


def bench(train_tokens: int, val_tokens: int, workers: int, vocab: int = 1024, shard_tokens: int = 100_000_000) -> dict:
    """Throughput on synthetic shards of random documents, with two validation documents planted."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        val = rng.integers(2, vocab, val_tokens, dtype=np.uint16)
        val[:: 1000] = BENCH_BOS
        write_shard(Path(tmp) / "bench_val_000000.bin", val)
        files = []
        for i in range(0, train_tokens, shard_tokens):
            tokens = rng.integers(2, vocab, min(shard_tokens, train_tokens - i), dtype=np.uint16)
            tokens[:: 1000] = BENCH_BOS
            if i == 0:
                tokens[5000:7000] = val[3000:5000]  # two documents copied
            files.append(Path(tmp) / f"bench_train_{len(files):06d}.bin")
            write_shard(files[-1], tokens)
        corpus = Corpus("bench", Path(tmp), files, [Path(tmp) / "bench_val_000000.bin"], Path(tmp), vocab, {})
        return check(corpus, workers=workers, bos_id=BENCH_BOS)


def main() -> None:
    parser = argparse.ArgumentParser(description="overlap check throughput on synthetic shards")
    parser.add_argument("--bench", action="store_true", required=True)
    parser.add_argument("--train-tokens", type=int, default=1_000_000_000)
    parser.add_argument("--val-tokens", type=int, default=62_000_000)
    parser.add_argument("--shard-tokens", type=int, default=100_000_000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    r = bench(args.train_tokens, args.val_tokens, args.workers, shard_tokens=args.shard_tokens)
    print(f"overlap check: {r['train_tokens']:,} training tokens against {args.val_tokens:,} validation tokens "
          f"({r['val_spans']:,} sampled spans) in {r['seconds']:.1f} s, validation hashing included: "
          f"{r['tokens_per_second'] / 1e6:.1f}M tokens/s with {r['processes']} process(es); "
          f"found {r['copied_documents']} copied documents")


if __name__ == "__main__":
    main()
