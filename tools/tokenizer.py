"""Training a sentencepiece tokenizer and re-tokenizing documents into shards, with an optional
text transform (CaseOps) and the validation byte sidecar; what `golf data tokenizer`, `golf data
text` and the pystdlib builds run.

Shards follow golfcore.data: each document is the tokenizer's BOS and its tokens. With a
transform, every split's documents are transformed before tokenizing, and each validation
shard gets a sidecar of the original UTF-8 bytes each token stands for (golfcore.data,
"byte sidecar"), computed here by `charged_bytes`.
"""

from __future__ import annotations

import collections
import io
import multiprocessing
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sized

import numpy as np

from golfcore import caseops
from golfcore.data import sidecar_name, write_shard
from golfcore.errors import DataError

SHARD_TOKENS = 1 << 21
"""Tokens per shard written by golf's builders. Small enough that the default corpus spans a
few shards (so multi-shard loading and `max_train_shards` are exercised), large enough that a
shard switch is rare; the challenge's FineWeb shards hold 100M."""

TRAIN_MAX_CHARS = 64_000_000
"""Cap on the text a tokenizer is trained on (the whole pystdlib train split is ~12M)."""
TRAIN_CHUNK_CHARS = 4096
"""Training text is cut at line ends into pieces of about this size (sentencepiece's unit)."""
BATCH_CHARS = 1_000_000
"""Documents go to the encoding processes in batches of about this many characters."""


def transform_fn(transform: str) -> Callable[[str], str]:
    """The forward text transform a corpus names ("" = none)."""
    if not transform:
        return lambda text: text
    if transform in caseops.ALIASES:
        return caseops.encode
    raise DataError(f"unknown text transform {transform!r} (known: {caseops.NAME})")


def reserved_symbols(transform: str) -> list[str]:
    """Characters a tokenizer for the transform must keep as single pieces (its operators)."""
    transform_fn(transform)
    return list(caseops.OPERATORS) if transform else []


# ----------------------------------------------------------------------------- training


def _train_chunks(docs: Iterable[str]) -> Iterator[str]:
    """Tokenizer training sentences: documents cut at line ends into ~TRAIN_CHUNK_CHARS pieces.

    Cutting inside documents (not line by line) keeps indentation after a newline looking as it
    does when whole files are encoded; only the first chunk's start gets the dummy prefix.
    """
    budget = TRAIN_MAX_CHARS
    for doc in docs:
        cur: list[str] = []
        size = 0
        for line in doc.splitlines(keepends=True):
            if size + len(line) > TRAIN_CHUNK_CHARS and cur:
                yield "".join(cur)
                cur, size = [], 0
            cur.append(line)
            size += len(line)
        if cur:
            yield "".join(cur)
        budget -= len(doc)
        if budget <= 0:
            return


def train_tokenizer(docs: Iterable[str], vocab_size: int, dest: Path, transform: str = "", threads: int = 2) -> None:
    """Train a byte-fallback BPE that keeps text byte-exact (identity normalization, whitespace
    kept) on the documents, transformed first when a transform is named.

    Ids: 0 <unk>, 1 <s> (BOS, a control piece and so a boundary for byte accounting), no EOS or
    pad, then "\\n" and the transform's operators as pieces of their own (user-defined symbols:
    never merged, never split into bytes), the 256 byte pieces, and merges. add_dummy_prefix
    stays on: decode() drops the dummy space, which the byte accounting relies on.
    Deterministic for a given input (no sampling, no shuffling).
    """
    import sentencepiece as spm

    forward = transform_fn(transform)
    model = io.BytesIO()
    failed: list[DataError] = []

    def sentences() -> Iterator[str]:  # sentencepiece turns an error raised in its iterator into a RuntimeError
        try:
            yield from _train_chunks(forward(d) for d in docs)
        except DataError as e:
            failed.append(e)
            raise

    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            character_coverage=0.9995,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=True,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            user_defined_symbols=["\n", *reserved_symbols(transform)],
            unk_id=0,
            bos_id=1,
            eos_id=-1,
            pad_id=-1,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=4 * TRAIN_CHUNK_CHARS,
            num_threads=threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        if failed:  # reading the documents failed, not training
            raise failed[0] from None
        raise DataError(
            f"training a {vocab_size}-piece tokenizer failed ({str(e).strip().splitlines()[-1]}); "
            "pass an existing --tokenizer, or a smaller --vocab-size for little text, a larger one for text of many distinct characters"
        ) from None
    dest.write_bytes(model.getvalue())


