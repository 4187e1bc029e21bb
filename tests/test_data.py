"""golfcore.data: shard format, loader, the three corpora, and the `golf data` commands."""

from __future__ import annotations

import json
import platform
import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from huggingface_hub.utils import EntryNotFoundError
from typer.testing import CliRunner

from cli.data_cmd import app as data_app
from golfcore.config import DataSection
from golfcore.data import (
    BOS_ID,
    HEADER_INTS,
    SHARD_MAGIC,
    SHARD_VERSION,
    DistributedTokenLoader,
    TokenStream,
    build_pystdlib,
    build_text_corpus,
    download_fineweb,
    load_val_tokens,
    read_shard,
    resolve_corpus,
    shard_files,
    write_shard,
)
from golfcore.errors import ConfigError, DataError

FINEWEB_TOKENIZER = Path("/work/shared/data/fineweb_1024_bpe.model")
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _documents(tokens: np.ndarray) -> list[np.ndarray]:
    """Split a BOS-led token stream (n,) into documents (each without its BOS)."""
    starts = np.flatnonzero(tokens == BOS_ID)
    assert starts.size and starts[0] == 0, "stream must start with BOS"
    return [tokens[s + 1 : e] for s, e in zip(starts, [*starts[1:], tokens.size])]


def _split_docs(corpus, split: str, sp) -> list[str]:
    files = corpus.train_files if split == "train" else corpus.val_files
    return [sp.decode(d.tolist()) for d in _documents(np.concatenate([read_shard(f) for f in files]))]


# ----------------------------------------------------------------------------- shard format


def test_shard_round_trip(tmp_path):
    tokens = np.array([0, 1, 2, 1023, 65535], dtype=np.uint16)
    path = tmp_path / "x_train_000000.bin"
    write_shard(path, tokens)
    assert path.stat().st_size == HEADER_INTS * 4 + 2 * tokens.size
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    assert header[:3].tolist() == [SHARD_MAGIC, SHARD_VERSION, tokens.size] and not header[3:].any()
    out = read_shard(path)
    assert out.dtype == np.uint16 and out.tolist() == tokens.tolist()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    with pytest.raises(ValueError):
        write_shard(path, np.array([70000]))


def _corrupt(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    header = np.frombuffer(raw[: HEADER_INTS * 4], dtype="<i4").copy()
    if how == "magic":
        header[0] = 12345
    elif how == "version":
        header[1] = 7
    if how in ("magic", "version"):
        raw[: HEADER_INTS * 4] = header.tobytes()
    elif how == "truncated":
        raw = raw[:-3]
    elif how == "extra":
        raw += b"\0\0"
    elif how == "short_header":
        raw = raw[:100]
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "how, words",
    [("magic", "bad magic"), ("version", "version"), ("truncated", "truncated"), ("extra", "extra bytes"), ("short_header", "truncated")],
)
def test_read_shard_rejects_malformed(tmp_path, how, words):
    path = tmp_path / "bad_val_000000.bin"
    write_shard(path, np.arange(100, dtype=np.uint16))
    _corrupt(path, how)
    with pytest.raises(DataError, match=words) as e:
        read_shard(path)
    assert "bad_val_000000.bin" in str(e.value)


def test_truncated_later_shard_is_named_before_training(tmp_path):
    files = [tmp_path / f"t_train_00000{i}.bin" for i in range(3)]
    for path in files:
        write_shard(path, np.arange(100, dtype=np.uint16))
    _corrupt(files[2], "truncated")
    with pytest.raises(DataError, match="t_train_000002.bin is truncated"):
        TokenStream(files)  # the third shard would only be read after 200 tokens


def test_read_shard_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope_val_000000.bin"):
        read_shard(tmp_path / "nope_val_000000.bin")


def test_shard_files_naming(tmp_path):
    names = [
        "a_train_000001.bin", "a_train_000000.bin", "a_val_000000.bin", "fineweb_train_000010.bin",
        "train_000000.bin", "a_train_1.bin", "a_train_0000001.bin", "a_train_000002.bin.tmp",
        "a_train_000003.txt", "notes.bin", "a_test_000000.bin",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in shard_files(tmp_path, "train")] == ["a_train_000000.bin", "a_train_000001.bin", "fineweb_train_000010.bin"]
    assert [p.name for p in shard_files(tmp_path, "val")] == ["a_val_000000.bin"]
    assert shard_files(tmp_path / "missing", "train") == []


