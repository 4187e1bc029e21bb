"""Building corpora: the embedded `pystdlib` corpus and `text:NAME` corpora from the user's files.

A build trains (or copies) a sentencepiece tokenizer, encodes the documents into shards of the
challenge's format (golfcore.data), writes meta.json last, and renames the finished folder into
place, so an interrupted build leaves nothing that looks like a corpus.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import platform
import re
import shutil
import sysconfig
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from golfcore.config import DataSection
from golfcore.data import (
    BOS_ID, PYSTDLIB_BUILDER, Corpus, corpus_command, data_root, open_corpus, resolve_corpus, shard_files, shard_num_tokens,
    write_shard,
)
from golfcore.errors import DataError
from golfcore.files import sha256_file, write_json

SHARD_TOKENS = 1 << 21
"""Tokens per shard written by golf's builders. Small enough that the default corpus spans a
few shards (so multi-shard loading and `max_train_shards` are exercised), large enough that a
shard switch is rare; the challenge's FineWeb shards hold 100M tokens."""

NUM_THREADS = 2
"""sentencepiece threads for training and encoding: builds must stay quick on a 2-core CI box."""

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


def ensure_corpus(data: DataSection) -> Corpus:
    """The corpus a recipe's [data] names, building the embedded pystdlib first if it is missing
    or stale (seconds, no network). Other corpora must exist already: resolving a missing one
    raises a DataError naming the `golf data` command that creates it."""
    if data.corpus == "pystdlib":
        build_pystdlib(data_root(data))
    return resolve_corpus(data)


# ----------------------------------------------------------------------------- build machinery


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
            "pass an existing --tokenizer, or a smaller --vocab-size for little text, a larger one for text of many distinct characters"
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


# ----------------------------------------------------------------------------- pystdlib


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


def build_pystdlib(root: Path, force: bool = False) -> Corpus:
    """Build the embedded corpus under <root>/pystdlib from this interpreter's stdlib sources.

    Files are split into train/val by a hash of their relative path (~5% val), so the split is
    stable across machines with the same Python; each split's files are shuffled by a seeded
    hash before being laid end to end, BOS first. The tokenizer sees the train split only.
    Takes a few seconds; an existing build is kept unless force is set.
    """
    root = Path(root)
    if not force:
        with contextlib.suppress(DataError):  # missing, stale or damaged: build it anew
            return resolve_corpus(DataSection(corpus="pystdlib", root=str(root)))
    sources = _pystdlib_sources()
    if not sources:
        raise DataError(f"no UTF-8 .py files found under {sysconfig.get_paths()['stdlib']}")
    files_hash = hashlib.sha256()
    for rel, text in sources:
        files_hash.update(f"{rel}\0{hashlib.sha256(text.encode('utf-8')).hexdigest()}\n".encode())
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for rel, text in sorted(sources, key=lambda s: _shuffle_key(SEED, s[0])):
        splits["val" if _pystdlib_is_val(rel) else "train"].append((rel, text))

    final = root / "pystdlib"
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
            "tokenizer_sha256": sha256_file(tokenizer),
            "builder": PYSTDLIB_BUILDER,
        }
        extra = {
            split: {"files": len(docs), "bytes": sum(len(t.encode("utf-8")) for _, t in docs), "paths": sorted(r for r, _ in docs)}
            for split, docs in splits.items()
        }
        write_meta(tmp, "pystdlib", fingerprint, {"documents": extra})
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_corpus("pystdlib", final, 0, f"rebuild it with: {corpus_command('pystdlib', root)}")


# ----------------------------------------------------------------------------- text corpora


class NotTextError(DataError):
    """An input file is not UTF-8 text (binary, another encoding, broken gzip); raised instead
    of skipping the file when the build is strict."""


@dataclass
class TextInputs:
    """What the user's paths hold: the documents, the files they came from, the files skipped.

    Files are named by their path under the folder argument that found them, prefixed with
    that folder's name (e.g. `notes/guide/intro.md`), or by their own name when given directly.
    """

    documents: list[str] = field(default_factory=list)
    used: list[tuple[str, str]] = field(default_factory=list)  # (name, sha256 of the file's bytes)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)


