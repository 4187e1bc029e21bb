"""Token data as training and evaluation read it: the challenge's shard format, the training
loader, the validation tokens, and resolving the corpus a recipe's [data] names.

Every corpus is a folder of shards in the challenge's format (so golf's loader and eval read
the real FineWeb data and locally built corpora through one path), a sentencepiece
`tokenizer.model`, and a `meta.json` whose fingerprint goes into every run result:

- `pystdlib`, `pystdlib_caseops`: the embedded default, built from the running interpreter's
  standard library (`golf run` builds it on first use; seconds, no network); the second
  through the CaseOps transform, with its own tokenizer.
- `fineweb10B_spN`, `fineweb10B_sp8192_caseops`: the challenge's FineWeb exports, fetched from
  the Hugging Face hub only by `golf data fineweb`, never implicitly.
- `text:NAME`: the user's own text, built by `golf data text` or `golf data tokenizer`.

A corpus built through a text transform (meta.json's `transform`) has a **byte sidecar** beside
each validation shard (`*_val_bytes_NNNNNN.bin`, the shard format, one uint16 per token): the
original UTF-8 bytes each token stands for, which val_bpb then charges instead of the
tokenizer's byte table. The tokenizer's special ids (BOS, EOS, unk, pad, control) are read from
the tokenizer (SpecialTokens), never assumed.

A recipe may instead name a folder of shards and a tokenizer file (`data.shards`,
`data.tokenizer`; the exported train_gpt.py sets them from DATA_PATH and TOKENIZER_PATH): no
meta.json, the fingerprint is built from what is there, and `corpus` only names the data.

Building and downloading live in golf_tools.corpora and golf_tools.fineweb, which no run
imports. `meta.json` is written last (and builds are renamed into place whole), so a folder
without it is an interrupted build or download and is treated as missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import sentencepiece as spm
import torch

from .errors import ConfigError, DataError
from .files import sha256_file, write_atomic

if TYPE_CHECKING:
    from .config import DataSection

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4

PYSTDLIB_BUILDER = 2
"""Version of the pystdlib build recipe (golf_tools.corpora), bumped whenever it changes: a
build of another version is stale, so resolving refuses it and `golf run` rebuilds it."""
EMBEDDED_CORPORA = {"pystdlib": "", "pystdlib_caseops": "caseops_v1"}  # name -> its text transform
FINEWEB_CORPUS = re.compile(r"fineweb10B_(sp\d+)(_caseops)?")

_SHARD_NAME = re.compile(r"^.+_(train|val)_(\d{6})\.bin$")


@dataclass(frozen=True)
class SpecialTokens:
    """The ids a tokenizer reserves, read from it (-1: it has none). Documents in shards start
    with bos_id; plugins that treat a document start specially read it from the run's config
    (RunConfig.tokens), which golfcore.run fills from the corpus's tokenizer."""

    bos_id: int = 1
    eos_id: int = -1
    unk_id: int = 0
    pad_id: int = -1
    control_ids: tuple[int, ...] = (1,)

    @classmethod
    def of(cls, sp: spm.SentencePieceProcessor) -> SpecialTokens:
        control = tuple(i for i in range(sp.get_piece_size()) if sp.is_control(i))
        return cls(sp.bos_id(), sp.eos_id(), sp.unk_id(), sp.pad_id(), control)


def sidecar_name(shard_name: str) -> str:
    """The byte sidecar's file name of a validation shard: x_val_000000.bin -> x_val_bytes_000000.bin."""
    head, _, index = shard_name.rpartition("_")
    return f"{head}_bytes_{index}"