# ----------------------------------------------------------------------------- loader


@pytest.fixture
def three_shards(tmp_path) -> tuple[list[Path], np.ndarray]:
    """Shards of 50, 7 and 43 distinct tokens, and their concatenation (100,)."""
    sizes = [50, 7, 43]
    stream = np.arange(sum(sizes), dtype=np.uint16) + 2
    files, start = [], 0
    for i, n in enumerate(sizes):
        files.append(tmp_path / f"t_train_{i:06d}.bin")
        write_shard(files[-1], stream[start : start + n])
        start += n
    return files, stream


def test_loader_exact_sequence_and_shapes(three_shards):
    files, stream = three_shards
    loader = DistributedTokenLoader(files, 0, 1, torch.device("cpu"))
    x, y = loader.next_batch(global_tokens=16, seq_len=4, micro_batches_per_rank=2)  # 8 tokens + 1
    assert x.shape == y.shape == (2, 4) and x.dtype == y.dtype == torch.int64
    assert x.flatten().tolist() == stream[0:8].tolist() and y.flatten().tolist() == stream[1:9].tolist()
    x, _ = loader.next_batch(16, 4, 2)
    assert x.flatten().tolist() == stream[9:17].tolist()


def test_loader_ranks_partition_the_chunk(three_shards):
    files, stream = three_shards
    world = 3
    loaders = [DistributedTokenLoader(files, r, world, torch.device("cpu")) for r in range(world)]
    span = 8 + 1  # global 24 over 3 ranks x 1 micro-batch, plus the target of the last input
    for step in range(2):
        spans = []
        for loader in loaders:
            x, y = loader.next_batch(global_tokens=24, seq_len=4, micro_batches_per_rank=1)
            assert x.shape == (2, 4)
            assert torch.equal(x.flatten()[1:], y.flatten()[:-1])
            spans.append(torch.cat([x.flatten(), y.flatten()[-1:]]).tolist())
        chunk = stream[step * world * span : (step + 1) * world * span].tolist()
        assert sum(spans, []) == chunk  # rank r holds span r: disjoint, in order, covering the chunk


def test_loader_wraps_around_and_rewinds(three_shards):
    files, stream = three_shards
    stream_twice = np.concatenate([stream, stream, stream])
    loader = DistributedTokenLoader(files, 0, 1, torch.device("cpu"))
    loader.next_batch(32, 8, 1)
    state = loader.state()
    got = [loader.next_batch(32, 8, 1)[0].flatten() for _ in range(6)]  # 6 * 33 tokens: crosses the end twice
    for i, x in enumerate(got):
        start = 33 * (i + 1)
        assert x.tolist() == stream_twice[start : start + 32].tolist()
    loader.restore(state)
    assert torch.equal(loader.next_batch(32, 8, 1)[0].flatten(), got[0])
    loader.reset()
    assert loader.next_batch(32, 8, 1)[0].flatten().tolist() == stream[:32].tolist()


def test_loader_rejects_bad_batch_geometry(three_shards):
    loader = DistributedTokenLoader(three_shards[0], 0, 2, torch.device("cpu"))
    with pytest.raises(ConfigError, match="seq_len"):
        loader.next_batch(global_tokens=20, seq_len=4, micro_batches_per_rank=1)  # 10 per rank


def test_token_stream_all_empty_shards(tmp_path):
    write_shard(tmp_path / "e_train_000000.bin", np.zeros(0, dtype=np.uint16))
    with pytest.raises(DataError, match="empty"):
        TokenStream([tmp_path / "e_train_000000.bin"]).take(4)


# ----------------------------------------------------------------------------- pystdlib


def test_pystdlib_is_deterministic(pystdlib_root, tmp_path):
    again = build_pystdlib(tmp_path)
    first = pystdlib_root / "pystdlib"
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


def test_pystdlib_documents_round_trip(pystdlib_root):
    """Every document starts with BOS and decodes back to its source file exactly."""
    corpus = resolve_corpus(DataSection(corpus="pystdlib", root=str(pystdlib_root)), build_missing=False)
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


def test_resolve_pystdlib_reuses_build_and_limits_shards(pystdlib_root):
    meta = pystdlib_root / "pystdlib" / "meta.json"
    before = meta.stat().st_mtime_ns
    corpus = resolve_corpus(DataSection(corpus="pystdlib", root=str(pystdlib_root), max_train_shards=1))
    assert meta.stat().st_mtime_ns == before
    assert len(corpus.train_files) == 1 and corpus.fingerprint["train_shards_used"] == 1
    assert corpus.fingerprint["python"] == platform.python_version()
    val = load_val_tokens(corpus, max_targets=1000)
    assert val.dtype == torch.int64 and val.shape == (1001,)
    assert torch.equal(load_val_tokens(corpus), torch.from_numpy(read_shard(corpus.val_files[0]).astype(np.int64)))


