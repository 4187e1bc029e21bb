"""CaseOps: a bijective text transform that lowercases ASCII letters and marks capitals with
operator characters, so a tokenizer reuses one piece for "the", "The" and "THE" (the
records' `lossless_caps_caseops_v1`, PR #1729; docs/data.md, "CaseOps").

Over each maximal run of ASCII letters (a word):
- all lowercase: unchanged;
- two or more letters, all uppercase: ALLCAPS, then the word lowercased;
- otherwise each uppercase letter is lowercased and marked: TITLE before the first letter
  when it is uppercase, CAPNEXT before any later one ("iPhone" -> "i" CAPNEXT "phone").
Every other character is kept as it is (non-ASCII letters too: "É", "ß" and "İ" are never
case-mapped, so nothing is lost), except an operator character in the input, which is
written ESC + itself.

Bytes. The score is charged on the original text: operators cost 0 bytes, an escaped
character its own UTF-8 length, any other character its UTF-8 length (lowercasing an
ASCII letter keeps its length): `char_charges`. golf_tools.tokenizer.charged_bytes spreads
them over the tokens, so every original byte is charged to exactly one token.

No run imports this module: corpora are transformed when built (golf_tools), and the
validation bytes reach the eval loop through the byte sidecar (golfcore.data).
"""

from __future__ import annotations

import re

NAME = "caseops_v1"
ALIASES = frozenset({NAME, "lossless_caps_caseops_v1"})  # the records' name for the same transform
TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"  # private-use code points
OPERATORS = TITLE + ALLCAPS + CAPNEXT + ESC
_OPERATOR = re.compile(f"[{OPERATORS}]")


class CaseOpsError(ValueError):
    """A string is not the encoding of any text (an operator where none can stand)."""


def _is_upper(ch: str) -> bool:
    return "A" <= ch <= "Z"


_CASED_WORD = re.compile(f"[A-Za-z]*[A-Z][A-Za-z]*|[{OPERATORS}]")  # what encode rewrites


def _encode_match(m: re.Match) -> str:
    word = m.group()
    if word in OPERATORS:
        return ESC + word
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + word.lower()
    head = TITLE + word[0].lower() if _is_upper(word[0]) else word[0]
    return head + "".join(CAPNEXT + c.lower() if _is_upper(c) else c for c in word[1:])


def encode(text: str) -> str:
    return _CASED_WORD.sub(_encode_match, text)


def decode(text: str) -> str:
    out: list[str] = []
    mark = ""  # TITLE or ALLCAPS waiting for a word's first letter
    capnext = escaped = in_word = allcaps = False
    for ch in text:
        if escaped:
            if ch not in OPERATORS:
                raise CaseOpsError(f"ESC before {ch!r}, which is not an operator")
            out.append(ch)
            escaped = in_word = allcaps = False
            continue
        if ch == ESC:
            if mark or capnext:
                raise CaseOpsError("a case operator not followed by a letter")
            escaped = True
        elif ch in (TITLE, ALLCAPS):
            if mark or capnext or in_word:
                raise CaseOpsError(f"{'TITLE' if ch == TITLE else 'ALLCAPS'} inside a word")
            mark = ch
        elif ch == CAPNEXT:
            if capnext or mark or not in_word:
                raise CaseOpsError("CAPNEXT not inside a word")
            capnext = True
        elif "a" <= ch <= "z":
            if not in_word:
                allcaps = mark == ALLCAPS
                out.append(ch.upper() if mark else ch)
            else:
                out.append(ch.upper() if allcaps or capnext else ch)
            mark, capnext, in_word = "", False, True
        else:
            if mark or capnext or _is_upper(ch):
                raise CaseOpsError(f"{ch!r} where the encoding has a case operator or an uppercase letter")
            out.append(ch)
            in_word = allcaps = False
    if mark or capnext or escaped:
        raise CaseOpsError("the text ends with an operator")
    return "".join(out)


def char_charges(text: str) -> list[int]:
    """The original bytes each character of an encoded text stands for (0 for an operator)."""
    charges = [len(ch.encode("utf-8")) for ch in text]
    escaped = -1  # position of the character an ESC escapes
    for m in _OPERATOR.finditer(text):
        if m.start() != escaped:
            charges[m.start()] = 0
            escaped = m.start() + 1 if m.group() == ESC else -1
    return charges


