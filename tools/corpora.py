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
import itertools
import json
import os
import platform
import re
import shutil
import sysconfig
import time
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator


from golfcore.config import DataSection
from golfcore.data import (
    EMBEDDED_CORPORA, PYSTDLIB_BUILDER, Corpus, corpus_command, data_root, open_corpus, resolve_corpus, shard_files,
    shard_num_tokens, sidecar_name,
)
from golfcore.errors import DataError
from golfcore.files import sha256_file, write_json

from .tokenizer import encode_split, train_tokenizer

NUM_PROCESSES = 2
"""Encoding processes of a build: builds must stay quick on a 2-core CI box."""

PYSTDLIB_VAL_PERCENT = 5
PYSTDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"})
"""Directory names skipped at any depth of the stdlib: installed third-party packages, and the
test suites (Lib/test, ctypes/test, unittest/test, tkinter/test, distutils/tests,
lib2to3/tests, idlelib/idle_test), which are repetitive, hold deliberately malformed files and
would otherwise be 60% of the corpus."""
SEED = 1337
READ_CHUNK = 1 << 18
"""Bytes read from an input file at a time (the text builds read their files as streams)."""
NEAR_COPY_LINES = 4
NEAR_COPY_SHARE = 0.25
"""A validation file sharing at least this share of its runs of NEAR_COPY_LINES non-blank
lines with the training files goes to training (the stdlib's generated codecs,
encodings/cp*.py, are near-copies of each other). Decided on the text, so both pystdlib
corpora keep the same split; a quarter leaves margin under the overlap check's half of the
token spans (docs/compliance.md, "Training/validation overlap")."""


def ensure_corpus(data: DataSection) -> Corpus:
    """The corpus a recipe's [data] names, building an embedded pystdlib corpus first if it is
    missing or stale (seconds, no network). Other corpora must exist already: resolving a
    missing one raises a DataError naming the `golf data` command that creates it."""
    if data.corpus in EMBEDDED_CORPORA and not data.shards:
        build_pystdlib(data_root(data), caseops=bool(EMBEDDED_CORPORA[data.corpus]))
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


def _line_runs(text: str) -> set[int]:
    """Hashes of the file's runs of NEAR_COPY_LINES consecutive non-blank, stripped lines."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return {hash("\n".join(lines[i : i + NEAR_COPY_LINES])) for i in range(max(1, len(lines) - NEAR_COPY_LINES + 1))}


def _near_copies(train: list[tuple[str, str]], val: list[tuple[str, str]]) -> set[str]:
    """Relative paths of the validation files that near-copy training files (NEAR_COPY_SHARE)."""
    seen = set().union(*(_line_runs(text) for _, text in train))
    out = set()
    for rel, text in val:
        runs = _line_runs(text)
        if len(runs & seen) >= NEAR_COPY_SHARE * len(runs):
            out.add(rel)
    return out


def _encode_splits(tokenizer: Path, splits: dict[str, Iterable[str]], directory: Path, prefix: str, transform: str,
                   processes: int = NUM_PROCESSES, progress: Callable[[str, int, int | None], None] | None = None,
                   sizes: dict[str, int] | None = None) -> dict:
    """Each split's shards, in the dict's order (with the val split's byte sidecars when there is a
    transform); `progress(split, done, total)` counts documents, of `sizes[split]` when given.
    Returns each split's counts."""
    return {
        split: encode_split(tokenizer, docs, directory, prefix, split, transform, sidecar=bool(transform) and split == "val",
                            processes=processes, progress=(lambda d, t, split=split: progress(split, d, t)) if progress else None,
                            total=sizes[split] if sizes else None)
        for split, docs in splits.items()
    }


