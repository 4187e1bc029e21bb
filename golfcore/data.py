"""Token data: the challenge's shard format, the training loader, and the three corpora.

Every corpus is a folder of shards in the challenge's format (so golf's loader and eval read
the real FineWeb data and locally built corpora through one path), a sentencepiece
`tokenizer.model`, and a `meta.json` whose fingerprint goes into every run result:

- `pystdlib`: the embedded default, built on first use from the running interpreter's
  standard library (seconds; no network).
- `fineweb10B_sp1024`: the challenge's data, fetched from the Hugging Face hub only by
  `golf data fineweb`, never implicitly.
- `text:NAME`: the user's own .txt/.jsonl files, built by `golf data text`.

`meta.json` is written last (and builds are renamed into place whole), so a folder without it
is an interrupted build or download and is treated as missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import shutil
import sysconfig
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal

import numpy as np
import torch

from .errors import ConfigError, DataError

if TYPE_CHECKING:
    from .config import DataSection

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
BOS_ID = 1

SHARD_TOKENS = 1 << 21
"""Tokens per shard written by golf's builders. Small enough that the default corpus spans a
few shards (so multi-shard loading and `max_train_shards` are exercised), large enough that a
shard switch is rare; the challenge's FineWeb shards hold 100M tokens."""

NUM_THREADS = 2
"""sentencepiece threads for training and encoding: builds must stay quick on a 2-core CI box."""

PYSTDLIB_BUILDER = 1
"""Bumped whenever the pystdlib recipe changes, so stale builds are rebuilt, not reused."""
PYSTDLIB_VAL_PERCENT = 5
PYSTDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
"""Directory names skipped at any depth of the stdlib: installed third-party packages, and the
test suites (Lib/test, ctypes/test, unittest/test, tkinter/test, distutils/tests,
lib2to3/tests, idlelib/idle_test), which are repetitive, hold deliberately malformed files and
would otherwise be 60% of the corpus."""
SEED = 1337
TOKENIZER_MAX_CHARS = 64_000_000
"""Cap on the text a tokenizer is trained on (the whole pystdlib train split is ~12M)."""
TOKENIZER_CHUNK_CHARS = 4096
"""Training text is cut at line ends into pieces of about this size (sentencepiece's unit)."""
ENCODE_BATCH_CHARS = 8_000_000
"""Documents are encoded in batches of about this many characters to bound memory."""

FINEWEB_REPO_ID = "willdepueoai/parameter-golf"
FINEWEB_REMOTE_PREFIX = "matched_10B_docs2m_seed1337"
FINEWEB_CORPUS = "fineweb10B_sp1024"
_FINEWEB_FALLBACK = {
    "sp1024": {
        "files_train": 25,
        "files_val": 1,
        "tokenizer_files": ["tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_1024_bpe.vocab"],
    }
}
"""Shard counts of the published export, used only when its manifest lacks a dataset entry."""

_SHARD_NAME = re.compile(r"^.+_(train|val)_(\d{6})\.bin$")


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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.astype("<u2", copy=False).tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _shard_num_tokens(path: Path) -> int:
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


def read_shard(path: Path) -> np.ndarray:
    """Read a shard's tokens (num_tokens,) uint16; DataError naming the file if it is malformed."""
    path = Path(path)
    num_tokens = _shard_num_tokens(path)
    try:
        tokens = np.fromfile(path, dtype="<u2", count=num_tokens, offset=HEADER_BYTES)
    except OSError as e:
        raise DataError(f"cannot read shard {path}: {e.strerror or e}") from None
    if tokens.size != num_tokens:
        raise DataError(f"shard {path} is truncated: read {tokens.size} of {num_tokens} tokens")
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

    def __init__(self, files: list[Path]):
        if not files:
            raise DataError("no shard files to stream")
        self.files = [Path(f) for f in files]
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
            self.tokens = read_shard(self.files[file_idx])
        self.file_idx, self.pos = file_idx, pos

    def _advance_file(self) -> None:
        self.file_idx = (self.file_idx + 1) % len(self.files)
        self.tokens = read_shard(self.files[self.file_idx])
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

    def __init__(self, files: list[Path], rank: int, world_size: int, device: torch.device):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.stream = TokenStream(files)

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


