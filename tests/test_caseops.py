"""golfcore.caseops: the transform by hand, its inverse on everything, and the bytes it charges."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golfcore import caseops
from golfcore.caseops import ALLCAPS, CAPNEXT, ESC, TITLE, CaseOpsError

from .byte_proofs import ADVERSARIAL


@pytest.mark.parametrize("text, encoded", [
    ("the cat", "the cat"),
    ("The NASA Launch", f"{TITLE}the {ALLCAPS}nasa {TITLE}launch"),
    ("A I", f"{TITLE}a {TITLE}i"),  # one capital letter is TITLE, not ALLCAPS
    ("iPhone McDonald", f"i{CAPNEXT}phone {TITLE}mc{CAPNEXT}donald"),
    ("HTTPServer", f"{TITLE}h{CAPNEXT}t{CAPNEXT}t{CAPNEXT}p{CAPNEXT}server"),
    ("ÉCOLE ß İstanbul", f"É{ALLCAPS}cole ß İstanbul"),  # non-ASCII letters are never case-mapped
    ("x2Y", f"x2{TITLE}y"),  # digits end a word
    (f"a{TITLE}b{ESC}", f"a{ESC}{TITLE}b{ESC}{ESC}"),  # operators in the input are escaped
])
def test_encode_by_hand(text, encoded):
    assert caseops.encode(text) == encoded
    assert caseops.decode(encoded) == text


@pytest.mark.parametrize("bad", [
    TITLE, f"{TITLE} a", f"a{TITLE}b", f"{CAPNEXT}a", f"{TITLE}{ALLCAPS}a", f"{ESC}x", f"a{ESC}", "A", f"{ALLCAPS}1",
])
def test_decode_refuses_what_encode_never_writes(bad):
    with pytest.raises(CaseOpsError):
        caseops.decode(bad)


def test_char_charges_by_hand():
    encoded = caseops.encode(f"Hé {TITLE}")  # TITLE h é ␠ ESC TITLE
    assert caseops.char_charges(encoded) == [0, 1, 2, 1, 0, 3]


TEXT = st.text(st.sampled_from([*"aZq Mx\n\t.", TITLE, ALLCAPS, CAPNEXT, ESC, "é", "ß", "İ", "ǅ", "👍"]), max_size=40) | st.text(max_size=40)


@settings(max_examples=200, deadline=None)
@given(TEXT)
def test_round_trip_and_charges_for_any_text(text):
    encoded = caseops.encode(text)
    assert caseops.decode(encoded) == text
    assert sum(caseops.char_charges(encoded)) == len(text.encode("utf-8"))
    assert not any("A" <= c <= "Z" for c in encoded)


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_round_trip_adversarial(text):
    encoded = caseops.encode(text)
    assert caseops.decode(encoded) == text
    assert sum(caseops.char_charges(encoded)) == len(text.encode("utf-8"))