def test_resolve_pystdlib_not_built(tmp_path):
    with pytest.raises(DataError, match="golf data pystdlib"):
        resolve_corpus(DataSection(corpus="pystdlib", root=str(tmp_path)), build_missing=False)


def test_resolve_pystdlib_stale_build(pystdlib_root, tmp_path):
    shutil.copytree(pystdlib_root / "pystdlib", tmp_path / "pystdlib")
    meta = json.loads((tmp_path / "pystdlib" / "meta.json").read_text())
    meta["fingerprint"]["builder"] = 0
    (tmp_path / "pystdlib" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="stale.*golf data pystdlib --force --root"):
        resolve_corpus(DataSection(corpus="pystdlib", root=str(tmp_path)), build_missing=False)


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("golfcore.data._encode_split", fail)
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
    corpus = build_text_corpus(files, "demo", tmp_path / "data", tokenizer=FINEWEB_TOKENIZER, val_fraction=0.1)
    assert corpus.directory == tmp_path / "data" / "text" / "demo"
    assert [p.name for p in corpus.train_files] == ["text_train_000000.bin"]
    assert [p.name for p in corpus.val_files] == ["text_val_000000.bin"]
    assert corpus.tokenizer_path.read_bytes() == FINEWEB_TOKENIZER.read_bytes()
    sp = spm.SentencePieceProcessor(model_file=str(corpus.tokenizer_path))
    train, val = _split_docs(corpus, "train", sp), _split_docs(corpus, "val", sp)
    assert len(val) == 3 and sorted(train + val) == sorted(docs)
    assert corpus.fingerprint["files"][0]["name"] == "doc0.txt" and len(corpus.fingerprint["files"]) == 11
    resolved = resolve_corpus(DataSection(corpus="text:demo", root=str(tmp_path / "data")))
    assert resolved.train_files == corpus.train_files and resolved.name == "text:demo"
    # the split does not depend on the order the files are given in
    again = build_text_corpus(files[::-1], "demo2", tmp_path / "data", tokenizer=FINEWEB_TOKENIZER, val_fraction=0.1)
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


# ----------------------------------------------------------------------------- FineWeb download

PREFIX = "matched_10B_docs2m_seed1337"


