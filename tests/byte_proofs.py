"""The byte proofs' shared pieces: the adversarial strings, small tokenizers trained on the
running Python's stdlib, and what one document is charged.

A proof holds for a text x when the tokens of x decode back to x (through the transform's
inverse) and the bytes charged to them sum to len(x.encode("utf-8")).
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import sentencepiece as spm
import torch

from golf_tools.tokenizer import charged_bytes, document_pieces, piece_bytes, train_tokenizer, transform_fn
from golfcore import caseops
from golfcore.eval import ByteLUTs, build_byte_luts

_CASES = json.loads((Path(__file__).parent / "data" / "adversarial_strings.json").read_text(encoding="utf-8"))["cases"]
ADVERSARIAL = [text for _, text in _CASES]
ADVERSARIAL_IDS = [what for what, _ in _CASES]

TRAIN_TEXT_CHARS = 540_000


def stdlib_documents(max_chars: int = TRAIN_TEXT_CHARS) -> list[str]:
    """The first stdlib modules (sorted by name) up to max_chars: the tokenizers' training text."""
    docs, total = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        if total >= max_chars:
            break
        docs.append(path.read_text(encoding="utf-8", errors="replace"))
        total += len(docs[-1])
    return docs


class Tokenizer:
    """A sentencepiece model with its decode table and the eval's byte table, built once."""

    def __init__(self, sp: spm.SentencePieceProcessor):
        self.sp, self.pieces = sp, piece_bytes(sp)
        self.luts = build_byte_luts(sp, sp.vocab_size())


def train(directory: Path, vocab_size: int, transform: str = "") -> Tokenizer:
    path = directory / f"sp{vocab_size}{'_' + transform if transform else ''}.model"
    train_tokenizer(stdlib_documents(), vocab_size, path, transform)
    return Tokenizer(spm.SentencePieceProcessor(model_file=str(path)))


class Charged:
    """One document through a tokenizer: its ids, what they decode to, the bytes charged."""

    def __init__(self, tok: Tokenizer, text: str, transform: str = ""):
        sp = tok.sp
        self.source = transform_fn(transform)(text)
        self.ids = sp.encode(self.source)
        self.pieces = document_pieces(tok.pieces, self.ids)
        self.charges = charged_bytes(self.pieces, self.source, transform)
        decoded = sp.decode(self.ids)
        self.decoded = caseops.decode(decoded) if transform else decoded


def table_bytes(luts: ByteLUTs, bos_id: int, ids: list[int]) -> list[int]:
    """Bytes a byte table charges each token of a document (preceded by its BOS)."""
    stream = torch.tensor([bos_id, *ids])
    return luts.count_bytes(stream[:-1], stream[1:]).tolist()
