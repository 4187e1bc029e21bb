"""golf_tools.corpora: building pystdlib and text corpora, ensure_corpus, and `golf data pystdlib|text`."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from typer.testing import CliRunner

from golf_cli.main import app as golf_app
from golf_tools.corpora import NotTextError, _near_copies, build_pystdlib, build_text_corpus, ensure_corpus
from golfcore.config import DataSection
from golfcore import caseops
from golfcore.data import load_val_bytes, load_val_tokens, read_shard, resolve_corpus
from golfcore.errors import DataError
from golfcore.assets import FINEWEB_SP1024_MODEL

STDLIB = Path(sysconfig.get_paths()["stdlib"])
BOS_ID = 1  # the id golf's tokenizers give BOS (golf_tools.tokenizer.train_tokenizer)


def _documents(tokens: np.ndarray) -> list[np.ndarray]:
    """Split a BOS-led token stream (n,) into documents (each without its BOS)."""
    starts = np.flatnonzero(tokens == BOS_ID)
    assert starts.size and starts[0] == 0, "stream must start with BOS"
    return [tokens[s + 1 : e] for s, e in zip(starts, [*starts[1:], tokens.size])]


def _split_docs(corpus, split: str, sp) -> list[str]:
    files = corpus.train_files if split == "train" else corpus.val_files
    return [sp.decode(d.tolist()) for d in _documents(np.concatenate([read_shard(f) for f in files]))]


# ----------------------------------------------------------------------------- pystdlib


def test_stale_pystdlib_is_rebuilt_identically(pystdlib_root, tmp_path):
    first = pystdlib_root / "pystdlib"
    shutil.copytree(first, tmp_path / "pystdlib")
    meta = json.loads((first / "meta.json").read_text())
    meta["fingerprint"]["builder"] = 0
    (tmp_path / "pystdlib" / "meta.json").write_text(json.dumps(meta))
    again = ensure_corpus(DataSection(corpus="pystdlib", root=str(tmp_path)))
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in again.directory.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (again.directory / name).read_bytes(), name


def test_pystdlib_split_by_file(pystdlib_root):
    meta = json.loads((pystdlib_root / "pystdlib" / "meta.json").read_text())
    train, val = set(meta["documents"]["train"]["paths"]), set(meta["documents"]["val"]["paths"])
    assert train and val and not train & val
    assert len(train | val) == meta["fingerprint"]["num_files"]
    assert not any(part in ("test", "tests", "idle_test", "site-packages") for p in train | val for part in p.split("/")[:-1])
    assert 0.02 <= meta["documents"]["val"]["bytes"] / (meta["documents"]["train"]["bytes"] + meta["documents"]["val"]["bytes"]) <= 0.08
    assert meta["documents"]["val"]["bytes"] >= 200_000


def test_near_copied_validation_files_move_to_train(pystdlib_root):
    """The stdlib's generated codecs are near-copies of each other: none stays in validation,
    and the overlap check then passes on both embedded corpora's split (the same files)."""
    meta = json.loads((pystdlib_root / "pystdlib" / "meta.json").read_text())
    moved = meta["documents"]["val"]["near_copies_moved_to_train"]
    assert moved and set(moved) <= set(meta["documents"]["train"]["paths"])
    assert not set(moved) & set(meta["documents"]["val"]["paths"])
    train = [("a.py", "x = 1\ny = 2\nz = 3\nw = 4\nv = 5\n")]
    val = [("copy.py", "x = 1\ny = 2\nz = 3\nw = 4\nother = 6\n"), ("new.py", "a\nb\nc\nd\ne\n")]
    assert _near_copies(train, val) == {"copy.py"}  # 1 of its 2 runs of 4 lines is in training