def _fake_hub(tmp_path: Path, first_train: int, manifest: dict | None = None) -> Path:
    """The published export's layout with tiny shards: 1 val shard, 3 train shards."""
    hub = tmp_path / "hub"
    data = hub / PREFIX / "datasets" / "fineweb10B_sp1024"
    tok = hub / PREFIX / "tokenizers"
    data.mkdir(parents=True)
    tok.mkdir()
    rng = np.random.default_rng(0)
    write_shard(data / "fineweb_val_000000.bin", rng.integers(1, 1024, 300, dtype=np.uint16))
    for i in range(first_train, first_train + 3):
        write_shard(data / f"fineweb_train_{i:06d}.bin", rng.integers(1, 1024, 200 + i, dtype=np.uint16))
    shutil.copyfile(FINEWEB_TOKENIZER, tok / "fineweb_1024_bpe.model")
    shutil.copyfile(FINEWEB_TOKENIZER.with_suffix(".vocab"), tok / "fineweb_1024_bpe.vocab")
    if manifest is None:
        manifest = {
            "datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024", "stats": {"files_train": 3, "files_val": 1}}],
            "tokenizers": [{"name": "sp_bpe_1024", "model_path": "tokenizers/fineweb_1024_bpe.model", "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"}],
        }
    (hub / PREFIX / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return hub


class FakeDownload:
    """hf_hub_download over a local folder: same keywords, saves <local_dir>/<filename>."""

    def __init__(self, hub: Path):
        self.hub, self.calls = hub, []

    def __call__(self, repo_id, filename, *, repo_type=None, local_dir=None, **kwargs):
        assert repo_id == "willdepueoai/parameter-golf" and repo_type == "dataset" and local_dir
        self.calls.append(filename)
        source = self.hub / filename
        if not source.is_file():
            raise EntryNotFoundError(f"404 Client Error: Entry Not Found for url: .../{filename}")
        dest = Path(local_dir) / filename
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        return str(dest)


@pytest.mark.parametrize("first_train", [1, 0])
def test_fineweb_download_against_fake_hub(tmp_path, first_train):
    hub = _fake_hub(tmp_path, first_train)
    fake = FakeDownload(hub)
    root = tmp_path / "data"
    corpus = download_fineweb(root, train_shards=2, download=fake)
    names = [f"fineweb_train_{i:06d}.bin" for i in range(first_train, first_train + 3)]
    assert [p.name for p in corpus.train_files] == names[:2]
    assert [p.name for p in corpus.val_files] == ["fineweb_val_000000.bin"]
    assert corpus.tokenizer_path == root / "fineweb10B_sp1024" / "tokenizer.model"
    assert corpus.tokenizer_path.read_bytes() == FINEWEB_TOKENIZER.read_bytes() and corpus.vocab_size == 1024
    assert corpus.fingerprint["train_shards"] == names[:2] and corpus.fingerprint["repo_id"] == "willdepueoai/parameter-golf"
    assert not (root / "fineweb10B_sp1024" / ".download").exists()

    resolved = resolve_corpus(DataSection(corpus="fineweb10B_sp1024", root=str(root)))
    assert resolved.train_files == corpus.train_files
    val = load_val_tokens(resolved)
    assert val.tolist() == read_shard(hub / PREFIX / "datasets" / "fineweb10B_sp1024" / "fineweb_val_000000.bin").tolist()
    x, _ = DistributedTokenLoader(resolved.train_files, 0, 1, torch.device("cpu")).next_batch(64, 16, 1)
    assert x.shape == (4, 16)

    fake.calls.clear()
    corpus = download_fineweb(root, train_shards=3, download=fake)  # only the new shard is fetched
    assert fake.calls == [f"{PREFIX}/datasets/fineweb10B_sp1024/{names[2]}"]
    assert [p.name for p in corpus.train_files] == names


def test_fineweb_refuses_shards_beyond_manifest(tmp_path):
    fake = FakeDownload(_fake_hub(tmp_path, 1))
    with pytest.raises(DataError, match="only 3 train shards.*requested 4"):
        download_fineweb(tmp_path / "data", train_shards=4, download=fake)
    assert fake.calls == [f"{PREFIX}/manifest.json"]


def test_fineweb_manifest_without_entry_uses_known_counts(tmp_path):
    fake = FakeDownload(_fake_hub(tmp_path, 1, manifest={"note": "no dataset entries"}))
    with pytest.raises(DataError, match="only 25 train shards"):
        download_fineweb(tmp_path / "data", train_shards=26, download=fake)
    assert download_fineweb(tmp_path / "data", train_shards=1, download=fake).vocab_size == 1024


def test_fineweb_download_failure_is_one_line(tmp_path):
    def offline(**kwargs):
        raise ConnectionError("Name or service not known\nmore detail")

    with pytest.raises(DataError, match="manifest.json.*failed: ConnectionError: Name or service not known$"):
        download_fineweb(tmp_path / "data", download=offline)
    assert not (tmp_path / "data" / "fineweb10B_sp1024" / ".download").exists()
    with pytest.raises(DataError, match="golf data fineweb --variant sp1024 --train-shards 1"):
        resolve_corpus(DataSection(corpus="fineweb10B_sp1024", root=str(tmp_path / "data")))


def test_missing_fineweb_names_the_fetch_command(tmp_path):
    with pytest.raises(DataError) as e:
        resolve_corpus(DataSection(corpus="fineweb10B_sp1024", root=str(tmp_path)))
    assert "golf data fineweb --variant sp1024 --train-shards 1" in str(e.value)
    with pytest.raises(DataError) as e:
        resolve_corpus(DataSection(corpus="fineweb10B_sp1024"))
    assert str(e.value).endswith("golf data fineweb --variant sp1024 --train-shards 1")


# ----------------------------------------------------------------------------- CLI


def test_cli_pystdlib_summary(pystdlib_root):
    result = CliRunner().invoke(data_app, ["pystdlib", "--root", str(pystdlib_root)])
    assert result.exit_code == 0, result.output
    assert "corpus pystdlib" in result.stdout and "files_sha256" in result.stdout


def test_cli_user_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n", encoding="utf-8")
    result = CliRunner().invoke(data_app, ["text", str(bad), "--name", "x", "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "bad.jsonl:1" in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
