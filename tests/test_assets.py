"""golfcore.assets: the shipped FineWeb sp1024 tokenizer is intact and usable."""

import pytest
import sentencepiece as spm

from golfcore.assets import (
    FINEWEB_SP1024_MODEL,
    FINEWEB_SP1024_MODEL_SHA256,
    FINEWEB_SP1024_VOCAB,
    FINEWEB_SP1024_VOCAB_SHA256,
    verify,
)
from golfcore.errors import DataError


@pytest.mark.parametrize(
    "path, sha256",
    [(FINEWEB_SP1024_MODEL, FINEWEB_SP1024_MODEL_SHA256), (FINEWEB_SP1024_VOCAB, FINEWEB_SP1024_VOCAB_SHA256)],
    ids=lambda x: getattr(x, "name", "sha256"),
)
def test_packaged_files_match_their_checksums(path, sha256):
    assert verify(path, sha256) == path


def test_packaged_tokenizer_is_the_challenge_sp1024():
    sp = spm.SentencePieceProcessor(model_file=str(FINEWEB_SP1024_MODEL))
    assert sp.vocab_size() == 1024 and sp.bos_id() == 1  # golf shards start documents with id 1
    vocab = FINEWEB_SP1024_VOCAB.read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[0] for line in vocab] == [sp.id_to_piece(i) for i in range(1024)]


def test_verify_names_a_corrupted_file(tmp_path):
    copy = tmp_path / "fineweb_1024_bpe.model"
    copy.write_bytes(FINEWEB_SP1024_MODEL.read_bytes()[:-1])
    with pytest.raises(DataError, match=f"{copy}.*expected {FINEWEB_SP1024_MODEL_SHA256}"):
        verify(copy, FINEWEB_SP1024_MODEL_SHA256)


def test_verify_names_a_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read .*missing.model"):
        verify(tmp_path / "missing.model", FINEWEB_SP1024_MODEL_SHA256)
