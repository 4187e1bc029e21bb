"""golf_tools.tokenizer and the byte proofs: every original byte is charged to exactly one token,
through plain sentencepiece tokenizers (the eval's byte table and the sidecar agree) and through
CaseOps (the sidecar); the two voided records' byte bugs fail these proofs."""

from __future__ import annotations

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st

from golf_tools.tokenizer import ShardWriter, charged_bytes, encode_split, piece_bytes
from golfcore import caseops
from golfcore.assets import FINEWEB_SP1024_MODEL
from golfcore.data import read_shard, shard_files, sidecar_name
from golfcore.errors import DataError
from golfcore.eval import ByteLUTs, build_byte_luts

from ..byte_proofs import ADVERSARIAL, ADVERSARIAL_IDS, Charged, Tokenizer, table_bytes, train

SPACE = "\u2581"


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Byte-fallback BPEs trained on the same stdlib text: plain at 400, 4096 and 8192 pieces
    (the SP4096/SP8192 sizes), and a 400-piece CaseOps one (its operators reserved)."""
    d = tmp_path_factory.mktemp("tokenizers")
    return {"sp400": train(d, 400), "sp4096": train(d, 4096), "sp8192": train(d, 8192),
            "caseops400": train(d, 400, caseops.NAME)}


def prove(tok: Tokenizer, text: str, transform: str = "") -> Charged:
    """The byte proof for one document; returns what it measured."""
    sp = tok.sp
    c = Charged(tok, text, transform)
    assert c.decoded == text.replace(SPACE, " ")  # sentencepiece decodes its own space marker as a space
    assert sum(c.charges) == len(text.encode("utf-8"))
    assert all(n == 1 for i, n in zip(c.ids, c.charges) if sp.is_byte(i))  # byte-fallback: its one byte
    assert not any(sp.is_unknown(i) for i in c.ids)
    if transform:  # an operator piece is charged 0, unless ESC made it a literal character
        pieces = [sp.id_to_piece(i) for i in c.ids]
        assert all(n == 0 for k, (p, n) in enumerate(zip(pieces, c.charges))
                   if p in caseops.OPERATORS and not (k and pieces[k - 1] == caseops.ESC and c.charges[k - 1] == 0))
    elif SPACE not in text:  # the eval's byte table charges each token exactly what the proof does
        assert table_bytes(tok.luts, sp.bos_id(), c.ids) == c.charges
    return c


@pytest.mark.parametrize("name", ["sp400", "sp4096", "sp8192"])
@pytest.mark.parametrize("text", ADVERSARIAL, ids=ADVERSARIAL_IDS)
def test_plain_tokenizers_charge_adversarial_strings_exactly(tokenizers, name, text):
    prove(tokenizers[name], text)


@pytest.mark.parametrize("text", ADVERSARIAL, ids=ADVERSARIAL_IDS)
def test_caseops_charges_adversarial_strings_exactly(tokenizers, text):
    c = prove(tokenizers["caseops400"], text, caseops.NAME)
    assert c.decoded == text.replace(SPACE, " ")


def test_caseops_tokenizer_keeps_operators_whole(tokenizers):
    sp = tokenizers["caseops400"].sp
    assert all(sp.piece_to_id(op) != sp.unk_id() for op in caseops.OPERATORS)
    c = Charged(tokenizers["caseops400"], "The NASA iPhone", caseops.NAME)
    assert [sp.id_to_piece(i) for i in c.ids].count(caseops.TITLE) == 1  # a piece of its own, charged 0
    assert sum(c.charges) == len("The NASA iPhone")


TEXT = st.text(st.characters(codec="utf-8"), max_size=60) | st.text(st.sampled_from([*"aZ Qé\n\r\t▁x1漢👍", *caseops.OPERATORS]), max_size=60)


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_plain_charges_any_text_exactly(tokenizers, text):
    prove(tokenizers["sp400"], text)


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_caseops_charges_any_text_exactly(tokenizers, text):
    prove(tokenizers["caseops400"], text, caseops.NAME)


def test_sp1024_fineweb_tokenizer_charges_what_it_covers(tokenizers):
    """The challenge's own tokenizer (no byte fallback): its table charges exactly the text it
    covers, and an uncovered character becomes <unk>, charged 0 bytes as the challenge does."""
    sp = spm.SentencePieceProcessor(model_file=str(FINEWEB_SP1024_MODEL))
    luts = build_byte_luts(sp, 1024)
    english = ["The quick brown fox jumps over the lazy dog.", "It's 10:45, isn't it?", "Bits per byte, not per token."]
    covered = [t for t in [*ADVERSARIAL, *english] if sp.decode(sp.encode(t)) == t and sp.unk_id() not in sp.encode(t)]
    assert len(covered) >= 6
    for text in covered:
        assert sum(table_bytes(luts, sp.bos_id(), sp.encode(text))) == len(text.encode("utf-8")), text
    ids = sp.encode("a 漢 b")  # <unk> charged 0; as a boundary it also drops the next piece's space (the challenge's rule)
    assert sp.unk_id() in ids and table_bytes(luts, sp.bos_id(), ids) == [1, 1, 0, 1]


# ----------------------------------------------------------------------------- regressions


def _scylla_table(sp) -> ByteLUTs:
    """PR #1184's accounting (the removed Scylla record): byte-fallback tokens charged 3 bytes."""
    luts = build_byte_luts(sp, sp.vocab_size())
    base = luts.base_bytes.clone()
    base[[i for i in range(sp.get_piece_size()) if sp.is_byte(i)]] = 3
    return ByteLUTs(base, luts.has_leading_space, luts.is_boundary)