def build_pystdlib(root: Path, force: bool = False, caseops: bool = False) -> Corpus:
    """Build the embedded corpus under <root>/pystdlib (or, with caseops, <root>/pystdlib_caseops:
    the same documents through the CaseOps transform, with a tokenizer of its own that keeps the
    operators as pieces, and byte sidecars) from this interpreter's stdlib sources.

    Files are split into train/val by a hash of their relative path (~5% val), so the split is
    stable across machines with the same Python; validation files that near-copy training ones
    move to train (NEAR_COPY_SHARE); each split's files are shuffled by a seeded hash before
    being laid end to end, BOS first. The tokenizer sees the train split only.
    Takes a few seconds; an existing build is kept unless force is set.
    """
    root = Path(root)
    name = "pystdlib_caseops" if caseops else "pystdlib"
    transform = EMBEDDED_CORPORA[name]
    if not force:
        with contextlib.suppress(DataError):  # missing, stale or damaged: build it anew
            return resolve_corpus(DataSection(corpus=name, root=str(root)))
    sources = _pystdlib_sources()
    if not sources:
        raise DataError(f"no UTF-8 .py files found under {sysconfig.get_paths()['stdlib']}")
    files_hash = hashlib.sha256()
    for rel, text in sources:
        files_hash.update(f"{rel}\0{hashlib.sha256(text.encode('utf-8')).hexdigest()}\n".encode())
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    for rel, text in sorted(sources, key=lambda s: _shuffle_key(SEED, s[0])):
        splits["val" if _pystdlib_is_val(rel) else "train"].append((rel, text))
    moved = _near_copies(splits["train"], splits["val"])
    splits["train"] += [doc for doc in splits["val"] if doc[0] in moved]  # order stays the seeded shuffle's
    splits["train"].sort(key=lambda s: _shuffle_key(SEED, s[0]))
    splits["val"] = [doc for doc in splits["val"] if doc[0] not in moved]

    final = root / name
    tmp = _build_dir(final)
    try:
        tokenizer = tmp / "tokenizer.model"
        train_tokenizer((text for _, text in splits["train"]), 1024, tokenizer, transform)
        _encode_splits(tokenizer, {split: [text for _, text in docs] for split, docs in splits.items()}, tmp, name, transform)
        fingerprint = {
            "corpus": name,
            "python": platform.python_version(),
            "files_sha256": files_hash.hexdigest(),
            "num_files": len(sources),
            "tokenizer_sha256": sha256_file(tokenizer),
            "builder": PYSTDLIB_BUILDER,
        }
        if transform:
            fingerprint["transform"] = transform
        extra = {
            split: {"files": len(docs), "bytes": sum(len(t.encode("utf-8")) for _, t in docs), "paths": sorted(r for r, _ in docs)}
            for split, docs in splits.items()
        }
        extra["val"]["near_copies_moved_to_train"] = sorted(moved)
        write_meta(tmp, name, fingerprint, {"documents": extra}, transform)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_corpus(name, final, 0, f"rebuild it with: {corpus_command(name, root)}")


# ----------------------------------------------------------------------------- text corpora


class NotTextError(DataError):
    """An input file is not UTF-8 text (binary, another encoding, broken gzip); raised instead
    of skipping the file when the build is strict."""


@dataclass
class InputFile:
    """A file of text among the inputs: where it is, its name in the fingerprint, the SHA-256 of
    its bytes and how many non-empty documents it holds."""

    path: Path
    name: str
    sha256: str
    documents: int


