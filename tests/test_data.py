"""golfcore.data: shard format, loader, validation tokens, and resolving built corpora."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from golfcore.config import DataSection
from golfcore.data import (
    HEADER_INTS,
    PYSTDLIB_BUILDER,
    SHARD_MAGIC,
    SHARD_VERSION,
    DistributedTokenLoader,
    SpecialTokens,
    TokenStream,
    load_val_bytes,
    load_val_tokens,
    open_corpus,
    open_shard_folder,
    read_shard,
    resolve_corpus,
    shard_files,
    sidecar_name,
    write_shard,
)
from golfcore.errors import ConfigError, DataError
from golfcore.files import sha256_file


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


# ----------------------------------------------------------------------------- resolving corpora


def test_resolve_pystdlib_limits_shards(pystdlib_root):
    meta = pystdlib_root / "pystdlib" / "meta.json"
    before = meta.stat().st_mtime_ns
    corpus = resolve_corpus(DataSection(corpus="pystdlib", root=str(pystdlib_root), max_train_shards=1))
    assert meta.stat().st_mtime_ns == before
    assert len(corpus.train_files) == 1 and corpus.fingerprint["train_shards_used"] == 1
    assert corpus.fingerprint["python"] == platform.python_version()
    assert corpus.fingerprint["builder"] == PYSTDLIB_BUILDER
    val = load_val_tokens(corpus, max_targets=1000)
    assert val.dtype == torch.int64 and val.shape == (1001,)
    assert torch.equal(load_val_tokens(corpus), torch.from_numpy(read_shard(corpus.val_files[0]).astype(np.int64)))


def test_resolve_never_builds(tmp_path):
    with pytest.raises(DataError, match=r"pystdlib is not built at .*; build it with: golf data pystdlib --force --root"):
        resolve_corpus(DataSection(corpus="pystdlib", root=str(tmp_path)))
    assert list(tmp_path.iterdir()) == []


def test_resolve_refuses_stale_pystdlib(pystdlib_root, tmp_path):
    shutil.copytree(pystdlib_root / "pystdlib", tmp_path / "pystdlib")
    meta = json.loads((tmp_path / "pystdlib" / "meta.json").read_text())
    meta["fingerprint"]["builder"] = 0
    (tmp_path / "pystdlib" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="stale.*golf data pystdlib --force --root"):
        resolve_corpus(DataSection(corpus="pystdlib", root=str(tmp_path)))


def test_resolve_refuses_incomplete_corpus(pystdlib_root, tmp_path):
    shutil.copytree(pystdlib_root / "pystdlib", tmp_path / "pystdlib")
    (tmp_path / "pystdlib" / "pystdlib_val_000000.bin").unlink()
    with pytest.raises(DataError, match=r"incomplete: .*pystdlib_val_000000\.bin is missing; build it again with: golf data pystdlib"):
        resolve_corpus(DataSection(corpus="pystdlib", root=str(tmp_path)))


def test_missing_fineweb_names_the_fetch_command(tmp_path):
    with pytest.raises(DataError) as e:
        resolve_corpus(DataSection(corpus="fineweb10B_sp1024", root=str(tmp_path)))
    assert "golf data fineweb --variant sp1024 --train-shards 1" in str(e.value)
    with pytest.raises(DataError) as e:
        resolve_corpus(DataSection(corpus="fineweb10B_sp1024"))
    assert str(e.value).endswith("golf data fineweb --variant sp1024 --train-shards 1")


def test_missing_text_corpus_and_unknown_corpus(tmp_path):
    with pytest.raises(DataError, match=f"text:notes is not built at {tmp_path}/text/notes; build it with: golf data text FILES... --name notes --root"):
        resolve_corpus(DataSection(corpus="text:notes", root=str(tmp_path)))
    for name in ("wikipedia", "text:"):
        with pytest.raises(DataError, match="unknown corpus"):
            resolve_corpus(DataSection(corpus=name, root=str(tmp_path)))


def test_shard_folder_without_meta_json(tmp_path, pystdlib_root):
    built = pystdlib_root / "pystdlib"
    folder = tmp_path / "shards"
    folder.mkdir()
    for path in shard_files(built, "train")[:2] + shard_files(built, "val"):
        (folder / path.name.replace("pystdlib_", "fineweb_")).symlink_to(path)
    data = DataSection(corpus="fineweb10B_sp1024", shards=str(folder), tokenizer=str(built / "tokenizer.model"))
    corpus = resolve_corpus(data)
    assert [p.name for p in corpus.train_files] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert corpus.vocab_size == 1024 and corpus.name == "fineweb10B_sp1024"
    assert corpus.fingerprint["tokenizer_sha256"] == sha256_file(built / "tokenizer.model")
    assert load_val_tokens(corpus).numel() == sum(read_shard(p).size for p in shard_files(built, "val"))


@pytest.mark.parametrize("what, message", [
    ("no folder", "DATA_PATH={folder}: not a folder"),
    ("no val", "DATA_PATH={folder}: no val shards"),
    ("no tokenizer", "TOKENIZER_PATH={tokenizer}: not a file"),
    ("bad tokenizer", "TOKENIZER_PATH={tokenizer}: not a sentencepiece model"),
])
def test_shard_folder_errors_name_the_path_and_its_setting(tmp_path, what, message):
    folder, tokenizer = tmp_path / "shards", tmp_path / "tok.model"
    if what != "no folder":
        folder.mkdir()
        write_shard(folder / "fineweb_train_000000.bin", np.arange(10))
    if what not in ("no folder", "no val"):
        write_shard(folder / "fineweb_val_000000.bin", np.arange(10))
    if what == "bad tokenizer":
        tokenizer.write_bytes(b"not a model")
    with pytest.raises(DataError) as e:
        open_shard_folder("fineweb10B_sp1024", folder, tokenizer, 0, "DATA_PATH", "TOKENIZER_PATH")
    assert str(e.value).startswith(message.format(folder=folder, tokenizer=tokenizer))


def test_shards_and_tokenizer_go_together():
    with pytest.raises(ConfigError, match="shards and tokenizer are set together"):
        DataSection(shards="x").check()


# ----------------------------------------------------------------------------- tokenizers and sidecars


def test_special_tokens_are_read_from_the_tokenizer(tmp_path):
    import io

    import sentencepiece as spm

    from golfcore.assets import FINEWEB_SP1024_MODEL

    fineweb = SpecialTokens.of(spm.SentencePieceProcessor(model_file=str(FINEWEB_SP1024_MODEL)))
    assert fineweb == SpecialTokens(bos_id=1, eos_id=2, unk_id=3, pad_id=0, control_ids=(0, 1, 2))
    model = io.BytesIO()  # a tokenizer whose BOS is not 1
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["abc abd abe " * 50] * 20), model_writer=model, vocab_size=30, hard_vocab_limit=False,
                                   unk_id=0, eos_id=1, pad_id=2, bos_id=5, user_defined_symbols=["x", "y"], minloglevel=2)
    other = SpecialTokens.of(spm.SentencePieceProcessor(model_proto=model.getvalue()))
    assert (other.bos_id, other.eos_id, other.unk_id, other.pad_id, other.control_ids) == (5, 1, 0, 2, (1, 2, 5))


def _sidecar_corpus(tmp_path, val_sizes=(5, 4), sidecars=True):
    """A meta.json corpus of val shards with byte sidecars (entry j: token j's bytes), transform caseops_v1."""
    import sentencepiece  # noqa: F401  (the tokenizer file is only checked for presence here)

    from golfcore.assets import FINEWEB_SP1024_MODEL

    d = tmp_path / "c"
    d.mkdir()
    shutil.copyfile(FINEWEB_SP1024_MODEL, d / "tokenizer.model")
    write_shard(d / "c_train_000000.bin", np.arange(1, 20))
    names = []
    for i, n in enumerate(val_sizes):
        names.append(f"c_val_{i:06d}.bin")
        write_shard(d / names[-1], np.arange(1, n + 1))
        if sidecars:
            write_shard(d / sidecar_name(names[-1]), np.arange(n) % 3 + 10 * i)
    meta = {"name": "c", "vocab_size": 1024, "transform": "caseops_v1", "fingerprint": {}, "train_files": ["c_train_000000.bin"],
            "val_files": names, "val_bytes_files": [sidecar_name(n) for n in names] if sidecars else []}
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def test_val_bytes_follow_the_val_tokens(tmp_path):
    assert sidecar_name("fineweb_val_000003.bin") == "fineweb_val_bytes_000003.bin"
    corpus = open_corpus("c", _sidecar_corpus(tmp_path), 0, "rebuild it")
    assert corpus.transform == "caseops_v1" and corpus.record()["bytes"] == "sidecar"
    assert load_val_bytes(corpus).tolist() == [0, 1, 2, 0, 1, 10, 11, 12, 10]
    assert load_val_bytes(corpus, max_targets=5).tolist() == [0, 1, 2, 0, 1, 10]
    assert load_val_bytes(corpus).shape == load_val_tokens(corpus).shape
    write_shard(corpus.val_bytes_files[1], np.arange(3))
    with pytest.raises(DataError, match="c_val_bytes_000001.bin has 3 entries for the 4 tokens of c_val_000001.bin"):
        load_val_bytes(corpus)


def test_transformed_corpus_without_sidecars_is_refused(tmp_path):
    with pytest.raises(DataError, match="built through the caseops_v1 transform but has 0 byte sidecars for 2 val shards; rebuild it"):
        open_corpus("c", _sidecar_corpus(tmp_path, sidecars=False), 0, "rebuild it")


@pytest.mark.parametrize("corpus, command", [
    ("fineweb10B_sp8192", "golf data fineweb --variant sp8192 --train-shards 1"),
    ("fineweb10B_sp4096", "golf data fineweb --variant sp4096 --train-shards 1"),
    ("fineweb10B_sp8192_caseops", "golf data fineweb --variant sp8192_caseops --train-shards 1"),
    ("pystdlib_caseops", "golf data pystdlib --caseops --force"),
])
def test_corpora_by_name_say_how_to_get_them(tmp_path, corpus, command):
    DataSection(corpus=corpus).check()
    with pytest.raises(DataError) as e:
        resolve_corpus(DataSection(corpus=corpus, root=str(tmp_path)))
    assert str(e.value).startswith(f"corpus {corpus} is not") and command in str(e.value)


@pytest.mark.parametrize("corpus", ["fineweb10B_spx", "fineweb10B_sp8192_lower", "wikipedia"])
def test_unknown_corpus_names_are_a_config_error(corpus):
    with pytest.raises(ConfigError, match="unknown corpus"):
        DataSection(corpus=corpus).check()