def _double_space_table(sp) -> ByteLUTs:
    """PR #1734's accounting (voided): a piece's leading "▁" counted in its bytes and again as
    the conditional space."""
    luts = build_byte_luts(sp, sp.vocab_size())
    base = luts.base_bytes.clone()
    for i in range(sp.get_piece_size()):
        if not luts.is_boundary[i] and not sp.is_byte(i):
            base[i] = len(sp.id_to_piece(i).replace(SPACE, " ").encode("utf-8"))
    return ByteLUTs(base, luts.has_leading_space, luts.is_boundary)


REGRESSIONS = {
    "scylla byte fallback": (_scylla_table, "naïve café: 漢字 ☃ 👍🏽 ∑ x² ÷ y"),
    "double leading space": (_double_space_table, "The quick brown fox jumps over the lazy dog.\n    return value"),
}


@pytest.mark.parametrize("bug", REGRESSIONS)
def test_voided_records_byte_bugs_fail_the_proof(tokenizers, bug):
    """The proof on a deliberately wrong table fails (the count differs from the text's bytes);
    on golf's table it holds."""
    wrong_table, text = REGRESSIONS[bug]
    tok = tokenizers["sp400"]
    sp = tok.sp
    ids = sp.encode(text)
    true_bytes = len(text.encode("utf-8"))
    golf = sum(table_bytes(tok.luts, sp.bos_id(), ids))
    wrong = sum(table_bytes(wrong_table(sp), sp.bos_id(), ids))
    assert golf == true_bytes == sum(Charged(tok, text).charges)
    assert wrong > true_bytes  # the voided records' scores were optimistic: too many bytes


# ----------------------------------------------------------------------------- charged_bytes, shards


def test_charged_bytes_by_hand():
    # "Hé" through CaseOps: TITLE h é -> tokens [TITLE], [h], [0xC3], [0xA9]
    pieces = [caseops.TITLE.encode(), b"h", b"\xc3", b"\xa9"]
    assert charged_bytes(pieces, f"{caseops.TITLE}hé", caseops.NAME) == [0, 1, 1, 1]
    assert charged_bytes([b"a ", b"b"], "a\u2581b") == [4, 1]  # a literal ▁ decoded as a space keeps its 3 bytes
    with pytest.raises(DataError, match="do not decode to the text"):
        charged_bytes([b"ab"], "abc")