def _folder_files(folder: Path, globs: list[str]) -> list[Path]:
    """Files under folder at any depth whose path under it matches any glob (Path.match: from the
    right, so "*.md" matches at any depth); hidden files and folders are left out, as shells do."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            if not fname.startswith(".") and any(path.relative_to(folder).match(g) for g in globs):
                found.append(path)
    return found


def _input_files(paths: list[Path], globs: list[str]) -> list[tuple[Path, str]]:
    """(file, name) for every input file, in argument order, each file once."""
    out: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for given in map(Path, paths):
        if given.is_dir():
            files = _folder_files(given, globs)
            if not files:
                raise DataError(f"{given}: no files match --glob {' '.join(globs)}")
            prefix = Path(given.resolve().name)
            named = [(p, (prefix / p.relative_to(given)).as_posix()) for p in files]
        elif given.is_file():
            named = [(given, given.name)]
        else:
            raise DataError(f"{given}: no such file or folder")
        for path, name in named:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                out.append((path, name))
    return out


def _decode(path: Path, raw: bytes) -> str:
    """The text of a file's bytes (gunzipped if it ends in .gz); NotTextError saying why not."""
    data = raw
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise NotTextError(f"not valid gzip ({one_line(e)})") from None
    if (nul := data.find(b"\0")) >= 0:
        raise NotTextError(f"binary (NUL byte at offset {nul})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotTextError(f"not UTF-8 (invalid byte at offset {e.start})") from None


def _jsonl_documents(path: Path, text: str) -> list[str]:
    docs = []
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
    return docs


def read_text_inputs(paths: list[Path], globs: Iterable[str] = ("*",), strict: bool = False,
                     warn: Callable[[str], None] | None = None) -> TextInputs:
    """Documents of the given files and folders (folders searched recursively for files matching
    any glob): a .jsonl file holds one per line (its "text" field), any other file is one
    document; .gz files are read decompressed (`x.jsonl.gz` is JSON lines). A file that is not
    UTF-8 text is skipped, with warn(message) naming it, or refused (NotTextError) when strict.
    Empty documents are dropped."""
    inputs = TextInputs()
    for path, name in _input_files(paths, list(globs)):
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror or e}") from None
        try:
            text = _decode(path, raw)
        except NotTextError as e:
            if strict:
                raise NotTextError(f"{path} is {e} (--strict refuses files that are not UTF-8 text)") from None
            inputs.skipped.append((name, str(e)))
            if warn:
                warn(f"skipped {path}: {e}")
            continue
        inner = path.with_suffix("") if path.suffix == ".gz" else path
        docs = _jsonl_documents(path, text) if inner.suffix == ".jsonl" else [text]
        inputs.documents.extend(d for d in docs if d)
        inputs.used.append((name, hashlib.sha256(raw).hexdigest()))
    return inputs


def build_text_corpus(
    paths: list[Path],
    name: str,
    root: Path,
    tokenizer: Path | None = None,
    vocab_size: int = 1024,
    val_fraction: float = 0.1,
    seed: int = SEED,
    globs: Iterable[str] = ("*",),
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Corpus:
    """Build <root>/text/<name> from local files and folders (recipe corpus "text:<name>"); what
    is read, skipped or refused is read_text_inputs's rule.

    Documents are shuffled by a seeded hash of their content (so the result does not depend on
    the order files are given in); the first round(n * val_fraction) of them, at least one, are
    validation. Uses the given sentencepiece model (its BOS must be id 1) or trains a
    byte-fallback BPE on the train documents with pystdlib's settings. Replaces an existing build.
    The counts of files used and skipped go into the fingerprint, the skipped files into meta.json.
    """
    root = Path(root)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise DataError(f"corpus name {name!r}: use letters, digits, '_', '-' and '.'")
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction {val_fraction} must be between 0 and 1")
    if not paths:
        raise DataError("no input files given")
    inputs = read_text_inputs(paths, globs, strict, warn)
    docs = inputs.documents
    if len(docs) < 2:
        raise DataError(
            f"need at least 2 non-empty documents to split into train and val, found {len(docs)} "
            f"in {len(inputs.used)} files ({len(inputs.skipped)} skipped as not UTF-8 text)"
        )
    order = sorted(range(len(docs)), key=lambda i: (_shuffle_key(seed, docs[i]), i))
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    splits = {"val": [docs[i] for i in order[:n_val]], "train": [docs[i] for i in order[n_val:]]}

    final = root / "text" / name
    tmp = _build_dir(final)
    try:
        model = tmp / "tokenizer.model"
        if tokenizer is not None:
            check_tokenizer(Path(tokenizer))
            shutil.copyfile(tokenizer, model)
        else:
            _train_tokenizer(splits["train"], vocab_size, model)
        for split, split_docs in splits.items():
            _encode_split(model, split_docs, tmp, "text", split)
        fingerprint = {
            "corpus": f"text:{name}",
            "files": [{"name": file, "sha256": digest} for file, digest in inputs.used],
            "files_used": len(inputs.used),
            "files_skipped": len(inputs.skipped),
            "seed": seed,
            "val_fraction": val_fraction,
            "tokenizer_sha256": sha256_file(model),
        }
        extra = {
            "documents": {s: len(d) for s, d in splits.items()},
            "skipped": [{"name": file, "why": why} for file, why in inputs.skipped],
        }
        write_meta(tmp, f"text:{name}", fingerprint, extra)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_corpus(f"text:{name}", final, 0, f"rebuild it with: {corpus_command(f'text:{name}', root)}")


# ----------------------------------------------------------------------------- shared with golf_tools.fineweb



def write_meta(directory: Path, name: str, fingerprint: dict, extra: dict | None = None) -> None:
    """meta.json: written last, it marks the folder as a complete corpus."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    splits = {}
    for split in ("train", "val"):
        files = shard_files(directory, split)
        splits[f"{split}_files"] = [p.name for p in files]
        splits[f"{split}_tokens"] = sum(shard_num_tokens(p) for p in files)
    meta = {"name": name, "vocab_size": sp.vocab_size(), "fingerprint": fingerprint, **splits, **(extra or {})}
    write_json(directory / "meta.json", meta)


def check_tokenizer(path: Path) -> None:
    """A usable tokenizer loads, has BOS id 1 (documents in shards start with it) and fits uint16."""
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise DataError(f"cannot load sentencepiece model {path}: {one_line(e)}") from None
    if sp.bos_id() != BOS_ID:
        raise DataError(f"tokenizer {path} has BOS id {sp.bos_id()}; golf shards start documents with id {BOS_ID}")
    if sp.vocab_size() > 1 << 16:
        raise DataError(f"tokenizer {path} has {sp.vocab_size()} pieces; shards hold uint16 ids")


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