def test_pystdlib_documents_round_trip(pystdlib_root):
    """Every document starts with BOS and decodes back to its source file exactly."""
    corpus = resolve_corpus(DataSection(corpus="pystdlib", root=str(pystdlib_root)))
    meta = json.loads((corpus.directory / "meta.json").read_text())
    sp = spm.SentencePieceProcessor(model_file=str(corpus.tokenizer_path))
    assert (sp.vocab_size(), sp.bos_id(), sp.unk_id(), sp.id_to_piece(2)) == (1024, BOS_ID, 0, "\n")
    assert corpus.vocab_size == 1024
    val_docs = _split_docs(corpus, "val", sp)
    expected = [(STDLIB / p).read_text(encoding="utf-8") for p in meta["documents"]["val"]["paths"]]
    assert sorted(val_docs) == sorted(expected)
    assert val_docs != expected  # shuffled, not in path order
    train_tokens = np.concatenate([read_shard(f) for f in corpus.train_files])
    assert train_tokens[0] == BOS_ID and (train_tokens == BOS_ID).sum() == meta["documents"]["train"]["files"]
    assert not (train_tokens == sp.unk_id()).any()
    for path in meta["documents"]["train"]["paths"][::40]:  # byte fallback: every file round-trips
        text = (STDLIB / path).read_text(encoding="utf-8")
        assert sp.decode(sp.encode(text)) == text, path


def test_ensure_corpus_keeps_a_current_build(pystdlib_root):
    meta = pystdlib_root / "pystdlib" / "meta.json"
    before = meta.stat().st_mtime_ns
    corpus = ensure_corpus(DataSection(corpus="pystdlib", root=str(pystdlib_root), max_train_shards=1))
    assert meta.stat().st_mtime_ns == before
    assert len(corpus.train_files) == 1 and corpus.fingerprint["train_shards_used"] == 1


def test_ensure_corpus_never_downloads(tmp_path):
    for corpus in ("fineweb10B_sp1024", "text:notes"):
        with pytest.raises(DataError, match="golf data (fineweb|text)"):
            ensure_corpus(DataSection(corpus=corpus, root=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("golf_tools.corpora.encode_split", fail)
    with pytest.raises(KeyboardInterrupt):
        build_pystdlib(tmp_path)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- text corpora


def _write_text_inputs(tmp_path: Path) -> tuple[list[Path], list[str]]:
    # the FineWeb tokenizer collapses whitespace, so these documents have no double or trailing spaces
    docs = [f"document {i}:" + " the quick brown fox jumps over the lazy dog." * (i % 5 + 1) for i in range(30)]
    txt = []
    for i, doc in enumerate(docs[:10]):
        txt.append(tmp_path / f"doc{i}.txt")
        txt[-1].write_text(doc, encoding="utf-8")
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs[10:])) + "\n\n", encoding="utf-8")
    return [*txt, jsonl], docs


def test_text_corpus_with_given_tokenizer(tmp_path):
    files, docs = _write_text_inputs(tmp_path)
    corpus = build_text_corpus(files, "demo", tmp_path / "data", tokenizer=FINEWEB_SP1024_MODEL, val_fraction=0.1)
    assert corpus.directory == tmp_path / "data" / "text" / "demo"
    assert [p.name for p in corpus.train_files] == ["text_train_000000.bin"]
    assert [p.name for p in corpus.val_files] == ["text_val_000000.bin"]
    assert corpus.tokenizer_path.read_bytes() == FINEWEB_SP1024_MODEL.read_bytes()
    sp = spm.SentencePieceProcessor(model_file=str(corpus.tokenizer_path))
    train, val = _split_docs(corpus, "train", sp), _split_docs(corpus, "val", sp)
    assert len(val) == 3 and sorted(train + val) == sorted(docs)
    assert corpus.fingerprint["files"][0]["name"] == "doc0.txt" and len(corpus.fingerprint["files"]) == 11
    resolved = resolve_corpus(DataSection(corpus="text:demo", root=str(tmp_path / "data")))
    assert resolved.train_files == corpus.train_files and resolved.name == "text:demo"
    # the split does not depend on the order the files are given in
    again = build_text_corpus(files[::-1], "demo2", tmp_path / "data", tokenizer=FINEWEB_SP1024_MODEL, val_fraction=0.1)
    assert again.val_files[0].read_bytes() == corpus.val_files[0].read_bytes()