def load_val_tokens(corpus: Corpus, max_targets: int = 0) -> torch.Tensor:
    """All validation tokens (n,) int64 in shard order; with max_targets > 0, the first max_targets + 1."""
    parts = []
    have = 0
    for path in corpus.val_files:
        parts.append(read_shard(path))
        have += parts[-1].size
        if max_targets and have > max_targets:
            break
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint16)
    if max_targets:
        tokens = tokens[: max_targets + 1]
    if tokens.size < 2:
        raise DataError(f"corpus {corpus.name}: validation split has {tokens.size} tokens, need at least 2")
    return torch.from_numpy(tokens.astype(np.int64))


# ----------------------------------------------------------------------------- corpora


@dataclass
class Corpus:
    """A built corpus: shard lists (max_train_shards applied), tokenizer, and fingerprint."""

    name: str
    directory: Path
    train_files: list[Path]
    val_files: list[Path]
    tokenizer_path: Path
    vocab_size: int
    fingerprint: dict


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _write_meta(directory: Path, name: str, fingerprint: dict, extra: dict | None = None) -> None:
    """meta.json: written last, it marks the folder as a complete corpus."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    splits = {}
    for split in ("train", "val"):
        files = shard_files(directory, split)
        splits[f"{split}_files"] = [p.name for p in files]
        splits[f"{split}_tokens"] = sum(_shard_num_tokens(p) for p in files)
    meta = {"name": name, "vocab_size": sp.vocab_size(), "fingerprint": fingerprint, **splits, **(extra or {})}
    _write_json(directory / "meta.json", meta)


def _load_corpus(name: str, directory: Path, max_train_shards: int, rebuild_hint: str) -> Corpus:
    """Open a built corpus folder from its meta.json; rebuild_hint says how to (re)create it."""
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        listed = {split: [directory / n for n in meta[f"{split}_files"]] for split in ("train", "val")}
        vocab_size, fingerprint = int(meta["vocab_size"]), dict(meta["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"corpus {name}: cannot read {directory / 'meta.json'} ({e}); {rebuild_hint}") from None
    tokenizer = directory / "tokenizer.model"
    for path in [*listed["train"], *listed["val"], tokenizer]:
        if not path.is_file():
            raise DataError(f"corpus {name} is incomplete: {path} is missing; {rebuild_hint}")
    train = listed["train"][:max_train_shards] if max_train_shards else listed["train"]
    if not train or not listed["val"]:
        raise DataError(f"corpus {name} at {directory} has no {'train' if not train else 'val'} shards; {rebuild_hint}")
    fingerprint["train_shards_used"] = len(train)
    return Corpus(name, directory, train, listed["val"], tokenizer, vocab_size, fingerprint)


def _root_flag(root: Path) -> str:
    return "" if Path(root) == Path("data") else f" --root {root}"


def resolve_corpus(data: DataSection, build_missing: bool = True) -> Corpus:
    """The corpus a recipe's [data] names, building pystdlib if needed; never downloads."""
    root = Path(data.root)
    if data.corpus == "pystdlib":
        directory = root / "pystdlib"
        hint = f"rebuild it with: golf data pystdlib --force{_root_flag(root)}"
        if build_missing:
            build_pystdlib(root)
        elif not _pystdlib_current(directory):
            raise DataError(f"corpus pystdlib is missing or stale at {directory}; {hint}")
        return _load_corpus("pystdlib", directory, data.max_train_shards, hint)
    if data.corpus == FINEWEB_CORPUS:
        directory = root / FINEWEB_CORPUS
        command = f"golf data fineweb --variant sp1024 --train-shards 1{_root_flag(root)}"
        if not (directory / "meta.json").is_file():
            raise DataError(f"corpus {FINEWEB_CORPUS} is not downloaded at {directory}; fetch it with: {command}")
        return _load_corpus(FINEWEB_CORPUS, directory, data.max_train_shards, f"fetch it again with: {command}")
    if data.corpus.startswith("text:"):
        name = data.corpus.removeprefix("text:")
        directory = root / "text" / name
        command = f"golf data text FILES... --name {name}{_root_flag(root)}"
        if not name or not (directory / "meta.json").is_file():
            raise DataError(f"corpus {data.corpus} is not built at {directory}; build it with: {command}")
        return _load_corpus(data.corpus, directory, data.max_train_shards, f"rebuild it with: {command}")
    raise DataError(f"unknown corpus {data.corpus!r} (pystdlib, {FINEWEB_CORPUS} or text:NAME)")