@dataclass
class TextInputs:
    """What the user's paths hold, found by reading each file once (read_text_inputs): the files
    of text and the files skipped. No document is kept: `documents()` reads them again.

    Files are named by their path under the folder argument that found them, prefixed with
    that folder's name (e.g. `notes/guide/intro.md`), or by their own name when given directly.
    """

    files: list[InputFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    @property
    def num_documents(self) -> int:
        return sum(file.documents for file in self.files)

    def documents(self) -> Iterator[str]:
        """Every document of the files of text, in order, read again as it is asked for (a .jsonl
        file line by line); a file whose bytes changed since it was first read stops the
        reading with a DataError."""
        for file in self.files:
            digest = hashlib.sha256()
            try:
                yield from _file_documents(file.path, digest)
            except NotTextError as e:
                raise DataError(f"{file.path} changed while the corpus was being built: it is now {e}") from None
            if digest.hexdigest() != file.sha256:
                raise DataError(f"{file.path} changed while the corpus was being built; build it again")


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


class _HashedReader(io.RawIOBase):
    """A binary file read through: each byte read is added to `digest` and counted to
    `on_bytes(n)` as it passes, so a file is hashed in the same read that parses it."""

    def __init__(self, path: Path, file: BinaryIO, digest, on_bytes: Callable[[int], None] | None):
        self.path, self.file, self.digest, self.on_bytes = path, file, digest, on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            n = self.file.readinto(buffer)
        except OSError as e:  # a DataError, so that gzip's errors below stay the only OSErrors
            raise DataError(f"cannot read {self.path}: {e.strerror or e}") from None
        self.digest.update(memoryview(buffer)[:n])
        if self.on_bytes:
            self.on_bytes(n)
        return n


def _file_documents(path: Path, digest, on_bytes: Callable[[int], None] | None = None) -> Iterator[str]:
    """The non-empty documents of one file, read as they are asked for, the file's bytes added to
    `digest`: a .jsonl file's records line by line (their "text" field), any other file whole as
    one document; a .gz file is decompressed as it is read (`x.jsonl.gz` is JSON lines).

    A file that is not UTF-8 text raises NotTextError saying why (not valid gzip; else binary,
    at its first NUL byte; else not UTF-8, at its first invalid byte; offsets in the
    decompressed bytes), and a .jsonl line that is not an object with a string "text" field a
    DataError naming the file and line. A .jsonl file's faults are raised when it has been read
    to its end, so the verdict is the one reading it whole gives (a binary file is skipped as
    binary whatever its lines hold); documents it yielded before then are to be dropped.
    """
    gz = path.suffix == ".gz"
    try:
        file = open(path, "rb")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    with file:
        raw = _HashedReader(path, file, digest, on_bytes)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if gz else io.BufferedReader(raw, READ_CHUNK)
        try:
            if (path.with_suffix("") if gz else path).suffix == ".jsonl":
                yield from _jsonl_documents(path, stream)
            elif text := _utf8(stream.read()):
                yield text
        except (OSError, EOFError, zlib.error) as e:  # only gzip raises these (reading raises DataError)
            raise NotTextError(f"not valid gzip ({one_line(e)})") from None
        while raw.read(READ_CHUNK):  # what a gzip stream leaves unread is hashed too
            pass


def _utf8(data: bytes) -> str:
    """The text of a whole file's bytes; NotTextError saying why they are not text."""
    if (nul := data.find(b"\0")) >= 0:
        raise NotTextError(f"binary (NUL byte at offset {nul})")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotTextError(f"not UTF-8 (invalid byte at offset {e.start})") from None


def _jsonl_documents(path: Path, lines: Iterable[bytes]) -> Iterator[str]:
    """The "text" of each record of a JSON-lines stream (lines end at "\\n"; blank lines and empty
    texts are skipped); its faults are raised at its end, in _utf8's order, then the first bad
    line."""
    offset = 0
    nul = not_utf8 = None
    bad_line: DataError | None = None
    for lineno, line in enumerate(lines, 1):
        start, offset = offset, offset + len(line)
        if nul is None and (i := line.find(b"\0")) >= 0:
            nul = start + i
        if nul is not None or not_utf8 is not None:
            continue  # looking for a NUL byte only
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            not_utf8 = start + e.start
            continue
        if bad_line or not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            bad_line = DataError(f"{path}:{lineno}: invalid JSON ({e.msg})")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            bad_line = DataError(f'{path}:{lineno}: expected an object with a string "text" field')
        elif record["text"]:
            yield record["text"]
    if nul is not None:
        raise NotTextError(f"binary (NUL byte at offset {nul})")
    if not_utf8 is not None:
        raise NotTextError(f"not UTF-8 (invalid byte at offset {not_utf8})")
    if bad_line:
        raise bad_line


def read_text_inputs(paths: list[Path], globs: Iterable[str] = ("*",), strict: bool = False,
                     warn: Callable[[str], None] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> TextInputs:
    """The files of text among the given files and folders (folders searched recursively for
    files matching any glob), each read once, as a stream (_file_documents: what a document is,
    what is not text), to hash it and count its documents. A file that is not UTF-8 text is
    skipped, with warn(message) naming it, or refused (NotTextError) when strict.
    `progress(bytes read, bytes of all the files)`."""
    inputs = TextInputs()
    files = _input_files(paths, list(globs))
    total = sum(path.stat().st_size for path, _ in files)
    done = 0

    def read(n: int) -> None:
        nonlocal done
        done += n
        progress(done, total)

    for path, name in files:
        digest = hashlib.sha256()
        try:
            count = sum(1 for _ in _file_documents(path, digest, read if progress else None))
        except NotTextError as e:
            if strict:
                raise NotTextError(f"{path} is {e} (--strict refuses files that are not UTF-8 text)") from None
            inputs.skipped.append((name, str(e)))
            if warn:
                warn(f"skipped {path}: {e}")
            continue
        inputs.files.append(InputFile(path, name, digest.hexdigest(), count))
    return inputs


@contextlib.contextmanager
def _text_splits(inputs: TextInputs, val_docs: int,
                 held: dict[str, list[str]] | None) -> Iterator[dict[str, Iterable[str]]]:
    """Each split's documents: the `held` lists, or else the inputs read again, lazily: "val" their
    first val_docs documents and "train" the rest, from one reading (encode "val" first;
    reading "train" alone passes over the val documents)."""
    if held is not None:
        yield held
        return
    docs = inputs.documents()
    val = itertools.islice(docs, val_docs)

    def train() -> Iterator[str]:
        for _ in val:  # the val documents not read yet
            pass
        yield from docs

    try:
        yield {"val": val, "train": train()}
    finally:
        docs.close()


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
    transform: str = "",
    val_docs: int = 0,
    processes: int = NUM_PROCESSES,
    progress: Callable[[str, int, int], None] | None = None,
    timings: dict | None = None,
) -> Corpus:
    """Build <root>/text/<name> from local files and folders (recipe corpus "text:<name>"); what
    is read, skipped or refused is read_text_inputs's rule. `golf data text` and `golf data
    tokenizer` run it.

    Documents are shuffled by a seeded hash of their content (so the result does not depend on
    the order files are given in); the first round(n * val_fraction) of them, at least one, are
    validation: the shuffle holds every document in memory. With val_docs > 0 the documents keep
    their order and the first val_docs are validation (the challenge's convention for FineWeb's
    documents file), and none is held: the files are read once to hash them and count their
    documents, again (up to TRAIN_MAX_CHARS of train text) to train the tokenizer, and again to
    encode. Uses the given sentencepiece model or trains a byte-fallback BPE on the train
    documents with pystdlib's settings; with a transform (CaseOps), documents are transformed
    before training and encoding, and the val shards get byte sidecars. Encoding runs in
    `processes` processes; `progress(stage, done, total)` counts the bytes of the first
    reading (stage "read") and each split's documents (stage "val", "train"); `timings`
    receives the seconds spent reading, training the tokenizer and encoding. Replaces an
    existing build. The counts of files used and skipped go into the fingerprint, the skipped
    files into meta.json.
    """
    root = Path(root)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise DataError(f"corpus name {name!r}: use letters, digits, '_', '-' and '.'")
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction {val_fraction} must be between 0 and 1")
    if val_docs < 0 or processes < 1:
        raise DataError(f"val_docs ({val_docs}) must be >= 0 and processes ({processes}) >= 1")
    if not paths:
        raise DataError("no input files given")
    start = time.perf_counter()
    inputs = read_text_inputs(paths, globs, strict, warn, (lambda d, t: progress("read", d, t)) if progress else None)
    found = inputs.num_documents
    if found < 2 or val_docs >= found:
        raise DataError(
            f"need at least {max(2, val_docs + 1)} non-empty documents to split into train and val, found {found} "
            f"in {len(inputs.files)} files ({len(inputs.skipped)} skipped as not UTF-8 text)"
        )
    if val_docs:
        held = None
        sizes = {"val": val_docs, "train": found - val_docs}
    else:
        docs = list(inputs.documents())
        order = sorted(range(len(docs)), key=lambda i: (_shuffle_key(seed, docs[i]), i))
        n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
        held = {"val": [docs[i] for i in order[:n_val]], "train": [docs[i] for i in order[n_val:]]}
        sizes = {split: len(held[split]) for split in held}

    final = root / "text" / name
    tmp = _build_dir(final)
    try:
        model = tmp / "tokenizer.model"
        read = time.perf_counter()
        if tokenizer is not None:
            check_tokenizer(Path(tokenizer), transform)
            shutil.copyfile(tokenizer, model)
        else:
            with _text_splits(inputs, val_docs, held) as splits:
                train_tokenizer(splits["train"], vocab_size, model, transform)
        trained = time.perf_counter()
        with _text_splits(inputs, val_docs, held) as splits:
            counts = _encode_splits(model, splits, tmp, "text", transform, processes, progress, sizes)
        if timings is not None:
            timings.update(read_seconds=read - start, tokenizer_seconds=trained - read,
                           encode_seconds=time.perf_counter() - trained)
        fingerprint = {
            "corpus": f"text:{name}",
            "files": [{"name": file.name, "sha256": file.sha256} for file in inputs.files],
            "files_used": len(inputs.files),
            "files_skipped": len(inputs.skipped),
            "seed": seed,
            "val_fraction": val_fraction,
            "tokenizer_sha256": sha256_file(model),
        }
        if val_docs:
            fingerprint["val_docs"] = val_docs
        if transform:
            fingerprint["transform"] = transform
        extra = {
            "documents": {s: c["documents"] for s, c in counts.items()},
            "bytes": {s: c["bytes"] for s, c in counts.items()},
            "skipped": [{"name": file, "why": why} for file, why in inputs.skipped],
        }
        write_meta(tmp, f"text:{name}", fingerprint, extra, transform)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return open_corpus(f"text:{name}", final, 0, f"rebuild it with: {corpus_command(f'text:{name}', root)}")


# ----------------------------------------------------------------------------- shared with golf_tools.fineweb


def write_meta(directory: Path, name: str, fingerprint: dict, extra: dict | None = None, transform: str = "") -> None:
    """meta.json: written last, it marks the folder as a complete corpus. A corpus with a text
    transform lists the val shards' byte sidecars (every val shard has one)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    splits = {}
    for split in ("train", "val"):
        files = shard_files(directory, split)
        splits[f"{split}_files"] = [p.name for p in files]
        splits[f"{split}_tokens"] = sum(shard_num_tokens(p) for p in files)
    if transform:
        sidecars = [sidecar_name(n) for n in splits["val_files"]]
        for side in sidecars:
            if not (directory / side).is_file():
                raise DataError(f"{directory.name}: the {transform} corpus lacks the byte sidecar {side}")
        splits["val_bytes_files"] = sidecars
    meta = {"name": name, "vocab_size": sp.vocab_size(), "transform": transform, "fingerprint": fingerprint,
            **splits, **(extra or {})}
    write_json(directory / "meta.json", meta)


def check_tokenizer(path: Path, transform: str = "") -> None:
    """A usable tokenizer loads, has a BOS piece (documents in shards start with it), fits uint16
    and, for a transform, keeps each of its operators as one piece."""
    import sentencepiece as spm

    from .tokenizer import reserved_symbols

    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise DataError(f"cannot load sentencepiece model {path}: {one_line(e)}") from None
    if sp.bos_id() < 0:
        raise DataError(f"tokenizer {path} has no BOS piece; golf shards start every document with one")
    if sp.vocab_size() > 1 << 16:
        raise DataError(f"tokenizer {path} has {sp.vocab_size()} pieces; shards hold uint16 ids")
    missing = [f"U+{ord(c):04X}" for c in reserved_symbols(transform) if sp.piece_to_id(c) == sp.unk_id()]
    if missing:
        raise DataError(f"tokenizer {path} has no piece for the {transform} operators {', '.join(missing)}")


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