def test_text_corpus_trains_its_tokenizer(tmp_path, pystdlib_root):
    meta = json.loads((pystdlib_root / "pystdlib" / "meta.json").read_text())
    files = []
    for path in meta["documents"]["train"]["paths"][:60]:
        files.append(tmp_path / (path.replace("/", "_") + ".txt"))
        shutil.copyfile(STDLIB / path, files[-1])
    corpus = build_text_corpus(files, "code", tmp_path / "data", vocab_size=512)
    sp = spm.SentencePieceProcessor(model_file=str(corpus.tokenizer_path))
    assert sp.vocab_size() == corpus.vocab_size == 512 and sp.bos_id() == BOS_ID
    val = _split_docs(corpus, "val", sp)
    assert len(val) == 6 and all(doc in [f.read_text(encoding="utf-8") for f in files] for doc in val)


def test_text_corpus_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": "b"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:3"):
        build_text_corpus([bad], "x", tmp_path)
    bad.write_text('{"text": "a"}\n{"body": "b"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2.*text"):
        build_text_corpus([bad], "x", tmp_path)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("hello", encoding="utf-8")
    with pytest.raises(DataError, match="at least 2"):
        build_text_corpus([tiny], "x", tmp_path)
    other = tmp_path / "other.txt"
    other.write_text("world", encoding="utf-8")
    with pytest.raises(DataError, match="tokenizer"):  # far too little text for 1024 pieces
        build_text_corpus([tiny, other], "x", tmp_path)
    assert not (tmp_path / "text" / "x").exists() and not list((tmp_path / "text").iterdir())
    with pytest.raises(DataError, match="golf data text"):
        resolve_corpus(DataSection(corpus="text:x", root=str(tmp_path)))


def _mixed_folder(tmp_path: Path) -> tuple[Path, list[str]]:
    """A folder of the kinds of files people have, and the documents golf should find in it."""
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    (folder / ".cache").mkdir()
    docs = {
        "README.md": "readme: how to use the golf course.",
        "LICENSE": "permission is granted to play golf on this course.",
        "mod.py": "def swing(club):\n    return club.speed\n",
        "sub/deep.md": "a nested page about the eighteenth hole.",
    }
    for name, text in docs.items():
        (folder / name).write_text(text, encoding="utf-8")
    records = ["the first record of a jsonl file.", "the second record of a jsonl file."]
    (folder / "docs.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in records), encoding="utf-8")
    (folder / "notes.txt.gz").write_bytes(gzip.compress("compressed notes about putting.".encode()))
    gz_records = ["a gzipped record about bunkers.", "a gzipped record about greens."]
    (folder / "more.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"text": r}) + "\n" for r in gz_records).encode()))
    (folder / "image.bin").write_bytes(b"\x89PN\x00\x00\x01binary")
    (folder / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    (folder / ".hidden").write_text("a hidden file is not an input.", encoding="utf-8")
    (folder / ".cache" / "x.md").write_text("nor is a file in a hidden folder.", encoding="utf-8")
    return folder, [*docs.values(), *records, "compressed notes about putting.", *gz_records]


def test_text_corpus_from_a_mixed_folder(tmp_path):
    folder, expected = _mixed_folder(tmp_path)
    warnings = []
    # the README named again on its own is still read once
    corpus = build_text_corpus([folder, folder / "README.md"], "mixed", tmp_path / "data",
                               tokenizer=FINEWEB_SP1024_MODEL, warn=warnings.append)
    used = ["mixed/LICENSE", "mixed/README.md", "mixed/docs.jsonl", "mixed/mod.py", "mixed/more.jsonl.gz",
            "mixed/notes.txt.gz", "mixed/sub/deep.md"]
    assert [f["name"] for f in corpus.fingerprint["files"]] == used
    assert corpus.fingerprint["files"][5]["sha256"] == hashlib.sha256((folder / "notes.txt.gz").read_bytes()).hexdigest()
    assert (corpus.fingerprint["files_used"], corpus.fingerprint["files_skipped"]) == (7, 2)
    meta = json.loads((corpus.directory / "meta.json").read_text())
    assert meta["skipped"] == [
        {"name": "mixed/image.bin", "why": "binary (NUL byte at offset 3)"},
        {"name": "mixed/latin1.txt", "why": "not UTF-8 (invalid byte at offset 3)"},
    ]
    assert warnings == [f"skipped {folder / 'image.bin'}: binary (NUL byte at offset 3)",
                        f"skipped {folder / 'latin1.txt'}: not UTF-8 (invalid byte at offset 3)"]
    sp = spm.SentencePieceProcessor(model_file=str(corpus.tokenizer_path))
    decoded = _split_docs(corpus, "train", sp) + _split_docs(corpus, "val", sp)
    # the FineWeb tokenizer turns the newlines of mod.py into spaces
    assert sorted(decoded) == sorted(" ".join(d.split()) for d in expected)


def test_text_corpus_glob_picks_folder_files(tmp_path):
    folder, _ = _mixed_folder(tmp_path)
    corpus = build_text_corpus([folder], "md", tmp_path / "data", tokenizer=FINEWEB_SP1024_MODEL, globs=["*.md", "LICENSE"])
    assert [f["name"] for f in corpus.fingerprint["files"]] == ["mixed/LICENSE", "mixed/README.md", "mixed/sub/deep.md"]
    assert corpus.fingerprint["files_skipped"] == 0
    with pytest.raises(DataError, match=r"mixed: no files match --glob \*\.rst"):
        build_text_corpus([folder], "rst", tmp_path / "data", globs=["*.rst"])
    with pytest.raises(DataError, match="nope: no such file or folder"):
        build_text_corpus([folder / "nope"], "x", tmp_path / "data")


def test_text_corpus_strict_refuses_what_is_not_text(tmp_path):
    folder, _ = _mixed_folder(tmp_path)
    with pytest.raises(NotTextError, match=r"image\.bin is binary \(NUL byte at offset 3\) \(--strict") as e:
        build_text_corpus([folder], "strict", tmp_path / "data", strict=True)
    assert e.value.exit_code == 1  # a data error, not a recipe error
    (folder / "image.bin").unlink()
    (folder / "broken.txt.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(NotTextError, match=r"broken\.txt\.gz is not valid gzip"):
        build_text_corpus([folder], "strict", tmp_path / "data", strict=True)
    assert not (tmp_path / "data").exists()


# ----------------------------------------------------------------------------- streaming


def _jsonl_docs(count: int = 48) -> list[str]:
    """Mixed-case stdlib text cut into documents of a few KB, with non-ASCII, CRLF and an operator."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(STDLIB.glob("*.py"))[:12])
    return [text[i * 2500 : (i + 1) * 2500] + f"\nTHE END {i}. Ünïcödé ß 👍🏽 \ue001\r\n" for i in range(count)]


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    data = "".join(json.dumps({"text": d, "id": i}, ensure_ascii=i % 2 == 0) + "\n" for i, d in enumerate(docs)).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def test_val_docs_build_streams_a_jsonl_into_the_in_memory_result(tmp_path, monkeypatch):
    """A .jsonl of many batches and shards, built with --val-docs from a stream, gives byte for
    byte the tokenizer and shards of the same documents trained and encoded from lists (what the
    build did before it streamed); the .jsonl.gz of the same lines gives the same shards."""
    import golf_tools.tokenizer as tok
    from golf_tools.tokenizer import encode_split, train_tokenizer

    monkeypatch.setattr(tok, "BATCH_CHARS", 6000)  # ~20 batches
    monkeypatch.setattr(tok, "SHARD_TOKENS", 8000)  # several shards per split
    docs = _jsonl_docs()
    source = _write_jsonl(tmp_path / "docs.jsonl", docs)
    corpus = build_text_corpus([source], "streamed", tmp_path / "data", vocab_size=400, transform=caseops.NAME,
                               val_docs=6, processes=2)

    expected = tmp_path / "in_memory"
    expected.mkdir()
    train_tokenizer(docs[6:], 400, expected / "tokenizer.model", caseops.NAME)
    encode_split(expected / "tokenizer.model", docs[:6], expected, "text", "val", caseops.NAME, sidecar=True)
    encode_split(expected / "tokenizer.model", docs[6:], expected, "text", "train", caseops.NAME)
    names = sorted(p.name for p in expected.iterdir())
    assert len(corpus.train_files) > 3 and len(corpus.val_files) > 1
    assert names == sorted(p.name for p in corpus.directory.iterdir() if p.name != "meta.json")
    for name in names:
        assert (corpus.directory / name).read_bytes() == (expected / name).read_bytes(), name

    meta = json.loads((corpus.directory / "meta.json").read_text())
    assert meta["documents"] == {"val": 6, "train": 42}
    assert meta["bytes"]["val"] == sum(len(d.encode("utf-8")) for d in docs[:6]) == int(load_val_bytes(corpus).sum())
    assert corpus.fingerprint["files"] == [{"name": "docs.jsonl", "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}]
    sp = spm.SentencePieceProcessor(model_file=str(corpus.tokenizer_path))
    assert [caseops.decode(sp.decode(d.tolist())) for d in _documents(load_val_tokens(corpus).numpy())] == docs[:6]

    packed = _write_jsonl(tmp_path / "docs.jsonl.gz", docs)
    again = build_text_corpus([packed], "gz", tmp_path / "data", tokenizer=corpus.tokenizer_path, transform=caseops.NAME,
                              val_docs=6, processes=1)
    for name in names:
        assert (again.directory / name).read_bytes() == (expected / name).read_bytes(), name
    assert again.fingerprint["files"][0]["sha256"] == hashlib.sha256(packed.read_bytes()).hexdigest()


def test_reading_holds_one_document_at_a_time(tmp_path):
    """Scanning a .jsonl and reading its documents again peaks at the same few hundred KB (the
    read buffer and a line) for a 2 MB and an 8 MB file: the peak does not grow with the file."""
    import tracemalloc

    from golf_tools.corpora import read_text_inputs

    line = json.dumps({"text": "a line of a document that is long enough. " * 24}) + "\n"
    peaks = {}
    for megabytes in (2, 8):
        source = tmp_path / f"{megabytes}.jsonl"
        with source.open("w", encoding="utf-8") as f:
            for _ in range(megabytes * 1_000_000 // len(line)):
                f.write(line)
        tracemalloc.start()
        try:
            inputs = read_text_inputs([source])
            chars = sum(len(doc) for doc in inputs.documents())
            peaks[megabytes] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert inputs.num_documents == megabytes * 1_000_000 // len(line) and chars > 0.9 * megabytes * 1_000_000
    assert peaks[8] < 1_000_000 and peaks[8] < peaks[2] + 50_000, peaks


def test_streamed_jsonl_keeps_the_whole_file_verdicts(tmp_path):
    """Read line by line, a file still gets the verdict reading it whole gave: not text beats a
    bad JSON line before it, a NUL byte beats an earlier invalid byte, offsets count from the
    file's start; lines end at "\\n" only; and a file changed between two readings is refused."""
    from golf_tools.corpora import read_text_inputs

    first, latin1 = b'{"text": "fine"}\n', b'{"text": "caf\xe9"}\n'
    cases = {
        "json_then_latin1.jsonl": (first + b"not json\n" + latin1, f"not UTF-8 (invalid byte at offset {17 + 9 + 13})"),
        "latin1_then_nul.jsonl": (first + latin1 + b'{"text": "a\x00"}\n', f"binary (NUL byte at offset {17 + 17 + 11})"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
    inputs = read_text_inputs([tmp_path])
    assert inputs.files == []
    why = {name: reason for name, reason in inputs.skipped}
    for name, (_, reason) in cases.items():
        assert why[f"{tmp_path.name}/{name}"] == why[f"{tmp_path.name}/{name}.gz"] == reason
    (tmp_path / "json_then_latin1.jsonl").write_bytes(first + b"not json\n" + first)
    with pytest.raises(DataError, match=r"json_then_latin1\.jsonl:2: invalid JSON"):
        read_text_inputs([tmp_path / "json_then_latin1.jsonl"])

    separators = tmp_path / "separators.jsonl"  # JSON strings may hold them raw; str.splitlines would split there
    separators.write_text(json.dumps({"text": "a\u2028b\x85c\rd"}, ensure_ascii=False) + "\r\n", encoding="utf-8")
    assert list(read_text_inputs([separators]).documents()) == ["a\u2028b\x85c\rd"]

    notes = tmp_path / "notes.jsonl"
    notes.write_bytes(first * 3)
    inputs = read_text_inputs([notes])
    notes.write_bytes(first * 2 + b'{"text": "edited"}\n')
    with pytest.raises(DataError, match="notes.jsonl changed while the corpus was being built"):
        list(inputs.documents())


# ----------------------------------------------------------------------------- CLI


def test_cli_pystdlib_summary(pystdlib_root):
    result = CliRunner().invoke(golf_app, ["data", "pystdlib", "--root", str(pystdlib_root)])
    assert result.exit_code == 0, result.output
    assert "corpus pystdlib" in result.stdout and "files_sha256" in result.stdout


def test_cli_user_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n", encoding="utf-8")
    result = CliRunner().invoke(golf_app, ["data", "text", str(bad), "--name", "x", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "bad.jsonl:1" in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_cli_text_prints_counts_and_warnings(tmp_path):
    folder, _ = _mixed_folder(tmp_path)
    args = ["text", str(folder), "--name", "mixed", "--root", str(tmp_path / "data"), "--tokenizer", str(FINEWEB_SP1024_MODEL)]
    result = CliRunner().invoke(golf_app, ["data", *args])
    assert result.exit_code == 0, result.output
    assert "files_used: 7" in result.stdout and "files_skipped: 2" in result.stdout
    assert result.stderr.splitlines() == [f"warning: skipped {folder / 'image.bin'}: binary (NUL byte at offset 3)",
                                          f"warning: skipped {folder / 'latin1.txt'}: not UTF-8 (invalid byte at offset 3)"]
    result = CliRunner().invoke(golf_app, ["data", *args, "--glob", "*.py", "--glob", "*.md"])
    assert result.exit_code == 0 and "files_used: 3" in result.stdout and "files_skipped: 0" in result.stdout


def test_cli_text_strict_is_one_line_exit_1(tmp_path):
    folder, _ = _mixed_folder(tmp_path)
    result = CliRunner().invoke(golf_app, ["data", "text", str(folder), "--name", "x", "--root", str(tmp_path / "data"), "--strict"])
    assert result.exit_code == 1  # a data error (not a recipe error)
    assert result.stderr.startswith("error: ") and "image.bin is binary" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_golf_run_builds_a_missing_pystdlib(tmp_path):
    from tests.test_cli import golf, tiny_recipe

    root = tmp_path / "fresh"
    recipe = tiny_recipe(tmp_path, root)
    recipe.write_text(recipe.read_text().replace("iterations = 6", "iterations = 2"))
    golf("run", recipe)
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    built = json.loads((root / "pystdlib" / "meta.json").read_text())
    assert result["data"]["fingerprint"]["files_sha256"] == built["fingerprint"]["files_sha256"]


# ----------------------------------------------------------------------------- CaseOps corpora


def _mixed_case_files(folder: Path, count: int = 24) -> list[Path]:
    """Stdlib modules as text files (their docstrings and names are mixed case), one document each."""
    folder.mkdir()
    files = []
    for path in sorted(STDLIB.glob("*.py"))[:count]:
        files.append(folder / f"{path.stem}.txt")
        files[-1].write_text(path.read_text(encoding="utf-8") + "\nTHE END. Ünïcödé ß İ ǅ 👍🏽\r\n", encoding="utf-8")
    return files


def test_caseops_text_corpus_charges_every_original_byte(tmp_path):
    files = _mixed_case_files(tmp_path / "docs")
    corpus = build_text_corpus(files, "cased", tmp_path / "data", vocab_size=400, transform=caseops.NAME, val_fraction=0.25)
    meta = json.loads((corpus.directory / "meta.json").read_text())
    assert corpus.transform == meta["transform"] == caseops.NAME and meta["fingerprint"]["transform"] == caseops.NAME
    assert [p.name for p in corpus.val_bytes_files] == ["text_val_bytes_000000.bin"]
    sp = spm.SentencePieceProcessor(model_file=str(corpus.tokenizer_path))
    assert all(sp.piece_to_id(op) != sp.unk_id() for op in caseops.OPERATORS)
    val_tokens, val_bytes = load_val_tokens(corpus), load_val_bytes(corpus)
    assert val_bytes.shape == val_tokens.shape and int(val_bytes[val_tokens == sp.bos_id()].sum()) == 0
    docs = [caseops.decode(sp.decode(d.tolist())) for d in _documents(val_tokens.numpy())]
    originals = {f.read_bytes().decode("utf-8") for f in files}
    assert len(docs) == meta["documents"]["val"] == 6 and all(d in originals for d in docs)
    assert int(val_bytes.sum()) == sum(len(d.encode("utf-8")) for d in docs) == meta["bytes"]["val"]
    train = np.concatenate([read_shard(p) for p in corpus.train_files])
    assert (train == sp.bos_id()).sum() == 18 and not (tmp_path / "data" / "text" / "cased" / "text_train_bytes_000000.bin").exists()


def test_existing_tokenizer_must_keep_the_transform_operators(tmp_path):
    files = _mixed_case_files(tmp_path / "docs", 4)
    with pytest.raises(DataError, match="no piece for the caseops_v1 operators U\\+E001"):
        build_text_corpus(files, "x", tmp_path / "data", tokenizer=FINEWEB_SP1024_MODEL, transform=caseops.NAME)


def test_golf_data_tokenizer_command(tmp_path):
    files = _mixed_case_files(tmp_path / "docs", 12)
    result = CliRunner().invoke(golf_app, [
        "data", "tokenizer", str(tmp_path / "docs"), "--vocab-size", "400", "--name", "t", "--caseops",
        "--val-docs", "2", "--processes", "2", "--root", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert "12 documents" in result.output and "documents/s" in result.output and "tokens/s" in result.output
    corpus = resolve_corpus(DataSection(corpus="text:t", root=str(tmp_path / "data")))
    sp = spm.SentencePieceProcessor(model_file=str(corpus.tokenizer_path))
    val = [caseops.decode(sp.decode(d.tolist())) for d in _documents(load_val_tokens(corpus).numpy())]
    assert val == [f.read_bytes().decode("utf-8") for f in sorted(files)[:2]]  # --val-docs: the first documents, in order
    assert sp.vocab_size() == corpus.vocab_size == 400 and corpus.val_bytes_files


@pytest.mark.slow
def test_golf_run_on_a_caseops_corpus_charges_the_sidecar(tmp_path):
    from tests.test_cli import golf, tiny_recipe

    root = tmp_path / "data"
    build_text_corpus(_mixed_case_files(tmp_path / "docs"), "cased", root, vocab_size=400, transform=caseops.NAME,
                      val_fraction=0.25)
    recipe = tiny_recipe(tmp_path, root)
    recipe.write_text(recipe.read_text().replace("iterations = 6", "iterations = 2").replace(
        'root = "', 'corpus = "text:cased"\nroot = "').replace("[model]\n", "[model]\nvocab_size = 400\n"))
    golf("run", recipe)
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = json.loads((run_dir / "result.json").read_text())
    corpus = resolve_corpus(DataSection(corpus="text:cased", root=str(root)))
    record = result["compliance"]["data"]
    assert record["bytes"] == "sidecar" and record["transform"] == caseops.NAME and record["corpus"] == "text:cased"
    stage = result["stages"][result["final_stage"]]
    assert stage["bytes"] == int(load_val_bytes(corpus, 4096)[1:].sum()) and stage["checks"]["bytes_from"] == "sidecar"
    assert "bytes from the sidecar" in (run_dir / "log.txt").read_text()