def _publish(tmp: Path, final: Path) -> None:
    """Move a finished build folder into place, replacing an old one.

    Concurrent builders (e.g. several ranks or runs) produce identical folders, so losing the
    race to another builder is fine: ours is discarded.
    """
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
    try:
        if final.exists():
            os.rename(final, old)
        os.rename(tmp, final)
    except OSError:
        if not (final / "meta.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _build_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.build-{uuid.uuid4().hex}")
    tmp.mkdir()
    return tmp


def _shuffle_key(seed: int, identity: str | bytes) -> bytes:
    """A deterministic, platform-independent sort key: documents ordered by it are shuffled."""
    data = identity.encode("utf-8") if isinstance(identity, str) else identity
    return hashlib.sha256(f"{seed}\0".encode() + data).digest()


def _train_chunks(docs: Iterable[str]) -> Iterator[str]:
    """Tokenizer training sentences: documents cut at line ends into ~TOKENIZER_CHUNK_CHARS pieces.

    Cutting inside documents (not line by line) keeps indentation after a newline looking as it
    does when whole files are encoded; only the first chunk's start gets the dummy prefix.
    """
    budget = TOKENIZER_MAX_CHARS
    for doc in docs:
        cur: list[str] = []
        size = 0
        for line in doc.splitlines(keepends=True):
            if size + len(line) > TOKENIZER_CHUNK_CHARS and cur:
                yield "".join(cur)
                cur, size = [], 0
            cur.append(line)
            size += len(line)
        if cur:
            yield "".join(cur)
        budget -= len(doc)
        if budget <= 0:
            return


def _train_tokenizer(docs: Iterable[str], vocab_size: int, dest: Path) -> None:
    """Train a byte-fallback BPE that keeps text byte-exact (identity normalization, whitespace kept).

    Ids: 0 <unk>, 1 <s> (BOS, a control piece and so a boundary for byte accounting), no EOS or
    pad, then "\\n" as its own piece, the 256 byte pieces, and merges. add_dummy_prefix stays on:
    decode() drops the dummy space, which the eval's byte accounting relies on. Deterministic
    for a given input (no sampling: input_sentence_size=0, no shuffling).
    """
    import sentencepiece as spm

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_train_chunks(docs),
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
            user_defined_symbols=["\n"],
            unk_id=0,
            bos_id=BOS_ID,
            eos_id=-1,
            pad_id=-1,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=4 * TOKENIZER_CHUNK_CHARS,
            num_threads=NUM_THREADS,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise DataError(
            f"training a {vocab_size}-piece tokenizer failed ({str(e).strip().splitlines()[-1]}); "
            "for little text, pass an existing --tokenizer or a smaller --vocab-size"
        ) from None
    dest.write_bytes(model.getvalue())


class _ShardWriter:
    """Lays documents end to end (each BOS + tokens) and cuts the stream into SHARD_TOKENS shards."""

    def __init__(self, directory: Path, prefix: str, split: str):
        self.directory, self.prefix, self.split = directory, prefix, split
        self.buf = np.empty(SHARD_TOKENS, dtype=np.uint16)  # (SHARD_TOKENS,)
        self.fill = 0
        self.index = 0
        self.total = 0

    def add(self, ids: list[int]) -> None:
        doc = np.empty(len(ids) + 1, dtype=np.uint16)  # (1 + n,)
        doc[0] = BOS_ID
        doc[1:] = ids
        self.total += doc.size
        while doc.size:
            k = min(doc.size, SHARD_TOKENS - self.fill)
            self.buf[self.fill : self.fill + k] = doc[:k]
            self.fill += k
            doc = doc[k:]
            if self.fill == SHARD_TOKENS:
                self._flush()

    def _flush(self) -> None:
        write_shard(self.directory / f"{self.prefix}_{self.split}_{self.index:06d}.bin", self.buf[: self.fill])
        self.index += 1
        self.fill = 0

    def close(self) -> int:
        """Write the last partial shard; return the number of tokens written."""
        if self.fill:
            self._flush()
        return self.total