# ----------------------------------------------------------------------------- bytes


def piece_bytes(sp) -> list[bytes]:
    """What each token id decodes to inside a document: a byte-fallback piece its one byte,
    control, unknown and unused pieces nothing, any other piece its text with "▁" as a space."""
    out = []
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            out.append(b"")
        elif sp.is_byte(i):
            out.append(bytes([int(sp.id_to_piece(i)[3:5], 16)]))
        else:
            out.append(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    return out


def document_pieces(table: list[bytes], ids: list[int]) -> list[bytes]:
    """The bytes each token of one encoded document decodes to; the first piece loses the dummy
    space sentencepiece put before the document."""
    pieces = [table[i] for i in ids]
    if pieces and pieces[0].startswith(b" "):
        pieces[0] = pieces[0][1:]
    return pieces


def charged_bytes(pieces: list[bytes], source: str, transform: str = "") -> list[int]:
    """Original UTF-8 bytes charged to each token of one document: every byte of the original
    text to exactly one token.

    `pieces` are the bytes the tokens decode to (document_pieces), `source` the text they
    encode (the transform's output). Each character of `source` has a charge (its UTF-8 length;
    under CaseOps 0 for an operator, golfcore.caseops.char_charges) split over the tokens holding
    its decoded bytes, one per byte, the excess to its last byte: so a character spread over
    byte-fallback tokens charges each of them 1, and a literal "▁" (which sentencepiece decodes
    as a space) charges its 3 bytes to the token holding that space.
    """
    decoded = b"".join(pieces)
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError("tokens decode to invalid UTF-8: the tokenizer lost bytes") from None
    if text != source and text != source.replace("\u2581", " "):
        raise DataError("tokens do not decode to the text they encode (a normalizing tokenizer, or <unk>); "
                        "byte sidecars need a byte-fallback tokenizer with identity normalization")
    charges = np.asarray(caseops.char_charges(source) if transform else [len(ch.encode("utf-8")) for ch in source])
    widths = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # code points, then their UTF-8 lengths
    widths = 1 + (widths >= 0x80) + (widths >= 0x800) + (widths >= 0x10000)
    # byte k of a character of width w and charge c is charged (k < c), its last byte also max(0, c - w)
    k = np.arange(int(widths.sum())) - np.repeat(np.cumsum(widths) - widths, widths)  # position in its character
    c, w = np.repeat(charges, widths), np.repeat(widths, widths)
    per_byte = (k < c) + np.where(k == w - 1, np.maximum(0, c - w), 0)
    owner = np.repeat(np.arange(len(pieces)), [len(p) for p in pieces])  # token holding each decoded byte
    return np.bincount(owner, weights=per_byte, minlength=len(pieces)).astype(np.int64).tolist()


# ----------------------------------------------------------------------------- encoding


class ShardWriter:
    """Lays documents end to end (each BOS + tokens) and cuts the stream into SHARD_TOKENS
    shards; with a sidecar, writes each shard's per-token byte counts beside it."""

    def __init__(self, directory: Path, prefix: str, split: str, bos_id: int, sidecar: bool = False):
        self.directory, self.prefix, self.split, self.bos_id = directory, prefix, split, bos_id
        self.buf = np.empty(SHARD_TOKENS, dtype=np.uint16)  # (SHARD_TOKENS,)
        self.bytes = np.empty(SHARD_TOKENS, dtype=np.uint16) if sidecar else None  # (SHARD_TOKENS,)
        self.fill = self.index = self.total = 0

    def add(self, ids: np.ndarray, charges: np.ndarray | None = None) -> None:
        doc = np.concatenate([np.array([self.bos_id], dtype=np.uint16), ids.astype(np.uint16)])  # (1 + n,)
        counts = None if self.bytes is None else np.concatenate([[0], charges]).astype(np.uint16)  # BOS: 0 bytes
        self.total += doc.size
        while doc.size:
            k = min(doc.size, SHARD_TOKENS - self.fill)
            self.buf[self.fill : self.fill + k] = doc[:k]
            if counts is not None:
                self.bytes[self.fill : self.fill + k] = counts[:k]
                counts = counts[k:]
            self.fill += k
            doc = doc[k:]
            if self.fill == SHARD_TOKENS:
                self._flush()

    def _flush(self) -> None:
        name = f"{self.prefix}_{self.split}_{self.index:06d}.bin"
        write_shard(self.directory / name, self.buf[: self.fill])
        if self.bytes is not None:
            write_shard(self.directory / sidecar_name(name), self.bytes[: self.fill])
        self.index += 1
        self.fill = 0

    def close(self) -> int:
        """Write the last partial shard; return the number of tokens written."""
        if self.fill:
            self._flush()
        return self.total


_worker: dict = {}


def _init_worker(tokenizer: str, transform: str, sidecar: bool, threads: int) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=tokenizer)
    _worker.update(sp=sp, transform=transform, forward=transform_fn(transform), sidecar=sidecar, threads=threads,
                   table=piece_bytes(sp) if sidecar else None)