def test_shard_writer_keeps_tokens_and_sidecar_aligned_across_shards(tmp_path, monkeypatch):
    import golf_tools.tokenizer as tok

    monkeypatch.setattr(tok, "SHARD_TOKENS", 5)
    writer = ShardWriter(tmp_path, "x", "val", bos_id=7, sidecar=True)
    writer.add(np.array([10, 11, 12]), np.array([1, 2, 3]))
    writer.add(np.array([13, 14, 15, 16]), np.array([4, 0, 5, 6]))
    assert writer.close() == 9
    shards = shard_files(tmp_path, "val")
    assert np.concatenate([read_shard(p) for p in shards]).tolist() == [7, 10, 11, 12, 7, 13, 14, 15, 16]
    assert np.concatenate([read_shard(tmp_path / sidecar_name(p.name)) for p in shards]).tolist() == [0, 1, 2, 3, 0, 4, 0, 5, 6]


def test_parallel_encoding_equals_serial(tokenizers, tmp_path, monkeypatch):
    import golf_tools.tokenizer as tok

    monkeypatch.setattr(tok, "BATCH_CHARS", 40)  # many batches across the processes
    sp_path = tmp_path / "caseops.model"
    sp_path.write_bytes(tokenizers["caseops400"].sp.serialized_model_proto())
    docs = [f"Doc {i}: The NASA iPhone {'x' * i} 漢字\r\n" for i in range(30)]
    counts = {}
    for processes in (1, 2):
        out = tmp_path / str(processes)
        out.mkdir()
        counts[processes] = encode_split(sp_path, docs, out, "t", "val", caseops.NAME, sidecar=True, processes=processes)
    names = sorted(p.name for p in (tmp_path / "1").iterdir())
    assert names == ["t_val_000000.bin", "t_val_bytes_000000.bin"]
    for name in names:
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()
    assert counts[1] == counts[2] and counts[1]["documents"] == 30
    assert int(read_shard(tmp_path / "1" / "t_val_bytes_000000.bin").astype(np.int64).sum()) == counts[1]["bytes"]


def test_encode_split_reads_an_iterator_only_a_few_batches_ahead(tokenizers, tmp_path, monkeypatch):
    """Documents are pulled as the encoders need them: with one document per batch and 2
    processes, at most 4 batches are ever read and not yet written (Pool.imap would read them all
    at once); the shards equal those of the same documents given as a list."""
    import golf_tools.tokenizer as tok

    monkeypatch.setattr(tok, "BATCH_CHARS", 1)  # a batch per document
    sp_path = tmp_path / "caseops.model"
    sp_path.write_bytes(tokenizers["caseops400"].sp.serialized_model_proto())
    docs = [f"Doc {i}: The NASA iPhone {'x' * i} 漢字\n" for i in range(40)]
    written, seen = [0], []

    def lazily():
        for pulled, doc in enumerate(docs):
            if pulled - written[0] > 4:
                raise AssertionError(f"document {pulled} read while only {written[0]} were written")
            yield doc

    def progress(done, total):
        written[0] = done
        seen.append(total)

    for name, source, kwargs in (("list", docs, {}), ("lazy", lazily(), {"progress": progress})):
        (tmp_path / name).mkdir()
        counts = encode_split(sp_path, source, tmp_path / name, "t", "val", caseops.NAME, sidecar=True, processes=2, **kwargs)
        assert counts["documents"] == 40 and counts["bytes"] == sum(len(d.encode("utf-8")) for d in docs)
    assert written[0] == 40 and set(seen) == {None}  # a generator has no known total
    for name in ("t_val_000000.bin", "t_val_bytes_000000.bin"):
        assert (tmp_path / "list" / name).read_bytes() == (tmp_path / "lazy" / name).read_bytes()


def test_train_tokenizer_reports_a_reading_error_as_itself(tmp_path):
    """sentencepiece turns an exception in its sentence iterator into a RuntimeError; the
    DataError of the documents' reader comes through instead of 'training failed'."""
    from golf_tools.tokenizer import train_tokenizer

    def docs():
        yield "some text to train on\n" * 20
        raise DataError("notes.jsonl changed while the corpus was being built")

    with pytest.raises(DataError, match="^notes.jsonl changed"):
        train_tokenizer(docs(), 300, tmp_path / "t.model")
    assert not (tmp_path / "t.model").exists()