def _encode_split(tokenizer: Path, docs: list[str], directory: Path, prefix: str, split: str) -> int:
    """Encode documents in order with sentencepiece's threaded batch encoder and write shards."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    writer = _ShardWriter(directory, prefix, split)
    start = 0
    while start < len(docs):
        end, chars = start, 0
        while end < len(docs) and (end == start or chars < ENCODE_BATCH_CHARS):
            chars += len(docs[end])
            end += 1
        for ids in sp.encode(docs[start:end], num_threads=NUM_THREADS):
            writer.add(ids)
        start = end
    return writer.close()


def _pystdlib_sources() -> list[tuple[str, str]]:
    """(relative path, text) of every UTF-8 .py file of this interpreter's stdlib, sorted by path."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for dirpath, dirnames, filenames in os.walk(stdlib):
        dirnames[:] = [d for d in dirnames if d not in PYSTDLIB_EXCLUDED_DIRS]
        for fname in filenames:
            if not fname.endswith(".py"):
                continue
            path = Path(dirpath) / fname
            try:
                text = path.read_bytes().decode("utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            out.append((path.relative_to(stdlib).as_posix(), text))
    out.sort()
    return out


def _pystdlib_is_val(relpath: str) -> bool:
    return int.from_bytes(hashlib.sha256(relpath.encode("utf-8")).digest()[:8], "big") % 100 < PYSTDLIB_VAL_PERCENT


def _pystdlib_current(directory: Path) -> bool:
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        return meta["fingerprint"]["builder"] == PYSTDLIB_BUILDER
    except (OSError, ValueError, KeyError, TypeError):
        return False


def build_pystdlib(root: Path, force: bool = False) -> Corpus:
    """Build the embedded corpus under <root>/pystdlib from this interpreter's stdlib sources.

    Files are split into train/val by a hash of their relative path (~5% val), so the split is
    stable across machines with the same Python; each split's files are shuffled by a seeded
    hash before being laid end to end, BOS first. The tokenizer sees the train split only.
    Takes a few seconds; an existing build is kept unless force is set.
    """
    root = Path(root)
    final = root / "pystdlib"
    hint = f"rebuild it with: golf data pystdlib --force{_root_flag(root)}"
    if not force and _pystdlib_current(final):
        return _load_corpus("pystdlib", final, 0, hint)
    sources = _pystdlib_sources()
    if not sources:
        raise DataError(f"no UTF-8 .py files found under {sysconfig.get_paths()['stdlib']}")
    files_hash = hashlib.sha256()
    for rel, text in sources:
        files_hash.update(f"{rel}\0{hashlib.sha256(text.encode('utf-8')).hexdigest()}\n".encode())
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for rel, text in sorted(sources, key=lambda s: _shuffle_key(SEED, s[0])):
        splits["val" if _pystdlib_is_val(rel) else "train"].append((rel, text))

    tmp = _build_dir(final)
    try:
        tokenizer = tmp / "tokenizer.model"
        _train_tokenizer((text for _, text in splits["train"]), 1024, tokenizer)
        for split, docs in splits.items():
            _encode_split(tokenizer, [text for _, text in docs], tmp, "pystdlib", split)
        fingerprint = {
            "corpus": "pystdlib",
            "python": platform.python_version(),
            "files_sha256": files_hash.hexdigest(),
            "num_files": len(sources),
            "tokenizer_sha256": _sha256_file(tokenizer),
            "builder": PYSTDLIB_BUILDER,
        }
        extra = {
            split: {"files": len(docs), "bytes": sum(len(t.encode("utf-8")) for _, t in docs), "paths": sorted(r for r, _ in docs)}
            for split, docs in splits.items()
        }
        _write_meta(tmp, "pystdlib", fingerprint, {"documents": extra})
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load_corpus("pystdlib", final, 0, hint)


def _read_documents(files: list[Path]) -> list[str]:
    """Documents of .txt files (one each) and .jsonl files (one per line, "text" field), in order."""
    docs = []
    for path in map(Path, files):
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror or e}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path} is not UTF-8 (byte {e.start})") from None
        if path.suffix == ".txt":
            docs.append(text)
        elif path.suffix == ".jsonl":
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise DataError(f'{path}:{lineno}: expected an object with a string "text" field')
                docs.append(record["text"])
        else:
            raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .txt or .jsonl)")
    return [d for d in docs if d]