# ----------------------------------------------------------------------------- shard format


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """Write tokens (n,) in the challenge's format, atomically: readers never see half a shard."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"shard tokens must be a 1-D integer array, got {tokens.dtype} {tokens.shape}")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) > 0xFFFF):
        raise ValueError("shard tokens must fit in uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, tokens.size)
    write_atomic(path, header.tobytes() + tokens.astype("<u2", copy=False).tobytes())


def shard_num_tokens(path: Path) -> int:
    """Validate a shard's header and size without reading its tokens; return num_tokens."""
    try:
        header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"cannot read shard {path}: {e.strerror or e}") from None
    if header.size < HEADER_INTS:
        raise DataError(f"shard {path} is truncated: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    if header[0] != SHARD_MAGIC:
        raise DataError(f"shard {path} has bad magic {header[0]} (expected {SHARD_MAGIC}): not a challenge shard")
    if header[1] != SHARD_VERSION:
        raise DataError(f"shard {path} has unsupported version {header[1]} (expected {SHARD_VERSION})")
    num_tokens = int(header[2])
    expected = HEADER_BYTES + 2 * num_tokens
    if num_tokens < 0 or size < expected:
        raise DataError(f"shard {path} is truncated: {size} bytes, header says {num_tokens} tokens ({expected} bytes)")
    if size > expected:
        raise DataError(f"shard {path} has {size - expected} extra bytes after its {num_tokens} tokens")
    return num_tokens


def read_shard(path: Path, vocab_size: int = 0) -> np.ndarray:
    """Read a shard's tokens (num_tokens,) uint16; DataError naming the file if it is malformed or,
    with vocab_size, holds a token id outside the vocabulary (the embedding would fail on it)."""
    path = Path(path)
    num_tokens = shard_num_tokens(path)
    try:
        tokens = np.fromfile(path, dtype="<u2", count=num_tokens, offset=HEADER_BYTES)
    except OSError as e:
        raise DataError(f"cannot read shard {path}: {e.strerror or e}") from None
    if tokens.size != num_tokens:
        raise DataError(f"shard {path} is truncated: read {tokens.size} of {num_tokens} tokens")
    if vocab_size and tokens.size and int(tokens.max()) >= vocab_size:
        raise DataError(f"shard {path} holds token id {int(tokens.max())}, outside the tokenizer's vocabulary of "
                        f"{vocab_size}: it was made with another tokenizer")
    return tokens.astype(np.uint16, copy=False)


def shard_files(directory: Path, split: Literal["train", "val"]) -> list[Path]:
    """Shards of one split, sorted by name; .bin files not named *_<split>_NNNNNN.bin are ignored."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.bin") if (m := _SHARD_NAME.match(p.name)) and m.group(1) == split)


# ----------------------------------------------------------------------------- loading


class TokenStream:
    """The shards' tokens in order, wrapping around forever; holds one shard in memory."""

    def __init__(self, files: list[Path], vocab_size: int = 0):
        if not files:
            raise DataError("no shard files to stream")
        self.files = [Path(f) for f in files]
        self.vocab_size = vocab_size
        for path in self.files:  # headers and sizes, before training: a truncated shard is named now, not hours in
            shard_num_tokens(path)
        self.file_idx, self.pos = -1, 0
        self.tokens = np.zeros(0, dtype=np.uint16)  # (n,) the current shard
        self.reset()

    def reset(self) -> None:
        """Rewind to the first token of the first shard."""
        self.restore((0, 0))

    def state(self) -> tuple[int, int]:
        """(shard index, position in it): enough to replay the stream exactly."""
        return self.file_idx, self.pos

    def restore(self, state: tuple[int, int]) -> None:
        file_idx, pos = state
        if file_idx != self.file_idx:
            self.tokens = read_shard(self.files[file_idx], self.vocab_size)
        self.file_idx, self.pos = file_idx, pos

    def _advance_file(self) -> None:
        self.file_idx = (self.file_idx + 1) % len(self.files)
        self.tokens = read_shard(self.files[self.file_idx], self.vocab_size)
        self.pos = 0

    def take(self, n: int) -> np.ndarray:
        """The next n tokens (n,) uint16, crossing shard ends as needed."""
        chunks = []
        remaining = n
        empty_in_a_row = 0
        while remaining > 0:
            avail = self.tokens.size - self.pos
            if avail <= 0:
                empty_in_a_row = empty_in_a_row + 1 if self.tokens.size == 0 else 0
                if empty_in_a_row > len(self.files):
                    raise DataError(f"all {len(self.files)} shards are empty (first: {self.files[0]})")
                self._advance_file()
                continue
            k = min(remaining, avail)
            chunks.append(self.tokens[self.pos : self.pos + k])
            self.pos += k
            remaining -= k
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


class DistributedTokenLoader:
    """The challenge's loader: every rank reads the same stream and keeps its own slice.

    Each micro-batch takes one contiguous chunk of world_size * (local_tokens + 1) tokens; rank r
    uses span r. The +1 token gives the last input its target; consecutive spans do not overlap.
    """

    def __init__(self, files: list[Path], rank: int, world_size: int, device: torch.device, vocab_size: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.stream = TokenStream(files, vocab_size)

    def next_batch(self, global_tokens: int, seq_len: int, micro_batches_per_rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One micro-batch: x, y (local_tokens // seq_len, seq_len) int64 on the device; y is x shifted by one."""
        local_tokens = global_tokens // (self.world_size * micro_batches_per_rank)
        if local_tokens <= 0 or local_tokens % seq_len:
            raise ConfigError(
                f"batch of {global_tokens} tokens over {self.world_size} ranks x {micro_batches_per_rank} micro-batches "
                f"gives {local_tokens} tokens per micro-batch, not a positive multiple of seq_len {seq_len}"
            )
        span = local_tokens + 1
        chunk = self.stream.take(span * self.world_size)  # (world_size * span,)
        local = torch.from_numpy(chunk[self.rank * span : (self.rank + 1) * span].astype(np.int64))  # (span,)
        if self.device.type == "cuda":  # pinned: the copy below runs while the GPU still works on the last batch
            local = local.pin_memory()
        x = local[:-1].view(-1, seq_len)
        y = local[1:].view(-1, seq_len)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def state(self) -> tuple[int, int]:
        return self.stream.state()

    def restore(self, state: tuple[int, int]) -> None:
        self.stream.restore(state)

    def reset(self) -> None:
        """Rewind to the start, e.g. after compile warm-up steps."""
        self.stream.reset()


def _read_prefix(files: list[Path], max_targets: int, vocab_size: int = 0) -> np.ndarray:
    """The files' tokens (n,) in order; with max_targets > 0, the first max_targets + 1; with
    vocab_size, every id checked against it (read_shard)."""
    parts = []
    have = 0
    for path in files:
        parts.append(read_shard(path, vocab_size))
        have += parts[-1].size
        if max_targets and have > max_targets:
            break
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    return tokens[: max_targets + 1] if max_targets else tokens


def load_val_tokens(corpus: Corpus, max_targets: int = 0) -> torch.Tensor:
    """All validation tokens (n,) int64 in shard order; with max_targets > 0, the first max_targets + 1."""
    tokens = _read_prefix(corpus.val_files, max_targets, corpus.vocab_size)
    if tokens.size < 2:
        raise DataError(f"corpus {corpus.name}: validation split has {tokens.size} tokens, need at least 2")
    return torch.from_numpy(tokens.astype(np.int64))


def load_val_bytes(corpus: Corpus, max_targets: int = 0) -> torch.Tensor | None:
    """The byte sidecar (n,) int64 parallel to load_val_tokens: entry j is the original UTF-8
    bytes token j stands for (0 for BOS and operators); None when the corpus has none."""
    if not corpus.val_bytes_files:
        return None
    for shard, side in zip(corpus.val_files, corpus.val_bytes_files):
        if shard_num_tokens(side) != shard_num_tokens(shard):
            raise DataError(f"byte sidecar {side} has {shard_num_tokens(side)} entries for the "
                            f"{shard_num_tokens(shard)} tokens of {shard.name}")
    return torch.from_numpy(_read_prefix(corpus.val_bytes_files, max_targets).astype(np.int64))


# ----------------------------------------------------------------------------- corpora


@dataclass
class Corpus:
    """A built corpus: shard lists (max_train_shards applied), tokenizer, text transform ("" =
    none), byte sidecars (one per val shard, or none), and fingerprint."""

    name: str
    directory: Path
    train_files: list[Path]
    val_files: list[Path]
    tokenizer_path: Path
    vocab_size: int
    fingerprint: dict
    transform: str = ""
    val_bytes_files: list[Path] = field(default_factory=list)

    def record(self) -> dict:
        """What a score was measured on: corpus, tokenizer, transform and where its bytes came from."""
        return {"corpus": self.name, "tokenizer": str(self.tokenizer_path), "vocab_size": self.vocab_size,
                "tokenizer_sha256": self.fingerprint.get("tokenizer_sha256"), "transform": self.transform or "none",
                "bytes": "sidecar" if self.val_bytes_files else "tokenizer byte table"}


def open_corpus(name: str, directory: Path, max_train_shards: int, remedy: str) -> Corpus:
    """Open a built corpus folder from its meta.json; remedy says how to (re)create it."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        listed = {split: [directory / n for n in meta[f"{split}_files"]] for split in ("train", "val")}
        sidecars = [directory / n for n in meta.get("val_bytes_files", [])]
        vocab_size, fingerprint, transform = int(meta["vocab_size"]), dict(meta["fingerprint"]), str(meta.get("transform", ""))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"corpus {name}: cannot read {directory / 'meta.json'} ({e}); {remedy}") from None
    tokenizer = directory / "tokenizer.model"
    for path in [*listed["train"], *listed["val"], *sidecars, tokenizer]:
        if not path.is_file():
            raise DataError(f"corpus {name} is incomplete: {path} is missing; {remedy}")
    if transform and len(sidecars) != len(listed["val"]):
        raise DataError(f"corpus {name} was built through the {transform} transform but has {len(sidecars)} byte sidecars "
                        f"for {len(listed['val'])} val shards; {remedy}")
    train = listed["train"][:max_train_shards] if max_train_shards else listed["train"]
    if not train or not listed["val"]:
        raise DataError(f"corpus {name} at {directory} has no {'train' if not train else 'val'} shards; {remedy}")
    fingerprint["train_shards_used"] = len(train)
    return Corpus(name, directory, train, listed["val"], tokenizer, vocab_size, fingerprint, transform, sidecars)


def open_shard_folder(name: str, directory: Path, tokenizer: Path, max_train_shards: int,
                      directory_key: str = "data.shards", tokenizer_key: str = "data.tokenizer") -> Corpus:
    """A folder of challenge shards and a tokenizer file, without meta.json: the fingerprint is
    the shards' names and the tokenizer's sha256; byte sidecars beside the val shards are used
    when every val shard has one. Errors name the path and the setting that gave it."""
    directory, tokenizer = Path(directory), Path(tokenizer)
    if not directory.is_dir():
        raise DataError(f"{directory_key}={directory}: not a folder")
    train, val = shard_files(directory, "train"), shard_files(directory, "val")
    if not train or not val:
        split = "train" if not train else "val"
        raise DataError(f"{directory_key}={directory}: no {split} shards (*_{split}_NNNNNN.bin)")
    if not tokenizer.is_file():
        raise DataError(f"{tokenizer_key}={tokenizer}: not a file")
    try:
        vocab_size = spm.SentencePieceProcessor(model_file=str(tokenizer)).vocab_size()
    except (OSError, RuntimeError):
        raise DataError(f"{tokenizer_key}={tokenizer}: not a sentencepiece model") from None
    sidecars = [directory / sidecar_name(p.name) for p in val]
    sidecars = sidecars if all(p.is_file() for p in sidecars) else []
    used = train[:max_train_shards] if max_train_shards else train
    fingerprint = {"corpus": name, "shards": str(directory.resolve()), "train_shards": [p.name for p in train],
                   "val_shards": [p.name for p in val], "tokenizer_sha256": sha256_file(tokenizer),
                   "train_shards_used": len(used), "byte_sidecars": [p.name for p in sidecars]}
    return Corpus(name, directory, used, val, tokenizer, vocab_size, fingerprint, val_bytes_files=sidecars)


def corpus_command(corpus: str, root: Path) -> str:
    """The `golf data` command that creates the corpus a recipe names under root."""
    root_flag = "" if Path(root) == Path("data") else f" --root {root}"
    if corpus in EMBEDDED_CORPORA:
        return f"golf data pystdlib{' --caseops' if EMBEDDED_CORPORA[corpus] else ''} --force{root_flag}"
    if m := FINEWEB_CORPUS.fullmatch(corpus):
        return f"golf data fineweb --variant {m.group(1)}{m.group(2) or ''} --train-shards 1{root_flag}"
    return f"golf data text FILES... --name {corpus.removeprefix('text:')}{root_flag}"


def corpus_directory(corpus: str, root: Path) -> Path:
    """Where the corpus a recipe names lives under root; DataError for a name golf does not know."""
    if corpus in EMBEDDED_CORPORA or FINEWEB_CORPUS.fullmatch(corpus):
        return Path(root) / corpus
    if corpus.startswith("text:") and corpus != "text:":
        return Path(root) / "text" / corpus.removeprefix("text:")
    raise DataError(f"unknown corpus {corpus!r} (pystdlib, pystdlib_caseops, fineweb10B_spN, "
                    f"fineweb10B_sp8192_caseops or text:NAME)")


def data_root(data: DataSection) -> Path:
    """The folder holding the corpora; DataError when data.root names a file."""
    root = Path(data.root)
    if root.exists() and not root.is_dir():
        raise DataError(f"data.root={root}: not a folder (it holds the corpora, e.g. data.root = \"data\")")
    return root


def resolve_corpus(data: DataSection) -> Corpus:
    """The already built or downloaded corpus a recipe's [data] names; never builds or downloads.

    A missing or stale corpus is a DataError naming the `golf data` command that creates it
    (the CLI builds a missing embedded corpus before a run: golf_tools.corpora.ensure_corpus).
    """
    if data.shards:
        return open_shard_folder(data.corpus, Path(data.shards), Path(data.tokenizer), data.max_train_shards)
    root = data_root(data)
    directory = corpus_directory(data.corpus, root)
    fetched = bool(FINEWEB_CORPUS.fullmatch(data.corpus))
    verb = "fetch" if fetched else "build"
    command = corpus_command(data.corpus, root)
    if not (directory / "meta.json").is_file():
        raise DataError(f"corpus {data.corpus} is not {'downloaded' if fetched else 'built'} at {directory}; {verb} it with: {command}")
    corpus = open_corpus(data.corpus, directory, data.max_train_shards, f"{verb} it again with: {command}")
    if data.corpus in EMBEDDED_CORPORA and corpus.fingerprint.get("builder") != PYSTDLIB_BUILDER:
        raise DataError(
            f"corpus {data.corpus} at {directory} is stale (builder {corpus.fingerprint.get('builder')}, "
            f"this golf builds {PYSTDLIB_BUILDER}); rebuild it with: {command}"
        )
    return corpus
