"""Files shipped inside the golf package (installed with it, editable or not).

The FineWeb sp1024 tokenizer is the sentencepiece model of the challenge's `fineweb10B_sp1024`
data (provenance, size and checksum in docs/data.md). It is shipped so that the byte-accounting
tests and examples run on the real tokenizer without a download.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import DataError

_HERE = Path(__file__).resolve().parent

FINEWEB_SP1024_MODEL = _HERE / "fineweb_1024_bpe.model"
FINEWEB_SP1024_MODEL_SHA256 = "849ea920119b5135ace5016137e82ab397738fc29d723d5f9a6b74c4e31af191"
FINEWEB_SP1024_VOCAB = _HERE / "fineweb_1024_bpe.vocab"
FINEWEB_SP1024_VOCAB_SHA256 = "bd6d57a87addc939da5b7c8d765f2ea84d7fe869de94e179aa9663f8a8cc3777"


def verify(path: Path, sha256: str) -> Path:
    """Return `path` if its SHA-256 is `sha256`; DataError naming the file if it is missing or differs."""
    path = Path(path)
    try:
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if actual != sha256:
        raise DataError(f"{path} has SHA-256 {actual}, expected {sha256}: the file is corrupted or replaced")
    return path