def build_text_corpus(
    files: list[Path],
    name: str,
    root: Path,
    tokenizer: Path | None = None,
    vocab_size: int = 1024,
    val_fraction: float = 0.1,
    seed: int = SEED,
) -> Corpus:
    """Build <root>/text/<name> from local files (recipe corpus "text:<name>").

    Documents are shuffled by a seeded hash of their content (so the result does not depend on
    the order files are given in); the first round(n * val_fraction) of them, at least one, are
    validation. Uses the given sentencepiece model (its BOS must be id 1) or trains a
    byte-fallback BPE on the train documents with pystdlib's settings. Replaces an existing build.
    """
    root = Path(root)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise DataError(f"corpus name {name!r}: use letters, digits, '_', '-' and '.'")
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction {val_fraction} must be between 0 and 1")
    if not files:
        raise DataError("no input files given")
    docs = _read_documents(files)
    if len(docs) < 2:
        raise DataError(f"need at least 2 non-empty documents to split into train and val, found {len(docs)}")
    order = sorted(range(len(docs)), key=lambda i: (_shuffle_key(seed, docs[i]), i))
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    splits = {"val": [docs[i] for i in order[:n_val]], "train": [docs[i] for i in order[n_val:]]}

    final = root / "text" / name
    tmp = _build_dir(final)
    try:
        model = tmp / "tokenizer.model"
        if tokenizer is not None:
            _check_tokenizer(Path(tokenizer))
            shutil.copyfile(tokenizer, model)
        else:
            _train_tokenizer(splits["train"], vocab_size, model)
        for split, split_docs in splits.items():
            _encode_split(model, split_docs, tmp, "text", split)
        fingerprint = {
            "corpus": f"text:{name}",
            "files": [{"name": Path(f).name, "sha256": _sha256_file(Path(f))} for f in files],
            "seed": seed,
            "val_fraction": val_fraction,
            "tokenizer_sha256": _sha256_file(model),
        }
        _write_meta(tmp, f"text:{name}", fingerprint, {"documents": {s: len(d) for s, d in splits.items()}})
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load_corpus(f"text:{name}", final, 0, "rebuild it with: golf data text")


def _check_tokenizer(path: Path) -> None:
    """A usable tokenizer loads, has BOS id 1 (documents in shards start with it) and fits uint16."""
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise DataError(f"cannot load sentencepiece model {path}: {_one_line(e)}") from None
    if sp.bos_id() != BOS_ID:
        raise DataError(f"tokenizer {path} has BOS id {sp.bos_id()}; golf shards start documents with id {BOS_ID}")
    if sp.vocab_size() > 1 << 16:
        raise DataError(f"tokenizer {path} has {sp.vocab_size()} pieces; shards hold uint16 ids")


# ----------------------------------------------------------------------------- FineWeb download