def _encode_batch(docs: list[str]) -> tuple[list[tuple[np.ndarray, np.ndarray | None]], int]:
    """(ids, byte charges or None) of each document, in order, and the documents' UTF-8 bytes."""
    sp, forward = _worker["sp"], _worker["forward"]
    sources = [forward(d) for d in docs]
    out = []
    for source, ids in zip(sources, sp.encode(sources, num_threads=_worker["threads"])):
        charges = None
        if _worker["sidecar"]:
            pieces = document_pieces(_worker["table"], ids)
            charges = np.asarray(charged_bytes(pieces, source, _worker["transform"]), dtype=np.int64)
            if charges.size and charges.max() > 0xFFFF:
                raise DataError("a token stands for more than 65535 bytes")
        out.append((np.asarray(ids, dtype=np.uint16), charges))
    return out, sum(len(d.encode("utf-8")) for d in docs)


def _batches(docs: Iterable[str]) -> Iterator[list[str]]:
    """The documents in order, in lists of about BATCH_CHARS characters, read as they are needed."""
    batch: list[str] = []
    chars = 0
    for doc in docs:
        batch.append(doc)
        chars += len(doc)
        if chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _in_order(pool, batches: Iterator[list[str]], ahead: int) -> Iterator:
    """Pool.imap with at most `ahead` batches in flight (imap reads its whole input ahead)."""
    pending: collections.deque = collections.deque()
    for batch in batches:
        pending.append(pool.apply_async(_encode_batch, (batch,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def encode_split(tokenizer: Path, docs: Iterable[str], directory: Path, prefix: str, split: str, transform: str = "",
                 sidecar: bool = False, processes: int = 1, progress: Callable[[int, int | None], None] | None = None,
                 total: int | None = None) -> dict[str, int]:
    """Encode documents in order (transformed first) and write shards, with byte sidecars when
    asked; `processes` > 1 encodes batches in that many worker processes. The documents are read
    as the encoders need them: an iterator is never held whole, only 2 batches per process at a
    time. `progress(done, total)` counts documents; total is `total`, else len(docs) if it has
    one, else None. Returns {"documents", "tokens", "bytes"} (bytes: the documents' original
    UTF-8 bytes)."""
    import sentencepiece as spm

    if total is None and isinstance(docs, Sized):
        total = len(docs)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    writer = ShardWriter(directory, prefix, split, sp.bos_id(), sidecar)
    args = (str(tokenizer), transform, sidecar, 1 if processes > 1 else 2)  # threads per process
    done = nbytes = 0
    if processes > 1:
        context = multiprocessing.get_context("spawn" if os.name == "nt" else "fork")
        pool = context.Pool(processes, initializer=_init_worker, initargs=args)
        results = _in_order(pool, _batches(docs), 2 * processes)
    else:
        pool = None
        _init_worker(*args)
        results = map(_encode_batch, _batches(docs))
    try:
        for encoded, batch_bytes in results:
            for ids, charges in encoded:
                writer.add(ids, charges)
            done += len(encoded)
            nbytes += batch_bytes
            if progress:
                progress(done, total)
    finally:
        if pool is not None:
            pool.terminate()
    return {"documents": done, "tokens": writer.close(), "bytes": nbytes}