class _Hub:
    """Fetches files of the published export into a corpus folder, skipping those present.

    `download` has hf_hub_download's signature: it saves <local_dir>/<filename> and returns its
    path, raising huggingface_hub's EntryNotFoundError for a file the repo does not have.
    """

    def __init__(self, download: Callable[..., str], repo_id: str, prefix: str, staging: Path):
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

        self.download, self.repo_id, self.prefix, self.staging = download, repo_id, prefix, staging
        self.not_found = EntryNotFoundError
        self.offline = LocalEntryNotFoundError  # a subclass of EntryNotFoundError: no network, not "no file"

    def get(self, remote: str, dest: Path, missing_ok: bool = False) -> bool:
        """Fetch <prefix>/<remote> to dest; False if it is absent from the repo and missing_ok."""
        if dest.exists():
            return True
        filename = f"{self.prefix}/{remote}"
        try:
            path = self.download(repo_id=self.repo_id, filename=filename, repo_type="dataset", local_dir=str(self.staging))
        except Exception as e:  # network, auth, disk: one line; re-running the command resumes
            if isinstance(e, self.not_found) and not isinstance(e, self.offline):
                if missing_ok:
                    return False
                raise DataError(f"{filename} is not in dataset {self.repo_id}: {_one_line(e)}") from None
            raise DataError(f"downloading {filename} from dataset {self.repo_id} failed: {_one_line(e)}") from None
        source = Path(path).resolve(strict=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if self.staging.resolve() in source.parents:
            os.replace(source, dest)
        else:  # served from a shared cache: copy, leave the cache intact
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
            shutil.copyfile(source, tmp)
            os.replace(tmp, dest)
        return True


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _fineweb_plan(manifest: dict, variant: str, name: str) -> tuple[int, int, list[str]]:
    """(train shards, val shards, tokenizer files) the manifest lists for a dataset.

    The manifest (the challenge exporter's) has datasets[{name, tokenizer_name, stats:
    {files_train, files_val}}] and tokenizers[{name, model_path, vocab_path}]; paths are relative
    to the export root. Without an entry for the dataset, the known published counts are used.
    """
    entry = next((d for d in manifest.get("datasets", []) if isinstance(d, dict) and d.get("name") == name), None)
    if entry is None:
        if variant not in _FINEWEB_FALLBACK:
            raise DataError(f"dataset {name} is not listed in the manifest of the published export")
        known = _FINEWEB_FALLBACK[variant]
        return known["files_train"], known["files_val"], list(known["tokenizer_files"])
    try:
        stats = entry["stats"]
        files_train, files_val = int(stats["files_train"]), int(stats["files_val"])
        tok = next(t for t in manifest.get("tokenizers", []) if t.get("name") == entry["tokenizer_name"])
    except (KeyError, TypeError, ValueError, StopIteration, AttributeError):
        raise DataError(f"manifest entry for {name} lacks shard counts or its tokenizer") from None
    tokenizer_files = [str(tok[k]) for k in ("model_path", "vocab_path") if tok.get(k)]
    if not tokenizer_files or not tokenizer_files[0].endswith(".model"):
        raise DataError(f"manifest entry for {name} has no sentencepiece model_path")
    return files_train, files_val, tokenizer_files


def download_fineweb(
    root: Path,
    variant: str = "sp1024",
    train_shards: int = 1,
    repo_id: str = FINEWEB_REPO_ID,
    download: Callable[..., str] | None = None,
    remote_prefix: str = FINEWEB_REMOTE_PREFIX,
) -> Corpus:
    """Fetch the challenge's FineWeb export (val shards, the first train_shards train shards,
    tokenizer) into <root>/fineweb10B_<variant>, like the challenge's cached_challenge_fineweb.py.

    Manifest-driven: the manifest says how many shards exist, and asking for more is an error.
    Files already present are not fetched again, so re-running with more shards only adds them.
    Train shard numbering starts at 000000 in newer exports and 000001 in the original one;
    the first shard's presence decides.
    """
    root = Path(root)
    if not re.fullmatch(r"sp\d+", variant):
        raise DataError(f"variant {variant!r}: golf reads the sentencepiece variants (sp1024, sp2048, ...)")
    if train_shards < 1:
        raise DataError(f"train_shards must be >= 1, got {train_shards}")
    if download is None:
        from huggingface_hub import hf_hub_download as download
    name = f"fineweb10B_{variant}"
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    hub = _Hub(download, repo_id, remote_prefix, directory / ".download")
    try:
        _fetch_fineweb(hub, directory, variant, train_shards)
    finally:
        shutil.rmtree(directory / ".download", ignore_errors=True)
    _check_tokenizer(directory / "tokenizer.model")
    fingerprint = {
        "corpus": name,
        "repo_id": repo_id,
        "remote_prefix": remote_prefix,
        "manifest_sha256": _sha256_file(directory / "manifest.json"),
        "train_shards": [p.name for p in shard_files(directory, "train")],
        "val_shards": [p.name for p in shard_files(directory, "val")],
        "tokenizer_sha256": _sha256_file(directory / "tokenizer.model"),
    }
    _write_meta(directory, name, fingerprint)
    return _load_corpus(name, directory, 0, f"fetch it again with: golf data fineweb --variant {variant}")


def _fetch_fineweb(hub: _Hub, directory: Path, variant: str, train_shards: int) -> None:
    """The manifest, then every val shard, the first train_shards train shards and the tokenizer."""
    name = directory.name
    hub.get("manifest.json", directory / "manifest.json")
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    except ValueError as e:
        (directory / "manifest.json").unlink()
        raise DataError(f"manifest.json of {hub.repo_id}/{hub.prefix} is not valid JSON ({e}); run the command again") from None
    files_train, files_val, tokenizer_files = _fineweb_plan(manifest, variant, name)
    if train_shards > files_train:
        raise DataError(f"{name} has only {files_train} train shards on {hub.repo_id}, requested {train_shards}")

    remote_dir = f"datasets/{name}"
    for i in range(files_val):
        hub.get(f"{remote_dir}/fineweb_val_{i:06d}.bin", directory / f"fineweb_val_{i:06d}.bin")
    if (directory / "fineweb_train_000001.bin").exists() and not (directory / "fineweb_train_000000.bin").exists():
        first = 1
    else:
        first = 0 if hub.get(f"{remote_dir}/fineweb_train_000000.bin", directory / "fineweb_train_000000.bin", missing_ok=True) else 1
    for i in range(first, first + train_shards):
        hub.get(f"{remote_dir}/fineweb_train_{i:06d}.bin", directory / f"fineweb_train_{i:06d}.bin")
    for remote in tokenizer_files:
        hub.get(remote, directory / f"tokenizer{Path(remote).suffix}")
